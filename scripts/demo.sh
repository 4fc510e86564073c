#!/usr/bin/env bash
# make demo: the pipeline on the embedded tiny model. For now: synthesize the tiny
# DeepSeek-V3-layout checkpoint and inspect it; later steps (shard, verify, serve) are
# appended here as their tools land.
set -eu
BUILD=${1:-build}
BIN=$BUILD/bin
DEMO=$BUILD/demo
step() { printf '\n== %s\n' "$*"; }

step "1. synthesize the tiny model (R1 layout, block-FP8) into $DEMO/tiny"
"$BIN/dsr1-synth" --preset tiny --out "$DEMO/tiny" --force
ls -l "$DEMO/tiny"

step "2. inspect it: validate against the architecture and summarize"
"$BIN/dsr1-inspect" "$DEMO/tiny"

step "3. one FP8 tensor dequantized with its block scales (192 rows: a partial 128-row block, like R1's 576)"
"$BIN/dsr1-inspect" "$DEMO/tiny" --tensor model.layers.0.self_attn.kv_a_proj_with_mqa.weight

step "4. the real DeepSeek-R1 layout from config + index alone (no weights)"
"$BIN/dsr1-synth" --preset r1 --metadata-only --out "$DEMO/r1-layout" --force
"$BIN/dsr1-inspect" "$DEMO/r1-layout"

printf '\ndemo: ok (outputs in %s)\n' "$DEMO"

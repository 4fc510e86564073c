#!/usr/bin/env bash
# make demo: the whole pipeline on the embedded tiny model, then plans for the real
# DeepSeek-R1 layout from config + index alone.
#   synth -> inspect -> shard plan -> shard run -> verify -> pack -> extract --verify
#   -> generate (CPU reference backend; with the MTP layer, speculative)
set -eu
BUILD=${1:-build}
BIN=$BUILD/bin
DEMO=$BUILD/demo
step() { printf '\n== %s\n' "$*"; }
rm -rf "$DEMO/shards" "$DEMO/shards-mtp" "$DEMO/packed" "$DEMO/pod0"

step "1. synthesize the tiny model (R1 layout, block-FP8 with real 128x128 scales) into $DEMO/tiny"
"$BIN/dsr1-synth" --preset tiny --out "$DEMO/tiny" --force --quiet
ls -l "$DEMO/tiny"

step "2. inspect it: validate against the architecture and summarize"
"$BIN/dsr1-inspect" "$DEMO/tiny"
"$BIN/dsr1-inspect" "$DEMO/tiny" --tensor model.layers.0.self_attn.kv_a_proj_with_mqa.weight

step "3. plan tp=2 ep=2 pp=2 on 4 GPUs (metadata only)"
"$BIN/dsr1-shard" plan "$DEMO/tiny" --tp 2 --ep 2 --pp 2 --nodes 1 --gpus-per-node 4 --gpu-mem h100-80g

step "4. shard it: one safetensors file per (pp stage, tp rank), manifest.json, XXH128SUMS"
"$BIN/dsr1-shard" run "$DEMO/tiny" --out "$DEMO/shards" --tp 2 --ep 2 --pp 2 --nodes 1 \
  --gpus-per-node 4 --gpu-mem h100-80g --quiet
ls -l "$DEMO/shards"
(cd "$DEMO/shards" && xxh128sum -c XXH128SUMS)

step "5. verify: every shard, then only rank 3's shard (the init-container mode)"
"$BIN/dsr1-verify" "$DEMO/shards"
"$BIN/dsr1-verify" --rank 3 "$DEMO/shards"

step "6. pack per node, then extract rank 1's files with verification"
"$BIN/dsr1-pack" create "$DEMO/shards" "$DEMO/packed" --per node
"$BIN/dsr1-pack" list "$DEMO/packed/node-00.tar"
"$BIN/dsr1-pack" extract "$DEMO/packed/node-00.tar" "$DEMO/pod0" --rank 1 --verify
ls -l "$DEMO/pod0"

step "7. generate 8 tokens on the CPU reference backend (all 4 ranks as threads)"
"$BIN/dsr1-serve" generate --manifest "$DEMO/shards/manifest.json" --backend cpu \
  --prompt-ids 0,17,42,99,5 --max-new-tokens 8

step "7b. the same with the MTP layer: speculative decoding (MTP drafts verified each step; the same tokens)"
"$BIN/dsr1-shard" run "$DEMO/tiny" --out "$DEMO/shards-mtp" --tp 2 --ep 2 --mtp --quiet
"$BIN/dsr1-serve" generate --manifest "$DEMO/shards-mtp/manifest.json" --backend cpu \
  --prompt-ids 0,17,42,99,5 --max-new-tokens 8
"$BIN/dsr1-serve" generate --manifest "$DEMO/shards-mtp/manifest.json" --backend cpu \
  --prompt-ids 0,17,42,99,5 --max-new-tokens 8 --speculative --prefill-chunk 2

step "8. the real DeepSeek-R1 layout: 91,991 tensors, planned without weights"
"$BIN/dsr1-inspect" tests/fixtures/r1-layout | head -n 12
echo "-- TP=8 FP8 on 8 x H100-80GB (expected: does not fit, with computed alternatives)"
set +e
"$BIN/dsr1-shard" plan tests/fixtures/r1-layout --tp 8 --ep 8 --gpu-mem h100-80g >"$DEMO/plan.txt" 2>&1
echo "(exit $?: 1 = does not fit)"
grep -vE '^ +[0-9]+ +[0-9]+ ' "$DEMO/plan.txt"
echo "-- TP=8 x PP=2 on 2 x 8 H100-80GB"
"$BIN/dsr1-shard" plan tests/fixtures/r1-layout --tp 8 --ep 8 --pp 2 --nodes 2 --gpus-per-node 8 \
  --gpu-mem h100-80g | tail -n 3
echo "-- DP=4 x TP=8 x PP=4 'on 32 GPUs'"
"$BIN/dsr1-shard" plan tests/fixtures/r1-layout --dp 4 --tp 8 --pp 4 --nodes 4 --gpus-per-node 8
echo "(exit $?: 2 = impossible request)"
set -e

printf '\ndemo: ok (outputs in %s)\n' "$DEMO"

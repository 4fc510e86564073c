#!/usr/bin/env bash
# dsr1-shard plan: the real R1 layout (tests/fixtures/r1-layout: config + full index,
# no weights) fits / does not fit / is impossible, with computed nearest plans; the tiny
# model's FP8-block refusal; --json; usage errors.
set -u
. "$(dirname "$0")/lib.inc"
D=$BIN/dsr1-shard
R1=tests/fixtures/r1-layout
if [ ! -f "$R1/model.safetensors.index.json" ]; then
  "$BIN/dsr1-synth" --preset r1 --metadata-only --out "$T/r1" --quiet || fail "synth r1 metadata"
  R1=$T/r1
fi

# --- does not fit: TP=8 FP8 on 8 x H100-80GB ---------------------------------------
expect_exit "r1 tp8 fp8 h100: does not fit" 1 "$D" plan "$R1" --tp 8 --gpu-mem h100-80g
expect_err "says by how much" "does not fit: .*short by [0-9.]+ GB"
expect_out "table says NO" "^fits: NO"
expect_out "per-rank table with weights" "^ +7 +0 +7 +0 +0 +7 0-60 +224-255 +85\.[0-9] GB"
# nearest plans are computed: TP=8 x PP=2 on two nodes first, bf16 on the same GPUs
expect_err "nearest: tp8 x pp2 on 2 nodes" "same GPU kind +16 GPUs: --tp 8 --ep 8 --pp 2 --dp 1 --nodes 2 --gpus-per-node 8 --dtype fp8 --gpu-mem h100-80g"
expect_err "nearest: other GPU kind, 8 GPUs" "other GPU kind +8 GPUs: .* --gpu-mem (h20-96g|h200-141g)"
expect_err "nearest: bf16 on h100" "other dtype +[0-9]+ GPUs: .*--dtype bf16 --gpu-mem h100-80g"
# every suggestion really fits
grep -Eo -- '--tp [0-9]+ .*--gpu-mem [a-z0-9-]+' "$T/err" >"$T/sugg"
n=0
while read -r line; do
  # shellcheck disable=SC2086
  "$D" plan "$R1" $line >/dev/null 2>&1 && n=$((n + 1)) || fail "suggestion does not fit: $line"
done <"$T/sugg"
[ "$n" -ge 4 ] && pass "all $n suggested plans fit" || fail "only $n suggestions"

# --- fits ----------------------------------------------------------------------
expect_exit "r1 tp8 pp2 on 2 nodes fits" 0 "$D" plan "$R1" --tp 8 --pp 2 --nodes 2 --gpu-mem h100-80g
expect_out "fits: yes" "^fits: yes"
expect_out "stage 1 layers end at 60" " 1 +7 0-[0-9]+ | 1 +7 [0-9]+-60 "
expect_out "16 ranks, node 1" "^ +15 +1 +7 +0 +1 +7 "
expect_exit "r1 bf16 on 4 x 8 fits" 0 "$D" plan "$R1" --tp 8 --pp 4 --nodes 4 --dtype bf16 --gpu-mem h100-80g
expect_exit "r1 tp8 fp8 on 8 x h200 fits" 0 "$D" plan "$R1" --tp 8 --gpu-mem h200-141g
expect_exit "r1 tp8 with --mtp on h200" 0 "$D" plan "$R1" --tp 8 --mtp --gpu-mem h200-141g
expect_out "mtp layer on the stage" "0-61"
expect_exit "gpu-mem as bytes" 0 "$D" plan "$R1" --tp 8 --gpu-mem 141GB
expect_exit "tp16 across 2 nodes fits" 0 "$D" plan "$R1" --tp 16 --nodes 2 --gpu-mem h100-80g
expect_err "warns: tp group spans nodes" "warning: tensor-parallel groups of 16 ranks span nodes"

# --- impossible: exit 2 with a precise message -------------------------------------
expect_exit "dp4 x tp8 x pp4 on 32 GPUs" 2 "$D" plan "$R1" --dp 4 --tp 8 --pp 4 --nodes 4 --gpus-per-node 8
expect_err "says it needs 128" "= 128 ranks, but 4 nodes x 8 GPUs = 32 GPUs: this plan needs 128 GPUs \(16 nodes of 8\)"
expect_exit "ep not dividing tp" 2 "$D" plan "$R1" --tp 8 --ep 3
expect_err "names ep and tp" "ep=3 does not divide tp=8"
expect_exit "tp not dividing heads" 2 "$D" plan "$R1" --tp 3 --nodes 1 --gpus-per-node 3
expect_err "names heads" "tp=3 does not divide num_attention_heads=128"
expect_exit "tp=32 cuts FP8 blocks" 2 "$D" plan "$R1" --tp 32 --nodes 4
expect_err "names tensor and valid tp values" "model\.layers\.0\.mlp\.gate_proj\.weight \[18432, 7168\] split 32 ways.*Valid tp values with ep=tp: 1 2 4 8 16"
expect_exit "pp beyond layers" 2 "$D" plan "$R1" --pp 62 --gpus-per-node 62 --nodes 1

# --- json ------------------------------------------------------------------------
expect_exit "plan --json" 1 "$D" plan "$R1" --tp 8 --json
"$PY" - "$T/out" <<'EOF' >"$T/py" 2>&1 && pass "json: parses, 8 ranks, suggestions" || { fail "json"; cat "$T/py"; }
import json, sys
j = json.load(open(sys.argv[1]))
assert j["fits"] is False and j["shortfall_bytes"] > 5e9, j["fits"]
assert len(j["ranks"]) == 8 and j["ranks"][7]["tp"] == 7
assert j["shards"][0]["weight_bytes"] > 84e9 and j["shards"][0]["expert_count"] == 32
assert j["suggestions"][0]["pp"] == 2 and j["suggestions"][0]["tp"] == 8
EOF

# --- tiny: tp=4 ep=1 cuts expert blocks; ep=4 is fine --------------------------------
expect_exit "synth tiny" 0 "$BIN/dsr1-synth" --preset tiny --out "$T/tiny" --quiet
expect_exit "tiny tp4 ep1: exit 2" 2 "$D" plan "$T/tiny" --tp 4 --ep 1
expect_err "names the expert tensor and valid choices" "experts\.0\.gate_proj\.weight \[256, 256\] split 4 ways on dim 0 gives 64-element slices.*Valid tp values with ep=1: 1 2; valid ep values with tp=4: 2 4"
expect_exit "tiny tp4 ep4 plans" 0 "$D" plan "$T/tiny" --tp 4 --ep 4
expect_out "notes the whole shared expert" "shared expert"
expect_exit "tiny tp4 ep1 bf16 is fine" 0 "$D" plan "$T/tiny" --tp 4 --ep 1 --dtype bf16
expect_exit "synth tiny without MTP" 0 "$BIN/dsr1-synth" --preset tiny --no-mtp --out "$T/tiny0" --quiet
expect_exit "--mtp without an MTP layer" 1 "$D" plan "$T/tiny0" --tp 2 --mtp
expect_err "says there is no MTP layer" "no MTP layer"

# --- usage ---------------------------------------------------------------------------
expect_exit "-h" 0 "$D" -h
expect_out "usage on stdout" "^usage: dsr1-shard plan"
expect_exit "no subcommand" 2 "$D"
expect_exit "bad subcommand" 2 "$D" frobnicate "$R1"
expect_exit "bad number" 2 "$D" plan "$R1" --tp 8x
expect_err "names the option" "tp 8x: not a valid"
expect_exit "bad gpu kind" 2 "$D" plan "$R1" --gpu-mem h100
expect_exit "run without --out" 2 "$D" run "$R1" --tp 8
expect_exit "missing checkpoint dir: I/O" 3 "$D" plan "$T/nope"
expect_err "names the path" "nope: No such file or directory"
# the latent cache as dsr1-serve keeps it (fp32) by default; --kv-dtype bf16 halves it
expect_exit "plan --json default KV element" 0 "$D" plan "$R1" --tp 8 --gpu-mem h200-141g --json
"$PY" -c 'import json,sys; j = json.load(open(sys.argv[1])); sys.exit(0 if j["kv_bytes_per_token_layer"] == 2304 else 1)' "$T/out" \
  && pass "  2304 B/token/layer (fp32 latent 512 + 64)" || fail "  kv_bytes_per_token_layer: $(head -c 300 "$T/out")"
expect_exit "plan --kv-dtype bf16" 0 "$D" plan "$R1" --tp 8 --gpu-mem h200-141g --kv-dtype bf16
expect_out "  1152 B/token/layer" "KV cache 1152 B/token/layer"
expect_exit "--kv-dtype fp16: exit 2" 2 "$D" plan "$R1" --kv-dtype fp16
expect_err "  names the choices" "kv-dtype fp16: expected fp32"
# a plain --gpu-mem size reads naturally in the shortfall message
expect_exit "plain --gpu-mem size" 1 "$D" plan "$R1" --tp 8 --gpu-mem 80GB
expect_err "no doubled 'GPUs per GPU'" "but 80\.0 GB GPUs: short by"
finish

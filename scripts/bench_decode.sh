#!/usr/bin/env bash
# bench_decode.sh [WORKDIR]: per-layer decode step time vs the HBM roofline at batch 1,
# 8 and 64, prefill GEMM TFLOP/s vs cuBLASLt and prefill attention (fused against
# materialized), on the one-rank shard bench_load.sh makes
# (made here if missing); then one rank of a TP8/EP8 plan of the same checkpoint run
# alone at batch 1 with 2 and 3 of its experts routed (the busiest GPU of an 8-GPU
# deployment, collectives skipped; its prefill attention once) and at batch 8 and 64 as
# its router routes; all-reduce
# latency when several GPUs are visible;
# and the projection for the 61-layer model on 8 GPUs (make bench-decode).
set -eu
cd "$(dirname "$0")/.."
W=${1:-/dev/shm/dsr1-bench}
BIN=${BIN:-build/bin}
PY=${PY:-python3}
export NCCL_NVLS_ENABLE=0
if [ ! -f "$W/shard/manifest.json" ]; then
  mkdir -p "$W"
  "$BIN/dsr1-synth" --preset r1 --layers "${LAYERS:-4}" --out "$W/ckpt" --force --quiet
  "$BIN/dsr1-shard" run "$W/ckpt" --out "$W/shard" --tp 1 --quiet
fi
"$BIN/bench-decode-gpu" --manifest "$W/shard/manifest.json" --ctx "${CTX:-1024}" | tee "$W/decode.txt"
if [ -d "$W/ckpt" ] && [ ! -f "$W/shard8/manifest.json" ]; then
  "$BIN/dsr1-shard" run "$W/ckpt" --out "$W/shard8" --tp 8 --ep 8 --quiet
fi
: >"$W/decode-tp8.txt"
if [ -f "$W/shard8/manifest.json" ]; then
  for n in 2 3; do
    # the rank's prefill attention (16 heads) once, with the first
    pa=""; [ "$n" = 2 ] && pa=--prefill-attn
    "$BIN/bench-decode-gpu" --manifest "$W/shard8/manifest.json" --rank 0 --local-experts "$n" \
      --batches 1 --quick $pa --ctx "${CTX:-1024}" | sed "s/^/tp8e$n /" |
      tee -a "$W/decode-tp8.txt"
  done
  # two tokens a step (speculative decoding's verification), 4 experts routed: the
  # busiest GPU reading 2 experts for each of the two tokens
  "$BIN/bench-decode-gpu" --manifest "$W/shard8/manifest.json" --rank 0 --local-experts 4 \
    --batches 2 --quick --ctx "${CTX:-1024}" | sed "s/^/tp8s /" | tee -a "$W/decode-tp8.txt"
  # batched steps on the same rank, routed by the synthetic checkpoint's router (its
  # spread over the rank's experts, not R1's): the projection's batched-decode rows
  "$BIN/bench-decode-gpu" --manifest "$W/shard8/manifest.json" --rank 0 --batches 8,64 --quick \
    --ctx "${CTX:-1024}" | sed "s/^/tp8b /" | tee -a "$W/decode-tp8.txt"
fi
NG=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$NG" -ge 2 ]; then
  for n in 2 4 8; do
    [ "$n" -le "$NG" ] || break
    scripts/launch_local.sh "$n" -- "$BIN/bench-decode-gpu" --allreduce | tee -a "$W/decode.txt"
    DSR1_NCCL_BLOCKING=0 scripts/launch_local.sh "$n" -- "$BIN/bench-decode-gpu" --allreduce |
      tee -a "$W/decode.txt"
  done
fi
"$PY" scripts/decode_projection.py "$W/decode.txt" "$W/decode-tp8.txt"

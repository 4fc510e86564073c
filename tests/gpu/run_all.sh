#!/usr/bin/env bash
# run_all.sh [STAGE...]: what one GPU-machine session runs, logging to $OUT (or
# /tmp/dsr1-gpu-out): machine facts, make test-gpu, the golden model on 1 GPU, and,
# per STAGE: "nccl" test_nccl.sh for every GPU count up to those visible (max 4),
# "load" bench_load.sh, "decode" bench_decode.sh. Binaries come prebuilt in $BIN.
# Every stage runs under a time limit (env *_STAGE_S) so one call fits the device lease.
set -u
cd "$(dirname "$0")/../.."
export BIN=${BIN:-build/bin} PY=${PY:-python3} NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
O=${OUT:-/tmp/dsr1-gpu-out}
mkdir -p "$O"
NG=$(nvidia-smi -L | wc -l)
summary() { echo "$*" | tee -a "$O/summary.txt"; }
{ nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g | head -2; } 2>&1 | tee "$O/machine.txt"
timeout 120 "$BIN/test-kernels-gpu" 2>&1 | tee "$O/test-gpu.txt"
summary "test-gpu: $(tail -1 "$O/test-gpu.txt")"
for s in "$@"; do
  case $s in
    nccl)
      for n in 1 2 4; do
        [ "$n" -ge "${NCCL_FROM:-1}" ] || continue
        [ "$n" -le "$NG" ] || break
        timeout "${NCCL_STAGE_S:-150}" tests/gpu/test_nccl.sh "$n" 2>&1 | tee "$O/test-nccl-$n.txt"
        summary "test-nccl NGPU=$n: $(tail -1 "$O/test-nccl-$n.txt")"
      done ;;
    nccl-exact)
      DSR1_GEMV_MAX_M=100000 tests/gpu/test_nccl.sh 1 2>&1 | tee "$O/test-nccl-1-exact.txt"
      summary "test-nccl NGPU=1 (no activation quantization): $(tail -1 "$O/test-nccl-1-exact.txt")" ;;
    load)
      timeout "${LOAD_STAGE_S:-240}" scripts/bench_load.sh /dev/shm/dsr1-bench 2>&1 | tee "$O/bench-load.txt"
      summary "$(tail -10 "$O/bench-load.txt")" ;;
    decode)
      timeout "${DECODE_STAGE_S:-180}" scripts/bench_decode.sh /dev/shm/dsr1-bench 2>&1 | tee "$O/bench-decode.txt"
      summary "$(grep -A14 '^layer' "$O/bench-decode.txt" | head -15)"
      summary "$(grep -E '^tp8e[0-9] +[0-9]+ |^projection|^  ' "$O/bench-decode.txt" | grep -v '^  [a-z_+]* *[0-9.]* us' | tail -14)" ;;
  esac
done
echo "==== summary"; cat "$O/summary.txt"

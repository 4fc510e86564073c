#!/usr/bin/env bash
set -u
BIN=build/gb; export NCCL_NVLS_ENABLE=0 PY=python3
W=/dev/shm/w; mkdir -p $W
t0=$(date +%s)
BIN=$BIN timeout 200 bash tests/gpu/test_nccl.sh 1 > $OUT/test-nccl-1.txt 2>&1
echo "test-nccl rc=$? $(( $(date +%s) - t0 )) s: $(tail -1 $OUT/test-nccl-1.txt)" >> $OUT/summary.txt
timeout 150 $BIN/test-kernels-gpu > $OUT/test-gpu.txt 2>&1
echo "test-gpu rc=$? $(( $(date +%s) - t0 )) s: $(tail -1 $OUT/test-gpu.txt)" >> $OUT/summary.txt
$BIN/dsr1-synth --preset r1 --layers 4 --out $W/ck --force --quiet
$BIN/dsr1-shard run $W/ck --out $W/sh --tp 1 --quiet
python3 -c "print(','.join(str(1 + i * 7 % 9) for i in range(150000)))" > $W/p.txt
for c in 0 4096; do
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > $W/mem.txt &
  mp=$!
  timeout 200 $BIN/dsr1-serve generate --backend cuda --manifest $W/sh/manifest.json --prompt-ids @$W/p.txt --max-new-tokens 2 --prefill-chunk $c > $W/out 2> $W/err
  rc=$?
  kill $mp; wait $mp 2>/dev/null
  echo "150000 tokens chunk=$c rc=$rc peak_mib=$(sort -n $W/mem.txt | tail -1) $(( $(date +%s) - t0 )) s | $(grep -h 'prefill of\|dsr1-serve: [^r]' $W/err | tail -2 | tr '\n' ' ')" >> $OUT/summary.txt
done

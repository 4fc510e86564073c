#!/usr/bin/env bash
# temporary device script (not committed)
set -u
BIN=build/gb; export NCCL_NVLS_ENABLE=0 PY=python3
W=/dev/shm/w; mkdir -p $W
nvidia-smi > $OUT/machine.txt; nproc >> $OUT/machine.txt
t0=$(date +%s)
$BIN/dsr1-synth --preset r1 --layers 4 --out $W/ckpt --force --quiet
$BIN/dsr1-shard run $W/ckpt --out $W/shard --tp 1 --quiet
echo "synth+shard $(( $(date +%s) - t0 )) s" >> $OUT/summary.txt
M=$W/shard/manifest.json
S=$OUT/prefill-sweep.txt
for L in 16000 32000 60000; do
  python3 -c "print(','.join(str(1 + i * 7 % 9) for i in range($L)))" > $W/p$L.txt
  for cfg in "old 0" "new 0" "new 4096" "new 8192" "new 2048"; do
    set -- $cfg
    if [ "$2" = 8192 ] && [ $L = 16000 ]; then continue; fi
    if [ "$2" = 2048 ] && [ $L != 32000 ]; then continue; fi
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > $W/mem.txt &
    mp=$!
    ts=$(date +%s.%N)
    if [ $1 = old ]; then
      timeout 150 $BIN/dsr1-serve-old generate --backend cuda --manifest $M --prompt-ids "$(cat $W/p$L.txt)" --max-new-tokens 4 > $W/out 2> $W/err
    else
      timeout 150 $BIN/dsr1-serve generate --backend cuda --manifest $M --prompt-ids @$W/p$L.txt --prefill-chunk $2 --max-new-tokens 4 > $W/out 2> $W/err
    fi
    rc=$?
    te=$(date +%s.%N)
    kill $mp; wait $mp 2>/dev/null
    peak=$(sort -n $W/mem.txt | tail -1)
    echo "L=$L $1 chunk=$2 rc=$rc wall=$(echo "$te - $ts" | bc) s peak_mib=$peak tokens=$(head -c 60 $W/out) | $(grep -h 'prefill of\|error\|no room\|dsr1-serve: [^r]' $W/err | tail -2 | tr '\n' ' ')" >> $S
  done
done
echo "sweep $(( $(date +%s) - t0 )) s" >> $OUT/summary.txt
$BIN/dsr1-shard run $W/ckpt --out $W/shard8 --tp 8 --ep 8 --quiet
timeout 200 $BIN/bench-decode-gpu --manifest $W/shard8/manifest.json --rank 0 --local-experts 2 --batches 1 --quick --prefill-attn --ctx 1024 > $OUT/tp8-prefill-attn.txt 2>&1
echo "tp8 bench rc=$? $(( $(date +%s) - t0 )) s" >> $OUT/summary.txt

#!/usr/bin/env bash
set -u
BIN=build/gb; export NCCL_NVLS_ENABLE=0 PY=python3
W=/dev/shm/w; mkdir -p $W
t0=$(date +%s)
BIN=$BIN timeout 200 bash tests/gpu/test_nccl.sh 1 > $OUT/test-nccl-1.txt 2>&1
echo "test-nccl rc=$? $(( $(date +%s) - t0 )) s: $(tail -1 $OUT/test-nccl-1.txt)" >> $OUT/summary.txt
$BIN/dsr1-synth --preset r1 --layers 4 --mtp --out $W/ckm --force --quiet
$BIN/dsr1-shard run $W/ckm --out $W/shm --tp 1 --mtp --quiet
M=$W/shm/manifest.json
python3 -c "import random; random.seed(7); print(','.join(str(random.randrange(129000)) for _ in range(512)))" > $W/p.txt
S=$OUT/spec.txt
run() { local l=$1; shift; local e=(); while [ "$1" != -- ]; do e+=("$1"); shift; done; shift
  env "${e[@]}" timeout 100 $BIN/dsr1-serve generate --backend cuda --manifest $M --prompt-ids @$W/p.txt --max-new-tokens 128 "$@" > $W/$l.out 2> $W/$l.err
  echo "$l rc=$? | $(grep -h 'prefill of\|dsr1-serve: [^r]' $W/$l.err | tail -1)" >> $S; }
run plain NOP=1 --
run spec-mtp NOP=1 -- --speculative
run spec-o1 DSR1_TEST_DRAFTS=$(cat $W/spec-mtp.out) -- --speculative
run spec-o2 DSR1_TEST_DRAFTS=$(cat $W/spec-o1.out) -- --speculative
run spec-o3 DSR1_TEST_DRAFTS=$(cat $W/spec-o2.out) -- --speculative
python3 - $W >> $S <<'PY'
import sys
W = sys.argv[1]
t = {l: open(f"{W}/{l}.out").read().strip().split(",") for l in ("plain", "spec-mtp", "spec-o1", "spec-o2", "spec-o3")}
for l, v in t.items():
    same = next((i for i, (a, b) in enumerate(zip(v, t["plain"])) if a != b), len(v))
    print(f"{l}: first {same} tokens equal the plain run's")
PY
echo "spec e2e $(( $(date +%s) - t0 )) s" >> $OUT/summary.txt
rm -rf $W
BIN=$BIN PY=python3 timeout 380 bash scripts/bench_decode.sh /dev/shm/b > $OUT/bench-decode.txt 2>&1
echo "bench_decode rc=$? $(( $(date +%s) - t0 )) s" >> $OUT/summary.txt
cp /dev/shm/b/decode.txt /dev/shm/b/decode-tp8.txt $OUT/ 2>/dev/null

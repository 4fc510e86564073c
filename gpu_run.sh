#!/usr/bin/env bash
set -u
BIN=build/gb; export NCCL_NVLS_ENABLE=0
W=/dev/shm/w; mkdir -p $W
t0=$(date +%s)
timeout 150 $BIN/test-kernels-gpu > $OUT/test-gpu.txt 2>&1
echo "test-gpu rc=$? $(tail -1 $OUT/test-gpu.txt)" >> $OUT/diag.txt
grep -v '^PASS' $OUT/test-gpu.txt | head >> $OUT/diag.txt
grep 'T=2 H=128\|T=3 H=128\|T=2 H=16 S=514' $OUT/test-gpu.txt | head -20 >> $OUT/diag.txt
$BIN/dsr1-synth --preset r1 --layers 4 --out $W/ck --force --quiet
$BIN/dsr1-shard run $W/ck --out $W/sh --tp 1 --quiet
echo "synth+shard $(( $(date +%s) - t0 )) s" >> $OUT/diag.txt
M=$W/sh/manifest.json
python3 -c "import random; random.seed(5); print(','.join(str(random.randrange(129000)) for _ in range(514)))" > $W/p2.txt
g() { local l=$1; shift; timeout 200 $BIN/dsr1-serve generate --backend cuda --manifest $M "$@" > $W/$l.out 2> $W/$l.err; echo "$l rc=$? $(cat $W/$l.out) $(grep -h 'dsr1-serve: [^r]' $W/$l.err | tail -1)" >> $OUT/diag.txt; }
g c1 --prompt-ids @$W/p2.txt --max-new-tokens 1 --attn absorb --prefill-chunk 1 --logits-out $W/c1.npy
DSR1_CUDA_GRAPHS=0 g c1n --prompt-ids @$W/p2.txt --max-new-tokens 1 --attn absorb --prefill-chunk 1 --logits-out $W/c1n.npy
g c2 --prompt-ids @$W/p2.txt --max-new-tokens 1 --attn absorb --prefill-chunk 2 --logits-out $W/c2.npy
DSR1_PDL=0 g c2p --prompt-ids @$W/p2.txt --max-new-tokens 1 --attn absorb --prefill-chunk 2 --logits-out $W/c2p.npy
DSR1_MOE_OCC=0 DSR1_MOE_STRIDE=0 g c2o --prompt-ids @$W/p2.txt --max-new-tokens 1 --attn absorb --prefill-chunk 2 --logits-out $W/c2o.npy
g c3 --prompt-ids @$W/p2.txt --max-new-tokens 1 --attn absorb --prefill-chunk 3 --logits-out $W/c3.npy
python3 - $W >> $OUT/diag.txt <<'PY'
import sys, numpy as np
W = sys.argv[1]
def cmp(a, b):
    A, B = np.load(f"{W}/{a}.npy"), np.load(f"{W}/{b}.npy")
    e = np.abs(A - B).max(axis=1) / np.abs(B).max(axis=1)
    bad = np.nonzero(e > 1e-3)[0]
    print(f"{a} vs {b}: max {e.max():.3g} median {np.median(e):.3g}; rows > 1e-3: {bad.tolist()[:40]} ({len(bad)}); argmax differ {int((A.argmax(1) != B.argmax(1)).sum())}")
cmp("c1n", "c1"); cmp("c2", "c1"); cmp("c2", "c1n"); cmp("c2p", "c2"); cmp("c2o", "c2"); cmp("c3", "c1n")
PY

#!/usr/bin/env bash
# bench_load.sh [WORKDIR]: shard upload bandwidth on the GPU machine, next to the
# same run's pinned host-to-device ceiling and Python safetensors.torch.load_file(...,
# device="cuda") on the same file (make bench-load). Makes a real-dimension synthetic
# checkpoint (dsr1-synth --preset r1 --layers ${LAYERS:-4}: 3 dense + 1 MoE layer) and
# its one-rank shard in WORKDIR unless they exist. Env: BIN (default build/bin), PY,
# LOAD_ARGS (extra bench-load-gpu flags: --threads N, --chunk MiB).
set -eu
cd "$(dirname "$0")/.."
W=${1:-/dev/shm/dsr1-bench}
BIN=${BIN:-build/bin}
PY=${PY:-python3}
LAYERS=${LAYERS:-4}
export NCCL_NVLS_ENABLE=0
mkdir -p "$W"
if [ ! -f "$W/shard/manifest.json" ]; then
  t0=$(date +%s.%N)
  "$BIN/dsr1-synth" --preset r1 --layers "$LAYERS" --out "$W/ckpt" --force --quiet
  t1=$(date +%s.%N)
  "$BIN/dsr1-shard" run "$W/ckpt" --out "$W/shard" --tp 1 --quiet
  t2=$(date +%s.%N)
  echo "prepared: synth $(awk "BEGIN{print $t1 - $t0}") s, shard $(awk "BEGIN{print $t2 - $t1}") s"
fi
f=$(ls "$W"/shard/*.safetensors | head -1)
"$BIN/bench-load-gpu" --manifest "$W/shard/manifest.json" ${LOAD_ARGS:-} | tee "$W/load.txt"
"$PY" - "$f" <<'PYEOF' | tee -a "$W/load.txt"
import os, sys, time, torch
from safetensors.torch import load_file
f = sys.argv[1]
n = os.path.getsize(f)
torch.cuda.init(); torch.zeros(1, device="cuda"); torch.cuda.synchronize()
ts = []
for _ in range(2):
    t = time.perf_counter(); d = load_file(f, device="cuda"); torch.cuda.synchronize()
    ts.append(time.perf_counter() - t); del d; torch.cuda.empty_cache()
print(f"safetensors_cuda_GBps={n / min(ts) / 1e9:.2f} (best of 2: {min(ts):.2f} s)")
PYEOF
"$PY" - "$W/load.txt" <<'PYEOF'
import re, sys
v = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\w+)_GBps=([\d.]+)", line)
    if m: v[m.group(1)] = float(m.group(2))
dev = next((l.split("=", 1)[1].strip() for l in open(sys.argv[1]) if l.startswith("device=")), "?")
pin, st = v.get("pinned_h2d", 0), v.get("safetensors_cuda", 0)
# the staged upload cannot beat the slower of its two stages: the DMA and the host copy
ceil = min(pin, v.get("host_copy", pin))
print(f"\nupload of one shard ({dev}), GB/s and ratios (goals: >= 80% of pinned, >= 5x safetensors;")
print(f"  ceiling = min(pinned DMA, host copy) = {ceil:.2f} GB/s)")
for k in ("pinned_h2d", "host_copy", "pageable_h2d", "up_pread", "up_pinned", "up_register", "up_verify", "safetensors_cuda"):
    if k in v:
        print(f"  {k:18s} {v[k]:7.2f}  {100*v[k]/pin:5.0f}% of pinned  {100*v[k]/ceil:5.0f}% of ceiling  {v[k]/st if st else 0:5.1f}x safetensors")
PYEOF

#!/usr/bin/env bash
# profile_decode.sh MANIFEST LAYER:BATCH... [-- BENCH-ARGS]: the kernels of one decode step
# of one layer, each with its GPU duration from Nsight Compute (gpu__time_duration, caches
# and clocks left alone), in launch order, and their sum. It shows where a step's time
# goes, which the per-piece breakdown of bench-decode-gpu cannot (small kernels, gaps).
# Needs ncu on the PATH (the GPU machine has it); binaries come from $BIN.
set -u
BIN=${BIN:-build/bin}
NCU=${NCU:-ncu}
[ $# -ge 2 ] || { echo "usage: $0 MANIFEST LAYER:BATCH... [-- BENCH-ARGS]" >&2; exit 2; }
command -v "$NCU" >/dev/null || { echo "$0: $NCU not found (Nsight Compute)" >&2; exit 2; }
mf=$1
shift
specs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do specs+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
for sp in "${specs[@]}"; do
  csv=$(mktemp)
  "$NCU" --profile-from-start off --clock-control none --cache-control none --csv \
    --metrics gpu__time_duration.sum "$BIN/bench-decode-gpu" --manifest "$mf" \
    --batches "${sp#*:}" --profile "$sp" "$@" >"$csv" 2>&1
  python3 - "$sp" "$csv" <<'PYEOF'
import csv, re, sys
sp, path = sys.argv[1], sys.argv[2]
lines = open(path, errors="replace").read().splitlines()
start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
if start is None:
    print(f"profile {sp}: no ncu rows; its output ends:")
    print("\n".join(lines[-15:]))
    sys.exit(1)
rows = list(csv.DictReader(lines[start:]))
tot = 0.0
print(f"profile layer:batch {sp} (ncu gpu__time_duration, us)")
for r in rows:
    v = float(r["Metric Value"].replace(",", ""))
    us = v / 1000 if r["Metric Unit"] in ("nsecond", "ns") else v if r["Metric Unit"] in ("usecond", "us") else v * 1000
    tot += us
    name = re.sub(r"\(.*", "", r["Kernel Name"])[:60]
    print(f"  {us:9.2f}  {r['Grid Size']:>16} {r['Block Size']:>12}  {name}")
print(f"  {tot:9.2f}  sum of {len(rows)} kernels")
PYEOF
  rm -f "$csv"
done

#!/usr/bin/env bash
# bench_verify.sh: dsr1-verify throughput against the read ceiling (cat of the same
# files) and against what users would run instead (xxh128sum of the same files), in
# the same run. Not a timed test: it prints numbers and ratios.
#
# usage: scripts/bench_verify.sh [BUILD]
# env:   BENCH_DIR     work directory (default $BUILD/bench-verify; the shards are kept
#                      there between runs, the source checkpoint is removed)
#        BENCH_LAYERS  decoder layers of the r1-dimension checkpoint (default 1: embed,
#                      one dense layer, lm_head; about 4.3 GB of shards)
#        BENCH_TP      tensor-parallel size of the shards (default 2)
#        BENCH_REPS    repetitions; the best time of each tool is reported (default 5)
#        BENCH_COLD=1  also measure with the page cache dropped before every run
#                      (needs root: writes /proc/sys/vm/drop_caches)
# Warm numbers need the shards to fit in the page cache (RAM), cold ones measure the disk.
set -eu
BUILD=${1:-${BUILD:-build}}
BIN=$BUILD/bin
DIR=${BENCH_DIR:-$BUILD/bench-verify}
LAYERS=${BENCH_LAYERS:-1}
TP=${BENCH_TP:-2}
REPS=${BENCH_REPS:-5}
for t in dsr1-synth dsr1-shard dsr1-verify; do
  [ -x "$BIN/$t" ] || { echo "bench-verify: $BIN/$t missing: run make BUILD=$BUILD first" >&2; exit 2; }
done
command -v xxh128sum >/dev/null || { echo "bench-verify: xxh128sum missing (Debian package xxhash)" >&2; exit 2; }

SH=$DIR/shards-r1-l$LAYERS-tp$TP
if [ ! -f "$SH/manifest.json" ]; then
  mkdir -p "$DIR"
  echo "bench-verify: synthesizing r1 --layers $LAYERS and sharding it tp=$TP into $SH (once)"
  rm -rf "$DIR/ck" "$SH"
  "$BIN/dsr1-synth" --preset r1 --layers "$LAYERS" --out "$DIR/ck" --quiet
  "$BIN/dsr1-shard" run "$DIR/ck" --out "$SH" --tp "$TP" --quiet
  rm -rf "$DIR/ck"
fi
"$BIN/dsr1-verify" --quick --no-progress -q "$SH" >/dev/null || { echo "bench-verify: $SH is damaged; remove it" >&2; exit 1; }

mapfile -t FILES < <(ls "$SH"/*.safetensors)
BYTES=$(stat -c %s "${FILES[@]}" | awk '{s += $1} END {printf "%.0f", s}')
NT=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(sum(len(s["tensors"]) for s in m["shards"]))' \
  "$SH/manifest.json" 2>/dev/null || echo "?")

now() { date +%s.%N; }
drop() { [ "${COLD:-0}" = 1 ] && { sync; echo 3 >/proc/sys/vm/drop_caches; } || true; }
best_cat=999999 best_xxh=999999 best_ver=999999 best_ver1=999999
run() { # NAME CMD...: prints the seconds
  shift
  drop
  local s e
  s=$(now); "$@" >/dev/null 2>&1 || { echo "bench-verify: $* failed" >&2; exit 1; }; e=$(now)
  echo "$e - $s" | bc -l
}
min() { echo "if ($1 < $2) $1 else $2" | bc -l; }

measure() {
  best_cat=999999 best_xxh=999999 best_ver=999999 best_ver1=999999
  [ "${COLD:-0}" = 1 ] || cat "${FILES[@]}" >/dev/null
  # Interleaved, so background noise hits every tool alike.
  for _ in $(seq "$REPS"); do
    best_cat=$(min "$best_cat" "$(run cat cat "${FILES[@]}")")
    best_xxh=$(min "$best_xxh" "$(run xxh xxh128sum "${FILES[@]}")")
    best_ver=$(min "$best_ver" "$(run ver "$BIN/dsr1-verify" --no-progress -q "$SH")")
    best_ver1=$(min "$best_ver1" "$(run ver1 env OMP_NUM_THREADS=1 "$BIN/dsr1-verify" --no-progress -q "$SH")")
  done
}

report() { # LABEL
  local gb=$(echo "$BYTES / 1000000000" | bc -l)
  printf "bench-verify (%s): %.2f GB in %d shard files, %s tensors; %d cores; best of %d\n" "$1" "$gb" \
    "${#FILES[@]}" "$NT" "$(nproc)" "$REPS"
  printf "  %-28s %7.3f s %7.2f GB/s\n" "cat (read ceiling)" "$best_cat" "$(echo "$gb / $best_cat" | bc -l)"
  printf "  %-28s %7.3f s %7.2f GB/s\n" "xxh128sum (what users run)" "$best_xxh" "$(echo "$gb / $best_xxh" | bc -l)"
  printf "  %-28s %7.3f s %7.2f GB/s   %.2fx cat (goal >= 0.9)   %.2fx xxh128sum (goal >= 1.5)\n" \
    "dsr1-verify (full)" "$best_ver" "$(echo "$gb / $best_ver" | bc -l)" \
    "$(echo "$best_cat / $best_ver" | bc -l)" "$(echo "$best_xxh / $best_ver" | bc -l)"
  printf "  %-28s %7.3f s %7.2f GB/s   %.2fx cat\n" "dsr1-verify, 1 thread" "$best_ver1" \
    "$(echo "$gb / $best_ver1" | bc -l)" "$(echo "$best_cat / $best_ver1" | bc -l)"
}

COLD=0 measure
report "page cache warm"
if [ "${BENCH_COLD:-0}" = 1 ]; then
  if [ -w /proc/sys/vm/drop_caches ]; then
    COLD=1 measure
    report "cold: page cache dropped before each run"
  else
    echo "bench-verify: BENCH_COLD=1 needs root (/proc/sys/vm/drop_caches); skipped"
  fi
fi

#!/usr/bin/env bash
# bench-shard: dsr1-shard run on a real-dimension R1 checkpoint against what the same
# bytes cost with stock tools, in the same run:
#   cat FILES > /dev/null     the read ceiling
#   cp -r SRC DST && sync     what a plain copy (all bytes read once, written once) costs
#   dsr1-shard run --tp 8 --ep 8 (fsyncs every file itself)
# Prints wall times, source GB/s, ratios and dsr1-shard's peak RSS (/usr/bin/time).
#
# usage: scripts/bench_shard.sh [BUILD]        (make bench-shard runs it)
# env:   BENCH_LAYERS  decoder layers of `dsr1-synth --preset r1` (default 4: synth keeps
#                      first_k_dense_replace <= layers, so 4 = the 3 real dense layers + the
#                      first MoE layer, 17.0 GB with embed and lm_head; 2 = dense only, 5.1 GB)
#        BENCH_DIR     work directory (default $BUILD/bench-shard; needs ~2.1 x source free)
#        BENCH_TP / BENCH_EP / BENCH_DTYPE   plan (default 8 / 8 / fp8)
#        BENCH_KEEP=1  keep the synthesized source between runs (default: keep; 0 removes it)
# Page cache: when /proc/sys/vm/drop_caches is writable (root, not in every container) it is
# dropped before every step (cold numbers); otherwise every step starts after a warm-up
# read of the source. The output says which.
set -eu
BUILD=${1:-build}
BIN=$BUILD/bin
DIR=${BENCH_DIR:-$BUILD/bench-shard}
LAYERS=${BENCH_LAYERS:-4}
TP=${BENCH_TP:-8}
EP=${BENCH_EP:-8}
DTYPE=${BENCH_DTYPE:-fp8}
SRC=$DIR/src-r1-$LAYERS
say() { echo "bench-shard: $*"; }
die() { echo "bench-shard: ERROR: $*" >&2; exit 1; }
[ -x "$BIN/dsr1-shard" ] && [ -x "$BIN/dsr1-synth" ] || die "build first (make BUILD=$BUILD all)"
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (Debian package 'time')"
mkdir -p "$DIR"

if [ ! -f "$SRC/.complete" ]; then
  rm -rf "$SRC"
  say "synthesizing dsr1-synth --preset r1 --layers $LAYERS into $SRC ..."
  "$BIN/dsr1-synth" --preset r1 --layers "$LAYERS" --out "$SRC" --quiet
  touch "$SRC/.complete"
fi
files=("$SRC"/model-*.safetensors)
bytes=$(du -cb "${files[@]}" | tail -1 | cut -f1)
gb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e9 }'; }
free=$(df -B1 --output=avail "$DIR" | tail -1)
need=$((bytes * 11 / 10))
[ "$free" -gt "$need" ] || die "needs $(gb $need) GB free in $DIR for one copy at a time, has $(gb "$free") GB"

cold=0
drop() {
  sync
  if [ "$cold" -eq 1 ]; then echo 3 >/proc/sys/vm/drop_caches; else cat "${files[@]}" >/dev/null; fi
}
if sync && echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then cold=1; fi
[ $cold -eq 1 ] && cache="dropped before every step (cold)" || cache="not droppable here; every step starts warm"

# wall seconds and peak RSS (KB) of a command
measure() { # OUTVAR_T OUTVAR_RSS CMD...
  local tv=$1 rv=$2
  shift 2
  /usr/bin/time -f "%e %M" -o "$DIR/time.txt" "$@" >"$DIR/cmd.out" 2>"$DIR/cmd.err" ||
    { cat "$DIR/cmd.err" >&2; die "failed: $*"; }
  read -r t r <"$DIR/time.txt"
  printf -v "$tv" '%s' "$t"
  printf -v "$rv" '%s' "$r"
}

say "source $(gb "$bytes") GB in ${#files[@]} files (r1, $LAYERS layers + embed + lm_head); plan tp=$TP ep=$EP $DTYPE;" \
  "$(nproc) cores; page cache $cache"

drop
measure t_cat r_cat bash -c 'cat "$@" >/dev/null' _ "${files[@]}"

rm -rf "$DIR/cp"
drop
measure t_cp r_cp bash -c 'cp -r "$1" "$2" && sync -f "$2"/config.json' _ "$SRC" "$DIR/cp"
rm -rf "$DIR/cp"

rm -rf "$DIR/out"
drop
measure t_sh r_sh "$BIN/dsr1-shard" run "$SRC" --out "$DIR/out" --tp "$TP" --ep "$EP" --dtype "$DTYPE" --progress none
summary=$(cat "$DIR/cmd.out")
out_bytes=$(du -cb "$DIR"/out/*.safetensors | tail -1 | cut -f1)
rm -rf "$DIR/out"
[ "${BENCH_KEEP:-1}" = 0 ] && rm -rf "$SRC"

rate() { awk -v b="$bytes" -v t="$1" 'BEGIN { printf "%.2f", b / 1e9 / t }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
printf 'bench-shard: %-28s %7.1f s  %6s GB/s\n' "cat > /dev/null" "$t_cat" "$(rate "$t_cat")"
printf 'bench-shard: %-28s %7.1f s  %6s GB/s\n' "cp -r + sync" "$t_cp" "$(rate "$t_cp")"
printf 'bench-shard: %-28s %7.1f s  %6s GB/s  peak RSS %s MiB, wrote %s GB\n' "dsr1-shard run tp=$TP ep=$EP" "$t_sh" \
  "$(rate "$t_sh")" "$((r_sh / 1024))" "$(gb "$out_bytes")"
say "dsr1-shard: $summary"
say "speed vs cp -r: $(ratio "$t_cp" "$t_sh")x (goal >= 0.9x); vs cat: $(ratio "$t_cat" "$t_sh")x;" \
  "peak RSS $(awk -v k="$r_sh" 'BEGIN { printf "%.2f", k / 1048576 }') GiB (goal <= 1 GiB)"

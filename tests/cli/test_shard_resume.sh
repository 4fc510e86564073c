#!/usr/bin/env bash
# dsr1-shard run --resume: kill -9 at many points (mid-write in stage 0, after stage 0 is
# committed, at random moments), then rerun with --resume: the output is byte-identical
# to a clean run, files already complete are kept rather than rewritten, and an
# interrupted directory never has a manifest.json.
set -u
. "$(dirname "$0")/lib.inc"
D=$BIN/dsr1-shard
ARGS=(--tp 2 --ep 1 --pp 2 --mtp --batch 64KiB)
expect_exit "synth tiny" 0 "$BIN/dsr1-synth" --preset tiny --out "$T/tiny" --quiet
expect_exit "clean run" 0 "$D" run "$T/tiny" --out "$T/clean" "${ARGS[@]}" --quiet

check_resume() { # NAME DIR [damaged]
  # a manifest.json only ever exists next to a complete, correct directory
  if [ -e "$2/manifest.json" ] && [ -z "${3:-}" ]; then
    diff -r "$T/clean" "$2" >/dev/null && pass "$1: manifest.json present, directory complete" ||
      fail "$1: manifest.json present but the directory is not complete"
  fi
  if "$D" run "$T/tiny" --out "$2" "${ARGS[@]}" --resume >"$T/out" 2>"$T/err"; then
    if diff -r "$T/clean" "$2" >/dev/null; then pass "$1: resume gives identical output ($(grep -o '[0-9]* kept' "$T/out"))"
    else fail "$1: resumed output differs"; diff -r "$T/clean" "$2" | head -3; fi
  else
    fail "$1: resume failed"; head -3 "$T/err"
  fi
}

# at fixed points: stall after N batches (temp files open), then kill -9
for n in 1 5 40 150 230 260; do
  rm -rf "$T/k"
  DSR1_SHARD_TEST_STALL_BATCHES=$n "$D" run "$T/tiny" --out "$T/k" "${ARGS[@]}" --quiet 2>"$T/stall.err" &
  pid=$!
  for _ in $(seq 1 400); do
    grep -q "test stall" "$T/stall.err" && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.05
  done
  if grep -q "test stall" "$T/stall.err"; then
    kill -9 $pid
    wait $pid 2>/dev/null
    [ -e "$T/k/manifest.json" ] && fail "stalled run has a manifest.json"
    ls "$T/k" | grep -q '\.tmp\.' && pass "kill -9 after $n batches left temp files (as expected)" ||
      pass "kill -9 after $n batches"
    check_resume "kill -9 after $n batches" "$T/k"
    [ $n -ge 230 ] && { grep -q " 2 kept" "$T/out" && pass "stage 0 kept after $n batches" ||
      fail "stage 0 not kept after $n batches: $(cat "$T/out")"; }
  else
    wait $pid
    pass "run finished before batch $n"
  fi
done

# at random moments (whatever phase the run is in)
for i in 1 2 3 4; do
  rm -rf "$T/r"
  "$D" run "$T/tiny" --out "$T/r" "${ARGS[@]}" --quiet 2>/dev/null &
  pid=$!
  sleep "0.$((RANDOM % 2))$((RANDOM % 10))"
  kill -9 $pid 2>/dev/null
  wait $pid 2>/dev/null
  check_resume "random kill $i" "$T/r"
done

# resume twice in a row after a kill: the second finds everything complete
check_resume "resume of a complete directory" "$T/r"
grep -q "0 shard files written .*, 4 kept" "$T/out" && pass "complete directory: all 4 kept" ||
  fail "complete directory: $(cat "$T/out")"
# a damaged shard is not kept
printf 'X' | dd of="$T/r/model-pp00-tp01-of-pp02-tp02.safetensors" bs=1 seek=10000 conv=notrunc 2>/dev/null
check_resume "damaged shard" "$T/r" damaged
grep -q "1 shard files written .*, 3 kept" "$T/out" && pass "damaged shard rewritten, others kept" ||
  fail "damaged: $(cat "$T/out")"
finish

#!/usr/bin/env bash
# Runs the unit-test runner, every CLI test (tests/cli/*.sh) and a bounded fuzz run,
# and prints one summary line "N passed, M failed". Exit status 1 on any failure.
# Every test prints lines "PASS name" / "FAIL name"; a script that exits non-zero
# without printing FAIL counts as one failure.
set -u
cd "$(dirname "$0")/.."
export BUILD=${BUILD:-build}
export BIN=$PWD/$BUILD/bin
export PY=$PWD/build/venv/bin/python
export NCCL_NVLS_ENABLE=0
log=$(mktemp -d /tmp/dsr1-test-XXXXXX)
passed=0; failed=0

run_one() { # name, command...
  local name=$1; shift
  local out=$log/$(echo "$name" | tr '/ ' '__').log
  # A hang must end as a failure, never stall CI.
  timeout -k 10 "${TEST_TIMEOUT:-900}" "$@" >"$out" 2>&1
  local rc=$?
  [ "$rc" -eq 124 ] && echo "FAIL $name: timed out after ${TEST_TIMEOUT:-900}s" >>"$out"
  local p f
  p=$(grep -c '^PASS' "$out"); f=$(grep -c '^FAIL' "$out")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "FAIL $name (exit $rc without a FAIL line)" >>"$out"; f=1
  fi
  grep -E '^(PASS|FAIL|  )' "$out" | grep -v '^PASS' || true
  [ "$f" -gt 0 ] && { echo "--- $name: last lines of $out"; tail -n 15 "$out"; }
  echo "$name: $p passed, $f failed"
  passed=$((passed + p)); failed=$((failed + f))
}

run_one unit "$BIN/unit-tests"
for t in tests/cli/test_*.sh; do
  [ -e "$t" ] || continue
  [ -n "${SKIP_SLOW:-}" ] && grep -q '^# slow' "$t" && continue
  run_one "$(basename "$t" .sh)" bash "$t"
done
if [ -z "${SKIP_FUZZ:-}" ]; then
  for f in "$BUILD"/fuzz/fuzz_*; do
    [ -x "$f" ] || continue
    n=$(basename "$f")
    run_one "$n" bash -c "mkdir -p $BUILD/fuzz/corpus-$n && $f -max_total_time=${FUZZ_SECONDS:-30} -max_len=65536 $BUILD/fuzz/corpus-$n tests/fuzz/seeds-${n#fuzz_} >/dev/null 2>&1 && echo 'PASS $n (${FUZZ_SECONDS:-30}s, no crash)' || { echo 'FAIL $n: crash, see $BUILD/fuzz'; exit 1; }"
  done
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# scripts/launch_pod.sh, a node's entrypoint: one process per GPU with LOCAL_RANK,
# LOCAL_WORLD_SIZE and DSR1_GPUS_PER_NODE; output prefixed per process; the first
# failure stops the others and is the exit status; SIGTERM stops everything (SIGKILL
# after --grace); environments that would give every process the same rank are refused
# before anything starts. The processes here are shell stand-ins, no GPU needed.
set -u
. "$(dirname "$0")/lib.inc"
L=scripts/launch_pod.sh
# running CMD: a process whose command line starts with CMD (from /proc, no procps)
running() {
  local f
  for f in /proc/[0-9]*/cmdline; do
    tr '\0' ' ' <"$f" 2>/dev/null | grep -q "^$1" && return 0
  done
  return 1
}
expect_exit "three processes, all succeed: exit 0" 0 "$L" --gpus 3 -- sh -c 'echo "lr=$LOCAL_RANK lws=$LOCAL_WORLD_SIZE gpn=$DSR1_GPUS_PER_NODE rank=${RANK-unset}"; echo "e$LOCAL_RANK" >&2'
for i in 0 1 2; do
  expect_out "  process $i: its LOCAL_RANK, the pod's size, RANK left unset, prefixed" "^\[local $i\] lr=$i lws=3 gpn=3 rank=unset$"
  expect_err "  its stderr prefixed too" "^\[local $i\] e$i$"
done
[ "$(grep -c '^\[local' "$T/out")" -eq 3 ] && pass "  one stdout line each" || fail "  one stdout line each"

M=$$ # sleep 600.$M / 601.$M: this run's processes (sleep takes decimals)
expect_exit "one process fails: its status (7) is the exit" 7 timeout 120 "$L" --gpus 3 -- sh -c "if [ \$LOCAL_RANK = 1 ]; then exit 7; fi; exec sleep 600.$M"
expect_err "  names the process" 'local process 1 exited with status 7; stopping the others'
running "sleep 600.$M" && fail "  the others are stopped" || pass "  the others are stopped"

# SIGTERM to the launcher (pod deletion): children that ignore SIGTERM get SIGKILL after --grace
"$L" --gpus 2 --grace 1 -- sh -c "trap '' TERM; echo up; exec sleep 601.$M" >"$T/sig.out" 2>"$T/sig.err" &
lp=$!
for _ in $(seq 100); do [ "$(grep -c up "$T/sig.out")" -ge 2 ] && break; sleep 0.1; done
kill -TERM $lp
rc=0; timeout 60 tail --pid=$lp -f /dev/null || rc=$?
wait $lp; st=$?
[ $rc -eq 0 ] && [ $st -eq 143 ] && pass "SIGTERM: exit 143" || fail "SIGTERM: exit $st (tail $rc), wanted 143"
grep -q 'got SIGTERM; stopping the 2 processes' "$T/sig.err" && pass "  says so" || fail "  says so"
running "sleep 601.$M" && fail "  processes ignoring SIGTERM are killed" || pass "  processes ignoring SIGTERM are killed"

expect_exit "RANK set for the whole pod: exit 2, nothing started" 2 env RANK=3 "$L" --gpus 2 -- sh -c 'echo started'
expect_err "  says why" 'RANK is set in the environment \("3"\); every process of this pod would share it'
[ -s "$T/out" ] && fail "  nothing ran" || pass "  nothing ran"
expect_exit "LOCAL_RANK set: exit 2" 2 env LOCAL_RANK=0 "$L" --gpus 2 -- true
expect_exit "DSR1_GPUS_PER_NODE disagrees with --gpus: exit 2" 2 env DSR1_GPUS_PER_NODE=8 "$L" --gpus 2 -- true
expect_err "  names both" 'DSR1_GPUS_PER_NODE=8 but this pod starts 2 processes'
expect_exit "--gpus 0: exit 2" 2 "$L" --gpus 0 -- true
expect_exit "--gpus x: exit 2" 2 "$L" --gpus x -- true
expect_exit "--grace 1.5: exit 2" 2 "$L" --gpus 1 --grace 1.5 -- true
expect_exit "no command: exit 2" 2 "$L" --gpus 1 --
expect_exit "no --: exit 2" 2 "$L" --gpus 1 true
if ! command -v nvidia-smi >/dev/null; then
  expect_exit "no --gpus and no nvidia-smi: exit 2" 2 "$L" -- true
  expect_err "  says to give --gpus" 'no GPU found by nvidia-smi; give --gpus N'
fi
finish

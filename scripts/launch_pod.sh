#!/usr/bin/env bash
# launch_pod.sh [--gpus N] [--grace S] -- CMD ARGS...
# The entrypoint of one node (a Kubernetes pod) of a multi-node deployment: starts one
# process of CMD per GPU of this node, process i with LOCAL_RANK=i, LOCAL_WORLD_SIZE=N
# and DSR1_GPUS_PER_NODE=N (unless already set). RANK and WORLD_SIZE are left for each
# process to find as dsr1-serve does from the Kubernetes environment (LeaderWorkerSet
# variables, or the StatefulSet hostname ordinal): rank = node index x N + LOCAL_RANK
# (docs/cuda.md, Identity). N: --gpus, else the GPUs nvidia-smi lists.
# Each line a process prints goes to this script's stdout / stderr prefixed with
# "[local i] " (the pod's log). When one process exits non-zero, or the script gets
# SIGTERM / SIGINT (pod deletion), the others get SIGTERM, then SIGKILL after --grace
# seconds (default 20). Exit: the first non-zero exit status, 128 + the signal's number
# when stopped by one, else 0; 2 on a usage error (nothing started).
set -u
usage() {
  echo "launch_pod.sh: $*" >&2
  echo "usage: launch_pod.sh [--gpus N] [--grace S] -- CMD ARGS..." >&2
  exit 2
}
N="" GRACE=20
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case $1 in
    --gpus) [ $# -ge 2 ] || usage "--gpus needs a value"; N=$2; shift 2 ;;
    --grace) [ $# -ge 2 ] || usage "--grace needs a value"; GRACE=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) usage "unknown option \"$1\"" ;;
  esac
done
[ "${1:-}" = "--" ] || usage "missing -- before the command"
shift
[ $# -ge 1 ] || usage "no command after --"
# wait -n -p (which child ended) needs bash 5.1
if [ "${BASH_VERSINFO[0]}" -lt 5 ] || { [ "${BASH_VERSINFO[0]}" -eq 5 ] && [ "${BASH_VERSINFO[1]}" -lt 1 ]; }; then
  usage "needs bash 5.1 or newer (this is $BASH_VERSION)"
fi
case $GRACE in ''|*[!0-9]*) usage "--grace: whole seconds, got \"$GRACE\"" ;; esac
if [ -z "$N" ]; then
  N=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ') || N=0
  [ "$N" -ge 1 ] || usage "no GPU found by nvidia-smi; give --gpus N"
fi
case $N in ''|*[!0-9]*|0) usage "--gpus: a positive integer, got \"$N\"" ;; esac
# One RANK for the whole pod would give every process the same rank: the rendezvous
# would reject them only after the others arrived. Say it now.
for v in RANK LOCAL_RANK; do
  [ -z "${!v+x}" ] || usage "$v is set in the environment (\"${!v}\"); every process of this pod would share it. Unset it: each process takes LOCAL_RANK from this script and its rank from the Kubernetes environment"
done
if [ -n "${DSR1_GPUS_PER_NODE:-}" ] && [ "$DSR1_GPUS_PER_NODE" != "$N" ]; then
  usage "DSR1_GPUS_PER_NODE=$DSR1_GPUS_PER_NODE but this pod starts $N processes (--gpus or the GPUs found)"
fi
export LOCAL_WORLD_SIZE=$N DSR1_GPUS_PER_NODE=$N

declare -A local_of=()
pids=()
stop_all() { # SIGTERM to every child still running, SIGKILL after the grace period
  local p alive t=0
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null; done
  while :; do
    alive=0
    for p in "${pids[@]}"; do kill -0 -- "-$p" 2>/dev/null && alive=1; done
    [ $alive -eq 1 ] || break
    if [ $t -ge $((GRACE * 10)) ]; then
      for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null; done
      break
    fi
    sleep 0.1
    t=$((t + 1))
  done
  wait 2>/dev/null
}
on_signal() {
  echo "launch_pod.sh: got SIG$1; stopping the $N processes" >&2
  stop_all
  exit $((128 + $2))
}
trap 'on_signal TERM 15' TERM
trap 'on_signal INT 2' INT

# Each process runs in a process group of its own (job control), with its stdout and
# stderr piped through prefixers that end with it: a signal goes to the whole group.
set -m
for ((i = 0; i < N; i++)); do
  (
    { LOCAL_RANK=$i "$@" 2>&1 1>&3 3>&- | sed -u "s/^/[local $i] /" >&2
      exit "${PIPESTATUS[0]}"; } 3>&1 | sed -u "s/^/[local $i] /"
    exit "${PIPESTATUS[0]}"
  ) &
  pids+=($!)
  local_of[$!]=$i
done
set +m
rc=0
running=("${pids[@]}")
while [ ${#running[@]} -gt 0 ]; do
  done_pid=""
  wait -n -p done_pid "${running[@]}"
  st=$?
  [ -n "$done_pid" ] || continue # interrupted by a trapped signal
  rest=()
  for p in "${running[@]}"; do [ "$p" = "$done_pid" ] || rest+=("$p"); done
  running=("${rest[@]}")
  if [ $st -ne 0 ]; then
    echo "launch_pod.sh: local process ${local_of[$done_pid]} exited with status $st; stopping the others" >&2
    rc=$st
    stop_all
    break
  fi
done
exit $rc

#!/usr/bin/env bash
# launch_local.sh NGPU [--nodes K] [--logdir DIR] -- CMD ARGS...
# Start NGPU processes of CMD on this host, one per GPU, with the torchrun-style
# environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) that dsr1-serve
# and the GPU benchmarks read. With --nodes K the ranks form K process groups that
# imitate K nodes: each group sees only its own GPUs (CUDA_VISIBLE_DEVICES), gets
# DSR1_GPUS_PER_NODE=NGPU/K, and NCCL is kept off shared memory and peer-to-peer
# (NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1) so it talks through its network transport.
# NCCL_NVLS_ENABLE=0 always. Rank r's stdout goes to DIR/rank<r>.out and its stderr to
# DIR/rank<r>.err (default DIR: a temp dir); at the end every rank's stdout is echoed
# in rank order. Exit: the first non-zero rank exit code, else 0.
set -u
usage() { echo "usage: launch_local.sh NGPU [--nodes K] [--logdir DIR] -- CMD ARGS..." >&2; exit 2; }
[ $# -ge 1 ] || usage
N=$1; shift
NODES=1 LOGDIR=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case $1 in
    --nodes) NODES=$2; shift 2 ;;
    --logdir) LOGDIR=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) usage ;;
  esac
done
[ "${1:-}" = "--" ] || usage
shift
[ $# -ge 1 ] || usage
case $N in ''|*[!0-9]*) usage ;; esac
[ "$N" -ge 1 ] && [ "$NODES" -ge 1 ] && [ $((N % NODES)) -eq 0 ] || usage
PER=$((N / NODES))
[ -n "$LOGDIR" ] || LOGDIR=$(mktemp -d /tmp/dsr1-launch-XXXXXX)
mkdir -p "$LOGDIR"
# A rendezvous port below the kernel's ephemeral range (which NCCL's own sockets and
# every outgoing connection draw from: a port there can be taken between runs), and not
# bound by any socket now (/proc/net/tcp*).
free_port() {
  local lo=32768 hi p i used
  read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  [ "$lo" -gt 11024 ] || lo=32768
  used=$(awk 'NR > 1 { split($2, a, ":"); print a[2] }' /proc/net/tcp /proc/net/tcp6 2>/dev/null)
  for ((i = 0; i < 64; i++)); do
    p=$(( 10000 + (RANDOM * 32768 + RANDOM) % (lo - 10000) ))
    grep -qx "$(printf %04X "$p")" <<<"$used" || { echo "$p"; return; }
  done
  echo "$p"
}
PORT=${MASTER_PORT:-$(free_port)}
export NCCL_NVLS_ENABLE=0
pids=()
for ((r = 0; r < N; r++)); do
  node=$((r / PER)) local=$((r % PER))
  if [ "$NODES" -gt 1 ]; then
    first=$((node * PER)) vis=""
    for ((g = first; g < first + PER; g++)); do vis="$vis${vis:+,}$g"; done
    env CUDA_VISIBLE_DEVICES="$vis" DSR1_GPUS_PER_NODE=$PER NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 \
      NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo} \
      RANK=$r WORLD_SIZE=$N LOCAL_RANK=$local MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT \
      "$@" >"$LOGDIR/rank$r.out" 2>"$LOGDIR/rank$r.err" &
  else
    env RANK=$r WORLD_SIZE=$N LOCAL_RANK=$local MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT \
      "$@" >"$LOGDIR/rank$r.out" 2>"$LOGDIR/rank$r.err" &
  fi
  pids+=($!)
done
rc=0
for ((r = 0; r < N; r++)); do
  wait "${pids[$r]}"; c=$?
  if [ $c -ne 0 ]; then
    echo "launch_local: rank $r exited $c: $(tail -n 3 "$LOGDIR/rank$r.err" | tr '\n' ' ')" >&2
    [ $rc -eq 0 ] && rc=$c
  fi
done
for ((r = 0; r < N; r++)); do cat "$LOGDIR/rank$r.out"; done
exit $rc

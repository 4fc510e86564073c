#!/usr/bin/env bash
# scripts/launch_local.sh, the one-host launcher of the GPU tests and benchmarks: the
# torchrun-style environment of each rank, one rendezvous port for all (drawn below the
# kernel's ephemeral range and not bound by any socket, or MASTER_PORT), --nodes
# process groups, the first failing rank's status, usage errors. Shell stand-ins for
# the ranks: no GPU needed.
set -u
. "$(dirname "$0")/lib.inc"
L=scripts/launch_local.sh
read -r lo _ </proc/sys/net/ipv4/ip_local_port_range

expect_exit "three ranks, all succeed: exit 0" 0 env -u MASTER_PORT "$L" 3 --logdir "$T/l3" -- \
  sh -c 'echo "r=$RANK ws=$WORLD_SIZE lr=$LOCAL_RANK addr=$MASTER_ADDR port=$MASTER_PORT"'
for i in 0 1 2; do
  expect_out "  rank $i: its RANK, WORLD_SIZE, LOCAL_RANK, in rank order" "^r=$i ws=3 lr=$i addr=127.0.0.1 port=[0-9]+$"
done
ports=$(sed -n 's/.*port=//p' "$T/out" | sort -u)
[ "$(echo "$ports" | wc -l)" -eq 1 ] && pass "  one port for every rank" || fail "  ports: $ports"
[ "$ports" -ge 10000 ] && [ "$ports" -lt "$lo" ] && pass "  port $ports below the ephemeral range ($lo)" \
  || fail "  port $ports not in [10000, $lo)"
[ -s "$T/l3/rank2.out" ] && pass "  per-rank logs in --logdir" || fail "  per-rank logs in --logdir"

expect_exit "MASTER_PORT is kept" 0 env MASTER_PORT=23456 "$L" 2 -- sh -c 'echo "port=$MASTER_PORT"'
[ "$(grep -c '^port=23456$' "$T/out")" -eq 2 ] && pass "  both ranks" || fail "  both ranks: $(cat "$T/out")"

# a bound port is skipped: with the same RANDOM seed, the first draw is held by a
# listening socket, so the launcher's function takes the next draw
fp=$(sed -n '/^free_port()/,/^}/p' "$L")
first=$(bash -c "$fp"'
RANDOM=4242; free_port')
python3 - "$first" >"$T/held" <<'PYEOF' &
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1); print("up", flush=True); time.sleep(30)
PYEOF
hp=$!
for _ in $(seq 100); do grep -q up "$T/held" && break; sleep 0.1; done
second=$(bash -c "$fp"'
RANDOM=4242; free_port')
kill $hp 2>/dev/null; wait $hp 2>/dev/null
[ -n "$first" ] && [ -n "$second" ] && [ "$first" != "$second" ] \
  && pass "a port a socket holds ($first) is skipped (took $second)" \
  || fail "bound port not skipped: first $first, then $second"

expect_exit "--nodes 2: two process groups" 0 "$L" 4 --nodes 2 -- \
  sh -c 'echo "r=$RANK vis=$CUDA_VISIBLE_DEVICES gpn=$DSR1_GPUS_PER_NODE p2p=$NCCL_P2P_DISABLE shm=$NCCL_SHM_DISABLE nvls=$NCCL_NVLS_ENABLE lr=$LOCAL_RANK"'
expect_out "  rank 1: the first node's GPUs" '^r=1 vis=0,1 gpn=2 p2p=1 shm=1 nvls=0 lr=1$'
expect_out "  rank 2: the second node's, LOCAL_RANK from 0" '^r=2 vis=2,3 gpn=2 p2p=1 shm=1 nvls=0 lr=0$'

expect_exit "a rank fails: its status (5) is the exit" 5 "$L" 2 -- sh -c '[ $RANK = 1 ] && exit 5; exit 0'
expect_err "  names the rank" 'launch_local: rank 1 exited 5'
expect_exit "usage: NGPU not a number" 2 "$L" x -- true
expect_exit "usage: NGPU not a multiple of --nodes" 2 "$L" 3 --nodes 2 -- true
expect_exit "usage: no command" 2 "$L" 2 --
finish

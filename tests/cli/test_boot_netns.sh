#!/usr/bin/env bash
# Rendezvous across Linux network namespaces standing in for two nodes (a veth pair,
# 2 ranks per "node", StatefulSet-style identity from --hostname + --gpus-per-node):
# success, mismatched manifest, missing rank, wrong world size, unreachable rank 0,
# and a network cut between join and fence. Needs root (CI runs as root); if the
# namespaces cannot be made this test FAILS rather than skips.
set -u # not -e: commands below are meant to fail
. "$(dirname "$0")/lib.inc"
P=$BIN/boot-probe
[ -x "$P" ] || { fail "boot-probe not built ($P)"; finish; exit 1; }

id=$(( $$ % 100000 ))
NS0=dsr1n0-$id NS1=dsr1n1-$id
SUB=10.$(( 100 + $$ % 100 )).$(( $$ % 250 ))
A0=$SUB.1 A1=$SUB.2
cleanup() { ip netns del "$NS0" 2>/dev/null; ip netns del "$NS1" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT

if ! { ip netns add "$NS0" && ip netns add "$NS1" &&
       ip link add "va$id" netns "$NS0" type veth peer name "vb$id" netns "$NS1" &&
       ip -n "$NS0" addr add "$A0/24" dev "va$id" && ip -n "$NS1" addr add "$A1/24" dev "vb$id" &&
       ip -n "$NS0" link set "va$id" up && ip -n "$NS1" link set "vb$id" up &&
       ip -n "$NS0" link set lo up && ip -n "$NS1" link set lo up; } 2>"$T/netns.err"; then
  fail "cannot create network namespaces + veth (needs root and iproute2): $(head -c 300 "$T/netns.err")"
  finish; exit 1
fi
if ip netns exec "$NS1" ping -c 1 -W 2 "$A0" >/dev/null 2>&1 ||
   ip netns exec "$NS1" bash -c "exec 3<>/dev/tcp/$A0/9" 2>/dev/null; then :; fi
pass "namespaces $NS0 ($A0) and $NS1 ($A1) linked by a veth pair"

PORT=29500
# start NAME RANKS...: rank r runs in node r/2's namespace as pod dsr1-<node>, local rank r%2.
# Per-rank extra args in X_<r>; WORLD (default 4); DELAY_CUT cuts the link while
# ranks wait in --fence-delay-ms.
start() {
  local name=$1; shift
  local pids=() r
  for r in "$@"; do
    local node=$(( r / 2 )) ns xv="X_$r"
    ns=$([ $node = 0 ] && echo "$NS0" || echo "$NS1")
    # shellcheck disable=SC2086
    ( rc=0; ip netns exec "$ns" env -i LOCAL_RANK=$(( r % 2 )) WORLD_SIZE="${WORLD:-4}" \
        MASTER_ADDR="${MADDR:-$A0}" MASTER_PORT=$PORT \
        "$P" --hostname "dsr1-$node" --gpus-per-node 2 --timeout-ms "${TMO:-5000}" \
        --linger-ms 500 ${!xv:-} >"$T/$name.out.$r" 2>"$T/$name.err.$r" || rc=$?
      echo $rc >"$T/$name.rc.$r" ) &
    pids+=($!)
  done
  if [ -n "${CUT_AFTER:-}" ]; then
    sleep "$CUT_AFTER"; ip -n "$NS1" link set "vb$id" down
  fi
  wait "${pids[@]}" || true
  [ -n "${CUT_AFTER:-}" ] && ip -n "$NS1" link set "vb$id" up
  return 0
}

expect_all() { # NAME CODE REGEX RANKS...
  local name=$1 code=$2 re=$3 r ok=1; shift 3
  for r in "$@"; do
    local rc; rc=$(cat "$T/$name.rc.$r")
    if [ "$rc" != "$code" ] || { [ -n "$re" ] && ! grep -Eq "$re" "$T/$name.err.$r"; } ||
       { [ -z "$re" ] && [ -s "$T/$name.err.$r" ]; }; then
      ok=0; fail "$name: rank $r exit $rc (wanted $code), stderr: $(head -c 300 "$T/$name.err.$r")"
    fi
  done
  [ $ok = 1 ] && pass "$name: ranks $* exit $code${re:+ with /$re/}"
  return 0
}

start ok 0 1 2 3
expect_all ok 0 "" 0 1 2 3
[ "$(cat "$T"/ok.out.* | grep -o 'id=[0-9a-f]*' | sort -u | wc -l)" = 1 ] &&
  [ "$(cat "$T"/ok.out.* | grep -c 'joined (StatefulSet hostname)')" = 4 ] &&
  pass "ok: 4 ranks on 2 namespaces share one unique id, identity from the StatefulSet hostname" ||
  fail "ok: outputs: $(cat "$T"/ok.out.*)"

X_3="--digest ffffffffffffffffffffffffffffffff" start digest 0 1 2 3
expect_all digest 1 'rank 3 \(host dsr1-1\) has manifest digest ffffffffffffffffffffffffffffffff' 0 1 2 3

TMO=1500 start missing 0 1 2
expect_all missing 3 'rank\(s\) 3 of world size 4 did not join within 1\.5 s' 0 1 2

X_2="--world-size 6" X_3="--world-size 6" start world 0 1 2 3
expect_all world 1 'rank [23] \(host dsr1-1\) says world size 6, rank 0 \(host dsr1-0\) says 4' 0 1 2 3

MADDR=$SUB.99 TMO=1500 start unreach 2
expect_all unreach 3 "rank 2 cannot reach rank 0 at $SUB\\.99:$PORT within 1\\.5 s" 2

# ranks 2 and 3 hold the fence back 1.5 s; the link goes down 0.8 s in: bounded, named
X_2="--fence-delay-ms 1500" X_3="--fence-delay-ms 1500" CUT_AFTER=0.8 TMO=2500 start cut 0 1 2 3
expect_all cut 3 "rank\\(s\\) 2, 3 did not finish 'loaded' within 2\\.5 s" 0 1
expect_all cut 3 "rank 0 gave no verdict on 'loaded'" 2 3
finish

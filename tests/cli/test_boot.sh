#!/usr/bin/env bash
# Rendezvous with every rank a separate process on loopback (torchrun-style env):
# success, mismatched manifest, missing rank, wrong world size, dead peer, failed fence.
set -u # not -e: lib.inc's expect_exit runs commands that are meant to fail
. "$(dirname "$0")/lib.inc"
P=$BIN/boot-probe
[ -x "$P" ] || { fail "boot-probe not built ($P)"; finish; exit 1; }

free_port() { "$PY" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# WSLIST="w0 w1 ..." overrides each rank's WORLD_SIZE
ws_of() { local a; read -ra a <<<"${WSLIST:-}"; echo "${a[$1]:-$2}"; }

# run_world NAME WORLD [per-rank extra args via X_<rank>] : starts ranks 0..WORLD-1
# (skipping those listed in SKIP), waits, leaves rc in $T/NAME.rc.<r> and stderr in
# $T/NAME.err.<r>.
run_world() {
  local name=$1 world=$2 port; port=$(free_port)
  local pids=() r
  for ((r = 0; r < world; r++)); do
    case " ${SKIP:-} " in *" $r "*) continue ;; esac
    local xv="X_$r"
    # shellcheck disable=SC2086
    ( rc=0; RANK=$r WORLD_SIZE=$(ws_of "$r" "$world") MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
        "$P" --timeout-ms "${TMO:-4000}" --linger-ms 500 ${!xv:-} \
        >"$T/$name.out.$r" 2>"$T/$name.err.$r" || rc=$?; echo $rc >"$T/$name.rc.$r" ) &
    pids+=($!)
  done
  wait "${pids[@]}" || true
}

# every started rank exits CODE and its stderr matches REGEX
expect_all() {
  local name=$1 world=$2 code=$3 re=$4 r ok=1
  for ((r = 0; r < world; r++)); do
    case " ${SKIP:-} " in *" $r "*) continue ;; esac
    local rc; rc=$(cat "$T/$name.rc.$r")
    if [ "$rc" != "$code" ] || { [ -n "$re" ] && ! grep -Eq "$re" "$T/$name.err.$r"; } ||
       { [ -z "$re" ] && [ -s "$T/$name.err.$r" ]; }; then
      ok=0; fail "$name: rank $r exit $rc (wanted $code), stderr: $(head -c 300 "$T/$name.err.$r")"
    fi
  done
  [ $ok = 1 ] && pass "$name: every rank exits $code with /$re/"
  return 0
}

run_world ok 4
expect_all ok 4 0 ""
ids=$(cat "$T"/ok.out.* | grep -o 'id=[0-9a-f]*' | sort -u | wc -l)
[ "$ids" = 1 ] && pass "all 4 ranks got the same unique id" || fail "ranks got $ids different ids"
[ "$(cat "$T"/ok.out.* | grep -c 'fence loaded ok')" = 4 ] && pass "all ranks passed the fence" \
  || fail "fence lines: $(cat "$T"/ok.out.*)"

X_2="--digest 0123456789abcdef0123456789abcdef" run_world digest 4
expect_all digest 4 1 'rank 2 \(host [^)]*\) has manifest digest 0123456789abcdef0123456789abcdef'

X_0="--expect-shards s0,s1,s2" X_1="--shard s1" X_2="--shard s0" run_world shard 3
expect_all shard 3 1 'rank 2 .* holds shard "s0", the manifest assigns "s2"'

X_3="--plan tp=2" run_world plan 4
expect_all plan 4 1 'rank 3 .* runs plan "tp=2"'

SKIP="2" TMO=1500 run_world missing 4
SKIP="2" expect_all missing 4 3 'rank\(s\) 2 of world size 4 did not join within 1\.5 s'

WSLIST="4 4 3 4" run_world world 4
expect_all world 4 1 'rank 2 .* says world size 3, rank 0 .* says 4'

X_1="--exit-after-join" run_world dead 3
SKIP="1" expect_all dead 3 3 "rank 1 \(host [^)]*\) closed its bootstrap connection before finishing 'loaded'"

X_2="--fence-fail shard_hash_mismatch" run_world fencefail 3
expect_all fencefail 3 1 "rank 2 \(host [^)]*\) failed 'loaded': shard_hash_mismatch"

SKIP="0" TMO=800 run_world norank0 2
SKIP="0" expect_all norank0 2 3 'rank 1 cannot reach rank 0 at 127\.0\.0\.1:[0-9]+ within 0\.8 s'

# identity sources, as the probe resolves them
expect_exit "ident: StatefulSet ordinal" 0 env -i LOCAL_RANK=3 WORLD_SIZE=16 \
  "$P" --ident-only --gpus-per-node 8 --hostname r1-1.r1.ns.svc.cluster.local
expect_out "ident: StatefulSet rank 11, rank 0 at ordinal 0" \
  'rank=11 world=16 local=3 node=1 .*master=r1-0.r1.ns.svc.cluster.local:29500 source=StatefulSet'
expect_exit "ident: LeaderWorkerSet" 0 env -i LWS_WORKER_INDEX=1 LWS_GROUP_SIZE=2 \
  LWS_LEADER_ADDRESS=lead LOCAL_RANK=2 DSR1_GPUS_PER_NODE=4 "$P" --ident-only
expect_out "ident: LWS rank 6 of 8" 'rank=6 world=8 local=2 node=1 .*master=lead:29500 source=LeaderWorkerSet'
expect_exit "ident: flags beat torchrun env" 0 env -i RANK=3 WORLD_SIZE=4 "$P" --ident-only --rank 1
expect_out "ident: flag rank wins" 'rank=1 world=4 .*source=flags'
expect_exit "ident: rank beyond world is a usage error" 2 env -i RANK=4 WORLD_SIZE=4 "$P" --ident-only
expect_err "ident: names the range" 'rank 4 .* out of range for world size 4'
finish

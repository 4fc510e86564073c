#!/usr/bin/env bash
# dsr1-verify on wrong input: missing / file / foreign-schema / empty manifests, garbage
# XXH128SUMS, ranks out of range, --rank auto without identity or with a StatefulSet
# ordinal past the plan, conflicting flags, and --json still answering on early failures.
set -eu
. "$(dirname "$0")/lib.inc"
set +e
V=$BIN/dsr1-verify
"$BIN/dsr1-synth" --preset tiny --out "$T/ck" --quiet || { fail "synth"; finish; exit; }
"$BIN/dsr1-shard" run "$T/ck" --out "$T/s" --tp 2 --ep 2 --pp 2 --nodes 2 --gpus-per-node 2 --quiet \
  || { fail "shard"; finish; exit; }
json_field() { "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d[sys.argv[2]])' "$T/out" "$1"; }

expect_exit "DIR does not exist: exit 1" 1 "$V" "$T/nope"
expect_out "  says it does not exist" "manifest.json: FAILED \(missing: .*/nope does not exist\)"
expect_exit "DIR is manifest.json itself: exit 1" 1 "$V" "$T/s/manifest.json"
expect_out "  says to pass the directory" "is a file, not a directory"
mkdir -p "$T/e"; expect_exit "empty directory: exit 1" 1 "$V" "$T/e"
expect_out "  not a dsr1-shard output" "not a dsr1-shard output directory"
mkdir -p "$T/o"; echo '{"schemaVersion": 2, "layers": []}' > "$T/o/manifest.json"
expect_exit "manifest.json of another schema: exit 1" 1 "$V" "$T/o"
expect_out "  names the missing field" "manifest.format is missing"
mkdir -p "$T/z"; : > "$T/z/manifest.json"
expect_exit "empty manifest.json: exit 1" 1 "$V" "$T/z"
expect_out "  not valid JSON" "not valid JSON"
cp -r "$T/s" "$T/g"; printf 'garbage\n0123  x\n' >> "$T/g/XXH128SUMS"
expect_exit "garbage XXH128SUMS lines: exit 1" 1 "$V" --quick "$T/g"
expect_out "  names the line" "XXH128SUMS: FAILED \(.*XXH128SUMS:6: expected"

expect_exit "--rank 4 of world 4: exit 2" 2 "$V" --rank 4 "$T/s"
expect_err "  names the world size" "rank 4 is not in this deployment \(world size 4\)"
grep -q "FAILED" "$T/out" && fail "  prints a FAILED verdict for a usage error" || pass "  no verdict line"
expect_exit "--node 2 of 2 nodes: exit 2" 2 "$V" --node 2 "$T/s"
expect_exit "--rank 3-1: exit 2" 2 "$V" --rank 3-1 "$T/s"
expect_exit "--rank and --node: exit 2" 2 "$V" --rank 1 --node 0 "$T/s"
expect_exit "--status and --json: exit 2" 2 "$V" --status --json "$T/s"
expect_err "  says pick one" "pick one"
expect_exit "--quick --source: exit 2" 2 "$V" --quick --source "$T/ck" "$T/s"

# --json answers even when the selection fails before any file is checked
expect_exit "--json --rank 0 on a missing dir: exit 1" 1 "$V" --json --rank 0 "$T/nope"
[ "$(json_field ok)" = False ] && [ "$(json_field exit)" = 1 ] && json_field error | grep -q "cannot open" \
  && pass "  one JSON object with ok, exit, error" || fail "  no JSON verdict: $(cat "$T/out")"
expect_exit "--json --rank auto without identity: exit 2" 2 env -u RANK -u LWS_WORKER_INDEX "$V" --json --rank auto "$T/s"
[ "$(json_field exit)" = 2 ] && json_field error | grep -q "no rank" && pass "  JSON verdict" || fail "  no JSON: $(cat "$T/out")"
expect_exit "--status --rank auto without identity: silent" 2 env -u RANK -u LWS_WORKER_INDEX "$V" --status --rank auto "$T/s"
[ -s "$T/out" ] || [ -s "$T/err" ] && fail "  --status printed" || pass "  --status printed nothing"

# --rank auto
expect_exit "RANK=1 WORLD_SIZE=8 (another deployment): exit 1" 1 env RANK=1 WORLD_SIZE=8 "$V" --quick --rank auto "$T/s"
expect_err "  world size mismatch named" "world size 8, the manifest's plan has 4"
if unshare -u true 2>/dev/null; then
  unshare -u sh -c 'hostname r1-3; "$1" --quick --rank auto --gpus-per-node 2 "$2"' sh "$V" "$T/s" >"$T/out" 2>"$T/err"
  [ $? -eq 2 ] && grep -q "rank auto: rank 6 (from StatefulSet hostname).*plan: 2 nodes x 2 GPUs" "$T/err" \
    && pass "StatefulSet pod r1-3 of a 2-node plan: exit 2, names the plan" || { fail "r1-3"; cat "$T/err"; }
  unshare -u sh -c 'hostname r1-1; "$1" --rank auto --gpus-per-node 2 "$2"' sh "$V" "$T/s" >"$T/out" 2>"$T/err"
  [ $? -eq 0 ] && grep -q "pod 1: ranks 2-3" "$T/out" && pass "StatefulSet pod r1-1: ranks 2-3" || fail "r1-1"
  unshare -u sh -c 'hostname r1-1.r1.ns.svc.cluster.local; "$1" --quick --rank auto "$2"' sh "$V" "$T/s" >"$T/out" 2>"$T/err"
  [ $? -eq 0 ] && grep -q "pod 1: ranks 2-3" "$T/out" && pass "FQDN hostname, G from the plan" || fail "fqdn"
else
  echo "SKIP unshare -u not permitted: StatefulSet hostname tests"
fi
finish

#!/usr/bin/env bash
# dsr1-pack extract on wrong input: a DEST holding another deployment (refused, --force
# replaces), truncated .tar / .tar.zst at every stage (specific message, nothing under a
# final name), a directory that is not an archive, and the Kubernetes init-container
# commands of docs/guides/registry.md with a StatefulSet hostname (unshare -u).
set -eu
. "$(dirname "$0")/lib.inc"
set +e
P=$BIN/dsr1-pack
V=$BIN/dsr1-verify
"$BIN/dsr1-synth" --preset tiny --out "$T/ck" --quiet || { fail "synth"; finish; exit; }
"$BIN/dsr1-shard" run "$T/ck" --out "$T/a" --tp 2 --ep 2 --pp 2 --nodes 2 --gpus-per-node 2 --quiet \
  || { fail "shard a"; finish; exit; }
"$BIN/dsr1-shard" run "$T/ck" --out "$T/b" --tp 2 --ep 2 --quiet || { fail "shard b"; finish; exit; }
"$P" create "$T/a" "$T/pa" --per node -q && "$P" create "$T/b" "$T/pb" -q && "$P" create "$T/b" "$T/pz" --zstd -q \
  || { fail "create"; finish; exit; }
A01=model-pp01-tp00-of-pp02-tp02.safetensors

# DEST with foreign files under our names: refused before anything is written
mkdir -p "$T/d1"; echo '{"not":"ours"}' > "$T/d1/manifest.json"; echo old > "$T/d1/$A01"; echo keep > "$T/d1/notes.txt"
expect_exit "extract into a DEST with another manifest.json: exit 1" 1 "$P" extract "$T/pa/node-01.tar" "$T/d1" -q
expect_err "  names the conflict and --force" "already holds a different manifest.json.*--force"
[ "$(cat "$T/d1/$A01")" = old ] && grep -q not "$T/d1/manifest.json" && ! ls "$T/d1"/.dsr1-partial.* >/dev/null 2>&1 \
  && pass "  DEST untouched" || fail "  DEST was modified"
expect_exit "--force replaces it" 0 "$P" extract "$T/pa/node-01.tar" "$T/d1" -q --force
cmp -s "$T/a/manifest.json" "$T/d1/manifest.json" && cmp -s "$T/a/$A01" "$T/d1/$A01" && [ "$(cat "$T/d1/notes.txt")" = keep ] \
  && pass "  same-named files replaced, other files kept" || fail "  --force result wrong"
# same deployment: a rerun and the other node's archive complete the directory in place
expect_exit "rerun into the same deployment: no --force needed" 0 "$P" extract "$T/pa/node-01.tar" "$T/d1" -q
expect_exit "other node of the same deployment" 0 "$P" extract "$T/pa/node-00.tar" "$T/d1" -q
rm "$T/d1/notes.txt"
expect_exit "  the merged directory verifies" 0 "$V" -q "$T/d1"
expect_exit "another deployment over a complete one: exit 1" 1 "$P" extract "$T/pb/all.tar" "$T/d1" -q
cmp -s "$T/a/manifest.json" "$T/d1/manifest.json" && pass "  first deployment intact" || fail "  manifest replaced"
expect_exit "--force applies to extract only" 2 "$P" create "$T/a" "$T/px" --force

# truncated archives: a specific message, exit 1, nothing under a final name
SZ=$(stat -c %s "$T/pb/all.tar")
for n in 0 100 1000 5000 200000 3000000 $((SZ - 20000)); do
  head -c "$n" "$T/pb/all.tar" > "$T/t.tar"; rm -rf "$T/dt"
  expect_exit "tar cut at $n bytes: exit 1" 1 "$P" extract "$T/t.tar" "$T/dt" -q
  if grep -q "(null)" "$T/err" || ! [ -s "$T/err" ]; then fail "  no message: $(cat "$T/err")"; else pass "  message: $(head -c 90 "$T/err")"; fi
  [ ! -e "$T/dt/manifest.json" ] && ! ls "$T/dt"/model-* "$T/dt"/.dsr1-partial.* >/dev/null 2>&1 \
    && pass "  nothing left under a final name" || fail "  files left in DEST"
done
ZS=$(stat -c %s "$T/pz/all.tar.zst")
for n in 100 1000 $((ZS / 2)) $((ZS - 10)); do
  head -c "$n" "$T/pz/all.tar.zst" > "$T/t.tar.zst"; rm -rf "$T/dt"
  expect_exit "tar.zst cut at $n bytes: exit 1" 1 "$P" extract "$T/t.tar.zst" "$T/dt" -q
  expect_err "  says truncated" "[Tt]runcated"
  [ ! -e "$T/dt/manifest.json" ] && ! ls "$T/dt"/model-* >/dev/null 2>&1 && pass "  nothing placed" || fail "  files placed"
done

# not an archive
expect_exit "extract a shard directory: exit 2" 2 "$P" extract "$T/a" "$T/dx"
expect_err "  says what it is" "dsr1-shard output.*dsr1-pack create"
expect_exit "list a plain directory: exit 2" 2 "$P" list "$T/ck"
expect_err "  says so" "neither an archive nor an OCI image layout"

# docs/guides/registry.md, archive init container, StatefulSet pod r1-1 (2 GPUs per node)
if unshare -u true 2>/dev/null; then
  unshare -u sh -c 'hostname r1-1; set -e; node=$(printf "node-%02d" "$(hostname | sed "s/.*-//")")
    cat "$1/pa/$node.tar" | "$2" extract - "$1/k8s" --rank auto --gpus-per-node 2 --verify' sh "$T" "$P" >"$T/out" 2>"$T/err"
  rc=$?
  [ $rc -eq 0 ] && grep -q "pod 1: ranks 2-3" "$T/out" && [ "$(ls "$T/k8s" | wc -l)" -eq 4 ] \
    && pass "init container (hostname r1-1): node-01 archive, ranks 2-3, verified" \
    || { fail "init container: rc $rc"; cat "$T/err"; }
  unshare -u sh -c 'hostname r1-1; "$1" --rank auto --gpus-per-node 2 --quiet "$2"' sh "$V" "$T/k8s" >"$T/out" 2>&1 \
    && pass "  skip-download check passes on the pod's volume" || fail "  dsr1-verify --rank auto on the volume"
  unshare -u sh -c 'hostname r1-0; cat "$2" | "$1" extract - "$3" --rank auto --gpus-per-node 2 -q' sh "$P" \
    "$T/pa/node-01.tar" "$T/k8s0" >"$T/out" 2>"$T/err"
  [ $? -eq 1 ] && grep -q "does not hold" "$T/err" && pass "  pod 0 fed node 1's archive: exit 1, named" \
    || fail "  wrong archive for the pod not refused"
  "$P" oci "$T/a" "$T/oci" --per node -q
  unshare -u sh -c 'hostname r1-1; "$1" extract "$2" "$3" --ref node-01 --rank auto --gpus-per-node 2 --verify -q' sh "$P" \
    "$T/oci" "$T/k8s2" >"$T/out" 2>"$T/err" && cmp -s "$T/a/$A01" "$T/k8s2/$A01" \
    && pass "  from a pulled OCI layout (--ref node-01)" || { fail "  OCI init container"; cat "$T/err"; }
else
  echo "SKIP unshare -u not permitted: init-container hostname tests"
fi
finish

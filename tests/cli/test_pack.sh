#!/usr/bin/env bash
# dsr1-pack: reproducible aligned archives, verified round trips (tar, zstd, stdin, OCI),
# per-rank extraction, hostile archives, disk full, and a rerun after kill -9.
set -eu
. "$(dirname "$0")/lib.inc"
set +e
P=$BIN/dsr1-pack
HERE=$(cd "$(dirname "$0")/../.." && pwd)
"$BIN/dsr1-synth" --preset tiny --out "$T/ck" --quiet || { fail "synth"; finish; exit; }
"$BIN/dsr1-shard" run "$T/ck" --out "$T/sh" --tp 2 --pp 2 --dp 2 --nodes 2 --gpus-per-node 4 --quiet \
  || { fail "shard"; finish; exit; }
S01=model-pp00-tp01-of-pp02-tp02.safetensors
FILES="XXH128SUMS manifest.json $(cd "$T/sh" && ls model-*.safetensors | tr '\n' ' ')"

same_files() { # DIR [FILE...]: each file equals the source's
  local d=$1; shift
  for f in "$@"; do cmp -s "$T/sh/$f" "$d/$f" || { echo "    differs: $f"; return 1; }; done
}
no_final() { # DIR: nothing under a final name, no partial files left
  [ ! -e "$1/manifest.json" ] && [ ! -e "$1/XXH128SUMS" ] && ! ls "$1"/model-* >/dev/null 2>&1 &&
    ! ls "$1"/.dsr1-partial.* >/dev/null 2>&1
}

# create: reproducible, aligned, readable by stock tar
expect_exit "create all" 0 "$P" create "$T/sh" "$T/a1" -q
expect_exit "create all again" 0 "$P" create "$T/sh" "$T/a2" -q
cmp -s "$T/a1/all.tar" "$T/a2/all.tar" && pass "two creates: byte-identical" || fail "two creates differ"
"$P" create "$T/sh" "$T/z1" --zstd -q && "$P" create "$T/sh" "$T/z2" --zstd -q
cmp -s "$T/z1/all.tar.zst" "$T/z2/all.tar.zst" && pass "two zstd creates: byte-identical" || fail "zstd creates differ"
zstd -dc "$T/z1/all.tar.zst" 2>/dev/null | cmp -s - "$T/a1/all.tar" && pass "zstd archive = zstd of the tar" \
  || fail "zstd content differs from the tar"
"$PY" -c '
import sys, tarfile
t = tarfile.open(sys.argv[1])
names = [m.name for m in t.getmembers()]
assert names == sorted(names, key=lambda s: s.encode()), names
assert names[:3] == [".dsr1-pack.json", "XXH128SUMS", "manifest.json"], names
bad = [(m.name, m.offset_data) for m in t.getmembers() if m.offset_data % 4096]
assert not bad, bad
assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 and m.mode == 0o644 and not m.uname for m in t.getmembers())
assert "comment" in t.getmembers()[3].pax_headers
' "$T/a1/all.tar" && pass "members sorted, data 4096-aligned, fixed owner/mode/mtime" || fail "layout"
mkdir -p "$T/gnu" && tar -xf "$T/a1/all.tar" -C "$T/gnu" && same_files "$T/gnu" $FILES \
  && pass "GNU tar extracts identical files" || fail "GNU tar interop"
SOURCE_DATE_EPOCH=1700000000 "$P" create "$T/sh" "$T/a3" -q
"$PY" -c 'import sys, tarfile; assert all(m.mtime == 1700000000 for m in tarfile.open(sys.argv[1]))' \
  "$T/a3/all.tar" && pass "SOURCE_DATE_EPOCH sets the mtime" || fail "SOURCE_DATE_EPOCH"

# round trips
expect_exit "extract --verify" 0 "$P" extract "$T/a1/all.tar" "$T/x1" --verify
expect_out "extract --verify: loader check ran" "verified 4 shards"
same_files "$T/x1" $FILES && pass "round trip: byte-identical" || fail "round trip differs"
ls -A "$T/x1" | grep -q dsr1-partial && fail "partial files left" || pass "no temp files left"
expect_exit "dsr1-verify on the extracted dir" 0 "$BIN/dsr1-verify" --no-progress "$T/x1"
expect_exit "extract zstd from stdin" 0 sh -c "cat '$T/z1/all.tar.zst' | '$P' extract - '$T/x2' -q"
same_files "$T/x2" $FILES && pass "zstd stdin round trip: identical" || fail "zstd stdin differs"
expect_exit "extract again over a complete dir" 0 "$P" extract "$T/a1/all.tar" "$T/x1" -q

# per node / per rank
expect_exit "create --per node" 0 "$P" create "$T/sh" "$T/pn" --per node -q
[ -f "$T/pn/node-00.tar" ] && [ -f "$T/pn/node-01.tar" ] && pass "per node: node-00.tar node-01.tar" || fail "per node names"
expect_exit "create --per rank" 0 "$P" create "$T/sh" "$T/pr" --per rank -q
[ "$(ls "$T/pr" | wc -l)" -eq 8 ] && [ -f "$T/pr/rank-05.tar" ] && pass "per rank: 8 archives" || fail "per rank names"
"$P" list "$T/pr/rank-05.tar" >"$T/out"
grep -q " $S01\$" "$T/out" && [ "$(grep -c 'model-' "$T/out")" -eq 1 ] && pass "rank-05.tar holds rank 5's shard only" \
  || fail "rank-05.tar members"
expect_exit "extract --rank 5 from all.tar" 0 "$P" extract "$T/a1/all.tar" "$T/x3" --rank 5 --verify -q
[ "$(ls "$T/x3" | grep -c model-)" -eq 1 ] && same_files "$T/x3" $S01 manifest.json \
  && pass "--rank 5: only its shard" || { fail "--rank 5 files"; ls "$T/x3"; }
expect_exit "--rank auto from RANK" 0 env RANK=2 WORLD_SIZE=8 "$P" extract "$T/pn/node-00.tar" "$T/x4" --rank auto -q
[ -f "$T/x4/model-pp01-tp00-of-pp02-tp02.safetensors" ] && [ "$(ls "$T/x4" | grep -c model-)" -eq 1 ] \
  && pass "--rank auto: rank 2's shard" || fail "--rank auto files"
expect_exit "--rank of another node's archive" 1 "$P" extract "$T/pr/rank-05.tar" "$T/x5" --rank 0 -q
expect_err "--rank of another node's archive: says so" "does not hold"
no_final "$T/x5" && pass "--rank mismatch: nothing placed" || fail "--rank mismatch left files"
expect_exit "list --json" 0 "$P" list --json "$T/a1/all.tar"
expect_out "list --json: members" "\"name\": \"manifest.json\""

# hostile archives: refused, nothing outside DEST, nothing under a final name
export HOSTILE_ABS="$T/abs-target"
"$PY" "$HERE/tests/interop/pack_hostile.py" "$T/a1/all.tar" "$T/h" || fail "crafting hostile archives"
for c in dotdot absolute subdir symlink hardlink device oversize undersize unknown duplicate corrupt noindex; do
  mkdir -p "$T/hd/$c/dest"
  expect_exit "hostile $c: refused" 1 "$P" extract "$T/h/$c.tar" "$T/hd/$c/dest" -q
  no_final "$T/hd/$c/dest" && [ ! -e "$T/hd/$c/x" ] && [ ! -e "$T/x" ] && [ ! -e "$HOSTILE_ABS" ] \
    && [ "$(ls -A "$T/hd/$c")" = dest ] && pass "hostile $c: nothing written outside or under final names" \
    || { fail "hostile $c: files left"; ls -laR "$T/hd/$c" | head; }
done
expect_exit "hostile dotdot: message" 1 "$P" extract "$T/h/dotdot.tar" "$T/hd/m" -q
expect_err "hostile dotdot: unsafe path" "\"\.\./x\": unsafe path"
expect_exit "hostile symlink: message: exit 1" 1 "$P" extract "$T/h/symlink.tar" "$T/hd/m" -q
expect_err "hostile symlink: message" "symbolic link"
expect_exit "hostile hardlink: message: exit 1" 1 "$P" extract "$T/h/hardlink.tar" "$T/hd/m" -q
expect_err "hostile hardlink: message" "hard link"
expect_exit "hostile oversize: message: exit 1" 1 "$P" extract "$T/h/oversize.tar" "$T/hd/m" -q
expect_err "hostile oversize: message" "bytes, the manifest says"
expect_exit "hostile unknown: message: exit 1" 1 "$P" extract "$T/h/unknown.tar" "$T/hd/m" -q
expect_err "hostile unknown: message" "evil.safetensors: not a file of the manifest"
expect_exit "hostile duplicate: message: exit 1" 1 "$P" extract "$T/h/duplicate.tar" "$T/hd/m" -q
expect_err "hostile duplicate: message" "appears twice"
expect_exit "corrupt member: message: exit 1" 1 "$P" extract "$T/h/corrupt.tar" "$T/hd/m" -q
expect_err "corrupt member: message" "xxh3_128 .* the manifest says"
head -c 7000000 "$T/a1/all.tar" >"$T/trunc.tar"
expect_exit "truncated archive: refused" 1 "$P" extract "$T/trunc.tar" "$T/hd/t" -q
no_final "$T/hd/t" && pass "truncated archive: nothing placed" || fail "truncated archive left files"

# corrupt source: create refuses and leaves no archive
cp -r "$T/sh" "$T/badsrc"
"$PY" -c 'import sys; f = open(sys.argv[1], "r+b"); f.seek(100000); b = f.read(1); f.seek(100000); f.write(bytes([b[0] ^ 1]))' \
  "$T/badsrc/$S01"
expect_exit "create from a corrupt shard: exit 1" 1 "$P" create "$T/badsrc" "$T/ab" -q
expect_err "create from a corrupt shard: names it" "$S01: xxh3_128"
[ -z "$(ls -A "$T/ab" 2>/dev/null)" ] && pass "create: no partial archive" || fail "create left $(ls "$T/ab")"

# disk full: file size limit, and a small tmpfs when we may mount one
( ulimit -f 1024; "$P" extract "$T/a1/all.tar" "$T/full1" -q ) >"$T/out" 2>"$T/err"; rc=$?
[ "$rc" -eq 3 ] && pass "ulimit -f: exit 3" || fail "ulimit -f: exit $rc"
expect_err "ulimit -f: clear error" "(File too large|file size limit)"
no_final "$T/full1" && pass "ulimit -f: no partial or final files" || fail "ulimit -f left files"
mkdir -p "$T/tmpfs"
if mount -t tmpfs -o size=6m tmpfs "$T/tmpfs" 2>/dev/null; then
  expect_exit "tmpfs full: exit 3" 3 "$P" extract "$T/a1/all.tar" "$T/tmpfs/d" -q
  expect_err "tmpfs full: clear error" "No space left on device"
  no_final "$T/tmpfs/d" && pass "tmpfs full: no partial or final files" || fail "tmpfs full left files"
  umount "$T/tmpfs"
fi

# kill -9 in the middle (the archive comes through a FIFO that stalls), then a rerun
mkfifo "$T/fifo"
"$P" extract "$T/fifo" "$T/k" -q >/dev/null 2>&1 &
xp=$!
# one process writes part of the archive and then stalls, holding the FIFO open
"$PY" -c '
import sys, time
sys.stdout.buffer.write(open(sys.argv[1], "rb").read(4500000)); sys.stdout.flush(); time.sleep(60)' \
  "$T/a1/all.tar" >"$T/fifo" &
wp=$!
for _ in $(seq 200); do ls "$T/k"/.dsr1-partial.model-* >/dev/null 2>&1 && break; sleep 0.05; done
kill -9 $xp; wait $xp 2>/dev/null
kill $wp 2>/dev/null; wait $wp 2>/dev/null
ls "$T/k"/.dsr1-partial.model-* >/dev/null 2>&1 && [ ! -e "$T/k/manifest.json" ] \
  && pass "kill -9: partial files only" || fail "kill -9: unexpected state"
expect_exit "rerun after kill -9" 0 "$P" extract "$T/a1/all.tar" "$T/k" -q
same_files "$T/k" $FILES && ! ls -A "$T/k" | grep -q dsr1-partial && pass "rerun after kill -9: complete and identical" \
  || fail "rerun after kill -9"

# OCI image layout (CNCF ModelPack)
expect_exit "oci --per node" 0 "$P" oci "$T/sh" "$T/o1" --per node -q
expect_exit "oci again" 0 "$P" oci "$T/sh" "$T/o2" --per node -q
diff -r "$T/o1" "$T/o2" >/dev/null && pass "two oci runs: identical layouts" || fail "oci layouts differ"
"$PY" "$HERE/tests/interop/pack_oci_validate.py" "$T/o1" "$T/sh" >"$T/out" 2>&1 \
  && pass "OCI layout validates (digests, sizes, index->manifest->layers, media types)" \
  || { fail "OCI validation"; head -5 "$T/out"; }
expect_exit "oci --per all" 0 "$P" oci "$T/sh" "$T/o3" -q
"$PY" "$HERE/tests/interop/pack_oci_validate.py" "$T/o3" "$T/sh" >/dev/null 2>&1 && pass "OCI (all) validates" || fail "OCI (all)"
expect_exit "extract OCI --verify" 0 "$P" extract "$T/o3" "$T/xo" --verify -q
same_files "$T/xo" $FILES && pass "OCI round trip: identical" || fail "OCI round trip"
expect_exit "extract OCI needs --ref with several manifests" 2 "$P" extract "$T/o1" "$T/xo2" -q
expect_err "extract OCI: lists the refs" "node-00, node-01"
expect_exit "oci --per rank" 0 "$P" oci "$T/sh" "$T/o5" --per rank -q
expect_exit "extract OCI --ref rank-05 --rank 0: not there" 1 "$P" extract "$T/o5" "$T/xo5" --ref rank-05 --rank 0 -q
expect_err "extract OCI --ref rank-05 --rank 0: says so" "does not hold"
expect_exit "extract OCI --ref node-00 --rank 5" 0 "$P" extract "$T/o1" "$T/xo2" --ref node-00 --rank 5 -q
[ "$(ls "$T/xo2" | grep -c model-)" -eq 1 ] && same_files "$T/xo2" $S01 && pass "OCI --rank 5: its shard" || fail "OCI --rank"
expect_exit "list OCI" 0 "$P" list "$T/o3"
expect_out "list OCI: raw weight layers" "application/vnd.cncf.model.weight.v1.raw sha256:"
cp -r "$T/o3" "$T/o4"
blob=$("$PY" -c '
import json, sys
idx = json.load(open(sys.argv[1] + "/index.json"))
man = json.load(open(sys.argv[1] + "/blobs/sha256/" + idx["manifests"][0]["digest"][7:]))
print(man["layers"][3]["digest"][7:])' "$T/o4")
"$PY" -c 'import sys; f = open(sys.argv[1], "r+b"); f.seek(5000); b = f.read(1); f.seek(5000); f.write(bytes([b[0] ^ 1]))' \
  "$T/o4/blobs/sha256/$blob"
expect_exit "OCI corrupt blob: exit 1" 1 "$P" extract "$T/o4" "$T/xo3" -q
expect_err "OCI corrupt blob: named" "(SHA-256|xxh3_128)"
no_final "$T/xo3" && pass "OCI corrupt blob: nothing placed" || fail "OCI corrupt blob left files"
rm "$T/o4/blobs/sha256/$blob"
expect_exit "OCI missing blob: exit 1" 1 "$P" extract "$T/o4" "$T/xo3" -q

# a stock tool copies the layout (as it would to a registry) and we extract the copy
if command -v skopeo >/dev/null 2>&1; then
  expect_exit "skopeo copy oci: -> oci:" 0 skopeo copy --quiet "oci:$T/o1:node-00" "oci:$T/sk:node-00"
  expect_exit "extract the skopeo copy --verify" 0 "$P" extract "$T/sk" "$T/xsk" --verify -q
  same_files "$T/xsk" $FILES && pass "skopeo copy round trip: identical" || fail "skopeo copy round trip"
fi

# usage
expect_exit "usage: no command" 2 "$P"
expect_exit "usage: unknown command" 2 "$P" frobnicate
expect_exit "usage: create without OUT" 2 "$P" create "$T/sh"
expect_exit "usage: bad --per" 2 "$P" create "$T/sh" "$T/u" --per pod
expect_exit "usage: --zstd on extract" 2 "$P" extract "$T/a1/all.tar" "$T/u" --zstd
expect_exit "--help" 0 "$P" --help
expect_exit "missing archive: exit 3" 3 "$P" extract "$T/nope.tar" "$T/u" -q
finish

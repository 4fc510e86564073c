#!/usr/bin/env bash
# dsr1-verify: the corruption matrix on a tiny sharded output (tp=2 pp=2 dp=2 on 2 nodes
# of 4 GPUs). Each damaged copy must give exit 1 and name the right file and tensor;
# the clean output exit 0.
set -eu
. "$(dirname "$0")/lib.inc"
set +e
V=$BIN/dsr1-verify
"$BIN/dsr1-synth" --preset tiny --out "$T/ck" --quiet || { fail "synth"; finish; exit; }
"$BIN/dsr1-shard" run "$T/ck" --out "$T/sh" --tp 2 --pp 2 --dp 2 --nodes 2 --gpus-per-node 4 --quiet \
  || { fail "shard"; finish; exit; }
S00=model-pp00-tp00-of-pp02-tp02.safetensors
S01=model-pp00-tp01-of-pp02-tp02.safetensors
S10=model-pp01-tp00-of-pp02-tp02.safetensors
S11=model-pp01-tp01-of-pp02-tp02.safetensors

fresh() { rm -rf "$T/c"; cp -r "$T/sh" "$T/c"; }
# tensor_at FILE INDEX -> "name offset bytes" of the INDEX-th tensor of FILE in the manifest
tensor_at() {
  "$PY" -c '
import json, sys
m = json.load(open(sys.argv[1]))
s = [s for s in m["shards"] if s["file"] == sys.argv[2]][0]
t = s["tensors"][int(sys.argv[3])]
print(t["name"], t["offset"], t["bytes"])' "$T/c/manifest.json" "$1" "$2"
}
flip() { # FILE OFFSET
  "$PY" -c '
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2])); b = f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0x04]))' "$1" "$2"
}
resign_manifest() { # after editing manifest.json on purpose: make XXH128SUMS agree again
  local h; h=$(xxh128sum "$T/c/manifest.json" 2>/dev/null | cut -d' ' -f1)
  sed -i "s/^[0-9a-f]*  manifest.json\$/$h  manifest.json/" "$T/c/XXH128SUMS"
}

# clean
expect_exit "clean: exit 0" 0 "$V" --no-progress "$T/sh"
expect_out "clean: every shard OK" "^$S11: OK"
expect_out "clean: summary" "^dsr1-verify: OK: 6 of 6 files OK \(full check"
expect_exit "clean --quick" 0 "$V" --quick --no-progress "$T/sh"
expect_exit "clean --file-hashes" 0 "$V" --file-hashes --no-progress "$T/sh"
expect_exit "clean --source (rebuild check)" 0 "$V" --source "$T/ck" --no-progress "$T/sh"
expect_out "clean --source: coverage per stage" "^\(source\) pp stage 1: OK"
expect_out "clean --source: values compared" "source: [1-9][0-9]* tensors compared with the checkpoint, 0 differ"
expect_exit "clean --expect-plan" 0 "$V" --expect-plan tp=2,pp=2,dp=2,world_size=8,dtype=fp8 --no-progress "$T/sh"
( cd "$T/sh" && xxh128sum -c --quiet XXH128SUMS 2>/dev/null ) && pass "stock xxh128sum -c agrees" || fail "xxh128sum -c"

# a flipped bit, named by tensor and byte range
fresh
read -r name off bytes < <(tensor_at $S10 5)
flip "$T/c/$S10" $((off + bytes / 2))
expect_exit "bit flip: exit 1" 1 "$V" --no-progress "$T/c"
expect_out "bit flip: names file and tensor" "^$S10: FAILED \(tensor $name bytes \[$off, $((off + bytes))\)"
expect_out "bit flip: other shards OK" "^$S11: OK"
expect_exit "bit flip: --quick does not read data" 0 "$V" --quick --no-progress "$T/c"
expect_exit "bit flip: --rank of an unaffected shard" 0 "$V" --rank 1 --no-progress "$T/c"
expect_exit "bit flip: --rank of the affected shard" 1 "$V" --rank 2 --no-progress "$T/c"
"$V" --json --no-progress "$T/c" >"$T/j" 2>/dev/null
"$PY" -c '
import json, sys
j = json.load(open(sys.argv[1]))
bad = [f for f in j["files"] if not f["ok"]]
assert j["ok"] is False and j["exit"] == 1, j
assert [f["file"] for f in bad] == [sys.argv[2]], bad
assert sys.argv[3] in bad[0]["reasons"][0], bad' "$T/j" $S10 "$name" && pass "bit flip: --json" || fail "bit flip: --json"

# truncation
fresh
truncate -s -1 "$T/c/$S01"
expect_exit "truncated: exit 1" 1 "$V" --quick --no-progress "$T/c"
expect_out "truncated: named" "^$S01: FAILED \(.*truncated"

# missing and extra shard files
fresh
rm "$T/c/$S11"
expect_exit "missing shard: exit 1" 1 "$V" --no-progress "$T/c"
expect_out "missing shard: named" "^$S11: FAILED \(shard file missing"
fresh
cp "$T/c/$S00" "$T/c/model-pp00-tp02-of-pp02-tp02.safetensors"
expect_exit "extra shard: exit 1" 1 "$V" --no-progress "$T/c"
expect_out "extra shard: named" "^model-pp00-tp02-of-pp02-tp02.safetensors: FAILED \(extra file"
expect_exit "extra shard: --rank ignores other files" 0 "$V" --rank 0 --no-progress "$T/c"

# shards swapped between two ranks (same size)
fresh
mv "$T/c/$S00" "$T/c/x" && mv "$T/c/$S01" "$T/c/$S00" && mv "$T/c/x" "$T/c/$S01"
expect_exit "swapped: exit 1" 1 "$V" --quick --no-progress "$T/c"
expect_out "swapped: first file" "^$S00: FAILED \(file holds pp stage 0 tp rank 1, .*swapped"
expect_out "swapped: second file" "^$S01: FAILED \(file holds pp stage 0 tp rank 0"

# a shard of another stage (another size) under this name: named as swapped, not truncated
fresh
cp "$T/sh/$S10" "$T/c/$S00"
expect_exit "other stage's shard: exit 1" 1 "$V" --quick --no-progress "$T/c"
expect_out "other stage's shard: named as swapped" "^$S00: FAILED \(file holds pp stage 1 tp rank 0, .*swapped"

# an edited manifest (valid JSON, one digest changed): XXH128SUMS disagrees
fresh
sed -i 's/"tool":"[^"]*"/"tool":"edited by hand"/' "$T/c/manifest.json"
expect_exit "edited manifest: exit 1" 1 "$V" --quick --no-progress "$T/c"
expect_out "edited manifest: named" "^manifest.json: FAILED \(manifest.json has xxh3_128 .* the manifest was edited"
fresh
printf '{"format":' >"$T/c/manifest.json"
expect_exit "broken manifest: exit 1" 1 "$V" --no-progress "$T/c"
expect_out "broken manifest: named" "^manifest.json: FAILED"
fresh
rm "$T/c/XXH128SUMS"
expect_exit "no XXH128SUMS: exit 1" 1 "$V" --no-progress "$T/c"
expect_out "no XXH128SUMS: named" "^XXH128SUMS: FAILED \(missing"

# a header edited so that it no longer matches the manifest
fresh
hdr_edit() { # FILE PYTHON-EXPR on the header text h -> same-length text
  "$PY" -c '
import struct, sys
p = sys.argv[1]
with open(p, "r+b") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    h = f.read(n).decode()
    new = eval(sys.argv[2])
    assert len(new) == len(h) and new != h
    f.seek(8); f.write(new.encode())' "$1" "$2"
}
hdr_edit "$T/c/$S10" 'h.replace("\"dsr1.dtype\":\"fp8\"", "\"dsr1.dtype\":\"fp9\"")'
expect_exit "header metadata edit: structure still loads" 0 "$V" --quick --no-progress "$T/c"
expect_exit "header metadata edit: full check exit 1" 1 "$V" --no-progress "$T/c"
expect_out "header metadata edit: header digest" "^$S10: FAILED \(header bytes \[0, [0-9]+\) xxh3_128"
fresh
read -r name off bytes < <(tensor_at $S11 0)
"$PY" -c '
import json, sys
m = json.load(open(sys.argv[1]))
t = [s for s in m["shards"] if s["file"] == sys.argv[2]][0]["tensors"]
two = [x for x in t if len(x["shape"]) == 2 and x["shape"][0] != x["shape"][1]][0]
print(two["name"], two["shape"][0], two["shape"][1])' "$T/c/manifest.json" $S11 >"$T/two"
read -r tname r c <"$T/two"
hdr_edit "$T/c/$S11" "h.replace('\"$tname\":{\"dtype\":', '\"$tname\":{\"dtype\":', 1).replace('\"shape\":[$r,$c]', '\"shape\":[$c,$r]', 1)"
expect_exit "header shape edit: --quick exit 1" 1 "$V" --quick --no-progress "$T/c"
expect_out "header shape edit: names the tensor" "^$S11: FAILED \(.*tensor .* has shape \["

# a wrong plan
expect_exit "wrong plan: exit 1" 1 "$V" --expect-plan tp=8,pp=2 --no-progress "$T/sh"
expect_out "wrong plan: named" "^manifest.json: FAILED \(made for another plan: tp is 2, expected 8"
expect_exit "wrong plan: dtype" 1 "$V" --expect-plan dtype=bf16 --quick --no-progress "$T/sh"

# the rebuild check against another checkpoint, and a coverage hole in an edited manifest
"$BIN/dsr1-synth" --preset tiny --seed 7 --out "$T/ck7" --quiet
expect_exit "--source other checkpoint: exit 1" 1 "$V" --source "$T/ck7" --no-progress "$T/sh"
expect_out "--source other checkpoint: names a tensor" "^$S00: FAILED \(tensor model\..* differs from source"
fresh
"$PY" -c '
import json, sys
p = sys.argv[1]
m = json.load(open(p))
for s in m["shards"]:
    if s["file"] == sys.argv[2]:
        t = [t for t in s["tensors"] if t["source"]["dim"] == 0 and t["source"]["start"] > 0][0]
        t["source"]["start"] -= 128
        t["source"]["end"] -= 128
        print(t["source"]["name"])
open(p, "w").write(json.dumps(m, separators=(",", ":")))' "$T/c/manifest.json" $S01 >"$T/src"
resign_manifest
expect_exit "coverage hole: exit 1" 1 "$V" --source "$T/ck" --no-progress "$T/c"
expect_out "coverage hole: gap named" "^\(source\) pp stage 0: FAILED \(.*$(cat "$T/src") dim 0 elements \[[0-9]+, [0-9]+\) held by no shard"
expect_out "coverage hole: overlap named" "^\(source\) pp stage 0: FAILED \(.*$(cat "$T/src") dim 0 elements \[[0-9]+, [0-9]+\) held twice"
expect_out "coverage hole: values differ" "^$S01: FAILED \(.*differs from source"
expect_out "coverage hole: other stage fine" "^\(source\) pp stage 1: OK"

# --rank reads only its shard: the others may be gone or garbage
fresh
for f in $S00 $S10 $S11; do head -c 1000 /dev/urandom >"$T/c/$f"; done
expect_exit "--rank 5: others garbage, exit 0" 0 "$V" --rank 5 --no-progress "$T/c"
expect_out "--rank 5: checks rank 5's shard" "^$S01: OK"
expect_out "--rank 5: summary names the rank" "full check, rank 5\)"
expect_exit "--node 0 with garbage on node 0's shards: exit 1" 1 "$V" --node 0 --no-progress "$T/c"
if command -v strace >/dev/null 2>&1 && strace -qq -o /dev/null true 2>/dev/null; then
  strace -f -qq -e trace=%file,%desc -o "$T/trace" "$V" --rank 5 --no-progress "$T/sh" >/dev/null 2>&1
  if grep -q 'model-pp' "$T/trace" && ! grep -E "$S00|$S10|$S11" "$T/trace" >/dev/null; then
    pass "--rank 5: strace shows no other shard opened or stat'ed"
  else fail "--rank 5: other shards touched"; grep -E 'model-pp' "$T/trace" | head -5; fi
fi

# --rank auto: torchrun variables, then a StatefulSet pod (hostname name-N, own UTS namespace)
RANK=3 WORLD_SIZE=8 expect_exit "--rank auto from RANK" 0 env RANK=3 WORLD_SIZE=8 "$V" --rank auto --no-progress "$T/sh"
expect_out "--rank auto from RANK: rank 3" "torchrun.*rank 3|rank 3"
expect_exit "--rank auto: WORLD_SIZE of another deployment" 1 env RANK=3 WORLD_SIZE=16 "$V" --rank auto --no-progress "$T/sh"
if unshare -u true 2>/dev/null; then
  expect_exit "--rank auto in pod dsr1-1 (init container)" 0 env -u RANK -u LOCAL_RANK \
    unshare -u sh -c "hostname dsr1-1 && exec '$V' --rank auto --no-progress '$T/sh'"
  expect_out "--rank auto in pod dsr1-1: the pod's ranks" "ranks 4-7\)"
  expect_exit "--rank auto in pod dsr1-1 with LOCAL_RANK=2" 0 env -u RANK LOCAL_RANK=2 \
    unshare -u sh -c "hostname dsr1-1.dsr1.ns.svc.cluster.local && exec '$V' --rank auto --no-progress '$T/sh'"
  expect_out "--rank auto with LOCAL_RANK: rank 6" "rank 6\)"
fi

# output modes and exit codes
fresh
flip "$T/c/$S00" 20000
"$V" --status "$T/c" >"$T/out" 2>"$T/err"; rc=$?
[ "$rc" -eq 1 ] && [ ! -s "$T/out" ] && [ ! -s "$T/err" ] && pass "--status: silent, exit 1" || fail "--status: rc $rc"
expect_exit "--quiet: exit 1" 1 "$V" -q "$T/c"
if grep -q ': OK$' "$T/out"; then fail "--quiet printed OK lines"; else pass "--quiet: no OK lines"; fi
expect_out "--quiet: FAILED line" "^$S00: FAILED"
mkdir -p "$T/empty"
expect_exit "nothing to verify: exit 1" 1 "$V" --no-progress "$T/empty"
expect_out "nothing to verify: says why" "manifest.json: FAILED \(missing"
expect_exit "usage: no DIR" 2 "$V"
expect_exit "usage: bad --rank" 2 "$V" --rank x "$T/sh"
expect_exit "usage: unknown plan key" 2 "$V" --expect-plan foo=1 "$T/sh"
expect_exit "usage: --rank out of range" 2 "$V" --rank 99 "$T/sh"
expect_exit "--help" 0 "$V" --help
mkdir -p "$T/io/manifest.json"
expect_exit "I/O error: exit 3" 3 "$V" --no-progress "$T/io"
finish

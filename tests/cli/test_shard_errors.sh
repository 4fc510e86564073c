#!/usr/bin/env bash
# dsr1-shard run on bad input and bad conditions: a missing tensor (index or file), a
# wrong shape or dtype, a truncated weight file -> exit 1 naming tensor and file, nothing
# written; no space / file-size limit -> exit 3 with a clear message, no manifest and no
# temp file; SIGINT mid-write removes the temp files.
set -u
. "$(dirname "$0")/lib.inc"
D=$BIN/dsr1-shard
expect_exit "synth tiny" 0 "$BIN/dsr1-synth" --preset tiny --out "$T/tiny" --quiet

nothing_written() { # NAME DIR
  if [ -e "$2/manifest.json" ] || ls "$2" 2>/dev/null | grep -q 'safetensors'; then
    fail "$1: output written: $(ls "$2" | tr '\n' ' ')"
  else pass "$1: nothing written"; fi
}
no_complete() { # NAME DIR
  [ -e "$2/manifest.json" ] && fail "$1: manifest.json exists" || pass "$1: no manifest.json"
  ls "$2" 2>/dev/null | grep -q '\.tmp\.' && fail "$1: temp files left: $(ls "$2")" || pass "$1: no temp files"
}
copy() { rm -rf "$T/$1"; cp -r "$T/tiny" "$T/$1"; }

# a tensor missing from the index
copy noidx
"$PY" - "$T/noidx" <<'EOF'
import json, sys
p = sys.argv[1] + "/model.safetensors.index.json"
j = json.load(open(p)); del j["weight_map"]["model.layers.1.mlp.experts.3.up_proj.weight"]
json.dump(j, open(p, "w"))
EOF
expect_exit "tensor missing from the index" 1 "$D" run "$T/noidx" --out "$T/o1" --tp 2
expect_err "names it" "missing tensor model\.layers\.1\.mlp\.experts\.3\.up_proj\.weight"
nothing_written "missing from index" "$T/o1"

# rewrite one weight file with the official package: drop a tensor / change a shape / dtype
rewrite() { # DIR MODE TENSOR
  "$PY" - "$@" <<'EOF'
import json, struct, sys
from safetensors import deserialize
def serialize(t, meta):
    h, off, data = {"__metadata__": meta}, 0, b""
    for k, v in t.items():
        b = bytes(v["data"])
        h[k] = {"dtype": v["dtype"], "shape": v["shape"], "data_offsets": [off, off + len(b)]}
        off += len(b)
        data += b
    j = json.dumps(h, separators=(",", ":")).encode()
    j += b" " * (-len(j) % 8)
    return struct.pack("<Q", len(j)) + j + data
d, mode, name = sys.argv[1:4]
f = d + "/" + json.load(open(d + "/model.safetensors.index.json"))["weight_map"][name]
t = dict(deserialize(open(f, "rb").read()))
if mode == "drop":
    del t[name]
elif mode == "shape":
    s = t[name]["shape"]; t[name]["shape"] = [s[0] * 2, s[1] // 2]
elif mode == "dtype":
    t[name]["dtype"] = "I8"
open(f, "wb").write(serialize(t, {"format": "pt"}))
print(f)
EOF
}
copy nofile
rewrite "$T/nofile" drop model.layers.2.self_attn.o_proj.weight >"$T/f"
expect_exit "tensor missing from its file" 1 "$D" run "$T/nofile" --out "$T/o2" --tp 2
expect_err "names tensor and file" "model\.layers\.2\.self_attn\.o_proj\.weight: the index maps it to .*$(basename "$(cat "$T/f")"), but that file has no such tensor"
nothing_written "missing from file" "$T/o2"

copy shape
rewrite "$T/shape" shape model.layers.0.mlp.down_proj.weight >"$T/f"
expect_exit "wrong shape" 1 "$D" run "$T/shape" --out "$T/o3" --tp 2
expect_err "names tensor, file, both shapes" "model\.layers\.0\.mlp\.down_proj\.weight in .*model-0000[0-9]-of-000004\.safetensors: shape \[512, 256\], expected \[256, 512\]"
nothing_written "wrong shape" "$T/o3"

copy dtype
rewrite "$T/dtype" dtype model.layers.1.self_attn.kv_b_proj.weight >"$T/f"
expect_exit "wrong dtype" 1 "$D" run "$T/dtype" --out "$T/o4" --tp 2
expect_err "names tensor and dtypes" "kv_b_proj\.weight in .*: dtype I8, expected F8_E4M3"
nothing_written "wrong dtype" "$T/o4"

copy trunc
truncate -s -1000 "$T/trunc/model-00003-of-000004.safetensors"
expect_exit "truncated weight file" 1 "$D" run "$T/trunc" --out "$T/o5" --tp 2
expect_err "names the file" "model-00003-of-000004\.safetensors"
nothing_written "truncated" "$T/o5"

# a previous complete output stays untouched by a run that fails validation
expect_exit "good run" 0 "$D" run "$T/tiny" --out "$T/prev" --tp 2 --quiet
cp "$T/prev/manifest.json" "$T/prev.manifest"
expect_exit "failing run into a complete dir" 1 "$D" run "$T/trunc" --out "$T/prev" --tp 2
cmp -s "$T/prev/manifest.json" "$T/prev.manifest" && pass "previous output untouched" || fail "previous output changed"

# --- no space: a small tmpfs (needs root), and a file-size limit mid-run ---------------------
mkdir -p "$T/small"
if mount -t tmpfs -o size=6m tmpfs "$T/small" 2>/dev/null; then
  expect_exit "no space: exit 3" 3 "$D" run "$T/tiny" --out "$T/small/o" --tp 2 --pp 2 --quiet
  expect_err "says how much is needed" "has [0-9.]+ GB free, the shards need about [0-9.]+ GB"
  no_complete "no space" "$T/small/o"
  umount "$T/small"
else
  pass "no space on tmpfs: skipped (mount not permitted)"
fi
# stage 0 files (2.9 MB) fit under 4 MiB, stage 1 files with the MTP layer (5.2 MB) do
# not: fails mid-run
expect_exit "file-size limit mid-run: exit 3" 3 bash -c "ulimit -f 4096; exec '$D' run '$T/tiny' --out '$T/o6' --tp 2 --pp 2 --mtp --quiet"
expect_err "clear message" "cannot reserve [0-9]+ bytes for .*model-pp01-tp0[01]-of-pp02-tp02\.safetensors.*File too large"
expect_err "says nothing completed" "no manifest.json"
no_complete "file-size limit" "$T/o6"
# fix the cause, resume: stage 0 is kept, result equals a clean run
expect_exit "resume after the limit" 0 "$D" run "$T/tiny" --out "$T/o6" --tp 2 --pp 2 --mtp --resume
expect_out "kept stage 0" "2 shard files written .*, 2 kept"
expect_exit "clean run" 0 "$D" run "$T/tiny" --out "$T/o7" --tp 2 --pp 2 --mtp --quiet
diff -r "$T/o6" "$T/o7" >/dev/null && pass "resumed output equals a clean run" || fail "resumed output differs"
# (resume without --resume rewrites everything: covered by the unit tests)

# --- SIGINT mid-write removes temp files ---------------------------------------------------
# (background jobs of a script start with SIGINT ignored; env restores the default)
DSR1_SHARD_TEST_STALL_BATCHES=3 env --default-signal=INT "$D" run "$T/tiny" --out "$T/o8" \
  --tp 2 --batch 64KiB --quiet 2>"$T/stall.err" &
pid=$!
for _ in $(seq 1 400); do grep -q "test stall" "$T/stall.err" && break; sleep 0.05; done
ls "$T/o8" | grep -q '\.tmp\.' && pass "temp files exist mid-write" || fail "no temp file mid-write: $(ls "$T/o8")"
kill -INT $pid # env exec'd the tool: same pid
wait $pid
rc=$?
[ $rc -eq 130 ] && pass "SIGINT ends the run (exit $rc)" || fail "SIGINT: exit $rc"
grep -q "test stall expired" "$T/stall.err" && fail "SIGINT was not delivered"
no_complete "SIGINT" "$T/o8"
finish

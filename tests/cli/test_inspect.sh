#!/usr/bin/env bash
# dsr1-inspect: a valid tiny checkpoint, tensor statistics against numpy, --json, and
# damaged checkpoints (missing tensor, wrong shape, wrong dtype, stray tensor, missing
# and truncated weight files): each detected with the tensor/file named, exit 1, never
# a signal.
set -u # not -e: expect_exit runs commands that are meant to fail
. "$(dirname "$0")/lib.inc"
S=$BIN/dsr1-synth
I=$BIN/dsr1-inspect
"$S" --preset tiny --out "$T/ok" --quiet || { fail "synth tiny"; finish; exit 1; }
fresh() { rm -rf "$T/$1"; cp -r "$T/ok" "$T/$1"; }
# expect_problem NAME DIR REGEX: exit 1 (not a signal), stderr names the problem.
expect_problem() {
  expect_exit "$1: exit 1" 1 "$I" "$2"
  expect_err "$1: reported" "$3"
  expect_out "$1: INVALID" "^result +INVALID"
}

# --- valid checkpoint ---------------------------------------------------------------
expect_exit "inspect tiny" 0 "$I" "$T/ok"
expect_out "tensor count" "^tensors +383$"
expect_out "by dtype F8" "F8_E4M3 +176 tensors"
expect_out "by class routed experts" "routed_experts +192 tensors"
expect_out "by class mtp" "^  mtp +124 tensors"
expect_out "weights checked" "4 of 4 files present, 4 readable, 383 tensors checked"
expect_out "valid" "^result +valid$"
[ ! -s "$T/err" ] && pass "nothing on stderr when valid" || fail "stderr: $(head -2 "$T/err")"
expect_exit "inspect tiny --quiet" 0 "$I" "$T/ok" --quiet
[ ! -s "$T/out" ] && pass "--quiet prints nothing" || fail "--quiet printed"

expect_exit "inspect --json" 0 "$I" "$T/ok" --json
"$PY" -c '
import json,sys
j=json.load(open(sys.argv[1]))
assert j["valid"] is True and j["kind"]=="checkpoint" and j["tensors"]==383 and j["mtp"] is True
assert j["by_dtype"]["F32"]["tensors"]==179 and j["weights"]["tensors_checked"]==383 and j["problems"]==[]
assert sum(v["bytes"] for v in j["by_class"].values())==j["bytes"]==j["index"]["total_size"]
' "$T/out" && pass "--json parses and adds up" || fail "--json content"

# --- --tensor: dequantized stats equal numpy's ------------------------------------------
W=model.layers.0.self_attn.kv_a_proj_with_mqa.weight
expect_exit "--tensor FP8 kv_a" 0 "$I" "$T/ok" --tensor $W --json
cp "$T/out" "$T/kva.json"
expect_exit "--tensor BF16" 0 "$I" "$T/ok" --tensor model.layers.1.mlp.gate.weight --json
cp "$T/out" "$T/gate.json"
expect_exit "--tensor F32 bias" 0 "$I" "$T/ok" --tensor model.layers.1.mlp.gate.e_score_correction_bias
expect_out "text stats" "^std +0\.0"
"$PY" - "$T/ok" "$T/kva.json" "$T/gate.json" <<'EOF' >"$T/py.out" 2>&1
import json, sys, numpy as np, ml_dtypes
from safetensors import deserialize
d = sys.argv[1]
wm = json.load(open(d + "/model.safetensors.index.json"))["weight_map"]
def get(n):
    for k, e in deserialize(open(d + "/" + wm[n], "rb").read()):
        if k == n:
            dt = {"F8_E4M3": ml_dtypes.float8_e4m3fn, "BF16": ml_dtypes.bfloat16, "F32": np.float32}[e["dtype"]]
            return np.frombuffer(bytes(e["data"]), dt).reshape(e["shape"]).astype(np.float64)
n = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"
q, s = get(n), get(n + "_scale_inv")
w = q * np.kron(s, np.ones((128, 128)))[: q.shape[0], : q.shape[1]]
for path, ref in ((sys.argv[2], w), (sys.argv[3], get("model.layers.1.mlp.gate.weight"))):
    j = json.load(open(path))
    assert j["count"] == ref.size and j["nan"] == 0, j
    for k, v in (("min", ref.min()), ("max", ref.max()), ("mean", ref.mean()), ("std", ref.std())):
        assert abs(j[k] - v) <= 1e-6 * max(1e-3, abs(v)) + 1e-9, (path, k, j[k], v)
j = json.load(open(sys.argv[2]))
assert j["scale"] == n + "_scale_inv" and j["shape"] == [192, 256] and j["dtype"] == "F8_E4M3"
print("ok")
EOF
[ $? -eq 0 ] && pass "--tensor stats match numpy (FP8 dequantized, BF16)" || { fail "--tensor stats"; sed 's/^/    py: /' "$T/py.out" | tail -5; }
expect_exit "--tensor unknown" 2 "$I" "$T/ok" --tensor no.such.tensor
expect_err "--tensor unknown named" "no tensor named no.such.tensor"
F1=$(ls "$T"/ok/model-00001-*.safetensors)
expect_exit "--tensor in a single file" 0 "$I" "$F1" --tensor model.embed_tokens.weight --json
"$PY" -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["count"]==1024*256 and abs(j["std"]-0.02)<0.002' "$T/out" \
  && pass "file --tensor BF16 stats" || fail "file --tensor stats"

# --- single file mode -----------------------------------------------------------------
expect_exit "inspect a file" 0 "$I" "$F1"
expect_out "file metadata" "metadata +format = pt"
expect_out "file lists tensors" "model.embed_tokens.weight +BF16 +\[1024, 256\]"
expect_exit "inspect a file --json" 0 "$I" "$F1" --json
"$PY" -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["kind"]=="safetensors" and j["tensor_count"]==len(j["tensors"])>0' "$T/out" \
  && pass "file --json" || fail "file --json"

# --- damaged checkpoints ----------------------------------------------------------------
# Missing tensor: dropped from the index.
fresh miss
"$PY" -c '
import json,sys
p=sys.argv[1]+"/model.safetensors.index.json"; j=json.load(open(p))
del j["weight_map"]["model.layers.1.mlp.experts.5.down_proj.weight_scale_inv"]; json.dump(j,open(p,"w"))' "$T/miss"
expect_problem "missing tensor" "$T/miss" "missing tensor model.layers.1.mlp.experts.5.down_proj.weight_scale_inv"
expect_err "missing tensor: also not indexed in its file" "holds tensor model.layers.1.mlp.experts.5.down_proj.weight_scale_inv, which the index does not list"

# Unexpected tensor in the index (and its file).
fresh extra
"$PY" -c '
import json,sys
p=sys.argv[1]+"/model.safetensors.index.json"; j=json.load(open(p))
j["weight_map"]["model.layers.0.mlp.experts.0.up_proj.weight"]=j["weight_map"]["lm_head.weight"]; json.dump(j,open(p,"w"))' "$T/extra"
expect_problem "unexpected tensor" "$T/extra" "unexpected tensor model.layers.0.mlp.experts.0.up_proj.weight"

# Wrong shape / wrong dtype: rewrite one file with the official serializer.
rewrite() { # DIR TENSOR MODE(shape|dtype)
  "$PY" - "$@" <<'EOF'
import json, sys, numpy as np
from safetensors import deserialize, serialize_file, TensorSpec
d, name, mode = sys.argv[1:4]
f = d + "/" + json.load(open(d + "/model.safetensors.index.json"))["weight_map"][name]
torch_names = {"F8_E4M3": "float8_e4m3fn", "BF16": "bfloat16", "F32": "float32"}
keep, specs = [], {}
for k, e in deserialize(open(f, "rb").read()):
    b, shape, dt = bytes(e["data"]), e["shape"], e["dtype"]
    if k == name and mode == "shape":
        shape = [shape[0] // 2] + shape[1:]; b = b[: len(b) // 2]
    if k == name and mode == "dtype":
        dt = "F32"; b = np.frombuffer(b, np.uint16).astype(np.uint32).tobytes()
    a = np.frombuffer(b, np.uint8).copy(); keep.append(a)
    specs[k] = TensorSpec(dtype=torch_names[dt], shape=shape, data_ptr=a.ctypes.data, data_len=len(b))
serialize_file(specs, f, {"format": "pt"})
EOF
}
fresh shape
rewrite "$T/shape" model.layers.2.mlp.shared_experts.up_proj.weight shape && pass "rewrote a file with python" || fail "python rewrite"
expect_problem "wrong shape" "$T/shape" "tensor model.layers.2.mlp.shared_experts.up_proj.weight in .*model-0000.-of-000004.safetensors: shape \[128, 256\], expected \[256, 256\]"
fresh dtype
rewrite "$T/dtype" model.norm.weight dtype
expect_problem "wrong dtype" "$T/dtype" "tensor model.norm.weight in .*: dtype F32, expected BF16"

# Missing weight file.
fresh nofile
rm "$T"/nofile/model-00003-of-000004.safetensors
expect_problem "missing weight file" "$T/nofile" "weight file .*model-00003-of-000004.safetensors named by the index does not exist"

# Truncated weight file: a clear error and exit 1, never a signal.
fresh trunc
truncate -s -1000 "$T"/trunc/model-00002-of-000004.safetensors
expect_problem "truncated weight file" "$T/trunc" "model-00002-of-000004.safetensors"
expect_exit "truncated file alone" 1 "$I" "$T"/trunc/model-00002-of-000004.safetensors
[ -s "$T/err" ] && pass "truncated file alone: message ($(head -c 120 "$T/err"))" || fail "no message"
expect_exit "truncated: --tensor in the damaged file" 1 "$I" "$T/trunc" --tensor \
  "$("$PY" -c 'import json,sys; w=json.load(open(sys.argv[1]))["weight_map"]; print(sorted(k for k,v in w.items() if v.startswith("model-00002"))[0])' "$T/trunc/model.safetensors.index.json")"

# Broken config / index.
fresh badcfg
sed -i 's/"n_group": 4/"n_group": 3/' "$T/badcfg/config.json"
expect_exit "bad config" 1 "$I" "$T/badcfg"
expect_err "bad config named" "\"n_group\" = 3 does not divide n_routed_experts = 16"
fresh noidx
rm "$T/noidx/model.safetensors.index.json"
expect_exit "missing index" 1 "$I" "$T/noidx"
expect_err "missing index named" "model.safetensors.index.json"
fresh badidx
echo '{"weight_map": {"a": "../../etc/passwd"}}' >"$T/badidx/model.safetensors.index.json"
expect_exit "index escaping the dir" 1 "$I" "$T/badidx"
expect_err "index escaping named" "not a plain file name"

# --- a dsr1-shard output directory: summarized from manifest.json, read-only --------------
"$BIN/dsr1-shard" run "$T/ok" --out "$T/sh" --tp 2 --pp 2 --mtp --quiet || fail "shard run"
(cd "$T/sh" && ls -l --time-style=+%s && xxh128sum -- * 2>/dev/null) >"$T/sh.before"
expect_exit "shard set" 0 "$I" "$T/sh"
expect_out "shard set: header" "^shard set +$T/sh"
expect_out "shard set: plan" "^plan +tp=2 ep=2 pp=2 dp=1 -> 4 ranks on 1 node x 4 GPUs; dtype fp8; MTP layer included"
expect_out "shard set: a shard row" "model-pp01-tp01-of-pp02-tp02.safetensors +1 +1 +2-3 .* ok$"
expect_out "shard set: a rank row" "^ +3 +0 +3 +0 +1 +1  model-pp01-tp01-of-pp02-tp02.safetensors"
expect_out "shard set: complete" "^result +complete"
expect_exit "shard set --json" 0 "$I" "$T/sh" --json
"$PY" - "$T/out" "$T/sh/manifest.json" <<'EOF2' && pass "shard set --json matches the manifest" || fail "shard set --json"
import json, os, sys
j = json.load(open(sys.argv[1])); m = json.load(open(sys.argv[2]))
d = os.path.dirname(sys.argv[2])
assert j["kind"] == "shard_set" and j["valid"] and j["problem_count"] == 0
assert j["manifest_id"] == m["manifest_id"]
assert [s["file"] for s in j["shards"]] == [s["file"] for s in m["shards"]]
assert j["bytes"] == sum(os.path.getsize(os.path.join(d, s["file"])) for s in m["shards"])
assert len(j["ranks"]) == 4 and j["ranks"][3]["shard"] == "model-pp01-tp01-of-pp02-tp02.safetensors"
assert j["plan"]["tp"] == 2 and j["plan"]["pp"] == 2 and j["plan"]["mtp"] is True
EOF2
(cd "$T/sh" && ls -l --time-style=+%s && xxh128sum -- * 2>/dev/null) | cmp -s - "$T/sh.before" && pass "shard set untouched" ||
  fail "inspect changed the shard set"
expect_exit "shard set: --tensor refused" 2 "$I" "$T/sh" --tensor model.norm.weight
expect_err "points to a shard file" "give one shard file"
cp -r "$T/sh" "$T/shbad"
rm "$T/shbad/model-pp00-tp01-of-pp02-tp02.safetensors"
truncate -s 100 "$T/shbad/model-pp01-tp00-of-pp02-tp02.safetensors"
expect_exit "shard set: missing + truncated shard" 1 "$I" "$T/shbad" --quiet
expect_err "names the missing shard" "model-pp00-tp01-of-pp02-tp02.safetensors: No such file"
expect_err "names the truncated shard" "model-pp01-tp00-of-pp02-tp02.safetensors: 100 bytes, the manifest says"
echo '{' >"$T/shbad/manifest.json"
expect_exit "shard set: broken manifest" 1 "$I" "$T/shbad"
expect_err "says so" "manifest.json: not valid JSON"

# --- usage ------------------------------------------------------------------------------
expect_exit "--tensor twice" 2 "$I" "$T/ok" --tensor model.norm.weight --tensor lm_head.weight
expect_err "--tensor twice: says so" "tensor given twice"
expect_exit "--max-problems twice" 2 "$I" "$T/ok" --max-problems 1 --max-problems 2
mkdir -p "$T/empty"
expect_exit "not a checkpoint dir" 2 "$I" "$T/empty"
expect_err "not a checkpoint dir: clear" "is not a checkpoint directory"
expect_exit "no path" 2 "$I"
expect_exit "unknown flag" 2 "$I" "$T/ok" --bogus
expect_exit "two paths" 2 "$I" "$T/ok" "$T/ok"
expect_exit "nonexistent path" 3 "$I" "$T/nope"
expect_exit "--help" 0 "$I" --help
expect_out "--help usage" "usage: dsr1-inspect"
finish

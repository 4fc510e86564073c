#!/usr/bin/env bash
# dsr1-synth: determinism (byte-identical reruns, any thread count), interop with the
# official Python safetensors (every tensor's bytes equal what our reader sees), real
# block-FP8 scales, the R1 metadata-only numbers, and usage errors.
set -u # not -e: expect_exit runs commands that are meant to fail
. "$(dirname "$0")/lib.inc"
S=$BIN/dsr1-synth
I=$BIN/dsr1-inspect

# --- tiny, twice (different thread counts): byte-identical -----------------------
expect_exit "synth tiny" 0 "$S" --preset tiny --out "$T/a" --quiet
OMP_NUM_THREADS=1 expect_exit "synth tiny again (1 thread)" 0 "$S" --preset tiny --out "$T/b" --quiet
same=1
for f in "$T"/a/*; do
  cmp -s "$f" "$T/b/$(basename "$f")" || { same=0; echo "    differs: $(basename "$f")"; }
done
[ "$(ls "$T/a" | wc -l)" -eq "$(ls "$T/b" | wc -l)" ] || same=0
[ $same -eq 1 ] && pass "tiny is byte-identical across runs and thread counts" || fail "tiny differs between runs"
expect_exit "synth tiny --seed 5" 0 "$S" --preset tiny --seed 5 --out "$T/c" --quiet
cmp -s "$T/a/model-00001-of-000004.safetensors" "$T/c/model-00001-of-000004.safetensors" \
  && fail "--seed does not change the values" || pass "--seed changes the values"
cmp -s "$T/a/model.safetensors.index.json" "$T/c/model.safetensors.index.json" \
  && pass "--seed keeps the layout" || fail "--seed changed the index"
ls "$T/a" | grep -Eq '^model-00001-of-000004\.safetensors$' && pass "R1 file naming" || fail "file names: $(ls "$T/a")"
sz=$(cat "$T"/a/model-*.safetensors | wc -c)
[ "$sz" -gt 2000000 ] && [ "$sz" -lt 40000000 ] && pass "tiny is a few MB ($sz B)" || fail "tiny size $sz"

# --- interop: official safetensors reads every file; bytes match our reader -------
# A shard size that ends file 1 right after layer 0's q_a_proj weight, so its scale
# opens file 2 (embed 524288 + input_layernorm 512 + q_a_proj 65536).
expect_exit "synth tiny split" 0 "$S" --preset tiny --shard-size 590336 --out "$T/s" --quiet
for f in "$T"/s/model-*.safetensors; do
  "$I" "$f" --json --hash >"$T/$(basename "$f").json" || fail "inspect $f"
done
"$PY" - "$T/s" "$T" >"$T/py.out" 2>&1 <<'EOF'
import glob, json, os, subprocess, sys
import numpy as np, ml_dtypes
from safetensors import deserialize, safe_open
d, t = sys.argv[1], sys.argv[2]
idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
wm = idx["weight_map"]
cfg = json.load(open(os.path.join(d, "config.json")))
npdt = {"F8_E4M3": ml_dtypes.float8_e4m3fn, "BF16": ml_dtypes.bfloat16, "F32": np.float32}
seen, total, bad, tensors = set(), 0, 0, {}
dump = os.path.join(t, "pybytes"); os.makedirs(dump, exist_ok=True)
names, order = [], []
for f in sorted(glob.glob(os.path.join(d, "model-*.safetensors"))):
    ours = {e["name"]: e for e in json.load(open(os.path.join(t, os.path.basename(f) + ".json")))["tensors"]}
    got = deserialize(open(f, "rb").read())
    with safe_open(f, "numpy") as h:
        assert h.metadata() == {"format": "pt"}, h.metadata()
        for name, e in got:
            b = bytes(e["data"])
            o = ours.pop(name)
            if (o["dtype"], o["shape"], o["bytes"]) != (e["dtype"], e["shape"], len(b)):
                print("MISMATCH", name, o, e["dtype"], e["shape"]); bad += 1
            if e["dtype"] != "F8_E4M3":  # numpy backend has no float8
                a = h.get_tensor(name)
                if a.tobytes() != b: print("NUMPY BYTES DIFFER", name); bad += 1
            if wm.get(name) != os.path.basename(f): print("INDEX", name, wm.get(name)); bad += 1
            p = os.path.join(dump, str(len(names))); open(p, "wb").write(b)
            names.append((p, o["xxh3_128"])); seen.add(name); total += len(b)
            tensors[name] = np.frombuffer(b, npdt[e["dtype"]]).reshape(e["shape"]).astype(np.float32)
    if ours: print("ONLY IN OURS", list(ours)); bad += 1
if seen != set(wm): print("INDEX/FILES DIFFER", len(seen), len(wm)); bad += 1
if total != idx["metadata"]["total_size"]: print("TOTAL", total, idx["metadata"]["total_size"]); bad += 1
# Our per-tensor XXH3-128 equals xxh128sum of the bytes Python read.
out = subprocess.run(["xxh128sum"] + [p for p, _ in names], capture_output=True, text=True, check=True).stdout
sums = {l.split()[1]: l.split()[0] for l in out.splitlines()}
for p, h in names:
    if sums[p] != h: print("HASH", p, sums[p], h); bad += 1
print("tensors", len(seen), "bytes", total)
# Block-FP8: every scale is block amax / 448, partial kv_a blocks included.
split = 0
for n, q in tensors.items():
    if not n.endswith("_scale_inv"): continue
    w = tensors[n[: -len("_scale_inv")]]; s = q
    split += wm[n] != wm[n[: -len("_scale_inv")]]
    R, C = w.shape
    assert s.shape == ((R + 127) // 128, (C + 127) // 128), (n, s.shape)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            blk = w[i*128:(i+1)*128, j*128:(j+1)*128]
            if np.abs(blk).max() != 448.0: print("BLOCK AMAX", n, i, j, np.abs(blk).max()); bad += 1
kva = tensors["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"]
print("kv_a rows", kva.shape[0], "split pairs", split)
if kva.shape[0] % 128 == 0: bad += 1
if split == 0: print("NO SPLIT PAIR"); bad += 1
# Realistic values.
W = tensors["model.layers.1.mlp.experts.0.gate_proj.weight"] * np.kron(tensors["model.layers.1.mlp.experts.0.gate_proj.weight_scale_inv"], np.ones((128, 128)))
if not (0.005 < W.std() < 0.08): print("WEIGHT STD", W.std()); bad += 1
bias = tensors["model.layers.1.mlp.gate.e_score_correction_bias"]
if not (bias.min() > 0 and bias.std() > 0.01): print("BIAS", bias); bad += 1
nw = tensors["model.layers.0.input_layernorm.weight"]
if abs(nw.mean() - 1) > 0.1: print("NORM", nw.mean()); bad += 1
if not (tensors["model.embed_tokens.weight"] == tensors["model.layers.3.embed_tokens.weight"]).all(): print("MTP EMBED COPY"); bad += 1
print("bad", bad)
sys.exit(1 if bad else 0)
EOF
if [ $? -eq 0 ]; then pass "python safetensors reads every tensor identically; scales = block amax/448"; else
  fail "python interop"; sed 's/^/    py: /' "$T/py.out" | tail -15; fi
grep -q "split pairs [1-9]" "$T/py.out" && pass "a weight and its scale in different files" || fail "no split pair"

# --- r1 metadata-only: the reference numbers ---------------------------------------
expect_exit "synth r1 metadata-only" 0 "$S" --preset r1 --metadata-only --out "$T/r1"
expect_out "r1 summary" "91,991 tensors, 688,574,839,360 bytes .* in 163 files"
[ ! -e "$T/r1/model-00001-of-000163.safetensors" ] && pass "no weight files" || fail "weights written"
cmp -s "$T/r1/config.json" tests/fixtures/r1-layout/config.json && \
  cmp -s "$T/r1/model.safetensors.index.json" tests/fixtures/r1-layout/model.safetensors.index.json \
  && pass "fixture tests/fixtures/r1-layout is current" \
  || fail "fixture stale: regenerate with dsr1-synth --preset r1 --metadata-only --force --out tests/fixtures/r1-layout"
expect_exit "inspect r1 layout" 0 "$I" "$T/r1"
expect_out "inspect lists 91,991 tensors" "^tensors +91,991$"
expect_out "inspect lists 688,574,839,360 bytes" "^bytes +688,574,839,360 "
"$PY" -c '
import json,sys
i=json.load(open(sys.argv[1]+"/model.safetensors.index.json")); c=json.load(open(sys.argv[1]+"/config.json"))
fs=sorted(set(i["weight_map"].values()))
assert len(i["weight_map"])==91991 and i["metadata"]["total_size"]==688574839360
assert fs[0]=="model-00001-of-000163.safetensors" and fs[-1]=="model-00163-of-000163.safetensors" and len(fs)==163
assert c["model_type"]=="deepseek_v3" and c["quantization_config"]["weight_block_size"]==[128,128]
assert c["rope_scaling"]["type"]=="yarn" and c["num_nextn_predict_layers"]==1 and c["rms_norm_eps"]==1e-6
' "$T/r1" && pass "r1 index/config as python sees them" || fail "r1 json"
# r1 --layers N: the real dims, first_k_dense_replace = min(3, N), no MTP by default.
expect_exit "r1 --layers 2 metadata" 0 "$S" --preset r1 --layers 2 --metadata-only --out "$T/r1l"
"$PY" -c '
import json,sys
c=json.load(open(sys.argv[1]+"/config.json")); w=json.load(open(sys.argv[1]+"/model.safetensors.index.json"))["weight_map"]
assert c["num_hidden_layers"]==2 and c["first_k_dense_replace"]==2 and c["num_nextn_predict_layers"]==0 and c["hidden_size"]==7168
assert not any(k.startswith("model.layers.2.") for k in w) and len(w)==3+2*20
' "$T/r1l" && pass "r1 --layers 2 layout" || fail "r1 --layers 2 layout"

# --- existing output, --force, flags -----------------------------------------------
expect_exit "refuses an existing checkpoint" 2 "$S" --preset tiny --out "$T/a"
expect_err "names --force" "already holds a checkpoint.*--force"
expect_exit "--force overwrites (fewer files)" 0 "$S" --preset tiny --shard-size 100MB --force --out "$T/s" --quiet
n=$(ls "$T/s"/model-*.safetensors | wc -l)
[ "$n" -eq 1 ] && pass "--force removed stale weight files" || fail "$n weight files after --force"
expect_exit "--no-mtp" 0 "$S" --preset tiny --no-mtp --out "$T/nomtp" --quiet
grep -q '"num_nextn_predict_layers": 0' "$T/nomtp/config.json" && ! grep -q 'layers\.3\.' "$T/nomtp/model.safetensors.index.json" \
  && pass "--no-mtp drops layer 3" || fail "--no-mtp"
expect_exit "no args" 2 "$S"
expect_exit "unknown preset" 2 "$S" --preset huge --out "$T/x"
expect_err "unknown preset named" "unknown preset \"huge\""
expect_exit "unknown flag" 2 "$S" --preset tiny --out "$T/x" --frobnicate
expect_exit "missing --out" 2 "$S" --preset tiny
expect_exit "bad --layers" 2 "$S" --preset tiny --layers 0 --out "$T/x"
expect_exit "bad --layers junk" 2 "$S" --preset tiny --layers 3x --out "$T/x"
expect_exit "bad --shard-size" 2 "$S" --preset tiny --shard-size 12XB --out "$T/x"
expect_exit "zero --shard-size" 2 "$S" --preset tiny --shard-size 0 --out "$T/x"
expect_exit "bad --seed" 2 "$S" --preset tiny --seed -1 --out "$T/x"
expect_exit "r1 weights without --layers" 2 "$S" --preset r1 --out "$T/x"
expect_err "r1 needs --layers" "pass --layers N"
expect_exit "stray argument" 2 "$S" --preset tiny --out "$T/x" extra
expect_exit "--help" 0 "$S" --help
expect_out "--help shows usage" "usage: dsr1-synth"
expect_exit "--preset twice" 2 "$S" --preset tiny --preset small --out "$T/x"
expect_err "names the repeated option" "[-]-preset given twice"
expect_exit "--out twice" 2 "$S" --preset tiny --out "$T/x" --out="$T/x"
expect_err "names --out" "[-]-out given twice"
expect_exit "--mtp with --no-mtp" 2 "$S" --preset tiny --mtp --no-mtp --out "$T/x"
expect_err "says they contradict" "contradict"
mkdir -p "$T/shards" && echo '{}' >"$T/shards/manifest.json"
expect_exit "into a shard output dir" 2 "$S" --preset tiny --out "$T/shards" --force --quiet
expect_err "says why" "holds manifest.json"
[ "$(ls "$T/shards")" = "manifest.json" ] && pass "shard dir untouched" || fail "wrote into the shard dir"
[ ! -e "$T/x" ] && pass "usage errors create nothing" || fail "usage error created $T/x"
expect_exit "unwritable output" 3 "$S" --preset tiny --out /proc/dsr1-no/x --quiet
ls "$T"/a/*.tmp.* >/dev/null 2>&1 && fail "temp files left" || pass "no temp files left"

# --- SIGTERM mid-write (background jobs ignore SIGINT): the temp file goes, no index ---
"$S" --preset small --no-mtp --out "$T/int" --quiet 2>"$T/int.err" &
pid=$!
for _ in $(seq 50); do ls "$T"/int/*.tmp.* >/dev/null 2>&1 && break; sleep 0.1; done
kill -TERM $pid
wait $pid; rc=$?
if [ $rc -eq 143 ]; then
  ls "$T"/int/*.tmp.* >/dev/null 2>&1 && fail "SIGTERM left a temp file: $(ls "$T/int")" || pass "SIGTERM removes the temp file"
  [ ! -e "$T/int/model.safetensors.index.json" ] && pass "SIGTERM leaves no index" || fail "index after SIGTERM"
else
  pass "SIGTERM: run finished first (rc $rc); nothing to check"
fi
finish

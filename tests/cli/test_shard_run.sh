#!/usr/bin/env bash
# dsr1-shard run on the tiny model: for a matrix of (tp, ep, pp, dp) plans, plus one with
# --mtp and one with --dtype bf16, every source tensor is rebuilt from the shards through
# the manifest and compared (tests/interop/shard_check.py: bit-exact for fp8, equal to a
# numpy dequant reference for bf16; coverage exactly once per stage; replicated copies
# identical; official safetensors opens every shard). `xxh128sum -c XXH128SUMS` passes.
# Two runs give identical bytes.
set -u
. "$(dirname "$0")/lib.inc"
D=$BIN/dsr1-shard
CHECK=tests/interop/shard_check.py
expect_exit "synth tiny" 0 "$BIN/dsr1-synth" --preset tiny --out "$T/tiny" --quiet

n=0
for p in "1 1 1 1" "2 2 1 1" "2 1 1 1" "4 4 1 1" "4 2 2 1" "2 2 2 2" "2 2 2 1 --mtp" "2 1 2 1 --dtype bf16" \
         "4 1 1 1 --dtype bf16 --mtp"; do
  set -- $p
  tp=$1 ep=$2 pp=$3 dp=$4
  shift 4
  o=$T/o$n
  n=$((n + 1))
  name="tp=$tp ep=$ep pp=$pp dp=$dp $*"
  expect_exit "run $name" 0 "$D" run "$T/tiny" --out "$o" --tp "$tp" --ep "$ep" --pp "$pp" --dp "$dp" "$@" --quiet
  [ -s "$T/out" ] && fail "--quiet printed: $(head -c 200 "$T/out")"
  if "$PY" "$CHECK" "$T/tiny" "$o" >"$T/check" 2>&1; then
    pass "reassembly $name: $(tail -1 "$T/check" | cut -c1-90)"
  else
    fail "reassembly $name"
    sed 's/^/    /' "$T/check" | head -15
  fi
  (cd "$o" && xxh128sum --quiet -c XXH128SUMS) >"$T/xx" 2>&1 && pass "xxh128sum -c $name" ||
    { fail "xxh128sum -c $name"; head -5 "$T/xx"; }
  want=$((tp * pp + 2))
  [ "$(ls "$o" | wc -l)" -eq "$want" ] && pass "$name: $((tp * pp)) shards + manifest + sums, nothing else" ||
    fail "$name: files: $(ls "$o" | tr '\n' ' ')"
done

# --- determinism: a second run (other thread count, tiny batches) is byte-identical ----
expect_exit "rerun tp=4 ep=2 pp=2" 0 env OMP_NUM_THREADS=1 "$D" run "$T/tiny" --out "$T/again" --tp 4 --ep 2 --pp 2 \
  --batch 16KiB --quiet
same=1
for f in "$T"/o4/*; do cmp -s "$f" "$T/again/$(basename "$f")" || { same=0; echo "    differs: $(basename "$f")"; }; done
[ $same -eq 1 ] && pass "two runs: identical bytes (manifest included)" || fail "two runs differ"
expect_exit "rerun bf16" 0 "$D" run "$T/tiny" --out "$T/again2" --tp 2 --ep 1 --pp 2 --dtype bf16 --threads 2 --quiet
diff -r "$T/o7" "$T/again2" >/dev/null && pass "bf16 reruns identical (quant_rel_rms too)" || fail "bf16 reruns differ"

# --- output details --------------------------------------------------------------------
"$PY" - "$T/o4" "$T/o7" <<'EOF' >"$T/py" 2>&1 && pass "manifest fields, transforms, metadata" || { fail "manifest details"; cat "$T/py"; }
import json, sys
m = json.load(open(sys.argv[1] + "/manifest.json"))
assert list(m) == ["format", "version", "manifest_id", "tool", "model", "plan", "shards", "ranks"], list(m)
assert m["plan"] == {"tp": 4, "ep": 2, "pp": 2, "dp": 1, "world_size": 8, "nodes": 1, "gpus_per_node": 8,
                     "dtype": "fp8", "mtp": False}, m["plan"]
assert m["model"]["architecture"] == "DeepseekV3ForCausalLM" and len(m["model"]["config_xxh3_128"]) == 32
assert all(s["bytes"] > 0 and len(s["xxh3_128"]) == 32 for s in m["shards"])
t = m["shards"][0]["tensors"][0]
assert set(t) == {"name", "dtype", "shape", "offset", "bytes", "xxh3_128", "source", "transform", "quant_rel_rms"}
assert all(t["transform"] == "copy" and t["quant_rel_rms"] == 0 for s in m["shards"] for t in s["tensors"])
assert m["shards"][0]["layer_first"] == 0 and m["shards"][-1]["layer_last"] == 2
b = json.load(open(sys.argv[2] + "/manifest.json"))
tr = {t["transform"] for s in b["shards"] for t in s["tensors"]}
assert tr == {"copy", "dequant_bf16"}, tr
assert not any(t["name"].endswith("_scale_inv") for s in b["shards"] for t in s["tensors"])
assert all(t["dtype"] == "BF16" for s in b["shards"] for t in s["tensors"] if t["transform"] == "dequant_bf16")
EOF
# without --mtp layer 3 (the MTP layer) is not written; with it, it is
grep -q '"model.layers.3.' "$T/o0/manifest.json" && fail "MTP layer written without --mtp" || pass "no MTP layer without --mtp"
grep -q '"model.layers.3.eh_proj.weight"' "$T/o6/manifest.json" && pass "MTP layer with --mtp" || fail "no MTP with --mtp"

# --- progress lines when not a terminal; summary on stdout -----------------------------
expect_exit "plain progress" 0 env DSR1_PROGRESS_INTERVAL=0.001 "$D" run "$T/tiny" --out "$T/p" --tp 2 --batch 64KiB --progress plain
expect_err "progress line" "dsr1-shard: .*(MB|kB).*(/s|ETA)"
expect_out "summary line" "4? ?shard files written"
finish

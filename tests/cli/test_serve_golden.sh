#!/usr/bin/env bash
# The golden checkpoint (tests/golden/ckpt, HF R1 FP8 layout) through dsr1-shard for
# several (tp, ep, pp) plans and both dtypes, then dsr1-serve's CPU runtime against the
# logits transformers computed (tests/golden/ref; regenerate with scripts/gen_golden.py,
# see tests/golden/README.md).
#
# Tolerances (max |diff| / max |ref| over all rows of a prompt):
#   fp8 shards vs the fp8 goldens           1e-4  (same weights, fp32 math, different
#                                                  summation order: measured ~1e-6)
#   bf16 shards vs the bf16 goldens         1e-4  (transformers on the same BF16-rounded
#                                                  weights)
#   bf16 shards vs the fp8 goldens          2e-2  BF16 rounding changes each FP8-dequantized
#       weight by at most 2^-9 relative (RNE), RMS 2^-9/sqrt(3) per projection; 21
#       projections on the longest path (7 per layer x 3 layers; embed, router, norms and
#       lm_head are BF16 already) give an RMS relative error of about
#       2^-9 * sqrt(21/3) = 5.2e-3 on the logits; max over ~20k logits of a Gaussian error
#       is ~4 sigma while max|ref| is ~3.5 x RMS(ref): ratio ~6e-3 (measured 6.0e-3 to
#       6.8e-3 by gen_golden.py). The test allows 3x that estimate. gen_golden.py picked
#       prompts whose expert choices and greedy tokens are identical for both weight sets,
#       so no routing flip can exceed this bound.
# Greedy tokens must equal the goldens' in every case.
# slow
set -u
. "$(dirname "$0")/lib.inc"
G=tests/golden
REGEN="regenerate goldens: scripts/gen_golden.py (tests/golden/README.md)"

mapfile -t PROMPTS < <("$PY" -c '
import json; m = json.load(open("tests/golden/ref/goldens.json"))
for p in m["prompts"]:
    print(",".join(map(str, p["prompt"])), ",".join(map(str, p["tokens"])), p["new_tokens"])')
[ "${#PROMPTS[@]}" -ge 3 ] || { fail "cannot read $G/ref/goldens.json ($REGEN)"; finish; exit 1; }

# compare DTYPE OUT0 OUT1 ...: logits files of the prompts, in order
compare() {
  "$PY" - "$@" <<'PYEOF'
import sys, numpy as np
dtype, outs = sys.argv[1], sys.argv[2:]
bad = 0
for i, o in enumerate(outs):
    got = np.load(o)
    checks = [("fp8", 1e-4)] if dtype == "fp8" else [("bf16", 1e-4), ("fp8", 2e-2)]
    for ref_kind, tol in checks:
        ref = np.load(f"tests/golden/ref/p{i}_{ref_kind}.npy")
        if got.shape != ref.shape or got.dtype != np.float32:
            print(f"prompt {i}: shape {got.shape} {got.dtype}, golden {ref.shape}"); bad += 1; continue
        e = float(np.abs(got - ref).max() / np.abs(ref).max())
        ok = e <= tol and not np.isnan(got).any()
        print(f"prompt {i} vs {ref_kind} golden: rel err {e:.3g} (tol {tol:g}) {'ok' if ok else 'TOO LARGE'}")
        bad += not ok
sys.exit(1 if bad else 0)
PYEOF
}

for plan in "1 1 1 fp8" "2 2 1 fp8" "2 1 1 fp8" "4 4 1 fp8" "2 2 2 fp8" "1 1 1 bf16" "2 1 1 bf16" "2 2 2 bf16"; do
  set -- $plan
  name="tp$1-ep$2-pp$3-$4"
  D=$T/$name
  expect_exit "shard $name" 0 "$BIN/dsr1-shard" run $G/ckpt --out "$D" --tp $1 --ep $2 --pp $3 --dtype $4 --quiet
  outs=()
  for i in "${!PROMPTS[@]}"; do
    read -r ids toks n <<<"${PROMPTS[$i]}"
    expect_exit "$name prompt $i generate" 0 "$BIN/dsr1-serve" generate --manifest "$D/manifest.json" \
      --prompt-ids "$ids" --max-new-tokens "$n" --logits-out "$D/p$i.npy"
    if [ "$(cat "$T/out")" = "$toks" ]; then pass "$name prompt $i greedy tokens"; else
      fail "$name prompt $i greedy tokens: got $(cat "$T/out"), golden $toks ($REGEN)"; fi
    outs+=("$D/p$i.npy")
  done
  if compare "$4" "${outs[@]}" >"$T/cmp" 2>&1; then pass "$name logits match goldens"; else
    fail "$name logits vs goldens ($REGEN)"; sed 's/^/    /' "$T/cmp"; fi
done

finish

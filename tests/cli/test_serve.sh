#!/usr/bin/env bash
# dsr1-serve generate on the CPU backend: usage errors, cache vs recompute and
# attention modes, sampling, and shards that must be refused at load. Uses the golden
# checkpoint sharded tp 2 x pp 2 (goldens: tests/golden/README.md).
set -u
. "$(dirname "$0")/lib.inc"
S=$BIN/dsr1-serve
G=tests/golden

expect_exit "help" 0 "$S" --help
expect_out "help lists generate" "dsr1-serve generate"
expect_exit "generate help" 0 "$S" generate -h
expect_exit "no subcommand" 2 "$S"
expect_exit "unknown subcommand" 2 "$S" serve-forever
expect_err "unknown subcommand named" "unknown subcommand"
expect_exit "manifest required" 2 "$S" generate --prompt-ids 1,2
expect_err "manifest required message" "manifest is required"
expect_exit "bad prompt ids" 2 "$S" generate --manifest x/manifest.json --prompt-ids 1,,2
expect_err "bad prompt ids message" "prompt-ids: expected comma-separated"
expect_exit "bad temperature" 2 "$S" generate --manifest x --prompt-ids 1 --temperature -1
expect_exit "bad attn" 2 "$S" generate --manifest x --prompt-ids 1 --attn fast
expect_exit "missing manifest file" 3 "$S" generate --manifest "$T/none/manifest.json" --prompt-ids 1

D=$T/s
expect_exit "shard tp2 pp2" 0 "$BIN/dsr1-shard" run $G/ckpt --out "$D" --tp 2 --ep 2 --pp 2 --quiet
read -r IDS TOKS N < <("$PY" -c '
import json; p = json.load(open("tests/golden/ref/goldens.json"))["prompts"][1]
print(",".join(map(str, p["prompt"])), ",".join(map(str, p["tokens"])), p["new_tokens"])')
gen() { "$S" generate --manifest "$D/manifest.json" --prompt-ids "$IDS" --max-new-tokens "$N" "$@"; }

expect_exit "greedy default" 0 gen --logits-out "$T/ref.npy" --prefill-chunk 0
if [ "$(cat "$T/out")" = "$TOKS" ]; then pass "greedy tokens = golden"; else fail "greedy tokens $(cat "$T/out") != $TOKS"; fi
"$PY" -c 'import numpy as np, sys; a = np.load(sys.argv[1]); sys.exit(0 if a.shape == (int(sys.argv[2]), 1024) and a.dtype == np.float32 else 1)' \
  "$T/ref.npy" $(( $(tr ',' '\n' <<<"$IDS" | wc -l) + N - 1 )) && pass "logits-out shape [T + N - 1, vocab] float32" || fail "logits-out shape"

# Decode with the latent cache equals recomputing the whole sequence every step, and
# absorbed / naive attention agree in prefill and decode. A prompt in chunks (one token,
# 3 tokens, a chunk one short of the prompt) extends the cache chunk by chunk: the same
# logits for every prompt row.
n0=$(tr ',' '\n' <<<"$IDS" | wc -l)
for mode in "--no-cache" "--attn absorb" "--attn naive" "--attn absorb --no-cache" \
            "--prefill-chunk 1" "--prefill-chunk 3" "--prefill-chunk $((n0 - 1))" \
            "--prefill-chunk 3 --no-cache" "--prefill-chunk 2 --attn absorb"; do
  # shellcheck disable=SC2086
  expect_exit "generate $mode" 0 gen --logits-out "$T/mode.npy" $mode
  if [ "$(cat "$T/out")" = "$TOKS" ]; then pass "$mode greedy tokens"; else fail "$mode tokens: $(cat "$T/out")"; fi
  if "$PY" -c '
import sys, numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
e = float(np.abs(a - b).max() / np.abs(b).max()); print(f"rel {e:.3g}"); sys.exit(0 if e <= 1e-5 else 1)' \
    "$T/mode.npy" "$T/ref.npy" >"$T/cmp" 2>&1; then pass "$mode equals the cached default ($(cat "$T/cmp"))"; else
    fail "$mode differs from the cached default: $(cat "$T/cmp")"; fi
done

# sampling: seeded and reproducible; top-k 1 is greedy
expect_exit "sample seed 3" 0 gen --temperature 2 --top-p 0.99 --seed 3
cp "$T/out" "$T/s3"
expect_exit "sample seed 3 again" 0 gen --temperature 2 --top-p 0.99 --seed 3
cmp -s "$T/out" "$T/s3" && pass "same seed, same tokens" || fail "same seed gave $(cat "$T/out") vs $(cat "$T/s3")"
expect_exit "sample seed 4" 0 gen --temperature 2 --top-p 0.99 --seed 4
cmp -s "$T/out" "$T/s3" && fail "seeds 3 and 4 gave the same 8 tokens at temperature 2" || pass "other seed, other tokens"
expect_exit "top-k 1" 0 gen --temperature 1 --top-k 1 --seed 9
[ "$(cat "$T/out")" = "$TOKS" ] && pass "top-k 1 = greedy" || fail "top-k 1 gave $(cat "$T/out")"

expect_exit "token id outside vocab" 2 "$S" generate --manifest "$D/manifest.json" --prompt-ids 0,1024
expect_err "token id message" "token id 1024 .*outside the vocabulary"

if nm "$S" 2>/dev/null | grep -q ' W rt_cuda_generate'; then
  expect_exit "cuda backend in a CPU build" 3 gen --backend cuda
  expect_err "cuda backend message" "built without CUDA support"
fi

# MTP (no transformers golden exists: its DeepseekV3 drops layer num_hidden_layers):
# the draft logits of a synthetic checkpoint agree across plans, and asking for them
# without an MTP layer is a usage error.
expect_exit "mtp without MTP layer" 2 gen --mtp-logits-out "$T/m.npy"
expect_err "mtp without MTP message" "no MTP layer"
expect_exit "synth tiny" 0 "$BIN/dsr1-synth" --preset tiny --out "$T/syn" --quiet
for p in "1 1" "2 2"; do
  set -- $p
  expect_exit "shard synth --mtp tp$1 pp$2" 0 "$BIN/dsr1-shard" run "$T/syn" --out "$T/syn$1" --tp $1 --pp $2 --mtp --quiet
  expect_exit "mtp generate tp$1 pp$2" 0 "$S" generate --manifest "$T/syn$1/manifest.json" --prompt-ids 0,5,77,300,1000 \
    --max-new-tokens 5 --logits-out "$T/syn$1.npy" --mtp-logits-out "$T/synm$1.npy"
  expect_exit "mtp generate tp$1 pp$2, prompt in chunks of 2" 0 "$S" generate --manifest "$T/syn$1/manifest.json" \
    --prompt-ids 0,5,77,300,1000 --max-new-tokens 5 --prefill-chunk 2 --logits-out "$T/sync$1.npy" \
    --mtp-logits-out "$T/syncm$1.npy"
done
if "$PY" -c '
import sys, numpy as np
l1, l2, m1, m2 = (np.load(sys.argv[1] + x) for x in ("syn1.npy", "syn2.npy", "synm1.npy", "synm2.npy"))
c1, c2, n1, n2 = (np.load(sys.argv[1] + x) for x in ("sync1.npy", "sync2.npy", "syncm1.npy", "syncm2.npy"))
e = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in ((l2, l1), (m2, m1), (c1, l1), (c2, l1), (n1, m1), (n2, m1)))
print(f"rel {e:.3g}")
sys.exit(0 if e <= 1e-5 and m1.shape == l1.shape == (9, 1024) and not np.allclose(m1, l1) else 1)' "$T/" >"$T/cmp" 2>&1
then pass "mtp logits agree across plans and prompt chunks ($(cat "$T/cmp"))"; else fail "mtp logits across plans / chunks: $(cat "$T/cmp")"; fi

# Speculative decoding (runtime/spec.h): whatever the drafts, the tokens and logits of a
# plain greedy run. The MTP module's own drafts (random weights: all rejected), right
# drafts (DSR1_TEST_DRAFTS = the plain tokens: all accepted) and every third one wrong.
SP=3,17,250,4,99,512,8
for p in "1 1" "2 2"; do
  set -- $p
  M=$T/syn$1/manifest.json
  expect_exit "plain tp$1 pp$2 for speculative" 0 "$S" generate --manifest "$M" --prompt-ids $SP --max-new-tokens 8 \
    --logits-out "$T/sp$1.npy"
  want=$(cat "$T/out")
  mixed=$("$PY" -c "import sys; t = sys.argv[1].split(','); print(','.join(str((int(x) + 1) % 1024) if i % 3 == 0 else x for i, x in enumerate(t)))" "$want")
  for d in "mtp:NOP=1" "right:DSR1_TEST_DRAFTS=$want" "mixed:DSR1_TEST_DRAFTS=$mixed"; do
    dn=${d%%:*} de=${d#*:}
    expect_exit "--speculative tp$1 pp$2, $dn drafts" 0 env "$de" "$S" generate --manifest "$M" --prompt-ids $SP \
      --max-new-tokens 8 --logits-out "$T/spec.npy" --speculative
    read -r st ac < <(sed -n 's/.*speculative: \([0-9]*\) steps, \([0-9]*\) drafts accepted.*/\1 \2/p' "$T/err")
    case $dn in mtp) okacc=$([ "${ac:-x}" = 0 ] && echo 1) ;; right) okacc=$([ "${ac:-x}" = "$st" ] && [ "$st" -gt 0 ] && echo 1) ;;
                mixed) okacc=$([ "${ac:-0}" -gt 0 ] && [ "$ac" -lt "$st" ] && echo 1) ;; esac
    if [ "$(cat "$T/out")" = "$want" ] && [ "${okacc:-0}" = 1 ] && "$PY" -c '
import sys, numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
sys.exit(0 if a.shape == b.shape and float(np.abs(a - b).max() / np.abs(b).max()) <= 1e-5 else 1)' "$T/spec.npy" "$T/sp$1.npy"
    then pass "  $dn drafts: $st steps, $ac accepted; the plain tokens and logits"
    else fail "  $dn drafts: steps $st accepted $ac, tokens $(cat "$T/out") (plain $want)"; fi
  done
done
# sampled: speculative sampling (tests/unit/test_spec.c checks the distribution);
# here: it runs on both plans, reproducibly for a seed, with drafts given or drawn
for p in 1 2; do
  M=$T/syn$p/manifest.json
  expect_exit "--speculative --temperature 0.8 --top-p 0.95, tp$p" 0 "$S" generate --manifest "$M" --prompt-ids $SP \
    --max-new-tokens 8 --speculative --temperature 0.8 --top-p 0.95 --seed 3
  cp "$T/out" "$T/samp1"
  expect_exit "  same seed again" 0 "$S" generate --manifest "$M" --prompt-ids $SP --max-new-tokens 8 \
    --speculative --temperature 0.8 --top-p 0.95 --seed 3
  [ "$(tr ',' '\n' <"$T/out" | wc -l)" = 8 ] && cmp -s "$T/out" "$T/samp1" \
    && pass "  8 tokens, the same for the same seed" || fail "  sampled: $(cat "$T/out") vs $(cat "$T/samp1")"
  expect_exit "  with given drafts" 0 env DSR1_TEST_DRAFTS="$(cat "$T/samp1")" "$S" generate --manifest "$M" \
    --prompt-ids $SP --max-new-tokens 8 --speculative --temperature 0.8 --top-p 0.95 --seed 3
  expect_err "  reports the steps" "speculative: [0-9]+ steps, [0-9]+ drafts accepted"
done
# one-token chunks and a one-token prompt: the buffers still hold a step's two rows
expect_exit "--speculative --prefill-chunk 1 --logits-out" 0 "$S" generate --manifest "$T/syn1/manifest.json" \
  --prompt-ids $SP --max-new-tokens 8 --prefill-chunk 1 --logits-out "$T/spc1.npy" --speculative
"$PY" -c 'import sys, numpy as np; a, b = np.load(sys.argv[1]), np.load(sys.argv[2]); sys.exit(0 if a.shape == b.shape and float(np.abs(a - b).max() / np.abs(b).max()) <= 1e-5 else 1)' \
  "$T/spc1.npy" "$T/sp1.npy" && pass "  the plain run's logits" || fail "  logits differ from the plain run's"
expect_exit "--speculative on a one-token prompt" 0 "$S" generate --manifest "$T/syn1/manifest.json" \
  --prompt-ids 7 --max-new-tokens 6 --logits-out "$T/sp1t.npy" --speculative
expect_exit "--speculative with --no-cache: exit 2" 2 gen --speculative --no-cache
expect_err "  says why" "speculative decodes with the latent cache"
expect_exit "--speculative with --mtp-logits-out: exit 2" 2 gen --speculative --mtp-logits-out "$T/m.npy"
expect_exit "--speculative --top-k 1 (greedy) runs" 0 "$S" generate --manifest "$T/syn1/manifest.json" --prompt-ids $SP \
  --max-new-tokens 4 --speculative --temperature 0.7 --top-k 1
expect_exit "--speculative on shards without MTP: exit 2" 2 gen --speculative
expect_err "  says so" "speculative: the shards hold no MTP layer"

# Shards that must be refused at load, each with exit 1 and a message naming the file.
SH=$(ls "$D"/model-pp01-tp01-*.safetensors)
tamper() { rm -rf "$T/t"; cp -r "$D" "$T/t"; }
tamper
"$PY" - "$T/t/$(basename "$SH")" <<'PYEOF'
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[len(b) // 2] ^= 0x40; open(p, "wb").write(b)
PYEOF
expect_exit "flipped tensor byte, --verify full" 1 "$S" generate --manifest "$T/t/manifest.json" --prompt-ids 1,2 --verify full
expect_err "flipped byte message" "model-pp01-tp01.*(digest|hash|xxh)"
tamper
"$PY" - "$T/t/$(basename "$SH")" <<'PYEOF'
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read())
k = b.index(b'"dsr1.manifest_id":"') + len(b'"dsr1.manifest_id":"')
b[k] = ord("0") if b[k] != ord("0") else ord("1"); open(p, "wb").write(b)
PYEOF
expect_exit "foreign manifest id in the header" 1 "$S" generate --manifest "$T/t/manifest.json" --prompt-ids 1,2
expect_err "foreign id message" "model-pp01-tp01.*manifest_id"
tamper
"$PY" - "$T/t/$(basename "$SH")" <<'PYEOF'
import sys, json, struct
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); n = struct.unpack("<Q", b[:8])[0]
h = b[8:8 + n].decode()
# swap the dtype of the final norm (BF16 [256]) for F16: same size, different table
i = h.index('"model.norm.weight"'); j = h.index('"BF16"', i)
b[8 + j:8 + j + 6] = b'"F16" '[:6] if False else b'"F16" '
open(p, "wb").write(b)
PYEOF
expect_exit "tensor table differs from the manifest" 1 "$S" generate --manifest "$T/t/manifest.json" --prompt-ids 1,2
expect_err "table message" "model-pp01-tp01.*model.norm.weight"
tamper
truncate -s -1 "$T/t/$(basename "$SH")"
expect_exit "truncated shard" 1 "$S" generate --manifest "$T/t/manifest.json" --prompt-ids 1,2
expect_err "truncated message" "model-pp01-tp01.*truncated"
tamper
rm "$T/t/$(basename "$SH")"
expect_exit "missing shard" 1 "$S" generate --manifest "$T/t/manifest.json" --prompt-ids 1,2
expect_err "missing message" "model-pp01-tp01.*missing"
finish

#!/usr/bin/env bash
# The CPU runtime against an independent float64 numpy implementation of the model
# written here from deepseek-v3-reference.md §6, on a dsr1-synth checkpoint (different
# value ranges than the golden model, YaRN with original_max_position_embeddings 256, and
# an MTP layer). transformers has no MTP module, so this is the reference for the MTP
# draft logits: x = eh_proj([enorm(embed(t+1)), hnorm(h_t)]) -> decoder layer ->
# shared_head.head(shared_head.norm(x)), h_t the final-normed hidden state (vLLM's
# convention). Tolerance: max |diff| / max |ref| <= 1e-4 (fp32 runtime vs float64).
set -u
. "$(dirname "$0")/lib.inc"
S=$BIN/dsr1-serve

expect_exit "synth tiny with MTP" 0 "$BIN/dsr1-synth" --preset tiny --out "$T/syn" --seed 11 --quiet
expect_exit "shard tp2 pp2 --mtp" 0 "$BIN/dsr1-shard" run "$T/syn" --out "$T/sh" --tp 2 --ep 2 --pp 2 --mtp --quiet
PROMPT=0,17,300,511,512,900,1023
expect_exit "generate with MTP logits" 0 "$S" generate --manifest "$T/sh/manifest.json" --prompt-ids $PROMPT \
  --max-new-tokens 5 --logits-out "$T/main.npy" --mtp-logits-out "$T/mtp.npy"
cp "$T/out" "$T/tokens"

if "$PY" - "$T/syn" "$PROMPT" "$(cat "$T/tokens")" "$T/main.npy" "$T/mtp.npy" >"$T/ref.log" 2>&1 <<'PYEOF'
import json, math, os, struct, sys
import ml_dtypes
import numpy as np

ck, prompt, toks, main_path, mtp_path = sys.argv[1:]
cfg = json.load(open(os.path.join(ck, "config.json")))
wm = json.load(open(os.path.join(ck, "model.safetensors.index.json")))["weight_map"]
DT = {"F8_E4M3": ml_dtypes.float8_e4m3fn, "BF16": ml_dtypes.bfloat16, "F32": np.float32}
raw = {}
for f in sorted(set(wm.values())):
    b = open(os.path.join(ck, f), "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    for k, v in json.loads(b[8:8 + n]).items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        raw[k] = np.frombuffer(b[8 + n + s:8 + n + e], DT[v["dtype"]]).reshape(v["shape"])

def W(name):
    t = raw[name]
    if t.dtype == ml_dtypes.float8_e4m3fn:
        s = raw[name + "_scale_inv"].astype(np.float64)
        r, c = t.shape
        return t.astype(np.float64) * np.repeat(np.repeat(s, 128, 0), 128, 1)[:r, :c]
    return t.astype(np.float64)

H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
dn, dr, dv, R = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
eps, E, G, TG, K = cfg["rms_norm_eps"], cfg["n_routed_experts"], cfg["n_group"], cfg["topk_group"], cfg["num_experts_per_tok"]
rs = cfg["rope_scaling"]
# YaRN (reference §6)
base, dim, fac = cfg["rope_theta"], dr, rs["factor"]
freqs = base ** (-np.arange(0, dim, 2) / dim)
corr = lambda r: dim * math.log(rs["original_max_position_embeddings"] / (r * 2 * math.pi)) / (2 * math.log(base))
low, high = max(math.floor(corr(rs["beta_fast"])), 0), min(math.ceil(corr(rs["beta_slow"])), dim - 1)
ramp = np.clip((np.arange(dim // 2) - low) / (high - low if high > low else 0.001), 0, 1)
inv = freqs / fac * ramp + freqs * (1 - ramp)
msc = 0.1 * rs["mscale_all_dim"] * math.log(fac) + 1
scale = (dn + dr) ** -0.5 * msc * msc

def rms(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

def rope(x, pos):  # x [..., T, dim] with T on axis -2; interleaved pairs
    a = pos[:, None] * inv[None, :]
    c, s = np.cos(a), np.sin(a)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out

def attn(p, x):
    T = x.shape[0]
    pos = np.arange(T, dtype=np.float64)
    q = (rms(x @ W(p + "q_a_proj.weight").T, W(p + "q_a_layernorm.weight")) @ W(p + "q_b_proj.weight").T)
    q = q.reshape(T, nh, dn + dr).transpose(1, 0, 2)
    q[..., dn:] = rope(q[..., dn:], pos)
    kv = x @ W(p + "kv_a_proj_with_mqa.weight").T
    c = rms(kv[:, :R], W(p + "kv_a_layernorm.weight"))
    kpe = rope(kv[:, R:], pos)
    kvb = (c @ W(p + "kv_b_proj.weight").T).reshape(T, nh, dn + dv).transpose(1, 0, 2)
    k = np.concatenate([kvb[..., :dn], np.broadcast_to(kpe, (nh, T, dr))], -1)
    sc = q @ k.transpose(0, 2, 1) * scale
    sc = np.where(np.tril(np.ones((T, T), bool)), sc, -np.inf)
    pr = np.exp(sc - sc.max(-1, keepdims=True))
    pr /= pr.sum(-1, keepdims=True)
    o = (pr @ kvb[..., dn:]).transpose(1, 0, 2).reshape(T, nh * dv)
    return o @ W(p + "o_proj.weight").T

def mlp(p, x):
    g = x @ W(p + "gate_proj.weight").T
    return (g / (1 + np.exp(-g)) * (x @ W(p + "up_proj.weight").T)) @ W(p + "down_proj.weight").T

def moe(p, x):
    s = 1 / (1 + np.exp(-(x @ W(p + "gate.weight").T)))
    sel = s + W(p + "gate.e_score_correction_bias")
    out = mlp(p + "shared_experts.", x)
    for t in range(x.shape[0]):
        g = np.sort(sel[t].reshape(G, -1), -1)[:, ::-1][:, :2].sum(-1)
        keep = np.argsort(-g, kind="stable")[:TG]
        m = np.full(E, -np.inf)
        for gi in keep:
            m[gi * (E // G):(gi + 1) * (E // G)] = sel[t, gi * (E // G):(gi + 1) * (E // G)]
        idx = np.argsort(-m, kind="stable")[:K]
        w = s[t, idx] / s[t, idx].sum() * cfg["routed_scaling_factor"]
        for e, we in zip(idx, w):
            out[t] += we * mlp(p + f"experts.{e}.", x[t:t + 1])[0]
    return out

def layer(L, h):
    p = f"model.layers.{L}."
    h = h + attn(p + "self_attn.", rms(h, W(p + "input_layernorm.weight")))
    x = rms(h, W(p + "post_attention_layernorm.weight"))
    moe_layer = L >= cfg["first_k_dense_replace"]
    return h + (moe(p + "mlp.", x) if moe_layer else mlp(p + "mlp.", x))

n0 = len(prompt.split(","))
seq = [int(v) for v in prompt.split(",")] + [int(v) for v in toks.split(",")]
ids = np.array(seq[:-1])
h = W("model.embed_tokens.weight")[ids]
for L in range(cfg["num_hidden_layers"]):
    h = layer(L, h)
hn = rms(h, W("model.norm.weight"))
ref_main = hn @ W("lm_head.weight").T
M = cfg["num_hidden_layers"]
p = f"model.layers.{M}."
nxt = np.array(seq[1:])
e = W(p + "embed_tokens.weight")[nxt]
x = np.concatenate([rms(e, W(p + "enorm.weight")), rms(hn, W(p + "hnorm.weight"))], -1) @ W(p + "eh_proj.weight").T
x = layer(M, x)
ref_mtp = rms(x, W(p + "shared_head.norm.weight")) @ W(p + "shared_head.head.weight").T
bad = 0
for name, got_path, ref in (("main", main_path, ref_main), ("mtp", mtp_path, ref_mtp)):
    got = np.load(got_path).astype(np.float64)
    if got.shape != ref.shape:
        print(f"{name}: shape {got.shape} vs reference {ref.shape}"); bad += 1; continue
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    print(f"{name}: rel err {err:.3g} (tol 1e-4)")
    bad += err > 1e-4
greedy = [int(np.argmax(r)) for r in ref_main[n0 - 1:]]
print("reference greedy", greedy, "runtime", seq[n0:])
bad += greedy != seq[n0:]
sys.exit(1 if bad else 0)
PYEOF
then pass "main and MTP logits match the numpy reference ($(tr '\n' ' ' <"$T/ref.log"))"; else
  fail "numpy reference disagrees"; sed 's/^/    /' "$T/ref.log"; fi
finish

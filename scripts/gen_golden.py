#!/usr/bin/env python3
"""Golden fixtures for the dsr1 runtime, from an independent implementation
(HuggingFace transformers' DeepseekV3ForCausalLM).

Two steps (tests/golden/README.md says how and where each ran):

  gen_golden.py ckpt --out tests/golden/ckpt [--seed N]
      numpy + ml_dtypes + safetensors. Builds a random tiny DeepSeek-V3 (shaped like
      dsr1-synth's tiny preset: R1's unaligned kv_a rows, 4 expert groups, a dense and
      two MoE layers, YaRN as R1, positive correction biases), quantizes every
      projection to FP8 E4M3 with 128x128 block scales (S = amax/448) and writes it
      in the exact HF R1 layout: per-expert tensor names, weight_scale_inv, config.json
      with quantization_config, model.safetensors.index.json, two shard files with one
      weight and its scale in different files.

  gen_golden.py ref --ckpt tests/golden/ckpt --out tests/golden/ref
      torch + transformers (>= 5). Reads the files back, dequantizes them in torch,
      loads them into DeepseekV3ForCausalLM (fp32, eager attention, CPU) through
      from_pretrained, checks that every parameter the model runs on equals the
      dequantized file contents bit for bit, then for each prompt records:
        p{i}_fp8.npy   logits [T + N - 1, vocab]: every prompt position, then one row
                       per greedy decode step with the KV cache (N new tokens);
        p{i}_bf16.npy  the same for the weights rounded to BF16 (what dsr1-shard
                       --dtype bf16 writes), run the same way;
      and goldens.json (prompts, greedy tokens, router/greedy margins, versions,
      transformers' rope frequencies and softmax scale, cache-vs-recompute error).
      Prompts are drawn until routing and greedy tokens are robust: identical expert
      choices and tokens for the FP8 and BF16 weights, router margins >= 1e-4 and
      greedy margins >= 0.01.

  gen_golden.py a8 --ckpt tests/golden/ckpt --out tests/golden/ref
      torch + transformers. Prefill logits (p{i}_a8.npy [T, vocab], prompts and margins
      in a8.json) of prompts of the goldens' lengths with the runtime's FP8 activation
      policy applied to transformers' model: the input of every GEMM on FP8 weights is quantized
      1x128 to E4M3 (scale = max(amax, 1e-4) / 448, as kernels/gemm_fp8.c and DeepSeek's
      act_quant) for the rows the runtime quantizes (tiles of 16 tokens, from 3 tokens
      a tile: kernels/gemm.cu), the routed experts' inputs when the layer sees more
      than 16 tokens (kernels/mlp.cu), and the input of the BF16 GEMMs (router,
      lm_head) is rounded to BF16 above 16 tokens (cuBLASLt BF16). kv_b stays exact
      (the runtime absorbs it in fp32). Decode steps (one token) run W8A32 and are
      covered by p{i}_fp8.npy. Prompts are drawn until every router margin is >= 1e-3
      and the first greedy token's margin >= 0.05 under that quantization.

  gen_golden.py all --out tests/golden   (both, where every package is present)
"""
import argparse
import json
import math
import os
import sys

import numpy as np

# ---- the model shape (dsr1-synth tiny) ----
CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": 256,
    "initializer_range": 0.02,
    "intermediate_size": 512,
    "kv_lora_rank": 128,
    "max_position_embeddings": 163840,
    "moe_intermediate_size": 256,
    "moe_layer_freq": 1,
    "n_group": 4,
    "n_routed_experts": 16,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 8,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 3,
    "num_key_value_heads": 8,
    "num_nextn_predict_layers": 0,
    "q_lora_rank": 256,
    "qk_nope_head_dim": 64,
    "qk_rope_head_dim": 64,
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    },
    "rms_norm_eps": 1e-06,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
    "rope_theta": 10000,
    "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid",
    "tie_word_embeddings": False,
    "topk_group": 2,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "v_head_dim": 64,
    "vocab_size": 1024,
}

PROMPT_LENGTHS = [8, 12, 17]
NEW_TOKENS = 8
ROUTER_MARGIN_MIN = 1e-4
GREEDY_MARGIN_MIN = 0.01
MAX_DRAWS = 300
DROPPED_KEYS = []


def tensor_specs(c):
    """(name, shape, kind) in the HF R1 naming; kind: fp8 | bf16 | norm | bias | embed | head | router."""
    H, V = c["hidden_size"], c["vocab_size"]
    nh = c["num_attention_heads"]
    dn, dr, dv = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    out = [("model.embed_tokens.weight", (V, H), "embed")]
    for L in range(c["num_hidden_layers"]):
        p = f"model.layers.{L}."
        out += [
            (p + "input_layernorm.weight", (H,), "norm"),
            (p + "post_attention_layernorm.weight", (H,), "norm"),
            (p + "self_attn.q_a_proj.weight", (c["q_lora_rank"], H), "fp8"),
            (p + "self_attn.q_a_layernorm.weight", (c["q_lora_rank"],), "norm"),
            (p + "self_attn.q_b_proj.weight", (nh * (dn + dr), c["q_lora_rank"]), "fp8"),
            (p + "self_attn.kv_a_proj_with_mqa.weight", (c["kv_lora_rank"] + dr, H), "fp8"),
            (p + "self_attn.kv_a_layernorm.weight", (c["kv_lora_rank"],), "norm"),
            (p + "self_attn.kv_b_proj.weight", (nh * (dn + dv), c["kv_lora_rank"]), "fp8"),
            (p + "self_attn.o_proj.weight", (H, nh * dv), "fp8"),
        ]
        if L < c["first_k_dense_replace"]:
            I = c["intermediate_size"]
            out += [(p + "mlp.gate_proj.weight", (I, H), "fp8"),
                    (p + "mlp.up_proj.weight", (I, H), "fp8"),
                    (p + "mlp.down_proj.weight", (H, I), "fp8")]
        else:
            I, E = c["moe_intermediate_size"], c["n_routed_experts"]
            out += [(p + "mlp.gate.weight", (E, H), "router"),
                    (p + "mlp.gate.e_score_correction_bias", (E,), "bias")]
            for e in range(E):
                q = p + f"mlp.experts.{e}."
                out += [(q + "gate_proj.weight", (I, H), "fp8"),
                        (q + "up_proj.weight", (I, H), "fp8"),
                        (q + "down_proj.weight", (H, I), "fp8")]
            Is = I * c["n_shared_experts"]
            q = p + "mlp.shared_experts."
            out += [(q + "gate_proj.weight", (Is, H), "fp8"),
                    (q + "up_proj.weight", (Is, H), "fp8"),
                    (q + "down_proj.weight", (H, Is), "fp8")]
    out += [("model.norm.weight", (H,), "norm"), ("lm_head.weight", (V, H), "head")]
    return out


def block_quant(w):
    """DeepSeek block-FP8: S = amax(block)/448 per 128x128 block (partial edge blocks use
    their real elements), q = e4m3(w / S) with round-to-nearest-even."""
    import ml_dtypes
    rows, cols = w.shape
    br, bc = -(-rows // 128), -(-cols // 128)
    scale = np.empty((br, bc), np.float32)
    q = np.empty((rows, cols), ml_dtypes.float8_e4m3fn)
    for i in range(br):
        for j in range(bc):
            blk = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            amax = np.float32(np.abs(blk).max())
            s = np.float32(amax / np.float32(448.0)) if amax > 0 else np.float32(1.0)
            scale[i, j] = s
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = \
                np.clip(blk / s, -448.0, 448.0).astype(ml_dtypes.float8_e4m3fn)
    return q, scale


def cmd_ckpt(args):
    import ml_dtypes
    from safetensors.numpy import save_file
    c = CONFIG
    rng = np.random.default_rng(args.seed)
    tensors = {}
    for name, shape, kind in tensor_specs(c):
        if kind == "fp8":
            w = (rng.standard_normal(shape) / math.sqrt(shape[1])).astype(np.float32)
            q, s = block_quant(w)
            tensors[name] = q
            tensors[name + "_scale_inv"] = s
        elif kind == "norm":
            tensors[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(ml_dtypes.bfloat16)
        elif kind == "embed":
            tensors[name] = rng.standard_normal(shape).astype(ml_dtypes.bfloat16)
        elif kind == "head":
            tensors[name] = (2.0 * rng.standard_normal(shape) / math.sqrt(shape[1])).astype(ml_dtypes.bfloat16)
        elif kind == "router":
            tensors[name] = (rng.standard_normal(shape) / math.sqrt(shape[1])).astype(ml_dtypes.bfloat16)
        elif kind == "bias":
            # positive like R1's (all >= +2.02 there); spread comparable to the scores'
            tensors[name] = (0.1 + 0.2 * rng.random(shape)).astype(np.float32)
        else:
            raise AssertionError(kind)
    # Two files like R1's: layers up to 1 in the first, the rest in the second, and one
    # scale_inv separated from its weight (as happens in the real checkpoint).
    names = [n for n, _, _ in tensor_specs(c)]
    order = []
    for n in names:
        order.append(n)
        if n + "_scale_inv" in tensors:
            order.append(n + "_scale_inv")
    split_at = order.index("model.layers.1.mlp.experts.15.down_proj.weight") + 1  # its scale goes to file 2
    files = {"model-00001-of-000002.safetensors": order[:split_at],
             "model-00002-of-000002.safetensors": order[split_at:]}
    os.makedirs(args.out, exist_ok=True)
    weight_map, total = {}, 0
    for fname, ns in files.items():
        d = {n: np.ascontiguousarray(tensors[n]) for n in ns}
        save_file(d, os.path.join(args.out, fname), metadata={"format": "pt"})
        for n in ns:
            weight_map[n] = fname
            total += tensors[n].nbytes
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                  f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(args.out, "generation_config.json"), "w") as f:
        json.dump({"_from_model_config": True, "bos_token_id": 0, "eos_token_id": 1,
                   "do_sample": True, "temperature": 0.6, "top_p": 0.95}, f, indent=2)
        f.write("\n")
    print(f"wrote {len(tensors)} tensors, {total} bytes, into {args.out}")


# ---------------------------------------------------------------- reference
def read_dequant(ckpt):
    """Read every tensor through the index and dequantize FP8 weights in torch:
    W[i][j] = f32(q[i][j]) * S[i/128][j/128]."""
    import torch
    from safetensors import safe_open
    with open(os.path.join(ckpt, "model.safetensors.index.json")) as f:
        wm = json.load(f)["weight_map"]
    raw = {}
    for fname in sorted(set(wm.values())):
        with safe_open(os.path.join(ckpt, fname), framework="pt") as f:
            for k in f.keys():
                assert wm[k] == fname, k
                raw[k] = f.get_tensor(k)
    assert set(raw) == set(wm), "index and files disagree"
    deq, is_fp8 = {}, set()
    for k, t in raw.items():
        if k.endswith("_scale_inv"):
            continue
        if t.dtype == torch.float8_e4m3fn:
            s = raw[k + "_scale_inv"].to(torch.float32)
            r, c = t.shape
            full = s.repeat_interleave(128, 0).repeat_interleave(128, 1)[:r, :c]
            deq[k] = t.to(torch.float32) * full
            is_fp8.add(k)
        else:
            deq[k] = t.to(torch.float32)
    return deq, is_fp8


def expected_param(k, d, cfg):
    """The value transformers' parameter k must hold, from HF-named tensors d."""
    import torch
    if k in d:
        return d[k]
    E = cfg["n_routed_experts"]
    if k.endswith(".mlp.experts.gate_up_proj"):
        p = k[: -len("gate_up_proj")]
        return torch.stack([torch.cat([d[f"{p}{e}.gate_proj.weight"], d[f"{p}{e}.up_proj.weight"]], 0)
                            for e in range(E)])
    if k.endswith(".mlp.experts.down_proj"):
        p = k[: -len("down_proj")]
        return torch.stack([d[f"{p}{e}.down_proj.weight"] for e in range(E)])
    raise KeyError(f"no checkpoint tensor for model parameter {k}")


def load_model(deq, cfg, tmp):
    """from_pretrained on an fp32 copy in the HF layout (per-expert names), then check
    every parameter against the dequantized file contents."""
    import torch
    from safetensors.torch import save_file
    from transformers import DeepseekV3ForCausalLM
    os.makedirs(tmp, exist_ok=True)
    c2 = dict(cfg)
    del c2["quantization_config"]
    c2["torch_dtype"] = "float32"
    for k in DROPPED_KEYS:
        c2.pop(k, None)
    save_file({k: v.contiguous() for k, v in deq.items()}, os.path.join(tmp, "model.safetensors"))
    while True:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(c2, f)
        try:
            model, info = DeepseekV3ForCausalLM.from_pretrained(
                tmp, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager",
                output_loading_info=True)
            break
        except (TypeError, ValueError) as e:
            # a strict config class may refuse R1's informational keys; record and retry
            extra = [k for k in ("moe_layer_freq", "topk_method", "scoring_func") if k in c2]
            if not extra:
                raise
            print(f"config refused ({e}); dropping {extra}", flush=True)
            DROPPED_KEYS.extend(extra)
            for k in extra:
                del c2[k]
    model.eval()
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"loading info not clean: {bad}"
    used = set()
    for k, p in model.state_dict().items():
        exp = expected_param(k, deq, cfg)
        assert p.dtype == torch.float32, (k, p.dtype)
        assert p.shape == exp.shape and torch.equal(p, exp), f"parameter {k} differs from the files"
        if k in deq:
            used.add(k)
        else:
            p0 = k.rsplit(".", 1)[0] + "."
            used.update(n for n in deq if n.startswith(p0))
    assert used == set(deq), f"tensors the model did not take: {sorted(set(deq) - used)[:5]}"
    return model


def router_stats(logits, bias, cfg):
    """Selection margins of one router call, recomputed in float64 from transformers'
    fp32 router logits: the gap at the top-k expert boundary and at the topk_group
    group boundary; plus the selected expert sets."""
    E, G, tg, k = cfg["n_routed_experts"], cfg["n_group"], cfg["topk_group"], cfg["num_experts_per_tok"]
    s = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    sel = s + bias.astype(np.float64)[None, :]
    T = sel.shape[0]
    g = np.sort(sel.reshape(T, G, E // G), axis=-1)[:, :, ::-1][:, :, :2].sum(-1)
    gs = np.sort(g, axis=-1)[:, ::-1]
    gmargin = gs[:, tg - 1] - gs[:, tg]
    keep = np.argsort(-g, axis=-1, kind="stable")[:, :tg]
    mask = np.zeros((T, G), bool)
    np.put_along_axis(mask, keep, True, axis=-1)
    masked = np.where(np.repeat(mask, E // G, axis=1), sel, -np.inf)
    ms = np.sort(masked, axis=-1)[:, ::-1]
    emargin = ms[:, k - 1] - ms[:, k]
    sets = [tuple(sorted(np.argsort(-masked[t], kind="stable")[:k].tolist())) for t in range(T)]
    return float(min(gmargin.min(), emargin.min())), sets


def run_prompt(model, prompt, n_new, cfg, biases, caps):
    import torch
    caps.clear()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt]), use_cache=True)
        rows = [out.logits[0].float()]
        pkv = out.past_key_values
        tok = int(torch.argmax(out.logits[0, -1]))
        toks = [tok]
        for _ in range(n_new - 1):
            out = model(input_ids=torch.tensor([[tok]]), past_key_values=pkv, use_cache=True)
            pkv = out.past_key_values
            rows.append(out.logits[0].float())
            tok = int(torch.argmax(out.logits[0, -1]))
            toks.append(tok)
        full = model(input_ids=torch.tensor([prompt + toks[:-1]]), use_cache=False).logits[0].float()
    logits = torch.cat(rows).numpy()
    full = full.numpy()
    margin, sets, disagree = float("inf"), [], 0
    for layer, lg, idx in caps:
        m, s = router_stats(lg, biases[layer], cfg)
        hf = [tuple(sorted(r)) for r in idx.tolist()]
        disagree += sum(a != b for a, b in zip(s, hf))
        margin = min(margin, m)
        sets.append((layer, hf))
    greedy_rows = logits[len(prompt) - 1:]
    top2 = np.sort(greedy_rows, axis=-1)[:, -2:]
    gmargin = float((top2[:, 1] - top2[:, 0]).min())
    recompute = float(np.abs(full - logits).max() / np.abs(logits).max())
    return dict(logits=logits, tokens=toks, router_margin=margin, sets=sets, greedy_margin=gmargin,
                recompute_rel=recompute, router_disagree=disagree)


def dump_debug(model, prompt, tok, path):
    """Intermediate activations of prompt 0 (prefill, then one decode step) to locate a
    disagreement without rerunning transformers: per layer and call, the attention and
    FFN outputs and the layer output."""
    import torch
    arrs, hooks = {}, []
    calls = {"n": 0}
    for L, layer in enumerate(model.model.layers):
        for part, mod in (("attn", layer.self_attn), ("ffn", layer.mlp), ("layer", layer)):
            def hook(mod, inp, out, L=L, part=part):
                o = out[0] if isinstance(out, tuple) else out
                arrs[f"{part}{L}_call{calls['n']}"] = o.detach().float().numpy()[0].copy()
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt]), use_cache=True)
        arrs["logits_call0"] = out.logits[0].numpy().copy()
        calls["n"] = 1
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=out.past_key_values, use_cache=True)
        arrs["logits_call1"] = out.logits[0].numpy().copy()
    for h in hooks:
        h.remove()
    np.savez(path, **arrs)


def cmd_ref(args):
    import inspect
    import platform
    import tempfile
    import torch
    import transformers
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as mdv3
    torch.set_grad_enabled(False)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    with open(os.path.join(args.ckpt, "config.json")) as f:
        cfg = json.load(f)
    deq, is_fp8 = read_dequant(args.ckpt)
    deq_bf16 = {k: (v.to(torch.bfloat16).to(torch.float32) if k in is_fp8 else v) for k, v in deq.items()}
    tmp = tempfile.mkdtemp(prefix="dsr1-golden-")
    m8 = load_model(deq, cfg, os.path.join(tmp, "fp8"))
    m16 = load_model(deq_bf16, cfg, os.path.join(tmp, "bf16"))
    print("loaded both models; every parameter equals the dequantized files", flush=True)

    biases, caps = {}, []
    for L, layer in enumerate(m8.model.layers):
        if hasattr(layer.mlp, "gate"):
            biases[L] = layer.mlp.gate.e_score_correction_bias.numpy().copy()
            for m in (m8, m16):
                m.model.layers[L].mlp.gate.register_forward_hook(
                    lambda mod, inp, out, L=L: caps.append(
                        (L, out[0].detach().float().numpy().copy(), out[2].detach().numpy().copy())))

    rng = np.random.default_rng(args.seed)
    V = cfg["vocab_size"]
    os.makedirs(args.out, exist_ok=True)
    prompts_meta = []
    for i, T in enumerate(PROMPT_LENGTHS):
        for attempt in range(1, MAX_DRAWS + 1):
            p = [0] + rng.integers(2, V, size=T - 1).tolist()
            if i == 0:  # vocab-parallel boundaries for tp 2 and 4
                p[1:6] = [255, 256, 511, 512, V - 1]
            if attempt % 25 == 0:
                print(f"prompt {i}: {attempt} draws so far", flush=True)
            r8 = run_prompt(m8, p, NEW_TOKENS, cfg, biases, caps)
            r16 = run_prompt(m16, p, NEW_TOKENS, cfg, biases, caps)
            ok = (r8["tokens"] == r16["tokens"] and r8["sets"] == r16["sets"]
                  and r8["router_disagree"] == 0 and r16["router_disagree"] == 0
                  and min(r8["router_margin"], r16["router_margin"]) >= ROUTER_MARGIN_MIN
                  and min(r8["greedy_margin"], r16["greedy_margin"]) >= GREEDY_MARGIN_MIN)
            if ok:
                break
        else:
            sys.exit(f"no robust prompt of length {T} in {MAX_DRAWS} draws")
        np.save(os.path.join(args.out, f"p{i}_fp8.npy"), r8["logits"].astype(np.float32))
        np.save(os.path.join(args.out, f"p{i}_bf16.npy"), r16["logits"].astype(np.float32))
        diff = float(np.abs(r16["logits"] - r8["logits"]).max() / np.abs(r8["logits"]).max())
        prompts_meta.append(dict(
            prompt=p, new_tokens=NEW_TOKENS, tokens=r8["tokens"], rows=int(r8["logits"].shape[0]),
            logits_fp8=f"p{i}_fp8.npy", logits_bf16=f"p{i}_bf16.npy", draws=attempt,
            router_margin_min=min(r8["router_margin"], r16["router_margin"]),
            greedy_margin_min=min(r8["greedy_margin"], r16["greedy_margin"]),
            cache_vs_recompute_rel=max(r8["recompute_rel"], r16["recompute_rel"]),
            bf16_vs_fp8_rel=diff,
            max_abs_logit=float(np.abs(r8["logits"]).max())))
        print(f"prompt {i}: T={T} draws={attempt} tokens={r8['tokens']} bf16-vs-fp8 rel={diff:.3g} "
              f"router margin={prompts_meta[-1]['router_margin_min']:.3g} "
              f"greedy margin={prompts_meta[-1]['greedy_margin_min']:.3g} "
              f"cache-vs-recompute={prompts_meta[-1]['cache_vs_recompute_rel']:.3g}", flush=True)

    dump_debug(m8, prompts_meta[0]["prompt"], prompts_meta[0]["tokens"][0], os.path.join(args.out, "debug_p0.npz"))

    rot = m8.model.rotary_emb
    src = inspect.getsource(mdv3.DeepseekV3TopkRouter)
    meta = dict(
        generator="scripts/gen_golden.py ref",
        torch=torch.__version__, transformers=transformers.__version__, numpy=np.__version__,
        python=platform.python_version(), device="cpu", threads=torch.get_num_threads(),
        attn_implementation="eager", dtype="float32", seed=args.seed,
        router_mask_neg_inf='float("-inf")' in src,
        router_mask_line=[ln.strip() for ln in src.splitlines() if "masked_fill" in ln],
        experts_implementation=getattr(m8.config, "_experts_implementation", None),
        config_keys_dropped=DROPPED_KEYS,
        rope_inv_freq=[float(x) for x in rot.inv_freq.tolist()],
        rope_attention_scaling=float(rot.attention_scaling),
        softmax_scale=float(m8.model.layers[0].self_attn.scaling),
        rope_parameters={k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                         for k, v in dict(m8.config.rope_parameters).items()},
        prompts=prompts_meta)
    with open(os.path.join(args.out, "goldens.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(json.dumps({k: v for k, v in meta.items() if k not in ("prompts", "rope_inv_freq")}))


A8_TILE, A8_MIN, A8_LT = 16, 3, 16  # kernels/gemm.cu: token tiles, FP8 from 3, cuBLASLt above 16
A8_ROUTER_MARGIN, A8_GREEDY_MARGIN = 1e-3, 0.05

# parameter name endings by what the runtime does with their GEMM's input
A8_FP8 = ("q_a_proj.weight", "kv_a_proj_with_mqa.weight", "q_b_proj.weight", "o_proj.weight",
          "gate_proj.weight", "up_proj.weight", "down_proj.weight")
A8_BF16 = ("mlp.gate.weight", "lm_head.weight")


def a8_quant(x2, rows):
    """x2 [M, K] fp32 (K a multiple of 128): rows `rows` quantized 1x128 to E4M3 and back."""
    import torch
    M, K = x2.shape
    assert K % 128 == 0, K
    xb = x2.reshape(M, K // 128, 128)
    s = xb.abs().amax(-1, keepdim=True).clamp_min(1e-4) / 448.0
    q = (xb / s).to(torch.float8_e4m3fn).to(torch.float32) * s
    return torch.where(rows[:, None, None], q, xb).reshape(M, K)


def a8_tile_rows(M):
    """Rows of an M-token GEMM the runtime quantizes: those in tiles of >= A8_MIN tokens."""
    import torch
    i = torch.arange(M)
    size = torch.clamp(M - (i // A8_TILE) * A8_TILE, max=A8_TILE)
    return size >= A8_MIN


def cmd_a8(args):
    import platform
    import tempfile
    import torch
    import torch.nn.functional as F
    import transformers
    torch.set_grad_enabled(False)
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    with open(os.path.join(args.ckpt, "config.json")) as f:
        cfg = json.load(f)
    deq, _ = read_dequant(args.ckpt)
    model = load_model(deq, cfg, os.path.join(tempfile.mkdtemp(prefix="dsr1-golden-"), "fp8"))
    # each parameter's storage range -> category ("fp8", "bf16", "expert", None: exact)
    spans = []
    for name, p in model.named_parameters():
        cat = ("expert" if ".mlp.experts." in name else "fp8" if name.endswith(A8_FP8)
               else "bf16" if name.endswith(A8_BF16) else None)
        spans.append((p.data_ptr(), p.data_ptr() + p.numel() * p.element_size(), cat, name))
    router = {lo for lo, _, _, n in spans if n.endswith("mlp.gate.weight")}
    state = {"T": 0}
    hits = {"fp8": 0, "bf16": 0, "expert": 0, "fp8_rows": 0, "bf16_rows": 0, "expert_rows": 0,
            "router_rows": 0}
    orig = F.linear

    def linear(x, w, b=None):
        cat = next((c for lo, hi, c, _ in spans if lo <= w.data_ptr() < hi), None)
        x2 = x.reshape(-1, x.shape[-1])
        M = x2.shape[0]
        if cat == "fp8" and M >= A8_MIN:
            rows = a8_tile_rows(M)
            x2, hits["fp8_rows"] = a8_quant(x2, rows), hits["fp8_rows"] + int(rows.sum())
        elif cat == "bf16" and M > A8_LT:
            x2, hits["bf16_rows"] = x2.to(torch.bfloat16).to(torch.float32), hits["bf16_rows"] + M
            hits["router_rows"] += M if w.data_ptr() in router else 0
        elif cat == "expert" and state["T"] > A8_LT:
            x2, hits["expert_rows"] = a8_quant(x2, torch.ones(M, dtype=torch.bool)), hits["expert_rows"] + M
        if cat:
            hits[cat] += 1
        return orig(x2.reshape(x.shape), w, b)

    biases, caps = {}, []
    for L, layer in enumerate(model.model.layers):
        if hasattr(layer.mlp, "experts"):
            layer.mlp.register_forward_pre_hook(
                lambda mod, a: state.__setitem__("T", a[0].reshape(-1, a[0].shape[-1]).shape[0]))
            biases[L] = layer.mlp.gate.e_score_correction_bias.numpy().copy()
            layer.mlp.gate.register_forward_hook(
                lambda mod, inp, out, L=L: caps.append((L, out[0].detach().float().numpy().copy())))
    # Prompts of the goldens' lengths, drawn until the quantized model's routing and first
    # token are far from ties: GPU and CPU sums differ in the last bits, which moves an
    # FP8 code now and then (a 1/16 step of one activation); a router or argmax within
    # that of a tie would flip and the comparison would test the tie, not the kernels.
    rng = np.random.default_rng(args.seed)
    V = cfg["vocab_size"]
    out = {"generator": "scripts/gen_golden.py a8", "torch": torch.__version__,
           "transformers": transformers.__version__, "python": platform.python_version(),
           "seed": args.seed, "tile": A8_TILE, "fp8_from_tokens": A8_MIN, "cublaslt_above": A8_LT,
           "router_margin_min": A8_ROUTER_MARGIN, "greedy_margin_min": A8_GREEDY_MARGIN, "prompts": []}
    os.makedirs(args.out, exist_ok=True)
    F.linear = linear
    try:
        for i, T in enumerate(PROMPT_LENGTHS):
            for attempt in range(1, MAX_DRAWS + 1):
                p = [0] + rng.integers(2, V, size=T - 1).tolist()
                caps.clear()
                lg = model(input_ids=torch.tensor([p]), use_cache=False).logits[0].float().numpy()
                rm = min(router_stats(l, biases[L], cfg)[0] for L, l in caps)
                top2 = np.sort(lg[-1])[-2:]
                if rm >= A8_ROUTER_MARGIN and top2[1] - top2[0] >= A8_GREEDY_MARGIN:
                    break
            else:
                sys.exit(f"no robust prompt of length {T} in {MAX_DRAWS} draws")
            np.save(os.path.join(args.out, f"p{i}_a8.npy"), lg.astype(np.float32))
            out["prompts"].append(dict(prompt=p, logits=f"p{i}_a8.npy", rows=T, draws=attempt,
                                       first_token=int(lg[-1].argmax()), router_margin=rm,
                                       greedy_margin=float(top2[1] - top2[0])))
            print(f"prompt {i}: T={T} draws={attempt} first token {int(lg[-1].argmax())} "
                  f"router margin {rm:.3g} greedy margin {top2[1] - top2[0]:.3g}", flush=True)
    finally:
        F.linear = orig
    # the hooks must have seen every kind of GEMM, or the model no longer calls F.linear
    assert hits["fp8_rows"] and hits["bf16_rows"] and hits["expert_rows"] and hits["router_rows"], hits
    out["gemm_calls"] = hits
    with open(os.path.join(args.out, "a8.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(json.dumps(hits))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ckpt")
    a.add_argument("--out", required=True)
    a.add_argument("--seed", type=int, default=20250127)
    b = sub.add_parser("ref")
    b.add_argument("--ckpt", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--seed", type=int, default=7)
    d = sub.add_parser("a8")
    d.add_argument("--ckpt", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--seed", type=int, default=11)
    c = sub.add_parser("all")
    c.add_argument("--out", required=True)
    c.add_argument("--seed", type=int, default=20250127)
    args = ap.parse_args()
    if args.cmd == "ckpt":
        cmd_ckpt(args)
    elif args.cmd == "ref":
        cmd_ref(args)
    elif args.cmd == "a8":
        cmd_a8(args)
    else:
        root = args.out
        args.out = os.path.join(root, "ckpt")
        cmd_ckpt(args)
        args.ckpt, args.out, args.seed = os.path.join(root, "ckpt"), os.path.join(root, "ref"), 7
        cmd_ref(args)


if __name__ == "__main__":
    main()

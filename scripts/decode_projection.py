#!/usr/bin/env python3
"""Project single-stream decode of the full 61-layer DeepSeek-R1 on 8 GPUs (TP8, EP8)
from bench-decode-gpu's per-layer measurements (one GPU, TP1) and the measured
all-reduce latency. Usage: decode_projection.py decode.txt [--bw-TBps 4.3]

Model (bytes per GPU per token, R1 dimensions, FP8 weights + F32 block scales):
  attention: q_a and kv_a replicated, q_b / kv_b / o_proj split 8 ways;
  dense MLP (layers 0-2): split 8 ways;
  MoE (layers 3-60): router replicated, shared expert split 8 ways, routed experts whole
  on their EP rank; group-limited routing puts the 8 chosen experts in 4 of the 8
  groups, i.e. on 4 GPUs under EP8, so the busiest GPU reads 2 (even split) to 3 experts;
  lm_head (BF16) split 8 ways.
Time per layer = bytes / (bandwidth x efficiency), efficiency = roofline / measured
of the same layer kind at batch 1 on the measured GPU; plus two all-reduces per layer.
"""
import re
import sys

MB = 1e6
bw_target = 4.3e12  # H200 device-to-device copy, ../shared/docs/gpu-machine.md
args = sys.argv[1:]
if "--bw-TBps" in args:
    i = args.index("--bw-TBps")
    bw_target = float(args[i + 1]) * 1e12
    del args[i:i + 2]
text = open(args[0]).read()
dev = re.search(r"device=(.*)", text)
dev = dev.group(1).strip() if dev else "?"
eff = {}
for m in re.finditer(r"^(\d+)\s+(dense|moe)\s+1\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)%", text, re.M):
    kind, us, roof = m.group(2), float(m.group(3)), float(m.group(5))
    eff.setdefault(kind, []).append(roof / us)
ar = {}
for m in re.finditer(r"allreduce ranks=(\d+) tokens=1 bytes=\d+ latency_us=([\d.]+)", text):
    ar[int(m.group(1))] = float(m.group(2))
if not eff:
    print("projection: no batch-1 layer rows found"); sys.exit(1)
e_dense = min(eff.get("dense", eff.get("moe")))
e_moe = min(eff.get("moe", eff.get("dense")))
nar = max(ar) if ar else None
t_ar = ar[nar] if ar else 25.0

fp8 = lambda r, c: r * c + ((r + 127) // 128) * ((c + 127) // 128) * 4
attn_rep = fp8(1536, 7168) + fp8(576, 7168)
attn_split = (fp8(24576, 1536) + fp8(32768, 512) + fp8(7168, 16384)) / 8
dense = 3 * fp8(18432, 7168) / 8
expert = 3 * fp8(2048, 7168)
router = 256 * 7168 * 2
shared = expert / 8
head = 129280 * 7168 * 2 / 8
kv = 4096 * 576 * 4  # latent cache read at 4k context (fp32)

def layer_us(nbytes, e):
    return nbytes / (bw_target * e) * 1e6

print(f"\nprojection: DeepSeek-R1 61 layers (3 dense + 58 MoE), 8 GPUs TP8/EP8, batch 1")
print(f"  efficiency measured on {dev} at batch 1: dense {e_dense:.0%}, MoE {e_moe:.0%} of roofline")
print(f"  bandwidth assumed {bw_target/1e12:.1f} TB/s per GPU (H200 copy, gpu-machine.md)")
print(f"  all-reduce latency {t_ar:.1f} us" +
      (f" (measured on {nar} GPUs of this machine; 8 GPUs not measured)" if ar else " (assumed; not measured)"))
for ne in (2, 3):
    d = layer_us(attn_rep + attn_split + dense + kv, e_dense) + 2 * t_ar
    mo = layer_us(attn_rep + attn_split + router + shared + ne * expert + kv, e_moe) + 2 * t_ar
    h = layer_us(head, e_dense) + t_ar
    tot = 3 * d + 58 * mo + h
    print(f"  busiest GPU reads {ne} experts: dense layer {d:.0f} us, MoE layer {mo:.0f} us, "
          f"lm_head {h:.0f} us -> {tot/1000:.2f} ms/token = {1e6/tot:.0f} tok/s "
          f"(SGLang, Dec 2024: ~30 tok/s on 8 x H200)")

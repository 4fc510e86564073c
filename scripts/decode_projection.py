#!/usr/bin/env python3
"""Project single-stream decode of the full 61-layer DeepSeek-R1 on 8 GPUs (TP8, EP8)
from bench-decode-gpu's per-layer measurements and the measured all-reduce latency.
Usage: decode_projection.py decode.txt [decode-tp8.txt] [--bw-TBps 4.3]

decode-tp8.txt (bench_decode.sh) holds one rank of a TP8/EP8 plan run alone with 2
("tp8e2" rows) and 3 ("tp8e3") of its experts routed: a direct measurement of the
busiest GPU's layer at the deployed shapes, launch gaps included. That estimate comes
first; the second scales the one-GPU TP1 efficiency to TP8 bytes. "tp8b" rows, the
same rank at several sequences a step as the synthetic router routes them, give the
batched-decode lines (tokens/s of the 8 GPUs together).

Model (bytes per GPU per token, R1 dimensions, FP8 weights + F32 block scales):
  attention: q_a and kv_a replicated, q_b / kv_b / o_proj split 8 ways;
  dense MLP (layers 0-2): split 8 ways;
  MoE (layers 3-60): router replicated, shared expert split 8 ways, routed experts whole
  on their EP rank; group-limited routing puts the 8 chosen experts in 4 of the 8
  groups, i.e. on 4 GPUs under EP8, so the busiest GPU reads 2 (even split) to 3 experts;
  lm_head (BF16) split 8 ways.
Time per layer = bytes / (bandwidth x efficiency), efficiency = roofline / measured
of the same layer kind at batch 1 on the measured GPU; plus two all-reduces per layer.
Without CUDA graphs the CPU enqueues every kernel of a step: a layer can run no faster
than its measured enqueue time (host_us), which the second estimate takes as a floor.
The runtime replays one-token decode steps from a CUDA graph (one launch a token): the
"in CUDA graphs" lines take the same rank's layers timed as graph replays (graph_us).
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
tp8 = open(args[1]).read() if len(args) > 1 else ""
dev = re.search(r"device=(.*)", text)
dev = dev.group(1).strip() if dev else "?"
eff, host = {}, {}
for m in re.finditer(r"^(\d+)\s+(dense|moe)\s+1\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)%(?:[ \t]+([\d.]+))?",
                     text, re.M):
    kind, us, roof = m.group(2), float(m.group(3)), float(m.group(5))
    eff.setdefault(kind, []).append(roof / us)
    if m.group(7):
        host.setdefault(kind, []).append(float(m.group(7)))
ar = {}
for m in re.finditer(r"allreduce ranks=(\d+) tokens=1 bytes=\d+ latency_us=([\d.]+).*", text):
    if "non-blocking" not in m.group(0):  # the runtime's default (blocking TP) communicator
        ar[int(m.group(1))] = float(m.group(2))
if not eff:
    print("projection: no batch-1 layer rows found"); sys.exit(1)
med = lambda v: sorted(v)[len(v) // 2]  # one slow layer (a host hiccup) does not decide it
e_dense = med(eff.get("dense", eff.get("moe")))
e_moe = med(eff.get("moe", eff.get("dense")))
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

h_us = layer_us(head, e_dense) + t_ar  # lm_head from its bytes, plus the logits' all-gather

def step(d, mo):
    """Dense and MoE layer times with their two all-reduces each, and the 61-layer step."""
    d, mo = d + 2 * t_ar, mo + 2 * t_ar
    return d, mo, 3 * d + 58 * mo + h_us

def report(ne, label, d, mo, layer="", head=""):
    """One batch-1 line: the busiest GPU's layer times -> the 61-layer token rate."""
    d, mo, tot = step(d, mo)
    print(f"  busiest GPU reads {ne} experts, {label}: dense{layer} {d:.0f} us, MoE{layer} {mo:.0f} us, "
          f"lm_head {h_us:.0f} us{head} -> {tot/1000:.2f} ms/token = {1e6/tot:.0f} tok/s "
          f"(SGLang, Dec 2024: ~30 tok/s on 8 x H200)")

print(f"\nprojection: DeepSeek-R1 61 layers (3 dense + 58 MoE), 8 GPUs TP8/EP8, batch 1")
meas, graph = {}, {}
for m in re.finditer(r"^tp8e(\d) +\d+\s+(dense|moe)\s+1\s+([\d.]+)(.*)", tp8, re.M):
    meas.setdefault((int(m.group(1)), m.group(2)), []).append(float(m.group(3)))
    rest = m.group(4).split()  # MB roof of% host cold nopdl [graph_us glaunch_us]
    if len(rest) >= 8:
        graph.setdefault((int(m.group(1)), m.group(2)), []).append(float(rest[6]))
dev8 = re.search(r"^tp8e\d device=(.*)", tp8, re.M)
if meas:
    print(f"  measured: one TP8/EP8 rank alone on {dev8.group(1).strip() if dev8 else '?'} "
          f"(all-reduces added: 2 per layer at {t_ar:.1f} us)")
    for ne in (2, 3):
        d = meas.get((ne, "dense")) or meas.get((2, "dense"))
        mo = meas.get((ne, "moe"))
        if not d or not mo:
            continue
        report(ne, "measured layers", med(d), med(mo), head=" (estimated)")
        gd, gm = graph.get((ne, "dense")) or graph.get((2, "dense")), graph.get((ne, "moe"))
        if gd and gm:  # the layer replayed from a CUDA graph: no per-kernel host enqueue
            report(ne, "measured layers in CUDA graphs", med(gd), med(gm))
    print("  upper bound, scaled from the TP1 layers (bytes / (bandwidth x TP1 efficiency); the\n"
          "  measured TP8 rank above does not reach TP1 efficiency: small kernels, launch gaps):")
print(f"  efficiency measured on {dev} at batch 1: dense {e_dense:.0%}, MoE {e_moe:.0%} of roofline")
print(f"  bandwidth assumed {bw_target/1e12:.1f} TB/s per GPU (H200 copy, gpu-machine.md)")
print(f"  all-reduce latency {t_ar:.1f} us" +
      (f" (measured on {nar} GPUs of this machine; 8 GPUs not measured)" if ar else " (assumed; not measured)"))
h_dense = med(host.get("dense", [0])) if host else 0
h_moe = med(host.get("moe", [0])) if host else 0
if host:
    print(f"  CPU enqueue per layer (measured, no CUDA graphs): dense {h_dense:.0f} us, MoE {h_moe:.0f} us")
for ne in (2, 3):
    gd = layer_us(attn_rep + attn_split + dense + kv, e_dense)
    gm = layer_us(attn_rep + attn_split + router + shared + ne * expert + kv, e_moe)
    for label, d, mo in (("GPU-bound", gd, gm), ("enqueue floor", max(gd, h_dense), max(gm, h_moe))):
        if label != "GPU-bound" and not host:
            continue
        report(ne, label, d, mo, layer=" layer")

# Batched decode: B sequences a step on the measured TP8 rank (layers as its router
# routed them; R1's router may load the busiest rank more), two all-reduces per layer
# at the one-token latency (B x 28 KB payloads not measured), lm_head from its bytes.
bat = {}
for m in re.finditer(r"^tp8b +\d+\s+(dense|moe)\s+(\d+)\s+([\d.]+)", tp8, re.M):
    if int(m.group(2)) > 1:
        bat.setdefault((int(m.group(2)), m.group(1)), []).append(float(m.group(3)))
for B in sorted({b for b, _ in bat}):
    d, mo = bat.get((B, "dense")), bat.get((B, "moe"))
    if not d or not mo:
        continue
    d, mo, tot = step(med(d), med(mo))
    print(f"  batch {B}, measured TP8 rank (synthetic routing): dense {d:.0f} us, MoE {mo:.0f} us, "
          f"lm_head {h_us:.0f} us -> {tot/1000:.2f} ms/step = {B * 1e6 / tot:.0f} tok/s "
          f"({1e6 / tot:.1f} tok/s per sequence)")

# Speculative decoding with the MTP module (dsr1-serve --speculative): a step runs two
# tokens (the last one and the draft) through the 61 layers, then the MTP module (one
# MoE layer, its eh_proj and its own lm_head) on one or two rows, and yields 1 + p
# tokens for a draft acceptance rate p. "tp8s" rows: the TP8 rank at two tokens a step
# with 4 of its experts routed (the busiest GPU reading 2 experts for each token,
# disjoint). DeepSeek-V3's report gives 85-90% acceptance for the second token; the
# synthetic checkpoint's random MTP weights give ~0, so p is not measured here.
spec = {}
for m in re.finditer(r"^tp8s +\d+\s+(dense|moe)\s+2\s+([\d.]+)", tp8, re.M):
    spec.setdefault(m.group(1), []).append(float(m.group(2)))
if spec.get("dense") and spec.get("moe") and meas.get((2, "dense")) and meas.get((2, "moe")):
    d2, mo2, tot2 = step(med(spec["dense"]), med(spec["moe"]))
    eh = layer_us(fp8(7168, 14336) / 8, e_dense)  # eh_proj, split like o_proj
    mtp = mo2 + eh + h_us + t_ar  # the MTP layer, eh_proj, its head, the embedding's all-reduce
    plain = step(med(meas[(2, "dense")]), med(meas[(2, "moe")]))[2]
    print(f"  speculative (MTP drafts), measured TP8 rank at 2 tokens a step: dense {d2:.0f} us, "
          f"MoE {mo2:.0f} us, + MTP module {mtp:.0f} us -> {(tot2 + mtp)/1000:.2f} ms/step "
          f"(one token a step without drafts: {plain/1000:.2f} ms, eager launches)")
    for p in (0.7, 0.85, 0.9):
        print(f"    draft acceptance {p:.0%}: {(1 + p) * 1e6 / (tot2 + mtp):.0f} tok/s "
              f"({(1 + p) * plain / (tot2 + mtp):.2f}x the same rank without drafts)")

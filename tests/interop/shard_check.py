#!/usr/bin/env python3
"""Independent check of a dsr1-shard output directory against its source checkpoint.

usage: shard_check.py CKPT OUT

Written without any dsr1 code: its own safetensors parser for the bytes, the official
`safetensors` package to prove every shard opens, numpy + ml_dtypes for the FP8 -> BF16
reference. Checks:
  - manifest schema basics, ranks (tp fastest, then pp, then dp), one file per (pp, tp);
  - every shard: valid safetensors (official package), data start a multiple of 4096,
    256-byte rule, element alignment, __metadata__ coordinates, tensor table == manifest;
  - routed experts of one projection adjacent and equally strided;
  - reassembly: within each pp stage every element of a split tensor is covered exactly
    once, replicated tensors are byte-identical on every rank holding them, and every
    needed source tensor is rebuilt: bit-exact for "copy", equal to the numpy reference
    dequantization (f32(q) * scale, round-to-nearest-even to bf16) for "dequant_bf16";
  - quant_rel_rms matches the reference within 1e-5 relative.
Prints "OK ..." and exits 0, or prints each problem and exits 1.
"""
import json
import os
import re
import struct
import sys

import ml_dtypes
import numpy as np
from safetensors import safe_open

DT = {"F8_E4M3": (1, np.uint8), "BF16": (2, np.uint16), "F32": (4, np.float32), "F16": (2, np.uint16),
      "I8": (1, np.int8), "U8": (1, np.uint8), "I32": (4, np.int32), "I64": (8, np.int64)}
problems = []


def bad(msg):
    problems.append(msg)
    if len(problems) <= 30:
        print("problem:", msg)


class St:
    """Minimal safetensors reader (header + raw bytes)."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.raw = f.read()
        (n,) = struct.unpack("<Q", self.raw[:8])
        self.header_text = self.raw[8:8 + n]
        self.data_start = 8 + n
        self.header = json.loads(self.header_text)
        self.meta = self.header.pop("__metadata__", {})
        self.order = sorted(self.header, key=lambda k: self.header[k]["data_offsets"][0])

    def raw_bytes(self, name):
        b, e = self.header[name]["data_offsets"]
        return self.raw[self.data_start + b:self.data_start + e]

    def array(self, name):
        h = self.header[name]
        size, np_t = DT[h["dtype"]]
        a = np.frombuffer(self.raw_bytes(name), dtype=np_t)
        return a.reshape(h["shape"]) if h["shape"] else a


def main():
    ckpt, out = sys.argv[1], sys.argv[2]
    m = json.load(open(os.path.join(out, "manifest.json")))
    if m.get("format") != "dsr1-manifest" or m.get("version") != 1:
        bad("manifest format/version")
    pl = m["plan"]
    tp, pp, dp, ep = pl["tp"], pl["pp"], pl["dp"], pl["ep"]
    if pl["world_size"] != tp * pp * dp or pl["nodes"] * pl["gpus_per_node"] != pl["world_size"]:
        bad("plan world_size")
    dtype = pl["dtype"]
    # ranks
    if len(m["ranks"]) != tp * pp * dp:
        bad("ranks count")
    for r, x in enumerate(m["ranks"]):
        want = dict(rank=r, tp=r % tp, pp=(r // tp) % pp, dp=r // (tp * pp), node=r // pl["gpus_per_node"],
                    local_rank=r % pl["gpus_per_node"])
        for k, v in want.items():
            if x[k] != v:
                bad(f"ranks[{r}].{k} = {x[k]}, expected {v}")
        sh = m["shards"][x["pp"] * tp + x["tp"]]
        if x["shard"] != sh["file"]:
            bad(f"ranks[{r}].shard {x['shard']} != {sh['file']}")
    if len(m["shards"]) != tp * pp or len({s["file"] for s in m["shards"]}) != tp * pp:
        bad("one file per (pp, tp)")

    # source checkpoint
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    idx = json.load(open(os.path.join(ckpt, "model.safetensors.index.json")))["weight_map"]
    src_files = {}

    def src(name):
        f = idx[name]
        if f not in src_files:
            src_files[f] = St(os.path.join(ckpt, f))
        return src_files[f]

    nl = cfg["num_hidden_layers"]
    layer_re = re.compile(r"model\.layers\.(\d+)\.")
    needed = set()
    for name in idx:
        mo = layer_re.match(name)
        if mo and int(mo.group(1)) >= nl and not pl["mtp"]:
            continue
        if dtype == "bf16" and name.endswith("_scale_inv"):
            continue
        needed.add(name)

    stage_pieces = {}  # (stage, source name) -> list of (entry, bytes, shard)
    for s in m["shards"]:
        path = os.path.join(out, s["file"])
        if os.path.getsize(path) != s["bytes"]:
            bad(f"{s['file']}: size")
        st = St(path)
        # the official package opens it and agrees on names, dtypes and shapes
        with safe_open(path, framework="np") as f:
            keys = list(f.keys())
            meta = f.metadata()
            if sorted(keys) != sorted(st.header):
                bad(f"{s['file']}: safetensors keys differ")
            for k in keys:
                if st.header[k]["dtype"] == "F32":
                    a = f.get_tensor(k)
                    if not np.array_equal(a.view(np.uint32), st.array(k).view(np.uint32)):
                        bad(f"{s['file']}:{k}: safetensors get_tensor differs")
        import safetensors
        official = dict(safetensors.deserialize(st.raw))
        for k, v in official.items():
            if bytes(v["data"]) != st.raw_bytes(k) or v["dtype"] != st.header[k]["dtype"]:
                bad(f"{s['file']}:{k}: official deserialize differs")
        if st.data_start % 4096 or st.data_start != s["data_start"]:
            bad(f"{s['file']}: data start {st.data_start}")
        if st.header_text.rstrip(b" ") != st.header_text[:len(st.header_text.rstrip(b' '))] or \
                not st.header_text.rstrip(b" ").endswith(b"}"):
            bad(f"{s['file']}: header padding")
        want_meta = {"format": "pt", "dsr1.format": "dsr1-shard", "dsr1.format_version": "1",
                     "dsr1.manifest_id": m["manifest_id"], "dsr1.pp_stage": str(s["pp_stage"]),
                     "dsr1.tp_rank": str(s["tp_rank"]), "dsr1.tp": str(tp), "dsr1.pp": str(pp),
                     "dsr1.ep": str(ep), "dsr1.dtype": dtype}
        for k, v in want_meta.items():
            if meta.get(k) != v:
                bad(f"{s['file']}: __metadata__[{k}] = {meta.get(k)!r}, expected {v!r}")
        if [t["name"] for t in s["tensors"]] != st.order:
            bad(f"{s['file']}: tensor order differs from the manifest")
        for t in s["tensors"]:
            h = st.header[t["name"]]
            b, e = h["data_offsets"]
            if st.data_start + b != t["offset"] or e - b != t["bytes"] or h["dtype"] != t["dtype"] or \
                    h["shape"] != t["shape"]:
                bad(f"{s['file']}:{t['name']}: table differs from the manifest")
            size = DT[h["dtype"]][0]
            if (e - b) % 256 == 0 and b % 256:
                bad(f"{s['file']}:{t['name']}: not 256-aligned")
            if b % size:
                bad(f"{s['file']}:{t['name']}: not element-aligned")
            stage_pieces.setdefault((s["pp_stage"], t["source"]["name"]), []).append((t, st.raw_bytes(t["name"]), s))
        # routed experts of one projection: adjacent, equally strided
        groups = {}
        for i, t in enumerate(s["tensors"]):
            mo = re.match(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(\w+)\.(weight|weight_scale_inv)$", t["name"])
            if mo:
                groups.setdefault((mo.group(1), mo.group(3), mo.group(4)), []).append((i, int(mo.group(2)), t))
        for key, g in groups.items():
            idxs = [i for i, _, _ in g]
            ids = [e for _, e, _ in g]
            if idxs != list(range(idxs[0], idxs[0] + len(idxs))) or ids != sorted(ids):
                bad(f"{s['file']}: experts {key} not adjacent in expert order")
            for a, b2 in zip(g, g[1:]):
                if b2[2]["offset"] - a[2]["offset"] != a[2]["bytes"]:
                    bad(f"{s['file']}: experts {key} not equally strided")

    seen = {name for (_, name) in stage_pieces}
    if seen != needed:
        bad(f"source tensors written {len(seen)} != needed {len(needed)}: "
            f"missing {sorted(needed - seen)[:3]} extra {sorted(seen - needed)[:3]}")
    stages_of = {}
    for (stage, name) in stage_pieces:
        stages_of.setdefault(name, set()).add(stage)
    for name, sts in stages_of.items():
        if len(sts) != 1:
            bad(f"{name} in several pp stages {sorted(sts)}")

    n_checked = 0
    for (stage, name), pieces in sorted(stage_pieces.items()):
        s_st = src(name)
        h = s_st.header[name]
        shape = h["shape"]
        size = DT[h["dtype"]][0]
        transform = pieces[0][0]["transform"]
        if any(p[0]["transform"] != transform for p in pieces):
            bad(f"{name}: mixed transforms")
        whole = [p for p in pieces if p[0]["source"]["dim"] is None]
        split = [p for p in pieces if p[0]["source"]["dim"] is not None]
        if whole and split:
            bad(f"{name}: both whole and split in stage {stage}")
        if transform == "copy":
            ref = s_st.array(name)
            out_size = size
        elif transform == "dequant_bf16":
            q = s_st.array(name).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
            sc = src(name + "_scale_inv").array(name + "_scale_inv")
            S = np.repeat(np.repeat(sc, 128, axis=0), 128, axis=1)[:shape[0], :shape[1]]
            f32 = q * S
            ref = f32.astype(ml_dtypes.bfloat16).view(np.uint16)
            out_size = 2
            back = ref.view(ml_dtypes.bfloat16).astype(np.float64)
            err2 = (back - f32.astype(np.float64)) ** 2
            ref2 = f32.astype(np.float64) ** 2
            for p in pieces:
                src_ = p[0]["source"]
                if src_["dim"] is None:
                    e2, r2 = err2, ref2
                elif src_["dim"] == 0:
                    e2, r2 = err2[src_["start"]:src_["end"]], ref2[src_["start"]:src_["end"]]
                else:
                    e2, r2 = err2[:, src_["start"]:src_["end"]], ref2[:, src_["start"]:src_["end"]]
                rel = float(np.sqrt(e2.sum() / r2.sum()))
                if abs(p[0]["quant_rel_rms"] - rel) > 1e-6 * rel:
                    bad(f"{name}: quant_rel_rms {p[0]['quant_rel_rms']} vs reference {rel}")
                if not (0 < rel < 0.01):
                    bad(f"{name}: quant_rel_rms {rel} out of range")
        else:
            bad(f"{name}: unknown transform {transform}")
            continue
        ref_bytes = np.ascontiguousarray(ref).view(np.uint8)
        if whole:
            for t, b, sh in whole:
                if b != ref_bytes.tobytes():
                    bad(f"{name}: whole copy in {sh['file']} differs from the source")
            if len(whole) != len({sh["tp_rank"] for _, _, sh in whole}):
                bad(f"{name}: twice in one shard")
            n_checked += 1
            continue
        dim = split[0][0]["source"]["dim"]
        cover = np.zeros(shape[dim], dtype=np.int32)
        rebuilt = np.zeros_like(ref_bytes).reshape(shape[0], -1) if len(shape) == 2 else None
        for t, b, sh in split:
            lo, hi = t["source"]["start"], t["source"]["end"]
            cover[lo:hi] += 1
            part = np.frombuffer(b, dtype=np.uint8).reshape(t["shape"][0], -1)
            if dim == 0:
                rebuilt[lo:hi, :] = part
            else:
                rebuilt[:, lo * out_size:hi * out_size] = part
        if (cover != 1).any():
            bad(f"{name}: stage {stage}: elements covered {cover.min()}..{cover.max()} times, not exactly once")
        elif rebuilt.tobytes() != ref_bytes.tobytes():
            bad(f"{name}: rebuilt from {len(split)} slices differs from the source ({transform})")
        n_checked += 1

    if problems:
        print(f"{len(problems)} problems")
        sys.exit(1)
    print(f"OK {out}: {len(m['shards'])} shards, {n_checked} source tensors rebuilt and equal "
          f"(tp={tp} ep={ep} pp={pp} dp={dp} {dtype}{' mtp' if pl['mtp'] else ''})")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Validate an OCI image layout written by `dsr1-pack oci` against the OCI image-spec
(layout, index, manifest, descriptors) and the CNCF ModelPack model-spec media types,
independently of the C code.

usage: pack_oci_validate.py LAYOUT SHARD_DIR
Checks every blob's size and SHA-256, index -> manifest -> config/layers resolution,
media types, the filepath annotations, modelfs.diffIds, and that each layer's bytes
equal the file of that name in SHARD_DIR. Prints one line per problem; exit 1 if any.
"""
import hashlib
import json
import os
import re
import sys

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MT_CONFIG = "application/vnd.cncf.model.config.v1+json"
MT_WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
MT_WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
ANN_PATH = "org.cncf.model.filepath"
ANN_REF = "org.opencontainers.image.ref.name"

problems = []


def bad(msg):
    problems.append(msg)
    print("INVALID:", msg)


def blob(layout, desc, what):
    d = desc.get("digest", "")
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", d):
        bad(f"{what}: digest {d!r} is not sha256:<64 hex>")
        return None
    p = os.path.join(layout, "blobs", "sha256", d[7:])
    if not os.path.isfile(p):
        bad(f"{what}: blob {d} missing")
        return None
    data = open(p, "rb").read()
    if len(data) != desc.get("size"):
        bad(f"{what}: blob {d} has {len(data)} bytes, descriptor says {desc.get('size')}")
    if "sha256:" + hashlib.sha256(data).hexdigest() != d:
        bad(f"{what}: blob {d} content does not hash to its name")
    return data


def main():
    layout, shards = sys.argv[1], sys.argv[2]
    lay = json.load(open(os.path.join(layout, "oci-layout")))
    if lay != {"imageLayoutVersion": "1.0.0"}:
        bad(f"oci-layout is {lay}")
    idx = json.load(open(os.path.join(layout, "index.json")))
    if idx.get("schemaVersion") != 2 or idx.get("mediaType") != MT_INDEX:
        bad("index.json: schemaVersion/mediaType")
    mans = idx.get("manifests", [])
    if not mans:
        bad("index.json lists no manifest")
    refs = set()
    for md in mans:
        ref = md.get("annotations", {}).get(ANN_REF)
        if not ref or ref in refs:
            bad(f"manifest descriptor without a unique {ANN_REF}: {ref}")
        refs.add(ref)
        if md.get("mediaType") != MT_MANIFEST or md.get("artifactType") != ARTIFACT:
            bad(f"{ref}: descriptor mediaType/artifactType")
        raw = blob(layout, md, f"{ref} manifest")
        if raw is None:
            continue
        man = json.loads(raw)
        if man.get("schemaVersion") != 2 or man.get("mediaType") != MT_MANIFEST:
            bad(f"{ref}: manifest schemaVersion/mediaType")
        if man.get("artifactType") != ARTIFACT:
            bad(f"{ref}: artifactType {man.get('artifactType')}")
        cfgd = man.get("config", {})
        if cfgd.get("mediaType") != MT_CONFIG:
            bad(f"{ref}: config mediaType {cfgd.get('mediaType')}")
        craw = blob(layout, cfgd, f"{ref} config")
        cfg = json.loads(craw) if craw else {}
        for key in ("descriptor", "config", "modelfs"):
            if key not in cfg:
                bad(f"{ref}: config lacks {key}")
        layers = man.get("layers", [])
        names = []
        for ld in layers:
            name = ld.get("annotations", {}).get(ANN_PATH)
            if not name or "/" in name:
                bad(f"{ref}: layer without a plain {ANN_PATH}: {name!r}")
                continue
            names.append(name)
            if ld.get("annotations", {}).get("org.opencontainers.image.title") != name:
                bad(f"{ref}: layer {name} lacks org.opencontainers.image.title = its name (oras pull needs it)")
            want = MT_WEIGHT_CONFIG if name in ("manifest.json", "XXH128SUMS") else MT_WEIGHT
            if ld.get("mediaType") != want:
                bad(f"{ref}: layer {name} mediaType {ld.get('mediaType')}, expected {want}")
            data = blob(layout, ld, f"{ref} layer {name}")
            src = os.path.join(shards, name)
            if data is not None and open(src, "rb").read() != data:
                bad(f"{ref}: layer {name} differs from {src}")
        if names[:2] != ["XXH128SUMS", "manifest.json"]:
            bad(f"{ref}: layers do not start with XXH128SUMS, manifest.json: {names[:2]}")
        mfs = cfg.get("modelfs", {})
        if mfs.get("type") != "layers" or mfs.get("diffIds") != [ld.get("digest") for ld in layers]:
            bad(f"{ref}: modelfs.diffIds do not list the layer digests in order")
    print(f"{len(mans)} manifests, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

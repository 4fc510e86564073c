#!/usr/bin/env python3
"""Craft hostile dsr1-pack archives for tests/cli/test_pack.sh.

usage: pack_hostile.py GOOD_ARCHIVE OUT_DIR
Reads a good uncompressed dsr1-pack archive (index, XXH128SUMS, manifest.json, shards)
and writes OUT_DIR/<case>.tar for each case below: the good metadata members first (so
the extractor has authenticated the manifest), then the hostile member(s).
"""
import io
import os
import sys
import tarfile


def main():
    good, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    src = tarfile.open(good)
    members = src.getmembers()
    meta = members[:3]
    assert [m.name for m in meta] == [".dsr1-pack.json", "XXH128SUMS", "manifest.json"], meta
    shard = members[3]
    shard_bytes = src.extractfile(shard).read()
    meta_bytes = [src.extractfile(m).read() for m in meta]

    def archive(name, extra):
        with tarfile.open(os.path.join(out, name + ".tar"), "w", format=tarfile.PAX_FORMAT) as t:
            for m, b in zip(meta, meta_bytes):
                t.addfile(m, io.BytesIO(b))
            for info, data in extra:
                t.addfile(info, io.BytesIO(data) if data is not None else None)

    def reg(name, data):
        i = tarfile.TarInfo(name)
        i.size = len(data)
        i.mode = 0o644
        return (i, data)

    def link(name, kind, target):
        i = tarfile.TarInfo(name)
        i.type = kind
        i.linkname = target
        return (i, None)

    archive("dotdot", [reg("../x", b"escaped\n")])
    archive("absolute", [reg(os.environ.get("HOSTILE_ABS", "/tmp/dsr1-hostile-abs"), b"escaped\n")])
    archive("subdir", [reg("sub/" + shard.name, shard_bytes)])
    archive("symlink", [link(shard.name, tarfile.SYMTYPE, "/etc/passwd")])
    archive("hardlink", [link(shard.name, tarfile.LNKTYPE, "manifest.json")])
    dev = tarfile.TarInfo(shard.name)
    dev.type = tarfile.CHRTYPE
    dev.devmajor, dev.devminor = 1, 3
    archive("device", [(dev, None)])
    archive("oversize", [reg(shard.name, shard_bytes + b"\0")])
    archive("undersize", [reg(shard.name, shard_bytes[:-1])])
    archive("unknown", [reg("evil.safetensors", shard_bytes)])
    archive("duplicate", [reg(shard.name, shard_bytes), reg(shard.name, shard_bytes)])
    flipped = bytearray(shard_bytes)
    flipped[len(flipped) // 2] ^= 0x01
    archive("corrupt", [reg(shard.name, bytes(flipped))])
    # a plain tar of the files without the dsr1-pack index
    with tarfile.open(os.path.join(out, "noindex.tar"), "w", format=tarfile.PAX_FORMAT) as t:
        for m, b in list(zip(meta, meta_bytes))[1:]:
            t.addfile(m, io.BytesIO(b))
        t.addfile(shard, io.BytesIO(shard_bytes))


if __name__ == "__main__":
    main()

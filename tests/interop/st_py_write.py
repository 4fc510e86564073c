"""Write safetensors files with the official safetensors.numpy.save_file, plus a
<file>.expect listing (st_common format) for each, for test_st_interop.c.

usage: st_py_write.py OUTDIR
"""
import os
import sys

import numpy as np
from safetensors.numpy import save_file

from st_common import meta_line, ml_dtypes, tensor_line

NAMES = {  # numpy dtype -> safetensors dtype string
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16",
    "float16": "F16", "int32": "I32", "uint32": "U32", "float32": "F32", "float64": "F64",
    "int64": "I64", "uint64": "U64", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}


def rand(rng, shape, dtype):
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    return np.frombuffer(rng.bytes(n), dtype=np.uint8).view(dt).reshape(shape).copy()


def write(path, tensors, metadata):
    save_file(tensors, path, metadata=metadata)
    lines = [tensor_line(k, NAMES[str(v.dtype)], v.shape, v.tobytes()) for k, v in tensors.items()]
    lines += [meta_line(k, v) for k, v in (metadata or {}).items()]
    with open(path + ".expect", "w", encoding="utf-8") as f:
        f.write("\n".join(sorted(lines)) + "\n")


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(1234)
    dtypes = ["bool", "uint8", "int8", "int16", "uint16", "float16", "int32", "uint32",
              "float32", "float64", "int64", "uint64", ml_dtypes.bfloat16,
              ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]
    t = {}
    for i, dt in enumerate(dtypes):
        shape = [(3, 5), (7,), (2, 3, 4), (1, 1, 9), (130, 3)][i % 5]
        t["model.layers.%d.%s" % (i, np.dtype(dt).name)] = rand(rng, shape, dt)
    t["scalar.f32"] = rand(rng, (), "float32")
    t["empty.f16"] = rand(rng, (0, 3), "float16")
    t["big.bf16"] = rand(rng, (256, 130), ml_dtypes.bfloat16)
    t["caf\u00e9 \"quoted\" \\ \u6a21\u578b"] = rand(rng, (4,), "uint8")
    write(os.path.join(out, "py_all.safetensors"), t,
          {"format": "pt", "note": "h\u00e9llo \"q\" \\ {}", "": "empty key"})
    write(os.path.join(out, "py_one.safetensors"), {"w": rand(rng, (16, 16), "float32")}, None)
    write(os.path.join(out, "py_empty.safetensors"), {}, None)


if __name__ == "__main__":
    main()

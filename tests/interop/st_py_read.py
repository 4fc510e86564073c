"""Read a safetensors file with the official library (safe_open, numpy) and print
every tensor and metadata pair in st_common format, sorted, for test_st_interop.c.
Also cross-checks safe_open against safetensors.deserialize (the raw parser).

usage: st_py_read.py FILE
"""
import sys

import safetensors
from safetensors import safe_open

from st_common import meta_line, tensor_line


def main():
    path = sys.argv[1]
    lines = []
    with safe_open(path, framework="np") as f:
        for k in f.keys():
            s = f.get_slice(k)
            arr = f.get_tensor(k)
            assert list(arr.shape) == list(s.get_shape()), k
            lines.append(tensor_line(k, s.get_dtype(), s.get_shape(), arr.tobytes()))
        meta = f.metadata() or {}
        lines += [meta_line(k, v) for k, v in meta.items()]
    with open(path, "rb") as fh:
        raw = {name: info for name, info in safetensors.deserialize(fh.read())}
    for line in lines:
        if line.startswith("T\t"):
            _, name, dtype, shape, digest = line.split("\t")
            info = raw[name]
            alt = tensor_line(name, info["dtype"], info["shape"], bytes(info["data"]))
            assert alt == line, "safe_open and deserialize disagree on %r" % name
    assert len(raw) == sum(1 for x in lines if x.startswith("T\t"))
    sys.stdout.write("\n".join(sorted(lines)) + ("\n" if lines else ""))


if __name__ == "__main__":
    main()

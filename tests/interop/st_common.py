"""Shared by the safetensors interop scripts: one text line per tensor / metadata
pair, so the C test can compare what the official library sees with what it wrote.

    T <TAB> name <TAB> DTYPE <TAB> d0,d1,... <TAB> sha256(bytes)
    M <TAB> key <TAB> value
"""
import hashlib

import numpy as np

try:
    import ml_dtypes  # numpy has no BF16/FP8; safetensors.numpy looks them up on numpy

    for _n in ("float8_e4m3fn", "float8_e5m2", "bfloat16"):
        if not hasattr(np, _n):
            setattr(np, _n, getattr(ml_dtypes, _n))
except ImportError:  # pragma: no cover - install-deps.sh installs it
    ml_dtypes = None


def tensor_line(name, dtype, shape, data):
    for s in (name,):
        assert "\t" not in s and "\n" not in s, "names must not contain tabs or newlines"
    return "T\t%s\t%s\t%s\t%s" % (name, dtype, ",".join(str(int(d)) for d in shape),
                                  hashlib.sha256(data).hexdigest())


def meta_line(key, value):
    assert "\t" not in key + value and "\n" not in key + value
    return "M\t%s\t%s" % (key, value)

#!/usr/bin/env python3
"""Writes fp8_decode.txt: every FP8 byte decoded to float32 by ml_dtypes (an independent
implementation of the OCP FP8 formats, used by JAX), for the C++ decoders in sli/dtype.h.

    python3 -m venv /tmp/fp8venv && /tmp/fp8venv/bin/pip install numpy ml_dtypes
    /tmp/fp8venv/bin/python tests/golden/make_fp8_golden.py

One line per byte b = 0..255: "b e4m3 e5m2", each decode as the hex bits of the float32
(float8_e4m3fn: no infinities, S.1111.111 is NaN; float8_e5m2: IEEE-like).
"""
import os

import ml_dtypes
import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
b = np.arange(256, dtype=np.uint8)
e4m3 = b.view(ml_dtypes.float8_e4m3fn).astype(np.float32).view(np.uint32)
e5m2 = b.view(ml_dtypes.float8_e5m2).astype(np.float32).view(np.uint32)
with open(os.path.join(here, "fp8_decode.txt"), "w") as f:
    f.write(f"# ml_dtypes {ml_dtypes.__version__}, numpy {np.__version__}: byte, "
            "float8_e4m3fn -> f32 bits, float8_e5m2 -> f32 bits\n")
    for i in range(256):
        f.write(f"{i} {e4m3[i]:08x} {e5m2[i]:08x}\n")

#!/usr/bin/env python3
"""Writes mxfp4_decode.txt: MXFP4 decoded by ml_dtypes (an independent implementation of the
OCP Microscaling element and scale formats, used by JAX), for sli/dtype.h's e2m1ToF32 /
e8m0ToF32 and engine/ingest.h's decodeMxfp4ToBf16.

    python3 -m venv /tmp/mxvenv && /tmp/mxvenv/bin/pip install numpy ml_dtypes
    /tmp/mxvenv/bin/python tests/golden/make_mxfp4_golden.py

The packing is gpt-oss's, as its published loaders decode it (e.g. gpt_oss/torch/weights.py,
transformers' convert_moe_packed_tensors): blocks [..., G, 16] uint8, value 2k of a group in
the low nibble of byte k and 2k + 1 in the high nibble; scales [..., G] uint8, one per group
of 32 values; value = e2m1 * 2^(scale - 127). Here the nibbles are unpacked with numpy and
each one decoded by ml_dtypes.float4_e2m1fn, each scale by ml_dtypes.float8_e8m0fnu, and the
product taken in float64 and rounded to bfloat16 by ml_dtypes (exact for these values).

Lines:
  e2m1 N BITS       N = 0..15, the f32 bits of float4_e2m1fn N
  e8m0 B BITS       B = 0..255, the f32 bits of float8_e8m0fnu B (0xFF: NaN)
  shape D0 D1 ...   the blocks tensor's shape
  blocks HEX        its bytes
  scales HEX        the scales' bytes
  bf16 HEX...       the decoded values, bf16 bits, 4 hex digits each
"""
import os

import ml_dtypes
import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(20261128)

nib = np.arange(16, dtype=np.uint8)
e2m1 = nib.view(ml_dtypes.float4_e2m1fn).astype(np.float32).view(np.uint32)
b = np.arange(256, dtype=np.uint8)
e8m0 = b.view(ml_dtypes.float8_e8m0fnu).astype(np.float32).view(np.uint32)

# blocks [2, 3, 4, 16]: 2 experts, 3 rows, 4 groups (128 values per row)
shape = (2, 3, 4, 16)
blocks = rng.integers(0, 256, size=shape, dtype=np.uint8)
blocks[0, 0, 0, :] = np.arange(16, dtype=np.uint8) * 17  # every code, in both nibbles
blocks[0, 0, 1, :] = np.arange(16, dtype=np.uint8)       # every code low, 0 high
# scales: the extremes that stay finite for every code (0 = 2^-127, subnormal products; 252 =
# 2^125, 6 * 2^125 = 1.5 * 2^127) and typical ones around 2^0
scales = rng.integers(110, 135, size=shape[:-1], dtype=np.uint8)
scales.flat[:6] = [0, 252, 127, 1, 126, 128]

lo = (blocks & 0x0F).view(ml_dtypes.float4_e2m1fn).astype(np.float64)
hi = (blocks >> 4).view(ml_dtypes.float4_e2m1fn).astype(np.float64)
vals = np.empty(shape[:-1] + (32,), dtype=np.float64)
vals[..., 0::2] = lo
vals[..., 1::2] = hi
vals *= scales.view(ml_dtypes.float8_e8m0fnu).astype(np.float64)[..., None]
bf16 = vals.astype(ml_dtypes.bfloat16)
assert np.array_equal(bf16.astype(np.float64), vals), "a value is not exact in bf16"
bits = bf16.view(np.uint16).reshape(-1)

with open(os.path.join(here, "mxfp4_decode.txt"), "w") as f:
    f.write(f"# ml_dtypes {ml_dtypes.__version__}, numpy {np.__version__}; "
            "written by make_mxfp4_golden.py\n")
    for i in range(16):
        f.write(f"e2m1 {i} {e2m1[i]:08x}\n")
    for i in range(256):
        f.write(f"e8m0 {i} {e8m0[i]:08x}\n")
    f.write("shape " + " ".join(str(d) for d in shape) + "\n")
    f.write("blocks " + blocks.tobytes().hex() + "\n")
    f.write("scales " + scales.tobytes().hex() + "\n")
    f.write("bf16 " + "".join(f"{v:04x}" for v in bits) + "\n")

#!/usr/bin/env python3
"""Generate golden test vectors for the SLI quantization kernels from the REAL Python tools.

    /work/golden-venv/bin/python tests/golden/make_golden.py

Libraries: bitsandbytes (CPU / "default" torch backend), torch (torch.ao per-channel int8),
gguf (numpy Q4_0 reference). See README.md in this directory for the container format and
for which parts of each case a CUDA-semantics C++ implementation must match exactly.

Every case writes <stem>.bin (SLIGOLD1 container) and <stem>.json (scalar metadata, the exact
calls used, and Python-side cross-checks). Inputs come from numpy's PCG64 generator seeded
per case, so regeneration is deterministic for a given library/CPU combination.
"""
import os

# Deterministic, eager execution. bitsandbytes wraps some default-backend kernels in
# torch.compile (with an eager fallback); inductor output must not depend on whether a C++
# compiler is installed, so dynamo is disabled and the eager code path is what runs.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import copy
import hashlib
import json
import platform
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)  # fixed reduction order for absmax.mean() (nested_offset)

import bitsandbytes  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402
import gguf  # noqa: E402

OUT = Path(__file__).resolve().parent
SEED = 20260901
CPU = torch.device("cpu")

SPEC_SHA_FMA = "e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c"
SPEC_SHA_NOFMA = "dad4c269c3243d1705f6b979dccb61efb8d1074812ecf8d79255a82f60671763"

VERSIONS = {
    "python": platform.python_version(),
    "numpy": np.__version__,
    "torch": torch.__version__,
    "bitsandbytes": bitsandbytes.__version__,
    "gguf": getattr(gguf, "__version__", None),
    "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    "machine": platform.machine(),
}
try:
    from importlib.metadata import version as _pkgver

    VERSIONS["gguf"] = _pkgver("gguf")
except Exception:  # pragma: no cover
    pass

# ----------------------------------------------------------------------------------------
# SLIGOLD1 container
# ----------------------------------------------------------------------------------------
DT_F32, DT_F16, DT_BF16, DT_U8, DT_I8, DT_I32, DT_F64 = range(7)
_NP_CODE = {
    np.dtype(np.float32): DT_F32,
    np.dtype(np.float16): DT_F16,
    np.dtype(np.uint8): DT_U8,
    np.dtype(np.int8): DT_I8,
    np.dtype(np.int32): DT_I32,
    np.dtype(np.float64): DT_F64,
}
_TORCH_CODE = {
    torch.float32: DT_F32,
    torch.float16: DT_F16,
    torch.bfloat16: DT_BF16,
    torch.uint8: DT_U8,
    torch.int8: DT_I8,
    torch.int32: DT_I32,
    torch.float64: DT_F64,
}
DT_NAME = {DT_F32: "f32", DT_F16: "f16", DT_BF16: "bf16", DT_U8: "u8", DT_I8: "i8", DT_I32: "i32", DT_F64: "f64"}


def _as_code_bytes(x):
    """(dtype code, shape, little-endian bytes) for a torch tensor or numpy array."""
    if isinstance(x, torch.Tensor):
        t = x.detach().to(CPU).contiguous()
        code = _TORCH_CODE[t.dtype]
        shape = tuple(t.shape)
        if t.dtype == torch.bfloat16:
            raw = t.view(torch.int16).numpy().astype("<i2").tobytes()
        else:
            raw = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
        return code, shape, raw
    a = np.ascontiguousarray(x)
    code = _NP_CODE[a.dtype.newbyteorder("=")]
    return code, tuple(a.shape), a.astype(a.dtype.newbyteorder("<")).tobytes()


class Case:
    def __init__(self, stem):
        self.stem = stem
        self.entries = []  # (name, code, shape, raw)
        self.meta = {"case": stem, "seed": SEED, "versions": VERSIONS, "calls": [], "entries": {}}

    def add(self, name, x, desc):
        code, shape, raw = _as_code_bytes(x)
        self.entries.append((name, code, shape, raw))
        self.meta["entries"][name] = {"dtype": DT_NAME[code], "shape": list(shape), "desc": desc}

    def call(self, s):
        self.meta["calls"].append(s)

    def write(self):
        buf = bytearray(b"SLIGOLD1")
        buf += struct.pack("<I", len(self.entries))
        for name, code, shape, raw in self.entries:
            nb = name.encode("ascii")
            buf += struct.pack("<H", len(nb)) + nb
            buf += struct.pack("<BB", code, len(shape))
            buf += struct.pack("<%dq" % len(shape), *shape)
            buf += struct.pack("<Q", len(raw)) + raw
        (OUT / f"{self.stem}.bin").write_bytes(bytes(buf))
        (OUT / f"{self.stem}.json").write_text(dump_json(self.meta) + "\n")
        return len(buf)


def dump_json(v, ind=0):
    """json with one key per line, but lists of scalars (and lists of such lists) on one line."""
    pad = " " * (ind + 1)
    if isinstance(v, dict):
        if not v:
            return "{}"
        items = [pad + json.dumps(k) + ": " + dump_json(x, ind + 1) for k, x in v.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * ind + "}"
    if isinstance(v, list) and any(isinstance(x, dict) for x in v):
        return "[\n" + ",\n".join(pad + dump_json(x, ind + 1) for x in v) + "\n" + " " * ind + "]"
    if isinstance(v, list) and v and all(isinstance(x, list) for x in v):
        return "[\n" + ",\n".join(pad + json.dumps(x) for x in v) + "\n" + " " * ind + "]"
    return json.dumps(v)


def rng_for(name):
    return np.random.default_rng([SEED, zlib.crc32(name.encode())])


def f32(v):
    return np.float32(v)


def nextafter32(x, d):
    return np.nextafter(np.float32(x), np.float32(d), dtype=np.float32)


def bf16_rne_bits(a32):
    """float32 array -> bf16 bit patterns (uint16), round-to-nearest-even, NaN kept quiet."""
    b = a32.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(a32)
    r[nan] = ((b[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def torch_bits(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
        return t.view(torch.int16).numpy().view(np.uint16).reshape(-1)
    return t.numpy().view(np.uint32).reshape(-1)


# ----------------------------------------------------------------------------------------
# Spec constants (bitsandbytes-format.md §1) for the CUDA-rule emulation
# ----------------------------------------------------------------------------------------
NF4_LUT = np.array(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
     0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
     0.7229568362236023, 1.0], dtype=np.float32)
NF4_THRESH = np.array(
    [-0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
     -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
     0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
     0.5016634166240692, 0.6427869200706482, 0.8614784181118011], dtype=np.float32)
FP4_MAG = np.array([0.0, 0.0052083334885537624, 0.6666666865348816, 1.0, 0.3333333432674408, 0.5,
                    0.1666666716337204, 0.25], dtype=np.float32)
FP4_CUDA_LITERALS = np.array([0.29166667, 0.583333, 0.8333333, 0.4166667, 0.0859375, 0.20833333,
                              0.00260417], dtype=np.float32)


def cuda_nf4(xn):
    out = np.zeros(xn.shape, np.uint8)
    for t in NF4_THRESH:
        out += (xn > t).astype(np.uint8)  # NaN compares false -> 0
    return out


def cuda_fp4(xn):
    a = np.abs(xn)
    L = FP4_CUDA_LITERALS
    mag = np.select(
        [a > L[2], a > L[1], a > L[3], a > L[0], a > L[5], a > L[4], a > L[6]],
        [3, 2, 5, 4, 7, 6, 1], default=0).astype(np.uint8)
    return (np.where(xn < 0, 8, 0).astype(np.uint8) | mag)


def cuda_rule_codes(x32, bs, qt):
    """Spec §2 CUDA algorithm with an EXACT reciprocal (what a CPU C++ port computes)."""
    n = x32.size
    nb = -(-n // bs)
    pad = np.zeros(nb * bs, np.float32)
    pad[:n] = x32
    blk = pad.reshape(nb, bs)
    absmax = np.abs(blk).max(axis=1).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = (np.float32(1.0) / absmax).astype(np.float32)
        xn = (blk * inv[:, None]).astype(np.float32).reshape(-1)
    codes = cuda_nf4(xn) if qt == "nf4" else cuda_fp4(xn)
    if n % 2:
        n_codes = n + 1  # pad value 0.0 sits in the padded block slot -> 0*inv
    else:
        n_codes = n
    return codes[:n_codes], absmax


def unpack_nibbles(packed_u8, n):
    p = packed_u8.reshape(-1)
    q = np.empty(p.size * 2, np.uint8)
    q[0::2] = p >> 4
    q[1::2] = p & 0xF
    return q


def cuda_dquantize8(x, code):
    """kernels.cu dQuantize<0> (non-stochastic), evaluated in float32."""
    x = np.float32(x)
    pivot, upper_pivot, lower_pivot = 127, 255, 0
    lower, upper = np.float32(-1.0), np.float32(1.0)
    val = code[pivot]
    i = 64
    while i > 0:
        if x > val:
            lower_pivot, lower = pivot, val
            pivot += i
        else:
            upper_pivot, upper = pivot, val
            pivot -= i
        val = code[pivot]
        i >>= 1
    if upper_pivot == 255:
        upper = code[upper_pivot]
    if lower_pivot == 0:
        lower = code[lower_pivot]
    if x > val:
        mid = np.float32((upper + val) * np.float32(0.5))
        return upper_pivot if x > mid else pivot
    mid = np.float32((lower + val) * np.float32(0.5))
    return lower_pivot if x < mid else pivot


# ----------------------------------------------------------------------------------------
# 4-bit input construction
# ----------------------------------------------------------------------------------------
def edge_values(qt):
    """Values |v| <= 1 that go into blocks whose absmax is exactly 1.0 (so x/absmax == x)."""
    v = []
    if qt == "nf4":
        for t in NF4_THRESH:
            v += [t, nextafter32(t, 2), nextafter32(t, -2)]
        v += list(NF4_LUT)
    else:
        mids = []
        s = np.sort(np.unique(FP4_MAG))
        mids = [np.float32((s[i] + s[i + 1]) / np.float32(2)) for i in range(len(s) - 1)]
        for t in list(FP4_CUDA_LITERALS) + mids:
            for u in (t, nextafter32(t, 2), nextafter32(t, -2)):
                v += [u, -u]
        v += list(FP4_MAG) + list(-FP4_MAG)
    tiny = [1e-3, 2.6e-3, 0.0026041667, 0.00260417, 1e-5, 1e-10, 1e-30, 1e-38, 1e-40, 1e-45]
    for t in tiny:
        v += [t, -t]
    v += [0.0, -0.0, 1.0, -1.0]
    return np.array(v, dtype=np.float32)


def make_4bit_input(rng, n, bs, qt):
    """Flat float32 stream with labelled blocks (see 'block_roles' in the JSON)."""
    nblocks = n // bs
    x = rng.standard_normal(n).astype(np.float32)
    roles = {}
    # block 0: random, absmax present three times (+m, +m, -m) -> values exactly == +-absmax
    b0 = x[0:bs]
    m = np.float32(np.abs(b0).max()) * np.float32(1.25)
    b0[3], b0[bs // 2], b0[bs - 2] = m, m, -m
    b0[7], b0[11] = np.float32(m * 1e-6), np.float32(-m * 1e-9)
    roles["0"] = "random N(0,1); +absmax twice, -absmax once; two tiny values"
    # block 1: all zero (one -0.0)
    x[bs:2 * bs] = 0.0
    x[bs + 1] = np.float32(-0.0)
    roles["1"] = "all-zero block (element 1 is -0.0)"
    # edge blocks: 1.0 at the block start, then edge values, rest random in (-0.95, 0.95)
    E = edge_values(qt)
    per = bs - 1
    k = -(-E.size // per)
    assert 2 + k <= nblocks, (n, bs)
    for j in range(k):
        b = 2 + j
        blk = x[b * bs:(b + 1) * bs]
        blk[:] = rng.uniform(-0.95, 0.95, bs).astype(np.float32)
        blk[0] = 1.0
        chunk = E[j * per:(j + 1) * per]
        blk[1:1 + chunk.size] = chunk
        roles[str(b)] = f"absmax==1.0 (element 0); edge values E[{j * per}:{j * per + chunk.size}]"
    b = 2 + k
    if b < nblocks:
        x[b * bs:(b + 1) * bs] *= np.float32(1e-30)
        roles[str(b)] = "random N(0,1) * 1e-30 (tiny absmax, still normal)"
        b += 1
    if b < nblocks:
        roles[f"{b}..{nblocks - 1}"] = "random N(0,1) * exp(U(-4,4)) per block"
    while b < nblocks:
        x[b * bs:(b + 1) * bs] *= np.float32(np.exp(rng.uniform(-4, 4)))
        b += 1
    if n % bs:
        roles[str(nblocks)] = f"partial last block ({n % bs} elements), random N(0,1)"
    return x, roles, E


def add_4bit_analysis(c, x_in, packed, absmax, bs, qt, deqs, absmax_direct=None):
    """Python-side checks recorded in JSON: dequant formula and CUDA-rule code agreement.

    absmax: the float32 absmax the dequantizer used; absmax_direct: the un-nested absmax
    (defaults to absmax) which must equal max|x| per block.
    """
    n = x_in.numel()
    pk = packed.view(torch.uint8).numpy().reshape(-1)
    am = absmax.numpy().astype(np.float32)
    q = unpack_nibbles(pk, n)
    lut = F.get_4bit_type(qt, device=CPU).numpy().astype(np.float32)
    if qt == "fp4":
        # CUDA dDequantizeFP4Tree / bnb CPU C++ kernel: lut[v & 7] * (1 - 2*bit3) -> code 1000 is -0.0
        lut_tree = (FP4_MAG[np.arange(16) & 7] * np.where(np.arange(16) & 8, np.float32(-1), np.float32(1))).astype(np.float32)
    else:
        lut_tree = NF4_LUT
    res = {}
    for lname, L in (("quant_map", lut), ("cuda_lut", lut_tree)):
        ref32 = (L[q[:n]] * am[np.arange(n) // bs]).astype(np.float32)
        r = {}
        for dname, t in deqs.items():
            got = torch_bits(t)
            if dname == "f32":
                want = ref32.view(np.uint32)
            elif dname == "f16":
                want = ref32.astype(np.float16).view(np.uint16)
            else:
                want = bf16_rne_bits(ref32)
            r[dname] = int((got != want).sum())
        res[lname] = r
    c.meta["check_dequant_formula"] = ("out = RNE_cast(fl32(LUT[nibble] * absmax[i // blocksize])); mismatch counts "
                                       "(bitwise) for LUT = stored quant_map and LUT = CUDA table "
                                       "(FP4: magnitude * sign, so code 1000 -> -0.0)")
    c.meta["check_dequant_formula_mismatches"] = res
    shape = c.meta["shape"]
    c.meta["bnb_dequant_path"] = ("default backend (torch, uses quant_map)" if shape[-1] % 2 else
                                  "cpu backend C++ kernel cdequantize_blockwise_cpu_*")

    x32 = x_in.float().numpy().reshape(-1)
    codes, am_ref = cuda_rule_codes(x32, bs, qt)
    am_direct = am if absmax_direct is None else absmax_direct.numpy().astype(np.float32)
    c.meta["check_absmax_equals_max_abs"] = bool(np.array_equal(am_ref.view(np.uint32), am_direct.view(np.uint32)))
    got = q[:codes.size]
    diff = np.nonzero(got != codes)[0]
    zero_blocks = np.nonzero(am_ref == 0)[0]
    in_zero = np.isin(diff // bs, zero_blocks)
    lst = []
    for i in diff[~in_zero]:
        b = int(i) // bs
        xv = float(x32[i]) if i < n else 0.0
        why = []
        if (b + 1) * bs > n and n % bs:
            why.append("P")
        if qt == "fp4" and (got[i] & 7) == 0 and (codes[i] & 7) == 0:
            why.append("Z")
        if qt == "fp4" and not why:
            why.append("T")
        if i >= n:
            why.append("O")
        lst.append([int(i), xv, int(got[i]), int(codes[i]), "".join(why) or "?"])
    c.meta["cuda_rule_code_mismatches"] = {
        "rule": "spec §2 CUDA algorithm with exact 1.0f/absmax, x*inv, CUDA decision tree (NF4 thresholds / "
                "FP4 literals); all-zero block -> NaN -> code 0; odd-n pad nibble = code(0*inv)",
        "count_total": int(diff.size),
        "all_zero_blocks": zero_blocks.tolist(),
        "count_in_all_zero_blocks": int(in_zero.sum()),
        "other_mismatches_columns": ["flat_index", "x", "bnb_code", "cuda_rule_code", "reason"],
        "reason_legend": {"P": "partial last block: default backend divides x/absmax instead of x*(1/absmax)",
                          "Z": "FP4 zero code: bnb default gives 1000/0000 by argsort order of the two +0.0 entries",
                          "T": "FP4 threshold: default backend uses exact float32 midpoints, CUDA uses the literals",
                          "O": "odd-n padding nibble", "?": "unexplained"},
        "other_mismatches": lst,
    }


def quant4_case(stem, qt, bs, shape, in_dtype, edge=True):
    c = Case(stem)
    rng = rng_for(stem)
    n = int(np.prod(shape))
    if edge:
        x, roles, E = make_4bit_input(rng, n, bs, qt)
        c.meta["block_roles"] = roles
        c.meta["edge_values_count"] = int(E.size)
    else:
        x = rng.standard_normal(n).astype(np.float32)
        x[n // 2] = np.float32(np.abs(x).max())  # an element exactly equal to absmax
        c.meta["block_roles"] = {"all": "random N(0,1); x[n//2] set to the max |x| of the tensor"}
    A = torch.from_numpy(x.reshape(shape)).to(in_dtype)
    tname = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[in_dtype]
    packed, st = F.quantize_4bit(A, blocksize=bs, quant_type=qt, compress_statistics=False)
    c.call(f"packed, qs = bitsandbytes.functional.quantize_4bit(A, blocksize={bs}, quant_type='{qt}', "
           f"compress_statistics=False)  # A: torch.{tname} {list(shape)} on CPU")
    deqs = {}
    for dn, dt in (("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)):
        qs = copy.copy(st)
        qs.dtype = dt
        deqs[dn] = F.dequantize_4bit(packed, qs)
        assert deqs[dn].dtype == dt and tuple(deqs[dn].shape) == tuple(shape)
    c.call("for dt in (torch.float32, torch.float16, torch.bfloat16): qs2 = copy.copy(qs); qs2.dtype = dt; "
           "bitsandbytes.functional.dequantize_4bit(packed, qs2)")
    c.meta.update(quant_type=qt, blocksize=bs, shape=list(shape), input_dtype=tname, n=n,
                  n_blocks=int(st.absmax.numel()), compress_statistics=False)
    c.add("input", A, f"input tensor ({tname}), row-major; blocks are runs of blocksize flattened elements")
    c.add("packed", packed, "quantize_4bit output, uint8 [(n+1)//2, 1]; element 2k = HIGH nibble of byte k")
    c.add("absmax", st.absmax, "float32 [ceil(n/blocksize)] per-block absmax")
    c.add("quant_map", st.code, "QuantState.code (get_4bit_type), float32 [16]")
    for dn in ("f32", "f16", "bf16"):
        c.add(f"dequant_{dn}", deqs[dn], f"dequantize_4bit with quant_state.dtype={dn}")
    add_4bit_analysis(c, A, packed, st.absmax, bs, qt, deqs)
    if qt == "fp4":
        from bitsandbytes.backends.default.ops import _get_4bit_quantize_bounds

        _, order = _get_4bit_quantize_bounds("fp4", CPU)
        c.meta["default_backend_fp4_argsort_order"] = order.tolist()
    return c.write()


# ----------------------------------------------------------------------------------------
# NF4 double quant
# ----------------------------------------------------------------------------------------
def nf4_dq_case():
    stem = "nf4_dq_bs64_136x128_f32"
    c = Case(stem)
    rng = rng_for(stem)
    shape, bs = (136, 128), 64
    x = (rng.standard_normal(shape) * np.exp(rng.uniform(-1.5, 1.5, (shape[0], 1)))).astype(np.float32)
    flat = x.reshape(-1)
    flat[3 * bs:4 * bs] = 0.0  # block 3 all-zero
    A = torch.from_numpy(x)
    packed, st = F.quantize_4bit(A, blocksize=bs, quant_type="nf4", compress_statistics=True)
    c.call("packed, qs = bitsandbytes.functional.quantize_4bit(A, blocksize=64, quant_type='nf4', "
           "compress_statistics=True)  # A: torch.float32 [136, 128] on CPU, torch.set_num_threads(1)")
    p2, st_plain = F.quantize_4bit(A, blocksize=bs, quant_type="nf4", compress_statistics=False)
    c.call("p2, qs_plain = bitsandbytes.functional.quantize_4bit(A, blocksize=64, quant_type='nf4', "
           "compress_statistics=False)  # pre-nesting absmax")
    assert torch.equal(p2, packed)
    absmax_rec = F.dequantize_blockwise(st.absmax, st.state2)
    absmax_rec += st.offset
    c.call("absmax_rec = bitsandbytes.functional.dequantize_blockwise(qs.absmax, qs.state2); "
           "absmax_rec += qs.offset  # exactly what dequantize_4bit does")
    deqs = {}
    for dn, dt in (("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)):
        qs = copy.copy(st)
        qs.dtype = dt
        deqs[dn] = F.dequantize_4bit(packed, qs)
    c.call("for dt in (f32, f16, bf16): qs2 = copy.copy(qs); qs2.dtype = dt; dequantize_4bit(packed, qs2)")
    off = st.offset
    nb = int(st.absmax.numel())
    c.meta.update(quant_type="nf4", blocksize=bs, shape=list(shape), input_dtype="float32", n=int(A.numel()),
                  n_blocks=nb, compress_statistics=True, nested_blocksize=int(st.state2.blocksize),
                  nested_dtype=str(st.state2.dtype).replace("torch.", ""),
                  nested_offset=float(off.item()), n_nested_blocks=int(st.state2.absmax.numel()),
                  block_roles={"3": "all-zero block", "other": "N(0,1) * per-row exp(U(-1.5,1.5))"})
    c.meta["packed_quant_state_json"] = json.dumps(
        {k: v for k, v in st.as_dict(packed=False).items() if not isinstance(v, torch.Tensor)})
    c.add("input", A, "float32 input [136,128]")
    c.add("packed", packed, "uint8 [(n+1)//2, 1], identical to the non-nested quantization")
    c.add("quant_map", st.code, "QuantState.code (get_4bit_type('nf4')), float32 [16]")
    c.add("absmax_prenest_f32", st_plain.absmax, "float32 per-block absmax before double quant (compress_statistics=False run)")
    c.add("absmax_u8", st.absmax, "uint8 [n_blocks] nested codes (QuantState.absmax)")
    c.add("nested_absmax", st.state2.absmax, "float32 [ceil(n_blocks/256)] (QuantState.state2.absmax)")
    c.add("nested_quant_map", st.state2.code, "float32 [256] (QuantState.state2.code)")
    c.add("nested_offset", off.reshape(()).float(), "float32 0-dim (QuantState.offset = absmax.mean())")
    c.add("absmax_reconstructed_f32", absmax_rec, "fl32(fl32(nested_quant_map[u8]*nested_absmax[b//256]) + offset)")
    for dn in ("f32", "f16", "bf16"):
        c.add(f"dequant_{dn}", deqs[dn], f"dequantize_4bit with quant_state.dtype={dn}")

    # checks
    a32 = st_plain.absmax.numpy().astype(np.float32)
    code = st.state2.code.numpy().astype(np.float32)
    nabs = st.state2.absmax.numpy().astype(np.float32)
    offv = np.float32(off.item())
    u8 = st.absmax.numpy()
    rec = (code[u8] * nabs[np.arange(nb) // 256]).astype(np.float32)
    rec = (rec + offv).astype(np.float32)
    c.meta["check_absmax_reconstruction_formula_exact"] = bool(
        np.array_equal(rec.view(np.uint32), absmax_rec.numpy().view(np.uint32)))
    d = (a32 - offv).astype(np.float32)
    nabs_ref = np.array([np.abs(d[i:i + 256]).max() for i in range(0, nb, 256)], np.float32)
    c.meta["check_nested_absmax_equals_max_abs_dev"] = bool(np.array_equal(nabs_ref, nabs))
    c.meta["offset_check"] = {
        "torch_mean_f32": float(offv),
        "numpy_f64_mean_cast_f32": float(np.float32(a32.astype(np.float64).mean())),
        "numpy_pairwise_f32_mean": float(np.mean(a32, dtype=np.float32)),
    }
    cuda = np.array([cuda_dquantize8(np.float32(d[i] * np.float32(np.float32(1.0) / nabs[i // 256])), code)
                     for i in range(nb)], np.uint8)
    mm = np.nonzero(cuda != u8)[0]
    c.meta["nested_cuda_rule_code_mismatches"] = {
        "rule": "xn = (absmax - offset) * (1.0f/nested_absmax) (exact reciprocal), then kernels.cu dQuantize<0> "
                "pivot search over nested_quant_map; bnb CPU uses a 65536-bin LUT (spec §6.4c)",
        "count": int(mm.size),
        "mismatches": [{"block": int(i), "xn": float(d[i] * (np.float32(1.0) / nabs[i // 256])), "bnb": int(u8[i]),
                        "cuda_rule": int(cuda[i])} for i in mm[:100]],
    }
    add_4bit_analysis(c, A, packed, absmax_rec, bs, "nf4", deqs, absmax_direct=st_plain.absmax)
    c.meta["check_dequant_formula"] += "; absmax = absmax_reconstructed_f32"
    c.meta["nested_quant_map_sha256"] = hashlib.sha256(code.astype("<f4").tobytes()).hexdigest()
    return c.write()


# ----------------------------------------------------------------------------------------
# LLM.int8 (int8_vectorwise_quant)
# ----------------------------------------------------------------------------------------
def int8_case():
    stem = "int8_vectorwise_64x96_f16"
    c = Case(stem)
    rng = rng_for(stem)
    W = (rng.standard_normal((64, 96)) * 0.05).astype(np.float32)
    W[3] = 0.0
    W[5] *= 2
    W[5, 17] = -np.abs(W[5]).max() * 1.5  # max magnitude negative
    W[7] = rng.integers(-127, 127, 96) + 0.5  # exact .5 ties when SCB = 127 (scale = 1)
    W[7, 0] = 127.0
    W[8] = rng.integers(-127, 127, 96).astype(np.float32)  # odd integers -> ties when SCB = 254
    W[8, 0] = 254.0
    W[9] = (rng.standard_normal(96) * 1e-6).astype(np.float32)  # fp16 subnormals
    W16 = torch.from_numpy(W).half()
    CB, SCB, outl = F.int8_vectorwise_quant(W16.clone())
    c.call("CB, SCB, outlier_cols = bitsandbytes.functional.int8_vectorwise_quant(W16)  # W16: torch.float16 [64, 96], threshold=0.0")
    deq = F.int8_vectorwise_dequant(CB, SCB)
    c.call("bitsandbytes.functional.int8_vectorwise_dequant(CB, SCB)")
    c.add("input_f16", W16, "fp16 weight [out=64, in=96] (LLM.int8 casts to fp16 before quantizing)")
    c.add("CB", CB, "int8 [64,96]")
    c.add("SCB", SCB, "float32 [64] row absmax (NOT absmax/127)")
    c.add("dequant_f32", deq, "int8_vectorwise_dequant output")
    w = W16.float().numpy()
    scb = SCB.numpy()
    cb = CB.numpy().astype(np.int32)
    nz = scb != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        f_mul = (np.float32(127.0) / scb).astype(np.float32)
        c1 = np.rint((w * f_mul[:, None]).astype(np.float32))
        c2 = np.rint((w / (scb / np.float32(127.0))[:, None]).astype(np.float32))
        c3 = np.rint(w.astype(np.float64) * 127.0 / scb.astype(np.float64)[:, None])
    c.meta.update(shape=[64, 96], threshold=0.0, outlier_cols=None if outl is None else outl.tolist(),
                  row_roles={"3": "zero row", "5": "max magnitude negative", "7": "SCB=127 with k+0.5 values (ties)",
                             "8": "SCB=254 with odd integers (ties)", "9": "fp16 subnormal magnitudes"})
    c.meta["rounding_check_nonzero_rows"] = {
        "rne(f32(w) * fl32(127/SCB))  [bnb default backend formula]": int((c1[nz] != cb[nz]).sum()),
        "rne(f32(w) / fl32(SCB/127))": int((c2[nz] != cb[nz]).sum()),
        "rne(w*127/SCB in f64)": int((c3[nz] != cb[nz]).sum()),
    }
    c.meta["zero_row_CB"] = sorted(set(cb[3].tolist()))
    c.meta["zero_row_SCB"] = float(scb[3])
    c.meta["check_SCB_equals_row_absmax"] = bool(np.array_equal(np.abs(w).max(axis=1), scb))
    dref = ((cb.astype(np.float32) * scb[:, None]).astype(np.float32) * np.float32(7.874015718698502e-3)).astype(np.float32)
    c.meta["check_dequant_formula_mismatches"] = int((dref.view(np.uint32) != deq.numpy().view(np.uint32)).sum())
    c.meta["check_dequant_formula"] = "fl32(fl32(CB * SCB) * fl32(7.874015718698502e-3))  (torch: A * stats.view(-1,1) * 7.874015718698502e-3)"
    return c.write()


# ----------------------------------------------------------------------------------------
# INT8_DYNAMIC per-output-channel (torch.ao)
# ----------------------------------------------------------------------------------------
def _perchannel(W):
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    obs(W)
    scales, zps = obs.calculate_qparams()
    q = torch.quantize_per_channel(W, scales, zps, 0, torch.qint8)
    return obs, scales, zps, q


def _rounding_stats(w, ir, sc64):
    s32 = sc64.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        cands = {
            "rne(w / scale_f32) [f32 divide]": np.rint((w / s32).astype(np.float32)),
            "rne(w * fl32(1/scale_f32)) [f32 reciprocal multiply]": np.rint((w * (np.float32(1) / s32).astype(np.float32)).astype(np.float32)),
            "rne(w / scale_f64) [f64 divide]": np.rint(w.astype(np.float64) / sc64[:, None]),
            "rne(w * (1/scale_f64)) [f64 reciprocal multiply]": np.rint(w.astype(np.float64) * (1.0 / sc64[:, None])),
        }
    return {k: int((np.clip(v, -128, 127) != ir).sum()) for k, v in cands.items()}


def int8_dynamic_case():
    stem = "int8_dynamic_perchannel_64x96_f32"
    c = Case(stem)
    rng = rng_for(stem)
    W = (rng.standard_normal((64, 96)) * 0.05).astype(np.float32)
    W[0] = 0.0
    W[1, 10] = -np.abs(W[1]).max() * 2.0  # max magnitude negative -> -127.5 -> -128
    W[2] = rng.integers(-127, 127, 96) + 0.5  # absmax 127.5 -> scale 1.0 -> exact ties
    W[2, 0] = 127.5
    W[3, 20] = np.abs(W[3]).max() * 2.0  # max magnitude positive -> +127.5 -> clamp 127
    W[4] = (rng.standard_normal(96) * 1e-9).astype(np.float32)  # scale below eps? (absmax/127.5 vs f32 eps)
    Wt = torch.from_numpy(W)
    obs, scales, zps, q = _perchannel(Wt)
    c.call("obs = torch.ao.quantization.observer.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, "
           "qscheme=torch.per_channel_symmetric); obs(W); scales, zps = obs.calculate_qparams()")
    c.call("q = torch.quantize_per_channel(W, scales, zps, 0, torch.qint8); q.int_repr(); "
           "q.q_per_channel_scales(); q.dequantize()")
    ir = q.int_repr()
    qs = q.q_per_channel_scales()
    deq = q.dequantize()
    c.add("input", Wt, "float32 weight [out=64, in=96]")
    c.add("int_repr", ir, "int8 [64,96]")
    c.add("scales_f64", qs, "q_per_channel_scales() as returned (float64)")
    c.add("scales_f32", qs.float(), "same, cast to float32 (exact: the observer computes in float32)")
    c.add("observer_scales", scales, "observer.calculate_qparams() scales as returned")
    c.add("zero_points_i32", q.q_per_channel_zero_points().to(torch.int32), "all zero (symmetric)")
    c.add("dequant_f32", deq, "q.dequantize()")
    sc64 = qs.numpy()
    w = W
    irn = ir.numpy().astype(np.int32)
    stats_golden = _rounding_stats(w, irn, sc64)
    # larger random sweep (not stored) to separate the rounding formulas
    big = torch.from_numpy((rng.standard_normal((512, 4096)) * np.exp(rng.uniform(-6, 6, (512, 1)))).astype(np.float32))
    _, _, _, qb = _perchannel(big)
    stats_big = _rounding_stats(big.numpy(), qb.int_repr().numpy().astype(np.int32), qb.q_per_channel_scales().numpy())
    dq_ref = (irn.astype(np.float32) * sc64.astype(np.float32)[:, None]).astype(np.float32)
    c.meta.update(
        shape=[64, 96], qscheme="per_channel_symmetric", ch_axis=0, quant_min=-128, quant_max=127,
        observer_eps=float(obs.eps.item()),
        scale_formula="scale = max(max(|min|,|max|) / 127.5, eps) computed in float32 (observer)",
        observer_scales_dtype=str(scales.dtype), q_per_channel_scales_dtype=str(qs.dtype),
        row_roles={"0": "zero row (scale = eps)", "1": "max magnitude negative (-> -128)",
                   "2": "absmax 127.5 -> scale 1.0, k+0.5 values (exact ties)",
                   "3": "max magnitude positive (127.5 -> clamp 127)", "4": "tiny values (~1e-9)"},
        int_repr_min=int(irn.min()), int_repr_max=int(irn.max()),
        rounding_mismatches_golden_64x96=stats_golden,
        rounding_mismatches_sweep_512x4096=stats_big,
        check_dequant_formula="fl32(int_repr * fl32(scale))",
        check_dequant_formula_mismatches=int((dq_ref.view(np.uint32) != deq.numpy().view(np.uint32)).sum()),
        check_scales_f64_is_exact_f32=bool(np.array_equal(sc64, sc64.astype(np.float32).astype(np.float64))),
    )
    best = [k for k, v in stats_big.items() if v == 0 and stats_golden[k] == 0]
    c.meta["rounding_finding"] = ("matches: " + ", ".join(best)) if best else "no candidate matched exactly"
    return c.write()


# ----------------------------------------------------------------------------------------
# GGUF Q4_0
# ----------------------------------------------------------------------------------------
def q4_0_case():
    stem = "gguf_q4_0_64x128_f32"
    c = Case(stem)
    rng = rng_for(stem)
    W = rng.standard_normal((64, 128)).astype(np.float32)
    W[0] = 0.0
    W[1] = np.abs(W[1]); W[1, 5] = -W[1].max() * 1.5  # max magnitude negative (d > 0)
    W[2] = -np.abs(W[2]); W[2, 40] = -W[2].min() * 1.5  # max magnitude positive (d < 0)
    W[3, 3] = 4.0; W[3, 9] = -4.0  # equal magnitudes in block 0: first occurrence (+) wins
    W[3, 35] = -4.0; W[3, 41] = 4.0  # block 1: first occurrence (-) wins
    W[4] = (rng.standard_normal(128) * 1e-6).astype(np.float32)  # tiny (d as fp16 subnormal)
    W[5] = (rng.standard_normal(128) * 3e4).astype(np.float32)  # large (d near fp16 max range)
    W[6, :32] = np.arange(-16, 16, dtype=np.float32) * 0.5  # x*id exact .5 boundaries
    raw = gguf.quants.quantize(W, gguf.GGMLQuantizationType.Q4_0)
    deq = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_0)
    c.call("raw = gguf.quants.quantize(W, gguf.GGMLQuantizationType.Q4_0)  # W: np.float32 [64, 128]")
    c.call("deq = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_0)")
    c.add("input", W, "float32 [64,128]")
    c.add("blocks", np.ascontiguousarray(raw, dtype=np.uint8),
          "uint8 [64, 72]: per row 4 block_q4_0 of 18 bytes = fp16 d (LE) + 16 bytes qs "
          "(element j in low nibble of qs[j], element j+16 in high nibble)")
    c.add("dequant_f32", deq.astype(np.float32), "float32 [64,128]")
    blk = raw.reshape(-1, 18)
    d = blk[:, :2].copy().view(np.float16).astype(np.float32).reshape(-1)
    qs = blk[:, 2:]
    q = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.int32) - 8
    ref = (d[:, None] * q.astype(np.float32)).astype(np.float32).reshape(64, 128)
    c.meta.update(
        shape=[64, 128], type="Q4_0", block_size=32, type_size=18,
        quantize_rule="gguf numpy: m = x[argmax|x|] (first occurrence); d = m / -8 (f32); id = 1/d (0 if d==0); "
                      "q = min(15, trunc(x*id + 8.5)); d stored as fp16 (RNE) while q used the f32 d",
        row_roles={"0": "zeros", "1": "max magnitude negative", "2": "max magnitude positive",
                   "3": "equal +-4 magnitudes (first occurrence decides sign)", "4": "tiny (~1e-6)",
                   "5": "large (~3e4)", "6": "block 0: multiples of 0.5 in [-8, 7.5]"},
        check_dequant_formula="fl32(fl32(fp16 d) * (q - 8))",
        check_dequant_formula_mismatches=int((ref.view(np.uint32) != deq.astype(np.float32).view(np.uint32)).sum()),
    )
    return c.write()


# ----------------------------------------------------------------------------------------
# dynamic map
# ----------------------------------------------------------------------------------------
def dynamic_map_case():
    stem = "dynamic_map"
    c = Case(stem)
    m = F.create_dynamic_map()
    c.call("bitsandbytes.functional.create_dynamic_map()  # defaults signed=True, max_exponent_bits=7, total_bits=8")
    m = m.to(CPU).float()
    sha = hashlib.sha256(m.numpy().astype("<f4").tobytes()).hexdigest()
    c.add("dynamic_map", m, "float32 [256]")
    c.meta.update(sha256=sha, spec_sha256_fma=SPEC_SHA_FMA, spec_sha256_nofma=SPEC_SHA_NOFMA,
                  matches=("canonical FMA variant" if sha == SPEC_SHA_FMA else
                           "no-FMA variant" if sha == SPEC_SHA_NOFMA else "NEITHER spec variant"),
                  dtype_returned=str(F.create_dynamic_map().dtype))
    return c.write()


def main():
    sizes = {}

    def run(stem, fn, *a, **k):
        sizes[stem] = fn(*a, **k)

    main_shape = {32: (32, 96), 64: (32, 96), 128: (32, 96), 256: (32, 96), 1024: (64, 96), 4096: (128, 96)}
    for qt in ("nf4", "fp4"):
        for bs, shp in main_shape.items():
            stem = f"{qt}_bs{bs}_{shp[0]}x{shp[1]}_f32"
            run(stem, quant4_case, stem, qt, bs, shp, torch.float32)
        for bs in (32, 64, 128, 256, 1024, 4096):
            stem = f"{qt}_bs{bs}_3x33_f32"
            run(stem, quant4_case, stem, qt, bs, (3, 33), torch.float32, edge=False)
        for dt, dn in ((torch.float16, "f16"), (torch.bfloat16, "bf16")):
            stem = f"{qt}_bs64_32x96_{dn}"
            run(stem, quant4_case, stem, qt, 64, (32, 96), dt)
    run("nf4_dq_bs64_136x128_f32", nf4_dq_case)
    run("int8_vectorwise_64x96_f16", int8_case)
    run("int8_dynamic_perchannel_64x96_f32", int8_dynamic_case)
    run("gguf_q4_0_64x128_f32", q4_0_case)
    run("dynamic_map", dynamic_map_case)
    total = 0
    for k, v in sizes.items():
        js = (OUT / f"{k}.json").stat().st_size
        total += v + js
        print(f"{k:40s} {v:8d} B  (+json {js} B)")
    print(f"total {total} B in {2 * len(sizes)} files; versions {json.dumps(VERSIONS)}")


if __name__ == "__main__":
    sys.exit(main())

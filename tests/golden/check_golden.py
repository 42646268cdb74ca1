#!/usr/bin/env python3
"""Re-read every SLIGOLD1 container in this directory, validate it and print a summary.

    python3 tests/golden/check_golden.py          # structure only needs the standard library
    /work/golden-venv/bin/python tests/golden/check_golden.py   # + numpy value spot-checks

Checks: magic, entry headers, byte length == prod(dims) * itemsize, no trailing bytes, and
agreement with the entries listed in the JSON sidecar. With numpy available it also
recomputes the 4-bit / Q4_0 dequantization from the stored codes and compares bitwise.
"""
import json
import struct
import sys
from math import prod
from pathlib import Path

DIR = Path(__file__).resolve().parent
DTYPES = {0: ("f32", 4, "<f4"), 1: ("f16", 2, "<f2"), 2: ("bf16", 2, "<u2"), 3: ("u8", 1, "u1"),
          4: ("i8", 1, "i1"), 5: ("i32", 4, "<i4"), 6: ("f64", 8, "<f8")}


def read(path):
    b = path.read_bytes()
    if b[:8] != b"SLIGOLD1":
        raise ValueError("bad magic")
    (count,) = struct.unpack_from("<I", b, 8)
    o, out = 12, {}
    for _ in range(count):
        (nl,) = struct.unpack_from("<H", b, o); o += 2
        name = b[o:o + nl].decode("ascii"); o += nl
        code, nd = struct.unpack_from("<BB", b, o); o += 2
        dims = list(struct.unpack_from("<%dq" % nd, b, o)); o += 8 * nd
        (blen,) = struct.unpack_from("<Q", b, o); o += 8
        if code not in DTYPES:
            raise ValueError(f"{name}: bad dtype code {code}")
        if blen != prod(dims) * DTYPES[code][1]:
            raise ValueError(f"{name}: byte length {blen} != prod({dims}) * {DTYPES[code][1]}")
        if o + blen > len(b):
            raise ValueError(f"{name}: truncated")
        if name in out:
            raise ValueError(f"duplicate entry {name}")
        out[name] = (code, dims, b[o:o + blen]); o += blen
    if o != len(b):
        raise ValueError(f"{len(b) - o} trailing bytes")
    return out


def value_checks(np, meta, ent):
    """Returns a list of strings describing the spot checks performed (raises on failure)."""
    arr = {k: np.frombuffer(raw, DTYPES[c][2]).reshape(d) for k, (c, d, raw) in ent.items()}
    done = []
    if "quant_type" in meta and "packed" in arr:
        n, bs = meta["n"], meta["blocksize"]
        p = arr["packed"].reshape(-1)
        q = np.empty(p.size * 2, np.uint8)
        q[0::2], q[1::2] = p >> 4, p & 0xF
        q = q[:n]
        am = arr["absmax_reconstructed_f32"] if "absmax_reconstructed_f32" in arr else arr["absmax"]
        lut = arr["quant_map"].astype(np.float32) if "quant_map" in arr else None
        if lut is None:  # nested case stores no quant_map: use NF4 from another file's convention
            lut = NF4
        lut_cuda = lut.copy()
        if meta["quant_type"] == "fp4":
            lut_cuda[8] = np.float32(-0.0)
        ref = (lut[q] * am[np.arange(n) // bs]).astype(np.float32)
        ref_c = (lut_cuda[q] * am[np.arange(n) // bs]).astype(np.float32)
        got = arr["dequant_f32"].reshape(-1)
        ok = np.array_equal(ref.view(np.uint32), got.view(np.uint32)) or \
            np.array_equal(ref_c.view(np.uint32), got.view(np.uint32))
        if not ok:
            raise ValueError("dequant_f32 != LUT[code] * absmax")
        done.append("dequant_f32 == fl32(LUT[code]*absmax)")
    if meta.get("type") == "Q4_0":
        blk = arr["blocks"].reshape(-1, 18)
        d = blk[:, :2].copy().view("<f2").astype(np.float32).reshape(-1, 1)
        qs = blk[:, 2:]
        q = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.float32) - 8
        if not np.array_equal((d * q).astype(np.float32).reshape(-1).view(np.uint32),
                              arr["dequant_f32"].reshape(-1).view(np.uint32)):
            raise ValueError("Q4_0 dequant mismatch")
        done.append("Q4_0 dequant == fp16(d)*(q-8)")
    return done


NF4 = None


def main():
    global NF4
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:
        NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                        0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                        0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                        0.7229568362236023, 1.0], np.float32)
    files = sorted(DIR.glob("*.bin"))
    bad = 0
    total = 0
    for path in files:
        total += path.stat().st_size
        try:
            ent = read(path)
            meta = json.loads(path.with_suffix(".json").read_text())
            jent = meta.get("entries", {})
            if list(jent) != list(ent):
                raise ValueError(f"JSON entries {list(jent)} != container {list(ent)}")
            for k, (c, d, _) in ent.items():
                if jent[k]["dtype"] != DTYPES[c][0] or jent[k]["shape"] != d:
                    raise ValueError(f"{k}: JSON says {jent[k]['dtype']} {jent[k]['shape']}, container {DTYPES[c][0]} {d}")
            extra = value_checks(np, meta, ent) if np is not None else []
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {path.name}: {e}")
            bad += 1
            continue
        desc = ", ".join(f"{k}:{DTYPES[c][0]}{d}" for k, (c, d, _) in ent.items())
        print(f"ok   {path.name} ({path.stat().st_size} B, {len(ent)} entries) {desc}"
              + (f"  [{'; '.join(extra)}]" if extra else ""))
    print(f"{len(files)} files, {total} bytes of .bin, {bad} failures"
          + ("" if np is not None else " (numpy not available: value checks skipped)"))
    return 1 if bad or not files else 0


if __name__ == "__main__":
    sys.exit(main())

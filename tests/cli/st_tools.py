#!/usr/bin/env python3
"""Small safetensors / golden-container helpers for the CLI tests (standard library only).

  st_tools.py compare A B [--exclude SUBSTR]...   every tensor of A is in B, same dtype,
                                                  shape and bytes (exit 1 naming the first
                                                  difference)
  st_tools.py bnb OUT.safetensors GOLDEN_DIR      a bitsandbytes-style checkpoint built from
                                                  the golden vectors (bytes bnb produced)
  st_tools.py flip FILE OFFSET                    xor one byte
  st_tools.py json-get FILE KEY...                print a value from a JSON document
  st_tools.py synth OUT NAME=D0xD1[@TYPE] ...     a checkpoint with those tensors: F32
                                                  (deterministic values, about +-0.05) or,
                                                  with @F8_E4M3, deterministic FP8 bytes
                                                  (no NaN pattern); @U8: deterministic
                                                  bytes (MXFP4 blocks); @E8M0: U8 bytes of
                                                  MXFP4 scales 2^-9 .. 2^-1
  st_tools.py transposed A NAME B NAME2           tensor NAME of A transposed (2-D) has the
                                                  shape of NAME2 in B (exit 1 otherwise)
"""
import json
import math
import os
import struct
import sys


def read_st(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, en = e["data_offsets"]
        out[name] = (e["dtype"], e["shape"], data[base + b:base + en])
    return out


def write_st(path, tensors):
    header, off, blobs = {}, 0, []
    for name, dtype, shape, blob in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(blob)]}
        off += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


GOLD_DTYPES = {0: "F32", 1: "F16", 2: "BF16", 3: "U8", 4: "I8", 5: "I32", 6: "F64"}


def read_golden(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"SLIGOLD1", path
    (count,) = struct.unpack_from("<I", data, 8)
    pos = 12
    out = {}
    for _ in range(count):
        (nl,) = struct.unpack_from("<H", data, pos)
        pos += 2
        name = data[pos:pos + nl].decode()
        pos += nl
        dt, nd = data[pos], data[pos + 1]
        pos += 2
        dims = list(struct.unpack_from("<%dq" % nd, data, pos))
        pos += 8 * nd
        (bl,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        out[name] = (GOLD_DTYPES[dt], dims, data[pos:pos + bl])
        pos += bl
    return out


def bnb4(prefix, golden_dir, stem, nested):
    g = read_golden(os.path.join(golden_dir, stem + ".bin"))
    meta = json.load(open(os.path.join(golden_dir, stem + ".json")))
    w = prefix + ".weight"
    t = [(w, "U8", g["packed"][1], g["packed"][2])]
    if nested:
        t.append((w + ".absmax", "U8", g["absmax_u8"][1], g["absmax_u8"][2]))
    else:
        t.append((w + ".absmax", "F32", g["absmax"][1], g["absmax"][2]))
    t.append((w + ".quant_map", "F32", [16], g["quant_map"][2]))
    if nested:
        t.append((w + ".nested_absmax", "F32", g["nested_absmax"][1], g["nested_absmax"][2]))
        t.append((w + ".nested_quant_map", "F32", [256], g["nested_quant_map"][2]))
    qs = meta.get("packed_quant_state_json")
    if qs is None:  # what bnb writes (utils.py pack_dict_to_tensor), key order as bnb's
        qs = json.dumps({"quant_type": meta["quant_type"], "blocksize": meta["blocksize"],
                         "dtype": "float32", "shape": meta["shape"]})
    qsb = qs.encode()
    t.append((w + ".quant_state.bitsandbytes__" + meta["quant_type"], "U8", [len(qsb)], qsb))
    return t


def main():
    cmd = sys.argv[1]
    if cmd == "compare":
        a, b = read_st(sys.argv[2]), read_st(sys.argv[3])
        excl = [sys.argv[i + 1] for i, x in enumerate(sys.argv) if x == "--exclude"]
        n = 0
        for name, (dt, shape, blob) in a.items():
            if any(e in name for e in excl):
                continue
            if name not in b:
                print("missing in %s: %s" % (sys.argv[3], name))
                return 1
            if b[name][0] != dt or b[name][1] != shape:
                print("%s: %s %s vs %s %s" % (name, dt, shape, b[name][0], b[name][1]))
                return 1
            if b[name][2] != blob:
                print("%s: bytes differ" % name)
                return 1
            n += 1
        print("%d tensors identical" % n)
        return 0
    if cmd == "bnb":
        out, gd = sys.argv[2], sys.argv[3]
        t = []
        t += bnb4("model.layers.0.mlp.down_proj", gd, "nf4_dq_bs64_136x128_f32", True)
        t += bnb4("model.layers.0.mlp.up_proj", gd, "nf4_bs64_32x96_f32", False)
        t += bnb4("model.layers.1.mlp.up_proj", gd, "fp4_bs64_3x33_f32", False)
        g8 = read_golden(os.path.join(gd, "int8_vectorwise_64x96_f16.bin"))
        p = "model.layers.1.self_attn.q_proj"
        t.append((p + ".weight", "I8", g8["CB"][1], g8["CB"][2]))
        t.append((p + ".SCB", "F32", g8["SCB"][1], g8["SCB"][2]))
        t.append((p + ".weight_format", "U8", [], b"\x00"))
        t.append(("model.layers.0.input_layernorm.weight", "F16", [4], struct.pack("<4e", 1, 2, 3, 4)))
        write_st(out, t)
        return 0
    if cmd == "flip":
        path, off = sys.argv[2], int(sys.argv[3])
        with open(path, "r+b") as f:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ 0x5A]))
        return 0
    if cmd == "json-get":
        v = json.load(open(sys.argv[2]))
        for k in sys.argv[3:]:
            v = v[int(k)] if isinstance(v, list) else v[k]
        print(v)
        return 0
    if cmd == "synth":
        t = []
        for k, arg in enumerate(sys.argv[3:]):
            name, spec = arg.split("=")
            dims, _, dtype = spec.partition("@")
            shape = [int(d) for d in dims.split("x")]
            n = 1
            for d in shape:
                n *= d
            if dtype == "F8_E4M3":
                raw = bytes(b ^ 1 if (b & 0x7F) == 0x7F else b
                            for b in ((i * 37 + k * 11) % 256 for i in range(n)))
                t.append((name, "F8_E4M3", shape, raw))
                continue
            if dtype == "U8":
                t.append((name, "U8", shape, bytes((i * 37 + k * 11) % 256 for i in range(n))))
                continue
            if dtype == "E8M0":
                t.append((name, "U8", shape, bytes(118 + (i * 5 + k) % 9 for i in range(n))))
                continue
            vals = [math.sin((i * 7 + k * 131) * 0.37) * 0.05 for i in range(n)]
            t.append((name, "F32", shape, struct.pack("<%df" % n, *vals)))
        write_st(sys.argv[2], t)
        return 0
    if cmd == "transposed":
        a, b = read_st(sys.argv[2]), read_st(sys.argv[4])
        sa, sb = a[sys.argv[3]][1], b[sys.argv[5]][1]
        if len(sa) != 2 or sb != [sa[1], sa[0]]:
            print("%s %s is not the transpose of %s %s" % (sys.argv[5], sb, sys.argv[3], sa))
            return 1
        print("transposed: %s -> %s" % (sa, sb))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())

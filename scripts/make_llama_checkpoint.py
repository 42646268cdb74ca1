#!/usr/bin/env python3
"""Writes a synthetic, sharded, Llama-shaped safetensors checkpoint (no torch / numpy needed).

    scripts/make_llama_checkpoint.py OUT_DIR [--layers 4] [--hidden 64] [--intermediate 128]
        [--vocab 256] [--shards 2] [--dtype F16|BF16|F32] [--seed 1] [--unaligned]

Tensor names, shapes and order follow Hugging Face LlamaForCausalLM (model.embed_tokens,
model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, input_layernorm,
post_attention_layernorm}.weight, model.norm.weight, lm_head.weight). Values are a
deterministic pseudo-random normal(0, 0.02) stream (norms are ones). Shards are split by
layer and described by model.safetensors.index.json exactly as transformers writes it.
--unaligned pads headers to odd lengths so tensor data starts at unaligned offsets.
"""
import argparse
import json
import math
import os
import random
import struct


def f32_to_bf16_bits(x):
    (u,) = struct.unpack("<I", struct.pack("<f", x))
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return (u >> 16) | 0x40
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF


def encode(values, dtype):
    if dtype == "F32":
        return struct.pack("<%df" % len(values), *values)
    if dtype == "F16":
        return struct.pack("<%de" % len(values), *values)
    if dtype == "BF16":
        return struct.pack("<%dH" % len(values), *[f32_to_bf16_bits(v) for v in values])
    raise ValueError(dtype)


def write_safetensors(path, tensors, dtype, unaligned, metadata=None):
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    blobs = []
    for name, shape, values in tensors:
        blob = encode(values, dtype)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    if unaligned:
        while (8 + len(text)) % 8 != 3:
            text += b" "
    else:
        while len(text) % 8:
            text += b" "
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)
    return offset


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--intermediate", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--kv-heads-ratio", type=int, default=2)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--dtype", default="F16", choices=["F16", "BF16", "F32"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--unaligned", action="store_true")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    h, i, v = a.hidden, a.intermediate, a.vocab
    kv = h // a.kv_heads_ratio

    def normal(shape):
        n = math.prod(shape)
        return [rng.gauss(0.0, 0.02) for _ in range(n)]

    def ones(shape):
        return [1.0] * math.prod(shape)

    groups = [[("model.embed_tokens.weight", [v, h], normal([v, h]))]]
    for L in range(a.layers):
        p = "model.layers.%d." % L
        groups.append([
            (p + "self_attn.q_proj.weight", [h, h], normal([h, h])),
            (p + "self_attn.k_proj.weight", [kv, h], normal([kv, h])),
            (p + "self_attn.v_proj.weight", [kv, h], normal([kv, h])),
            (p + "self_attn.o_proj.weight", [h, h], normal([h, h])),
            (p + "mlp.gate_proj.weight", [i, h], normal([i, h])),
            (p + "mlp.up_proj.weight", [i, h], normal([i, h])),
            (p + "mlp.down_proj.weight", [h, i], normal([h, i])),
            (p + "input_layernorm.weight", [h], ones([h])),
            (p + "post_attention_layernorm.weight", [h], ones([h])),
        ])
    groups.append([("model.norm.weight", [h], ones([h])), ("lm_head.weight", [v, h], normal([v, h]))])

    os.makedirs(a.out, exist_ok=True)
    shards = max(1, min(a.shards, len(groups)))
    per = math.ceil(len(groups) / shards)
    weight_map = {}
    total = 0
    names = []
    for s in range(shards):
        chunk = [t for g in groups[s * per:(s + 1) * per] for t in g]
        if not chunk:
            continue
        names.append(chunk)
    shards = len(names)
    for s, chunk in enumerate(names):
        fname = "model-%05d-of-%05d.safetensors" % (s + 1, shards) if shards > 1 else "model.safetensors"
        total += write_safetensors(os.path.join(a.out, fname), chunk, a.dtype, a.unaligned, {"format": "pt"})
        for name, _, _ in chunk:
            weight_map[name] = fname
    if shards > 1:
        with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": h,
                   "intermediate_size": i, "num_hidden_layers": a.layers, "vocab_size": v}, f, indent=2)


if __name__ == "__main__":
    main()

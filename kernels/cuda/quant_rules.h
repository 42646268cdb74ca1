// Per-element quantization rules shared by the CUDA kernels and their host-side checks.
//
// Everything here is a plain function on scalars marked SLI_HD (from sli/dtype.h), so the same
// source is compiled by g++ for the host and by nvcc for the device: the device kernels and
// the host reference loops in tests/cuda/ cannot drift apart. The rules are those of
// /work/shared/reference/bitsandbytes-format.md (NF4 / FP4 codebooks and CUDA thresholds, the
// dynamic 8-bit map search, double-quant absmax reconstruction), LLM.int8 and PyTorch
// per-channel qint8 dequantization, and llama.cpp Q4_0.
//
// Rounding: every float32 operation that must round separately is written with
// mulRn()/addRn(), which lower to __fmul_rn/__fadd_rn on the device, so nvcc can never fuse
// them into an FMA (that would change the last bit relative to the CPU, which computes the two
// float32 roundings bnb + torch perform). Host code is built with -std=c++20 (GCC: no FP
// contraction) and without FMA in the baseline ISA. Reciprocals and divisions are IEEE
// (correctly rounded), never rcp.approx: see quantization tolerance in dequant.cuh / quant.cuh.
//
// The codebooks, thresholds, encoders and the dynamic-map search are NOT defined here: they
// come from kernels/blocks.h, the CPU reference's own header, so CPU and GPU share one copy.
// This header only adds what the device kernels need on top (IEEE reciprocal / division, the
// row-wise and Q4_0 element formulas, the LLM.int8 quantization rule) as named functions.
//
// Thread safety: stateless. Errors: none (pure functions).
#pragma once

#include <cstdint>

#include "kernels/blocks.h"
#include "sli/dtype.h"

namespace sli::kernels::rules {

using sli::kernels::addRn;
using sli::kernels::mulRn;

SLI_HD float subRn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}
// Correctly rounded 1/x and a/b (IEEE); never the approximate rcp / __fdividef.
SLI_HD float rcpRn(float x) {
#if defined(__CUDA_ARCH__)
    return __frcp_rn(x);
#else
    return 1.0f / x;
#endif
}
SLI_HD float divRn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}
SLI_HD bool isNan(float x) { return x != x; }
SLI_HD bool isFinite(float x) { return (floatBits(x) & 0x7f800000u) != 0x7f800000u; }

// ---- codebooks and encoders: kernels/blocks.h --------------------------------------------
// NF4 thresholds are the float32 midpoints (see blocks.h on the 4 that a decimal f-literal
// rounds one ulp outward); FP4 uses bnb's CUDA literals; FP4 code 8 decodes to -0.0.
SLI_HD float nf4Value(unsigned code) { return sli::kernels::nf4Decode(static_cast<uint8_t>(code)); }
SLI_HD float fp4Value(unsigned code) { return sli::kernels::fp4Decode(static_cast<uint8_t>(code)); }
SLI_HD unsigned nf4Encode(float x) { return sli::kernels::nf4Encode(x); }
SLI_HD unsigned fp4Encode(float x) { return sli::kernels::fp4Encode(x); }
SLI_HD unsigned dynamicEncode(const float* code, float x) { return sli::kernels::dynamicEncode(code, x); }

// ---- dequantization formulas ----------------------------------------------------------------
// 4-bit: RNE_cast(fl32(LUT[nibble] * absmax)).
SLI_HD float dequant4(float lutValue, float absmax) { return mulRn(lutValue, absmax); }
// Double quant (spec 3): fl32(fl32(nqm[code] * nested_absmax[b / 256]) + offset): two roundings
// (blocks.h reconstructNestedAbsmax, with the map entry already loaded from shared memory).
SLI_HD float nestedAbsmax(float nqmValue, float nestedAbsmaxValue, float offset) {
    return addRn(mulRn(nqmValue, nestedAbsmaxValue), offset);
}
// LLM.int8 (bnb int8_vectorwise_dequant, golden check_dequant_formula):
// fl32(fl32(CB * SCB) * fl32(7.874015718698502e-3)).
SLI_HD float dequantInt8(int8_t q, float scb) {
    return mulRn(mulRn(static_cast<float>(q), scb), sli::kernels::kInt8DequantFactor);
}
// PyTorch per-channel qint8 (zero point 0): fl32(q * scale).
SLI_HD float dequantInt8Dynamic(int8_t q, float scale) { return mulRn(static_cast<float>(q), scale); }
// llama.cpp Q4_0: fl32(fl32(fp16 d) * (q - 8)).
SLI_HD float dequantQ4_0(unsigned nibble, float d) {
    return mulRn(d, static_cast<float>(static_cast<int>(nibble) - 8));
}

// ---- quantization formulas (GPU quantizer; the CPU reference applies the same) ------------
// LLM.int8 weights: the source is rounded to fp16 first (bnb Int8Params); SCB = row max |w16|;
// CB = rne(w16 * fl32(127 / SCB)) with an IEEE division (bnb default backend; bnb's CUDA
// kernel uses __fdividef, which can differ by +-1 within ~2 ulp of a .5 tie). A zero row:
// 127/0 = inf, 0 * inf = NaN -> 0.
SLI_HD float int8Scale(float scb) { return divRn(127.0f, scb); }
SLI_HD int8_t int8Encode(float w16, float scale) {
    const float v = mulRn(w16, scale);
    if (isNan(v)) return 0;
#if defined(__CUDA_ARCH__)
    int q = __float2int_rn(v);
#else
    // Round half to even without <cmath>: values are within [-127, 127] here.
    float r = static_cast<float>(static_cast<int>(v));  // truncation toward zero
    float diff = v - r;
    int q = static_cast<int>(r);
    if (diff > 0.5f || (diff == 0.5f && (q & 1))) ++q;
    else if (diff < -0.5f || (diff == -0.5f && (q & 1))) --q;
#endif
    if (q > 127) q = 127;
    if (q < -127) q = -127;
    return static_cast<int8_t>(q);
}
// f32 rounded through fp16 (RNE), as bnb casts LLM.int8 weights to fp16.
SLI_HD float roundThroughF16(float x) { return f16ToF32(f32ToF16(x)); }

}  // namespace sli::kernels::rules

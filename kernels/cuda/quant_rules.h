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
// Note for the kernels module: kernels/blocks.h (the CPU reference's block structs and
// codebooks) is meant to become the single home of these tables; once it lands, this header
// includes it and keeps only what the device needs on top. Until then the tables below are
// the spec's, bit pattern for bit pattern (tests/cuda checks them against the golden vectors).
//
// Thread safety: stateless. Errors: none (pure functions).
#pragma once

#include <cstdint>

#include "sli/dtype.h"

namespace sli::kernels::rules {

SLI_HD float mulRn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
SLI_HD float addRn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}
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

// ---- 4-bit codebooks (spec 1.1 / 1.2), as float32 bit patterns -----------------------------
// Switches, not arrays: a runtime-indexed local array would live in device local memory.
// Kernels copy these into shared memory once per block.
SLI_HD uint32_t nf4Bits(unsigned code) {
    switch (code & 15u) {
        case 0: return 0xbf800000u;
        case 1: return 0xbf3239b1u;
        case 2: return 0xbf066b30u;
        case 3: return 0xbeca32a0u;
        case 4: return 0xbe91a24du;
        case 5: return 0xbe3d353fu;
        case 6: return 0xbdba7871u;
        case 7: return 0x00000000u;
        case 8: return 0x3da2faffu;
        case 9: return 0x3e24cae3u;
        case 10: return 0x3e7c04ddu;
        case 11: return 0x3ead033au;
        case 12: return 0x3ee1a4b8u;
        case 13: return 0x3f1007abu;
        case 14: return 0x3f3913b3u;
        default: return 0x3f800000u;
    }
}
// bnb's FP4: value = lut[code & 7] * (1 - 2 * bit3), so code 8 decodes to -0.0 (as the CUDA
// and CPU C++ kernels do; the torch default backend's quant_map gives +0.0 there).
SLI_HD uint32_t fp4Bits(unsigned code) {
    uint32_t mag;
    switch (code & 7u) {
        case 0: mag = 0x00000000u; break;
        case 1: mag = 0x3baaaaabu; break;
        case 2: mag = 0x3f2aaaabu; break;
        case 3: mag = 0x3f800000u; break;
        case 4: mag = 0x3eaaaaabu; break;
        case 5: mag = 0x3f000000u; break;
        case 6: mag = 0x3e2aaaabu; break;
        default: mag = 0x3e800000u; break;
    }
    return mag | ((code & 8u) ? 0x80000000u : 0u);
}
SLI_HD float nf4Value(unsigned code) { return bitsFloat(nf4Bits(code)); }
SLI_HD float fp4Value(unsigned code) { return bitsFloat(fp4Bits(code)); }

// ---- 4-bit encoders (CUDA kernels.cu dQuantizeNF4 / dQuantizeFP4, spec 1.1 / 1.2) ---------
// code = number of thresholds t with x > t (strict: ties go to the lower code; NaN -> 0).
// The thresholds are the float32 midpoints fl32((c[i] + c[i+1]) / 2) of the codebook (spec
// 1.1, and what the golden vectors' CUDA rule uses), written as bit patterns. Caution: bnb's
// kernels.cu writes them as decimal literals with an `f` suffix (-0.8480964004993439f, ...);
// a C++ compiler rounds those directly from decimal, which for 4 of the 15 (0/1, 8/9, 12/13,
// 14/15) gives the float32 one ulp further from zero than the midpoint (the decimals are the
// double midpoints, which are exact float32 ties). Only an input whose normalized value is
// exactly one of those 4 midpoints can get a different code (one step) from bnb's CUDA build.
SLI_HD unsigned nf4Encode(float x) {
    unsigned c = 0;
    c += x > bitsFloat(0xbf591cd8u);  // -0.8480964004993439
    c += x > bitsFloat(0xbf1c5270u);  // -0.6106329262256622
    c += x > bitsFloat(0xbeeb8480u);  // -0.4599952697753906
    c += x > bitsFloat(0xbeadea76u);  // -0.33967943489551544
    c += x > bitsFloat(0xbe703cecu);  // -0.23460740596055984
    c += x > bitsFloat(0xbe0d38bcu);  // -0.13791173323988914
    c += x > bitsFloat(0xbd3a7871u);  // -0.045525018125772476
    c += x > bitsFloat(0x3d22faffu);  // 0.03979014977812767
    c += x > bitsFloat(0x3df64862u);  // 0.1202552504837513
    c += x > bitsFloat(0x3e5067e0u);  // 0.2035212516784668
    c += x > bitsFloat(0x3e9582d4u);  // 0.2920137718319893
    c += x > bitsFloat(0x3ec753f9u);  // 0.3893125355243683
    c += x > bitsFloat(0x3f006d04u);  // 0.5016634166240692
    c += x > bitsFloat(0x3f248dafu);  // 0.6427869200706482
    c += x > bitsFloat(0x3f5c89dau);  // 0.8614784181118011
    return c;
}
// The CUDA literals, not exact midpoints (spec 1.2): byte-exact with bnb's CUDA kernel.
SLI_HD unsigned fp4Encode(float x) {
    const unsigned sign = x < 0.0f ? 8u : 0u;
    const float a = x < 0.0f ? -x : x;  // NaN stays NaN: every comparison below is false
    unsigned m;
    if (a > 0.29166667f) {
        if (a > 0.583333f) m = a > 0.8333333f ? 3u : 2u;
        else m = a > 0.4166667f ? 5u : 4u;
    } else {
        if (a > 0.0859375f) m = a > 0.20833333f ? 7u : 6u;
        else m = a > 0.00260417f ? 1u : 0u;
    }
    return sign | m;
}

// ---- dynamic 8-bit map search (CUDA kernels.cu dQuantize<0>, spec 1.3) --------------------
// `code` is the 256-entry map (ascending). Ties resolve toward the even pivot; NaN -> 0.
SLI_HD unsigned dynamicEncode(const float* code, float x) {
    int pivot = 127;
    int upperPivot = 255;
    int lowerPivot = 0;
    float lower = -1.0f;
    float upper = 1.0f;
    float val = code[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lowerPivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upperPivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = code[pivot];
    }
    if (upperPivot == 255) upper = code[upperPivot];
    if (lowerPivot == 0) lower = code[lowerPivot];
    if (x > val) {
        const float mid = mulRn(addRn(upper, val), 0.5f);
        return x > mid ? static_cast<unsigned>(upperPivot) : static_cast<unsigned>(pivot);
    }
    const float mid = mulRn(addRn(lower, val), 0.5f);
    return x < mid ? static_cast<unsigned>(lowerPivot) : static_cast<unsigned>(pivot);
}

// ---- dequantization formulas ----------------------------------------------------------------
// 4-bit: RNE_cast(fl32(LUT[nibble] * absmax)).
SLI_HD float dequant4(float lutValue, float absmax) { return mulRn(lutValue, absmax); }
// Double quant (spec 3): fl32(fl32(nqm[code] * nested_absmax[b / 256]) + offset): two roundings.
SLI_HD float nestedAbsmax(float nqmValue, float nestedAbsmaxValue, float offset) {
    return addRn(mulRn(nqmValue, nestedAbsmaxValue), offset);
}
// LLM.int8 (bnb int8_vectorwise_dequant, golden check_dequant_formula):
// fl32(fl32(CB * SCB) * fl32(7.874015718698502e-3)).
inline constexpr float kInv127 = 7.874015718698502e-3f;
SLI_HD float dequantInt8(int8_t q, float scb) {
    return mulRn(mulRn(static_cast<float>(q), scb), kInv127);
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

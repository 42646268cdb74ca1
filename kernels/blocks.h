// Quantization block layouts, codebooks and per-element encode / decode rules, shared by the
// CPU kernels (reference and SIMD) and the CUDA kernels.
//
// Everything here is a plain struct, a constant table or an SLI_HD (host + device) function on
// floats and integers: no CPU-only type, no allocation, no state, so .cu files can include it.
// The semantics are bitsandbytes' CUDA kernels (csrc/kernels.cu at the commit named in
// ../shared/reference/bitsandbytes-format.md, "spec") and llama.cpp's Q4_0:
//
//   NF4 encode   code = number of NF4 midpoints t with x > t (strict: ties go to the lower code,
//                NaN gives 0000), exactly CUDA dQuantizeNF4.
//   FP4 encode   sign = (x < 0) ? 8 : 0, magnitude by CUDA dQuantizeFP4's literal thresholds
//                (not exact midpoints), strict >, NaN gives 0000.
//   8-bit encode CUDA dQuantize<0>: 7-step pivot search over a 256-entry sorted map, then the
//                nearest of the neighbours with midpoints (a+b)*0.5f; ties go to the even index;
//                NaN gives index 0.
//   decode       value = codebook[code]; the caller multiplies by the block absmax in float32.
//                FP4 code 1000 decodes to -0.0 (CUDA: lut[0] * -1), not the +0.0 of quant_map.
//
// Thread safety: everything is constant or pure.
#pragma once

#include <cstdint>

#include "sli/dtype.h"

namespace sli::kernels {

// ---- block structs -----------------------------------------------------------------------------

// llama.cpp / GGUF Q4_0: 32 weights, an fp16 scale d, element j in the low nibble of qs[j] and
// element j + 16 in the high nibble. y = (q - 8) * d.
inline constexpr int kQk4_0 = 32;
struct block_q4_0 {  // NOLINT(readability-identifier-naming): ggml's name, kept recognizable
    uint16_t d;      // IEEE binary16 bits
    uint8_t qs[kQk4_0 / 2];
};
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 must be 18 bytes as in ggml");
static_assert(alignof(block_q4_0) == 2, "block_q4_0 is 2-byte aligned as in ggml");

// bitsandbytes 4-bit payloads have no block struct: codes are packed two per byte over the
// flattened tensor, element 2k in the HIGH nibble of byte k, element 2k + 1 in the LOW nibble;
// absmax (f32) is a separate array, one per `blocksize` consecutive elements.
inline constexpr int kMin4bitBlocksize = 32;
inline constexpr int kMax4bitBlocksize = 4096;
inline constexpr int kNestedBlocksize = 256;  // double quant: absmax codes per nested block

// ---- codebooks ---------------------------------------------------------------------------------

// The literal lists, written once (spec §1.1 / §1.2). Every literal is exactly a float32.
#define SLI_NF4_CODEBOOK                                                                        \
    {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,                \
     -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,               \
     0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,  \
     0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f}
// FP4 in CUDA bit order: index = s e1 e0 m, the negatives are lut[v & 7] * -1 (so 8 is -0.0).
#define SLI_FP4_CODEBOOK                                                                         \
    {0.0f, 0.0052083334885537624f, 0.6666666865348816f, 1.0f, 0.3333333432674408f, 0.5f,        \
     0.1666666716337204f, 0.25f, -0.0f, -0.0052083334885537624f, -0.6666666865348816f, -1.0f,    \
     -0.3333333432674408f, -0.5f, -0.1666666716337204f, -0.25f}
// The 15 NF4 decision thresholds of CUDA dQuantizeNF4 (spec §1.1): the float32 midpoints
// fl32((c[i] + c[i+1]) / 2) of neighbouring codes, written as hex floats so every compiler reads
// the same bits. Caveat: CUDA spells them as decimal float literals (-0.8480964004993439f, ...);
// for indices 0, 8, 12 and 14 the exact midpoint is a float32 tie, and a compiler that rounds
// the decimal text directly to float (GCC does) lands 1 ulp away from the tie-to-even value used
// here. Only an input whose x * inv equals one of those four values exactly can code differently.
// bitsandbytes' CPU backend and the spec agree with these values.
#define SLI_NF4_THRESHOLDS                                                                    \
    {-0x1.b239bp-1f, -0x1.38a4ep-1f,  -0x1.d709p-2f,   -0x1.5bd4ecp-2f, -0x1.e079d8p-3f,        \
     -0x1.1a7178p-3f, -0x1.74f0e2p-5f, 0x1.45f5fep-5f,  0x1.ec90c4p-4f,  0x1.a0cfcp-3f,         \
     0x1.2b05a8p-2f,  0x1.8ea7f2p-2f,  0x1.00da08p-1f,  0x1.491b5ep-1f,  0x1.b913b4p-1f}
// The 7 FP4 magnitude thresholds of CUDA dQuantizeFP4, ascending, as the CUDA literals round
// (5 of them differ by 1-6 ulp from exact midpoints; byte-exactness with CUDA needs these).
#define SLI_FP4_THRESHOLDS                                                                    \
    {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f}

inline constexpr float kNf4Codebook[16] = SLI_NF4_CODEBOOK;
inline constexpr float kFp4Codebook[16] = SLI_FP4_CODEBOOK;
inline constexpr float kNf4Thresholds[15] = SLI_NF4_THRESHOLDS;
inline constexpr float kFp4Thresholds[7] = SLI_FP4_THRESHOLDS;
// FP4 magnitude code for k = number of FP4 thresholds below |x| (CUDA's tree, flattened).
inline constexpr uint8_t kFp4MagnitudeCode[8] = {0b000, 0b001, 0b110, 0b111,
                                                 0b100, 0b101, 0b010, 0b011};

// The stored `quant_map` of bitsandbytes (get_4bit_type): for FP4 index 8 is +0.0 there.
// Written with tensors for compatibility; decoding uses the CUDA tables above.
inline constexpr float kNf4QuantMap[16] = SLI_NF4_CODEBOOK;
inline constexpr float kFp4QuantMap[16] = {0.0f, 0.0052083334885537624f, 0.6666666865348816f,
                                           1.0f, 0.3333333432674408f, 0.5f,
                                           0.1666666716337204f, 0.25f, 0.0f,
                                           -0.0052083334885537624f, -0.6666666865348816f,
                                           -1.0f, -0.3333333432674408f, -0.5f,
                                           -0.1666666716337204f, -0.25f};

// Canonical bitsandbytes create_dynamic_map() (signed, 7 exponent bits, 8 bits total), the
// FMA variant every public dump agrees with: spec Appendix A, float32 bit patterns, ascending.
// SHA-256 of the 256 little-endian floats: e732639a65f497b4ad684bb166a4467708255edd5207...
// Decoders must use the map stored with a tensor (nested_quant_map), never regenerate it.
inline constexpr uint32_t kDynamicMapBits[256] = {
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
};

// LLM.int8 dequantization factor as bitsandbytes writes it (_ops.py: 7.874015718698502e-3 ~ 1/127):
// W = fl32(fl32(CB * SCB) * kInt8DequantFactor).
inline constexpr float kInt8DequantFactor = static_cast<float>(7.874015718698502e-3);
// INT8_DYNAMIC: scale = max(absmax / 127.5f, kInt8DynamicEps) (torch's observer eps, 2^-23).
inline constexpr float kInt8DynamicEps = 1.1920928955078125e-07f;

// ---- per-element encode / decode ---------------------------------------------------------------

// Explicitly rounded float32 operations for the expressions that must be bit-exact. Host code
// is compiled with -ffp-contract=off; nvcc contracts a*b+c into an FMA unless told otherwise.
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

// NF4: x is already normalized (x * (1/absmax)). Counting is the same as CUDA's decision tree
// because the thresholds ascend; every comparison is false for NaN, so NaN -> 0.
SLI_HD uint8_t nf4Encode(float x) {
    const float t[15] = SLI_NF4_THRESHOLDS;
    uint8_t code = 0;
    for (int i = 0; i < 15; ++i) code = static_cast<uint8_t>(code + (x > t[i] ? 1 : 0));
    return code;
}

// FP4 (bnb E2M1 variant, bit order s e1 e0 m), CUDA dQuantizeFP4 semantics.
SLI_HD uint8_t fp4Encode(float x) {
    const float t[7] = SLI_FP4_THRESHOLDS;
    const uint8_t mag[8] = {0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011};
    const uint8_t sign = x < 0.0f ? 8 : 0;  // -0.0 and NaN: no sign bit
    const float a = x < 0.0f ? -x : x;  // |x|; NaN stays NaN
    int k = 0;
    for (int i = 0; i < 7; ++i) k += a > t[i] ? 1 : 0;
    return static_cast<uint8_t>(sign | mag[k]);
}

SLI_HD float nf4Decode(uint8_t code) {
    const float lut[16] = SLI_NF4_CODEBOOK;
    return lut[code & 15u];
}

SLI_HD float fp4Decode(uint8_t code) {
    const float lut[16] = SLI_FP4_CODEBOOK;
    return lut[code & 15u];
}

// CUDA dQuantize<0> (non-stochastic): index of the nearest entry of a sorted 256-entry map.
// x is normalized (x * (1/absmax)). Ties between two entries go to the even index p that the
// search ends on; NaN -> 0.
SLI_HD uint8_t dynamicEncode(const float* code, float x) {
    // The search as bitsandbytes writes it (pivot 127, steps 64..1, then the midpoint against
    // the last entry passed on the side x lies), with each step's choice applied by bit masks
    // rather than branches: seven data-dependent branches per value mispredicted about half the
    // time, and double quant spent most of its time there. The bounds are tracked as indices:
    // bitsandbytes' `lower` / `upper` values always equal code[lowerPivot] / code[upperPivot]
    // by the end (its initial -1 / 1 are replaced by code[0] / code[255] when never moved).
    int pivot = 127;
    int upperPivot = 255;
    int lowerPivot = 0;
    float val = code[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        const int up = -static_cast<int>(x > val);  // all ones when x lies above val
        lowerPivot = (pivot & up) | (lowerPivot & ~up);
        upperPivot = (upperPivot & up) | (pivot & ~up);
        pivot += (i & up) - (i & ~up);
        val = code[pivot];
    }
    const int up = -static_cast<int>(x > val);
    const int beyond = (upperPivot & up) | (lowerPivot & ~up);
    const float midpoint = (code[beyond] + val) * 0.5f;
    // Past the midpoint, away from val: x > midpoint above it, x < midpoint below.
    const int far = ((-static_cast<int>(x > midpoint)) & up) | ((-static_cast<int>(x < midpoint)) & ~up);
    return static_cast<uint8_t>((beyond & far) | (pivot & ~far));
}

// Double-quant absmax reconstruction: two float32 roundings, never fused.
SLI_HD float reconstructNestedAbsmax(const float* nestedQuantMap, uint8_t q, float nestedAbsmaxValue,
                          float offset) {
    return addRn(mulRn(nestedQuantMap[q], nestedAbsmaxValue), offset);
}

// Q4_0 decode of one block into 32 floats: y[j] = (q - 8) * d.
SLI_HD void q4_0Decode(const block_q4_0& b, float* y) {
    const float d = f16ToF32(b.d);
    for (int j = 0; j < kQk4_0 / 2; ++j) {
        y[j] = mulRn(static_cast<float>((b.qs[j] & 0x0f) - 8), d);
        y[j + kQk4_0 / 2] = mulRn(static_cast<float>((b.qs[j] >> 4) - 8), d);
    }
}

// Q4_0 encode of one block of 32 floats, exactly llama.cpp quantize_row_q4_0_ref: the signed
// value of the first element of largest magnitude (NaN never wins; an all-zero block keeps
// +0.0, so d = -0.0), d = max / -8, id = d ? 1/d : 0, q = min(15, (int8)(x * id + 8.5)).
// NaN elements (and Inf * 0) get q = 0, as x86 builds of llama.cpp produce.
SLI_HD void q4_0Encode(const float* x, block_q4_0& b) {
    float amax = 0.0f;
    float max = 0.0f;
    for (int j = 0; j < kQk4_0; ++j) {
        const float v = x[j];
        const float a = v < 0.0f ? -v : v;
        if (amax < a) {
            amax = a;
            max = v;
        }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b.d = f32ToF16(d);
    for (int j = 0; j < kQk4_0 / 2; ++j) {
        uint8_t q[2];
        for (int h = 0; h < 2; ++h) {
            const float t = addRn(mulRn(x[j + h * (kQk4_0 / 2)], id), 8.5f);
            // t is in [0.5, 16.5] for finite inputs; NaN (and any negative) -> 0.
            q[h] = t >= 1.0f ? static_cast<uint8_t>(t < 15.0f ? static_cast<int>(t) : 15) : 0;
        }
        b.qs[j] = static_cast<uint8_t>(q[0] | (q[1] << 4));
    }
}

}  // namespace sli::kernels

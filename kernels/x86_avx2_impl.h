// AVX2 + FMA + F16C kernel bodies, included by avx2.cpp (and by avx512.cpp, which reuses the
// entries it does not widen). Internal to kernels/.
//
// Everything here has internal linkage (anonymous namespace) and calls no inline function with
// external linkage (no sli::f32ToF16, no std::min): a TU compiled with ISA flags must not emit
// a COMDAT copy that the linker could pick for code running on a CPU without that ISA. Scalar
// remainders (a partial last 4-bit block) go through the reference table instead. Every
// result is bit-identical to the reference (tests/kernels/simd_test.cpp); the kernels assume
// the default MXCSR (round to nearest even, no FTZ / DAZ), as the scalar reference does.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/cpu_kernels.h"

namespace sli::kernels {
namespace {
namespace x86 {

constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

inline int64_t minI64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---- conversions and stores ---------------------------------------------------------------

// 8 x f32 -> 8 x bf16 (RNE; NaN -> quiet NaN keeping the sign and top payload bits), exactly
// sli::f32ToBf16.
inline __m128i f32x8ToBf16(__m256 v) {
    const __m256i x = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(x, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb));
    r = _mm256_srli_epi32(r, 16);
    const __m256i nan = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
    const __m256 isNan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    r = _mm256_blendv_epi8(r, nan, _mm256_castps_si256(isNan));
    const __m256i packed = _mm256_packus_epi32(r, r);  // [0..3 0..3 | 4..7 4..7]
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}

inline void store8(DType dst, void* out, int64_t i, __m256 v) {
    auto* o = static_cast<uint8_t*>(out);
    if (dst == DType::kF32) {
        _mm256_storeu_ps(reinterpret_cast<float*>(o + i * 4), v);
    } else if (dst == DType::kF16) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + i * 2), _mm256_cvtps_ph(v, kRne));
    } else {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + i * 2), f32x8ToBf16(v));
    }
}

// Stores the first `count` (< 8) lanes.
inline void storePartial8(DType dst, void* out, int64_t i, __m256 v, int count) {
    alignas(32) uint8_t tmp[32];
    store8(dst, tmp, 0, v);
    const size_t esz = dst == DType::kF32 ? 4 : 2;
    std::memcpy(static_cast<uint8_t*>(out) + i * static_cast<int64_t>(esz), tmp,
                static_cast<size_t>(count) * esz);
}

inline __m256 load8(DType src, const void* in, int64_t i) {
    const auto* p = static_cast<const uint8_t*>(in);
    if (src == DType::kF32) return _mm256_loadu_ps(reinterpret_cast<const float*>(p + i * 4));
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i * 2));
    if (src == DType::kF16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

inline float loadF32(const void* p, int64_t i) {
    float v;
    std::memcpy(&v, static_cast<const uint8_t*>(p) + i * 4, 4);
    return v;
}

// ---- 16-entry table expansion: out[i] = T(fl32(lut[idx[i]] * scale)) -----------------------

// The 16 products of one block, converted once to the output type and split so that vpshufb
// can look them up: 16-bit outputs use a low-byte and a high-byte table (both lanes);
// f32 outputs keep the two 8-float halves for vpermps.
struct Lut16 {
    __m256i lo8, hi8;  // f16 / bf16: byte planes, broadcast to both lanes
    __m256 f0, f1;     // f32: products 0..7 and 8..15
};

inline Lut16 makeLut16(DType dst, __m256 lut0, __m256 lut1, float scale) {
    Lut16 t;
    const __m256 s = _mm256_set1_ps(scale);
    t.f0 = _mm256_mul_ps(lut0, s);
    t.f1 = _mm256_mul_ps(lut1, s);
    if (dst == DType::kF32) return t;
    __m128i h0, h1;
    if (dst == DType::kF16) {
        h0 = _mm256_cvtps_ph(t.f0, kRne);
        h1 = _mm256_cvtps_ph(t.f1, kRne);
    } else {
        h0 = f32x8ToBf16(t.f0);
        h1 = f32x8ToBf16(t.f1);
    }
    const __m128i split = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    h0 = _mm_shuffle_epi8(h0, split);  // [lo bytes 0..7 | hi bytes 0..7]
    h1 = _mm_shuffle_epi8(h1, split);  // [lo bytes 8..15 | hi bytes 8..15]
    t.lo8 = _mm256_broadcastsi128_si256(_mm_unpacklo_epi64(h0, h1));
    t.hi8 = _mm256_broadcastsi128_si256(_mm_unpackhi_epi64(h0, h1));
    return t;
}

// Non-temporal stores for outputs far larger than the caches (no read-for-ownership of lines
// that are overwritten whole); only when the output is 32-byte aligned. Callers sfence after.
constexpr int64_t kStreamMinBytes = int64_t{8} << 20;
inline bool useStreaming(const void* out, int64_t bytes) {
    return bytes >= kStreamMinBytes && (reinterpret_cast<uintptr_t>(out) & 31) == 0;
}
inline void put256(void* p, __m256i v, bool stream) {
    if (stream) {
        _mm256_stream_si256(static_cast<__m256i*>(p), v);
    } else {
        _mm256_storeu_si256(static_cast<__m256i*>(p), v);
    }
}

// idx: 32 indices (0..15), byte i of lane 0 = element i, byte i of lane 1 = element 16 + i.
inline void expand32(DType dst, const Lut16& t, __m256i idx, void* out, int64_t i,
                     bool stream = false) {
    auto* o = static_cast<uint8_t*>(out);
    if (dst == DType::kF32) {
        const __m128i idxLo = _mm256_castsi256_si128(idx);
        const __m128i idxHi = _mm256_extracti128_si256(idx, 1);
        const __m128i parts[4] = {idxLo, _mm_srli_si128(idxLo, 8), idxHi, _mm_srli_si128(idxHi, 8)};
        for (int k = 0; k < 4; ++k) {
            const __m256i d = _mm256_cvtepu8_epi32(parts[k]);
            const __m256 a = _mm256_permutevar8x32_ps(t.f0, d);
            const __m256 b = _mm256_permutevar8x32_ps(t.f1, d);
            const __m256 v = _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(d, 28)));
            put256(o + (i + 8 * k) * 4, _mm256_castps_si256(v), stream);
        }
        return;
    }
    const __m256i lo = _mm256_shuffle_epi8(t.lo8, idx);
    const __m256i hi = _mm256_shuffle_epi8(t.hi8, idx);
    const __m256i w0 = _mm256_unpacklo_epi8(lo, hi);  // elements 0..7 | 16..23
    const __m256i w1 = _mm256_unpackhi_epi8(lo, hi);  // elements 8..15 | 24..31
    put256(o + i * 2, _mm256_permute2x128_si256(w0, w1, 0x20), stream);
    put256(o + (i + 16) * 2, _mm256_permute2x128_si256(w0, w1, 0x31), stream);
}

// 16 packed bytes (bitsandbytes order: element 2k = high nibble of byte k) -> 32 indices.
inline __m256i bnbIndices(const uint8_t* p) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i m = _mm_set1_epi8(0x0f);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    const __m128i lo = _mm_and_si128(b, m);
    return _mm256_set_m128i(_mm_unpackhi_epi8(hi, lo), _mm_unpacklo_epi8(hi, lo));
}

// 16 Q4_0 qs bytes -> 32 indices (element j = low nibble of qs[j], j + 16 = high nibble).
inline __m256i q4Indices(const uint8_t* qs) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m128i m = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}

// ---- NF4 / FP4 ---------------------------------------------------------------------------------

inline void dequantize4bit(Codebook4 cb, const uint8_t* packed, const float* absmax, int64_t n,
                           int blocksize, DType dst, void* out) {
    const float* cbook = cb == Codebook4::kNf4 ? kNf4Codebook : kFp4Codebook;
    const __m256 lut0 = _mm256_loadu_ps(cbook);
    const __m256 lut1 = _mm256_loadu_ps(cbook + 8);
    const int64_t fullBlocks = n / blocksize;
    const bool stream = useStreaming(out, n * (dst == DType::kF32 ? 4 : 2));
    for (int64_t b = 0; b < fullBlocks; ++b) {
        const Lut16 t = makeLut16(dst, lut0, lut1, loadF32(absmax, b));
        const int64_t begin = b * blocksize;
        for (int64_t i = begin; i < begin + blocksize; i += 32) {
            expand32(dst, t, bnbIndices(packed + i / 2), out, i, stream);
        }
    }
    if (stream) _mm_sfence();
    const int64_t done = fullBlocks * blocksize;
    if (done < n) {  // partial last block
        const size_t esz = dst == DType::kF32 ? 4 : 2;
        referenceKernels().dequantize4bit(cb, packed + done / 2, absmax + fullBlocks, n - done,
                                          blocksize, dst,
                                          static_cast<uint8_t*>(out) + done * static_cast<int64_t>(esz));
    }
}

// Code = number of thresholds below x, found by a 4-level binary search (same as counting,
// since thresholds ascend; every comparison is false for NaN, so NaN -> 0).
inline __m256i nf4Codes(__m256 x) {
    // Thresholds t[0..14]; t[c-1] < x <= t[c] gives code c.
    const __m256 t7 = _mm256_set1_ps(kNf4Thresholds[7]);
    const __m256 t3 = _mm256_set1_ps(kNf4Thresholds[3]);
    const __m256 t11 = _mm256_set1_ps(kNf4Thresholds[11]);
    const __m256 tOdd = _mm256_setr_ps(kNf4Thresholds[1], kNf4Thresholds[5], kNf4Thresholds[9],
                                       kNf4Thresholds[13], 0, 0, 0, 0);
    const __m256 tEven = _mm256_setr_ps(kNf4Thresholds[0], kNf4Thresholds[2], kNf4Thresholds[4],
                                        kNf4Thresholds[6], kNf4Thresholds[8], kNf4Thresholds[10],
                                        kNf4Thresholds[12], kNf4Thresholds[14]);
    const __m256 m3 = _mm256_cmp_ps(x, t7, _CMP_GT_OQ);
    const __m256 m2 = _mm256_cmp_ps(x, _mm256_blendv_ps(t3, t11, m3), _CMP_GT_OQ);
    const __m256i b3 = _mm256_srli_epi32(_mm256_castps_si256(m3), 31);
    const __m256i b2 = _mm256_srli_epi32(_mm256_castps_si256(m2), 31);
    const __m256i j2 = _mm256_add_epi32(_mm256_add_epi32(b3, b3), b2);  // 2*b3 + b2
    const __m256 m1 = _mm256_cmp_ps(x, _mm256_permutevar8x32_ps(tOdd, j2), _CMP_GT_OQ);
    const __m256i b1 = _mm256_srli_epi32(_mm256_castps_si256(m1), 31);
    const __m256i j3 = _mm256_add_epi32(_mm256_add_epi32(j2, j2), b1);  // 4*b3 + 2*b2 + b1
    const __m256 m0 = _mm256_cmp_ps(x, _mm256_permutevar8x32_ps(tEven, j3), _CMP_GT_OQ);
    const __m256i b0 = _mm256_srli_epi32(_mm256_castps_si256(m0), 31);
    return _mm256_add_epi32(_mm256_add_epi32(j3, j3), b0);
}

inline __m256i fp4Codes(__m256 x) {
    const float* L = kFp4Thresholds;
    const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    const __m256 sign = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    const __m256 lMid = _mm256_setr_ps(L[1], L[5], 0, 0, 0, 0, 0, 0);
    const __m256 lLow = _mm256_setr_ps(L[0], L[2], L[4], L[6], 0, 0, 0, 0);
    const __m256 m2 = _mm256_cmp_ps(a, _mm256_set1_ps(L[3]), _CMP_GT_OQ);
    const __m256i b2 = _mm256_srli_epi32(_mm256_castps_si256(m2), 31);
    const __m256 m1 = _mm256_cmp_ps(a, _mm256_permutevar8x32_ps(lMid, b2), _CMP_GT_OQ);
    const __m256i b1 = _mm256_srli_epi32(_mm256_castps_si256(m1), 31);
    const __m256i j = _mm256_add_epi32(_mm256_add_epi32(b2, b2), b1);  // 2*b2 + b1
    const __m256 m0 = _mm256_cmp_ps(a, _mm256_permutevar8x32_ps(lLow, j), _CMP_GT_OQ);
    const __m256i k = _mm256_add_epi32(_mm256_add_epi32(j, j), _mm256_srli_epi32(_mm256_castps_si256(m0), 31));
    const __m256i mag = _mm256_permutevar8x32_epi32(
        _mm256_setr_epi32(kFp4MagnitudeCode[0], kFp4MagnitudeCode[1], kFp4MagnitudeCode[2],
                          kFp4MagnitudeCode[3], kFp4MagnitudeCode[4], kFp4MagnitudeCode[5],
                          kFp4MagnitudeCode[6], kFp4MagnitudeCode[7]),
        k);
    return _mm256_or_si256(mag, _mm256_and_si256(_mm256_castps_si256(sign), _mm256_set1_epi32(8)));
}

// Four vectors of 8 int32 codes (elements 0..31) -> 16 bytes, element 2k in the high nibble.
inline __m128i packBnb(__m256i c0, __m256i c1, __m256i c2, __m256i c3) {
    const __m256i p16a = _mm256_packus_epi32(c0, c1);  // [0-3 8-11 | 4-7 12-15]
    const __m256i p16b = _mm256_packus_epi32(c2, c3);  // [16-19 24-27 | 20-23 28-31]
    __m256i p8 = _mm256_packus_epi16(p16a, p16b);      // [0-3 8-11 16-19 24-27 | 4-7 ...]
    p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // (c[2k] << 4) | c[2k+1]: unsigned bytes times signed [16, 1], summed per pair.
    const __m256i w = _mm256_maddubs_epi16(p8, _mm256_set1_epi16(0x0110));
    return _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
}

inline void quantize4bit(Codebook4 cb, const float* src, int64_t n, int blocksize,
                         uint8_t* packed, float* absmax) {
    const int64_t fullBlocks = n / blocksize;
    const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < fullBlocks; ++b) {
        const float* x = src + b * blocksize;
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        for (int i = 0; i < blocksize; i += 16) {
            // max(|x|, acc) returns acc when |x| is NaN: NaN never wins, as with fmax.
            acc0 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), absMask), acc0);
            acc1 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i + 8), absMask), acc1);
        }
        const float am = hmax8(_mm256_max_ps(acc0, acc1));
        std::memcpy(reinterpret_cast<uint8_t*>(absmax) + b * 4, &am, 4);
        const __m256 inv = _mm256_set1_ps(1.0f / am);
        uint8_t* out = packed + b * blocksize / 2;
        for (int i = 0; i < blocksize; i += 32) {
            __m256i c[4];
            for (int k = 0; k < 4; ++k) {
                const __m256 xn = _mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * k), inv);
                c[k] = cb == Codebook4::kNf4 ? nf4Codes(xn) : fp4Codes(xn);
            }
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i / 2), packBnb(c[0], c[1], c[2], c[3]));
        }
    }
    const int64_t done = fullBlocks * blocksize;
    if (done < n) {
        referenceKernels().quantize4bit(cb, src + done, n - done, blocksize, packed + done / 2,
                                        absmax + fullBlocks);
    }
}

// ---- Q4_0 --------------------------------------------------------------------------------------

inline void dequantizeQ4_0(const block_q4_0* src, int64_t nblocks, DType dst, void* out) {
    const __m256 lut0 = _mm256_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1);
    const __m256 lut1 = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    const auto* p = reinterpret_cast<const uint8_t*>(src);
    const bool stream = useStreaming(out, nblocks * kQk4_0 * (dst == DType::kF32 ? 4 : 2));
    for (int64_t b = 0; b < nblocks; ++b) {
        const uint8_t* blk = p + b * static_cast<int64_t>(sizeof(block_q4_0));
        uint16_t dh;
        std::memcpy(&dh, blk, 2);
        const Lut16 t = makeLut16(dst, lut0, lut1, _cvtsh_ss(dh));
        expand32(dst, t, q4Indices(blk + 2), out, b * kQk4_0, stream);
    }
    if (stream) _mm_sfence();
}

inline void quantizeQ4_0(const float* src, int64_t nblocks, block_q4_0* dst) {
    const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    auto* outBytes = reinterpret_cast<uint8_t*>(dst);
    for (int64_t b = 0; b < nblocks; ++b) {
        const float* x = src + b * kQk4_0;
        __m256 v[4], a[4];
        for (int k = 0; k < 4; ++k) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            a[k] = _mm256_and_ps(v[k], absMask);
        }
        const __m256 acc = _mm256_max_ps(_mm256_max_ps(a[0], _mm256_setzero_ps()),
                                         _mm256_max_ps(_mm256_max_ps(a[1], _mm256_setzero_ps()),
                                                       _mm256_max_ps(_mm256_max_ps(a[2], _mm256_setzero_ps()),
                                                                     _mm256_max_ps(a[3], _mm256_setzero_ps()))));
        const float amax = hmax8(acc);
        float max = 0.0f;  // an all-zero (or all-NaN) block keeps +0.0, as llama.cpp
        if (amax > 0.0f) {
            const __m256 am = _mm256_set1_ps(amax);
            uint32_t mask = 0;
            for (int k = 0; k < 4; ++k) {
                mask |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a[k], am, _CMP_EQ_OQ)))
                        << (8 * k);
            }
            max = x[__builtin_ctz(mask)];  // the first element of largest magnitude
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const uint16_t dh = static_cast<uint16_t>(_cvtss_sh(d, kRne));
        const __m256 vid = _mm256_set1_ps(id);
        const __m256 half = _mm256_set1_ps(8.5f);
        const __m256 fifteen = _mm256_set1_ps(15.0f);
        __m256i q[4];
        for (int k = 0; k < 4; ++k) {
            const __m256 t = _mm256_add_ps(_mm256_mul_ps(v[k], vid), half);
            // min(15, t) keeps NaN (minps returns its second operand), truncation turns NaN
            // into INT_MIN and the max with 0 makes it 0, as the reference.
            const __m256i ti = _mm256_cvttps_epi32(_mm256_min_ps(fifteen, t));
            q[k] = _mm256_max_epi32(ti, _mm256_setzero_si256());
        }
        const __m256i lo = _mm256_or_si256(q[0], _mm256_slli_epi32(q[2], 4));  // j = 0..7
        const __m256i hi = _mm256_or_si256(q[1], _mm256_slli_epi32(q[3], 4));  // j = 8..15
        const __m256i p16 = _mm256_packus_epi32(lo, hi);  // [0-3 8-11 | 4-7 12-15]
        __m128i p8 = _mm_packus_epi16(_mm256_castsi256_si128(p16), _mm256_extracti128_si256(p16, 1));
        p8 = _mm_shuffle_epi8(p8, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15));
        uint8_t* o = outBytes + b * static_cast<int64_t>(sizeof(block_q4_0));
        std::memcpy(o, &dh, 2);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 2), p8);
    }
}

// ---- INT8 / INT8_DYNAMIC ---------------------------------------------------------------------

inline void dequantizeInt8(bool llmInt8, const int8_t* q, const float* scale, int64_t rows,
                           int64_t cols, DType dst, void* out) {
    const __m256 factor = _mm256_set1_ps(kInt8DequantFactor);
    for (int64_t r = 0; r < rows; ++r) {
        const __m256 s = _mm256_set1_ps(loadF32(scale, r));
        const int8_t* row = q + r * cols;
        const int64_t base = r * cols;
        int64_t c = 0;
        auto value = [&](__m128i bytes8) {
            __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes8)), s);
            if (llmInt8) v = _mm256_mul_ps(v, factor);
            return v;
        };
        for (; c + 16 <= cols; c += 16) {
            const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c));
            store8(dst, out, base + c, value(b));
            store8(dst, out, base + c + 8, value(_mm_srli_si128(b, 8)));
        }
        for (; c < cols; c += 8) {
            int8_t tmp[16] = {};
            const int count = static_cast<int>(minI64(8, cols - c));
            std::memcpy(tmp, row + c, static_cast<size_t>(count));
            const __m256 v = value(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tmp)));
            if (count == 8) {
                store8(dst, out, base + c, v);
            } else {
                storePartial8(dst, out, base + c, v, count);
            }
        }
    }
}

// Loads 8 floats at x[c..], zero-filling lanes at or past `cols`.
inline __m256 loadRow8(const float* x, int64_t c, int64_t cols) {
    if (c + 8 <= cols) return _mm256_loadu_ps(x + c);
    alignas(32) float tmp[8] = {};
    std::memcpy(tmp, x + c, static_cast<size_t>(cols - c) * 4);
    return _mm256_load_ps(tmp);
}

// Stores the low `count` int32 lanes of q (already in int8 range) as int8.
inline void storeI8x8(int8_t* dst, __m256i q, int64_t count) {
    const __m256i p16 = _mm256_packs_epi32(q, q);          // [0-3 0-3 | 4-7 4-7]
    const __m256i p8 = _mm256_packs_epi16(p16, p16);
    const __m256i ord = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
    const int64_t v = _mm_cvtsi128_si64(_mm256_castsi256_si128(ord));
    std::memcpy(dst, &v, static_cast<size_t>(count));
}

inline __m256 f16RoundTrip(__m256 v) { return _mm256_cvtph_ps(_mm256_cvtps_ph(v, kRne)); }

inline void quantizeInt8(const float* src, int64_t rows, int64_t cols, int8_t* cbOut, float* scb) {
    const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t r = 0; r < rows; ++r) {
        const float* x = src + r * cols;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t c = 0; c < cols; c += 8) {
            acc = _mm256_max_ps(_mm256_and_ps(f16RoundTrip(loadRow8(x, c, cols)), absMask), acc);
        }
        const float am = hmax8(acc);
        std::memcpy(reinterpret_cast<uint8_t*>(scb) + r * 4, &am, 4);
        const __m256 scale = _mm256_set1_ps(127.0f / am);
        for (int64_t c = 0; c < cols; c += 8) {
            const __m256 v = _mm256_mul_ps(f16RoundTrip(loadRow8(x, c, cols)), scale);
            __m256 q = _mm256_round_ps(v, kRne);
            q = _mm256_and_ps(q, _mm256_cmp_ps(q, q, _CMP_ORD_Q));  // NaN -> 0
            q = _mm256_max_ps(_mm256_min_ps(q, _mm256_set1_ps(127.0f)), _mm256_set1_ps(-127.0f));
            storeI8x8(cbOut + r * cols + c, _mm256_cvtps_epi32(q), minI64(8, cols - c));
        }
    }
}

inline void quantizeInt8Dynamic(const float* src, int64_t rows, int64_t cols, int8_t* qOut,
                                float* scaleOut) {
    const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t r = 0; r < rows; ++r) {
        const float* x = src + r * cols;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t c = 0; c < cols; c += 8) {
            acc = _mm256_max_ps(_mm256_and_ps(loadRow8(x, c, cols), absMask), acc);
        }
        const float am = hmax8(acc);
        float scale = am / 127.5f;
        if (!(scale >= kInt8DynamicEps)) scale = kInt8DynamicEps;  // fmax(scale, eps)
        std::memcpy(reinterpret_cast<uint8_t*>(scaleOut) + r * 4, &scale, 4);
        const __m256 inv = _mm256_set1_ps(1.0f / scale);
        for (int64_t c = 0; c < cols; c += 8) {
            __m256 q = _mm256_round_ps(_mm256_mul_ps(loadRow8(x, c, cols), inv), kRne);
            q = _mm256_and_ps(q, _mm256_cmp_ps(q, q, _CMP_ORD_Q));  // NaN -> 0
            q = _mm256_max_ps(_mm256_min_ps(q, _mm256_set1_ps(127.0f)), _mm256_set1_ps(-128.0f));
            storeI8x8(qOut + r * cols + c, _mm256_cvtps_epi32(q), minI64(8, cols - c));
        }
    }
}

// ---- NONE ------------------------------------------------------------------------------------

inline void convert(DType from, const void* src, int64_t n, DType to, void* out) {
    if (from == to) {
        std::memcpy(out, src, static_cast<size_t>(n) * (to == DType::kF32 ? 4 : 2));
        return;
    }
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) store8(to, out, i, load8(from, src, i));
    if (i < n) {
        const size_t isz = from == DType::kF32 ? 4 : 2;
        alignas(32) uint8_t tmp[32] = {};
        std::memcpy(tmp, static_cast<const uint8_t*>(src) + i * static_cast<int64_t>(isz),
                    static_cast<size_t>(n - i) * isz);
        storePartial8(to, out, i, load8(from, tmp, 0), static_cast<int>(n - i));
    }
}

}  // namespace x86
}  // namespace
}  // namespace sli::kernels

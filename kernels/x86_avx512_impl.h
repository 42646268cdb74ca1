// AVX-512 (F + BW + VL + DQ, with F16C and FMA; no FP16) kernel bodies, included by
// avx512.cpp. Internal to kernels/. One body also needs VBMI (the int8 table lookup, compiled
// for it alone and called only on CPUs that have it).
//
// What it is: the dequantization of every mode (NF4 / FP4 with plain or double-quant absmax,
// Q4_0, LLM.int8, int8_dynamic, none) and the NF4 / FP4 / LLM.int8 / int8_dynamic / Q4_0
// quantizers on 512-bit vectors. The 16-entry code tables of a block are built once per block
// (16 products in one vector, converted once) and expanded by vpermw (f16 / bf16: 32 values
// per instruction) or vpermps (f32: 16 values); large line-aligned outputs are written with
// 64-byte non-temporal stores (the StoreKind rule of x86_avx2_impl.h). The NF4 / FP4
// quantizers take 16 blocks at a time (one pass for their absmax, one transposed reduction, one
// vector division) and find codes by a bucket lookup: a compile-time table of the thresholds per
// bucket of the normalized value, two permutes and one compare per 16 values (blocks whose
// 1 / absmax overflows take a branchless binary search over the thresholds instead).
//
// Verification: this file is checked bit for bit against the scalar reference by
// tests/kernels/simd_test.cpp. On the development machine (AMD Zen 3, no AVX-512) that runs only
// through SIMDe emulation: built with -DSLI_AVX512_VIA_SIMDE=1 and the AVX2 flags, the
// _mm512_* intrinsics come from <simde/x86/avx512.h> (Debian libsimde-dev), and the few that
// SIMDe 0.7 lacks come from the shims below, built from the equivalent AVX2 / F16C
// instructions on the two 256-bit halves (the streaming-store shim also aborts on a misaligned
// address, as the real instruction faults). The native build runs on AVX-512 hosts: on
// 2026-11-27 bench/gpu_check.sh ran tests/kernels natively on the H200 machine's Xeon (AVX-512
// F/DQ/BW/VL; all passed, the start-up self-test kept the table) and measured it
// (docs/benchmarks.md, "AVX-512 natively"):
//   SLI_ISA=avx512 build/bench/kernels_bench --benchmark_filter='dequantize/|quantize_kernel'
//
// Same rules as x86_avx2_impl.h: pure functions (no state, no allocation, no blocking, safe
// to call concurrently on distinct outputs, no errors: dispatch.cpp validates first), internal
// linkage only, no inline function with external linkage, partial 4-bit blocks through the
// reference table, default MXCSR assumed, built with -ffp-contract=off (no product is fused
// with a sum). Every CpuKernels entry has its own 512-bit body here (none falls back to AVX2).
#pragma once

#include "kernels/x86_avx2_impl.h"  // <immintrin.h>, StoreKind, hmax8

#if SLI_AVX512_VIA_SIMDE
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#endif

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels/cpu_kernels.h"

namespace sli::kernels {
namespace {
namespace x86_512 {

#if SLI_AVX512_VIA_SIMDE
// ---- SIMDe shims: intrinsics SIMDe 0.7 does not provide, from the 256-bit equivalents -----
// (Unconditional #undef / #define: a newer SIMDe that has them is simply not used for these.)

template <typename To, typename From>
inline To bitCopy(const From& f) {
    static_assert(sizeof(To) == sizeof(From));
    To t;
    std::memcpy(&t, &f, sizeof t);
    return t;
}
struct I256x2 {
    __m256i h[2];
};
struct F256x2 {
    __m256 h[2];
};

inline __m512 emuCvtepi32Ps(__m512i a) {
    const auto x = bitCopy<I256x2>(a);
    return bitCopy<__m512>(F256x2{{_mm256_cvtepi32_ps(x.h[0]), _mm256_cvtepi32_ps(x.h[1])}});
}
inline __m512i emuCvttpsEpi32(__m512 a) {
    const auto x = bitCopy<F256x2>(a);
    return bitCopy<__m512i>(I256x2{{_mm256_cvttps_epi32(x.h[0]), _mm256_cvttps_epi32(x.h[1])}});
}
inline __m512i emuCvtepi8Epi32(__m128i a) {
    return bitCopy<__m512i>(
        I256x2{{_mm256_cvtepi8_epi32(a), _mm256_cvtepi8_epi32(_mm_srli_si128(a, 8))}});
}
inline __m512i emuCvtepu8Epi32(__m128i a) {
    return bitCopy<__m512i>(
        I256x2{{_mm256_cvtepu8_epi32(a), _mm256_cvtepu8_epi32(_mm_srli_si128(a, 8))}});
}
inline __m512i emuCvtepu16Epi32(__m256i a) {
    return bitCopy<__m512i>(I256x2{{_mm256_cvtepu16_epi32(_mm256_castsi256_si128(a)),
                                    _mm256_cvtepu16_epi32(_mm256_extracti128_si256(a, 1))}});
}
template <int kImm>
inline __m256i emuCvtpsPh(__m512 a) {
    const auto x = bitCopy<F256x2>(a);
    return _mm256_set_m128i(_mm256_cvtps_ph(x.h[1], kImm), _mm256_cvtps_ph(x.h[0], kImm));
}
inline __m512 emuCvtphPs(__m256i a) {
    return bitCopy<__m512>(F256x2{{_mm256_cvtph_ps(_mm256_castsi256_si128(a)),
                                   _mm256_cvtph_ps(_mm256_extracti128_si256(a, 1))}});
}
inline __m128i emuCvtepi32Epi8(__m512i a) {  // vpmovdb: truncation
    int32_t x[16];
    std::memcpy(x, &a, 64);
    alignas(16) uint8_t b[16];
    for (int i = 0; i < 16; ++i) b[i] = static_cast<uint8_t>(x[i] & 0xff);
    return _mm_load_si128(reinterpret_cast<const __m128i*>(b));
}
inline __m512 emuI32gatherPs(__m512i index, const float* base) {  // scale 4 only
    const auto x = bitCopy<I256x2>(index);
    return bitCopy<__m512>(F256x2{{_mm256_i32gather_ps(base, x.h[0], 4), _mm256_i32gather_ps(base, x.h[1], 4)}});
}
template <int kImm>  // vshuff32x4: quarters 0, 1 from a, 2, 3 from b, 2 selector bits each
inline __m512 emuShuffleF32x4(__m512 a, __m512 b) {
    float x[16], y[16], r[16];
    std::memcpy(x, &a, 64);
    std::memcpy(y, &b, 64);
    for (int q = 0; q < 4; ++q)
        std::memcpy(r + 4 * q, (q < 2 ? x : y) + 4 * ((kImm >> (2 * q)) & 3), 16);
    __m512 out;
    std::memcpy(&out, r, 64);
    return out;
}
inline void emuStreamSi512(void* p, __m512i v) {
    if ((reinterpret_cast<uintptr_t>(p) & 63) != 0) std::abort();  // vmovntdq would fault
    std::memcpy(p, &v, 64);
}

#undef _mm512_cvtepi32_ps
#define _mm512_cvtepi32_ps(a) emuCvtepi32Ps(a)
#undef _mm512_cvttps_epi32
#define _mm512_cvttps_epi32(a) emuCvttpsEpi32(a)
#undef _mm512_cvtepi8_epi32
#define _mm512_cvtepi8_epi32(a) emuCvtepi8Epi32(a)
#undef _mm512_cvtepu8_epi32
#define _mm512_cvtepu8_epi32(a) emuCvtepu8Epi32(a)
#undef _mm512_cvtepu16_epi32
#define _mm512_cvtepu16_epi32(a) emuCvtepu16Epi32(a)
#undef _mm512_cvtps_ph
#define _mm512_cvtps_ph(a, imm) emuCvtpsPh<(imm)>(a)
#undef _mm512_cvtph_ps
#define _mm512_cvtph_ps(a) emuCvtphPs(a)
#undef _mm512_cvtepi32_epi8
#define _mm512_cvtepi32_epi8(a) emuCvtepi32Epi8(a)
#undef _mm512_i32gather_ps
#define _mm512_i32gather_ps(index, base, scale) emuI32gatherPs((index), (base))
#undef _mm512_shuffle_f32x4
#define _mm512_shuffle_f32x4(a, b, imm) emuShuffleF32x4<(imm)>((a), (b))
#undef _mm512_stream_si512
#define _mm512_stream_si512(p, v) emuStreamSi512((p), (v))
#endif  // SLI_AVX512_VIA_SIMDE

using x86::StoreKind;
using x86::withStoreKind;

constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

inline int64_t minI64(int64_t a, int64_t b) { return a < b ? a : b; }

inline float loadF32(const void* p, int64_t i) {
    float v;
    std::memcpy(&v, static_cast<const uint8_t*>(p) + i * 4, 4);
    return v;
}

inline bool isFiniteF32(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return (u & 0x7f800000u) != 0x7f800000u;
}

template <DType D>
constexpr int64_t kEsz = D == DType::kF32 ? 4 : 2;

// ---- stores and conversions ------------------------------------------------------------------

template <StoreKind S>
inline void put512(uint8_t* p, __m512i v) {
    if constexpr (S == StoreKind::kStream) {
        _mm512_stream_si512(reinterpret_cast<__m512i*>(p), v);
    } else {
        _mm512_storeu_si512(reinterpret_cast<void*>(p), v);
    }
}

// Max over the 16 lanes (no NaN in v).
inline float hmax16(__m512 v) {
    const __m512i x = _mm512_castps_si512(v);
    const __m256 lo = _mm256_castsi256_ps(_mm512_castsi512_si256(x));
    const __m256 hi = _mm256_castsi256_ps(_mm512_extracti64x4_epi64(x, 1));
    return x86::hmax8(_mm256_max_ps(lo, hi));
}

// 16 x f32 -> RNE bf16 in the TOP half of each 32-bit lane (low half garbage), exactly
// sli::f32ToBf16: x + 0x7fff + lsb; a NaN keeps its top bits with the quiet bit set.
template <bool kMayNaN>
inline __m512i bf16Top(__m512 v) {
    const __m512i x = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), lsb);
    if constexpr (!kMayNaN) {
        return r;
    } else {
        const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        return _mm512_mask_blend_epi32(nan, r, _mm512_or_si512(x, _mm512_set1_epi32(0x400000)));
    }
}

// vpermw / vpermt2w index: word i <- word 2 i + 1 (the top halves), for i in 0..31.
inline __m512i oddWords() {
    return _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33,  //
                            31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
}

// 32 values (a = elements 0..15, b = 16..31) stored as D at o: 64 bytes (f16 / bf16) or 128.
template <DType D, StoreKind S, bool kMayNaN = true>
inline void store32(uint8_t* o, __m512 a, __m512 b) {
    if constexpr (D == DType::kF32) {
        put512<S>(o, _mm512_castps_si512(a));
        put512<S>(o + 64, _mm512_castps_si512(b));
    } else if constexpr (D == DType::kF16) {
        const __m512i lo = _mm512_castsi256_si512(_mm512_cvtps_ph(a, kRne));
        put512<S>(o, _mm512_inserti64x4(lo, _mm512_cvtps_ph(b, kRne), 1));
    } else {
        put512<S>(o,
                  _mm512_permutex2var_epi16(bf16Top<kMayNaN>(a), oddWords(), bf16Top<kMayNaN>(b)));
    }
}

// The first `count` (< 32) of 32 values.
template <DType D, bool kMayNaN = true>
inline void storePartial32(uint8_t* o, __m512 a, __m512 b, int64_t count) {
    alignas(64) uint8_t tmp[128];
    store32<D, StoreKind::kPlain, kMayNaN>(tmp, a, b);
    std::memcpy(o, tmp, static_cast<size_t>(count * kEsz<D>));
}

// 16 values of type From at p as f32 (exact).
template <DType From>
inline __m512 load16(const uint8_t* p) {
    if constexpr (From == DType::kF32) {
        return _mm512_loadu_ps(reinterpret_cast<const float*>(p));
    } else {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        if constexpr (From == DType::kF16) {
            // NaNs widened bit for bit, as sli::f16ToF32 (vcvtph2ps quiets signalling ones)
            const __m512 v = _mm512_cvtph_ps(h);
            const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            if (nan == 0) return v;
            const __m512i w = _mm512_cvtepu16_epi32(h);
            const __m512i bits = _mm512_or_si512(
                _mm512_or_si512(
                    _mm512_slli_epi32(_mm512_and_si512(w, _mm512_set1_epi32(0x8000)), 16),
                    _mm512_set1_epi32(0x7f800000)),
                _mm512_slli_epi32(_mm512_and_si512(w, _mm512_set1_epi32(0x3ff)), 13));
            return _mm512_mask_mov_ps(v, nan, _mm512_castsi512_ps(bits));
        } else {
            return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        }
    }
}

// ---- 16-entry tables and their expansion ------------------------------------------------------
//
// A block's output depends only on its 4-bit codes: the 16 products fl32(lut[c] * scale) are one
// vector multiply, converted once to D. For f16 / bf16 the table holds the 16 results twice
// (32 words: vpermw reads 5 index bits and the expansion leaves bit 4 set in some indices);
// for f32 it is the 16 floats (vpermps reads 4 bits).

template <DType D>
inline __m512i table16(__m512 prod) {
    if constexpr (D == DType::kF32) {
        return _mm512_castps_si512(prod);
    } else if constexpr (D == DType::kF16) {
        const __m256i h = _mm512_cvtps_ph(prod, kRne);
        return _mm512_inserti64x4(_mm512_castsi256_si512(h), h, 1);
    } else {  // word i <- top half of lane i mod 16
        const __m512i idx =
            _mm512_set_epi16(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1, 31, 29, 27,
                             25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        return _mm512_permutexvar_epi16(idx, bf16Top<true>(prod));
    }
}

// vpshufb control (the same in each 128-bit lane pattern given per lane) that puts source byte
// src(i) of a 16-byte broadcast into the low byte of 16-bit word i, high byte zero.
// kQ4 = false (bitsandbytes): element 2k is the high nibble of byte k, 2k + 1 the low nibble.
// kQ4 = true (Q4_0): element j < 16 is the low nibble of byte j, j + 16 its high nibble.
template <bool kQ4>
inline __m512i wordIndices(const uint8_t* p) {
    constexpr char z = static_cast<char>(0x80);
    const __m512i b = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    __m512i ctl, shifts;
    if constexpr (kQ4) {  // word i <- byte i mod 16; words 16..31 take the high nibble
        ctl = _mm512_set_epi8(z, 15, z, 14, z, 13, z, 12, z, 11, z, 10, z, 9, z, 8,  //
                              z, 7, z, 6, z, 5, z, 4, z, 3, z, 2, z, 1, z, 0,        //
                              z, 15, z, 14, z, 13, z, 12, z, 11, z, 10, z, 9, z, 8,  //
                              z, 7, z, 6, z, 5, z, 4, z, 3, z, 2, z, 1, z, 0);
        shifts = _mm512_set_epi16(4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,  //
                                  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    } else {  // word i <- byte i / 2; even words take the high nibble
        ctl = _mm512_set_epi8(z, 15, z, 15, z, 14, z, 14, z, 13, z, 13, z, 12, z, 12,  //
                              z, 11, z, 11, z, 10, z, 10, z, 9, z, 9, z, 8, z, 8,      //
                              z, 7, z, 7, z, 6, z, 6, z, 5, z, 5, z, 4, z, 4,          //
                              z, 3, z, 3, z, 2, z, 2, z, 1, z, 1, z, 0, z, 0);
        shifts = _mm512_set_epi16(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4,  //
                                  0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
    }
    // Unshifted words keep the whole byte: bit 4 may be set, which the doubled table absorbs.
    return _mm512_srlv_epi16(_mm512_shuffle_epi8(b, ctl), shifts);
}

// 32 values from 16 source bytes with the table t.
template <bool kQ4, DType D, StoreKind S>
inline void expand32(__m512i t, const uint8_t* p, uint8_t* o) {
    if constexpr (D != DType::kF32) {
        put512<S>(o, _mm512_permutexvar_epi16(wordIndices<kQ4>(p), t));
    } else {
        const __m512 tf = _mm512_castsi512_ps(t);
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        __m512i i0, i1;  // dword indices of elements 0..15 and 16..31 (vpermps reads 4 bits)
        if constexpr (kQ4) {
            i0 = _mm512_cvtepu8_epi32(b);
            i1 = _mm512_srli_epi32(i0, 4);
        } else {
            const __m512i shifts = _mm512_set_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
            i0 = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b, b)), shifts);
            i1 = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(b, b)), shifts);
        }
        put512<S>(o, _mm512_castps_si512(_mm512_permutexvar_ps(i0, tf)));
        put512<S>(o + 64, _mm512_castps_si512(_mm512_permutexvar_ps(i1, tf)));
    }
}

// ---- NF4 / FP4 dequantization ----------------------------------------------------------------

template <DType D, StoreKind S>
inline void dequantize4bitBlock(__m512 codes, __m512 scale, const uint8_t* p, int blocksize,
                                uint8_t* o) {
    const __m512i t = table16<D>(_mm512_mul_ps(codes, scale));
    for (int i = 0; i < blocksize; i += 32) expand32<false, D, S>(t, p + i / 2, o + i * kEsz<D>);
}

template <DType D, StoreKind S>
inline void dequantize4bitBlocks(const float* lut, const uint8_t* packed, const float* absmax,
                                 int64_t nblocks, int blocksize, uint8_t* out) {
    const __m512 codes = _mm512_loadu_ps(lut);
    for (int64_t b = 0; b < nblocks; ++b) {
        dequantize4bitBlock<D, S>(codes, _mm512_set1_ps(loadF32(absmax, b)),
                                  packed + b * (blocksize / 2), blocksize,
                                  out + b * blocksize * kEsz<D>);
    }
}

// Double-quant absmax of block b: fl32(fl32(map[code] * nested) + offset), two scalar SSE
// instructions (explicitly unfused): the AVX2 file's.
using x86::dqAbsmax;

// As x86_avx2_impl.h: each nested group's absmax per code rebuilt into an L1 table (block by
// block for short runs), then the plain block step. first = the tensor's index of block 0.
using x86::forEachDqBlock;

template <DType D, StoreKind S>
inline void dequantize4bitDqBlocks(const float* lut, const uint8_t* packed,
                                   const DoubleQuantAbsmax& dq, int64_t first, int64_t nblocks,
                                   int blocksize, uint8_t* out) {
    const __m512 codes = _mm512_loadu_ps(lut);
    forEachDqBlock(dq, first, nblocks, [&](int64_t j, const float* a) {
        dequantize4bitBlock<D, S>(codes, _mm512_set1_ps(*a), packed + j * (blocksize / 2),
                                  blocksize, out + j * blocksize * kEsz<D>);
    });
}

// Runs fn.template operator()<D>() for the runtime dtype.
template <typename Fn>
inline void forDType(DType dst, Fn&& fn) {
    if (dst == DType::kF16) {
        fn.template operator()<DType::kF16>();
    } else if (dst == DType::kBF16) {
        fn.template operator()<DType::kBF16>();
    } else {
        fn.template operator()<DType::kF32>();
    }
}

inline void dequantize4bit(Codebook4 cb, const uint8_t* packed, const float* absmax, int64_t n,
                           int blocksize, DType dst, void* out) {
    const float* lut = cb == Codebook4::kNf4 ? kNf4Codebook : kFp4Codebook;
    const int64_t fullBlocks = n / blocksize;
    auto* o = static_cast<uint8_t*>(out);
    forDType(dst, [&]<DType D>() {
        withStoreKind(o, fullBlocks * blocksize * kEsz<D>, [&]<StoreKind S>() {
            dequantize4bitBlocks<D, S>(lut, packed, absmax, fullBlocks, blocksize, o);
        });
    });
    const int64_t done = fullBlocks * blocksize;
    if (done < n) {  // partial last block
        const int64_t esz = dst == DType::kF32 ? 4 : 2;
        referenceKernels().dequantize4bit(cb, packed + done / 2, absmax + fullBlocks, n - done,
                                          blocksize, dst, o + done * esz);
    }
}

inline void dequantize4bitDq(Codebook4 cb, const uint8_t* packed, const DoubleQuantAbsmax& dq,
                             int64_t firstBlock, int64_t n, int blocksize, DType dst, void* out) {
    const float* lut = cb == Codebook4::kNf4 ? kNf4Codebook : kFp4Codebook;
    const int64_t fullBlocks = n / blocksize;
    auto* o = static_cast<uint8_t*>(out);
    forDType(dst, [&]<DType D>() {
        withStoreKind(o, fullBlocks * blocksize * kEsz<D>, [&]<StoreKind S>() {
            dequantize4bitDqBlocks<D, S>(lut, packed, dq, firstBlock, fullBlocks, blocksize, o);
        });
    });
    x86::dequantize4bitDqTail(cb, packed, dq, firstBlock, fullBlocks, n, blocksize, dst, o);
}

// ---- Q4_0 dequantization ---------------------------------------------------------------------

template <DType D, StoreKind S>
inline void dequantizeQ4_0Blocks(const uint8_t* p, int64_t nblocks, uint8_t* out) {
    const __m512 codes = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t b = 0; b < nblocks; ++b) {
        const uint8_t* blk = p + b * static_cast<int64_t>(sizeof(block_q4_0));
        uint16_t dh;
        std::memcpy(&dh, blk, 2);
        const float d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(dh)));
        const __m512i t = table16<D>(_mm512_mul_ps(codes, _mm512_set1_ps(d)));
        expand32<true, D, S>(t, blk + 2, out + b * kQk4_0 * kEsz<D>);
    }
}

inline void dequantizeQ4_0(const block_q4_0* src, int64_t nblocks, DType dst, void* out) {
    const auto* p = reinterpret_cast<const uint8_t*>(src);
    auto* o = static_cast<uint8_t*>(out);
    forDType(dst, [&]<DType D>() {
        withStoreKind(o, nblocks * kQk4_0 * kEsz<D>,
                      [&]<StoreKind S>() { dequantizeQ4_0Blocks<D, S>(p, nblocks, o); });
    });
}

// ---- NF4 / FP4 quantization ------------------------------------------------------------------
//
// Codes by a branchless binary search: c = 0; for step 8, 4, 2, 1: c += step where
// x > t[c + step - 1] (vpermps fetches each lane's threshold, an opmask compare decides). The
// thresholds ascend, so this counts the thresholds below x, as the reference; every compare is
// false for NaN, so NaN gives 0.

// The search itself: thr holds 2 * top - 1 ascending thresholds (top = 8 for NF4's 15, 4 for
// FP4's 7 magnitudes); the first step compares with the middle one, thr[top - 1].
inline __m512i thresholdsBelow(__m512 x, __m512 thr, float middle, int top) {
    __m512i c = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(x, _mm512_set1_ps(middle), _CMP_GT_OQ),
                                       _mm512_set1_epi32(top));
    for (int step = top / 2; step >= 1; step /= 2) {
        const __m512 tc =
            _mm512_permutexvar_ps(_mm512_add_epi32(c, _mm512_set1_epi32(step - 1)), thr);
        c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(x, tc, _CMP_GT_OQ), c,
                                  _mm512_set1_epi32(step));
    }
    return c;
}

inline __m512i nf4Codes(__m512 x) {
    const float* t = kNf4Thresholds;
    const __m512 thr = _mm512_setr_ps(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9],
                                      t[10], t[11], t[12], t[13], t[14], t[14]);
    return thresholdsBelow(x, thr, t[7], 8);
}

// FP4: k = magnitude thresholds below |x| (the same search over 7), + 8 for x < 0 (not -0, not
// NaN), then the code of k from a 16-entry table.
inline __m512i fp4Codes(__m512 x) {
    const float* L = kFp4Thresholds;
    const __m512 thr =
        _mm512_setr_ps(L[0], L[1], L[2], L[3], L[4], L[5], L[6], L[6], 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512 a = _mm512_castsi512_ps(
        _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff)));
    __m512i k = thresholdsBelow(a, thr, L[3], 4);
    k = _mm512_mask_add_epi32(k, _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), k,
                              _mm512_set1_epi32(8));
    const uint8_t* m = kFp4MagnitudeCode;
    const __m512i code =
        _mm512_setr_epi32(m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], 8 | m[0], 8 | m[1],
                          8 | m[2], 8 | m[3], 8 | m[4], 8 | m[5], 8 | m[6], 8 | m[7]);
    return _mm512_permutexvar_epi32(k, code);
}

template <Codebook4 CB>
inline __m512i codes16(__m512 xn) {
    if constexpr (CB == Codebook4::kNf4) {
        return nf4Codes(xn);
    } else {
        return fp4Codes(xn);
    }
}

// ---- The same codes by bucket lookup (blocks with a finite 1 / absmax) ----
//
// The thresholds lie at least 0.080 apart (NF4's over [-1, 1], FP4's magnitudes over [0, 1]),
// and a bucket of the normalized value is narrower (NF4: b = trunc((x + 1) * 15.99), 32
// buckets of 0.0625; FP4: b = trunc(|x| * 15.99), 16 of them), so no bucket holds two
// thresholds. With below[b] = the number of thresholds in the buckets before b and
// inBucket[b] = the one in b (+Inf where none), the reference's count of thresholds below x is
// below[b] + (x > inBucket[b]): the bucket is a float add, multiply and truncation, monotone
// in x, so every threshold of an earlier bucket is below x and every one of a later bucket is
// not. The tables are built at compile time by the same float operations the vectors run, and a
// bucket with two thresholds fails the build. Per 16 values: 2 permutes and a compare against
// the search's 4 compares and 3 permutes (port 5 on Intel, which bound the quantizers).
// Where the normalized values come from: x * fl(1 / absmax) with |x| <= absmax, so within an
// ulp or two of [-1, 1]: a value a rounding past -1 truncates to bucket 0 and one past +1
// stays in the last bucket (2.0000002 * 15.99 < 32). A NaN truncates to INT_MIN, whose low bits
// pick bucket 0, where the compare is false: code 0, as the reference. An infinite value would
// also truncate to INT_MIN: it arises only when 1 / absmax overflows (a subnormal absmax or
// zero), and such blocks take the search above.
constexpr float kBucketScale = 15.99f;

struct CodeBuckets {
    float inBucket[32];
    int32_t below[32];
};

constexpr int32_t nf4Bucket(float x) { return static_cast<int32_t>((x + 1.0f) * kBucketScale); }
constexpr int32_t fp4Bucket(float a) { return static_cast<int32_t>(a * kBucketScale); }

template <int N>
constexpr CodeBuckets makeCodeBuckets(const float (&thresholds)[N], int32_t (*bucket)(float)) {
    CodeBuckets t{};
    for (int b = 0; b < 32; ++b) t.inBucket[b] = std::numeric_limits<float>::infinity();
    for (int i = 0; i < N; ++i) {
        const int32_t b = bucket(thresholds[i]);
        if (b < 0 || b >= 32 || t.inBucket[b] != std::numeric_limits<float>::infinity())
            throw "two thresholds in one bucket";  // at compile time: the build fails
        t.inBucket[b] = thresholds[i];
        for (int j = b + 1; j < 32; ++j) ++t.below[j];
    }
    return t;
}

inline constexpr CodeBuckets kNf4Buckets = makeCodeBuckets(kNf4Thresholds, nf4Bucket);
inline constexpr CodeBuckets kFp4Buckets = makeCodeBuckets(kFp4Thresholds, fp4Bucket);

struct BucketVectors {
    __m512 inLo, inHi;     // inBucket[0..15], [16..31]
    __m512i belowLo, belowHi;
    __m512i code;          // FP4: the code of k = 0..7 thresholds below |x|, +8 for x < 0
};

template <Codebook4 CB>
inline BucketVectors bucketVectors() {
    const CodeBuckets& t = CB == Codebook4::kNf4 ? kNf4Buckets : kFp4Buckets;
    BucketVectors v;
    v.inLo = _mm512_loadu_ps(t.inBucket);
    v.inHi = _mm512_loadu_ps(t.inBucket + 16);
    v.belowLo = _mm512_loadu_si512(t.below);
    v.belowHi = _mm512_loadu_si512(t.below + 16);
    const uint8_t* m = kFp4MagnitudeCode;
    v.code = _mm512_setr_epi32(m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], 8 | m[0], 8 | m[1],
                               8 | m[2], 8 | m[3], 8 | m[4], 8 | m[5], 8 | m[6], 8 | m[7]);
    return v;
}

template <Codebook4 CB>
inline __m512i bucketCodes16(const BucketVectors& v, __m512 xn) {
    const __m512 scale = _mm512_set1_ps(kBucketScale);
    if constexpr (CB == Codebook4::kNf4) {
        const __m512i b =
            _mm512_cvttps_epi32(_mm512_mul_ps(_mm512_add_ps(xn, _mm512_set1_ps(1.0f)), scale));
        const __m512 t = _mm512_permutex2var_ps(v.inLo, b, v.inHi);
        const __m512i below = _mm512_permutex2var_epi32(v.belowLo, b, v.belowHi);
        return _mm512_mask_add_epi32(below, _mm512_cmp_ps_mask(xn, t, _CMP_GT_OQ), below,
                                     _mm512_set1_epi32(1));
    } else {
        const __m512 a = _mm512_castsi512_ps(
            _mm512_and_si512(_mm512_castps_si512(xn), _mm512_set1_epi32(0x7fffffff)));
        const __m512i b = _mm512_cvttps_epi32(_mm512_mul_ps(a, scale));
        const __m512 t = _mm512_permutexvar_ps(b, v.inLo);
        __m512i k = _mm512_permutexvar_epi32(b, v.belowLo);
        k = _mm512_mask_add_epi32(k, _mm512_cmp_ps_mask(a, t, _CMP_GT_OQ), k,
                                  _mm512_set1_epi32(1));
        k = _mm512_mask_add_epi32(k, _mm512_cmp_ps_mask(xn, _mm512_setzero_ps(), _CMP_LT_OQ), k,
                                  _mm512_set1_epi32(8));
        return _mm512_permutexvar_epi32(k, v.code);
    }
}

// 32 codes (c0 = elements 0..15, c1 = 16..31) -> 16 bytes, element 2k in the high nibble.
inline __m128i pack32(__m512i c0, __m512i c1) {
    const __m512i even =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd =
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512i e = _mm512_permutex2var_epi32(c0, even, c1);
    const __m512i o = _mm512_permutex2var_epi32(c0, odd, c1);
    return _mm512_cvtepi32_epi8(_mm512_or_si512(_mm512_slli_epi32(e, 4), o));
}

// Software prefetch kPrefetchAhead bytes ahead (as the AVX2 quantizers).
constexpr int64_t kPrefetchAhead = 4096;

// max |x| over count (a multiple of 32) floats, lane-wise (16 partial maxima); max(|x|, acc)
// keeps acc for a NaN |x|, so NaN never wins and the result is never NaN.
inline __m512 absMaxLanes(const float* x, int64_t count) {
    const __m512i absMask = _mm512_set1_epi32(0x7fffffff);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int64_t i = 0; i < count; i += 32) {
        _mm_prefetch(reinterpret_cast<const char*>(x + i) + kPrefetchAhead, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(x + i) + kPrefetchAhead + 64, _MM_HINT_T0);
        const __m512 a = _mm512_castsi512_ps(
            _mm512_and_si512(_mm512_castps_si512(_mm512_loadu_ps(x + i)), absMask));
        const __m512 b = _mm512_castsi512_ps(
            _mm512_and_si512(_mm512_castps_si512(_mm512_loadu_ps(x + i + 16)), absMask));
        acc0 = _mm512_max_ps(a, acc0);
        acc1 = _mm512_max_ps(b, acc1);
    }
    return _mm512_max_ps(acc0, acc1);
}

// Lane j of the result = the maximum of v[j]'s 16 lanes (no NaN in v). A transposing tree:
// each level halves the vectors and doubles the blocks per vector, 30 shuffles and 15 maxima
// for 16 blocks against 16 separate reductions' 64 and 64.
inline __m512 hmax16x16(const __m512 (&v)[16]) {
    __m512 w[8], x[4], y[2];
    // 128-bit quarters: w[i] = [v[2i] 8 partials | v[2i + 1] 8 partials]
    for (int i = 0; i < 8; ++i)
        w[i] = _mm512_max_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
    // x[i]: quarter q holds 4 partials of block 4i + q
    for (int i = 0; i < 4; ++i)
        x[i] = _mm512_max_ps(_mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0xdd));
    // y[i]: quarter q = [2 partials of block 8i + q, 2 of block 8i + 4 + q]
    for (int i = 0; i < 2; ++i)
        y[i] = _mm512_max_ps(_mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0xee));
    // quarter q = [block q, q + 4, q + 8, q + 12]
    const __m512 z = _mm512_max_ps(_mm512_shuffle_ps(y[0], y[1], 0x88),
                                   _mm512_shuffle_ps(y[0], y[1], 0xdd));
    return _mm512_permutexvar_ps(
        _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), z);
}

// One block's codes, its values times inv = fl(1 / absmax): the bucket lookup when inv is
// finite, else the search (inf for an all-zero or subnormal absmax: 0 * inf = NaN -> code 0).
template <Codebook4 CB>
inline void encodeBlock(const BucketVectors& buckets, const float* x, int blocksize, float inv,
                        uint8_t* out) {
    const __m512 s = _mm512_set1_ps(inv);
    if (isFiniteF32(inv)) {
        for (int i = 0; i < blocksize; i += 32) {
            const __m512i c0 = bucketCodes16<CB>(buckets, _mm512_mul_ps(_mm512_loadu_ps(x + i), s));
            const __m512i c1 =
                bucketCodes16<CB>(buckets, _mm512_mul_ps(_mm512_loadu_ps(x + i + 16), s));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i / 2), pack32(c0, c1));
        }
        return;
    }
    for (int i = 0; i < blocksize; i += 32) {
        const __m512i c0 = codes16<CB>(_mm512_mul_ps(_mm512_loadu_ps(x + i), s));
        const __m512i c1 = codes16<CB>(_mm512_mul_ps(_mm512_loadu_ps(x + i + 16), s));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i / 2), pack32(c0, c1));
    }
}

// ---- NF4 / FP4 quantization from bf16 ---------------------------------------------------------
//
// 32 bf16 values are one 512-bit load, and their f32 values need no shuffle: shifted left by
// 16 the words give elements 0, 2, .., 30 and masked to their high half 1, 3, .., 31. That
// split is the packing itself (element 2k in the high nibble of byte k, 2k + 1 in the low one),
// so pack32's two permutes go too. The max of a block is the same whichever lanes its
// elements land in.

inline __m512i bf16Words(const uint16_t* p) { return _mm512_loadu_si512(p); }
inline __m512 bf16Even(__m512i w) { return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)); }
inline __m512 bf16Odd(__m512i w) {
    const __m512i high = _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u));
    return _mm512_castsi512_ps(_mm512_and_si512(w, high));
}

// absMaxLanes over count (a multiple of 32) bf16 values.
inline __m512 absMaxLanes(const uint16_t* x, int64_t count) {
    const __m512i absMask = _mm512_set1_epi32(0x7fff7fff);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int64_t i = 0; i < count; i += 32) {
        _mm_prefetch(reinterpret_cast<const char*>(x + i) + kPrefetchAhead, _MM_HINT_T0);
        const __m512i w = _mm512_and_si512(bf16Words(x + i), absMask);
        acc0 = _mm512_max_ps(bf16Even(w), acc0);
        acc1 = _mm512_max_ps(bf16Odd(w), acc1);
    }
    return _mm512_max_ps(acc0, acc1);
}

// encodeBlock from bf16 values.
template <Codebook4 CB>
inline void encodeBlock(const BucketVectors& buckets, const uint16_t* x, int blocksize, float inv,
                        uint8_t* out) {
    const __m512 s = _mm512_set1_ps(inv);
    const bool finite = isFiniteF32(inv);
    for (int i = 0; i < blocksize; i += 32) {
        const __m512i w = bf16Words(x + i);
        const __m512 e = _mm512_mul_ps(bf16Even(w), s), o = _mm512_mul_ps(bf16Odd(w), s);
        const __m512i ce = finite ? bucketCodes16<CB>(buckets, e) : codes16<CB>(e);
        const __m512i co = finite ? bucketCodes16<CB>(buckets, o) : codes16<CB>(o);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i / 2),
                         _mm512_cvtepi32_epi8(_mm512_or_si512(_mm512_slli_epi32(ce, 4), co)));
    }
}

// 16 blocks at a time: their absmax in one pass over the 16 (a plain stream of loads), one
// transposed reduction, one vector division for the 16 reciprocals (IEEE division, the same
// bits as the scalar 1.0f / absmax), then the codes from the now cache-hot values. Src: float,
// or uint16_t for bf16 (the overloads of absMaxLanes and encodeBlock above).
template <Codebook4 CB, typename Src>
inline void quantize4bitBlocks(const Src* src, int64_t nblocks, int blocksize, uint8_t* packed,
                               float* absmax) {
    const BucketVectors buckets = bucketVectors<CB>();
    int64_t g = 0;
    for (; g + 16 <= nblocks; g += 16) {
        const Src* x = src + g * blocksize;
        __m512 lanes[16];
        for (int j = 0; j < 16; ++j) lanes[j] = absMaxLanes(x + j * blocksize, blocksize);
        const __m512 am = hmax16x16(lanes);
        _mm512_storeu_ps(absmax + g, am);
        alignas(64) float inv[16];
        _mm512_store_ps(inv, _mm512_div_ps(_mm512_set1_ps(1.0f), am));
        for (int j = 0; j < 16; ++j)
            encodeBlock<CB>(buckets, x + j * blocksize, blocksize, inv[j],
                            packed + (g + j) * (blocksize / 2));
    }
    for (; g < nblocks; ++g) {
        const Src* x = src + g * blocksize;
        const float am = hmax16(absMaxLanes(x, blocksize));
        std::memcpy(absmax + g, &am, 4);
        encodeBlock<CB>(buckets, x, blocksize, 1.0f / am, packed + g * (blocksize / 2));
    }
}

inline void quantize4bit(Codebook4 cb, const float* src, int64_t n, int blocksize, uint8_t* packed,
                         float* absmax) {
    x86::quantize4bitWith(cb, src, n, blocksize, packed, absmax, [&]<Codebook4 CB>(int64_t full) {
        quantize4bitBlocks<CB>(src, full, blocksize, packed, absmax);
    });
}

inline void quantize4bitBf16(Codebook4 cb, const uint16_t* src, int64_t n, int blocksize,
                             uint8_t* packed, float* absmax) {
    x86::quantize4bitWith(cb, src, n, blocksize, packed, absmax, [&]<Codebook4 CB>(int64_t full) {
        quantize4bitBlocks<CB>(src, full, blocksize, packed, absmax);
    });
}

// ---- Q4_0 quantization -----------------------------------------------------------------------
//
// Per block: max |x| (NaN never wins), the first element of that magnitude gives the signed
// max (an all-zero or all-NaN block keeps +0.0), d = max / -8, id = d ? 1 / d : 0 (IEEE division,
// as the reference), t = fl(fl(x * id) + 8.5), q = t >= 1 ? min(t, 15) truncated : 0 (NaN ->
// 0), element j in the low nibble of byte j and j + 16 in its high nibble.

// 16 source values at x as f32: an f32 source as it is, a bf16 one (uint16_t bits) widened,
// exactly, as it is read (Q4_0 keeps element order: its nibbles pair j with j + 16).
inline __m512 srcLoad16(const float* x) { return _mm512_loadu_ps(x); }
inline __m512 srcLoad16(const uint16_t* x) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(w), 16));
}
inline float srcValue(const float* x, int i) { return x[i]; }
inline float srcValue(const uint16_t* x, int i) { return bf16ToF32(x[i]); }

inline __m512 absPs(__m512 v) {
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff)));
}

// |x| of a block's two halves, lane-wise max; max(a, max(b, 0)) keeps the other operand for a
// NaN, so NaN never wins.
template <typename Src>
inline __m512 q4AbsLanes(const Src* x) {
    return _mm512_max_ps(absPs(srcLoad16(x)), _mm512_max_ps(absPs(srcLoad16(x + 16)), _mm512_setzero_ps()));
}

// The signed value of the block's first element of magnitude amax (0 for amax = 0).
template <typename Src>
inline float q4SignedMax(const Src* x, float amax) {
    if (!(amax > 0.0f)) return 0.0f;
    const __m512 am = _mm512_set1_ps(amax);
    // Named operands: with both comparisons in one expression, GCC 12 at -O3 with
    // -fsanitize=thread built code that found the wrong element (the TSan run of the kernel
    // tests caught it); this form, the one before the bf16 template, is built right.
    const __m512 a0 = absPs(srcLoad16(x));
    const __m512 a1 = absPs(srcLoad16(x + 16));
    const uint32_t mask = static_cast<uint32_t>(_mm512_cmp_ps_mask(a0, am, _CMP_EQ_OQ)) |
                          (static_cast<uint32_t>(_mm512_cmp_ps_mask(a1, am, _CMP_EQ_OQ)) << 16);
    return srcValue(x, mask != 0 ? __builtin_ctz(mask) : 0);
}

// One block's 16 bytes of codes for id = 1 / d: q = trunc(min(max(t, 0), 15)) with
// t = fl(fl(x * id) + 8.5) is the reference's t >= 1 ? min(t, 15) : 0 (t in [0, 1) truncates
// to 0; max(NaN, 0) is 0), element j in the low nibble of byte j and j + 16 in its high one.
template <typename Src>
inline void q4EncodeBlock(const Src* x, float id, uint16_t dh, uint8_t* o) {
    const __m512 vid = _mm512_set1_ps(id);
    const auto q = [&](__m512 v) {
        const __m512 t = _mm512_add_ps(_mm512_mul_ps(v, vid), _mm512_set1_ps(8.5f));
        return _mm512_cvttps_epi32(
            _mm512_min_ps(_mm512_max_ps(t, _mm512_setzero_ps()), _mm512_set1_ps(15.0f)));
    };
    const __m128i qs = _mm512_cvtepi32_epi8(
        _mm512_or_si512(q(srcLoad16(x)), _mm512_slli_epi32(q(srcLoad16(x + 16)), 4)));
    std::memcpy(o, &dh, 2);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 2), qs);
}

// 16 blocks at a time, as the NF4 / FP4 quantizer: their magnitudes in one pass, one
// transposed reduction, the 16 d = max / -8 and id = d != 0 ? 1 / d : 0 by vector division
// (IEEE: the scalar bits) and one f16 conversion; then the codes from cache-hot values.
// Src: float, or uint16_t for bf16 (srcLoad16).
template <typename Src>
inline void quantizeQ4_0Blocks(const Src* src, int64_t nblocks, block_q4_0* dst) {
    auto* out = reinterpret_cast<uint8_t*>(dst);
    constexpr int64_t kBlockBytes = static_cast<int64_t>(sizeof(block_q4_0));
    int64_t b = 0;
    for (; b + 16 <= nblocks; b += 16) {
        const Src* x = src + b * kQk4_0;
        __m512 lanes[16];
        for (int j = 0; j < 16; ++j) lanes[j] = q4AbsLanes(x + j * kQk4_0);
        alignas(64) float amax[16], max[16], id[16];
        alignas(32) uint16_t dh[16];
        _mm512_store_ps(amax, hmax16x16(lanes));
        for (int j = 0; j < 16; ++j) max[j] = q4SignedMax(x + j * kQk4_0, amax[j]);
        const __m512 d = _mm512_div_ps(_mm512_load_ps(max), _mm512_set1_ps(-8.0f));
        // C's d != 0 (true for NaN: _CMP_NEQ_UQ)
        _mm512_store_ps(id, _mm512_maskz_div_ps(_mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_NEQ_UQ),
                                                _mm512_set1_ps(1.0f), d));
        _mm256_store_si256(reinterpret_cast<__m256i*>(dh), _mm512_cvtps_ph(d, kRne));
        for (int j = 0; j < 16; ++j) {
            const char* p = reinterpret_cast<const char*>(x + j * kQk4_0);
            _mm_prefetch(p + kPrefetchAhead, _MM_HINT_T0);
            if constexpr (sizeof(Src) == 4) _mm_prefetch(p + kPrefetchAhead + 64, _MM_HINT_T0);
            q4EncodeBlock(x + j * kQk4_0, id[j], dh[j], out + (b + j) * kBlockBytes);
        }
    }
    for (; b < nblocks; ++b) {
        const Src* x = src + b * kQk4_0;
        const float max = q4SignedMax(x, hmax16(q4AbsLanes(x)));
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const uint16_t dh =
            static_cast<uint16_t>(_mm_cvtsi128_si32(_mm_cvtps_ph(_mm_set_ss(d), kRne)) & 0xffff);
        q4EncodeBlock(x, id, dh, out + b * kBlockBytes);
    }
}

inline void quantizeQ4_0(const float* src, int64_t nblocks, block_q4_0* dst) {
    quantizeQ4_0Blocks(src, nblocks, dst);
}
inline void quantizeQ4_0Bf16(const uint16_t* src, int64_t nblocks, block_q4_0* dst) {
    quantizeQ4_0Blocks(src, nblocks, dst);
}

// ---- INT8 / INT8_DYNAMIC ---------------------------------------------------------------------

// 32 int8 at p -> 32 values fl32(q * scale) (and for LLM.int8 a second rounded product).
template <bool kLlm>
inline __m512 int8x16(const int8_t* p, __m512 scale, __m512 factor) {
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), scale);
    if constexpr (kLlm) v = _mm512_mul_ps(v, factor);
    return v;
}

template <DType D, StoreKind S, bool kLlm, bool kMayNaN>
inline void dequantizeInt8Row(const int8_t* row, float sc, int64_t cols, uint8_t* o) {
    const __m512 scale = _mm512_set1_ps(sc);
    const __m512 factor = _mm512_set1_ps(kInt8DequantFactor);
    int64_t c = 0;
    for (; c + 32 <= cols; c += 32) {
        store32<D, S, kMayNaN>(o + c * kEsz<D>, int8x16<kLlm>(row + c, scale, factor),
                               int8x16<kLlm>(row + c + 16, scale, factor));
    }
    if (c < cols) {
        alignas(16) int8_t tmp[32] = {};
        std::memcpy(tmp, row + c, static_cast<size_t>(cols - c));
        storePartial32<D, kMayNaN>(o + c * kEsz<D>, int8x16<kLlm>(tmp, scale, factor),
                                   int8x16<kLlm>(tmp + 16, scale, factor), cols - c);
    }
}

template <DType D, bool kLlm>
inline void dequantizeInt8As(const int8_t* q, const float* scale, int64_t rows, int64_t cols,
                             uint8_t* out) {
    // Streaming only when every row starts on a cache line.
    const bool rowsAligned = (cols * kEsz<D>) % 64 == 0;
    withStoreKind(
        out, rows * cols * kEsz<D>,
        [&]<StoreKind S>() {
            for (int64_t r = 0; r < rows; ++r) {
                const float sc = loadF32(scale, r);
                uint8_t* o = out + r * cols * kEsz<D>;
                // q * scale is NaN only for a NaN or infinite scale (q = 0 times Inf).
                if (isFiniteF32(sc)) {
                    dequantizeInt8Row<D, S, kLlm, false>(q + r * cols, sc, cols, o);
                } else {
                    dequantizeInt8Row<D, S, kLlm, true>(q + r * cols, sc, cols, o);
                }
            }
        },
        rowsAligned);
}

inline void dequantizeInt8(bool llmInt8, const int8_t* q, const float* scale, int64_t rows,
                           int64_t cols, DType dst, void* out) {
    auto* o = static_cast<uint8_t*>(out);
    forDType(dst, [&]<DType D>() {
        if (llmInt8) {
            dequantizeInt8As<D, true>(q, scale, rows, cols, o);
        } else {
            dequantizeInt8As<D, false>(q, scale, rows, cols, o);
        }
    });
}

// ---- INT8 / INT8_DYNAMIC to f16 / bf16 by table lookup (AVX-512 VBMI) ----------------------
//
// With a finite scale a row's 16-bit outputs depend only on its int8 values and are odd in
// them: fl32(q * scale) (and the LLM.int8 factor after it) and the RNE narrowing are symmetric
// in sign, so the output for -k is the one for k with its sign bit flipped (k * 0 = +0 and
// -k * 0 = -0 included; a NaN scale would not flip, and takes the arithmetic body). Per row, the
// 128 outputs for q = 0..127 come from the arithmetic body's own steps (int8x16, store32), are
// split into byte planes (2 registers each), and each 64 values are then two vpermt2b on |q|
// (7 index bits), the source's sign bit xor-ed into the high bytes, and two byte unpacks back
// into words: 5 shuffles per 64 values where the arithmetic body spends 2 conversions and 2
// narrowings per 16. The source's qwords are pre-ordered (0, 4, 1, 5, ..) so that the in-lane
// unpacks come out in element order. |-128| has no entry (vpabsb leaves 0x80, whose top bit
// flags it): its output is blended in by that mask where it occurs (int8_dynamic stores -128
// wherever a row's absmax is negative). The last cols % 64 values of a row take the arithmetic
// body.
//
// VBMI (vpermt2b) is not in the file's flags: these functions are compiled for it alone
// (SLI_VBMI_FN) and called only where the CPU has it (avx512.cpp). Through SIMDe they are
// plain emulated code like the rest.
#if SLI_AVX512_VIA_SIMDE
#define SLI_VBMI_FN inline
#else
#define SLI_VBMI_FN __attribute__((target("avx512vbmi"))) inline
#endif

// The row's outputs for q = 0..127 as D, in byte planes: lo[j] / hi[j] hold the low / high
// bytes of q = 64 j .. 64 j + 63. Returns the output for q = -128, converted by the reference
// (sli::f32ToF16 / f32ToBf16, which the vector conversions equal bit for bit).
template <DType D, bool kLlm>
SLI_VBMI_FN uint16_t int8Planes(float sc, __m512i (&lo)[2], __m512i (&hi)[2]) {
    struct Magnitudes {
        alignas(64) float v[128];
    };
    static constexpr Magnitudes kMagnitudes = [] {
        Magnitudes m{};
        for (int i = 0; i < 128; ++i) m.v[i] = static_cast<float>(i);
        return m;
    }();
    const __m512 scale = _mm512_set1_ps(sc);
    const __m512 factor = _mm512_set1_ps(kInt8DequantFactor);
    // fl32(q * scale) (then * factor): as int8x16, the magnitudes already f32 (exact)
    const auto products = [&](int k) {
        __m512 v = _mm512_mul_ps(_mm512_load_ps(kMagnitudes.v + k), scale);
        if constexpr (kLlm) v = _mm512_mul_ps(v, factor);
        return v;
    };
    alignas(64) uint8_t words[256];
    for (int k = 0; k < 128; k += 32) {
        store32<D, StoreKind::kPlain, false>(words + 2 * k, products(k), products(k + 16));
    }
    // byte i <- byte 2 i (low bytes) or 2 i + 1 (high bytes) of a register pair
    struct ByteIndices {
        alignas(64) uint8_t even[64];
        alignas(64) uint8_t odd[64];
    };
    static constexpr ByteIndices kIndices = [] {
        ByteIndices b{};
        for (int i = 0; i < 64; ++i) {
            b.even[i] = static_cast<uint8_t>(2 * i);
            b.odd[i] = static_cast<uint8_t>(2 * i + 1);
        }
        return b;
    }();
    const __m512i evenBytes = _mm512_load_si512(kIndices.even);
    const __m512i oddBytes = _mm512_load_si512(kIndices.odd);
    for (int j = 0; j < 2; ++j) {
        const __m512i w0 = _mm512_load_si512(words + 128 * j);
        const __m512i w1 = _mm512_load_si512(words + 128 * j + 64);
        lo[j] = _mm512_permutex2var_epi8(w0, evenBytes, w1);
        hi[j] = _mm512_permutex2var_epi8(w0, oddBytes, w1);
    }
    float min = -128.0f * sc;
    if constexpr (kLlm) min = min * kInt8DequantFactor;
    return D == DType::kF16 ? f32ToF16(min) : f32ToBf16(min);
}

// One row (finite scale) by lookup.
template <DType D, StoreKind S, bool kLlm>
SLI_VBMI_FN void dequantizeInt8RowLookup(const int8_t* row, float sc, int64_t cols, uint8_t* o) {
    __m512i lo[2], hi[2];
    const uint16_t min = int8Planes<D, kLlm>(sc, lo, hi);
    const __m512i order = _mm512_setr_epi64(0, 4, 1, 5, 2, 6, 3, 7);
    const __m512i signBit = _mm512_set1_epi8(static_cast<char>(0x80));
    int64_t c = 0;
    for (; c + 64 <= cols; c += 64) {
        const __m512i x =
            _mm512_permutexvar_epi64(order, _mm512_loadu_si512(reinterpret_cast<const void*>(row + c)));
        const __m512i a = _mm512_abs_epi8(x);
        __m512i l = _mm512_permutex2var_epi8(lo[0], a, lo[1]);
        // high bytes ^ (x & 0x80): A ^ (B & C) with A = 0xf0, B = 0xcc, C = 0xaa
        __m512i h =
            _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(hi[0], a, hi[1]), x, signBit, 0x78);
        // q = -128 (vpabsb's 0x80): rare in LLM.int8 (never from the quantizer), about once a
        // row in int8_dynamic; a branch costs less than two blends every 64 values.
        const __mmask64 isMin = _mm512_movepi8_mask(a);
        if (isMin != 0) {
            l = _mm512_mask_mov_epi8(l, isMin, _mm512_set1_epi8(static_cast<char>(min & 0xff)));
            h = _mm512_mask_mov_epi8(h, isMin, _mm512_set1_epi8(static_cast<char>(min >> 8)));
        }
        put512<S>(o + c * 2, _mm512_unpacklo_epi8(l, h));
        put512<S>(o + c * 2 + 64, _mm512_unpackhi_epi8(l, h));
    }
    if (c < cols) dequantizeInt8Row<D, S, kLlm, false>(row + c, sc, cols - c, o + c * 2);
}

template <DType D, bool kLlm>
SLI_VBMI_FN void dequantizeInt8LookupAs(const int8_t* q, const float* scale, int64_t rows,
                                        int64_t cols, uint8_t* out) {
    // withStoreKind's rule, spelled out: a lambda would not inherit SLI_VBMI_FN's target, and
    // the lookup could not be inlined into it. Streaming only when every row starts on a line.
    const bool rowsAligned = (cols * 2) % 64 == 0;
    const bool stream = rowsAligned && x86::storeKindFor(out, rows * cols * 2) == StoreKind::kStream;
    for (int64_t r = 0; r < rows; ++r) {
        const float sc = loadF32(scale, r);
        const int8_t* x = q + r * cols;
        uint8_t* o = out + r * cols * 2;
        if (!isFiniteF32(sc)) {
            if (stream) {
                dequantizeInt8Row<D, StoreKind::kStream, kLlm, true>(x, sc, cols, o);
            } else {
                dequantizeInt8Row<D, StoreKind::kPlain, kLlm, true>(x, sc, cols, o);
            }
        } else if (stream) {
            dequantizeInt8RowLookup<D, StoreKind::kStream, kLlm>(x, sc, cols, o);
        } else {
            dequantizeInt8RowLookup<D, StoreKind::kPlain, kLlm>(x, sc, cols, o);
        }
    }
    if (stream) _mm_sfence();
}

// The CpuKernels entry on VBMI CPUs: f16 / bf16 by lookup, f32 by the arithmetic body (at the
// L2's write speed already).
SLI_VBMI_FN void dequantizeInt8Lookup(bool llmInt8, const int8_t* q, const float* scale,
                                      int64_t rows, int64_t cols, DType dst, void* out) {
    auto* o = static_cast<uint8_t*>(out);
    if (dst == DType::kF16) {
        if (llmInt8) {
            dequantizeInt8LookupAs<DType::kF16, true>(q, scale, rows, cols, o);
        } else {
            dequantizeInt8LookupAs<DType::kF16, false>(q, scale, rows, cols, o);
        }
    } else if (dst == DType::kBF16) {
        if (llmInt8) {
            dequantizeInt8LookupAs<DType::kBF16, true>(q, scale, rows, cols, o);
        } else {
            dequantizeInt8LookupAs<DType::kBF16, false>(q, scale, rows, cols, o);
        }
    } else {
        dequantizeInt8(llmInt8, q, scale, rows, cols, dst, out);
    }
}

// 16 floats at x[c..], zero-filled past cols.
inline __m512 loadRow16(const float* x, int64_t c, int64_t cols) {
    if (c + 16 <= cols) return _mm512_loadu_ps(x + c);
    alignas(64) float tmp[16] = {};
    std::memcpy(tmp, x + c, static_cast<size_t>(cols - c) * 4);
    return _mm512_load_ps(tmp);
}

inline __m512 f16RoundTrip(__m512 v) { return _mm512_cvtph_ps(_mm512_cvtps_ph(v, kRne)); }

// kLlm: LLM.int8 (fp16 first, scale = 127 / absmax, clamp to +-127); else int8_dynamic
// (scale = max(absmax / 127.5, eps), multiply by 1 / scale, clamp to [-128, 127]).
template <bool kLlm>
inline void quantizeInt8Rows(const float* src, int64_t rows, int64_t cols, int8_t* qOut,
                             float* scaleOut) {
    const __m512i absMask = _mm512_set1_epi32(0x7fffffff);
    const auto value = [](__m512 v) {
        if constexpr (kLlm) {
            return f16RoundTrip(v);
        } else {
            return v;
        }
    };
    for (int64_t r = 0; r < rows; ++r) {
        const float* x = src + r * cols;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t c = 0; c < cols; c += 16) {
            const __m512 a = _mm512_castsi512_ps(
                _mm512_and_si512(_mm512_castps_si512(value(loadRow16(x, c, cols))), absMask));
            acc = _mm512_max_ps(a, acc);
        }
        const float am = hmax16(acc);
        float mul;
        if constexpr (kLlm) {
            std::memcpy(reinterpret_cast<uint8_t*>(scaleOut) + r * 4, &am, 4);
            mul = 127.0f / am;  // +inf for a zero row: 0 * inf = NaN -> 0
        } else {
            float scale = am / 127.5f;
            if (!(scale >= kInt8DynamicEps)) scale = kInt8DynamicEps;  // fmax(scale, eps)
            std::memcpy(reinterpret_cast<uint8_t*>(scaleOut) + r * 4, &scale, 4);
            mul = 1.0f / scale;  // 0 for an Inf row: Inf * 0 = NaN -> 0
        }
        const __m512 m = _mm512_set1_ps(mul);
        const __m512 lo = _mm512_set1_ps(kLlm ? -127.0f : -128.0f);
        const __m512 hi = _mm512_set1_ps(127.0f);
        for (int64_t c = 0; c < cols; c += 16) {
            __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(value(loadRow16(x, c, cols)), m), kRne);
            q = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(q, q, _CMP_ORD_Q), q);  // NaN -> 0
            q = _mm512_max_ps(_mm512_min_ps(q, hi), lo);
            const __m128i b = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(q));
            if (c + 16 <= cols) {
                _mm_storeu_si128(reinterpret_cast<__m128i*>(qOut + r * cols + c), b);
            } else {
                alignas(16) int8_t tmp[16];
                _mm_store_si128(reinterpret_cast<__m128i*>(tmp), b);
                std::memcpy(qOut + r * cols + c, tmp, static_cast<size_t>(cols - c));
            }
        }
    }
}

inline void quantizeInt8(const float* src, int64_t rows, int64_t cols, int8_t* cbOut, float* scb) {
    quantizeInt8Rows<true>(src, rows, cols, cbOut, scb);
}

inline void quantizeInt8Dynamic(const float* src, int64_t rows, int64_t cols, int8_t* qOut,
                                float* scaleOut) {
    quantizeInt8Rows<false>(src, rows, cols, qOut, scaleOut);
}

// ---- NONE ------------------------------------------------------------------------------------

template <DType From, DType To, StoreKind S>
inline void convertRun(const uint8_t* src, int64_t n, uint8_t* out) {
    constexpr int64_t kIsz = kEsz<From>;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        // one prefetch per source line, as the AVX2 table (x86::kConvertPrefetchAhead: there
        // bf16 -> f16 went from 0.76-0.80 to 0.92-0.99 of its floor; not measured on AVX-512)
        for (int64_t b = 0; b < 32 * kIsz; b += 64) {
            _mm_prefetch(reinterpret_cast<const char*>(src + i * kIsz + b) +
                             x86::kConvertPrefetchAhead,
                         _MM_HINT_T0);
        }
        store32<To, S>(out + i * kEsz<To>, load16<From>(src + i * kIsz),
                       load16<From>(src + (i + 16) * kIsz));
    }
    if (i < n) {
        alignas(64) uint8_t tmp[128] = {};
        std::memcpy(tmp, src + i * kIsz, static_cast<size_t>((n - i) * kIsz));
        storePartial32<To>(out + i * kEsz<To>, load16<From>(tmp), load16<From>(tmp + 16 * kIsz),
                           n - i);
    }
}

// Double quant's codes, 16 values per step: bitsandbytes' seven-step search with gathers from
// the map (blocks.h dynamicEncode, lane for lane).
inline void dynamicEncodeN(const float* map, const float* x, float scale, int64_t n, uint8_t* codes) {
    const __m512 s = _mm512_set1_ps(scale);
    const __m512 half = _mm512_set1_ps(0.5f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i), s);
        __m512i pivot = _mm512_set1_epi32(127);
        __m512i lower = _mm512_setzero_si512();
        __m512i upper = _mm512_set1_epi32(255);
        __m512 val = _mm512_set1_ps(map[127]);
        for (int step = 64; step > 0; step >>= 1) {
            const __mmask16 up = _mm512_cmp_ps_mask(v, val, _CMP_GT_OQ);
            lower = _mm512_mask_blend_epi32(up, lower, pivot);
            upper = _mm512_mask_blend_epi32(up, pivot, upper);
            const __m512i st = _mm512_set1_epi32(step);
            pivot = _mm512_mask_add_epi32(_mm512_sub_epi32(pivot, st), up, pivot, st);
            val = _mm512_i32gather_ps(pivot, map, 4);
        }
        const __mmask16 up = _mm512_cmp_ps_mask(v, val, _CMP_GT_OQ);
        const __m512i beyond = _mm512_mask_blend_epi32(up, lower, upper);
        const __m512 mid = _mm512_mul_ps(_mm512_add_ps(_mm512_i32gather_ps(beyond, map, 4), val), half);
        const __mmask16 far = static_cast<__mmask16>((up & _mm512_cmp_ps_mask(v, mid, _CMP_GT_OQ)) |
                                                     (~up & _mm512_cmp_ps_mask(v, mid, _CMP_LT_OQ)));
        const __m512i code = _mm512_mask_blend_epi32(far, pivot, beyond);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm512_cvtepi32_epi8(code));
    }
    for (; i < n; ++i) codes[i] = dynamicEncode(map, mulRn(x[i], scale));
}

inline void convert(DType from, const void* src, int64_t n, DType to, void* out) {
    const auto* s = static_cast<const uint8_t*>(src);
    auto* o = static_cast<uint8_t*>(out);
    if (from == to) {  // a copy: the AVX2 table's (memory-bound; 32-byte streaming stores)
        x86::copyOut(s, n * (to == DType::kF32 ? 4 : 2), o);
        return;
    }
    forDType(from, [&]<DType F>() {
        forDType(to, [&]<DType T>() {
            withStoreKind(o, n * kEsz<T>, [&]<StoreKind S>() { convertRun<F, T, S>(s, n, o); });
        });
    });
}

}  // namespace x86_512
}  // namespace
}  // namespace sli::kernels

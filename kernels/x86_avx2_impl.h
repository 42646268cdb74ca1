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

#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels/cpu_kernels.h"

namespace sli::kernels {
namespace {
namespace x86 {

constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

inline int64_t minI64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---- conversions and stores ---------------------------------------------------------------

// 8 x f32 -> RNE bf16 bits in the low half of each 32-bit lane, upper half zero (NaN -> quiet
// NaN keeping the sign and top payload bits), exactly sli::f32ToBf16 per lane.
inline __m256i bf16Bits32(__m256 v) {
    const __m256i x = _mm256_castps_si256(v);
    const __m256i top = _mm256_srli_epi32(x, 16);
    const __m256i lsb = _mm256_and_si256(top, _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(x, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb));
    r = _mm256_srli_epi32(r, 16);
    const __m256i nan = _mm256_or_si256(top, _mm256_set1_epi32(0x40));
    const __m256 isNan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    return _mm256_blendv_epi8(r, nan, _mm256_castps_si256(isNan));
}

// 8 x f32 -> 8 x bf16, exactly sli::f32ToBf16.
inline __m128i f32x8ToBf16(__m256 v) {
    const __m256i r = bf16Bits32(v);
    const __m256i packed = _mm256_packus_epi32(r, r);  // [0..3 0..3 | 4..7 4..7]
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}

// 16 x f32 (a = elements 0..7, b = 8..15) -> 16 x bf16 in element order.
inline __m256i f32x16ToBf16(__m256 a, __m256 b) {
    const __m256i p = _mm256_packus_epi32(bf16Bits32(a), bf16Bits32(b));  // [a0-3 b0-3 | a4-7 b4-7]
    return _mm256_permute4x64_epi64(p, _MM_SHUFFLE(3, 1, 2, 0));
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

// 8 x f16 -> f32 as sli::f16ToF32: vcvtph2ps for every number, and NaNs widened bit for bit
// (vcvtph2ps quiets a signalling NaN; the reference, like the CUDA path, keeps its payload).
inline __m256 f16x8ToF32Exact(__m128i h) {
    const __m256 v = _mm256_cvtph_ps(h);
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    if (_mm256_movemask_ps(nan) == 0) return v;
    const __m256i w = _mm256_cvtepu16_epi32(h);
    const __m256i bits = _mm256_or_si256(
        _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0x8000)), 16),
                        _mm256_set1_epi32(0x7f800000)),
        _mm256_slli_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0x3ff)), 13));
    return _mm256_blendv_ps(v, _mm256_castsi256_ps(bits), nan);
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
//
// Within a 4-bit block (or a Q4_0 block) the output depends only on the 4-bit code, so each
// block first computes its 16 products fl32(lut[c] * scale) and converts them once to the
// output type; expanding the codes is then pure table lookup, with no arithmetic per element:
// f16 / bf16 outputs use vpshufb on a low-byte and a high-byte table (16 entries, both lanes)
// and interleave the two results; f32 outputs use vpermps on the two 8-float halves.

// Where the stores go. Non-temporal stores skip the read-for-ownership of lines that are
// overwritten whole: for outputs far larger than the caches they reach about 1.5x the
// plain-store bandwidth here. Only for outputs that start on a cache line (every pooled engine
// output does): with a line split between two loop iterations, streaming measured slower than
// plain stores.
enum class StoreKind { kPlain, kStream };

constexpr int64_t kStreamMinBytes = int64_t{8} << 20;
inline StoreKind storeKindFor(const void* out, int64_t bytes) {
    const bool lineAligned = (reinterpret_cast<uintptr_t>(out) & 63) == 0;
    return bytes >= kStreamMinBytes && lineAligned ? StoreKind::kStream : StoreKind::kPlain;
}

template <StoreKind S>
inline void put256(uint8_t* p, __m256i v) {
    if constexpr (S == StoreKind::kStream) {
        _mm256_stream_si256(reinterpret_cast<__m256i*>(p), v);
    } else {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
    }
}

// Runs fn.template operator()<S>() with the store kind for `out`, fencing after streaming.
// allowStream = false forces plain stores.
template <typename Fn>
inline void withStoreKind(const void* out, int64_t bytes, Fn&& fn, bool allowStream = true) {
    if (allowStream && storeKindFor(out, bytes) == StoreKind::kStream) {
        fn.template operator()<StoreKind::kStream>();
        _mm_sfence();
    } else {
        fn.template operator()<StoreKind::kPlain>();
    }
}

// Per-block tables. f16 / bf16: byte planes of the 16 converted products, each broadcast to
// both lanes. f32: the products of codes 0..7 (f0) and 8..15 (f1).
struct Lut16 {
    __m256i lo8, hi8;
    __m256 f0, f1;
};

// The codebook as the product step wants it: f16 and f32 in code order (c0 = codes 0..7,
// c1 = 8..15); bf16 as [0-3 8-11] and [4-7 12-15], so that one vpackusdw yields code order.
struct Codes16 {
    __m256 c0, c1;
};
template <DType D>
inline Codes16 codesFor(const float* lut) {
    if constexpr (D == DType::kBF16) {
        return {_mm256_setr_ps(lut[0], lut[1], lut[2], lut[3], lut[8], lut[9], lut[10], lut[11]),
                _mm256_setr_ps(lut[4], lut[5], lut[6], lut[7], lut[12], lut[13], lut[14], lut[15])};
    } else {
        return {_mm256_loadu_ps(lut), _mm256_loadu_ps(lut + 8)};
    }
}

template <DType D>
inline Lut16 makeLut16(const Codes16& c, __m256 scale) {
    Lut16 t;
    t.f0 = _mm256_mul_ps(c.c0, scale);
    t.f1 = _mm256_mul_ps(c.c1, scale);
    if constexpr (D == DType::kF32) {
        t.lo8 = t.hi8 = _mm256_setzero_si256();
        return t;
    } else {
        __m256i h;  // 16-bit results, lane 0 = codes 0..7, lane 1 = codes 8..15
        if constexpr (D == DType::kF16) {
            h = _mm256_set_m128i(_mm256_cvtps_ph(t.f1, kRne), _mm256_cvtps_ph(t.f0, kRne));
        } else {
            h = _mm256_packus_epi32(bf16Bits32(t.f0), bf16Bits32(t.f1));
        }
        const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                               0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        h = _mm256_shuffle_epi8(h, split);  // [lo 0..7 | hi 0..7] [lo 8..15 | hi 8..15]
        t.lo8 = _mm256_permute4x64_epi64(h, _MM_SHUFFLE(2, 0, 2, 0));
        t.hi8 = _mm256_permute4x64_epi64(h, _MM_SHUFFLE(3, 1, 3, 1));
        return t;
    }
}

// 16 packed bytes -> the 32 table indices of the f16 / bf16 expansion, ordered so that the
// byte interleave lands in element order without a cross-lane shuffle: lane 0 holds elements
// 0..7 and 16..23, lane 1 elements 8..15 and 24..31. One vpshufb duplicates each source byte
// into the two positions its nibbles go to, then even (bitsandbytes: high nibble first) or
// upper-half (Q4_0: high nibbles are elements 16..31) positions take the high nibble.
template <bool kQ4>
inline __m256i nibbleIndices(const uint8_t* p) {
    const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    __m256i ctl, hiPos;
    if constexpr (kQ4) {
        ctl = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7,
                               8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
        hiPos = _mm256_setr_epi64x(0, -1, 0, -1);
    } else {
        ctl = _mm256_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 8, 8, 9, 9, 10, 10, 11, 11,
                               4, 4, 5, 5, 6, 6, 7, 7, 12, 12, 13, 13, 14, 14, 15, 15);
        hiPos = _mm256_set1_epi16(0x00ff);
    }
    const __m256i d = _mm256_shuffle_epi8(b, ctl);
    // srli_epi16 by 4 brings each byte's high nibble into its own low 4 bits.
    __m256i n;
    if constexpr (kQ4) {  // whole 32-bit groups: vpblendd (any vector pipe) instead of vpblendvb
        (void)hiPos;
        n = _mm256_blend_epi32(d, _mm256_srli_epi16(d, 4), 0xcc);
    } else {
        n = _mm256_blendv_epi8(d, _mm256_srli_epi16(d, 4), hiPos);
    }
    return _mm256_and_si256(n, _mm256_set1_epi8(0x0f));
}

// 32 values of a 16-bit output type from 16 source bytes.
template <bool kQ4, StoreKind S>
inline void expand32x16(const Lut16& t, const uint8_t* p, uint8_t* o) {
    const __m256i idx = nibbleIndices<kQ4>(p);
    const __m256i lo = _mm256_shuffle_epi8(t.lo8, idx);
    const __m256i hi = _mm256_shuffle_epi8(t.hi8, idx);
    put256<S>(o, _mm256_unpacklo_epi8(lo, hi));       // elements 0..15
    put256<S>(o + 32, _mm256_unpackhi_epi8(lo, hi));  // elements 16..31
}

// 8 f32 outputs for the 8 codes in the low 4 bits of the lanes of idx (upper bits ignored).
inline __m256 lookup8(const Lut16& t, __m256i idx) {
    const __m256 a = _mm256_permutevar8x32_ps(t.f0, idx);
    const __m256 b = _mm256_permutevar8x32_ps(t.f1, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// 32 f32 values from 16 source bytes.
template <bool kQ4, StoreKind S>
inline void expand32x32(const Lut16& t, const uint8_t* p, uint8_t* o) {
    if constexpr (kQ4) {  // element j: low nibble of qs[j], element j + 16: its high nibble
        const __m256i x0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
        const __m256i x1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)));
        put256<S>(o, _mm256_castps_si256(lookup8(t, x0)));
        put256<S>(o + 32, _mm256_castps_si256(lookup8(t, x1)));
        put256<S>(o + 64, _mm256_castps_si256(lookup8(t, _mm256_srli_epi32(x0, 4))));
        put256<S>(o + 96, _mm256_castps_si256(lookup8(t, _mm256_srli_epi32(x1, 4))));
    } else {  // element 2k: high nibble of byte k, 2k + 1: low nibble
        const __m256i shifts = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);
        for (int q = 0; q < 4; ++q) {
            int32_t w;
            std::memcpy(&w, p + 4 * q, 4);
            const __m256i idx = _mm256_srlv_epi32(_mm256_set1_epi32(w), shifts);
            put256<S>(o + 32 * q, _mm256_castps_si256(lookup8(t, idx)));
        }
    }
}

template <bool kQ4, DType D, StoreKind S>
inline void expand32(const Lut16& t, const uint8_t* p, uint8_t* o) {
    if constexpr (D == DType::kF32) {
        expand32x32<kQ4, S>(t, p, o);
    } else {
        expand32x16<kQ4, S>(t, p, o);
    }
}

// ---- NF4 / FP4 ---------------------------------------------------------------------------------

// One whole block: its table for `scale`, then the expansion of its codes.
template <DType D, StoreKind S>
inline void dequantize4bitBlock(const Codes16& codes, __m256 scale, const uint8_t* p, int blocksize,
                                uint8_t* o) {
    constexpr int64_t kEsz = D == DType::kF32 ? 4 : 2;
    const Lut16 t = makeLut16<D>(codes, scale);
    for (int i = 0; i < blocksize; i += 32) expand32<false, D, S>(t, p + i / 2, o + i * kEsz);
}

template <DType D, StoreKind S>
inline void dequantize4bitBlocks(const float* lut, const uint8_t* packed, const float* absmax,
                                 int64_t nblocks, int blocksize, uint8_t* out) {
    constexpr int64_t kEsz = D == DType::kF32 ? 4 : 2;
    const Codes16 codes = codesFor<D>(lut);
    for (int64_t b = 0; b < nblocks; ++b) {
        dequantize4bitBlock<D, S>(codes, _mm256_broadcast_ss(absmax + b),
                                  packed + b * (blocksize / 2), blocksize,
                                  out + b * blocksize * kEsz);
    }
}

// Double-quant absmax of block b: fl32(fl32(map[code] * nested) + offset), as two scalar SSE
// instructions (explicitly unfused, whatever the contraction flags).
inline __m128 dqAbsmax(const DoubleQuantAbsmax& dq, int64_t b, __m128 nested, __m128 offset) {
    return _mm_add_ss(_mm_mul_ss(_mm_load_ss(dq.map + dq.codes[b]), nested), offset);
}

// The same as dequantize4bitBlocks with the absmax rebuilt inside the loop. Per nested group
// (kNestedBlocksize blocks sharing one nested absmax), the rebuilt absmax of each of the 256
// codes, fl32(fl32(map[c] * nested) + offset), goes into an L1 table (32 vector multiplies and
// adds, 8 lanes each), and a block's absmax is then that table's entry for its code: a load,
// no arithmetic per block (the block step broadcasts it from memory). Runs of fewer than
// kDqTableMinBlocks blocks in a group (a thread's range cut mid-group, small tensors) rebuild
// block by block instead, into the same L1 array. On the development Xeon (2026-11-28), with
// source and output in L2 (bench/kernels_bench dequantize_hot), the table took NF4 + double
// quant from 0.82-0.95 to 0.91-1.01 of plain NF4 on the AVX-512 table and from 0.86-0.91 to
// 0.95-0.99 on the AVX2 one; from memory it was at the floor before and after. first = the
// tensor's index of the range's first block.
constexpr int64_t kDqTableMinBlocks = 32;

// The rebuild itself (shared with x86_avx512_impl.h): calls block(j, a) for every block j of
// [0, nblocks), a pointing at its rebuilt absmax in an L1 array.
template <typename BlockFn>
inline void forEachDqBlock(const DoubleQuantAbsmax& dq, int64_t first, int64_t nblocks,
                           BlockFn&& block) {
    const __m128 offset = _mm_set_ss(dq.offset);
    alignas(64) float absmax[256];
    for (int64_t b = 0; b < nblocks;) {
        const int64_t g = (first + b) / kNestedBlocksize;
        const int64_t groupEnd = minI64(nblocks, (g + 1) * kNestedBlocksize - first);
        const float nestedValue = loadF32(dq.nestedAbsmax, g);
        if (groupEnd - b >= kDqTableMinBlocks) {
            const __m256 nested = _mm256_set1_ps(nestedValue);
            const __m256 off = _mm256_set1_ps(dq.offset);
            for (int c = 0; c < 256; c += 8) {
                _mm256_store_ps(absmax + c,
                                _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(dq.map + c), nested), off));
            }
            for (int64_t j = b; j < groupEnd; ++j) block(j, absmax + dq.codes[first + j]);
            b = groupEnd;
            continue;
        }
        const __m128 nested = _mm_set_ss(nestedValue);
        for (int64_t j = b; j < groupEnd; ++j) {
            _mm_store_ss(absmax + (j - b), dqAbsmax(dq, first + j, nested, offset));
        }
        for (int64_t j = b; j < groupEnd; ++j) block(j, absmax + (j - b));
        b = groupEnd;
    }
}

template <DType D, StoreKind S>
inline void dequantize4bitDqBlocks(const float* lut, const uint8_t* packed,
                                   const DoubleQuantAbsmax& dq, int64_t first, int64_t nblocks,
                                   int blocksize, uint8_t* out) {
    constexpr int64_t kEsz = D == DType::kF32 ? 4 : 2;
    const Codes16 codes = codesFor<D>(lut);
    forEachDqBlock(dq, first, nblocks, [&](int64_t j, const float* a) {
        dequantize4bitBlock<D, S>(codes, _mm256_broadcast_ss(a), packed + j * (blocksize / 2),
                                  blocksize, out + j * blocksize * kEsz);
    });
}

template <DType D>
inline void dequantize4bitAs(const float* lut, const uint8_t* packed, const float* absmax,
                             int64_t nblocks, int blocksize, uint8_t* out) {
    constexpr int64_t kEsz = D == DType::kF32 ? 4 : 2;
    withStoreKind(out, nblocks * blocksize * kEsz, [&]<StoreKind S>() {
        dequantize4bitBlocks<D, S>(lut, packed, absmax, nblocks, blocksize, out);
    });
}

inline void dequantize4bit(Codebook4 cb, const uint8_t* packed, const float* absmax, int64_t n,
                           int blocksize, DType dst, void* out) {
    const float* lut = cb == Codebook4::kNf4 ? kNf4Codebook : kFp4Codebook;
    const int64_t fullBlocks = n / blocksize;
    auto* o = static_cast<uint8_t*>(out);
    if (dst == DType::kF16) {
        dequantize4bitAs<DType::kF16>(lut, packed, absmax, fullBlocks, blocksize, o);
    } else if (dst == DType::kBF16) {
        dequantize4bitAs<DType::kBF16>(lut, packed, absmax, fullBlocks, blocksize, o);
    } else {
        dequantize4bitAs<DType::kF32>(lut, packed, absmax, fullBlocks, blocksize, o);
    }
    const int64_t done = fullBlocks * blocksize;
    if (done < n) {  // partial last block
        const int64_t esz = dst == DType::kF32 ? 4 : 2;
        referenceKernels().dequantize4bit(cb, packed + done / 2, absmax + fullBlocks, n - done,
                                          blocksize, dst, o + done * esz);
    }
}

template <DType D>
inline void dequantize4bitDqAs(const float* lut, const uint8_t* packed, const DoubleQuantAbsmax& dq,
                               int64_t first, int64_t nblocks, int blocksize, uint8_t* out) {
    constexpr int64_t kEsz = D == DType::kF32 ? 4 : 2;
    withStoreKind(out, nblocks * blocksize * kEsz, [&]<StoreKind S>() {
        dequantize4bitDqBlocks<D, S>(lut, packed, dq, first, nblocks, blocksize, out);
    });
}

// The partial last block of a double-quant range (n not a multiple of blocksize): its absmax,
// then the reference decode. Shared with x86_avx512_impl.h.
inline void dequantize4bitDqTail(Codebook4 cb, const uint8_t* packed, const DoubleQuantAbsmax& dq,
                                 int64_t firstBlock, int64_t fullBlocks, int64_t n, int blocksize,
                                 DType dst, uint8_t* o) {
    const int64_t done = fullBlocks * blocksize;
    if (done >= n) return;
    const int64_t b = firstBlock + fullBlocks;
    const float am = _mm_cvtss_f32(dqAbsmax(
        dq, b, _mm_set_ss(loadF32(dq.nestedAbsmax, b / kNestedBlocksize)), _mm_set_ss(dq.offset)));
    const int64_t esz = dst == DType::kF32 ? 4 : 2;
    referenceKernels().dequantize4bit(cb, packed + done / 2, &am, n - done, blocksize, dst,
                                      o + done * esz);
}

inline void dequantize4bitDq(Codebook4 cb, const uint8_t* packed, const DoubleQuantAbsmax& dq,
                             int64_t firstBlock, int64_t n, int blocksize, DType dst, void* out) {
    const float* lut = cb == Codebook4::kNf4 ? kNf4Codebook : kFp4Codebook;
    const int64_t fullBlocks = n / blocksize;
    auto* o = static_cast<uint8_t*>(out);
    if (dst == DType::kF16) {
        dequantize4bitDqAs<DType::kF16>(lut, packed, dq, firstBlock, fullBlocks, blocksize, o);
    } else if (dst == DType::kBF16) {
        dequantize4bitDqAs<DType::kBF16>(lut, packed, dq, firstBlock, fullBlocks, blocksize, o);
    } else {
        dequantize4bitDqAs<DType::kF32>(lut, packed, dq, firstBlock, fullBlocks, blocksize, o);
    }
    dequantize4bitDqTail(cb, packed, dq, firstBlock, fullBlocks, n, blocksize, dst, o);
}

// ---- NF4 / FP4 quantization --------------------------------------------------------------------
//
// Codes are computed as NEGATIVE integers (-code, as all-ones compare masks add up) by a
// branchless binary search whose table indices are the masks themselves: vpermilps uses the
// low 2 bits of an index and vpermps the low 3, so -1, -2, ... select entries 3, 2, ... (7, 6,
// ...). The 2- and 4-entry levels use the in-lane vpermilps (shorter latency: measured 15 %
// faster here than vpermps for every level). Every comparison is false for NaN, so NaN ->
// code 0, as in the reference. The thresholds ascend, so the search finds the same code as
// counting the thresholds below x.

inline __m256i asI(__m256 m) { return _mm256_castps_si256(m); }

// -code of NF4 for 8 normalized values.
inline __m256i nf4NegCodes(__m256 x) {
    const float* t = kNf4Thresholds;
    // entry (-j) & mask holds the threshold of subtree j (j = the bits found so far)
    const __m256 tab2 = _mm256_setr_ps(t[3], 0, 0, t[11], t[3], 0, 0, t[11]);
    const __m256 tab3 = _mm256_setr_ps(t[1], t[13], t[9], t[5], t[1], t[13], t[9], t[5]);
    const __m256i j1 = asI(_mm256_cmp_ps(x, _mm256_set1_ps(t[7]), _CMP_GT_OQ));
    const __m256i m2 = asI(_mm256_cmp_ps(x, _mm256_permutevar_ps(tab2, j1), _CMP_GT_OQ));
    const __m256i j2 = _mm256_add_epi32(_mm256_add_epi32(j1, j1), m2);
    const __m256 tab4 = _mm256_setr_ps(t[0], t[14], t[12], t[10], t[8], t[6], t[4], t[2]);
    const __m256i m1 = asI(_mm256_cmp_ps(x, _mm256_permutevar_ps(tab3, j2), _CMP_GT_OQ));
    const __m256i j3 = _mm256_add_epi32(_mm256_add_epi32(j2, j2), m1);
    const __m256i m0 = asI(_mm256_cmp_ps(x, _mm256_permutevar8x32_ps(tab4, j3), _CMP_GT_OQ));
    return _mm256_add_epi32(_mm256_add_epi32(j3, j3), m0);
}

// -(count + 8 sign) for 8 normalized FP4 values: count = the magnitude thresholds below |x|
// (0..7), sign = x < 0 (not -0, not NaN). The FP4 code of that index is looked up later, on 32
// packed bytes at once (packFp4Bnb: one vpshufb instead of a vpermd per 8 values).
inline __m256i fp4NegIndex(__m256 x) {
    const float* L = kFp4Thresholds;
    const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    const __m256 tab2 = _mm256_setr_ps(L[1], 0, 0, L[5], L[1], 0, 0, L[5]);
    const __m256 tab3 = _mm256_setr_ps(L[0], L[6], L[4], L[2], L[0], L[6], L[4], L[2]);
    const __m256i j1 = asI(_mm256_cmp_ps(a, _mm256_set1_ps(L[3]), _CMP_GT_OQ));
    const __m256i m1 = asI(_mm256_cmp_ps(a, _mm256_permutevar_ps(tab2, j1), _CMP_GT_OQ));
    const __m256i j2 = _mm256_add_epi32(_mm256_add_epi32(j1, j1), m1);
    const __m256i m0 = asI(_mm256_cmp_ps(a, _mm256_permutevar_ps(tab3, j2), _CMP_GT_OQ));
    const __m256i k = _mm256_add_epi32(_mm256_add_epi32(j2, j2), m0);  // -(count below |x|)
    const __m256i sign = asI(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));  // not -0, NaN
    return _mm256_add_epi32(k, _mm256_and_si256(sign, _mm256_set1_epi32(-8)));
}

// Four vectors of 8 negated codes (elements 0..31) -> 16 bytes, element 2k in the high nibble.
inline __m128i packNegBnb(__m256i c0, __m256i c1, __m256i c2, __m256i c3) {
    const __m256i p16a = _mm256_packs_epi32(c0, c1);  // [0-3 8-11 | 4-7 12-15]
    const __m256i p16b = _mm256_packs_epi32(c2, c3);  // [16-19 24-27 | 20-23 28-31]
    __m256i p8 = _mm256_packs_epi16(p16a, p16b);      // [0-3 8-11 16-19 24-27 | 4-7 ...]
    p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // unsigned [16, 1] times the signed -c, summed per pair: -((c[2k] << 4) | c[2k+1])
    const __m256i w = _mm256_sub_epi16(_mm256_setzero_si256(),
                                       _mm256_maddubs_epi16(_mm256_set1_epi16(0x0110), p8));
    return _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
}

// packNegBnb for FP4: four vectors of -(count + 8 sign) -> 16 bytes of FP4 codes. The low
// nibble of each packed byte, (16 - index) & 15, selects the code in a 16-entry vpshufb table;
// the codes are then non-negative, so the nibble pairs need no negation.
inline __m128i packFp4Bnb(__m256i c0, __m256i c1, __m256i c2, __m256i c3) {
    const uint8_t* mag = kFp4MagnitudeCode;
    // the FP4 code of index v = count + 8 sign
    const auto code = [mag](int v) { return static_cast<char>(mag[v & 7] | (v & 8)); };
    const __m128i lut128 =
        _mm_setr_epi8(code(0), code(15), code(14), code(13), code(12), code(11), code(10), code(9),
                      code(8), code(7), code(6), code(5), code(4), code(3), code(2), code(1));
    const __m256i lut = _mm256_broadcastsi128_si256(lut128);
    const __m256i p16a = _mm256_packs_epi32(c0, c1);
    const __m256i p16b = _mm256_packs_epi32(c2, c3);
    __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    p8 = _mm256_shuffle_epi8(lut, _mm256_and_si256(p8, _mm256_set1_epi8(0x0f)));
    // unsigned codes times the signed [16, 1], summed per pair: (c[2k] << 4) | c[2k+1]
    const __m256i w = _mm256_maddubs_epi16(p8, _mm256_set1_epi16(0x0110));
    return _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
}

// Software prefetch of the source `kPrefetchAhead` bytes ahead, one per line: quantization
// reads its f32 source once, from memory; with the hardware prefetcher alone the compute and
// the loads overlapped poorly here. prefetch128 covers the 128 bytes at x and is issued from
// the encoding loops themselves (measured 5-6 % faster than a prefetch loop per group of
// blocks; 4 KiB ahead beat 2, 8 and 16 KiB).
constexpr int64_t kPrefetchAhead = 4096;
inline void prefetch128(const float* x) {
    _mm_prefetch(reinterpret_cast<const char*>(x) + kPrefetchAhead, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(x) + kPrefetchAhead + 64, _MM_HINT_T0);
}
// The same for 32 bf16 values (64 bytes).
inline void prefetch128(const uint16_t* x) {
    _mm_prefetch(reinterpret_cast<const char*>(x) + kPrefetchAhead, _MM_HINT_T0);
}

// 8 source values at x as f32: an f32 source as it is, a bf16 one (uint16_t bits) widened,
// exactly, as it is read (the 4-bit quantizers take either: quantize4bit, quantize4bitBf16).
inline __m256 load8(const float* x) { return _mm256_loadu_ps(x); }
inline __m256 load8(const uint16_t* x) {
    const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(w), 16));
}

// Lane j of the result = max over the 8 lanes of a[j] (no NaN in the inputs).
inline __m256 hmax8x8(const __m256* a) {
    __m256 t[4];
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm256_max_ps(_mm256_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                             _mm256_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    }
    __m256 u[2];
    for (int i = 0; i < 2; ++i) {
        u[i] = _mm256_max_ps(_mm256_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    }
    return _mm256_max_ps(_mm256_permute2f128_ps(u[0], u[1], 0x20),
                         _mm256_permute2f128_ps(u[0], u[1], 0x31));
}

// 8 lanes of running max |x| over `count` (a multiple of 16) values (f32 or bf16, see load8).
// max(|x|, acc) returns acc when |x| is NaN: NaN never wins, as with fmax. kPrefetch: one
// prefetch per 16 values, kPrefetchAhead bytes ahead (for the paths that take one block at a
// time).
template <bool kPrefetch = false, typename Src>
inline __m256 absMaxLanes(const Src* x, int count) {
    const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int i = 0; i < count; i += 16) {
        if constexpr (kPrefetch) {
            _mm_prefetch(reinterpret_cast<const char*>(x + i) + kPrefetchAhead, _MM_HINT_T0);
        }
        acc0 = _mm256_max_ps(_mm256_and_ps(load8(x + i), absMask), acc0);
        acc1 = _mm256_max_ps(_mm256_and_ps(load8(x + i + 8), absMask), acc1);
    }
    return _mm256_max_ps(acc0, acc1);
}

// 32 codes (4 vectors from codes32) -> 16 packed bytes.
template <Codebook4 CB>
inline __m128i pack4bit(const __m256i* c) {
    if constexpr (CB == Codebook4::kNf4) {
        return packNegBnb(c[0], c[1], c[2], c[3]);
    } else {
        return packFp4Bnb(c[0], c[1], c[2], c[3]);
    }
}

template <Codebook4 CB, typename Src>
inline void codes32(const Src* x, __m256 s, __m256i* c) {
    for (int k = 0; k < 4; ++k) {
        const __m256 xn = _mm256_mul_ps(load8(x + 8 * k), s);
        c[k] = CB == Codebook4::kNf4 ? nf4NegCodes(xn) : fp4NegIndex(xn);
    }
}

// Codes of one block of `blocksize` (a multiple of 32) values times s (1 / absmax). Software
// pipelined: the search of the next 32 values is issued before the packing of the current
// ones. The loop was bound neither by a pipe nor by its op count alone (about 2 vector ops
// per cycle of 4): the long dependent chains of search and packing back to back seem to fill
// the FP scheduler; interleaving them measured 5-8 % faster (NF4, FP4).
template <Codebook4 CB, typename Src>
inline void encode4bitBlock(const Src* x, __m256 s, int blocksize, uint8_t* out) {
    __m256i c[4];
    codes32<CB>(x, s, c);
    for (int i = 32; i < blocksize; i += 32) {
        __m256i n[4];
        codes32<CB>(x + i, s, n);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + (i - 32) / 2), pack4bit<CB>(c));
        for (int k = 0; k < 4; ++k) c[k] = n[k];
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + (blocksize - 32) / 2), pack4bit<CB>(c));
}

// Src: float, or uint16_t for a bf16 source (load8).
template <Codebook4 CB, typename Src>
inline void quantize4bitBlocks(const Src* src, int64_t nblocks, int blocksize, uint8_t* packed,
                               float* absmax) {
    // Whole groups of 8 blocks: one transposed reduction and one vdivps give their absmax
    // and 1 / absmax (IEEE division, as the reference); the group stays in L1 / L2 for the
    // encoding pass. A straight-line loop for whole groups only: with the group size and
    // the partial last group handled in the same loop it measured 20 % slower.
    int64_t g = 0;
    if (blocksize <= 512) {
        for (; g + 8 <= nblocks; g += 8) {
            const Src* xg = src + g * blocksize;
            __m256 acc[8];
            for (int j = 0; j < 8; ++j) acc[j] = absMaxLanes(xg + j * blocksize, blocksize);
            const __m256 am = hmax8x8(acc);
            _mm256_storeu_ps(absmax + g, am);
            alignas(32) float inv[8];
            _mm256_store_ps(inv, _mm256_div_ps(_mm256_set1_ps(1.0f), am));
            // the 8 blocks as one pipelined run of 32-value chunks (see encode4bitBlock)
            uint8_t* out = packed + g * (blocksize / 2);
            __m256i c[4];
            prefetch128(xg);
            codes32<CB>(xg, _mm256_broadcast_ss(inv), c);
            for (int j = 0; j < 8; ++j) {
                const __m256 sj = _mm256_broadcast_ss(inv + j);
                const Src* x = xg + j * blocksize;
                for (int i = j == 0 ? 32 : 0; i < blocksize; i += 32) {
                    __m256i n[4];
                    prefetch128(x + i);
                    codes32<CB>(x + i, sj, n);
                    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), pack4bit<CB>(c));
                    out += 16;
                    for (int k = 0; k < 4; ++k) c[k] = n[k];
                }
            }
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out), pack4bit<CB>(c));
        }
    }
    for (; g < nblocks; ++g) {  // the rest (or every block past 512 values), one at a time
        const Src* x = src + g * blocksize;
        const float am = hmax8(absMaxLanes<true>(x, blocksize));
        std::memcpy(absmax + g, &am, 4);
        encode4bitBlock<CB>(x, _mm256_set1_ps(1.0f / am), blocksize, packed + g * (blocksize / 2));
    }
}

// NF4 / FP4 quantization of n values (f32, or bf16 bits as uint16_t): full blocks through
// blocks.template operator()<CB>(count), a partial last block through the reference. Shared
// with x86_avx512_impl.h.
template <typename Src, typename BlocksFn>
inline void quantize4bitWith(Codebook4 cb, const Src* src, int64_t n, int blocksize,
                             uint8_t* packed, float* absmax, BlocksFn&& blocks) {
    const int64_t fullBlocks = n / blocksize;
    if (cb == Codebook4::kNf4) {
        blocks.template operator()<Codebook4::kNf4>(fullBlocks);
    } else {
        blocks.template operator()<Codebook4::kFp4>(fullBlocks);
    }
    const int64_t done = fullBlocks * blocksize;
    if (done < n) {
        if constexpr (std::is_same_v<Src, float>) {
            referenceKernels().quantize4bit(cb, src + done, n - done, blocksize, packed + done / 2,
                                            absmax + fullBlocks);
        } else {
            referenceKernels().quantize4bitBf16(cb, src + done, n - done, blocksize,
                                                packed + done / 2, absmax + fullBlocks);
        }
    }
}

inline void quantize4bit(Codebook4 cb, const float* src, int64_t n, int blocksize,
                         uint8_t* packed, float* absmax) {
    quantize4bitWith(cb, src, n, blocksize, packed, absmax, [&]<Codebook4 CB>(int64_t full) {
        quantize4bitBlocks<CB>(src, full, blocksize, packed, absmax);
    });
}

// From bf16: the same blocks, each 8 values widened as they are loaded (vpmovzxwd + shift).
inline void quantize4bitBf16(Codebook4 cb, const uint16_t* src, int64_t n, int blocksize,
                             uint8_t* packed, float* absmax) {
    quantize4bitWith(cb, src, n, blocksize, packed, absmax, [&]<Codebook4 CB>(int64_t full) {
        quantize4bitBlocks<CB>(src, full, blocksize, packed, absmax);
    });
}

// ---- Q4_0 --------------------------------------------------------------------------------------

// The f16 / bf16 tables of a Q4_0 block with a finite scale d from 8 products only. The
// products (q - 8) * d are exact in f32 (an 11-bit d times a 4-bit integer), so the table is
// odd-symmetric: entry c < 8 is entry (16 - c)'s magnitude code k = 8 - c with the sign bit
// flipped, entry 8 (k = 0) is a zero with d's sign, entries 9..15 are k = 1..7. One 8-wide
// product and conversion (k = 1..8) then two vpshufb build the byte planes. (NaN / Inf d
// break the symmetry (0 * Inf): those blocks take makeLut16.)
//
// The vectors the table steps use, in the order of Q4Const. The bf16 loops read them as
// memory operands through an opaque pointer: held as register constants they left GCC short
// of the 16 ymm registers, and it rebuilt two of them in every block (mov + vmovd +
// vpbroadcastd, on a loop bound by vector ops): 16 % slower in L1.
enum Q4Const {
    kQ4K18, kQ4Half, kQ4Bit16, kQ4Tops, kQ4CtlLo, kQ4CtlHi, kQ4KeepHi, kQ4SignHi, kQ4K1357,
    kQ4Dup, kQ4Pow2
};
alignas(32) const int32_t kQ4ConstWords[11][8] = {
    // k = 1..8 as floats
    {0x3f800000, 0x40000000, 0x40400000, 0x40800000, 0x40a00000, 0x40c00000, 0x40e00000,
     0x41000000},
    {0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000},
    {0x10000, 0x10000, 0x10000, 0x10000, 0x10000, 0x10000, 0x10000, 0x10000},
    // bytes 2, 3, 6, 7, 10, 11, 14, 15 (the top halves) then zeros, per lane
    {0x07060302, 0x0f0e0b0a, -1, -1, 0x07060302, 0x0f0e0b0a, -1, -1},
    // bytes 14, 12, ..., 0, zero, 0, 2, ..., 12: the low byte of code k (byte 2 (k - 1))
    {0x080a0c0e, 0x00020406, 0x04020080, 0x0c0a0806, 0x080a0c0e, 0x00020406, 0x04020080,
     0x0c0a0806},
    // bytes 15, 13, ..., 1, 1, 1, 3, ..., 13: the high byte of code k (byte 2 (k - 1) + 1)
    {0x090b0d0f, 0x01030507, 0x05030101, 0x0d0b0907, 0x090b0d0f, 0x01030507, 0x05030101,
     0x0d0b0907},
    // keep every high byte, only the sign of entry 8
    {-1, -1, static_cast<int32_t>(0xffffff80u), -1, -1, -1, static_cast<int32_t>(0xffffff80u), -1},
    // flip the sign of entries 0..7
    {static_cast<int32_t>(0x80808080u), static_cast<int32_t>(0x80808080u), 0, 0,
     static_cast<int32_t>(0x80808080u), static_cast<int32_t>(0x80808080u), 0, 0},
    // k = 1, 3, 5, 7 as floats, in both lanes (two blocks at once)
    {0x3f800000, 0x40400000, 0x40a00000, 0x40e00000, 0x3f800000, 0x40400000, 0x40a00000,
     0x40e00000},
    // the top halves of k = 1, 1, 3, 1, 5, 3, 7, 1 per lane
    {0x03020302, 0x03020706, 0x07060b0a, 0x03020f0e, 0x03020302, 0x03020706, 0x07060b0a,
     0x03020f0e},
    // plus 0, 1, 0, 2, 0, 1, 0, 3 in the bf16 exponent field: k = 1..8
    {0x00800000, 0x01000000, 0x00800000, 0x01800000, 0x00800000, 0x01000000, 0x00800000,
     0x01800000},
};

// The codes of k = 1..8 times d, in the low 16 bytes of both lanes. bf16: RNE of an exact,
// never NaN product x as x + 0x8000 - (bit 16 of x clear): and + compare + two adds, no shift
// (shifts share the two shuffle pipes here; measured 2 % faster than x + 0x7fff + lsb).
template <DType D>
inline __m256i q4Codes8(const __m256i* kc, __m256 d) {
    const auto k = [kc](Q4Const i) { return _mm256_load_si256(kc + i); };
    const __m256 prod = _mm256_mul_ps(_mm256_castsi256_ps(k(kQ4K18)), d);
    if constexpr (D == DType::kF16) {
        return _mm256_broadcastsi128_si256(_mm256_cvtps_ph(prod, kRne));
    } else {  // top halves gathered per lane, then both lanes (vpermq: faster here than
              // vpermd or vextracti128 + vpunpcklqdq + vinserti128)
        const __m256i x = _mm256_castps_si256(prod);
        const __m256i even =
            _mm256_cmpeq_epi32(_mm256_and_si256(x, k(kQ4Bit16)), _mm256_setzero_si256());
        const __m256i r = _mm256_add_epi32(_mm256_add_epi32(x, k(kQ4Half)), even);
        return _mm256_permute4x64_epi64(_mm256_shuffle_epi8(r, k(kQ4Tops)),
                                        _MM_SHUFFLE(2, 0, 2, 0));
    }
}

// The byte planes of the 16-entry table from q4Codes8's 8 codes.
inline Lut16 q4Planes(const __m256i* kc, __m256i h) {
    const auto k = [kc](Q4Const i) { return _mm256_load_si256(kc + i); };
    Lut16 t;
    t.f0 = t.f1 = _mm256_setzero_ps();
    t.lo8 = _mm256_shuffle_epi8(h, k(kQ4CtlLo));
    t.hi8 = _mm256_xor_si256(_mm256_and_si256(_mm256_shuffle_epi8(h, k(kQ4CtlHi)), k(kQ4KeepHi)),
                             k(kQ4SignHi));
    return t;
}

// Expands nblocks Q4_0 blocks at p with table(b) = block b's Lut16. Software pipelined: block
// b + 1's table is built before block b is expanded (building it two blocks ahead, in two
// stages, measured 3 % slower), two blocks a turn (no register moves, no branch).
template <DType D, StoreKind S, typename Table>
inline void expandQ4_0(const uint8_t* p, int64_t nblocks, uint8_t* out, Table&& table) {
    constexpr int64_t kEsz = D == DType::kF32 ? 4 : 2;
    constexpr int64_t kBs = sizeof(block_q4_0);
    if (nblocks <= 0) return;
    Lut16 t = table(0);
    int64_t b = 0;
    for (; b + 2 < nblocks; b += 2) {
        const Lut16 t1 = table(b + 1);
        expand32<true, D, S>(t, p + b * kBs + 2, out + b * kQk4_0 * kEsz);
        t = table(b + 2);
        expand32<true, D, S>(t1, p + (b + 1) * kBs + 2, out + (b + 1) * kQk4_0 * kEsz);
    }
    for (; b < nblocks; ++b) {
        const Lut16 next = b + 1 < nblocks ? table(b + 1) : t;
        expand32<true, D, S>(t, p + b * kBs + 2, out + b * kQk4_0 * kEsz);
        t = next;
    }
}

// bf16: two consecutive blocks with finite, nonzero scales d[0], d[1] at once, block 0 in the
// low 128-bit lane of every vector and block 1 in the high one. Their tables come from one
// product and one rounding (k = 1, 3, 5, 7) without a lane-crossing broadcast, their 16 + 16
// source bytes need no index shuffle (one vector holds both blocks' low nibbles, another
// their high nibbles), and vperm2i128 puts each block's values back together (one per 32
// output bytes): 28 vector ops per two blocks instead of 38, 20 % faster in L1 than one
// block at a time. (f16 keeps one block at a time: its table is one vcvtps2ph, and a
// two-block version measured 3 % slower in L1.)
inline Lut16 q4PairLut16Bf16(const __m256i* kc, const float* d) {
    const auto k = [kc](Q4Const i) { return _mm256_load_si256(kc + i); };
    const __m256 dd = _mm256_blend_ps(_mm256_broadcast_ss(d), _mm256_broadcast_ss(d + 1), 0xf0);
    // k = 1, 3, 5, 7 rounded (see q4Codes8); k = 2, 4, 8 and 6 are k = 1 and 3 times a power
    // of two, exact in bf16 too: their codes are those of k = 1, 3 plus 1, 2 or 3 in the
    // exponent field (d is finite and nonzero here, 8 d far from overflow).
    const __m256i x = _mm256_castps_si256(_mm256_mul_ps(_mm256_castsi256_ps(k(kQ4K1357)), dd));
    const __m256i even =
        _mm256_cmpeq_epi32(_mm256_and_si256(x, k(kQ4Bit16)), _mm256_setzero_si256());
    const __m256i r = _mm256_add_epi32(_mm256_add_epi32(x, k(kQ4Half)), even);
    // codes of k = 1..8: block 0 in lane 0, block 1 in lane 1
    const __m256i h = _mm256_add_epi16(_mm256_shuffle_epi8(r, k(kQ4Dup)), k(kQ4Pow2));
    return q4Planes(kc, h);
}

template <StoreKind S>
inline void expandQ4Pair(const Lut16& t, const uint8_t* blk, uint8_t* o) {
    constexpr int64_t kBs = sizeof(block_q4_0);
    // two broadcast loads and vpblendd, not vinserti128 (vperm2i128 already keeps the
    // lane-crossing unit busy)
    const __m256i x = _mm256_blend_epi32(
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2))),
        _mm256_broadcastsi128_si256(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + kBs + 2))),
        0xf0);
    const __m256i m = _mm256_set1_epi8(0x0f);
    const __m256i iLo = _mm256_and_si256(x, m);                         // elements 0..15
    const __m256i iHi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m);  // elements 16..31
    const __m256i l0 = _mm256_shuffle_epi8(t.lo8, iLo), h0 = _mm256_shuffle_epi8(t.hi8, iLo);
    const __m256i l1 = _mm256_shuffle_epi8(t.lo8, iHi), h1 = _mm256_shuffle_epi8(t.hi8, iHi);
    const __m256i u0 = _mm256_unpacklo_epi8(l0, h0);  // [block 0: 0..7 | block 1: 0..7]
    const __m256i u1 = _mm256_unpackhi_epi8(l0, h0);  // 8..15
    const __m256i u2 = _mm256_unpacklo_epi8(l1, h1);  // 16..23
    const __m256i u3 = _mm256_unpackhi_epi8(l1, h1);  // 24..31
    put256<S>(o, _mm256_permute2x128_si256(u0, u1, 0x20));
    put256<S>(o + 32, _mm256_permute2x128_si256(u2, u3, 0x20));
    put256<S>(o + 64, _mm256_permute2x128_si256(u0, u1, 0x31));
    put256<S>(o + 96, _mm256_permute2x128_si256(u2, u3, 0x31));
}

template <DType D, StoreKind S>
inline void dequantizeQ4_0Blocks(const uint8_t* p, int64_t nblocks, uint8_t* out) {
    constexpr int64_t kEsz = D == DType::kF32 ? 4 : 2;
    constexpr int64_t kBs = sizeof(block_q4_0);
    const float lut[16] = {-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7};
    const Codes16 codes = codesFor<D>(lut);
    const __m256i* kc = reinterpret_cast<const __m256i*>(kQ4ConstWords);
    if constexpr (D == DType::kBF16) {
        asm("" : "+r"(kc));  // opaque to the compiler: memory operands (see kQ4ConstWords)
    }
    // Any block: d converted on its own, non-finite d through makeLut16.
    const auto anyTable = [&](const uint8_t* q, int64_t b) {
        const uint8_t* blk = q + b * kBs;
        uint16_t dh;
        std::memcpy(&dh, blk, 2);
        // d from a vector load of the block's first 8 bytes (no GPR -> vector move: 3 %)
        const __m256 d = _mm256_broadcastss_ps(
            _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk))));
        if constexpr (D != DType::kF32) {
            if ((dh & 0x7c00) != 0x7c00) return q4Planes(kc, q4Codes8<D>(kc, d));  // finite d
        }
        return makeLut16<D>(codes, d);
    };
    if constexpr (D == DType::kF32) {
        expandQ4_0<D, S>(p, nblocks, out, [&](int64_t b) { return anyTable(p, b); });
    } else {
        // Runs of kChunk blocks: their scales gathered and converted 8 at a time into an L1
        // array, checked once for NaN / Inf; the table step then broadcasts d from memory (a
        // load, no vector op) and has no branch.
        constexpr int64_t kChunk = 64;
        alignas(32) uint16_t dh[kChunk];
        alignas(32) float dv[kChunk];
        int64_t c0 = 0;
        for (; c0 + kChunk <= nblocks; c0 += kChunk) {
            const uint8_t* pc = p + c0 * kBs;
            for (int64_t j = 0; j < kChunk; ++j) std::memcpy(dh + j, pc + j * kBs, 2);
            __m128i special = _mm_setzero_si128();
            for (int64_t j = 0; j < kChunk; j += 8) {
                const __m128i h = _mm_load_si128(reinterpret_cast<const __m128i*>(dh + j));
                const __m128i e = _mm_and_si128(h, _mm_set1_epi16(0x7c00));
                special = _mm_or_si128(special, _mm_cmpeq_epi16(e, _mm_set1_epi16(0x7c00)));
                if constexpr (D == DType::kBF16) {  // the pair tables also need d != 0
                    const __m128i mag = _mm_and_si128(h, _mm_set1_epi16(0x7fff));
                    special = _mm_or_si128(special, _mm_cmpeq_epi16(mag, _mm_setzero_si128()));
                }
                _mm256_store_ps(dv + j, _mm256_cvtph_ps(h));
            }
            uint8_t* oc = out + c0 * kQk4_0 * kEsz;
            if (!_mm_testz_si128(special, special)) {
                expandQ4_0<D, S>(pc, kChunk, oc, [&](int64_t b) { return anyTable(pc, b); });
            } else if constexpr (D == DType::kBF16) {
                // pairs of blocks, the next pair's tables built first
                Lut16 t = q4PairLut16Bf16(kc, dv);
                for (int64_t b = 0; b < kChunk; b += 2) {
                    const Lut16 next = q4PairLut16Bf16(kc, dv + (b + 2 < kChunk ? b + 2 : b));
                    expandQ4Pair<S>(t, pc + b * kBs, oc + b * kQk4_0 * kEsz);
                    t = next;
                }
            } else {
                expandQ4_0<D, S>(pc, kChunk, oc, [&](int64_t b) {
                    return q4Planes(kc, q4Codes8<D>(kc, _mm256_broadcast_ss(dv + b)));
                });
            }
        }
        const uint8_t* pc = p + c0 * kBs;
        expandQ4_0<D, S>(pc, nblocks - c0, out + c0 * kQk4_0 * kEsz,
                         [&](int64_t b) { return anyTable(pc, b); });
    }
}

template <DType D>
inline void dequantizeQ4_0As(const uint8_t* p, int64_t nblocks, uint8_t* out) {
    constexpr int64_t kEsz = D == DType::kF32 ? 4 : 2;
    withStoreKind(out, nblocks * kQk4_0 * kEsz,
                  [&]<StoreKind S>() { dequantizeQ4_0Blocks<D, S>(p, nblocks, out); });
}

inline void dequantizeQ4_0(const block_q4_0* src, int64_t nblocks, DType dst, void* out) {
    const auto* p = reinterpret_cast<const uint8_t*>(src);
    auto* o = static_cast<uint8_t*>(out);
    if (dst == DType::kF16) {
        dequantizeQ4_0As<DType::kF16>(p, nblocks, o);
    } else if (dst == DType::kBF16) {
        dequantizeQ4_0As<DType::kBF16>(p, nblocks, o);
    } else {
        dequantizeQ4_0As<DType::kF32>(p, nblocks, o);
    }
}

// Codes of `nb` Q4_0 blocks at x with 1 / d = id[j] and f16 d = dh[j], written as blocks.
// kClamp: clamp t to 15 before truncating (needed only when some id is infinite).
template <bool kClamp, typename Src>
inline void encodeQ4_0Group(const Src* xg, int64_t nb, const float* id, const uint16_t* dh,
                            uint8_t* out) {
    const __m256 half = _mm256_set1_ps(8.5f);
    const auto codes = [&](int64_t j, __m256i* q) {
        const Src* x = xg + j * kQk4_0;
        prefetch128(x);
        const __m256 vid = _mm256_broadcast_ss(id + j);
        for (int k = 0; k < 4; ++k) {
            __m256 t = _mm256_add_ps(_mm256_mul_ps(load8(x + 8 * k), vid), half);
            // minps returns its second operand for NaN: min(15, NaN) stays NaN
            if constexpr (kClamp) t = _mm256_min_ps(_mm256_set1_ps(15.0f), t);
            q[k] = _mm256_cvttps_epi32(t);
        }
    };
    const auto store = [&](int64_t j, const __m256i* q) {
        // bytes [0-3 8-11 16-19 24-27 | 4-7 12-15 20-23 28-31], saturated to [0, 255]
        __m256i b =
            _mm256_packus_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        b = _mm256_min_epu8(b, _mm256_set1_epi8(15));
        // byte j | byte j + 16 << 4 per lane: [0-3 8-11 | 4-7 12-15] in the low 8 bytes
        b = _mm256_or_si256(b, _mm256_slli_epi16(_mm256_srli_si256(b, 8), 4));
        const __m128i p8 =
            _mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
        uint8_t* o = out + j * static_cast<int64_t>(sizeof(block_q4_0));
        std::memcpy(o, dh + j, 2);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 2), p8);
    };
    // software pipelined: block j + 1's codes are issued before block j's packing
    __m256i q[4];
    codes(0, q);
    for (int64_t j = 1; j < nb; ++j) {
        __m256i n[4];
        codes(j, n);
        store(j - 1, q);
        for (int k = 0; k < 4; ++k) q[k] = n[k];
    }
    store(nb - 1, q);
}

inline float valueAt(const float* x, int i) { return x[i]; }
inline float valueAt(const uint16_t* x, int i) { return bf16ToF32(x[i]); }

// Src: float, or uint16_t for a bf16 source (load8).
template <typename Src>
inline void quantizeQ4_0Blocks(const Src* src, int64_t nblocks, block_q4_0* dst) {
    const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    auto* outBytes = reinterpret_cast<uint8_t*>(dst);
    // Groups of 8 blocks: one transposed reduction for their max |x|, one vdivps for 1 / d.
    for (int64_t g = 0; g < nblocks; g += 8) {
        const int64_t nb = minI64(8, nblocks - g);
        const Src* xg = src + g * kQk4_0;
        __m256 acc[8];
        for (int j = 0; j < 8; ++j) {
            acc[j] = j < nb ? absMaxLanes(xg + j * kQk4_0, kQk4_0) : _mm256_setzero_ps();
        }
        alignas(32) float amax[8];
        _mm256_store_ps(amax, hmax8x8(acc));
        // The signed value of the first element of largest magnitude (NaN never matches); an
        // all-zero (or all-NaN) block keeps +0.0, as llama.cpp.
        alignas(32) float max[8] = {};
        for (int64_t j = 0; j < nb; ++j) {
            const Src* x = xg + j * kQk4_0;
            const __m256 am = _mm256_broadcast_ss(amax + j);
            uint32_t mask = 0;
            for (int k = 0; k < 4; ++k) {
                const __m256 a = _mm256_and_ps(load8(x + 8 * k), absMask);
                mask |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, am, _CMP_EQ_OQ)))
                        << (8 * k);
            }
            const float first = valueAt(x, mask != 0 ? __builtin_ctz(mask) : 0);
            max[j] = amax[j] > 0.0f ? first : 0.0f;
        }
        // d = max / -8 (the same rounding as max * -0.125: the exact quotients are equal);
        // id = d ? 1 / d : 0.
        const __m256 d = _mm256_mul_ps(_mm256_load_ps(max), _mm256_set1_ps(-0.125f));
        alignas(32) float id[8];
        _mm256_store_ps(id, _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), d),
                                          _mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_NEQ_OQ)));
        alignas(16) uint16_t dh[8];
        _mm_store_si128(reinterpret_cast<__m128i*>(dh), _mm256_cvtps_ph(d, kRne));
        // With every 1 / d of the group finite, t = x * id + 8.5 is NaN or small (|x * id| <= 8
        // up to the rounding of a subnormal d, always < 16):
        // truncation (NaN -> INT_MIN), the saturating packs (negative -> 0) and one byte
        // min with 15 then give the reference's codes for 32 values at once. An infinite
        // id (d subnormal) can make t = +Inf, which truncation would turn into INT_MIN
        // instead of 15: such groups clamp with min(15, t) first.
        const bool finiteIds =
            _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(_mm256_load_ps(id), absMask),
                                             _mm256_set1_ps(std::numeric_limits<float>::infinity()),
                                             _CMP_LT_OQ)) == 0xff;
        if (finiteIds) {
            encodeQ4_0Group<false>(xg, nb, id, dh,
                                   outBytes + g * static_cast<int64_t>(sizeof(block_q4_0)));
        } else {
            encodeQ4_0Group<true>(xg, nb, id, dh,
                                  outBytes + g * static_cast<int64_t>(sizeof(block_q4_0)));
        }
    }
}

inline void quantizeQ4_0(const float* src, int64_t nblocks, block_q4_0* dst) {
    quantizeQ4_0Blocks(src, nblocks, dst);
}
inline void quantizeQ4_0Bf16(const uint16_t* src, int64_t nblocks, block_q4_0* dst) {
    quantizeQ4_0Blocks(src, nblocks, dst);
}

// ---- INT8 / INT8_DYNAMIC ---------------------------------------------------------------------

// 16 values (a = 0..7, b = 8..15) stored as D at o. kMayNaN = false skips the bf16 NaN fix-up
// (the caller knows no value is NaN).
template <DType D, StoreKind S, bool kMayNaN = true>
inline void store16(uint8_t* o, __m256 a, __m256 b) {
    if constexpr (D == DType::kF32) {
        put256<S>(o, _mm256_castps_si256(a));
        put256<S>(o + 32, _mm256_castps_si256(b));
    } else if constexpr (D == DType::kF16) {
        put256<S>(o, _mm256_set_m128i(_mm256_cvtps_ph(b, kRne), _mm256_cvtps_ph(a, kRne)));
    } else if constexpr (kMayNaN) {
        put256<S>(o, f32x16ToBf16(a, b));
    } else {
        const auto round = [](__m256 v) {  // RNE of a non-NaN float to its top 16 bits
            const __m256i x = _mm256_castps_si256(v);
            const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
            return _mm256_srli_epi32(
                _mm256_add_epi32(x, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
        };
        const __m256i p = _mm256_packus_epi32(round(a), round(b));
        put256<S>(o, _mm256_permute4x64_epi64(p, _MM_SHUFFLE(3, 1, 2, 0)));
    }
}

inline bool isFiniteF32(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return (u & 0x7f800000u) != 0x7f800000u;
}

// 16 int8 values -> 16 values of D: fl32(q * scale) (and for LLM.int8 a second rounded
// product), each a separate rounding as the reference. The sign extension reads its 8 bytes
// straight from memory (vpmovsxbd ymm, m64: measured 25 % faster than extending from a
// register here). The f16 path is bound by vcvtps2ph (2 cycles per 8 values on Zen 3).
struct Int8Consts {
    __m256 scale, factor;
    __m256 scaleTop;  // scale * 2^-24 (kNoTie rows only, where that is exact)
    // kSplit rows (LLM.int8, bf16): scale = +-m * 2^e with m < 2^15; g = +-factor * 2^e exact
    __m256i mEven, mOdd;  // dwords m (low word) and m << 16 (high word)
    __m256 g;
};

template <bool kLlm>
inline __m256 int8Scaled(const Int8Consts& k, __m256i q32) {
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(q32), k.scale);
    if constexpr (kLlm) v = _mm256_mul_ps(v, k.factor);
    return v;
}

template <bool kLlm>
inline __m256 int8x8(const Int8Consts& k, const int8_t* p) {
    return int8Scaled<kLlm>(
        k, _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// vpshufb control: source byte B_j (of the 16 in each lane) into the top byte of 32-bit lane j.
template <int B0, int B1, int B2, int B3, int B4, int B5, int B6, int B7>
inline __m256i byteToTop() {
    constexpr char z = static_cast<char>(0x80);
    return _mm256_setr_epi8(z, z, z, B0, z, z, z, B1, z, z, z, B2, z, z, z, B3,  //
                            z, z, z, B4, z, z, z, B5, z, z, z, B6, z, z, z, B7);
}

// kNoTie (bf16, no NaN): the row has no product whose low 16 bits are exactly 0x8000, so RNE
// to bf16 is round-half-up, one add; and scale * 2^-24 is exact, so q shuffled into the top
// byte converts to q * 2^24 exactly and fl(q * 2^24 * (scale * 2^-24)) = fl(q * scale): no
// sign-extending shift.
template <StoreKind S>
inline void put128(uint8_t* p, __m128i v) {
    if constexpr (S == StoreKind::kStream) {
        _mm_stream_si128(reinterpret_cast<__m128i*>(p), v);
    } else {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v);
    }
}

//
// kSplit (LLM.int8 to bf16, kNoTie rows whose scale has at most 15 significant bits, as an
// SCB taken from fp16 weights has 11): scale = m * 2^e, so q * scale is exact and the two
// roundings of the reference are one, fl(q * m * (factor * 2^e)) with factor * 2^e exact.
// vpmovsxbw widens 16 bytes in one op and vpmaddwd with (m, 0) / (0, m) yields the even /
// odd q * m as exact int32: 11 vector ops per 16 values instead of 12.
template <DType D, StoreKind S, bool kLlm, bool kMayNaN, bool kNoTie = false, bool kSplit = false>
inline void int8x16(const Int8Consts& k, const int8_t* p, uint8_t* o) {
    if constexpr (D == DType::kBF16 && !kMayNaN) {
        // Even elements in a, odd in b (lane 0: elements 0..7, lane 1: 8..15), so that the
        // rounded top halves interleave into element order with one vpblendw.
        __m256 a, b;
        if constexpr (kSplit) {
            const __m256i w =
                _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
            a = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(w, k.mEven)), k.g);
            b = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(w, k.mOdd)), k.g);
        } else {
            const __m256i src =
                _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
            const auto lanes = [&](__m256i ctl) {
                if constexpr (kNoTie) {  // q * 2^24 times scale * 2^-24
                    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_shuffle_epi8(src, ctl)),
                                             k.scaleTop);
                    if constexpr (kLlm) v = _mm256_mul_ps(v, k.factor);
                    return v;
                }  // else vpsrad 24 sign-extends the top byte
                return int8Scaled<kLlm>(k, _mm256_srai_epi32(_mm256_shuffle_epi8(src, ctl), 24));
            };
            a = lanes(byteToTop<0, 2, 4, 6, 8, 10, 12, 14>());
            b = lanes(byteToTop<1, 3, 5, 7, 9, 11, 13, 15>());
        }
        const auto round = [](__m256 v) {  // RNE of a non-NaN float, result in the top 16 bits
            const __m256i x = _mm256_castps_si256(v);
            if constexpr (kNoTie) return _mm256_add_epi32(x, _mm256_set1_epi32(0x8000));
            const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
            return _mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), lsb);
        };
        // a's top halves to the low halves with vpmaddwd (hi * 1 + lo * 0; its low 16 bits are
        // hi): the multiplier instead of a shift on the two shuffle pipes (2 % faster)
        const __m256i aLow = _mm256_madd_epi16(round(a), _mm256_set1_epi32(0x10000));
        put256<S>(o, _mm256_blend_epi16(aLow, round(b), 0xaa));
    } else if constexpr (D == DType::kF16) {
        // Two 16-byte stores rather than vinserti128 + one 32-byte store: vinserti128 and
        // vcvtps2ph share one unit here (1 per cycle), 3 ops per 16 values otherwise.
        put128<S>(o, _mm256_cvtps_ph(int8x8<kLlm>(k, p), kRne));
        put128<S>(o + 16, _mm256_cvtps_ph(int8x8<kLlm>(k, p + 8), kRne));
    } else {
        store16<D, S, kMayNaN>(o, int8x8<kLlm>(k, p), int8x8<kLlm>(k, p + 8));
    }
}

// Whether some int8 q of a row with this (finite) scale gives a product whose low 16 bits
// are exactly 0x8000: a bf16 rounding tie. The products of -q are those of q negated (every
// rounding is symmetric) and q = 0 gives a zero, so q = 1..128 decide. The caller only asks
// for scales with |scale| >= 2^-102 (or zero): every product and intermediate is then a
// normal float, so q = 2^k * q' (q' odd) gives the product of q' times 2^k exactly, with the
// same low 16 bits (or infinity, which has no tie). The odd q = 1, 3, ..., 127 decide: 8
// vectors, 1/64 of a 4096-wide row (half the work of checking all 128). LLM.int8 rows with
// a split scale look the answer up instead (int8SplitHasBf16Tie below).
template <bool kLlm>
inline bool int8RowHasBf16Tie(const Int8Consts& k) {
    __m256i any = _mm256_setzero_si256();
    const __m256i low = _mm256_set1_epi32(0xffff), tie = _mm256_set1_epi32(0x8000);
    const __m256i odd = _mm256_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15);
    for (int q = 0; q < 128; q += 16) {
        const __m256i qs = _mm256_add_epi32(_mm256_set1_epi32(q), odd);
        const __m256i x = _mm256_castps_si256(int8Scaled<kLlm>(k, qs));
        any = _mm256_or_si256(any, _mm256_cmpeq_epi32(_mm256_and_si256(x, low), tie));
    }
    return !_mm256_testz_si256(any, any);
}

// For the kSplit rows (LLM.int8 scale = +-m * 2^e, see int8SplitScale): every product is
// fl(q * m * factor) * 2^e exactly, and a power of two changes no significand bit, so whether a
// row has a bf16 tie depends on m alone. One bit per m in [2^14, 2^15) (what int8SplitScale
// yields), each the check above with scale = m, computed once per process (16384 checks,
// well under a millisecond): a row then costs one lookup instead of its 8-vector check, and
// rows of any length take the split path. (Measured: 0.96-0.97 of the floor against
// 0.95-0.97 with the per-row check, within the noise; tests/kernels checks every m.)
inline bool int8SplitHasBf16Tie(int32_t m) {
    static const std::array<uint64_t, (1 << 14) / 64> kTies = [] {
        std::array<uint64_t, (1 << 14) / 64> t{};
        for (int32_t i = 0; i < (1 << 14); ++i) {
            const __m256 s = _mm256_set1_ps(static_cast<float>((1 << 14) + i));
            if (int8RowHasBf16Tie<true>({s, _mm256_set1_ps(kInt8DequantFactor),
                                         _mm256_setzero_ps(), _mm256_setzero_si256(),
                                         _mm256_setzero_si256(), _mm256_setzero_ps()})) {
                t[static_cast<size_t>(i) / 64] |= uint64_t{1} << (i % 64);
            }
        }
        return t;
    }();
    const auto i = static_cast<uint32_t>(m - (1 << 14));
    return (kTies[i / 64] >> (i % 64)) & 1;
}

// The int8 source is read once, from memory, 1 byte per 2 or 4 written: a software prefetch
// per 64 source bytes, kInt8PrefetchAhead ahead (past the row end too: prefetches never
// fault), let the loads keep up with the streaming stores (int8_dynamic: 0.95 -> 0.98 of
// the floor).
constexpr int64_t kInt8PrefetchAhead = 2048;
template <DType D, StoreKind S, bool kLlm, bool kMayNaN, bool kNoTie = false, bool kSplit = false>
inline void dequantizeInt8Row(const int8_t* row, float scale, int64_t cols, uint8_t* o,
                              int32_t m = 0, float g = 0.0f) {
    constexpr int64_t kEsz = D == DType::kF32 ? 4 : 2;
    Int8Consts k;
    k.scale = _mm256_set1_ps(scale);
    k.factor = _mm256_set1_ps(kInt8DequantFactor);
    k.scaleTop = _mm256_set1_ps(scale * 0x1p-24f);
    k.mEven = _mm256_set1_epi32(m);
    k.mOdd = _mm256_set1_epi32(m << 16);
    k.g = _mm256_set1_ps(g);
    int64_t c = 0;
    for (; c + 64 <= cols; c += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(row + c) + kInt8PrefetchAhead, _MM_HINT_T0);
        for (int j = 0; j < 64; j += 16) {
            int8x16<D, S, kLlm, kMayNaN, kNoTie, kSplit>(k, row + c + j, o + (c + j) * kEsz);
        }
    }
    for (; c + 16 <= cols; c += 16) {
        int8x16<D, S, kLlm, kMayNaN, kNoTie, kSplit>(k, row + c, o + c * kEsz);
    }
    for (; c < cols; c += 8) {
        int8_t tmp[16] = {};
        const int count = static_cast<int>(minI64(8, cols - c));
        std::memcpy(tmp, row + c, static_cast<size_t>(count));
        const __m256 v = int8x8<kLlm>(k, tmp);
        if (count == 8) {
            store8(D, o, c, v);
        } else {
            storePartial8(D, o, c, v, count);
        }
    }
}

// The kSplit form of an LLM.int8 row scale: scale = +-m * 2^e with 0 < m < 2^15 (at most
// 15 significant bits) and g = +-kInt8DequantFactor * 2^e, the sign on g (a zero q then gives
// the zero of the reference's sign). Only for normal scales with biased exponent 22..240:
// factor * 2^e is then a normal float (exact), and q * scale never overflows.
inline bool int8SplitScale(float scale, int32_t& m, float& g) {
    uint32_t u;
    std::memcpy(&u, &scale, 4);
    const uint32_t ef = (u >> 23) & 0xff;
    const uint32_t sig = (u & 0x7fffff) | 0x800000;
    if (ef < 22 || ef > 240 || (sig & 0x1ff) != 0) return false;
    m = static_cast<int32_t>(sig >> 9);                            // scale = m * 2^(ef - 141)
    const uint32_t p2 = ((ef - 14) << 23) | (u & 0x80000000u);  // +-2^(ef - 141)
    float pow2;
    std::memcpy(&pow2, &p2, 4);
    g = kInt8DequantFactor * pow2;
    return true;
}

template <DType D, bool kLlm>
inline void dequantizeInt8As(const int8_t* q, const float* scale, int64_t rows, int64_t cols,
                             uint8_t* out) {
    constexpr int64_t kEsz = D == DType::kF32 ? 4 : 2;
    // Streaming only when every row starts on a cache line.
    const bool rowsAligned = (cols * kEsz) % 64 == 0;
    withStoreKind(out, rows * cols * kEsz, [&]<StoreKind S>() {
        for (int64_t r = 0; r < rows; ++r) {
            const float sc = loadF32(scale, r);
            // q * scale is NaN only for a NaN or infinite scale (q = 0 times Inf).
            uint8_t* o = out + r * cols * kEsz;
            if constexpr (D == DType::kBF16) {
                if constexpr (kLlm) {
                    int32_t m;
                    float g;
                    if (int8SplitScale(sc, m, g)) {
                        if (!int8SplitHasBf16Tie(m)) {
                            dequantizeInt8Row<D, S, kLlm, false, true, true>(q + r * cols, sc,
                                                                             cols, o, m, g);
                            continue;
                        }
                        // a tie: the general path below (the check would find it again)
                        dequantizeInt8Row<D, S, kLlm, false>(q + r * cols, sc, cols, o);
                        continue;
                    }
                }
                // scale * 2^-24 exact: zero or |scale| >= 2^-102 (the product stays normal)
                const bool topExact = sc == 0.0f || !(sc < 0x1p-102f && sc > -0x1p-102f);
                if (isFiniteF32(sc) && topExact && cols >= 1024 &&
                    !int8RowHasBf16Tie<kLlm>({_mm256_set1_ps(sc),
                                              _mm256_set1_ps(kInt8DequantFactor),
                                              _mm256_setzero_ps(), _mm256_setzero_si256(),
                                              _mm256_setzero_si256(), _mm256_setzero_ps()})) {
                    dequantizeInt8Row<D, S, kLlm, false, true>(q + r * cols, sc, cols, o);
                    continue;
                }
            }
            if (isFiniteF32(sc)) {
                dequantizeInt8Row<D, S, kLlm, false>(q + r * cols, sc, cols, o);
            } else {
                dequantizeInt8Row<D, S, kLlm, true>(q + r * cols, sc, cols, o);
            }
        }
    }, rowsAligned);
}

inline void dequantizeInt8(bool llmInt8, const int8_t* q, const float* scale, int64_t rows,
                           int64_t cols, DType dst, void* out) {
    auto* o = static_cast<uint8_t*>(out);
    auto run = [&]<DType D>() {
        if (llmInt8) {
            dequantizeInt8As<D, true>(q, scale, rows, cols, o);
        } else {
            dequantizeInt8As<D, false>(q, scale, rows, cols, o);
        }
    };
    if (dst == DType::kF16) {
        run.template operator()<DType::kF16>();
    } else if (dst == DType::kBF16) {
        run.template operator()<DType::kBF16>();
    } else {
        run.template operator()<DType::kF32>();
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

// Software prefetch distance of the conversions' source: with the hardware prefetcher alone
// bf16 -> f16 ran at 0.73-0.81 of its floor here, with one prefetch per source line 1.5-2 KiB
// ahead at 0.93-0.97 (1 KiB and 3-4 KiB were slower), and bf16 -> f32 at 1.00 (was 0.97). The
// same-type copy keeps the hardware prefetcher alone: with this prefetch it fell from 0.97 to
// 0.91 of its floor.
constexpr int64_t kConvertPrefetchAhead = 2048;

template <DType From, DType To, StoreKind S>
inline void convertRun(const uint8_t* src, int64_t n, uint8_t* out) {
    constexpr int64_t kIsz = From == DType::kF32 ? 4 : 2;
    constexpr int64_t kOsz = To == DType::kF32 ? 4 : 2;
    const __m256i zero = _mm256_setzero_si256();
    const auto one16 = [&](int64_t j) {
        if constexpr (From == DType::kBF16 && To == DType::kF16) {
            // bf16 -> f32 puts the 16 bits on top of a zero half: vpunpck{l,h}wd with zero do
            // it in-lane, one op per 8 values (vpmovzxwd + vpslld take two). The lanes then
            // hold elements [0-3 | 8-11] and [4-7 | 12-15]; vpunpck{l,h}qdq of the converted
            // halves restore element order, stored as two 16-byte stores (vinserti128 would
            // share vcvtps2ph's unit).
            const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + j * 2));
            const __m128i lo =
                _mm256_cvtps_ph(_mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, x)), kRne);
            const __m128i hi =
                _mm256_cvtps_ph(_mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, x)), kRne);
            put128<S>(out + j * 2, _mm_unpacklo_epi64(lo, hi));
            put128<S>(out + j * 2 + 16, _mm_unpackhi_epi64(lo, hi));
        } else if constexpr (From == DType::kF16 && To == DType::kF32) {
            const auto* h = reinterpret_cast<const __m128i*>(src + j * 2);
            store16<To, S>(out + j * 4, f16x8ToF32Exact(_mm_loadu_si128(h)),
                           f16x8ToF32Exact(_mm_loadu_si128(h + 1)));
        } else {
            store16<To, S>(out + j * kOsz, load8(From, src, j), load8(From, src, j + 8));
        }
    };
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {  // 32 values: 64 or 128 source bytes, one prefetch per line
        for (int64_t b = 0; b < 32 * kIsz; b += 64) {
            _mm_prefetch(reinterpret_cast<const char*>(src + i * kIsz + b) + kConvertPrefetchAhead,
                         _MM_HINT_T0);
        }
        one16(i);
        one16(i + 16);
    }
    for (; i + 16 <= n; i += 16) one16(i);
    const auto get8 = [](const uint8_t* p, int64_t j) {
        if constexpr (From == DType::kF16 && To == DType::kF32) {
            return f16x8ToF32Exact(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + j * 2)));
        } else {
            return load8(From, p, j);
        }
    };
    for (; i + 8 <= n; i += 8) store8(To, out, i, get8(src, i));
    if (i < n) {
        alignas(32) uint8_t tmp[32] = {};
        std::memcpy(tmp, src + i * kIsz, static_cast<size_t>(n - i) * kIsz);
        storePartial8(To, out, i, get8(tmp, 0), static_cast<int>(n - i));
    }
}

template <DType From, DType To>
inline void convertAs(const uint8_t* src, int64_t n, uint8_t* out) {
    constexpr int64_t kOsz = To == DType::kF32 ? 4 : 2;
    withStoreKind(out, n * kOsz, [&]<StoreKind S>() { convertRun<From, To, S>(src, n, out); });
}

// A same-type conversion: a copy, large line-aligned outputs streamed past the caches. Its own
// function: inlined into convert(), whose lambdas take the pointers' addresses, GCC reloaded
// both pointers from the stack in every iteration (0.97 -> 0.84 of the floor).
inline void copyOut(const uint8_t* s, int64_t bytes, uint8_t* o) {
    if (storeKindFor(o, bytes) == StoreKind::kPlain) {
        std::memcpy(o, s, static_cast<size_t>(bytes));
        return;
    }
    int64_t i = 0;
    for (; i + 64 <= bytes; i += 64) {
        put256<StoreKind::kStream>(o + i, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
        put256<StoreKind::kStream>(o + i + 32, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 32)));
    }
    _mm_sfence();
    std::memcpy(o + i, s + i, static_cast<size_t>(bytes - i));
}

// Double quant's codes, 8 values per step: bitsandbytes' seven-step search with gathers from
// the map (blocks.h dynamicEncode, lane for lane).
inline void dynamicEncodeN(const float* map, const float* x, float scale, int64_t n, uint8_t* codes) {
    const __m256 s = _mm256_set1_ps(scale);
    const __m256 half = _mm256_set1_ps(0.5f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), s);
        __m256i pivot = _mm256_set1_epi32(127);
        __m256i lower = _mm256_setzero_si256();
        __m256i upper = _mm256_set1_epi32(255);
        __m256 val = _mm256_set1_ps(map[127]);
        for (int step = 64; step > 0; step >>= 1) {
            const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(v, val, _CMP_GT_OQ));
            lower = _mm256_blendv_epi8(lower, pivot, up);
            upper = _mm256_blendv_epi8(pivot, upper, up);
            // pivot + step where x lies above val, pivot - step elsewhere
            pivot = _mm256_add_epi32(_mm256_sub_epi32(pivot, _mm256_set1_epi32(step)),
                                     _mm256_and_si256(up, _mm256_set1_epi32(2 * step)));
            val = _mm256_i32gather_ps(map, pivot, 4);
        }
        const __m256 upf = _mm256_cmp_ps(v, val, _CMP_GT_OQ);
        const __m256i beyond = _mm256_blendv_epi8(lower, upper, _mm256_castps_si256(upf));
        const __m256 mid = _mm256_mul_ps(_mm256_add_ps(_mm256_i32gather_ps(map, beyond, 4), val), half);
        const __m256 far = _mm256_blendv_ps(_mm256_cmp_ps(v, mid, _CMP_LT_OQ), _mm256_cmp_ps(v, mid, _CMP_GT_OQ), upf);
        const __m256i code = _mm256_blendv_epi8(pivot, beyond, _mm256_castps_si256(far));
        const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + i), _mm_packus_epi16(words, words));
    }
    for (; i < n; ++i) codes[i] = dynamicEncode(map, mulRn(x[i], scale));
}

inline void convert(DType from, const void* src, int64_t n, DType to, void* out) {
    const auto* s = static_cast<const uint8_t*>(src);
    auto* o = static_cast<uint8_t*>(out);
    if (from == to) {
        copyOut(s, n * (to == DType::kF32 ? 4 : 2), o);
        return;
    }
    auto to_ = [&]<DType F>() {
        if (to == DType::kF16) {
            convertAs<F, DType::kF16>(s, n, o);
        } else if (to == DType::kBF16) {
            convertAs<F, DType::kBF16>(s, n, o);
        } else {
            convertAs<F, DType::kF32>(s, n, o);
        }
    };
    if (from == DType::kF16) {
        to_.template operator()<DType::kF16>();
    } else if (from == DType::kBF16) {
        to_.template operator()<DType::kBF16>();
    } else {
        to_.template operator()<DType::kF32>();
    }
}

}  // namespace x86
}  // namespace
}  // namespace sli::kernels

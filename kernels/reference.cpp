// Scalar reference kernels. Clarity first: this is the definition the SIMD paths must match
// bit for bit. Compiled with -ffp-contract=off (kernels/meson.build) so that no multiply-add
// is fused behind our back.
#include "kernels/reference.h"

#include <cmath>
#include <cstring>

namespace sli::kernels {
namespace {

// Unaligned-safe loads and stores (views over borrowed bytes need not be aligned).
inline float loadF32(const void* p, int64_t i) {
    float v;
    std::memcpy(&v, static_cast<const uint8_t*>(p) + i * 4, 4);
    return v;
}
inline void storeF32(void* p, int64_t i, float v) {
    std::memcpy(static_cast<uint8_t*>(p) + i * 4, &v, 4);
}
inline void storeU16(void* p, int64_t i, uint16_t v) {
    std::memcpy(static_cast<uint8_t*>(p) + i * 2, &v, 2);
}
inline uint16_t loadU16(const void* p, int64_t i) {
    uint16_t v;
    std::memcpy(&v, static_cast<const uint8_t*>(p) + i * 2, 2);
    return v;
}

// Writes one value as dst with round-to-nearest-even.
inline void storeAs(DType dst, void* out, int64_t i, float v) {
    switch (dst) {
        case DType::kF16: storeU16(out, i, f32ToF16(v)); break;
        case DType::kBF16: storeU16(out, i, f32ToBf16(v)); break;
        default: storeF32(out, i, v); break;
    }
}

inline float loadAs(DType src, const void* in, int64_t i) {
    switch (src) {
        case DType::kF16: return f16ToF32(loadU16(in, i));
        case DType::kBF16: return bf16ToF32(loadU16(in, i));
        default: return loadF32(in, i);
    }
}

// max(m, a) where a NaN a never wins, quiet or signaling (CUDA's fmaxf; glibc's fmax returns
// NaN for a signaling NaN, which a bf16 NaN widened to f32 can be).
inline float maxIgnoringNaN(float m, float a) { return a > m ? a : m; }

// NaN never wins; starts at 0 so an all-NaN range gives 0.
inline float absmaxOf(const float* x, int64_t n) {
    float m = 0.0f;
    for (int64_t i = 0; i < n; ++i) m = maxIgnoringNaN(m, std::fabs(x[i]));
    return m;
}

inline uint8_t encode4(Codebook4 cb, float xn) {
    return cb == Codebook4::kNf4 ? nf4Encode(xn) : fp4Encode(xn);
}
inline float decode4(Codebook4 cb, uint8_t code) {
    return cb == Codebook4::kNf4 ? nf4Decode(code) : fp4Decode(code);
}

void quantize4bitRef(Codebook4 cb, const float* src, int64_t n, int blocksize, uint8_t* packed,
                     float* absmax) {
    const int64_t nb = (n + blocksize - 1) / blocksize;
    for (int64_t b = 0; b < nb; ++b) {
        const int64_t begin = b * blocksize;
        const int64_t end = begin + blocksize < n ? begin + blocksize : n;
        const float am = absmaxOf(src + begin, end - begin);
        storeF32(absmax, b, am);
        const float inv = 1.0f / am;  // +inf for an all-zero block: 0 * inf = NaN -> code 0
        // blocksize is even, so a block never shares a byte with the next one.
        for (int64_t i = begin; i < end; i += 2) {
            const uint8_t hi = encode4(cb, src[i] * inv);
            const uint8_t lo = encode4(cb, (i + 1 < end ? src[i + 1] : 0.0f) * inv);
            packed[i / 2] = static_cast<uint8_t>((hi << 4) | lo);
        }
    }
}

// Block by block: each block's values widened into a local buffer, then quantize4bitRef.
void quantize4bitBf16Ref(Codebook4 cb, const uint16_t* src, int64_t n, int blocksize,
                         uint8_t* packed, float* absmax) {
    float x[kMax4bitBlocksize];
    for (int64_t begin = 0, b = 0; begin < n; begin += blocksize, ++b) {
        const int64_t count = begin + blocksize < n ? blocksize : n - begin;
        for (int64_t i = 0; i < count; ++i) x[i] = bf16ToF32(src[begin + i]);
        quantize4bitRef(cb, x, count, blocksize, packed + begin / 2, absmax + b);
    }
}

void dequantize4bitRef(Codebook4 cb, const uint8_t* packed, const float* absmax, int64_t n,
                       int blocksize, DType dst, void* out) {
    for (int64_t i = 0; i < n; ++i) {
        const uint8_t byte = packed[i / 2];
        const uint8_t code = (i & 1) ? (byte & 0x0f) : (byte >> 4);
        const float am = loadF32(absmax, i / blocksize);
        storeAs(dst, out, i, decode4(cb, code) * am);
    }
}

// Block by block: the absmax of the block, rebuilt from its code, then the plain decode.
void dequantize4bitDqRef(Codebook4 cb, const uint8_t* packed, const DoubleQuantAbsmax& dq,
                         int64_t firstBlock, int64_t n, int blocksize, DType dst, void* out) {
    for (int64_t i = 0; i < n; ++i) {
        const int64_t b = firstBlock + i / blocksize;
        const float am = reconstructNestedAbsmax(
            dq.map, dq.codes[b], loadF32(dq.nestedAbsmax, b / kNestedBlocksize), dq.offset);
        const uint8_t byte = packed[i / 2];
        const uint8_t code = (i & 1) ? (byte & 0x0f) : (byte >> 4);
        storeAs(dst, out, i, decode4(cb, code) * am);
    }
}

void quantizeInt8Ref(const float* src, int64_t rows, int64_t cols, int8_t* cbOut, float* scb) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* x = src + r * cols;
        float am = 0.0f;
        for (int64_t c = 0; c < cols; ++c) am = maxIgnoringNaN(am, std::fabs(f16ToF32(f32ToF16(x[c]))));
        storeF32(scb, r, am);
        const float scale = 127.0f / am;  // +inf for a zero row: 0 * inf = NaN -> 0
        for (int64_t c = 0; c < cols; ++c) {
            const float v = f16ToF32(f32ToF16(x[c])) * scale;
            const float q = __builtin_roundevenf(v);
            cbOut[r * cols + c] = std::isnan(q) ? 0 : static_cast<int8_t>(std::fmin(127.0f, std::fmax(-127.0f, q)));
        }
    }
}

void quantizeInt8DynamicRef(const float* src, int64_t rows, int64_t cols, int8_t* qOut,
                            float* scaleOut) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* x = src + r * cols;
        const float am = absmaxOf(x, cols);
        const float scale = std::fmax(am / 127.5f, kInt8DynamicEps);
        storeF32(scaleOut, r, scale);
        const float inv = 1.0f / scale;  // 0 for an Inf row: Inf * 0 = NaN -> 0
        for (int64_t c = 0; c < cols; ++c) {
            const float q = __builtin_roundevenf(x[c] * inv);
            qOut[r * cols + c] = std::isnan(q) ? 0 : static_cast<int8_t>(std::fmin(127.0f, std::fmax(-128.0f, q)));
        }
    }
}

void dequantizeInt8Ref(bool llmInt8, const int8_t* q, const float* scale, int64_t rows,
                       int64_t cols, DType dst, void* out) {
    for (int64_t r = 0; r < rows; ++r) {
        const float s = loadF32(scale, r);
        for (int64_t c = 0; c < cols; ++c) {
            float v = static_cast<float>(q[r * cols + c]) * s;
            if (llmInt8) v = v * kInt8DequantFactor;
            storeAs(dst, out, r * cols + c, v);
        }
    }
}

void quantizeQ4_0Ref(const float* src, int64_t nblocks, block_q4_0* dst) {
    for (int64_t b = 0; b < nblocks; ++b) q4_0Encode(src + b * kQk4_0, dst[b]);
}

void quantizeQ4_0Bf16Ref(const uint16_t* src, int64_t nblocks, block_q4_0* dst) {
    float x[kQk4_0];
    for (int64_t b = 0; b < nblocks; ++b) {
        for (int i = 0; i < kQk4_0; ++i) x[i] = bf16ToF32(src[b * kQk4_0 + i]);
        q4_0Encode(x, dst[b]);
    }
}

void dequantizeQ4_0Ref(const block_q4_0* src, int64_t nblocks, DType dst, void* out) {
    for (int64_t b = 0; b < nblocks; ++b) {
        block_q4_0 blk;
        std::memcpy(&blk, reinterpret_cast<const uint8_t*>(src) + b * sizeof(block_q4_0),
                    sizeof blk);
        float y[kQk4_0];
        q4_0Decode(blk, y);
        for (int j = 0; j < kQk4_0; ++j) storeAs(dst, out, b * kQk4_0 + j, y[j]);
    }
}

void convertRef(DType from, const void* src, int64_t n, DType to, void* out) {
    if (from == to) {
        std::memcpy(out, src, static_cast<size_t>(n) * dtypeSize(to));
        return;
    }
    for (int64_t i = 0; i < n; ++i) storeAs(to, out, i, loadAs(from, src, i));
}

void dynamicEncodeNRef(const float* map, const float* x, float scale, int64_t n, uint8_t* codes) {
    for (int64_t i = 0; i < n; ++i) codes[i] = dynamicEncode(map, mulRn(x[i], scale));
}

const CpuKernels kReference = {
    "scalar",          quantize4bitRef,
    dequantize4bitRef, dequantize4bitDqRef,
    quantizeInt8Ref,   quantizeInt8DynamicRef,
    dequantizeInt8Ref, quantizeQ4_0Ref,
    dequantizeQ4_0Ref, convertRef,
    dynamicEncodeNRef, quantize4bitBf16Ref,
    quantizeQ4_0Bf16Ref,
};

}  // namespace

const CpuKernels& referenceKernels() noexcept { return kReference; }

float absmaxMean(const float* absmax, int64_t nb) noexcept {
    double sum = 0.0;
    for (int64_t i = 0; i < nb; ++i) sum += static_cast<double>(loadF32(absmax, i));
    return nb > 0 ? static_cast<float>(sum / static_cast<double>(nb)) : 0.0f;
}

void doubleQuantize(const float* absmax, int64_t nb, float offset, const float* map,
                    uint8_t* codes, float* nestedAbsmax, const CpuKernels* k) noexcept {
    if (k == nullptr) k = &kReference;
    const int64_t groups = (nb + kNestedBlocksize - 1) / kNestedBlocksize;
    float centered[kNestedBlocksize];
    for (int64_t g = 0; g < groups; ++g) {
        const int64_t begin = g * kNestedBlocksize;
        const int64_t count = nb - begin < kNestedBlocksize ? nb - begin : kNestedBlocksize;
        for (int64_t i = 0; i < count; ++i) centered[i] = loadF32(absmax, begin + i) - offset;
        const float nam = absmaxOf(centered, count);
        storeF32(nestedAbsmax, g, nam);
        const float inv = 1.0f / nam;
        k->dynamicEncodeN(map, centered, inv, count, codes + begin);
    }
}

void reconstructAbsmax(const uint8_t* codes, const float* nestedAbsmax, const float* map,
                       float offset, int64_t first, int64_t count, float* out) noexcept {
    for (int64_t i = 0; i < count; ++i) {
        const int64_t b = first + i;
        out[i] = reconstructNestedAbsmax(map, codes[b], loadF32(nestedAbsmax, b / kNestedBlocksize), offset);
    }
}

}  // namespace sli::kernels

// Helpers for the CUDA tests: a host reference dequantizer built from the same per-element
// rules as the kernels (kernels/cuda/quant_rules.h), random quantized tensors covering special
// values, device upload / download through the engine's RAII wrappers, and a reader for the
// golden vectors in tests/golden (format in tests/golden/README.md).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "engine/gpu/gpu_runtime.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/quant_rules.h"
#include "sli/json.h"
#include "sli/kernels.h"
#include "sli/quantized.h"

namespace sli::cudatest {

namespace rules = sli::kernels::rules;

inline float loadF32(const uint8_t* p, int64_t i) {
    float v;
    std::memcpy(&v, p + 4 * i, 4);
    return v;
}
inline uint16_t loadU16(const uint8_t* p, int64_t i) {
    uint16_t v;
    std::memcpy(&v, p + 2 * i, 2);
    return v;
}

inline void storeRef(std::vector<uint8_t>& out, DType dst, int64_t i, float v) {
    if (dst == DType::kF32) {
        std::memcpy(out.data() + 4 * i, &v, 4);
    } else {
        const uint16_t h = dst == DType::kF16 ? f32ToF16(v) : f32ToBf16(v);
        std::memcpy(out.data() + 2 * i, &h, 2);
    }
}

// Host reference dequantization (the scalar rules the kernels use, element by element).
inline std::vector<uint8_t> referenceDequantize(const QuantizedTensorView& v, DType dst) {
    const QuantizedTensorInfo& info = *v.info;
    const int64_t n = info.numel();
    std::vector<uint8_t> out(static_cast<size_t>(n) * dtypeSize(dst));
    const uint8_t* pay = v.part(QuantPart::kPayload).data();
    const uint8_t* am = v.part(QuantPart::kAbsmax).data();
    switch (info.mode) {
        case QuantizationMode::kNone:
            for (int64_t i = 0; i < n; ++i) {
                float x = info.storedDType == DType::kF32   ? loadF32(pay, i)
                          : info.storedDType == DType::kF16 ? f16ToF32(loadU16(pay, i))
                                                            : bf16ToF32(loadU16(pay, i));
                storeRef(out, dst, i, x);
            }
            break;
        case QuantizationMode::kNf4:
        case QuantizationMode::kFp4: {
            const uint8_t* nabs = v.part(QuantPart::kNestedAbsmax).data();
            const uint8_t* nqm = v.part(QuantPart::kNestedQuantMap).data();
            for (int64_t i = 0; i < n; ++i) {
                const int64_t b = i / info.blocksize;
                const float a = info.doubleQuant
                                    ? rules::nestedAbsmax(loadF32(nqm, am[b]), loadF32(nabs, b >> 8),
                                                          info.nestedOffset)
                                    : loadF32(am, b);
                const unsigned byte = pay[i >> 1];
                const unsigned nib = (i & 1) ? (byte & 15u) : (byte >> 4);
                const float lut = info.mode == QuantizationMode::kFp4 ? rules::fp4Value(nib)
                                                                      : rules::nf4Value(nib);
                storeRef(out, dst, i, rules::dequant4(lut, a));
            }
            break;
        }
        case QuantizationMode::kInt8:
        case QuantizationMode::kInt8Dynamic: {
            const int64_t cols = info.cols();
            for (int64_t i = 0; i < n; ++i) {
                const auto q = static_cast<int8_t>(pay[i]);
                const float s = loadF32(am, i / cols);
                storeRef(out, dst, i,
                         info.mode == QuantizationMode::kInt8 ? rules::dequantInt8(q, s)
                                                              : rules::dequantInt8Dynamic(q, s));
            }
            break;
        }
        case QuantizationMode::kInt4:
            for (int64_t i = 0; i < n; ++i) {
                const uint8_t* blk = pay + (i / 32) * 18;
                const int j = static_cast<int>(i % 32);
                const float d = f16ToF32(loadU16(blk, 0));
                const unsigned nib = j < 16 ? (blk[2 + j] & 15u) : (blk[2 + j - 16] >> 4);
                storeRef(out, dst, i, rules::dequantQ4_0(nib, d));
            }
            break;
    }
    return out;
}

// The CPU reference (sli::kernels::dequantize); empty on error (reported through `status`).
inline std::vector<uint8_t> cpuDequantize(const QuantizedTensorView& v, DType dst, Status* status = nullptr) {
    std::vector<uint8_t> out(static_cast<size_t>(v.info->numel()) * dtypeSize(dst));
    Status s = sli::kernels::dequantize(v, dst, out);
    if (!s.isOk()) out.clear();
    if (status) *status = std::move(s);
    return out;
}

// A scale-like float: mostly ordinary magnitudes, sometimes a special value.
inline float randomScale(std::mt19937_64& rng) {
    const uint64_t r = rng();
    switch (r % 64) {
        case 0: return 0.0f;
        case 1: return bitsFloat(0x7f800000u);             // +inf
        case 2: return bitsFloat(0x7fc00000u | 0x1234u);   // NaN with a payload
        case 3: return bitsFloat(0xffa00001u);             // negative signalling-pattern NaN
        case 4: return 1e-40f;                             // subnormal
        case 5: return 3.0e38f;                            // overflows f16 / rounds in bf16
        case 6: return 6.1e-5f;                            // near the f16 normal limit
        default: {
            std::uniform_real_distribution<float> d(-4.0f, 2.0f);
            return std::pow(10.0f, d(rng)) * ((r >> 32) & 1 ? 1.0f : -1.0f);
        }
    }
}

inline void fillBytes(AlignedBuffer& b, std::mt19937_64& rng) {
    for (size_t i = 0; i < b.size(); ++i) b.data()[i] = static_cast<uint8_t>(rng());
}

// A tensor whose parts are random (codes, payload bits) with scales from randomScale(): every
// decode path, incl. NaN payloads, infinities and subnormals. Not a quantization of anything.
// finiteOnly: no NaN anywhere in the output (NaN payloads differ between GPU and CPU
// arithmetic, which a byte checksum would not forgive): scales finite and |scale| <= 1e4,
// NaN bit patterns of an unquantized payload turned into infinities.
inline QuantizedTensor randomTensor(QuantizationMode mode, std::vector<int64_t> shape,
                                    int blocksize, bool doubleQuant, DType stored, uint64_t seed,
                                    bool finiteOnly = false) {
    std::mt19937_64 rng(seed);
    QuantizedTensor t;
    t.info.name = std::string("random.") + modeName(mode);
    t.info.shape = std::move(shape);
    t.info.mode = mode;
    t.info.storedDType = stored;
    t.info.blocksize = modeIs4bit(mode) ? blocksize : (mode == QuantizationMode::kInt4 ? 32 : 0);
    t.info.doubleQuant = modeIs4bit(mode) && doubleQuant;
    t.info.nestedBlocksize = t.info.doubleQuant ? 256 : 0;
    t.info.nestedOffset = t.info.doubleQuant ? 0.0375f : 0.0f;
    for (int i = 0; i < kQuantPartCount; ++i) {
        const auto p = static_cast<QuantPart>(i);
        const size_t bytes = t.info.expectedPartBytes(p);
        if (bytes == 0) continue;
        t.part(p) = std::move(AlignedBuffer::allocate(bytes).value());
        AlignedBuffer& b = t.part(p);
        const bool floats = (p == QuantPart::kAbsmax && !t.info.doubleQuant) ||
                            p == QuantPart::kNestedAbsmax || p == QuantPart::kNestedQuantMap ||
                            p == QuantPart::kQuantMap;
        if (floats) {
            for (size_t k = 0; k < bytes / 4; ++k) {
                float v = randomScale(rng);
                // |v| <= 1e4 also keeps products of two scales finite (3e38 * 3e38 = inf and
                // then 0 * inf = NaN in a double-quant absmax).
                if (finiteOnly && !(v >= -1e4f && v <= 1e4f)) v = 1.0f;
                b.as<float>()[k] = v;
            }
        } else {
            fillBytes(b, rng);
            if (finiteOnly && mode == QuantizationMode::kInt4 && p == QuantPart::kPayload) {
                for (size_t k = 0; k + 18 <= bytes; k += 18) {
                    if ((b.data()[k + 1] & 0x7c) == 0x7c) b.data()[k + 1] &= 0xbf;  // finite d
                }
            }
            if (finiteOnly && mode == QuantizationMode::kNone && p == QuantPart::kPayload) {
                // Unquantized random bits: NaN patterns become infinities (still a special
                // value, but one with a portable bit pattern).
                if (stored == DType::kF32) {
                    for (size_t k = 0; k + 4 <= bytes; k += 4) {
                        uint32_t u;
                        std::memcpy(&u, b.data() + k, 4);
                        if ((u & 0x7f800000u) == 0x7f800000u) u &= 0xff800000u;
                        std::memcpy(b.data() + k, &u, 4);
                    }
                } else if (stored == DType::kF16 || stored == DType::kBF16) {
                    const uint16_t e = stored == DType::kF16 ? 0x7c00 : 0x7f80;
                    for (size_t k = 0; k + 2 <= bytes; k += 2) {
                        uint16_t h;
                        std::memcpy(&h, b.data() + k, 2);
                        if ((h & e) == e) h = static_cast<uint16_t>(h & (0x8000 | e));
                        std::memcpy(b.data() + k, &h, 2);
                    }
                }
            }
        }
    }
    return t;
}

// Device copies of a tensor's parts, each starting `misalign` bytes past a 256-byte boundary,
// rounded up to the part's element size (floats and f32 / f16 / bf16 payloads stay naturally
// aligned, as cuda::dequantize requires; byte parts take the odd offset).
struct DeviceTensor {
    std::array<gpu::DeviceBuffer, kQuantPartCount> buffers;
    QuantizedTensorView view;
};

inline DeviceTensor upload(const QuantizedTensor& t, size_t misalign, int device = 0) {
    DeviceTensor d;
    d.view.info = &t.info;
    for (int i = 0; i < kQuantPartCount; ++i) {
        const auto& src = t.parts[static_cast<size_t>(i)];
        if (src.empty()) continue;
        const auto p = static_cast<QuantPart>(i);
        size_t elem = 1;
        if (p == QuantPart::kPayload) {
            elem = t.info.mode == QuantizationMode::kNone ? dtypeSize(t.info.storedDType) : 1;
        } else if (p != QuantPart::kAbsmax || !(modeIs4bit(t.info.mode) && t.info.doubleQuant)) {
            elem = 4;
        }
        const size_t off = (misalign + elem - 1) / elem * elem;
        d.buffers[static_cast<size_t>(i)] =
            std::move(gpu::DeviceBuffer::allocate(device, src.size() + off).value());
        auto* base = static_cast<uint8_t*>(d.buffers[static_cast<size_t>(i)].data()) + off;
        (void)gpu::copyAsync(base, src.data(), src.size(), nullptr);
        d.view.parts[static_cast<size_t>(i)] = {base, src.size()};
    }
    return d;
}

// ---- golden vectors (tests/golden/README.md) ----------------------------------------------
struct GoldenEntry {
    int dtype = 0;  // 0=f32 1=f16 2=bf16 3=u8 4=i8 5=i32 6=f64
    std::vector<int64_t> dims;
    std::vector<uint8_t> data;
};

inline std::string goldenDir() {
    const char* d = std::getenv("SLI_TEST_DATA");
    return std::string(d ? d : "tests") + "/golden/";
}

// Empty map when the file is missing or malformed (the test then fails on a missing entry).
inline std::map<std::string, GoldenEntry> readGolden(const std::string& stem) {
    std::map<std::string, GoldenEntry> out;
    std::ifstream f(goldenDir() + stem + ".bin", std::ios::binary);
    std::vector<uint8_t> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    size_t pos = 0;
    auto take = [&](void* dst, size_t n) {
        if (pos + n > buf.size()) return false;
        std::memcpy(dst, buf.data() + pos, n);
        pos += n;
        return true;
    };
    char magic[8];
    uint32_t count = 0;
    if (!take(magic, 8) || std::memcmp(magic, "SLIGOLD1", 8) != 0 || !take(&count, 4)) return {};
    for (uint32_t e = 0; e < count; ++e) {
        uint16_t nameLen = 0;
        if (!take(&nameLen, 2)) return {};
        std::string name(nameLen, '\0');
        uint8_t dtype = 0, ndim = 0;
        if (!take(name.data(), nameLen) || !take(&dtype, 1) || !take(&ndim, 1)) return {};
        GoldenEntry g;
        g.dtype = dtype;
        g.dims.resize(ndim);
        for (auto& dim : g.dims) {
            if (!take(&dim, 8)) return {};
        }
        uint64_t len = 0;
        if (!take(&len, 8) || pos + len > buf.size()) return {};
        g.data.assign(buf.begin() + static_cast<std::ptrdiff_t>(pos),
                      buf.begin() + static_cast<std::ptrdiff_t>(pos + len));
        pos += len;
        out.emplace(std::move(name), std::move(g));
    }
    return out;
}

inline Json readGoldenJson(const std::string& stem) {
    std::ifstream f(goldenDir() + stem + ".json");
    std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto j = parseJson(text);
    return j.isOk() ? std::move(*j) : Json();
}

inline AlignedBuffer bufferOf(const std::vector<uint8_t>& bytes) {
    AlignedBuffer b = std::move(AlignedBuffer::allocate(bytes.size()).value());
    if (!bytes.empty()) std::memcpy(b.data(), bytes.data(), bytes.size());
    return b;
}

// Index of the first differing element of `elemBytes` bytes, or -1.
inline int64_t firstMismatch(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b,
                             size_t elemBytes) {
    if (a.size() != b.size()) return 0;
    for (size_t i = 0; i < a.size(); i += elemBytes) {
        if (std::memcmp(a.data() + i, b.data() + i, elemBytes) != 0) return static_cast<int64_t>(i / elemBytes);
    }
    return -1;
}

// Like firstMismatch for elements of dtype t, but two NaNs of any payload are equal: NaN
// payloads are not portable (NVIDIA arithmetic returns the canonical NaN, x86 propagates the
// operand's payload, F16C quiets signalling NaNs while the scalar conversion keeps them).
inline bool isNanElem(const uint8_t* p, DType t) {
    if (t == DType::kF32) {
        uint32_t u;
        std::memcpy(&u, p, 4);
        return (u & 0x7fffffffu) > 0x7f800000u;
    }
    uint16_t h;
    std::memcpy(&h, p, 2);
    return t == DType::kF16 ? (h & 0x7fffu) > 0x7c00u : (h & 0x7fffu) > 0x7f80u;
}
inline int64_t firstMismatchNanAware(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b,
                                     DType t) {
    const size_t w = dtypeSize(t);
    if (a.size() != b.size()) return 0;
    for (size_t i = 0; i < a.size(); i += w) {
        if (std::memcmp(a.data() + i, b.data() + i, w) == 0) continue;
        if (isNanElem(a.data() + i, t) && isNanElem(b.data() + i, t)) continue;
        return static_cast<int64_t>(i / w);
    }
    return -1;
}

// Runs the device dequantization of `v` (device view) into a fresh buffer; returns the bytes.
inline std::vector<uint8_t> deviceDequantize(const QuantizedTensorView& v, DType dst,
                                             size_t outMisalign = 0, Status* status = nullptr) {
    const size_t bytes = cuda::dequantizedBytes(*v.info, dst);
    gpu::DeviceBuffer out = std::move(gpu::DeviceBuffer::allocate(0, bytes + outMisalign).value());
    auto* o = static_cast<uint8_t*>(out.data()) + outMisalign;
    Status s = cuda::dequantize(v, dst, o, bytes, nullptr);
    std::vector<uint8_t> host(bytes);
    if (s.isOk()) s = gpu::copyAsync(host.data(), o, bytes, nullptr);
    if (status) *status = std::move(s);
    return host;
}

// ---- host reference quantizers (CUDA semantics, exact reciprocal) ----------------------------
inline void refQuant4(const std::vector<float>& x, int bs, bool fp4, std::vector<uint8_t>& packed,
               std::vector<float>& absmax) {
    const int64_t n = static_cast<int64_t>(x.size());
    const int64_t nb = (n + bs - 1) / bs;
    packed.assign(static_cast<size_t>((n + 1) / 2), 0);
    absmax.assign(static_cast<size_t>(nb), 0.0f);
    for (int64_t b = 0; b < nb; ++b) {
        float m = 0.0f;
        for (int64_t i = b * bs; i < std::min(n, (b + 1) * bs); ++i) m = std::fmax(m, std::fabs(x[i]));
        absmax[b] = m;
        const float inv = rules::rcpRn(m);
        for (int64_t i = b * bs; i < (b + 1) * bs && i < n + (n & 1); ++i) {
            const float v = i < n ? x[i] : 0.0f;
            const unsigned c = fp4 ? rules::fp4Encode(rules::mulRn(v, inv)) : rules::nf4Encode(rules::mulRn(v, inv));
            packed[i >> 1] |= static_cast<uint8_t>((i & 1) ? c : c << 4);
        }
    }
}

inline void refQuantInt8(const std::vector<float>& x, int64_t rows, int64_t cols, std::vector<uint8_t>& cb,
                  std::vector<float>& scb) {
    cb.assign(static_cast<size_t>(rows * cols), 0);
    scb.assign(static_cast<size_t>(rows), 0.0f);
    for (int64_t r = 0; r < rows; ++r) {
        float m = 0.0f;
        for (int64_t j = 0; j < cols; ++j) m = std::fmax(m, std::fabs(rules::roundThroughF16(x[r * cols + j])));
        scb[r] = m;
        const float s = rules::int8Scale(m);
        for (int64_t j = 0; j < cols; ++j) {
            cb[r * cols + j] = static_cast<uint8_t>(rules::int8Encode(rules::roundThroughF16(x[r * cols + j]), s));
        }
    }
}

inline void refQuantNested(const std::vector<float>& a, float offset, const float* map, std::vector<uint8_t>& codes,
                    std::vector<float>& nabs) {
    const int64_t nb = static_cast<int64_t>(a.size());
    codes.assign(a.size(), 0);
    nabs.assign(static_cast<size_t>((nb + 255) / 256), 0.0f);
    for (int64_t g = 0; g * 256 < nb; ++g) {
        float m = 0.0f;
        for (int64_t i = g * 256; i < std::min(nb, (g + 1) * 256); ++i) m = std::fmax(m, std::fabs(rules::subRn(a[i], offset)));
        nabs[g] = m;
        for (int64_t i = g * 256; i < std::min(nb, (g + 1) * 256); ++i) {
            codes[i] = static_cast<uint8_t>(rules::dynamicEncode(map, rules::mulRn(rules::subRn(a[i], offset), rules::rcpRn(m))));
        }
    }
}


// bnb's codes with the CUDA-rule corrections listed in the golden JSON.
inline std::vector<uint8_t> cudaRuleCodes(const std::vector<uint8_t>& packed, const Json& meta, int bs, int64_t n) {
    std::vector<uint8_t> codes(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) codes[i] = (i & 1) ? (packed[i >> 1] & 15) : (packed[i >> 1] >> 4);
    const Json* m = meta.find("cuda_rule_code_mismatches");
    if (m == nullptr) return codes;
    if (const Json* z = m->find("all_zero_blocks")) {
        for (const Json& b : z->asArray()) {
            for (int64_t i = *b.asInt64() * bs; i < std::min(n, (*b.asInt64() + 1) * bs); ++i) codes[i] = 0;
        }
    }
    if (const Json* rows = m->find("other_mismatches")) {
        for (const Json& r : rows->asArray()) codes[*r.asArray()[0].asInt64()] = static_cast<uint8_t>(*r.asArray()[3].asInt64());
    }
    return codes;
}

}  // namespace sli::cudatest

// Start-up self-test of a fast kernel table against the scalar reference (see cpu_kernels.h).
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu_kernels.h"
#include "kernels/reference.h"

namespace sli::kernels {

namespace {

constexpr int kBlocksize = 64;
constexpr int64_t kRows = 4;
constexpr int64_t kCols = 1056;  // a multiple of 32 (Q4_0), not of 64 (a partial 4-bit block)
constexpr int64_t kN = kRows * kCols;

// Deterministic values of both signs over several magnitudes, with an all-zero block, a
// NaN, a huge and a subnormal value.
std::vector<float> sourceValues() {
    std::vector<float> x(static_cast<size_t>(kN));
    uint32_t s = 12345;
    for (auto& v : x) {
        s = s * 1664525u + 1013904223u;
        const float u = static_cast<float>(s >> 8) / 16777216.0f - 0.5f;  // [-0.5, 0.5)
        v = u * std::ldexp(1.0f, static_cast<int>(s % 7) - 3);
    }
    for (int i = 0; i < kBlocksize; ++i) x[static_cast<size_t>(2 * kBlocksize + i)] = 0.0f;
    x[300] = std::numeric_limits<float>::quiet_NaN();
    x[777] = 3.0e30f;
    x[1500] = 1.0e-40f;
    return x;
}

bool same(const void* a, const void* b, size_t bytes) { return std::memcmp(a, b, bytes) == 0; }

}  // namespace

std::string selfTestAgainstReference(const CpuKernels& k) {
    const CpuKernels& r = referenceKernels();
    const std::vector<float> x = sourceValues();
    std::vector<uint16_t> xb(x.size());  // the same values rounded to bf16
    for (size_t i = 0; i < x.size(); ++i) xb[i] = f32ToBf16(x[i]);
    const int64_t nb = (kN + kBlocksize - 1) / kBlocksize;
    const DType dtypes[] = {DType::kF16, DType::kBF16, DType::kF32};
    std::vector<uint8_t> outK(static_cast<size_t>(kN) * 4), outR(outK.size());

    for (Codebook4 cb : {Codebook4::kNf4, Codebook4::kFp4}) {
        std::vector<uint8_t> pk(static_cast<size_t>(kN + 1) / 2), pr(pk.size());
        std::vector<float> ak(static_cast<size_t>(nb)), ar(ak.size());
        k.quantize4bit(cb, x.data(), kN, kBlocksize, pk.data(), ak.data());
        r.quantize4bit(cb, x.data(), kN, kBlocksize, pr.data(), ar.data());
        if (!same(pk.data(), pr.data(), pk.size()) || !same(ak.data(), ar.data(), ak.size() * 4)) {
            return "quantize4bit";
        }
        if (k.quantize4bitBf16 != nullptr) {
            std::vector<uint8_t> pkb(pk.size()), prb(pk.size());
            std::vector<float> akb(ak.size()), arb(ak.size());
            k.quantize4bitBf16(cb, xb.data(), kN, kBlocksize, pkb.data(), akb.data());
            r.quantize4bitBf16(cb, xb.data(), kN, kBlocksize, prb.data(), arb.data());
            if (!same(pkb.data(), prb.data(), pkb.size()) || !same(akb.data(), arb.data(), akb.size() * 4)) {
                return "quantize4bitBf16";
            }
        }
        float map[256];
        std::memcpy(map, kDynamicMapBits, sizeof map);
        const float offset = absmaxMean(ar.data(), nb);
        std::vector<uint8_t> codes(static_cast<size_t>(nb));
        std::vector<float> nested(static_cast<size_t>((nb + kNestedBlocksize - 1) / kNestedBlocksize));
        doubleQuantize(ar.data(), nb, offset, map, codes.data(), nested.data());
        {
            std::vector<uint8_t> codesK(codes.size());
            std::vector<float> nestedK(nested.size());
            doubleQuantize(ar.data(), nb, offset, map, codesK.data(), nestedK.data(), &k);
            if (!same(codesK.data(), codes.data(), codes.size()) ||
                !same(nestedK.data(), nested.data(), nested.size() * 4)) {
                return "dynamicEncodeN";
            }
        }
        const DoubleQuantAbsmax dq{codes.data(), map, nested.data(), offset};
        for (DType t : dtypes) {
            const size_t bytes = static_cast<size_t>(kN) * dtypeSize(t);
            k.dequantize4bit(cb, pr.data(), ar.data(), kN, kBlocksize, t, outK.data());
            r.dequantize4bit(cb, pr.data(), ar.data(), kN, kBlocksize, t, outR.data());
            if (!same(outK.data(), outR.data(), bytes)) return "dequantize4bit";
            k.dequantize4bitDq(cb, pr.data(), dq, 0, kN, kBlocksize, t, outK.data());
            r.dequantize4bitDq(cb, pr.data(), dq, 0, kN, kBlocksize, t, outR.data());
            if (!same(outK.data(), outR.data(), bytes)) return "dequantize4bitDq";
        }
    }

    for (bool llm : {true, false}) {
        std::vector<int8_t> qk(static_cast<size_t>(kN)), qr(qk.size());
        std::vector<float> sk(static_cast<size_t>(kRows)), sr(sk.size());
        if (llm) {
            k.quantizeInt8(x.data(), kRows, kCols, qk.data(), sk.data());
            r.quantizeInt8(x.data(), kRows, kCols, qr.data(), sr.data());
        } else {
            k.quantizeInt8Dynamic(x.data(), kRows, kCols, qk.data(), sk.data());
            r.quantizeInt8Dynamic(x.data(), kRows, kCols, qr.data(), sr.data());
        }
        if (!same(qk.data(), qr.data(), qk.size()) || !same(sk.data(), sr.data(), sk.size() * 4)) {
            return llm ? "quantizeInt8" : "quantizeInt8Dynamic";
        }
        for (DType t : dtypes) {
            k.dequantizeInt8(llm, qr.data(), sr.data(), kRows, kCols, t, outK.data());
            r.dequantizeInt8(llm, qr.data(), sr.data(), kRows, kCols, t, outR.data());
            if (!same(outK.data(), outR.data(), static_cast<size_t>(kN) * dtypeSize(t))) {
                return "dequantizeInt8";
            }
        }
    }

    const int64_t q4Blocks = kN / kQk4_0;
    std::vector<block_q4_0> bk(static_cast<size_t>(q4Blocks)), br(bk.size());
    k.quantizeQ4_0(x.data(), q4Blocks, bk.data());
    r.quantizeQ4_0(x.data(), q4Blocks, br.data());
    if (!same(bk.data(), br.data(), bk.size() * sizeof(block_q4_0))) return "quantizeQ4_0";
    if (k.quantizeQ4_0Bf16 != nullptr) {
        std::vector<block_q4_0> bkb(bk.size()), brb(bk.size());
        k.quantizeQ4_0Bf16(xb.data(), q4Blocks, bkb.data());
        r.quantizeQ4_0Bf16(xb.data(), q4Blocks, brb.data());
        if (!same(bkb.data(), brb.data(), bkb.size() * sizeof(block_q4_0))) return "quantizeQ4_0Bf16";
    }
    for (DType t : dtypes) {
        k.dequantizeQ4_0(br.data(), q4Blocks, t, outK.data());
        r.dequantizeQ4_0(br.data(), q4Blocks, t, outR.data());
        if (!same(outK.data(), outR.data(), static_cast<size_t>(kN) * dtypeSize(t))) {
            return "dequantizeQ4_0";
        }
    }

    std::vector<uint8_t> src(static_cast<size_t>(kN) * 4);
    for (DType from : dtypes) {
        r.convert(DType::kF32, x.data(), kN, from, src.data());  // the source in `from`
        for (DType to : dtypes) {
            k.convert(from, src.data(), kN, to, outK.data());
            r.convert(from, src.data(), kN, to, outR.data());
            if (!same(outK.data(), outR.data(), static_cast<size_t>(kN) * dtypeSize(to))) {
                return "convert";
            }
        }
    }
    return {};
}

}  // namespace sli::kernels

// The scalar reference against hand-worked cases of the spec (bitsandbytes CUDA semantics,
// llama.cpp Q4_0, LLM.int8, torch per-channel int8): codebook bits, thresholds, ties, all-zero
// blocks, odd tails, NaN / Inf policy, double-quant rounding.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/blocks.h"
#include "kernels/reference.h"

using namespace sli;
using namespace sli::kernels;
using namespace sli::kernels::testing;

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

struct Q4 {
    std::vector<uint8_t> packed;
    std::vector<float> absmax;
};

Q4 quant4(Codebook4 cb, const std::vector<float>& x, int bs = 32) {
    const int64_t n = static_cast<int64_t>(x.size());
    Q4 q{std::vector<uint8_t>(static_cast<size_t>((n + 1) / 2)),
         std::vector<float>(static_cast<size_t>((n + bs - 1) / bs))};
    referenceKernels().quantize4bit(cb, x.data(), n, bs, q.packed.data(), q.absmax.data());
    return q;
}

std::vector<uint16_t> dequant4To16(Codebook4 cb, const Q4& q, int64_t n, DType t, int bs = 32) {
    std::vector<uint16_t> out(static_cast<size_t>(n));
    referenceKernels().dequantize4bit(cb, q.packed.data(), q.absmax.data(), n, bs, t, out.data());
    return out;
}

std::vector<float> dequant4F32(Codebook4 cb, const Q4& q, int64_t n, int bs = 32) {
    std::vector<float> out(static_cast<size_t>(n));
    referenceKernels().dequantize4bit(cb, q.packed.data(), q.absmax.data(), n, bs, DType::kF32, out.data());
    return out;
}

float dyn(int i) { return bitsFloat(kDynamicMapBits[i]); }

}  // namespace

TEST_CASE("codebooks carry the spec's float32 bit patterns") {
    const uint32_t nf4[16] = {0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f,
                              0xbdba7871, 0x00000000, 0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a,
                              0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000};
    const uint32_t fp4[8] = {0x00000000, 0x3baaaaab, 0x3f2aaaab, 0x3f800000,
                             0x3eaaaaab, 0x3f000000, 0x3e2aaaab, 0x3e800000};
    for (int i = 0; i < 16; ++i) {
        CHECK(floatBits(kNf4Codebook[i]) == nf4[i]);
        CHECK(floatBits(nf4Decode(static_cast<uint8_t>(i))) == nf4[i]);
        CHECK(floatBits(kFp4Codebook[i]) == (fp4[i & 7] | (i >= 8 ? 0x80000000u : 0u)));
        CHECK(floatBits(fp4Decode(static_cast<uint8_t>(i))) == floatBits(kFp4Codebook[i]));
    }
    // bitsandbytes' stored quant_map has +0.0 at FP4 index 8; decoding uses CUDA's -0.0.
    CHECK(floatBits(kFp4QuantMap[8]) == 0u);
    CHECK(floatBits(kFp4Codebook[8]) == 0x80000000u);
}

TEST_CASE("NF4 thresholds are the float32 midpoints of neighbouring codes") {
    for (int i = 0; i < 15; ++i) {
        const double mid = (static_cast<double>(kNf4Codebook[i]) + kNf4Codebook[i + 1]) / 2.0;
        CHECK(kNf4Thresholds[i] == static_cast<float>(mid));
    }
}

TEST_CASE("FP4 thresholds are CUDA's literals, not the exact midpoints") {
    CHECK(floatBits(kFp4Thresholds[0]) == 0x3b2aaab9u);
    CHECK(floatBits(kFp4Thresholds[2]) == 0x3e555555u);
    CHECK(floatBits(kFp4Thresholds[3]) == 0x3e955555u);
    CHECK(floatBits(kFp4Thresholds[5]) == 0x3f155550u);
    CHECK(floatBits(kFp4Thresholds[6]) == 0x3f555555u);
    CHECK(kFp4Thresholds[1] == 0.0859375f);
}

TEST_CASE("dynamic map is the canonical ascending table with its check values") {
    CHECK(kDynamicMapBits[0] == 0xbf7e3333u);
    CHECK(kDynamicMapBits[63] == 0xbddb3334u);
    CHECK(kDynamicMapBits[127] == 0u);
    CHECK(kDynamicMapBits[143] == 0x3aa7ef9du);
    CHECK(kDynamicMapBits[254] == 0x3f7e3333u);
    CHECK(kDynamicMapBits[255] == 0x3f800000u);
    for (int i = 0; i < 255; ++i) CHECK(dyn(i) < dyn(i + 1));
    for (int i = 0; i < 127; ++i) CHECK(dyn(i) == -dyn(254 - i));
}

TEST_CASE("NF4 of [1, 0, -1, 0.5626170039176941] is F7 0D with absmax 1") {
    const std::vector<float> x = {1.0f, 0.0f, -1.0f, 0.5626170039176941f};
    const Q4 q = quant4(Codebook4::kNf4, x);
    CHECK(q.absmax[0] == 1.0f);
    CHECK(q.packed[0] == 0xF7);  // 1.0 -> 15 (high nibble), 0.0 -> 7
    CHECK(q.packed[1] == 0x0D);  // -1.0 -> 0, codebook value 13 -> 13
    const auto y = dequant4F32(Codebook4::kNf4, q, 4);
    for (size_t i = 0; i < 4; ++i) CHECK(floatBits(y[i]) == floatBits(x[i]));
}

TEST_CASE("NF4 values exactly on a threshold go to the lower code") {
    for (int i = 0; i < 15; ++i) {
        CAPTURE(i);
        const float t = kNf4Thresholds[i];
        CHECK(nf4Encode(t) == i);
        CHECK(nf4Encode(nextUp(t)) == i + 1);
        CHECK(nf4Encode(nextDown(t)) == i);
    }
    CHECK(nf4Encode(kNaN) == 0);
    CHECK(nf4Encode(-0.0f) == 7);
}

TEST_CASE("FP4 encodes by CUDA's literal tree with ties to the smaller magnitude") {
    const std::vector<float> x = {1.0f, -0.5f, kFp4Thresholds[3], 0.0026f};
    const Q4 q = quant4(Codebook4::kFp4, x);
    CHECK(q.packed[0] == 0x3D);  // 1.0 -> 0011; -0.5 -> 1101
    CHECK(q.packed[1] == 0x70);  // 0.29166667 (tie) -> 0111; 0.0026 -> 0000
    const uint8_t mags[8] = {0, 1, 6, 7, 4, 5, 2, 3};
    for (int i = 0; i < 7; ++i) {
        CAPTURE(i);
        const float t = kFp4Thresholds[i];
        CHECK(fp4Encode(t) == mags[i]);
        CHECK(fp4Encode(nextUp(t)) == mags[i + 1]);
        CHECK(fp4Encode(-nextUp(t)) == (8 | mags[i + 1]));
    }
    // The literal 0.20833333f lies 1 ulp below the exact midpoint: CUDA codes the midpoint up.
    CHECK(fp4Encode(bitsFloat(0x3e555556)) == 0b111);
    CHECK(fp4Encode(-0.0f) == 0);
    CHECK(fp4Encode(-0.001f) == 8);
    CHECK(fp4Encode(kNaN) == 0);
}

TEST_CASE("an odd tail is padded with the code of 0.0") {
    const Q4 nf4 = quant4(Codebook4::kNf4, {0.5f, -0.25f, 1.0f});
    CHECK(nf4.packed[0] == 0xC4);
    CHECK(nf4.packed[1] == 0xF7);
    const Q4 fp4 = quant4(Codebook4::kFp4, {0.5f, -0.25f, 1.0f});
    CHECK(fp4.packed[0] == 0x5F);
    CHECK(fp4.packed[1] == 0x30);
}

TEST_CASE("an all-zero block has absmax 0 and codes 0000 (CUDA semantics)") {
    std::vector<float> x(64, 0.0f);
    x[1] = -0.0f;
    x[40] = 2.0f;  // second block is not zero
    for (Codebook4 cb : {Codebook4::kNf4, Codebook4::kFp4}) {
        const Q4 q = quant4(cb, x);
        CHECK(q.absmax[0] == 0.0f);
        CHECK(q.absmax[1] == 2.0f);
        for (int i = 0; i < 16; ++i) CHECK(q.packed[static_cast<size_t>(i)] == 0x00);
        const auto h = dequant4To16(cb, q, 64, DType::kF16);
        const auto b = dequant4To16(cb, q, 64, DType::kBF16);
        // NF4 code 0 is -1.0: -1 * 0 = -0.0; FP4 code 0 is +0.0.
        CHECK(h[0] == (cb == Codebook4::kNf4 ? 0x8000 : 0x0000));
        CHECK(b[0] == (cb == Codebook4::kNf4 ? 0x8000 : 0x0000));
    }
    // A partial all-zero block pads with code(0 * inf) = code(NaN) = 0 as well.
    const Q4 odd = quant4(Codebook4::kNf4, {0.0f, 0.0f, 0.0f});
    CHECK(odd.packed[1] == 0x00);
}

TEST_CASE("NaN never sets absmax and codes to 0; Inf zeroes the rest of its block") {
    const Q4 nan = quant4(Codebook4::kNf4, {kNaN, 2.0f, -1.0f, 1.0f});
    CHECK(nan.absmax[0] == 2.0f);
    CHECK(nan.packed[0] == 0x0F);  // NaN -> 0; 2/2 = 1 -> 15
    const Q4 allNan = quant4(Codebook4::kNf4, {kNaN, kNaN});
    CHECK(allNan.absmax[0] == 0.0f);
    CHECK(allNan.packed[0] == 0x00);
    const Q4 inf = quant4(Codebook4::kNf4, {kInf, 1.0f, -2.0f, 0.0f});
    CHECK(std::isinf(inf.absmax[0]));
    CHECK(inf.packed[0] == 0x07);  // Inf * 0 = NaN -> 0; 1 * 0 = 0 -> 7
    CHECK(inf.packed[1] == 0x77);  // -2 * 0 = -0 -> 7
    const Q4 infFp4 = quant4(Codebook4::kFp4, {-kInf, 1.0f, -2.0f, 0.0f});
    CHECK(infFp4.packed[0] == 0x00);  // -Inf: sign bit 8? no: -Inf * 0 = NaN -> 0000
    CHECK(infFp4.packed[1] == 0x00);  // -2 * 0 = -0.0: no sign bit
}

TEST_CASE("partial last blocks use their own absmax") {
    std::vector<float> x(32 + 5);
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i) - 3.0f;
    const Q4 q = quant4(Codebook4::kNf4, x);
    CHECK(q.absmax.size() == 2);
    CHECK(q.absmax[0] == 28.0f);
    CHECK(q.absmax[1] == 33.0f);
}

TEST_CASE("8-bit dynamic encoding is CUDA's nearest search with ties to the even index") {
    float map[256];
    for (int i = 0; i < 256; ++i) map[i] = dyn(i);
    for (int i = 0; i < 256; ++i) CHECK(dynamicEncode(map, map[i]) == i);
    CHECK(dynamicEncode(map, (map[200] + map[201]) * 0.5f) == 200);
    CHECK(dynamicEncode(map, (map[201] + map[202]) * 0.5f) == 202);
    CHECK(dynamicEncode(map, nextUp((map[201] + map[202]) * 0.5f)) == 202);
    CHECK(dynamicEncode(map, nextDown((map[200] + map[201]) * 0.5f)) == 200);
    CHECK(dynamicEncode(map, nextUp((map[200] + map[201]) * 0.5f)) == 201);
    CHECK(dynamicEncode(map, -1.0f) == 0);
    CHECK(dynamicEncode(map, 1.0f) == 255);
    CHECK(dynamicEncode(map, 0.0f) == 127);
    CHECK(dynamicEncode(map, kNaN) == 0);
    // Nearest entry on random inputs (up to the rounding of the midpoint itself).
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (int k = 0; k < 20000; ++k) {
        const float x = k % 2 ? u(rng) : u(rng) * 1e-3f;
        const int r = dynamicEncode(map, x);
        double best = 1e9;
        for (int i = 0; i < 256; ++i) best = std::min(best, std::fabs(double(x) - map[i]));
        CHECK(std::fabs(double(x) - map[r]) <= best + 1e-7 * std::fabs(double(x)) + 1e-12);
    }
}

namespace {

// bitsandbytes' dQuantize<0> (csrc/kernels.cu), as written there: branches on each step and
// float bounds. kernels/blocks.h computes the same search with bit masks and index bounds.
int bnbDQuantize(const float* smem_code, float x) {
    int pivot = 127;
    int upper_pivot = 255;
    int lower_pivot = 0;
    float lower = -1.0f;
    float upper = 1.0f;
    float val = smem_code[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = smem_code[pivot];
    }
    if (upper_pivot == 255) upper = smem_code[upper_pivot];
    if (lower_pivot == 0) lower = smem_code[lower_pivot];
    if (x > val) {
        float midpoint = (upper + val) * 0.5f;
        return x > midpoint ? upper_pivot : pivot;
    }
    float midpoint = (lower + val) * 0.5f;
    return x < midpoint ? lower_pivot : pivot;
}

}  // namespace

TEST_CASE("the branch-free dynamic encoding equals bitsandbytes' search on every boundary") {
    float map[256];
    for (int i = 0; i < 256; ++i) map[i] = dyn(i);
    const std::vector<float> xs = dynamicMapProbes(map, 50000, 29);
    int mismatches = 0;
    for (float x : xs) {
        if (dynamicEncode(map, x) != bnbDQuantize(map, x) && ++mismatches <= 5) {
            FAIL_CHECK("x = " << x << ": " << int(dynamicEncode(map, x)) << " vs bitsandbytes "
                              << bnbDQuantize(map, x));
        }
    }
    CHECK(mismatches == 0);
}

TEST_CASE("double quant centres absmax on its mean and rebuilds it with two roundings") {
    const float absmax[4] = {1.0f, 3.0f, 2.0f, 2.0f};
    CHECK(absmaxMean(absmax, 4) == 2.0f);
    float map[256];
    for (int i = 0; i < 256; ++i) map[i] = dyn(i);
    uint8_t codes[4];
    float nested[1];
    doubleQuantize(absmax, 4, 2.0f, map, codes, nested);
    CHECK(nested[0] == 1.0f);
    CHECK(codes[0] == 0);    // -1 is below map[0] = -0.99296875
    CHECK(codes[1] == 255);  // +1
    CHECK(codes[2] == 127);  // 0
    float rec[4];
    reconstructAbsmax(codes, nested, map, 2.0f, 0, 4, rec);
    CHECK(rec[0] == 2.0f + map[0]);
    CHECK(rec[1] == 3.0f);
    CHECK(rec[2] == 2.0f);
    // Find inputs where a fused multiply-add would round differently and check we do not fuse.
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> u(0.01f, 10.0f);
    int fmaDiffers = 0;
    for (int k = 0; k < 100000 && fmaDiffers < 50; ++k) {
        const uint8_t q = static_cast<uint8_t>(rng() & 0xff);
        const float nabs = u(rng);
        const float off = u(rng);
        const float product = map[q] * nabs;
        const float twoRoundings = product + off;
        if (std::fma(map[q], nabs, off) == twoRoundings) continue;
        ++fmaDiffers;
        float got;
        const float nestedOne[1] = {nabs};
        reconstructAbsmax(&q, nestedOne, map, off, 0, 1, &got);
        CHECK(floatBits(got) == floatBits(twoRoundings));
    }
    CHECK(fmaDiffers > 0);
}

TEST_CASE("double quant of an all-equal absmax gives nested absmax 0 and rebuilds the offset") {
    const float absmax[3] = {0.75f, 0.75f, 0.75f};
    float map[256];
    for (int i = 0; i < 256; ++i) map[i] = dyn(i);
    uint8_t codes[3];
    float nested[1];
    doubleQuantize(absmax, 3, absmaxMean(absmax, 3), map, codes, nested);
    CHECK(nested[0] == 0.0f);
    CHECK(codes[0] == 0);  // 0 * inf = NaN -> index 0, as CUDA
    float rec[3];
    reconstructAbsmax(codes, nested, map, 0.75f, 0, 3, rec);
    CHECK(rec[0] == 0.75f);
}

TEST_CASE("LLM.int8 rounds half to even against the fp16 row absmax") {
    const int64_t cols = 8;
    const std::vector<float> x = {127.0f, -63.5f, 0.5f, 1.5f, -2.5f, 0.0f, 0.0f, 0.0f,   // SCB 127
                                  0, 0, 0, 0, 0, 0, 0, 0,                                // zero row
                                  1e6f, 1.0f, -3.0f, 0, 0, 0, 0, 0,                      // fp16 inf
                                  kNaN, 2.0f, -1.0f, 0, 0, 0, 0, 0.1f};
    const int64_t rows = static_cast<int64_t>(x.size()) / cols;
    std::vector<int8_t> cb(x.size());
    std::vector<float> scb(static_cast<size_t>(rows));
    referenceKernels().quantizeInt8(x.data(), rows, cols, cb.data(), scb.data());
    CHECK(scb[0] == 127.0f);
    const int8_t want0[8] = {127, -64, 0, 2, -2, 0, 0, 0};
    for (int c = 0; c < 8; ++c) CHECK(cb[static_cast<size_t>(c)] == want0[c]);
    CHECK(scb[1] == 0.0f);
    for (int c = 8; c < 16; ++c) CHECK(cb[static_cast<size_t>(c)] == 0);
    CHECK(std::isinf(scb[2]));
    for (int c = 16; c < 24; ++c) CHECK(cb[static_cast<size_t>(c)] == 0);
    CHECK(scb[3] == 2.0f);
    CHECK(cb[24] == 0);
    CHECK(cb[25] == 127);
    CHECK(cb[26] == -64);  // -1 * 63.5 = -63.5 -> -64
    CHECK(cb[31] == 6);    // fp16(0.1) * 63.5 = 6.35 -> 6
    std::vector<float> y(x.size());
    referenceKernels().dequantizeInt8(true, cb.data(), scb.data(), rows, cols, DType::kF32, y.data());
    const float p = 127.0f * 127.0f;
    CHECK(floatBits(y[0]) == floatBits(p * kInt8DequantFactor));
    CHECK(floatBits(kInt8DequantFactor) == floatBits(static_cast<float>(7.874015718698502e-3)));
}

TEST_CASE("int8_dynamic uses scale absmax/127.5 and clamps to [-128, 127]") {
    const int64_t cols = 6;
    const std::vector<float> x = {127.5f, -127.5f, 2.5f, 3.5f, -0.5f, 1.0f,  // scale 1
                                  0, 0, 0, 0, 0, 0};                          // zero row
    std::vector<int8_t> q(x.size());
    float scale[2];
    referenceKernels().quantizeInt8Dynamic(x.data(), 2, cols, q.data(), scale);
    CHECK(scale[0] == 1.0f);
    const int8_t want[6] = {127, -128, 2, 4, 0, 1};
    for (int c = 0; c < 6; ++c) CHECK(q[static_cast<size_t>(c)] == want[c]);
    CHECK(scale[1] == kInt8DynamicEps);
    for (int c = 6; c < 12; ++c) CHECK(q[static_cast<size_t>(c)] == 0);
    std::vector<float> y(x.size());
    referenceKernels().dequantizeInt8(false, q.data(), scale, 2, cols, DType::kF32, y.data());
    CHECK(y[0] == 127.0f);
    CHECK(y[1] == -128.0f);
}

TEST_CASE("Q4_0 follows llama.cpp: first largest magnitude, d = max / -8, truncation") {
    std::vector<float> x(32, 0.0f);
    x[0] = 4.0f;
    x[1] = -8.0f;  // max magnitude, negative: d = 1
    x[2] = 7.5f;   // 16 -> clamped to 15
    x[4] = -0.5f;  // 8.0 -> 8
    x[5] = 0.49f;  // 8.99 -> 8
    x[6] = kNaN;   // -> 0
    x[17] = 3.0f;  // element 17: high nibble of qs[1] = 11
    block_q4_0 b;
    referenceKernels().quantizeQ4_0(x.data(), 1, &b);
    CHECK(b.d == 0x3c00);
    CHECK(b.qs[0] == 0x8C);
    CHECK(b.qs[1] == 0xB0);
    CHECK(b.qs[2] == 0x8F);
    CHECK(b.qs[3] == 0x88);
    CHECK(b.qs[4] == 0x88);
    CHECK(b.qs[5] == 0x88);
    CHECK(b.qs[6] == 0x80);
    float y[32];
    referenceKernels().dequantizeQ4_0(&b, 1, DType::kF32, y);
    CHECK(y[0] == 4.0f);
    CHECK(y[1] == -8.0f);
    CHECK(y[2] == 7.0f);
    CHECK(y[17] == 3.0f);

    std::vector<float> tie(32, 0.0f);
    tie[3] = 4.0f;
    tie[7] = -4.0f;
    referenceKernels().quantizeQ4_0(tie.data(), 1, &b);
    CHECK(b.d == 0xb800);  // 4 / -8 = -0.5

    std::vector<float> zero(32, 0.0f);
    zero[0] = -0.0f;
    referenceKernels().quantizeQ4_0(zero.data(), 1, &b);
    CHECK(b.d == 0x8000);  // max stays +0.0, d = -0.0
    for (uint8_t v : b.qs) CHECK(v == 0x88);
}

TEST_CASE("dequantization rounds to f16 and bf16 to nearest even") {
    // absmax chosen so that lut * absmax lands on an f16 / bf16 tie.
    const std::vector<uint8_t> packed = {0xF0};  // codes 15 (1.0), 0 (-1.0)
    const float absmax[1] = {bitsFloat(0x3f801000)};  // 1 + 2^-11: an f16 tie -> 1.0
    std::vector<uint16_t> h(2), b(2);
    referenceKernels().dequantize4bit(Codebook4::kNf4, packed.data(), absmax, 2, 32, DType::kF16, h.data());
    CHECK(h[0] == 0x3c00);
    CHECK(h[1] == 0xbc00);
    const float absmaxB[1] = {bitsFloat(0x3f818000)};  // bf16 tie between 0x3f81 and 0x3f82
    referenceKernels().dequantize4bit(Codebook4::kNf4, packed.data(), absmaxB, 2, 32, DType::kBF16, b.data());
    CHECK(b[0] == 0x3f82);
    CHECK(b[1] == 0xbf82);
}

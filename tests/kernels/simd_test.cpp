// Every SIMD implementation built for this CPU against the scalar reference, bit for bit, on
// random data and on edge cases (all-zero blocks, odd counts, exact thresholds, huge and
// subnormal magnitudes, every blocksize, NaN / Inf, unaligned buffers).
#include <doctest/doctest.h>

#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/cpu_kernels.h"
#include "kernels/reference.h"

using namespace sli;
using namespace sli::kernels;
using namespace sli::kernels::testing;

namespace {

constexpr DType kOutTypes[] = {DType::kF16, DType::kBF16, DType::kF32};

size_t esz(DType t) { return t == DType::kF32 ? 4 : 2; }

// Runs the test body once per fast implementation, or says why nothing ran.
template <typename Fn>
void forEachFast(Fn&& fn) {
    const auto fast = fastKernels();
    if (fast.empty()) {
        MESSAGE("no SIMD implementation for this CPU/build: only the reference is exercised");
    }
    for (const CpuKernels* k : fast) {
        CAPTURE(std::string(k->name));
        fn(*k);
    }
}

// A buffer whose data() is deliberately misaligned by `skew` bytes.
struct Skewed {
    std::vector<uint8_t> storage;
    size_t skew;
    Skewed(size_t bytes, size_t s) : storage(bytes + 64, 0xcd), skew(s) {}
    uint8_t* data() { return storage.data() + skew; }
};

void check4bit(const CpuKernels& k, Codebook4 cb, const std::vector<float>& x, int bs, size_t skew) {
    const auto& ref = referenceKernels();
    const int64_t n = static_cast<int64_t>(x.size());
    const int64_t nb = (n + bs - 1) / bs;
    const size_t nbytes = static_cast<size_t>((n + 1) / 2);
    std::vector<uint8_t> pRef(nbytes), pFast(nbytes);
    std::vector<float> aRef(static_cast<size_t>(nb)), aFast(static_cast<size_t>(nb));
    ref.quantize4bit(cb, x.data(), n, bs, pRef.data(), aRef.data());
    k.quantize4bit(cb, x.data(), n, bs, pFast.data(), aFast.data());
    CHECK(firstDiff(aRef.data(), aFast.data(), aRef.size(), 4) == -1);
    CHECK(firstDiff(pRef.data(), pFast.data(), nbytes, 1) == -1);
    for (DType t : kOutTypes) {
        CAPTURE(std::string(dtypeName(t)));
        Skewed oRef(static_cast<size_t>(n) * esz(t), skew), oFast(static_cast<size_t>(n) * esz(t), skew);
        Skewed packed(nbytes, skew);
        std::memcpy(packed.data(), pRef.data(), nbytes);
        ref.dequantize4bit(cb, pRef.data(), aRef.data(), n, bs, t, oRef.data());
        k.dequantize4bit(cb, packed.data(), aRef.data(), n, bs, t, oFast.data());
        CHECK(firstDiff(oRef.data(), oFast.data(), static_cast<size_t>(n), esz(t)) == -1);
        CHECK(sameBytes(oRef.storage.data(), oFast.storage.data(), oRef.storage.size()));  // no overrun
    }
}

// Double-quant statistics of a whole tensor, owned.
struct DqStats {
    std::vector<uint8_t> codes;
    std::vector<float> map;
    std::vector<float> nested;
    float offset = 0.0f;
    DoubleQuantAbsmax view() const { return {codes.data(), map.data(), nested.data(), offset}; }
};

std::vector<float> dynamicMap() {
    std::vector<float> m(256);
    for (int i = 0; i < 256; ++i) m[static_cast<size_t>(i)] = bitsFloat(kDynamicMapBits[i]);
    return m;
}

// The statistics the quantizer writes for x: 4-bit codes into `packed`, absmax double-quantized.
DqStats quantizeDq(Codebook4 cb, const std::vector<float>& x, int bs,
                   std::vector<uint8_t>& packed) {
    const auto& ref = referenceKernels();
    const int64_t n = static_cast<int64_t>(x.size());
    const int64_t nb = (n + bs - 1) / bs;
    std::vector<float> absmax(static_cast<size_t>(nb));
    packed.assign(static_cast<size_t>((n + 1) / 2), 0);
    ref.quantize4bit(cb, x.data(), n, bs, packed.data(), absmax.data());
    DqStats s;
    s.codes.resize(static_cast<size_t>(nb));
    s.nested.resize(static_cast<size_t>((nb + kNestedBlocksize - 1) / kNestedBlocksize));
    s.map = dynamicMap();
    s.offset = absmaxMean(absmax.data(), nb);
    doubleQuantize(absmax.data(), nb, s.offset, s.map.data(), s.codes.data(), s.nested.data());
    return s;
}

// k.dequantize4bitDq over [0, n) cut at the given block boundaries (each piece a call of its
// own, as dispatch.cpp's thread split does) against the definition: reconstructAbsmax of the
// whole tensor, then the reference's plain dequantization. Output misaligned by `skew`.
void checkDq(const CpuKernels& k, Codebook4 cb, const std::vector<uint8_t>& packed,
             const DqStats& s, int64_t n, int bs, const std::vector<int64_t>& cuts, size_t skew) {
    const auto& ref = referenceKernels();
    const int64_t nb = (n + bs - 1) / bs;
    std::vector<float> absmax(static_cast<size_t>(nb));
    reconstructAbsmax(s.codes.data(), s.nested.data(), s.map.data(), s.offset, 0, nb,
                      absmax.data());
    const DoubleQuantAbsmax dq = s.view();
    for (DType t : kOutTypes) {
        CAPTURE(std::string(k.name));
        CAPTURE(std::string(dtypeName(t)));
        const int64_t e = static_cast<int64_t>(esz(t));
        Skewed want(static_cast<size_t>(n * e), skew), got(static_cast<size_t>(n * e), skew);
        ref.dequantize4bit(cb, packed.data(), absmax.data(), n, bs, t, want.data());
        std::vector<int64_t> at = {0};
        for (int64_t c : cuts) {
            if (c > at.back() && c < nb) at.push_back(c);
        }
        at.push_back(nb);
        for (size_t i = 0; i + 1 < at.size(); ++i) {
            const int64_t begin = at[i] * bs;
            const int64_t end = std::min(n, at[i + 1] * bs);
            k.dequantize4bitDq(cb, packed.data() + begin / 2, dq, at[i], end - begin, bs, t,
                               got.data() + begin * e);
        }
        CHECK(firstDiff(want.data(), got.data(), static_cast<size_t>(n), esz(t)) == -1);
        CHECK(
            sameBytes(want.storage.data(), got.storage.data(), want.storage.size()));  // no overrun
    }
}

// The reference and every fast implementation.
template <typename Fn>
void forEachImpl(Fn&& fn) {
    fn(referenceKernels());
    forEachFast(fn);
}

}  // namespace

TEST_CASE(
    "double-quant dequantization matches reconstructAbsmax + dequantize4bit for every blocksize") {
    forEachImpl([](const CpuKernels& k) {
        for (Codebook4 cb : {Codebook4::kNf4, Codebook4::kFp4}) {
            CAPTURE(static_cast<int>(cb));
            for (int bs = 32; bs <= 4096; bs *= 2) {
                CAPTURE(bs);
                // Block counts: one, odd, one past a nested group, across two nested
                // boundaries; whole and partial (odd) last blocks; a lone short block.
                const int64_t blocks[] = {1, 9, 257, 515};
                for (int64_t nb : blocks) {
                    if (nb * bs > (int64_t{1} << 20)) continue;  // keep the slow reference quick
                    for (int64_t n : {nb * bs, nb * bs - 31, nb * bs - bs / 2 + 1}) {
                        CAPTURE(n);
                        // Finite: an Inf element would make the offset Inf and every
                        // rebuilt absmax NaN / Inf (that case is the next test's).
                        auto x = mixedValues(n, bs, static_cast<uint32_t>(n * 7 + bs), false);
                        x[static_cast<size_t>(n / 2)] = std::numeric_limits<float>::quiet_NaN();
                        std::vector<uint8_t> packed;
                        const DqStats s = quantizeDq(cb, x, bs, packed);
                        checkDq(k, cb, packed, s, n, bs, {}, static_cast<size_t>(n % 3));
                        // Thread-split style cuts: mid group, on a nested boundary, one block
                        // before and after it, a one-block range.
                        checkDq(k, cb, packed, s, n, bs, {1, 2, 100, 255, 256, 257, 300, 511, 512},
                                1);
                    }
                }
                std::vector<uint8_t> one;  // a lone value: one short block
                const DqStats s1 = quantizeDq(cb, {0.5f}, bs, one);
                checkDq(k, cb, one, s1, 1, bs, {}, 0);
            }
        }
    });
}

TEST_CASE("4-bit quantization and dequantization match the reference for every blocksize") {
    forEachFast([](const CpuKernels& k) {
        for (Codebook4 cb : {Codebook4::kNf4, Codebook4::kFp4}) {
            CAPTURE(static_cast<int>(cb));
            for (int bs = 32; bs <= 4096; bs *= 2) {
                CAPTURE(bs);
                // (33 blocks and a part: the AVX-512 quantizer's groups of 16 blocks, and its
                // per-block tail, each meet every kind of block mixedValues makes)
                for (int64_t n : {int64_t{bs}, int64_t{bs} * 9, int64_t{bs} * 9 + 1, int64_t{bs} * 3 + 31,
                                  int64_t{bs} * 2 + 17, int64_t{bs} * 33 + 5, int64_t{1}, int64_t{7}}) {
                    CAPTURE(n);
                    const auto x = mixedValues(n, bs, static_cast<uint32_t>(n * 31 + bs), true);
                    check4bit(k, cb, x, bs, static_cast<size_t>(n % 3));
                }
            }
        }
    });
}

// k.quantize4bitBf16 (where k has one) and the reference's against the definition:
// quantize4bit of the widened values. The source one element past an aligned address.
void check4bitBf16(const CpuKernels& k, Codebook4 cb, const std::vector<uint16_t>& bits, int bs) {
    const auto& ref = referenceKernels();
    const int64_t n = static_cast<int64_t>(bits.size());
    const int64_t nb = (n + bs - 1) / bs;
    const size_t nbytes = static_cast<size_t>((n + 1) / 2);
    std::vector<float> widened(bits.size());
    for (size_t i = 0; i < bits.size(); ++i) widened[i] = bf16ToF32(bits[i]);
    std::vector<uint16_t> src(bits.size() + 1);
    std::copy(bits.begin(), bits.end(), src.begin() + 1);
    std::vector<uint8_t> pWant(nbytes), pGot(nbytes);
    std::vector<float> aWant(static_cast<size_t>(nb)), aGot(static_cast<size_t>(nb));
    ref.quantize4bit(cb, widened.data(), n, bs, pWant.data(), aWant.data());
    for (const CpuKernels* impl : {&ref, &k}) {
        if (impl->quantize4bitBf16 == nullptr) continue;
        CAPTURE(std::string(impl->name));
        std::fill(pGot.begin(), pGot.end(), 0xcd);
        impl->quantize4bitBf16(cb, src.data() + 1, n, bs, pGot.data(), aGot.data());
        CHECK(firstDiff(aWant.data(), aGot.data(), aWant.size(), 4) == -1);
        CHECK(firstDiff(pWant.data(), pGot.data(), nbytes, 1) == -1);
    }
}

std::vector<uint16_t> toBf16(const std::vector<float>& x) {
    std::vector<uint16_t> b(x.size());
    for (size_t i = 0; i < x.size(); ++i) b[i] = f32ToBf16(x[i]);
    return b;
}

TEST_CASE("4-bit quantization from bf16 matches quantize4bit of the widened values") {
    forEachFast([](const CpuKernels& k) {
        for (Codebook4 cb : {Codebook4::kNf4, Codebook4::kFp4}) {
            CAPTURE(static_cast<int>(cb));
            for (int bs = 32; bs <= 4096; bs *= 2) {
                CAPTURE(bs);
                for (int64_t n : {int64_t{bs}, int64_t{bs} * 17, int64_t{bs} * 9 + 1, int64_t{bs} * 33 + 5,
                                  int64_t{1}, int64_t{7}}) {
                    CAPTURE(n);
                    check4bitBf16(k, cb, toBf16(mixedValues(n, bs, static_cast<uint32_t>(n * 17 + bs), true)), bs);
                }
            }
            // every bf16 bit pattern (NaN, infinities, subnormals, both zeros) in blocks as they
            // come, then every one in [-1, 1] in blocks of absmax 1 and 3 (x / absmax is the
            // normalized value the codes are found for)
            std::vector<uint16_t> all(65536);
            for (uint32_t v = 0; v < 65536; ++v) all[v] = static_cast<uint16_t>(v);
            check4bitBf16(k, cb, all, 64);
            std::vector<uint16_t> unit;
            for (uint32_t v = 0; v <= 0x3f80u; ++v) {
                unit.push_back(static_cast<uint16_t>(v));
                unit.push_back(static_cast<uint16_t>(v | 0x8000u));
            }
            for (uint16_t am : {uint16_t{0x3f80}, uint16_t{0x4040}}) {  // 1.0, 3.0
                CAPTURE(am);
                std::vector<uint16_t> x;
                for (size_t at = 0; at < unit.size();) {
                    x.push_back(am);
                    for (int i = 1; i < 64; ++i) {
                        const float scaled = bf16ToF32(unit[at++ % unit.size()]) * bf16ToF32(am);
                        x.push_back(f32ToBf16(scaled));  // exact for am = 1, rounded for 3
                    }
                }
                check4bitBf16(k, cb, x, 64);
            }
        }
    });
}

TEST_CASE("4-bit paths agree on a large random tensor with random absmax") {
    forEachFast([](const CpuKernels& k) {
        for (Codebook4 cb : {Codebook4::kNf4, Codebook4::kFp4}) {
            const auto x = randomValues(64 * 4096 + 64, 7);
            check4bit(k, cb, x, 64, 1);
        }
    });
}

// Blocks of `bs` whose first element is `am` (their absmax) and the rest values * am, in order.
std::vector<float> blocksOf(const std::vector<float>& values, int bs, float am) {
    std::vector<float> x;
    size_t at = 0;
    bool negative = false;  // alternate the sign of the absmax element
    while (at < values.size()) {
        x.push_back(negative ? -am : am);
        negative = !negative;
        for (int i = 1; i < bs; ++i) x.push_back(values[at++ % values.size()] * am);
    }
    return x;
}

// The fast encoders may find codes another way than the reference's count of thresholds (the
// AVX-512 quantizers look each value up in a table of buckets): every normalized value they
// can meet must still give the reference's code. A sweep of [-1, 1] (every 509th float of
// either sign), every float within 1024 ulps of each threshold, of each multiple of 1/64 and of
// +-1, in blocks whose absmax is exactly 1 (x * 1 / absmax is x), 3 (products rounding past
// +-1) and around the smallest absmax whose reciprocal is finite.
TEST_CASE("4-bit codes match the reference across the whole normalized range") {
    std::vector<float> sweep;
    for (uint32_t bits = 0; bits <= 0x3f800000u; bits += 509) {
        const float f = bitsFloat(bits);
        sweep.push_back(f);
        sweep.push_back(-f);
    }
    std::vector<float> centres = {1.0f, -1.0f, 0.0f};
    for (float t : kNf4Thresholds) centres.push_back(t);
    for (float t : kFp4Thresholds) {
        centres.push_back(t);
        centres.push_back(-t);
    }
    for (int k = -64; k <= 64; ++k) centres.push_back(static_cast<float>(k) / 64.0f);
    for (float c : centres) {
        float up = c, down = c;
        for (int i = 0; i < 1024; ++i) {
            up = nextUp(up);
            down = nextDown(down);
            if (up <= 1.0f) sweep.push_back(up);
            if (down >= -1.0f) sweep.push_back(down);
        }
    }
    forEachFast([&](const CpuKernels& k) {
        for (Codebook4 cb : {Codebook4::kNf4, Codebook4::kFp4}) {
            CAPTURE(static_cast<int>(cb));
            for (float am : {1.0f, 3.0f}) {
                CAPTURE(am);
                const auto x = blocksOf(sweep, 64, am);
                check4bit(k, cb, x, 64, 0);
            }
            // 1 / absmax overflows below 2^-128: both sides of that edge, and the smallest
            // subnormal
            std::vector<float> few(sweep.begin(), sweep.begin() + 4096);
            for (float am : {0x1p-126f, 0x1p-127f, 0x1.000002p-128f, 0x1p-128f, 0x1p-129f,
                             0x1p-149f}) {
                CAPTURE(am);
                check4bit(k, cb, blocksOf(few, 64, am), 64, 0);
            }
        }
    });
}

TEST_CASE("large outputs (streaming stores) match the reference") {
    forEachFast([](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        const int64_t n = int64_t{9} << 19;  // 4.7M values: 9 MiB of f16, past the streaming threshold
        const auto x = randomValues(n, 21);
        std::vector<uint8_t> packed(static_cast<size_t>(n / 2));
        std::vector<float> absmax(static_cast<size_t>(n / 64));
        ref.quantize4bit(Codebook4::kNf4, x.data(), n, 64, packed.data(), absmax.data());
        std::vector<block_q4_0> q(static_cast<size_t>(n / 32));
        ref.quantizeQ4_0(x.data(), n / 32, q.data());
        for (DType t : kOutTypes) {
            std::vector<uint8_t> a(static_cast<size_t>(n) * esz(t)), b(a.size());
            ref.dequantize4bit(Codebook4::kNf4, packed.data(), absmax.data(), n, 64, t, a.data());
            k.dequantize4bit(Codebook4::kNf4, packed.data(), absmax.data(), n, 64, t, b.data());
            CHECK(a == b);
            ref.dequantizeQ4_0(q.data(), n / 32, t, a.data());
            k.dequantizeQ4_0(q.data(), n / 32, t, b.data());
            CHECK(a == b);
        }
    });
}

// A zero-filled buffer whose data() starts `skew` bytes past a 64-byte boundary.
struct LineBuffer {
    std::vector<uint8_t> storage;
    uint8_t* p;
    size_t bytes;
    LineBuffer(size_t n, size_t skew) : storage(n + 128, 0), bytes(n) {
        const auto a = reinterpret_cast<uintptr_t>(storage.data());
        p = storage.data() + ((64 - a % 64) % 64) + skew;
    }
    // Same contents as `o` and nothing written outside [p, p + bytes).
    bool same(const LineBuffer& o) const {
        for (const uint8_t* q = storage.data(); q < p; ++q) {
            if (*q != 0) return false;
        }
        for (const uint8_t* q = p + bytes; q < storage.data() + storage.size(); ++q) {
            if (*q != 0) return false;
        }
        return std::memcmp(p, o.p, bytes) == 0;
    }
};

TEST_CASE("large line-aligned outputs (non-temporal stores) match the reference for every mode") {
    forEachFast([](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        const int64_t rows = 1152, cols = 4096;  // 4.7M values: 9 MiB of f16, past the threshold
        const int64_t n = rows * cols;
        auto x = randomValues(n, 33);
        x[5] = std::numeric_limits<float>::quiet_NaN();
        std::vector<uint8_t> packed(static_cast<size_t>(n / 2));
        std::vector<float> absmax(static_cast<size_t>(n / 64));
        ref.quantize4bit(Codebook4::kNf4, x.data(), n, 64, packed.data(), absmax.data());
        std::vector<block_q4_0> q(static_cast<size_t>(n / 32));
        ref.quantizeQ4_0(x.data(), n / 32, q.data());
        std::vector<int8_t> i8(static_cast<size_t>(n));
        std::vector<float> scale(static_cast<size_t>(rows));
        ref.quantizeInt8Dynamic(x.data(), rows, cols, i8.data(), scale.data());
        scale[3] = std::numeric_limits<float>::infinity();  // a row of NaN / Inf products
        for (size_t skew : {size_t{0}, size_t{32}, size_t{16}, size_t{2}}) {
            CAPTURE(skew);
            for (DType t : kOutTypes) {
                CAPTURE(std::string(dtypeName(t)));
                const size_t bytes = static_cast<size_t>(n) * esz(t);
                LineBuffer a(bytes, skew), b(bytes, skew);
                ref.dequantize4bit(Codebook4::kNf4, packed.data(), absmax.data(), n, 64, t, a.p);
                k.dequantize4bit(Codebook4::kNf4, packed.data(), absmax.data(), n, 64, t, b.p);
                CHECK(b.same(a));
                ref.dequantizeQ4_0(q.data(), n / 32, t, a.p);
                k.dequantizeQ4_0(q.data(), n / 32, t, b.p);
                CHECK(b.same(a));
                for (bool llm : {false, true}) {
                    ref.dequantizeInt8(llm, i8.data(), scale.data(), rows, cols, t, a.p);
                    k.dequantizeInt8(llm, i8.data(), scale.data(), rows, cols, t, b.p);
                    CHECK(b.same(a));
                }
                for (DType from : kOutTypes) {
                    CAPTURE(std::string(dtypeName(from)));
                    std::vector<uint8_t> src(static_cast<size_t>(n) * esz(from));
                    ref.convert(DType::kF32, x.data(), n, from, src.data());
                    ref.convert(from, src.data(), n, t, a.p);
                    k.convert(from, src.data(), n, t, b.p);
                    CHECK(b.same(a));
                }
            }
        }
    });
}

TEST_CASE("large streamed conversions with a ragged tail match the reference for every pair") {
    // Outputs past the streaming threshold whose length is not a multiple of the 32-value
    // loop: the 16-, 8- and partial-8 tails run after the non-temporal stores.
    forEachFast([](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        const int64_t n = (int64_t{9} << 20) / 2 + 16 + 8 + 3;  // 9 MiB of f16 and 27 more values
        auto x = randomValues(n, 77);
        for (DType from : kOutTypes) {
            std::vector<uint8_t> src(static_cast<size_t>(n) * esz(from));
            ref.convert(DType::kF32, x.data(), n, from, src.data());
            for (DType to : kOutTypes) {
                CAPTURE(std::string(dtypeName(from)));
                CAPTURE(std::string(dtypeName(to)));
                LineBuffer a(static_cast<size_t>(n) * esz(to), 0), b(static_cast<size_t>(n) * esz(to), 0);
                ref.convert(from, src.data(), n, to, a.p);
                k.convert(from, src.data(), n, to, b.p);
                CHECK(b.same(a));
            }
        }
    });
}

TEST_CASE("4-bit dequantization matches the reference on every byte value and odd absmax") {
    forEachFast([](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        // All 256 byte values in each of several blocks, with absmax values that stress
        // rounding: subnormal, huge (products overflow in f16 and bf16), negative, NaN, Inf.
        const float absmaxes[] = {1.0f, 3.3e-39f, 6.0e4f, 3.0e38f, -2.5f, 0.0f,
                                  std::numeric_limits<float>::quiet_NaN(),
                                  std::numeric_limits<float>::infinity(), 1.2345678e-5f};
        const int bs = 512;  // 256 bytes per block
        std::vector<uint8_t> packed(256 * std::size(absmaxes));
        for (size_t i = 0; i < packed.size(); ++i) packed[i] = static_cast<uint8_t>(i);
        const int64_t n = static_cast<int64_t>(packed.size()) * 2;
        for (Codebook4 cb : {Codebook4::kNf4, Codebook4::kFp4}) {
            for (DType t : kOutTypes) {
                std::vector<uint8_t> a(static_cast<size_t>(n) * esz(t)), b(a.size());
                ref.dequantize4bit(cb, packed.data(), absmaxes, n, bs, t, a.data());
                k.dequantize4bit(cb, packed.data(), absmaxes, n, bs, t, b.data());
                CHECK(firstDiff(a.data(), b.data(), static_cast<size_t>(n), esz(t)) == -1);
            }
        }
    });
}

TEST_CASE("Q4_0 quantization and dequantization match the reference") {
    forEachFast([](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        for (int64_t nblocks : {int64_t{1}, int64_t{9}, int64_t{25}, int64_t{4099}}) {
            const int64_t n = nblocks * kQk4_0;
            auto x = mixedValues(n, kQk4_0, static_cast<uint32_t>(nblocks), true);
            if (nblocks == 9 || nblocks == 25) {  // equal magnitudes: the first one decides the sign
                for (int j = 0; j < 32; ++j) x[static_cast<size_t>(j)] = (j % 3 == 0) ? -4.0f : (j % 3 == 1 ? 4.0f : 0.5f * j);
                for (int j = 32; j < 64; ++j) x[static_cast<size_t>(j)] = -0.0f;
            }
            std::vector<block_q4_0> qRef(static_cast<size_t>(nblocks)), qFast(static_cast<size_t>(nblocks));
            ref.quantizeQ4_0(x.data(), nblocks, qRef.data());
            k.quantizeQ4_0(x.data(), nblocks, qFast.data());
            CHECK(firstDiff(qRef.data(), qFast.data(), qRef.size(), sizeof(block_q4_0)) == -1);
            for (DType t : kOutTypes) {
                Skewed src(qRef.size() * sizeof(block_q4_0), 1);
                std::memcpy(src.data(), qRef.data(), qRef.size() * sizeof(block_q4_0));
                std::vector<uint8_t> a(static_cast<size_t>(n) * esz(t)), b(a.size());
                ref.dequantizeQ4_0(qRef.data(), nblocks, t, a.data());
                k.dequantizeQ4_0(reinterpret_cast<const block_q4_0*>(src.data()), nblocks, t, b.data());
                CHECK(firstDiff(a.data(), b.data(), static_cast<size_t>(n), esz(t)) == -1);
            }
        }
    });
}

// k.quantizeQ4_0Bf16 and the reference's against quantizeQ4_0 of the widened values; the source
// one element past an aligned address.
void checkQ4_0Bf16(const CpuKernels& k, const std::vector<uint16_t>& bits) {
    const auto& ref = referenceKernels();
    const int64_t nblocks = static_cast<int64_t>(bits.size()) / kQk4_0;
    std::vector<float> widened(bits.size());
    for (size_t i = 0; i < bits.size(); ++i) widened[i] = bf16ToF32(bits[i]);
    std::vector<uint16_t> src(bits.size() + 1);
    std::copy(bits.begin(), bits.end(), src.begin() + 1);
    std::vector<block_q4_0> want(static_cast<size_t>(nblocks)), got(want.size());
    ref.quantizeQ4_0(widened.data(), nblocks, want.data());
    for (const CpuKernels* impl : {&ref, &k}) {
        if (impl->quantizeQ4_0Bf16 == nullptr) continue;
        CAPTURE(std::string(impl->name));
        std::memset(got.data(), 0xcd, got.size() * sizeof(block_q4_0));
        impl->quantizeQ4_0Bf16(src.data() + 1, nblocks, got.data());
        CHECK(firstDiff(want.data(), got.data(), want.size(), sizeof(block_q4_0)) == -1);
    }
}

TEST_CASE("Q4_0 quantization from bf16 matches quantizeQ4_0 of the widened values") {
    forEachFast([](const CpuKernels& k) {
        for (int64_t nblocks : {int64_t{1}, int64_t{15}, int64_t{16}, int64_t{33}, int64_t{4099}}) {
            CAPTURE(nblocks);
            checkQ4_0Bf16(k, toBf16(mixedValues(nblocks * kQk4_0, kQk4_0, static_cast<uint32_t>(nblocks), true)));
        }
        // every bf16 bit pattern in blocks as they come (NaN, Inf, subnormal, zero blocks), and
        // blocks of equal magnitudes of either sign
        std::vector<uint16_t> all(65536);
        for (uint32_t v = 0; v < 65536; ++v) all[v] = static_cast<uint16_t>(v);
        checkQ4_0Bf16(k, all);
        std::vector<uint16_t> equal;
        for (int b = 0; b < 48; ++b) {
            for (int j = 0; j < kQk4_0; ++j) {
                const bool big = (j * 7 + b) % 5 == 0;
                equal.push_back(big ? ((j + b) % 2 ? 0xc080 : 0x4080) : f32ToBf16(0.01f * static_cast<float>(j)));
            }
        }
        checkQ4_0Bf16(k, equal);
    });
}

TEST_CASE("int8 and int8_dynamic paths match the reference, including row tails") {
    forEachFast([](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        for (auto [rows, cols] : {std::pair<int64_t, int64_t>{9, 96}, {7, 13}, {5, 1}, {3, 200}, {64, 4096}}) {
            CAPTURE(rows);
            CAPTURE(cols);
            auto x = mixedValues(rows * cols, cols, static_cast<uint32_t>(rows * cols), true);
            // ties: row values k + 0.5 with absmax 127.5 / 127
            for (int64_t c = 0; c < cols && rows > 2; ++c) {
                x[static_cast<size_t>(2 * cols + c)] = c == 0 ? 127.5f : static_cast<float>(c % 120) + 0.5f;
            }
            // values beyond the f16 range (LLM.int8 casts to fp16 first)
            if (rows > 3) x[static_cast<size_t>(3 * cols)] = 1e6f;
            for (bool llm : {true, false}) {
                CAPTURE(llm);
                const size_t n = static_cast<size_t>(rows * cols);
                std::vector<int8_t> qRef(n), qFast(n);
                std::vector<float> sRef(static_cast<size_t>(rows)), sFast(static_cast<size_t>(rows));
                (llm ? ref.quantizeInt8 : ref.quantizeInt8Dynamic)(x.data(), rows, cols, qRef.data(), sRef.data());
                (llm ? k.quantizeInt8 : k.quantizeInt8Dynamic)(x.data(), rows, cols, qFast.data(), sFast.data());
                CHECK(firstDiff(sRef.data(), sFast.data(), sRef.size(), 4) == -1);
                CHECK(firstDiff(qRef.data(), qFast.data(), n, 1) == -1);
                for (DType t : kOutTypes) {
                    Skewed a(n * esz(t), 2), b(n * esz(t), 2);
                    ref.dequantizeInt8(llm, qRef.data(), sRef.data(), rows, cols, t, a.data());
                    k.dequantizeInt8(llm, qRef.data(), sRef.data(), rows, cols, t, b.data());
                    CHECK(firstDiff(a.data(), b.data(), n, esz(t)) == -1);
                    CHECK(sameBytes(a.storage.data(), b.storage.data(), a.storage.size()));
                }
            }
        }
    });
}

TEST_CASE("dtype conversion (mode none) matches the reference for every pair") {
    forEachFast([](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        auto x = mixedValues(1037, 64, 5, true);
        // f16 / bf16 rounding ties and overflow
        x[0] = 65520.0f;
        x[1] = 65519.996f;
        x[2] = bitsFloat(0x3f801000);
        x[3] = bitsFloat(0x3f808000);
        x[4] = bitsFloat(0x7fc12345);
        x[5] = bitsFloat(0xff812345);  // signalling NaN pattern
        x[6] = 5.9604645e-08f;         // smallest f16 subnormal
        x[7] = 2.9802322e-08f;         // its half: a tie to 0
        for (DType from : kOutTypes) {
            std::vector<uint8_t> src(x.size() * esz(from));
            ref.convert(DType::kF32, x.data(), static_cast<int64_t>(x.size()), from, src.data());
            for (DType to : kOutTypes) {
                CAPTURE(std::string(dtypeName(from)));
                CAPTURE(std::string(dtypeName(to)));
                Skewed a(x.size() * esz(to), 3), b(x.size() * esz(to), 3);
                ref.convert(from, src.data(), static_cast<int64_t>(x.size()), to, a.data());
                k.convert(from, src.data(), static_cast<int64_t>(x.size()), to, b.data());
                CHECK(firstDiff(a.data(), b.data(), x.size(), esz(to)) == -1);
                CHECK(sameBytes(a.storage.data(), b.storage.data(), a.storage.size()));
            }
        }
    });
}

TEST_CASE("dtype conversion (mode none) matches the reference on every f16 and bf16 bit pattern") {
    // All 65536 patterns of each 16-bit source type, signalling NaNs, subnormals and both
    // infinities included, as stored bits (not produced by a conversion that would quiet them).
    std::vector<uint16_t> all(65536);
    for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
    forEachFast([&](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        for (DType from : {DType::kF16, DType::kBF16}) {
            for (DType to : kOutTypes) {
                CAPTURE(std::string(dtypeName(from)));
                CAPTURE(std::string(dtypeName(to)));
                Skewed a(all.size() * esz(to), 0), b(all.size() * esz(to), 0);
                ref.convert(from, all.data(), static_cast<int64_t>(all.size()), to, a.data());
                k.convert(from, all.data(), static_cast<int64_t>(all.size()), to, b.data());
                CHECK(firstDiff(a.data(), b.data(), all.size(), esz(to)) == -1);
            }
        }
    });
}

TEST_CASE("int8 dequantization matches the reference for every byte value and odd scales") {
    forEachFast([](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        // Rows wide enough (>= 1024) for the per-row bf16 paths: scales whose products have
        // bf16 rounding ties (low 16 bits 0x8000: q = +-1, +-2, ... times such a scale), a
        // plain one, subnormal, tiny, huge (products overflow f16, bf16 and f32), negative,
        // zero, negative zero, NaN, Inf.
        const float scales[] = {bitsFloat(0x3c008000),
                                bitsFloat(0x3b808000),
                                0.0123456f,
                                bitsFloat(0x00012345),
                                1.0e-30f,
                                3.0e38f,
                                7.0e4f,
                                -0.0456f,
                                0.0f,
                                -0.0f,
                                std::numeric_limits<float>::quiet_NaN(),
                                std::numeric_limits<float>::infinity(),
                                bitsFloat(0x3e7f8000),
                                0x1p-102f,
                                1.5e-31f,
                                -3.3e-33f};
        const int64_t rows = static_cast<int64_t>(std::size(scales));
        for (int64_t cols : {int64_t{1024}, int64_t{1056}, int64_t{1031}}) {
            CAPTURE(cols);
            const size_t n = static_cast<size_t>(rows * cols);
            std::vector<int8_t> q(n);
            for (size_t i = 0; i < n; ++i)
                q[i] = static_cast<int8_t>(static_cast<uint8_t>(i * 7 + i / 256));
            for (bool llm : {false, true}) {
                CAPTURE(llm);
                for (DType t : kOutTypes) {
                    CAPTURE(std::string(dtypeName(t)));
                    Skewed a(n * esz(t), 0), b(n * esz(t), 0);
                    ref.dequantizeInt8(llm, q.data(), scales, rows, cols, t, a.data());
                    k.dequantizeInt8(llm, q.data(), scales, rows, cols, t, b.data());
                    CHECK(firstDiff(a.data(), b.data(), n, esz(t)) == -1);
                    CHECK(sameBytes(a.storage.data(), b.storage.data(), a.storage.size()));
                }
            }
        }
    });
}

TEST_CASE("Q4_0 dequantization matches the reference for every f16 scale") {
    forEachFast([](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        // One block per f16 bit pattern (zeros, subnormals, the largest values, Inf, NaN),
        // each with all 16 codes in both nibbles.
        std::vector<block_q4_0> q(65536);
        for (size_t i = 0; i < q.size(); ++i) {
            q[i].d = static_cast<uint16_t>(i);
            for (int j = 0; j < 16; ++j)
                q[i].qs[j] = static_cast<uint8_t>(j | ((15 - j + i) & 15) << 4);
        }
        const int64_t n = static_cast<int64_t>(q.size()) * kQk4_0;
        for (DType t : kOutTypes) {
            CAPTURE(std::string(dtypeName(t)));
            std::vector<uint8_t> a(static_cast<size_t>(n) * esz(t)), b(a.size());
            ref.dequantizeQ4_0(q.data(), static_cast<int64_t>(q.size()), t, a.data());
            k.dequantizeQ4_0(q.data(), static_cast<int64_t>(q.size()), t, b.data());
            CHECK(firstDiff(a.data(), b.data(), static_cast<size_t>(n), esz(t)) == -1);
        }
    });
}

TEST_CASE("Q4_0 quantization matches the reference on subnormal, huge and non-finite blocks") {
    forEachFast([](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        // Blocks whose largest magnitude is m * 2^-149 (d = max / -8 rounds as a subnormal,
        // 1 / d may overflow to Inf), huge, infinite or NaN, in groups of 8 and a tail.
        std::vector<float> x;
        uint32_t seed = 1;
        auto next = [&seed] { return seed = seed * 1664525u + 1013904223u; };
        const float specials[] = {std::numeric_limits<float>::infinity(),
                                  -std::numeric_limits<float>::infinity(),
                                  std::numeric_limits<float>::quiet_NaN(),
                                  3.0e38f,
                                  -3.0e38f,
                                  0.0f,
                                  -0.0f};
        for (int b = 0; b < 8 * 40 + 5; ++b) {
            const int m = 1 + b % 37;  // max magnitude m * 2^-149
            for (int j = 0; j < kQk4_0; ++j) {
                const int v = static_cast<int>(next() >> 16) % (2 * m + 1) - m;
                x.push_back(static_cast<float>(v) * bitsFloat(0x00000001));
            }
            if (b % 11 == 3) x[x.size() - 1 - b % 32] = specials[b % std::size(specials)];
            if (b % 13 == 5) {  // a normal block with a few specials
                for (int j = 0; j < kQk4_0; ++j)
                    x[x.size() - 32 + j] = static_cast<float>(j) - 15.5f;
                x[x.size() - 32 + b % 32] = specials[(b / 13) % std::size(specials)];
            }
        }
        const int64_t nblocks = static_cast<int64_t>(x.size()) / kQk4_0;
        std::vector<block_q4_0> qRef(static_cast<size_t>(nblocks)), qFast(qRef.size());
        ref.quantizeQ4_0(x.data(), nblocks, qRef.data());
        k.quantizeQ4_0(x.data(), nblocks, qFast.data());
        CHECK(firstDiff(qRef.data(), qFast.data(), qRef.size(), sizeof(block_q4_0)) == -1);
    });
}

TEST_CASE("double-quant dequantization matches the definition on every code and odd statistics") {
    // Every 8-bit code in every nested group; map entries, nested absmax values and offsets
    // that stress the two roundings: zero, subnormal, huge (sums overflow), negative, NaN, Inf.
    const float inf = std::numeric_limits<float>::infinity();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    DqStats s;
    s.map = dynamicMap();
    s.map[3] = nan;
    s.map[5] = inf;
    s.map[6] = -inf;
    s.map[7] = 1e-45f;
    s.map[8] = 3.0e38f;
    s.map[9] = -0.0f;
    s.nested = {1.0f, 0.0f, 3.3e-39f, 3.0e38f, inf, nan, 1.2345678e-5f, 0.0370f, -2.0f};
    const int64_t nb = static_cast<int64_t>(s.nested.size()) * kNestedBlocksize - 77;
    s.codes.resize(static_cast<size_t>(nb));
    for (int64_t b = 0; b < nb; ++b) {
        s.codes[static_cast<size_t>(b)] = static_cast<uint8_t>(b * 37 + b / 256);
    }
    for (int bs : {32, 64, 256}) {
        CAPTURE(bs);
        const int64_t n = nb * bs - 3;
        std::vector<uint8_t> packed(static_cast<size_t>((n + 1) / 2));
        for (size_t i = 0; i < packed.size(); ++i)
            packed[i] = static_cast<uint8_t>(i * 13 + i / 251);
        for (float offset : {0.0f, 0.0137f, -1.5f, 1e-40f, 3.0e38f, inf, nan}) {
            CAPTURE(offset);
            s.offset = offset;
            forEachImpl([&](const CpuKernels& k) {
                for (Codebook4 cb : {Codebook4::kNf4, Codebook4::kFp4}) {
                    checkDq(k, cb, packed, s, n, bs, {255, 256, 700, 1023, 1025}, 2);
                }
            });
        }
    }
}

TEST_CASE("large double-quant outputs (streaming stores) match the reference") {
    const int64_t n = (int64_t{9} << 19) - 40;  // 9 MiB of f16, past the threshold; partial tail
    auto x = randomValues(n, 23);
    for (int64_t i = 64 * 300; i < 64 * 301; ++i)
        x[static_cast<size_t>(i)] = 0.0f;  // all-zero block
    std::vector<uint8_t> packed;
    const DqStats s = quantizeDq(Codebook4::kNf4, x, 64, packed);
    const int64_t nb = (n + 63) / 64;
    const auto& ref = referenceKernels();
    forEachFast([&](const CpuKernels& k) {
        for (size_t skew : {size_t{0}, size_t{32}, size_t{2}}) {
            CAPTURE(skew);
            for (DType t : kOutTypes) {
                CAPTURE(std::string(dtypeName(t)));
                const size_t bytes = static_cast<size_t>(n) * esz(t);
                LineBuffer a(bytes, skew), b(bytes, skew);
                ref.dequantize4bitDq(Codebook4::kNf4, packed.data(), s.view(), 0, n, 64, t, a.p);
                k.dequantize4bitDq(Codebook4::kNf4, packed.data(), s.view(), 0, n, 64, t, b.p);
                CHECK(b.same(a));
                // Two halves, as two threads would split it: the second starts mid group.
                const int64_t half = nb / 2 + 17;
                std::memset(b.p, 0, bytes);
                k.dequantize4bitDq(Codebook4::kNf4, packed.data(), s.view(), 0, half * 64, 64, t,
                                   b.p);
                k.dequantize4bitDq(Codebook4::kNf4, packed.data() + half * 32, s.view(), half,
                                   n - half * 64, 64, t,
                                   b.p + half * 64 * static_cast<int64_t>(esz(t)));
                CHECK(b.same(a));
            }
        }
    });
}

TEST_CASE("Q4_0 dequantization matches the reference for short and chunk-edge block counts "
          "with a non-finite scale at each position") {
    forEachFast([](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        // The fast path takes runs of 64 blocks (checked once for NaN / Inf scales; bf16 two
        // blocks a turn) and the rest one block at a time, with the next table built ahead:
        // every count from 1 to 12 and counts around one and two runs, each without and with
        // a NaN, Inf or -Inf scale at each position (at every position for short counts, at
        // run edges and the last block for long ones). Other scales: random finite f16 values,
        // negative ones, zeros and subnormals included.
        const uint16_t specials[] = {0x7e00, 0x7c00, 0xfc00};
        std::mt19937 rng(77);
        std::vector<int64_t> counts;
        for (int64_t c = 1; c <= 12; ++c) counts.push_back(c);
        for (int64_t c : {63, 64, 65, 127, 128, 130, 193}) counts.push_back(c);
        for (int64_t nblocks : counts) {
            std::vector<int64_t> positions;
            if (nblocks <= 12) {
                for (int64_t at = -1; at < nblocks; ++at) positions.push_back(at);
            } else {
                for (int64_t at : {int64_t{-1}, int64_t{0}, int64_t{1}, int64_t{62}, int64_t{63},
                                   int64_t{64}, int64_t{65}, int64_t{129}, nblocks - 1}) {
                    if (at < nblocks) positions.push_back(at);
                }
            }
            for (int64_t at : positions) {
                CAPTURE(nblocks);
                CAPTURE(at);
                std::vector<block_q4_0> q(static_cast<size_t>(nblocks));
                for (int64_t b = 0; b < nblocks; ++b) {
                    auto& blk = q[static_cast<size_t>(b)];
                    blk.d = static_cast<uint16_t>(rng() & 0xfbff);  // finite: exponent < 31
                    if (b % 17 == 5) blk.d = static_cast<uint16_t>(rng() & 0x8000);  // +-0
                    if (b % 13 == 7) blk.d = static_cast<uint16_t>(rng() & 0x83ff);  // subnormal
                    if (b == at) blk.d = specials[static_cast<size_t>(b) % 3];
                    for (int j = 0; j < 16; ++j) blk.qs[j] = static_cast<uint8_t>(rng());
                }
                const int64_t n = nblocks * kQk4_0;
                for (DType t : kOutTypes) {
                    CAPTURE(std::string(dtypeName(t)));
                    Skewed src(q.size() * sizeof(block_q4_0), 3);
                    std::memcpy(src.data(), q.data(), q.size() * sizeof(block_q4_0));
                    const size_t bytes = static_cast<size_t>(n) * esz(t);
                    Skewed a(bytes, 2), b(bytes, 2);
                    ref.dequantizeQ4_0(q.data(), nblocks, t, a.data());
                    k.dequantizeQ4_0(reinterpret_cast<const block_q4_0*>(src.data()), nblocks, t,
                                     b.data());
                    CHECK(firstDiff(a.data(), b.data(), static_cast<size_t>(n), esz(t)) == -1);
                    CHECK(sameBytes(a.storage.data(), b.storage.data(), a.storage.size()));
                }
            }
        }
    });
}

TEST_CASE("f32 -> f16 / bf16 conversion matches the reference around every rounding boundary") {
    // Every combination of the f32 bits that survive each narrowing (sign, exponent and the
    // kept mantissa bits: 2^19 for f16, 2^16 for bf16) with the dropped bits just below, at and
    // above the halfway point, zero and all ones: ties to even, carries into the exponent,
    // overflow to infinity, every subnormal range, signalling and quiet NaNs.
    struct Case {
        DType to;
        int dropped;  // mantissa bits the narrowing drops (13 for f16's normals, 16 for bf16)
    };
    for (const Case c : {Case{DType::kF16, 13}, Case{DType::kBF16, 16}}) {
        CAPTURE(std::string(dtypeName(c.to)));
        const uint32_t half = 1u << (c.dropped - 1), ones = (1u << c.dropped) - 1;
        const uint32_t lows[] = {0, 1, half - 1, half, half + 1, ones};
        std::vector<float> x;
        x.reserve((size_t{1} << (32 - c.dropped)) * std::size(lows));
        for (uint32_t hi = 0; hi < (1u << (32 - c.dropped)); ++hi) {
            for (uint32_t lo : lows) x.push_back(bitsFloat((hi << c.dropped) | lo));
        }
        const int64_t n = static_cast<int64_t>(x.size());
        forEachFast([&](const CpuKernels& k) {
            std::vector<uint16_t> a(x.size()), b(x.size());
            referenceKernels().convert(DType::kF32, x.data(), n, c.to, a.data());
            k.convert(DType::kF32, x.data(), n, c.to, b.data());
            const int64_t at = firstDiff(a.data(), b.data(), x.size(), 2);
            const size_t i = at < 0 ? 0 : static_cast<size_t>(at);
            CAPTURE(floatBits(x[i]));
            CAPTURE(a[i]);
            CAPTURE(b[i]);
            CHECK(at == -1);
        });
    }
}

TEST_CASE("int8 -> bf16: a rounding tie at any single q is honoured, not only at q = 1") {
    // The fast bf16 path rounds half up on rows with no tie, which it detects from a subset
    // of q (tests/kernels: the odd ones). For each q0 here, a scale whose products have a
    // tie at q0 (and so at its multiples by powers of two) but none at q = 1, found by a
    // deterministic search with the reference's own arithmetic; a 1024-wide row holding
    // every byte value must come out as the reference's RNE.
    const auto product = [](bool llm, int q, float sc) {
        const float p = static_cast<float>(q) * sc;  // -ffp-contract=off: two roundings
        return llm ? p * kInt8DequantFactor : p;
    };
    const auto isTie = [](float v) { return (floatBits(v) & 0xffffu) == 0x8000u; };
    forEachFast([&](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        const int64_t cols = 1024;
        std::vector<int8_t> q(static_cast<size_t>(cols));
        for (int64_t i = 0; i < cols; ++i) q[static_cast<size_t>(i)] = static_cast<int8_t>(i);
        for (bool llm : {false, true}) {
            for (int q0 : {3, 5, 7, 96, 127}) {
                CAPTURE(llm);
                CAPTURE(q0);
                float sc = 0.0f;
                for (uint32_t bits = 0x3c123456u; bits < 0x3c123456u + (1u << 24); ++bits) {
                    const float c = bitsFloat(bits);
                    if (isTie(product(llm, q0, c)) && !isTie(product(llm, 1, c))) {
                        sc = c;
                        break;
                    }
                }
                REQUIRE(sc != 0.0f);
                std::vector<uint16_t> a(static_cast<size_t>(cols)), b(static_cast<size_t>(cols));
                ref.dequantizeInt8(llm, q.data(), &sc, 1, cols, DType::kBF16, a.data());
                k.dequantizeInt8(llm, q.data(), &sc, 1, cols, DType::kBF16, b.data());
                CHECK(firstDiff(a.data(), b.data(), static_cast<size_t>(cols), 2) == -1);
            }
        }
    });
}

TEST_CASE("int8 dequantization matches the reference for every row length up to 160") {
    forEachFast([](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        // Rows are expanded 64 values a turn, then 16, then 8 and a partial 8: every length
        // from 1 to 160 covers each combination of the tails. Three rows: a plain scale, one
        // whose products have bf16 rounding ties, a negative one; every byte value occurs.
        const float scales[] = {0.0123456f, bitsFloat(0x3c008000), -0.0456f};
        const int64_t rows = 3;
        for (int64_t cols = 1; cols <= 160; ++cols) {
            CAPTURE(cols);
            const size_t n = static_cast<size_t>(rows * cols);
            std::vector<int8_t> q(n);
            for (size_t i = 0; i < n; ++i) {
                q[i] = static_cast<int8_t>(static_cast<uint8_t>(i * 29 + 128));
            }
            for (bool llm : {false, true}) {
                CAPTURE(llm);
                for (DType t : kOutTypes) {
                    CAPTURE(std::string(dtypeName(t)));
                    Skewed a(n * esz(t), 6), b(n * esz(t), 6);
                    ref.dequantizeInt8(llm, q.data(), scales, rows, cols, t, a.data());
                    k.dequantizeInt8(llm, q.data(), scales, rows, cols, t, b.data());
                    CHECK(firstDiff(a.data(), b.data(), n, esz(t)) == -1);
                    CHECK(sameBytes(a.storage.data(), b.storage.data(), a.storage.size()));
                }
            }
        }
    });
}

TEST_CASE("int8 -> f16 / bf16: rows without -128, and -128 alone at chunk edges, for every kind of "
          "scale") {
    // The AVX-512 VBMI body looks each row up in a table of the outputs for q = 0..127, takes
    // -q as q with the sign bit flipped (a sign that depends on the scale's sign, and on zero
    // scales), and blends in q = -128's output separately, 64 values at a time with an
    // arithmetic tail. So: rows of -127..127 only (the table alone), rows that hold -128 once
    // at a chunk's first or last value or in the tail, and scales of every sign and class,
    // the non-finite ones included (they take the arithmetic body).
    const float scales[] = {0.0123456f,
                            -0.0456f,
                            0.0f,
                            -0.0f,
                            bitsFloat(0x3c008000),        // bf16 ties
                            -bitsFloat(0x3b808000),
                            bitsFloat(0x00012345),        // subnormal products
                            -1.0e-30f,
                            3.0e38f,                      // products overflow f16, bf16, f32
                            -7.0e4f,
                            std::numeric_limits<float>::quiet_NaN(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::infinity()};
    forEachFast([&](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        for (int64_t cols : {int64_t{64}, int64_t{128}, int64_t{200}, int64_t{1024}}) {
            CAPTURE(cols);
            // row r: scale r % 13; rows 0..12 without -128, then the same scales with -128 at
            // value 0, 63, 64 (when the row has it) and the last value
            const int64_t variants = 5;
            const int64_t nScales = static_cast<int64_t>(std::size(scales));
            const int64_t rows = nScales * variants;
            std::vector<float> sc(static_cast<size_t>(rows));
            std::vector<int8_t> q(static_cast<size_t>(rows * cols));
            for (int64_t r = 0; r < rows; ++r) {
                sc[static_cast<size_t>(r)] = scales[r % nScales];
                int8_t* row = q.data() + r * cols;
                for (int64_t c = 0; c < cols; ++c) {
                    row[c] = static_cast<int8_t>((c * 37 + r * 11) % 255 - 127);  // -127..127
                }
                const int64_t at[] = {-1, 0, 63, 64, cols - 1};
                const int64_t where = at[r / nScales];
                if (where >= 0 && where < cols) row[where] = -128;
            }
            for (bool llm : {false, true}) {
                CAPTURE(llm);
                for (DType t : {DType::kF16, DType::kBF16}) {
                    CAPTURE(std::string(dtypeName(t)));
                    const size_t n = q.size();
                    Skewed a(n * 2, 0), b(n * 2, 0);
                    ref.dequantizeInt8(llm, q.data(), sc.data(), rows, cols, t, a.data());
                    k.dequantizeInt8(llm, q.data(), sc.data(), rows, cols, t, b.data());
                    const int64_t d = firstDiff(a.data(), b.data(), n, 2);
                    CAPTURE(d / cols);  // the row
                    CHECK(d == -1);
                    CHECK(sameBytes(a.storage.data(), b.storage.data(), a.storage.size()));
                }
            }
        }
    });
}

TEST_CASE("LLM.int8 dequantization matches the reference for fp16-exact scales and at the "
          "exponent edges of the split-scale path") {
    forEachFast([](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        // Rows of >= 1024 values whose scale has at most 15 significant bits (an SCB from
        // fp16 weights has 11) take the one-rounding path for bf16 outputs: random fp16
        // scales of both signs, 15 and 16 significant bits, and biased exponents 21 / 22
        // and 240 / 241 (the edges where factor * 2^e stays a normal float and q * scale
        // stays finite), next to the general path for the other rows.
        std::vector<float> scales = {bitsFloat(0x3c7ffe00), bitsFloat(0x3c7fff00),
                                     bitsFloat(0x0a800000), bitsFloat(0x0b000000),
                                     bitsFloat(0x8b7ffe00), bitsFloat(0x78000000),
                                     bitsFloat(0x78800000), bitsFloat(0xf8000000),
                                     bitsFloat(0x3f800000), bitsFloat(0x00800000)};
        std::mt19937 rng(99);
        for (int i = 0; i < 22; ++i) {
            const uint16_t h = static_cast<uint16_t>(rng() & 0xffff);
            if ((h & 0x7c00) == 0x7c00) continue;  // finite fp16 values only
            scales.push_back(f16ToF32(h));
        }
        // 15 significant bits (bit 9 of the significand set) and 16 (bit 8 set): many, since
        // an error in the last significand bit shows in about 1 bf16 value of 128
        for (int i = 0; i < 48; ++i) {
            const uint32_t sign = (rng() & 1u) << 31;
            const uint32_t bit = i % 2 == 0 ? 0x200u : 0x100u;
            scales.push_back(bitsFloat(sign | 0x3c000000u | (rng() & 0x7ffc00u) | bit));
        }
        const int64_t rows = static_cast<int64_t>(scales.size());
        for (int64_t cols : {int64_t{1024}, int64_t{1040}, int64_t{1031}}) {
            CAPTURE(cols);
            const size_t n = static_cast<size_t>(rows * cols);
            std::vector<int8_t> q(n);
            for (size_t i = 0; i < n; ++i)
                q[i] = static_cast<int8_t>(static_cast<uint8_t>(i * 11 + i / 256));
            for (DType t : kOutTypes) {
                CAPTURE(std::string(dtypeName(t)));
                Skewed a(n * esz(t), 4), b(n * esz(t), 4);
                ref.dequantizeInt8(true, q.data(), scales.data(), rows, cols, t, a.data());
                k.dequantizeInt8(true, q.data(), scales.data(), rows, cols, t, b.data());
                CHECK(firstDiff(a.data(), b.data(), n, esz(t)) == -1);
                CHECK(sameBytes(a.storage.data(), b.storage.data(), a.storage.size()));
            }
        }
    });
}

TEST_CASE("LLM.int8 -> bf16 matches the reference for every split-scale significand") {
    // A scale with at most 15 significant bits, +-m * 2^e with m in [2^14, 2^15), takes the
    // one-rounding bf16 path, whose tie-free rows are told apart by a table over m. Every m,
    // at three exponents (the ends of the path's range and one between) and both signs, in
    // rows of every byte value, must round as the reference does.
    forEachFast([](const CpuKernels& k) {
        const auto& ref = referenceKernels();
        constexpr int64_t kM = int64_t{1} << 14;
        constexpr int64_t cols = 256;
        std::vector<int8_t> q(static_cast<size_t>(kM * cols));
        for (size_t i = 0; i < q.size(); ++i) {
            q[i] = static_cast<int8_t>(static_cast<uint8_t>(i * 29 + i / 256));
        }
        for (uint32_t biasedExp : {22u, 120u, 240u}) {
            CAPTURE(biasedExp);
            std::vector<float> scales(static_cast<size_t>(kM));
            for (int64_t m = 0; m < kM; ++m) {
                const uint32_t sign = (m % 3 == 0) ? 0x80000000u : 0u;
                scales[static_cast<size_t>(m)] =
                    bitsFloat(sign | (biasedExp << 23) | (static_cast<uint32_t>(m) << 9));
            }
            std::vector<uint16_t> a(q.size()), b(q.size());
            ref.dequantizeInt8(true, q.data(), scales.data(), kM, cols, DType::kBF16, a.data());
            k.dequantizeInt8(true, q.data(), scales.data(), kM, cols, DType::kBF16, b.data());
            const int64_t at = firstDiff(a.data(), b.data(), q.size(), 2);
            CAPTURE(at);
            CHECK(at == -1);
        }
    });
}

TEST_CASE("double quant's 8-bit codes match the reference on every map entry, midpoint and neighbour") {
    float map[256];
    std::memcpy(map, kDynamicMapBits, sizeof map);
    // Inputs around every entry and midpoint (at scale 1), then under other scales; lengths
    // that leave every tail length of the 8- and 16-wide bodies.
    const std::vector<float> x = dynamicMapProbes(map, 5000, 41);
    forEachFast([&](const CpuKernels& k) {
        for (float scale : {1.0f, 0.37f, 3.0f, 1.0f / 0.0123f}) {
            CAPTURE(scale);
            for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{15}, int64_t{17}, static_cast<int64_t>(x.size())}) {
                CAPTURE(n);
                std::vector<uint8_t> want(static_cast<size_t>(n) + 1, 0xEE), got(want.size(), 0xEE);
                referenceKernels().dynamicEncodeN(map, x.data(), scale, n, want.data());
                k.dynamicEncodeN(map, x.data(), scale, n, got.data());
                const int64_t d = firstDiff(got.data(), want.data(), got.size(), 1);
                if (d >= 0) {
                    FAIL_CHECK("first difference at " << d << ": x = " << x[static_cast<size_t>(d)] << ", "
                               << int(got[static_cast<size_t>(d)]) << " vs " << int(want[static_cast<size_t>(d)]));
                }
            }
        }
    });
}

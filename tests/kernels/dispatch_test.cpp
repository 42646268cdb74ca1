// sli::kernels::quantize / dequantize: validation of bad input (each error names the tensor),
// round trips for every mode, part layouts, and thread splitting that does not change a bit.
#include <doctest/doctest.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "engine/core/cpu_features.h"
#include "kernel_test_util.h"
#include "kernels/reference.h"
#include "sli/kernels.h"

using namespace sli;
using namespace sli::kernels;

namespace {

QuantizedTensorInfo makeInfo(QuantizationMode mode, std::vector<int64_t> shape, int bs = 64,
                             bool dq = false) {
    QuantizedTensorInfo info;
    info.name = "model.layers.0.mlp.up_proj.weight";
    info.shape = std::move(shape);
    info.mode = mode;
    info.blocksize = modeIs4bit(mode) ? bs : 0;
    info.doubleQuant = dq;
    info.storedDType = mode == QuantizationMode::kNone ? DType::kF16
                       : (mode == QuantizationMode::kInt8 || mode == QuantizationMode::kInt8Dynamic)
                           ? DType::kI8
                           : DType::kU8;
    return info;
}

bool namesTensor(const Status& s) {
    return s.message().find("model.layers.0.mlp.up_proj.weight") != std::string::npos;
}

std::vector<float> dequantF32(const QuantizedTensor& q, int threads = 1) {
    std::vector<float> out(static_cast<size_t>(q.info.numel()));
    const Status s = dequantize(q.view(), DType::kF32,
                                {reinterpret_cast<uint8_t*>(out.data()), out.size() * 4}, threads);
    REQUIRE(s.isOk());
    return out;
}

}  // namespace

TEST_CASE("activeIsa names one of the implementations") {
    const std::string isa = activeIsa();
    CHECK((isa == "scalar" || isa == "avx2" || isa == "avx512"));
}

TEST_CASE("activeIsa picks avx512 only on a CPU with it and falls back from SLI_ISA=avx512") {
#if defined(__x86_64__) || defined(__i386__)
    const std::string isa = activeIsa();
    const bool has512 = avx512Kernels() && __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512dq");
    const bool has2 = avx2Kernels() && __builtin_cpu_supports("avx2") &&
                      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (!has512) CHECK(isa != "avx512");
    if (!has2) CHECK(isa != "avx2");
    const char* force = std::getenv("SLI_ISA");  // set by the meson test dispatch_isa_avx512
    if (force != nullptr && std::string(force) == "avx512" && !has512) {
        CHECK(isa == (has2 ? "avx2" : "scalar"));
    }
    if (force != nullptr && std::string(force) == "scalar") CHECK(isa == "scalar");
#else
    CHECK(std::string(activeIsa()) == "scalar");
#endif
}

namespace {

// Entries that call the reference and then flip one output bit: what a miscompiled or
// mis-emulated fast path would look like to the self-test.
void flippedDequantizeQ4_0(const block_q4_0* src, int64_t nblocks, DType dst, void* out) {
    referenceKernels().dequantizeQ4_0(src, nblocks, dst, out);
    static_cast<uint8_t*>(out)[nblocks * kQk4_0 - 1] ^= 1;  // the last value's low byte
}
void flippedQuantize4bit(Codebook4 cb, const float* src, int64_t n, int blocksize, uint8_t* packed,
                         float* absmax) {
    referenceKernels().quantize4bit(cb, src, n, blocksize, packed, absmax);
    if (cb == Codebook4::kFp4) packed[n / 4] ^= 0x10;  // only FP4, one nibble mid-tensor
}
void flippedQuantize4bitBf16(Codebook4 cb, const uint16_t* src, int64_t n, int blocksize,
                             uint8_t* packed, float* absmax) {
    referenceKernels().quantize4bitBf16(cb, src, n, blocksize, packed, absmax);
    absmax[n / blocksize / 2] *= 2.0f;  // one block's absmax, mid-tensor
}
void flippedConvert(DType from, const void* src, int64_t n, DType to, void* out) {
    referenceKernels().convert(from, src, n, to, out);
    if (from == DType::kBF16 && to == DType::kF16) static_cast<uint8_t*>(out)[2] ^= 1;
}

}  // namespace

TEST_CASE("the start-up self-test passes every table this build has and names an entry that disagrees") {
    CHECK(selfTestAgainstReference(referenceKernels()).empty());
    for (const CpuKernels* k : testing::fastKernels()) {
        CAPTURE(k->name);
        CHECK(selfTestAgainstReference(*k).empty());
    }
    CpuKernels broken = referenceKernels();
    broken.dequantizeQ4_0 = flippedDequantizeQ4_0;
    CHECK(selfTestAgainstReference(broken) == "dequantizeQ4_0");
    broken = referenceKernels();
    broken.quantize4bit = flippedQuantize4bit;
    CHECK(selfTestAgainstReference(broken) == "quantize4bit");
    broken = referenceKernels();
    broken.convert = flippedConvert;
    CHECK(selfTestAgainstReference(broken) == "convert");
    broken = referenceKernels();
    broken.quantize4bitBf16 = flippedQuantize4bitBf16;
    CHECK(selfTestAgainstReference(broken) == "quantize4bitBf16");
}

TEST_CASE("quantize rejects bad input with an error naming the tensor") {
    std::vector<float> src(64 * 32, 1.0f);
    SUBCASE("a source of the wrong length") {
        QuantizedTensor q{makeInfo(QuantizationMode::kNf4, {64, 31})};
        const Status s = quantize(src, q);
        CHECK(s.isInvalidArgument());
        CHECK(namesTensor(s));
    }
    SUBCASE("an empty tensor") {
        QuantizedTensor q{makeInfo(QuantizationMode::kNf4, {0, 32})};
        const Status s = quantize({}, q);
        CHECK(s.isInvalidArgument());
        CHECK(namesTensor(s));
    }
    SUBCASE("a blocksize that is not a power of two or out of range") {
        for (int bs : {48, 16, 8192, 0, -64}) {
            QuantizedTensor q{makeInfo(QuantizationMode::kFp4, {64, 32}, bs)};
            const Status s = quantize(src, q);
            CHECK(s.isInvalidArgument());
            CHECK(namesTensor(s));
        }
    }
    SUBCASE("int4 rows whose length is not a multiple of 32") {
        QuantizedTensor q{makeInfo(QuantizationMode::kInt4, {32, 64})};
        q.info.shape = {64, 32};
        CHECK(quantize(src, q).isOk());
        q.info.shape = {128, 16};
        const Status s = quantize(src, q);
        CHECK(s.isInvalidArgument());
        CHECK(namesTensor(s));
    }
    SUBCASE("int8 of a one-dimensional tensor") {
        QuantizedTensor q{makeInfo(QuantizationMode::kInt8, {64 * 32})};
        const Status s = quantize(src, q);
        CHECK(s.isInvalidArgument());
        CHECK(namesTensor(s));
    }
    SUBCASE("a stored dtype that does not fit the mode") {
        QuantizedTensor q{makeInfo(QuantizationMode::kNone, {64, 32})};
        q.info.storedDType = DType::kI8;
        CHECK(quantize(src, q).isInvalidArgument());
        QuantizedTensor q8{makeInfo(QuantizationMode::kInt8Dynamic, {64, 32})};
        q8.info.storedDType = DType::kF16;
        CHECK(quantize(src, q8).isInvalidArgument());
    }
}

TEST_CASE("dequantize rejects bad views and outputs with an error naming the tensor") {
    std::vector<float> src = testing::randomValues(64 * 32, 1);
    QuantizedTensor q{makeInfo(QuantizationMode::kNf4, {64, 32})};
    REQUIRE(quantize(src, q).isOk());
    std::vector<uint8_t> out(64 * 32 * 2);
    CHECK(dequantize(q.view(), DType::kF16, out).isOk());
    SUBCASE("an output of the wrong size") {
        const Status s = dequantize(q.view(), DType::kF16, {out.data(), out.size() - 2});
        CHECK(s.isInvalidArgument());
        CHECK(namesTensor(s));
    }
    SUBCASE("an output dtype that is not a compute dtype") {
        const Status s = dequantize(q.view(), DType::kI8, {out.data(), out.size() / 2});
        CHECK(s.isInvalidArgument());
        CHECK(namesTensor(s));
    }
    SUBCASE("a truncated absmax part") {
        QuantizedTensorView v = q.view();
        v.parts[static_cast<int>(QuantPart::kAbsmax)] = v.part(QuantPart::kAbsmax).first(8);
        const Status s = dequantize(v, DType::kF16, out);
        CHECK(s.isCorruption());
        CHECK(namesTensor(s));
    }
    SUBCASE("a truncated payload") {
        QuantizedTensorView v = q.view();
        v.parts[0] = v.part(QuantPart::kPayload).first(100);
        CHECK(dequantize(v, DType::kF16, out).isCorruption());
    }
    SUBCASE("a view without info") {
        QuantizedTensorView v;
        CHECK(dequantize(v, DType::kF16, out).isInvalidArgument());
    }
}

TEST_CASE("every mode round-trips within its quantization error") {
    const std::vector<int64_t> shape = {96, 160};
    const auto src = testing::randomValues(96 * 160, 42, 96 * 160);  // one scale: DQ error stays small
    for (QuantizationMode mode : kAllModes) {
        CAPTURE(std::string(modeName(mode)));
        for (bool dq : {false, true}) {
            if (dq && !modeIs4bit(mode)) continue;
            CAPTURE(dq);
            QuantizedTensor q{makeInfo(mode, shape, 64, dq)};
            REQUIRE(quantize(src, q).isOk());
            CHECK(q.validate().isOk());
            const auto y = dequantF32(q);
            // Error bound relative to the scale the mode uses for each element: the row max
            // for int8 / int8_dynamic / none, the block max for NF4 / FP4 (blocks span rows) and
            // the 32-block max for Q4_0.
            const int64_t n = shape[0] * shape[1];
            const int64_t group = modeIs4bit(mode) ? 64 : mode == QuantizationMode::kInt4 ? 32 : shape[1];
            for (int64_t g = 0; g < n; g += group) {
                float gmax = 0;
                for (int64_t i = g; i < g + group; ++i) gmax = std::max(gmax, std::fabs(src[static_cast<size_t>(i)]));
                const double tol = mode == QuantizationMode::kNone ? 1e-3 * gmax
                                   : (mode == QuantizationMode::kInt8 || mode == QuantizationMode::kInt8Dynamic)
                                       ? gmax / 127.0
                                   : mode == QuantizationMode::kInt4 ? gmax / 8.0 * 1.01
                                                                     : gmax * 0.2;
                for (int64_t i = g; i < g + group; ++i) {
                    const size_t k = static_cast<size_t>(i);
                    if (std::fabs(y[k] - src[k]) > tol) {
                        FAIL_CHECK("element " << i << ": " << src[k] << " -> " << y[k]);
                        break;
                    }
                }
            }
        }
    }
}

TEST_CASE("quantize writes bitsandbytes' parts: quant_map, absmax and the nested parts") {
    const auto src = testing::randomValues(300 * 64, 9);
    QuantizedTensor q{makeInfo(QuantizationMode::kFp4, {300, 64}, 64, true)};
    REQUIRE(quantize(src, q).isOk());
    CHECK(q.info.nestedBlocksize == 256);
    CHECK(q.part(QuantPart::kAbsmax).size() == 300);              // u8 codes
    CHECK(q.part(QuantPart::kNestedAbsmax).size() == 2 * 4);      // ceil(300 / 256) floats
    CHECK(q.part(QuantPart::kNestedQuantMap).size() == 256 * 4);
    CHECK(std::memcmp(q.part(QuantPart::kQuantMap).data(), kFp4QuantMap, 64) == 0);
    for (int i = 0; i < 256; ++i) CHECK(floatBits(q.part(QuantPart::kNestedQuantMap).as<float>()[i]) == kDynamicMapBits[i]);
    // The offset is the mean of the plain absmax.
    QuantizedTensor plain{makeInfo(QuantizationMode::kFp4, {300, 64}, 64, false)};
    REQUIRE(quantize(src, plain).isOk());
    CHECK(std::memcmp(plain.part(QuantPart::kPayload).data(), q.part(QuantPart::kPayload).data(),
                      plain.part(QuantPart::kPayload).size()) == 0);
    CHECK(q.info.nestedOffset == absmaxMean(plain.part(QuantPart::kAbsmax).as<float>(), 300));
}

TEST_CASE("splitting over threads changes no bit") {
    const int64_t rows = 1024, cols = 2048 + 32;  // ~2.1M values: several threads' worth
    const auto src = testing::randomValues(rows * cols, 77);
    for (QuantizationMode mode : kAllModes) {
        for (bool dq : {false, true}) {
            if (dq && !modeIs4bit(mode)) continue;
            CAPTURE(std::string(modeName(mode)));
            CAPTURE(dq);
            QuantizedTensor a{makeInfo(mode, {rows, cols}, 128, dq)};
            QuantizedTensor b{makeInfo(mode, {rows, cols}, 128, dq)};
            REQUIRE(quantize(src, a, 1).isOk());
            REQUIRE(quantize(src, b, 4).isOk());
            for (int p = 0; p < kQuantPartCount; ++p) {
                REQUIRE(a.parts[p].size() == b.parts[p].size());
                if (a.parts[p].size() == 0) continue;  // empty parts have no storage
                CHECK(std::memcmp(a.parts[p].data(), b.parts[p].data(), a.parts[p].size()) == 0);
            }
            for (DType t : {DType::kF16, DType::kBF16, DType::kF32}) {
                std::vector<uint8_t> o1(static_cast<size_t>(rows * cols) * dtypeSize(t)), o4(o1.size());
                REQUIRE(dequantize(a.view(), t, o1, 1).isOk());
                REQUIRE(dequantize(a.view(), t, o4, 0).isOk());
                CHECK(o1 == o4);
            }
        }
    }
}

TEST_CASE("the dispatched path equals the scalar reference on a whole tensor") {
    const auto src = testing::mixedValues(37 * 64 + 33, 64, 5, true);
    QuantizedTensor q{makeInfo(QuantizationMode::kNf4, {static_cast<int64_t>(src.size())}, 64)};
    REQUIRE(quantize(src, q).isOk());
    const int64_t n = static_cast<int64_t>(src.size());
    std::vector<uint8_t> packed(static_cast<size_t>((n + 1) / 2));
    std::vector<float> absmax(static_cast<size_t>((n + 63) / 64));
    referenceKernels().quantize4bit(Codebook4::kNf4, src.data(), n, 64, packed.data(), absmax.data());
    CHECK(std::memcmp(packed.data(), q.part(QuantPart::kPayload).data(), packed.size()) == 0);
    CHECK(std::memcmp(absmax.data(), q.part(QuantPart::kAbsmax).data(), absmax.size() * 4) == 0);
}

TEST_CASE("double-quant dequantization equals the reference definition for any thread count") {
    // 2.1M values with a partial last block: up to 8 threads, split at block boundaries that
    // fall mid nested group.
    const int64_t n = int64_t{2} * 1024 * 1024 + 64 * 3 + 17;
    // Finite (an Inf would make every rebuilt absmax non-finite), with one NaN element.
    auto src = testing::mixedValues(n, 64, 91, false);
    src[1000] = std::nanf("");
    for (int bs : {64, 256}) {
        CAPTURE(bs);
        QuantizedTensor q{makeInfo(QuantizationMode::kNf4, {n}, bs, true)};
        REQUIRE(quantize(src, q).isOk());
        const int64_t nb = (n + bs - 1) / bs;
        std::vector<float> map(256), absmax(static_cast<size_t>(nb));
        std::memcpy(map.data(), q.part(QuantPart::kNestedQuantMap).data(), 256 * 4);
        reconstructAbsmax(q.part(QuantPart::kAbsmax).data(),
                          q.part(QuantPart::kNestedAbsmax).as<float>(), map.data(),
                          q.info.nestedOffset, 0, nb, absmax.data());
        for (DType t : {DType::kF16, DType::kBF16, DType::kF32}) {
            CAPTURE(std::string(dtypeName(t)));
            std::vector<uint8_t> want(static_cast<size_t>(n) * dtypeSize(t));
            referenceKernels().dequantize4bit(Codebook4::kNf4, q.part(QuantPart::kPayload).data(),
                                              absmax.data(), n, bs, t, want.data());
            for (int threads : {1, 2, 3, 7, 8}) {
                CAPTURE(threads);
                std::vector<uint8_t> got(want.size(), 0xcd);
                REQUIRE(dequantize(q.view(), t, got, threads).isOk());
                CHECK(got == want);
            }
        }
    }
}

TEST_CASE("widenToF32 gives convertToF32's bits for every f16 and bf16 pattern, any alignment and thread count") {
    for (DType dt : {DType::kF16, DType::kBF16}) {
        CAPTURE(dtypeName(dt));
        // Every 16-bit pattern (NaN payloads, infinities, subnormals, both zeros), one byte
        // off alignment as a safetensors tensor may be.
        std::vector<uint8_t> src(65536 * 2 + 1);
        for (uint32_t v = 0; v < 65536; ++v) {
            const uint16_t h = static_cast<uint16_t>(v);
            std::memcpy(src.data() + 1 + 2 * v, &h, 2);
        }
        std::vector<float> want(65536), got(65536);
        REQUIRE(convertToF32(dt, src.data() + 1, 65536, want.data()).isOk());
        for (int threads : {1, 2, 3}) {
            CAPTURE(threads);
            std::fill(got.begin(), got.end(), 12345.0f);
            REQUIRE(kernels::widenToF32(dt, src.data() + 1, 65536, got.data(), threads).isOk());
            CHECK(std::memcmp(got.data(), want.data(), got.size() * 4) == 0);
        }
        // Short and odd lengths: nothing written past n.
        for (int64_t n : {1, 7, 63, 64, 65, 1000}) {
            CAPTURE(n);
            std::vector<float> out(static_cast<size_t>(n) + 1, -7.0f);
            REQUIRE(kernels::widenToF32(dt, src.data() + 1, n, out.data()).isOk());
            CHECK(std::memcmp(out.data(), want.data(), static_cast<size_t>(n) * 4) == 0);
            CHECK(out[static_cast<size_t>(n)] == -7.0f);
        }
    }
    // f32 is copied bit for bit; integer dtypes take convertToF32's path; others are refused.
    const float f[3] = {1.5f, -0.0f, std::numeric_limits<float>::quiet_NaN()};
    float out[3];
    REQUIRE(kernels::widenToF32(DType::kF32, f, 3, out).isOk());
    CHECK(std::memcmp(out, f, sizeof f) == 0);
    const int8_t i8[3] = {-128, 0, 127};
    REQUIRE(kernels::widenToF32(DType::kI8, i8, 3, out).isOk());
    CHECK(out[0] == -128.0f);
    CHECK(out[2] == 127.0f);
    CHECK(kernels::widenToF32(DType::kBool, i8, 3, out).isInvalidArgument());
    CHECK(kernels::widenToF32(DType::kF16, nullptr, 0, out).isOk());
}

TEST_CASE("quantize from bf16 / f16 / f64 / unaligned f32 sources equals quantize of the widened values") {
    // Sizes that span several widening chunks (16384 values), end inside a chunk and inside a
    // block; int8 rows longer than a chunk and short ones.
    struct Shape {
        QuantizationMode mode;
        std::vector<int64_t> shape;
        int bs;
        bool dq;
    };
    const std::vector<Shape> shapes{
        {QuantizationMode::kNf4, {3, 16411}, 64, true},   {QuantizationMode::kNf4, {5, 9000}, 4096, false},
        {QuantizationMode::kFp4, {7, 7001}, 128, false},  {QuantizationMode::kFp4, {1, 33}, 32, true},
        {QuantizationMode::kInt4, {9, 6400}, 32, false},  {QuantizationMode::kInt8, {3, 20000}, 0, false},
        {QuantizationMode::kInt8, {100, 96}, 0, false},   {QuantizationMode::kInt8Dynamic, {41, 1003}, 0, false},
        {QuantizationMode::kNone, {2, 17000}, 0, false},
    };
    for (const Shape& sh : shapes) {
        QuantizedTensorInfo info = makeInfo(sh.mode, sh.shape, sh.bs, sh.dq);
        const std::string mode = modeName(sh.mode);
        CAPTURE(mode);
        CAPTURE(info.numel());
        const int64_t n = info.numel();
        const std::vector<float> values = testing::mixedValues(n, 64, 7, /*withNonFinite=*/true);
        for (DType dt : {DType::kBF16, DType::kF16, DType::kF64, DType::kF32})
        for (size_t skew : {size_t{1}, size_t{2}}) {
            const std::string dtype = dtypeName(dt);
            CAPTURE(dtype);
            CAPTURE(skew);
            // The source in dtype dt, `skew` bytes past an aligned address (2: the bf16 source
            // aligned for its own loads, which the AVX-512 4-bit quantizer reads directly).
            std::vector<uint8_t> raw(static_cast<size_t>(n) * dtypeSize(dt) + skew);
            if (!dtypeIsCompute(dt)) {
                std::vector<double> d(values.begin(), values.end());
                std::memcpy(raw.data() + skew, d.data(), d.size() * 8);
            } else {
                REQUIRE(convertFromF32(values.data(), n, dt, raw.data() + skew).isOk());
            }
            std::vector<float> widened(static_cast<size_t>(n));
            REQUIRE(convertToF32(dt, raw.data() + skew, n, widened.data()).isOk());
            QuantizedTensor want;
            want.info = info;
            REQUIRE(quantize(widened, want, 1).isOk());
            for (int threads : {1, 2, 3}) {
                CAPTURE(threads);
                QuantizedTensor got;
                got.info = info;
                REQUIRE(quantize(dt, raw.data() + skew, got, threads).isOk());
                CHECK(testing::sameBytes(&got.info.nestedOffset, &want.info.nestedOffset, sizeof(float)));
                for (int p = 0; p < kQuantPartCount; ++p) {
                    CAPTURE(p);
                    REQUIRE(got.parts[p].size() == want.parts[p].size());
                    CHECK(testing::sameBytes(got.parts[p].data(), want.parts[p].data(), want.parts[p].size()));
                }
            }
        }
    }
    QuantizedTensor q;
    q.info = makeInfo(QuantizationMode::kNf4, {4, 64});
    const Status s = quantize(DType::kBF16, nullptr, q);
    CHECK(s.isInvalidArgument());
    CHECK(namesTensor(s));
}

TEST_CASE("threads = 0 means the CPUs in the affinity mask, not all the machine has") {
    cpu_set_t saved;
    CPU_ZERO(&saved);
    REQUIRE(::sched_getaffinity(0, sizeof(saved), &saved) == 0);
    const int available = CPU_COUNT(&saved);
    CHECK(cpu::usableCores() == available);

    // The ranges parallelRanges hands out on a split that wants many threads.
    const auto rangesWithAllCores = [] {
        std::atomic<int> ranges{0};
        parallelRanges(1024, int64_t{1} << 20, 0, [&](int64_t, int64_t) { ++ranges; });
        return ranges.load();
    };
    CHECK(rangesWithAllCores() == std::min(available, 1024));

    // Pinned to one CPU (sched_setaffinity(0, ...) pins the calling thread; threads it starts
    // inherit the mask, and usableCores reads the calling thread's).
    int first = 0;
    while (!CPU_ISSET(first, &saved)) ++first;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    REQUIRE(::sched_setaffinity(0, sizeof(one), &one) == 0);
    const int pinned = cpu::usableCores();
    const int pinnedRanges = rangesWithAllCores();
    REQUIRE(::sched_setaffinity(0, sizeof(saved), &saved) == 0);
    CHECK(pinned == 1);
    CHECK(pinnedRanges == 1);
}

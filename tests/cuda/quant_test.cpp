// GPU quantization (NF4 / FP4 / double quant / LLM.int8) vs a host loop over the same rules
// (byte-identical: both use IEEE reciprocals), and vs the bitsandbytes golden codes with the
// documented CUDA-rule deviations applied (tests/golden/README.md).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/reference.h"
#include "sli/quantizer.h"
#include "tests/cuda/cuda_test_util.h"

namespace sli::cudatest {
namespace {

// Inputs with the hard cases: zero blocks, NaN / inf elements, exact thresholds (block absmax
// 1.0), +-0, tiny and huge magnitudes.
std::vector<float> hardInput(int64_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& v : x) v = nd(rng);
    const float specials[] = {0.0f, -0.0f, 1.0f, -1.0f, bitsFloat(0xbf591cd8u), 0.03979014977812767f,
                              bitsFloat(0x3f5c89dau), 0.29166667f, 0.00260417f, -0.0859375f,
                              1e-30f, -1e-40f, 0.5f, 0.25f};
    for (int64_t i = 0; i < n; ++i) {
        const uint64_t r = rng() % 100;
        if (r < 8) x[i] = specials[rng() % (sizeof specials / sizeof specials[0])];
        else if (r == 8) x[i] = 1e-20f * nd(rng);
    }
    if (n > 200) {
        for (int64_t i = 64; i < 128; ++i) x[i] = 0.0f;  // an all-zero block for bs <= 64
        x[150] = std::numeric_limits<float>::quiet_NaN();
        x[170] = std::numeric_limits<float>::infinity();
    }
    return x;
}

std::vector<uint8_t> asType(const std::vector<float>& x, DType t) {
    std::vector<uint8_t> out(x.size() * dtypeSize(t));
    for (size_t i = 0; i < x.size(); ++i) storeRef(out, t, static_cast<int64_t>(i), x[i]);
    return out;
}
std::vector<float> widened(const std::vector<uint8_t>& b, DType t) {
    std::vector<float> x(b.size() / dtypeSize(t));
    for (size_t i = 0; i < x.size(); ++i) {
        x[i] = t == DType::kF32 ? loadF32(b.data(), static_cast<int64_t>(i))
               : t == DType::kF16 ? f16ToF32(loadU16(b.data(), static_cast<int64_t>(i)))
                                  : bf16ToF32(loadU16(b.data(), static_cast<int64_t>(i)));
    }
    return x;
}

template <typename T>
std::vector<T> download(const gpu::DeviceBuffer& d, size_t count) {
    std::vector<T> out(count);
    REQUIRE(gpu::copyAsync(out.data(), d.data(), count * sizeof(T), nullptr).isOk());
    return out;
}
gpu::DeviceBuffer deviceCopy(const void* p, size_t bytes) {
    gpu::DeviceBuffer d = std::move(gpu::DeviceBuffer::allocate(0, bytes).value());
    REQUIRE(gpu::copyAsync(d.data(), p, bytes, nullptr).isOk());
    return d;
}

// GPU 4-bit quantization of `src` bytes of type t.
void gpuQuant4(const std::vector<uint8_t>& src, DType t, int64_t n, int bs, bool fp4,
               std::vector<uint8_t>& packed, std::vector<float>& absmax) {
    gpu::DeviceBuffer dSrc = deviceCopy(src.data(), src.size());
    const int64_t nb = (n + bs - 1) / bs;
    gpu::DeviceBuffer dPacked = std::move(gpu::DeviceBuffer::allocate(0, static_cast<size_t>((n + 1) / 2)).value());
    gpu::DeviceBuffer dAbsmax = std::move(gpu::DeviceBuffer::allocate(0, static_cast<size_t>(nb) * 4).value());
    const Status s = cuda::quantize4bit(dSrc.data(), t, n, bs, fp4, static_cast<uint8_t*>(dPacked.data()),
                                        static_cast<float*>(dAbsmax.data()), nullptr);
    REQUIRE_MESSAGE(s.isOk(), s.toString());
    packed = download<uint8_t>(dPacked, static_cast<size_t>((n + 1) / 2));
    absmax = download<float>(dAbsmax, static_cast<size_t>(nb));
}

bool sameBits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

TEST_CASE("quantizes NF4 and FP4 byte-identically to the host rules for every blocksize and source dtype") {
    for (bool fp4 : {false, true}) {
        for (int bs : {32, 64, 128, 256, 512, 1024, 2048, 4096}) {
            for (int64_t n : {int64_t{1}, int64_t{99}, int64_t{4096 * 3 + 17}, int64_t{65536}}) {
                for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
                    CAPTURE(fp4);
                    CAPTURE(bs);
                    CAPTURE(n);
                    CAPTURE(std::string(dtypeName(t)));
                    const auto src = asType(hardInput(n, static_cast<uint64_t>(n * 31 + bs)), t);
                    std::vector<uint8_t> gotP, wantP;
                    std::vector<float> gotA, wantA;
                    gpuQuant4(src, t, n, bs, fp4, gotP, gotA);
                    refQuant4(widened(src, t), bs, fp4, wantP, wantA);
                    CHECK(sameBits(gotA, wantA));
                    CHECK(firstMismatch(gotP, wantP, 1) == -1);
                }
            }
        }
    }
}

TEST_CASE("quantizes LLM.int8 weights byte-identically to the host rules") {
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{64, 96}, {7, 1000}, {3, 1}, {1, 4099}}) {
        for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
            auto x = hardInput(rows * cols, static_cast<uint64_t>(rows * 7 + cols));
            for (auto& v : x) v *= 300.0f;  // some rows overflow fp16 (inf after the cast)
            if (rows > 2) std::fill(x.begin() + cols, x.begin() + 2 * cols, 0.0f);  // a zero row
            const auto src = asType(x, t);
            gpu::DeviceBuffer dSrc = deviceCopy(src.data(), src.size());
            gpu::DeviceBuffer dCb = std::move(gpu::DeviceBuffer::allocate(0, static_cast<size_t>(rows * cols)).value());
            gpu::DeviceBuffer dScb = std::move(gpu::DeviceBuffer::allocate(0, static_cast<size_t>(rows) * 4).value());
            REQUIRE(cuda::quantizeInt8(dSrc.data(), t, rows, cols, static_cast<int8_t*>(dCb.data()),
                                       static_cast<float*>(dScb.data()), nullptr).isOk());
            std::vector<uint8_t> wantCb;
            std::vector<float> wantScb;
            refQuantInt8(widened(src, t), rows, cols, wantCb, wantScb);
            CAPTURE(rows);
            CAPTURE(cols);
            CHECK(sameBits(download<float>(dScb, static_cast<size_t>(rows)), wantScb));
            CHECK(firstMismatch(download<uint8_t>(dCb, static_cast<size_t>(rows * cols)), wantCb, 1) == -1);
        }
    }
}

TEST_CASE("quantizes a double-quant absmax vector byte-identically to the host rules") {
    auto g = readGolden("dynamic_map");
    REQUIRE(g.count("dynamic_map"));
    const float* map = reinterpret_cast<const float*>(g["dynamic_map"].data.data());
    for (int64_t nb : {int64_t{1}, int64_t{255}, int64_t{272}, int64_t{5000}}) {
        std::mt19937_64 rng(static_cast<uint64_t>(nb));
        std::uniform_real_distribution<float> ud(0.0f, 4.0f);
        std::vector<float> a(static_cast<size_t>(nb));
        for (auto& v : a) v = ud(rng);
        if (nb > 10) a[3] = 0.0f;
        const float offset = kernels::absmaxMean(a.data(), nb);
        gpu::DeviceBuffer dA = deviceCopy(a.data(), a.size() * 4);
        gpu::DeviceBuffer dMap = deviceCopy(map, 256 * 4);
        gpu::DeviceBuffer dCodes = std::move(gpu::DeviceBuffer::allocate(0, a.size()).value());
        gpu::DeviceBuffer dN = std::move(gpu::DeviceBuffer::allocate(0, static_cast<size_t>((nb + 255) / 256) * 4).value());
        REQUIRE(cuda::quantizeNested(static_cast<const float*>(dA.data()), nb, offset,
                                     static_cast<const float*>(dMap.data()), static_cast<uint8_t*>(dCodes.data()),
                                     static_cast<float*>(dN.data()), nullptr).isOk());
        std::vector<uint8_t> wantCodes;
        std::vector<float> wantN;
        refQuantNested(a, offset, map, wantCodes, wantN);
        CAPTURE(nb);
        CHECK(firstMismatch(download<uint8_t>(dCodes, a.size()), wantCodes, 1) == -1);
        CHECK(sameBits(download<float>(dN, wantN.size()), wantN));
    }
}

TEST_CASE("quantizes the bitsandbytes golden inputs to the CUDA-rule codes and exact absmax") {
    for (const char* q : {"nf4", "fp4"}) {
        std::vector<std::pair<std::string, int>> stems;
        for (int bs : {32, 64, 128, 256, 1024, 4096}) {
            const std::string big = bs == 1024 ? "_64x96" : bs == 4096 ? "_128x96" : "_32x96";
            stems.push_back({std::string(q) + "_bs" + std::to_string(bs) + big + "_f32", bs});
            stems.push_back({std::string(q) + "_bs" + std::to_string(bs) + "_3x33_f32", bs});
        }
        stems.push_back({std::string(q) + "_bs64_32x96_f16", 64});
        stems.push_back({std::string(q) + "_bs64_32x96_bf16", 64});
        for (const auto& [stem, bs] : stems) {
            CAPTURE(stem);
            auto g = readGolden(stem);
            REQUIRE(g.count("input"));
            const Json meta = readGoldenJson(stem);
            const GoldenEntry& in = g["input"];
            const DType t = in.dtype == 0 ? DType::kF32 : in.dtype == 1 ? DType::kF16 : DType::kBF16;
            const int64_t n = static_cast<int64_t>(in.data.size() / dtypeSize(t));
            std::vector<uint8_t> packed;
            std::vector<float> absmax;
            gpuQuant4(in.data, t, n, bs, std::string(q) == "fp4", packed, absmax);
            std::vector<uint8_t> got(static_cast<size_t>(n));
            for (int64_t i = 0; i < n; ++i) got[i] = (i & 1) ? (packed[i >> 1] & 15) : (packed[i >> 1] >> 4);
            CHECK(firstMismatch(got, cudaRuleCodes(g["packed"].data, meta, bs, n), 1) == -1);
            // absmax is exact except where bnb clamps an all-zero block.
            const auto* want = reinterpret_cast<const float*>(g["absmax"].data.data());
            for (size_t b = 0; b < absmax.size(); ++b) {
                if (absmax[b] != 0.0f) CHECK(floatBits(absmax[b]) == floatBits(want[b]));
            }
        }
    }
}

TEST_CASE("quantizes the LLM.int8 golden weights to bitsandbytes' CB and SCB exactly") {
    auto g = readGolden("int8_vectorwise_64x96_f16");
    REQUIRE(g.count("input_f16"));
    const int64_t rows = g["CB"].dims[0], cols = g["CB"].dims[1];
    gpu::DeviceBuffer dSrc = deviceCopy(g["input_f16"].data.data(), g["input_f16"].data.size());
    gpu::DeviceBuffer dCb = std::move(gpu::DeviceBuffer::allocate(0, static_cast<size_t>(rows * cols)).value());
    gpu::DeviceBuffer dScb = std::move(gpu::DeviceBuffer::allocate(0, static_cast<size_t>(rows) * 4).value());
    REQUIRE(cuda::quantizeInt8(dSrc.data(), DType::kF16, rows, cols, static_cast<int8_t*>(dCb.data()),
                               static_cast<float*>(dScb.data()), nullptr).isOk());
    CHECK(firstMismatch(download<uint8_t>(dCb, static_cast<size_t>(rows * cols)), g["CB"].data, 1) == -1);
    const auto scb = download<float>(dScb, static_cast<size_t>(rows));
    CHECK(std::memcmp(scb.data(), g["SCB"].data.data(), scb.size() * 4) == 0);
}

TEST_CASE("quantizes the golden double-quant absmax to bnb's nested codes but the one LUT-approximated block") {
    auto g = readGolden("nf4_dq_bs64_136x128_f32");
    REQUIRE(g.count("absmax_prenest_f32"));
    const auto& pre = g["absmax_prenest_f32"].data;
    const int64_t nb = static_cast<int64_t>(pre.size() / 4);
    const float offset = loadF32(g["nested_offset"].data.data(), 0);  // bnb's, injected
    gpu::DeviceBuffer dA = deviceCopy(pre.data(), pre.size());
    gpu::DeviceBuffer dMap = deviceCopy(g["nested_quant_map"].data.data(), 1024);
    gpu::DeviceBuffer dCodes = std::move(gpu::DeviceBuffer::allocate(0, static_cast<size_t>(nb)).value());
    gpu::DeviceBuffer dN = std::move(gpu::DeviceBuffer::allocate(0, 16).value());
    REQUIRE(cuda::quantizeNested(static_cast<const float*>(dA.data()), nb, offset,
                                 static_cast<const float*>(dMap.data()), static_cast<uint8_t*>(dCodes.data()),
                                 static_cast<float*>(dN.data()), nullptr).isOk());
    auto want = g["absmax_u8"].data;
    const Json meta = readGoldenJson("nf4_dq_bs64_136x128_f32");
    for (const Json& m : meta.find("nested_cuda_rule_code_mismatches")->find("mismatches")->asArray()) {
        want[*m.find("block")->asInt64()] = static_cast<uint8_t>(*m.find("cuda_rule")->asInt64());
    }
    CHECK(firstMismatch(download<uint8_t>(dCodes, static_cast<size_t>(nb)), want, 1) == -1);
    const auto nabs = download<float>(dN, g["nested_absmax"].data.size() / 4);
    CHECK(std::memcmp(nabs.data(), g["nested_absmax"].data.data(), nabs.size() * 4) == 0);
}

TEST_CASE("quantizeOnDevice round-trips through the device dequantizer") {
    QuantizedTensor t;
    t.info.name = "w";
    t.info.shape = {48, 80};
    t.info.mode = QuantizationMode::kNf4;
    t.info.blocksize = 64;
    t.info.doubleQuant = true;
    auto x = hardInput(48 * 80, 5);
    // Finite input: one NaN or inf makes the nested offset (the mean absmax) non-finite and
    // every value NaN, which would leave nothing to compare.
    for (float& v : x) {
        if (!rules::isFinite(v)) v = 0.5f;
    }
    const Status s = cuda::quantizeOnDevice(x, t, 0);
    REQUIRE_MESSAGE(s.isOk(), s.toString());
    CHECK(t.validate().isOk());
    DeviceTensor d = upload(t, 0);
    const auto got = deviceDequantize(d.view, DType::kF32);
    CHECK(firstMismatchNanAware(got, referenceDequantize(t.view(), DType::kF32), DType::kF32) == -1);
    QuantizedTensor bad;
    bad.info.name = "q4";
    bad.info.shape = {32, 32};
    bad.info.mode = QuantizationMode::kInt4;
    CHECK(cuda::quantizeOnDevice(std::vector<float>(1024, 1.0f), bad, 0).isNotSupported());
}

TEST_CASE("LayerQuantizer::setDevice quantizes to the CPU quantizer's bytes (sli quantize --device)") {
    struct Case {
        QuantizationConfig config;
        std::vector<int64_t> shape;
        DType source;
    };
    std::vector<Case> cases;
    for (bool dq : {false, true}) {
        QuantizationConfig nf4 = getNf4Config();
        nf4.doubleQuant = dq;
        cases.push_back({nf4, {96, 130}, DType::kBF16});
        QuantizationConfig fp4 = getFp4Config();
        fp4.doubleQuant = dq;
        fp4.blocksize = 128;
        cases.push_back({fp4, {33, 77}, DType::kF32});
    }
    cases.push_back({getInt8Config(), {64, 200}, DType::kF16});
    cases.push_back({getInt8Config(), {7, 1000}, DType::kF32});
    uint64_t seed = 40;
    for (const Case& c : cases) {
        CAPTURE(std::string(modeName(c.config.mode)));
        CAPTURE(c.config.doubleQuant);
        CAPTURE(shapeToString(c.shape));
        const int64_t n = c.shape[0] * c.shape[1];
        auto x = hardInput(n, seed++);
        // Finite: a NaN would make the double-quant offset NaN and every nested code alike
        // (the kernel-level cases above cover non-finite input byte for byte).
        for (float& v : x) {
            if (!rules::isFinite(v)) v = 2.5f;
        }
        const auto bytes = asType(x, c.source);
        const TensorView view{"w", c.shape, c.source, bytes.data(), bytes.size()};
        LayerQuantizer cpu(c.config, 1);
        LayerQuantizer gpu(c.config, 1);
        gpu.setDevice(0);
        auto want = cpu.quantizeTensor(view, "model.layers.0.w");
        auto got = gpu.quantizeTensor(view, "model.layers.0.w");
        REQUIRE_MESSAGE(want.isOk(), want.status().toString());
        REQUIRE_MESSAGE(got.isOk(), got.status().toString());
        CHECK(got->info.mode == c.config.mode);
        CHECK(got->info.storedDType == want->info.storedDType);
        CHECK(floatBits(got->info.nestedOffset) == floatBits(want->info.nestedOffset));
        for (int p = 0; p < kQuantPartCount; ++p) {
            CAPTURE(quantPartName(static_cast<QuantPart>(p)));
            const auto& g = got->parts[static_cast<size_t>(p)];
            const auto& w = want->parts[static_cast<size_t>(p)];
            REQUIRE(g.size() == w.size());
            CHECK((g.size() == 0 || std::memcmp(g.data(), w.data(), g.size()) == 0));
        }
    }
    // A device that does not exist fails the tensor with an error naming it.
    LayerQuantizer absent(getNf4Config(), 1);
    absent.setDevice(99);
    const std::vector<uint8_t> one(64 * 64 * 4, 0);
    const std::vector<int64_t> shape = {64, 64};
    auto r = absent.quantizeTensor(TensorView{"w", shape, DType::kF32, one.data(), one.size()},
                                   "model.layers.0.w");
    CHECK_FALSE(r.isOk());
}

}  // namespace
}  // namespace sli::cudatest

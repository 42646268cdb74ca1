// Device dequantization vs the host reference (same per-element rules) and vs the golden
// vectors produced by bitsandbytes / torch / gguf: bit-identical, every mode and output dtype.
#include <doctest/doctest.h>

#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/test_kernels.h"

namespace sli::cudatest {
namespace {

constexpr DType kOutTypes[] = {DType::kF32, DType::kF16, DType::kBF16};

void checkAgainstReference(const QuantizedTensor& t, size_t inMisalign, size_t outMisalign) {
    DeviceTensor d = upload(t, inMisalign);
    for (DType dst : kOutTypes) {
        CAPTURE(std::string(dtypeName(dst)));
        Status s;
        const size_t w = dtypeSize(dst);  // outputs stay element-aligned (see cuda_kernels.h)
        const auto got = deviceDequantize(d.view, dst, (outMisalign + w - 1) / w * w, &s);
        REQUIRE_MESSAGE(s.isOk(), s.toString());
        const auto want = referenceDequantize(t.view(), dst);
        const int64_t bad = firstMismatchNanAware(got, want, dst);
        CHECK_MESSAGE(bad == -1, "first mismatch with the host rules at element " << bad);
        Status cs;
        const auto cpu = cpuDequantize(t.view(), dst, &cs);
        REQUIRE_MESSAGE(cs.isOk(), cs.toString());
        const int64_t badCpu = firstMismatchNanAware(got, cpu, dst);
        CHECK_MESSAGE(badCpu == -1, "first mismatch with sli::kernels::dequantize at element " << badCpu);
    }
}

struct Case {
    QuantizationMode mode;
    std::vector<int64_t> shape;
    int blocksize;
    bool doubleQuant;
    DType stored;
};

std::vector<Case> allCases() {
    std::vector<Case> cases;
    for (auto mode : {QuantizationMode::kNf4, QuantizationMode::kFp4}) {
        for (int bs : {32, 64, 128, 256, 512, 1024, 2048, 4096}) {
            for (bool dq : {false, true}) {
                cases.push_back({mode, {96, 160}, bs, dq, DType::kU8});   // vector path, no tail
                cases.push_back({mode, {37, 123}, bs, dq, DType::kU8});   // odd n, partial block
            }
        }
        cases.push_back({mode, {1, 1}, 64, false, DType::kU8});
        cases.push_back({mode, {300, 1000}, 64, true, DType::kU8});  // > 256 nested blocks
    }
    for (auto mode : {QuantizationMode::kInt8, QuantizationMode::kInt8Dynamic}) {
        cases.push_back({mode, {64, 96}, 0, false, DType::kI8});   // rows aligned to 16
        cases.push_back({mode, {29, 33}, 0, false, DType::kI8});   // chunks straddle rows
        cases.push_back({mode, {12, 36}, 0, false, DType::kI8});   // rows aligned for f32 items only
        cases.push_back({mode, {5, 1}, 0, false, DType::kI8});
        cases.push_back({mode, {3, 7, 50}, 0, false, DType::kI8});  // 3-d: rows = shape[0]
    }
    cases.push_back({QuantizationMode::kInt4, {64, 128}, 32, false, DType::kU8});
    cases.push_back({QuantizationMode::kInt4, {7, 96}, 32, false, DType::kU8});  // partial tile
    cases.push_back({QuantizationMode::kInt4, {1100, 64}, 32, false, DType::kU8});  // many tiles
    for (DType stored : {DType::kF32, DType::kF16, DType::kBF16}) {
        cases.push_back({QuantizationMode::kNone, {64, 96}, 0, false, stored});
        cases.push_back({QuantizationMode::kNone, {13, 17}, 0, false, stored});
    }
    return cases;
}

// Random parts include NaN / inf / subnormal scales and NaN payload bits; every element must
// match bit for bit, except that two NaNs match whatever their payloads (see
// firstMismatchNanAware).
TEST_CASE("dequantizes every mode bit-identically to the host rules and the CPU reference") {
    uint64_t seed = 1;
    for (const Case& c : allCases()) {
        const QuantizedTensor t = randomTensor(c.mode, c.shape, c.blocksize, c.doubleQuant, c.stored, seed++);
        const std::string modeStr = modeName(c.mode);
        CAPTURE(modeStr);
        CAPTURE(shapeToString(c.shape));
        CAPTURE(c.blocksize);
        CAPTURE(c.doubleQuant);
        const std::string storedStr = dtypeName(c.stored);
        CAPTURE(storedStr);
        checkAgainstReference(t, 0, 0);
    }
}

TEST_CASE("dequantizes unaligned parts and outputs through the scalar path identically") {
    uint64_t seed = 1000;
    for (const Case& c : allCases()) {
        const QuantizedTensor t = randomTensor(c.mode, c.shape, c.blocksize, c.doubleQuant, c.stored, seed++);
        const std::string modeStr = modeName(c.mode);
        CAPTURE(modeStr);
        CAPTURE(shapeToString(c.shape));
        CAPTURE(c.blocksize);
        checkAgainstReference(t, 1, 0);
        checkAgainstReference(t, 0, 2);
    }
}

TEST_CASE("rejects a view whose parts do not match the metadata") {
    QuantizedTensor t = randomTensor(QuantizationMode::kNf4, {64, 64}, 64, false, DType::kU8, 7);
    DeviceTensor d = upload(t, 0);
    d.view.parts[static_cast<size_t>(QuantPart::kAbsmax)] =
        d.view.parts[static_cast<size_t>(QuantPart::kAbsmax)].first(4);
    gpu::DeviceBuffer out = std::move(gpu::DeviceBuffer::allocate(0, 64 * 64 * 4).value());
    const Status s = cuda::dequantize(d.view, DType::kF32, out.data(), out.size(), nullptr);
    CHECK(s.isCorruption());
    CHECK(s.message().find(t.info.name) != std::string::npos);
}

TEST_CASE("refuses misaligned float parts and outputs instead of faulting on the device") {
    QuantizedTensor t = randomTensor(QuantizationMode::kNf4, {64, 64}, 64, false, DType::kU8, 11);
    DeviceTensor d = upload(t, 0);
    gpu::DeviceBuffer raw = std::move(gpu::DeviceBuffer::allocate(0, 64 * 64 * 4 + 64).value());
    auto* out = static_cast<uint8_t*>(raw.data());
    QuantizedTensorView v = d.view;
    auto& absmax = v.parts[static_cast<size_t>(QuantPart::kAbsmax)];
    std::span<const uint8_t> shifted(absmax.data() + 1, absmax.size());  // same size, odd address
    v.parts[static_cast<size_t>(QuantPart::kAbsmax)] = shifted;
    const Status a = cuda::dequantize(v, DType::kF32, out, 64 * 64 * 4, nullptr);
    CHECK(a.isInvalidArgument());
    CHECK(a.message().find("absmax") != std::string::npos);
    CHECK(cuda::dequantize(d.view, DType::kF32, out + 2, 64 * 64 * 4, nullptr).isInvalidArgument());
    CHECK(cuda::dequantize(d.view, DType::kF16, out + 1, 64 * 64 * 2, nullptr).isInvalidArgument());
    // The context is still usable: an aligned call works and matches the reference.
    Status s;
    const auto got = deviceDequantize(d.view, DType::kF32, 4, &s);
    REQUIRE_MESSAGE(s.isOk(), s.toString());
    CHECK(firstMismatchNanAware(got, referenceDequantize(t.view(), DType::kF32), DType::kF32) == -1);
}

// An event query that answers "not ready" leaves cudaErrorNotReady as the thread's last error;
// the next launch must not report it as its own failure (the engine polls events and then
// submits on the same thread).
TEST_CASE("a pending event query does not fail the next launch") {
    QuantizedTensor t = randomTensor(QuantizationMode::kInt8, {16, 32}, 0, false, DType::kI8, 12);
    DeviceTensor d = upload(t, 0);
    auto s = gpu::CudaStream::create(0);
    auto e = gpu::CudaEvent::create(0);
    REQUIRE((s.isOk() && e.isOk()));
    launchSpin(s->handle(), 50'000'000);  // 50 ms
    REQUIRE(e->record(s->handle()).isOk());
    auto q = e->query();
    REQUIRE(q.isOk());
    CHECK_FALSE(*q);
    gpu::DeviceBuffer out = std::move(gpu::DeviceBuffer::allocate(0, 16 * 32 * 4).value());
    const Status st = cuda::dequantize(d.view, DType::kF32, out.data(), out.size(), s->handle());
    CHECK_MESSAGE(st.isOk(), st.toString());
    REQUIRE(s->synchronize().isOk());
}

TEST_CASE("rejects an output that is too small or of a non-compute dtype") {
    QuantizedTensor t = randomTensor(QuantizationMode::kInt8, {8, 16}, 0, false, DType::kI8, 8);
    DeviceTensor d = upload(t, 0);
    gpu::DeviceBuffer out = std::move(gpu::DeviceBuffer::allocate(0, 8 * 16 * 4).value());
    CHECK(cuda::dequantize(d.view, DType::kF32, out.data(), 8 * 16 * 4 - 1, nullptr).isInvalidArgument());
    CHECK(cuda::dequantize(d.view, DType::kI32, out.data(), out.size(), nullptr).isInvalidArgument());
    CHECK(cuda::dequantize(d.view, DType::kF32, out.data(), out.size(), nullptr).isOk());
}

// ---- golden vectors -------------------------------------------------------------------------

// bnb's 3x33 files went through the torch default backend, which decodes FP4 code 1000 as +0.0
// (its quant_map) where CUDA and the CPU kernels give -0.0: compare those by value.
bool sameValue(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b, size_t i, DType dst) {
    const size_t w = dtypeSize(dst);
    if (std::memcmp(a.data() + i * w, b.data() + i * w, w) == 0) return true;
    auto widen = [&](const std::vector<uint8_t>& v) {
        return dst == DType::kF32 ? loadF32(v.data(), static_cast<int64_t>(i))
               : dst == DType::kF16 ? f16ToF32(loadU16(v.data(), static_cast<int64_t>(i)))
                                    : bf16ToF32(loadU16(v.data(), static_cast<int64_t>(i)));
    };
    return widen(a) == widen(b);  // +0 == -0
}

void checkGolden4bit(const std::string& stem, QuantizationMode mode, int bs, bool byValueOk) {
    auto g = readGolden(stem);
    REQUIRE_MESSAGE(g.count("packed"), "golden file " << stem << " missing or unreadable");
    const Json meta = readGoldenJson(stem);
    QuantizedTensor t;
    t.info.name = stem;
    for (const Json& d : meta.find("shape")->asArray()) t.info.shape.push_back(*d.asInt64());
    t.info.mode = mode;
    t.info.storedDType = DType::kU8;
    t.info.blocksize = bs;
    t.part(QuantPart::kPayload) = bufferOf(g["packed"].data);
    t.part(QuantPart::kQuantMap) = bufferOf(g["quant_map"].data);
    if (g.count("nested_absmax")) {
        t.info.doubleQuant = true;
        t.info.nestedBlocksize = 256;
        t.info.nestedOffset = loadF32(g["nested_offset"].data.data(), 0);
        t.part(QuantPart::kAbsmax) = bufferOf(g["absmax_u8"].data);
        t.part(QuantPart::kNestedAbsmax) = bufferOf(g["nested_absmax"].data);
        t.part(QuantPart::kNestedQuantMap) = bufferOf(g["nested_quant_map"].data);
    } else {
        t.part(QuantPart::kAbsmax) = bufferOf(g["absmax"].data);
    }
    REQUIRE(t.validate().isOk());
    DeviceTensor d = upload(t, 0);
    const std::pair<DType, const char*> outs[] = {
        {DType::kF32, "dequant_f32"}, {DType::kF16, "dequant_f16"}, {DType::kBF16, "dequant_bf16"}};
    for (auto [dst, key] : outs) {
        CAPTURE(key);
        Status s;
        const auto got = deviceDequantize(d.view, dst, 0, &s);
        REQUIRE(s.isOk());
        const auto& want = g[key].data;
        REQUIRE(got.size() == want.size());
        if (!byValueOk) {
            CHECK(firstMismatch(got, want, dtypeSize(dst)) == -1);
        } else {
            int64_t bad = -1;
            for (size_t i = 0; i < got.size() / dtypeSize(dst) && bad < 0; ++i) {
                if (!sameValue(got, want, i, dst)) bad = static_cast<int64_t>(i);
            }
            CHECK_MESSAGE(bad == -1, "first value mismatch at " << bad);
        }
    }
}

TEST_CASE("dequantizes bitsandbytes NF4 / FP4 golden vectors exactly") {
    for (const char* q : {"nf4", "fp4"}) {
        const auto mode = std::string(q) == "nf4" ? QuantizationMode::kNf4 : QuantizationMode::kFp4;
        for (int bs : {32, 64, 128, 256, 1024, 4096}) {
            const std::string big = bs == 1024 ? "_64x96" : bs == 4096 ? "_128x96" : "_32x96";
            const std::string pre = std::string(q) + "_bs" + std::to_string(bs);
            CAPTURE(pre);
            checkGolden4bit(pre + big + "_f32", mode, bs, false);
            checkGolden4bit(pre + "_3x33_f32", mode, bs, mode == QuantizationMode::kFp4);
        }
        checkGolden4bit(std::string(q) + "_bs64_32x96_f16", mode, 64, false);
        checkGolden4bit(std::string(q) + "_bs64_32x96_bf16", mode, 64, false);
    }
    checkGolden4bit("nf4_dq_bs64_136x128_f32", QuantizationMode::kNf4, 64, false);
}

void checkGoldenRowwise(const std::string& stem, QuantizationMode mode, const char* qKey,
                        const char* sKey) {
    auto g = readGolden(stem);
    REQUIRE_MESSAGE(g.count(qKey), "golden file " << stem << " missing or unreadable");
    QuantizedTensor t;
    t.info.name = stem;
    t.info.shape = g[qKey].dims;
    t.info.mode = mode;
    t.info.storedDType = DType::kI8;
    t.part(QuantPart::kPayload) = bufferOf(g[qKey].data);
    t.part(QuantPart::kAbsmax) = bufferOf(g[sKey].data);
    REQUIRE(t.validate().isOk());
    DeviceTensor d = upload(t, 0);
    Status s;
    const auto got = deviceDequantize(d.view, DType::kF32, 0, &s);
    REQUIRE(s.isOk());
    CHECK(firstMismatch(got, g["dequant_f32"].data, 4) == -1);
}

TEST_CASE("dequantizes LLM.int8 and per-channel qint8 golden vectors exactly") {
    checkGoldenRowwise("int8_vectorwise_64x96_f16", QuantizationMode::kInt8, "CB", "SCB");
    checkGoldenRowwise("int8_dynamic_perchannel_64x96_f32", QuantizationMode::kInt8Dynamic,
                       "int_repr", "scales_f32");
}

TEST_CASE("dequantizes gguf Q4_0 golden vectors exactly") {
    auto g = readGolden("gguf_q4_0_64x128_f32");
    REQUIRE(g.count("blocks"));
    QuantizedTensor t;
    t.info.name = "gguf_q4_0";
    t.info.shape = g["dequant_f32"].dims;
    t.info.mode = QuantizationMode::kInt4;
    t.info.storedDType = DType::kU8;
    t.info.blocksize = 32;
    t.part(QuantPart::kPayload) = bufferOf(g["blocks"].data);
    REQUIRE(t.validate().isOk());
    for (size_t mis : {size_t{0}, size_t{2}}) {
        DeviceTensor d = upload(t, mis);
        Status s;
        const auto got = deviceDequantize(d.view, DType::kF32, 0, &s);
        REQUIRE(s.isOk());
        CHECK(firstMismatch(got, g["dequant_f32"].data, 4) == -1);
    }
}

}  // namespace
}  // namespace sli::cudatest

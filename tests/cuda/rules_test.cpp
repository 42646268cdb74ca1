// The per-element rules the CUDA kernels share with their host checks (quant_rules.h),
// checked on the host against the bitsandbytes / torch / gguf golden vectors. Needs no GPU:
// it runs in every build, so the device kernels' arithmetic is validated even where the
// device tests skip.
#include <doctest/doctest.h>

#include "kernels/blocks.h"
#include "tests/cuda/cuda_test_util.h"

namespace sli::cudatest {
namespace {

TEST_CASE("codebooks match the golden quant_map tables") {
    auto nf4 = readGolden("nf4_bs64_32x96_f32");
    auto fp4 = readGolden("fp4_bs64_32x96_f32");
    REQUIRE((nf4.count("quant_map") && fp4.count("quant_map")));
    for (unsigned i = 0; i < 16; ++i) {
        CAPTURE(i);
        CHECK(floatBits(rules::nf4Value(i)) == floatBits(loadF32(nf4["quant_map"].data.data(), i)));
        // bnb's stored FP4 table has +0.0 at index 8; the kernels decode code 8 as -0.0.
        const float want = loadF32(fp4["quant_map"].data.data(), i);
        if (i == 8) {
            CHECK(floatBits(rules::fp4Value(i)) == 0x80000000u);
            CHECK(floatBits(want) == 0u);
        } else {
            CHECK(floatBits(rules::fp4Value(i)) == floatBits(want));
        }
    }
}

TEST_CASE("the canonical dynamic map equals create_dynamic_map()") {
    auto g = readGolden("dynamic_map");
    REQUIRE(g.count("dynamic_map"));
    REQUIRE(g["dynamic_map"].data.size() == 1024);
    CHECK(std::memcmp(g["dynamic_map"].data.data(), kernels::kDynamicMapBits, 1024) == 0);
}

TEST_CASE("encoders put exact thresholds on the lower code and NaN on code 0") {
    CHECK(rules::nf4Encode(0.0f) == 7);
    CHECK(rules::nf4Encode(0.03979014977812767f) == 7);
    CHECK(rules::nf4Encode(std::nextafter(0.03979014977812767f, 1.0f)) == 8);
    CHECK(rules::nf4Encode(bitsFloat(0xbf591cd8u)) == 0);  // exactly the 0/1 midpoint
    CHECK(rules::nf4Encode(bitsFloat(0x3f5c89dau)) == 14);  // exactly the 14/15 midpoint
    CHECK(rules::nf4Encode(1.0f) == 15);
    CHECK(rules::nf4Encode(-1.0f) == 0);
    CHECK(rules::nf4Encode(std::nanf("")) == 0);
    CHECK(rules::fp4Encode(-0.0f) == 0);
    CHECK(rules::fp4Encode(-1.0f) == 11);
    CHECK(rules::fp4Encode(0.29166667f) == 7);  // tie at the CUDA literal: lower magnitude
    CHECK(rules::fp4Encode(std::nanf("")) == 0);
    CHECK(rules::int8Encode(0.0f, rules::int8Scale(0.0f)) == 0);  // zero row: NaN -> 0
    CHECK(rules::int8Encode(-2.5f, 1.0f) == -2);                  // half to even
    CHECK(rules::int8Encode(3.5f, 1.0f) == 4);
}

void checkHostGolden4bit(const std::string& stem, bool fp4, int bs) {
    CAPTURE(stem);
    auto g = readGolden(stem);
    REQUIRE(g.count("packed"));
    const Json meta = readGoldenJson(stem);
    QuantizedTensor t;
    t.info.name = stem;
    for (const Json& d : meta.find("shape")->asArray()) t.info.shape.push_back(*d.asInt64());
    t.info.mode = fp4 ? QuantizationMode::kFp4 : QuantizationMode::kNf4;
    t.info.storedDType = DType::kU8;
    t.info.blocksize = bs;
    t.part(QuantPart::kPayload) = bufferOf(g["packed"].data);
    t.part(QuantPart::kQuantMap) = bufferOf(g["quant_map"].data);
    t.part(QuantPart::kAbsmax) = bufferOf(g["absmax"].data);
    REQUIRE(t.validate().isOk());
    // Dequantization (exact; FP4 code 1000 in the 3x33 files compared by value).
    const bool byValue = fp4 && stem.find("3x33") != std::string::npos;
    const std::pair<DType, const char*> outs[] = {
        {DType::kF32, "dequant_f32"}, {DType::kF16, "dequant_f16"}, {DType::kBF16, "dequant_bf16"}};
    for (auto [dst, key] : outs) {
        const auto got = referenceDequantize(t.view(), dst);
        const auto& want = g[key].data;
        REQUIRE(got.size() == want.size());
        int64_t bad = -1;
        for (size_t i = 0; i < got.size() / dtypeSize(dst) && bad < 0; ++i) {
            const size_t w = dtypeSize(dst);
            if (std::memcmp(got.data() + i * w, want.data() + i * w, w) == 0) continue;
            if (byValue) {
                float a = dst == DType::kF32 ? loadF32(got.data(), static_cast<int64_t>(i))
                          : dst == DType::kF16 ? f16ToF32(loadU16(got.data(), static_cast<int64_t>(i)))
                                               : bf16ToF32(loadU16(got.data(), static_cast<int64_t>(i)));
                float b = dst == DType::kF32 ? loadF32(want.data(), static_cast<int64_t>(i))
                          : dst == DType::kF16 ? f16ToF32(loadU16(want.data(), static_cast<int64_t>(i)))
                                               : bf16ToF32(loadU16(want.data(), static_cast<int64_t>(i)));
                if (a == b) continue;
            }
            bad = static_cast<int64_t>(i);
        }
        CHECK_MESSAGE(bad == -1, key << ": first mismatch at " << bad);
    }
    // Quantization under the CUDA rule (exact reciprocal) vs bnb's codes with the listed
    // deviations applied.
    const GoldenEntry& in = g["input"];
    const DType st = in.dtype == 0 ? DType::kF32 : in.dtype == 1 ? DType::kF16 : DType::kBF16;
    std::vector<float> x(in.data.size() / dtypeSize(st));
    for (size_t i = 0; i < x.size(); ++i) {
        x[i] = st == DType::kF32 ? loadF32(in.data.data(), static_cast<int64_t>(i))
               : st == DType::kF16 ? f16ToF32(loadU16(in.data.data(), static_cast<int64_t>(i)))
                                   : bf16ToF32(loadU16(in.data.data(), static_cast<int64_t>(i)));
    }
    std::vector<uint8_t> packed;
    std::vector<float> absmax;
    refQuant4(x, bs, fp4, packed, absmax);
    const int64_t n = static_cast<int64_t>(x.size());
    std::vector<uint8_t> codes(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) codes[i] = (i & 1) ? (packed[i >> 1] & 15) : (packed[i >> 1] >> 4);
    CHECK(firstMismatch(codes, cudaRuleCodes(g["packed"].data, meta, bs, n), 1) == -1);
}

TEST_CASE("host rules reproduce the NF4 / FP4 golden dequantization and CUDA-rule codes") {
    for (bool fp4 : {false, true}) {
        const std::string q = fp4 ? "fp4" : "nf4";
        for (int bs : {32, 64, 128, 256, 1024, 4096}) {
            const std::string big = bs == 1024 ? "_64x96" : bs == 4096 ? "_128x96" : "_32x96";
            checkHostGolden4bit(q + "_bs" + std::to_string(bs) + big + "_f32", fp4, bs);
            checkHostGolden4bit(q + "_bs" + std::to_string(bs) + "_3x33_f32", fp4, bs);
        }
        checkHostGolden4bit(q + "_bs64_32x96_f16", fp4, 64);
        checkHostGolden4bit(q + "_bs64_32x96_bf16", fp4, 64);
    }
}

TEST_CASE("host rules reproduce the double-quant golden reconstruction and nested codes") {
    auto g = readGolden("nf4_dq_bs64_136x128_f32");
    REQUIRE(g.count("absmax_u8"));
    const float offset = loadF32(g["nested_offset"].data.data(), 0);
    const auto& codes = g["absmax_u8"].data;
    const uint8_t* nqm = g["nested_quant_map"].data.data();
    const uint8_t* nabs = g["nested_absmax"].data.data();
    const uint8_t* rec = g["absmax_reconstructed_f32"].data.data();
    for (size_t b = 0; b < codes.size(); ++b) {
        const float a = rules::nestedAbsmax(loadF32(nqm, codes[b]), loadF32(nabs, static_cast<int64_t>(b >> 8)), offset);
        CHECK(floatBits(a) == floatBits(loadF32(rec, static_cast<int64_t>(b))));
    }
    std::vector<float> pre(g["absmax_prenest_f32"].data.size() / 4);
    std::memcpy(pre.data(), g["absmax_prenest_f32"].data.data(), pre.size() * 4);
    std::vector<uint8_t> gotCodes;
    std::vector<float> gotN;
    refQuantNested(pre, offset, reinterpret_cast<const float*>(nqm), gotCodes, gotN);
    auto want = codes;
    const Json meta = readGoldenJson("nf4_dq_bs64_136x128_f32");
    for (const Json& m : meta.find("nested_cuda_rule_code_mismatches")->find("mismatches")->asArray()) {
        want[*m.find("block")->asInt64()] = static_cast<uint8_t>(*m.find("cuda_rule")->asInt64());
    }
    CHECK(firstMismatch(gotCodes, want, 1) == -1);
    CHECK(std::memcmp(gotN.data(), nabs, gotN.size() * 4) == 0);
}

TEST_CASE("host rules reproduce LLM.int8, per-channel qint8 and Q4_0 golden dequantization") {
    auto i8 = readGolden("int8_vectorwise_64x96_f16");
    auto dyn = readGolden("int8_dynamic_perchannel_64x96_f32");
    auto q4 = readGolden("gguf_q4_0_64x128_f32");
    REQUIRE((i8.count("CB") && dyn.count("int_repr") && q4.count("blocks")));
    auto make = [](QuantizationMode m, std::vector<int64_t> shape, const std::vector<uint8_t>& pay,
                   const std::vector<uint8_t>* scale) {
        QuantizedTensor t;
        t.info.name = "golden";
        t.info.shape = std::move(shape);
        t.info.mode = m;
        t.info.storedDType = m == QuantizationMode::kInt4 ? DType::kU8 : DType::kI8;
        t.info.blocksize = m == QuantizationMode::kInt4 ? 32 : 0;
        t.part(QuantPart::kPayload) = bufferOf(pay);
        if (scale) t.part(QuantPart::kAbsmax) = bufferOf(*scale);
        return t;
    };
    const auto t1 = make(QuantizationMode::kInt8, i8["CB"].dims, i8["CB"].data, &i8["SCB"].data);
    const auto t2 = make(QuantizationMode::kInt8Dynamic, dyn["int_repr"].dims, dyn["int_repr"].data,
                         &dyn["scales_f32"].data);
    const auto t3 = make(QuantizationMode::kInt4, q4["dequant_f32"].dims, q4["blocks"].data, nullptr);
    REQUIRE((t1.validate().isOk() && t2.validate().isOk() && t3.validate().isOk()));
    CHECK(firstMismatch(referenceDequantize(t1.view(), DType::kF32), i8["dequant_f32"].data, 4) == -1);
    CHECK(firstMismatch(referenceDequantize(t2.view(), DType::kF32), dyn["dequant_f32"].data, 4) == -1);
    CHECK(firstMismatch(referenceDequantize(t3.view(), DType::kF32), q4["dequant_f32"].data, 4) == -1);
    // LLM.int8 quantization from the fp16 weights.
    std::vector<float> w(i8["input_f16"].data.size() / 2);
    for (size_t i = 0; i < w.size(); ++i) w[i] = f16ToF32(loadU16(i8["input_f16"].data.data(), static_cast<int64_t>(i)));
    std::vector<uint8_t> cb;
    std::vector<float> scb;
    refQuantInt8(w, i8["CB"].dims[0], i8["CB"].dims[1], cb, scb);
    CHECK(firstMismatch(cb, i8["CB"].data, 1) == -1);
    CHECK(std::memcmp(scb.data(), i8["SCB"].data.data(), scb.size() * 4) == 0);
}

TEST_CASE("host rules equal sli::kernels::dequantize on random parts with special values") {
    struct Case {
        QuantizationMode mode;
        std::vector<int64_t> shape;
        int bs;
        bool dq;
        DType stored;
    };
    std::vector<Case> cases;
    for (auto m : {QuantizationMode::kNf4, QuantizationMode::kFp4}) {
        for (int bs : {32, 64, 256, 4096}) {
            cases.push_back({m, {37, 123}, bs, false, DType::kU8});
            cases.push_back({m, {300, 100}, bs, true, DType::kU8});
        }
    }
    for (auto m : {QuantizationMode::kInt8, QuantizationMode::kInt8Dynamic}) {
        cases.push_back({m, {29, 33}, 0, false, DType::kI8});
        cases.push_back({m, {3, 7, 50}, 0, false, DType::kI8});
    }
    cases.push_back({QuantizationMode::kInt4, {7, 96}, 32, false, DType::kU8});
    for (DType st : {DType::kF32, DType::kF16, DType::kBF16}) {
        cases.push_back({QuantizationMode::kNone, {13, 17}, 0, false, st});
    }
    uint64_t seed = 500;
    for (const Case& c : cases) {
        const QuantizedTensor t = randomTensor(c.mode, c.shape, c.bs, c.dq, c.stored, seed++);
        const std::string modeStr = modeName(c.mode);
        CAPTURE(modeStr);
        CAPTURE(c.bs);
        CAPTURE(c.dq);
        const std::string storedStr = dtypeName(c.stored);
        CAPTURE(storedStr);
        for (DType dst : {DType::kF32, DType::kF16, DType::kBF16}) {
            const std::string dstStr = dtypeName(dst);
            CAPTURE(dstStr);
            Status s;
            const auto cpu = cpuDequantize(t.view(), dst, &s);
            REQUIRE_MESSAGE(s.isOk(), s.toString());
            CHECK(firstMismatchNanAware(referenceDequantize(t.view(), dst), cpu, dst) == -1);
        }
    }
}

TEST_CASE("host quantization rules equal sli::kernels::quantize for NF4, FP4 and LLM.int8") {
    std::mt19937_64 rng(77);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int64_t n : {int64_t{99}, int64_t{8192 + 33}}) {
        std::vector<float> x(static_cast<size_t>(n));
        for (auto& v : x) v = nd(rng);
        for (int64_t i = 0; i < std::min<int64_t>(n, 64); ++i) x[i] = 0.0f;  // a zero block
        x[70] = bitsFloat(0xbf591cd8u);  // on an NF4 midpoint after scaling by absmax
        for (bool fp4 : {false, true}) {
            for (int bs : {32, 64, 1024}) {
                QuantizedTensor t;
                t.info.name = "q";
                t.info.shape = {n};
                t.info.mode = fp4 ? QuantizationMode::kFp4 : QuantizationMode::kNf4;
                t.info.storedDType = DType::kU8;
                t.info.blocksize = bs;
                t.info.doubleQuant = false;
                const Status s = sli::kernels::quantize(x, t);
                REQUIRE_MESSAGE(s.isOk(), s.toString());
                std::vector<uint8_t> packed;
                std::vector<float> absmax;
                refQuant4(x, bs, fp4, packed, absmax);
                CAPTURE(fp4);
                CAPTURE(bs);
                CHECK(firstMismatch(packed, std::vector<uint8_t>(t.part(QuantPart::kPayload).data(),
                                                                 t.part(QuantPart::kPayload).data() + packed.size()), 1) == -1);
                CHECK(std::memcmp(absmax.data(), t.part(QuantPart::kAbsmax).data(), absmax.size() * 4) == 0);
            }
        }
    }
    const int64_t rows = 9, cols = 77;
    std::vector<float> w(static_cast<size_t>(rows * cols));
    for (auto& v : w) v = nd(rng) * 100.0f;
    std::fill(w.begin(), w.begin() + cols, 0.0f);  // a zero row
    QuantizedTensor t;
    t.info.name = "w8";
    t.info.shape = {rows, cols};
    t.info.mode = QuantizationMode::kInt8;
    t.info.storedDType = DType::kI8;
    const Status s = sli::kernels::quantize(w, t);
    REQUIRE_MESSAGE(s.isOk(), s.toString());
    std::vector<uint8_t> cb;
    std::vector<float> scb;
    refQuantInt8(w, rows, cols, cb, scb);
    CHECK(firstMismatch(cb, std::vector<uint8_t>(t.part(QuantPart::kPayload).data(),
                                                 t.part(QuantPart::kPayload).data() + cb.size()), 1) == -1);
    CHECK(std::memcmp(scb.data(), t.part(QuantPart::kAbsmax).data(), scb.size() * 4) == 0);
}

// The alignment check of cuda::dequantize runs on the host before any launch, so it is
// testable without a GPU: host buffers stand in for device memory (nothing is dereferenced).
TEST_CASE("the device facade refuses misaligned parts and outputs before any launch") {
    QuantizedTensor nf4 = randomTensor(QuantizationMode::kNf4, {64, 64}, 64, false, DType::kU8, 21);
    QuantizedTensor f16 = randomTensor(QuantizationMode::kNone, {8, 8}, 0, false, DType::kF16, 22);
    AlignedBuffer mem = std::move(AlignedBuffer::allocate(64 * 64 * 4 + 64).value());
    uint8_t* out = mem.data();
    QuantizedTensorView badAbsmax = nf4.view();
    const auto& am = nf4.part(QuantPart::kAbsmax);
    AlignedBuffer amCopy = std::move(AlignedBuffer::allocate(am.size() + 1).value());
    badAbsmax.parts[static_cast<size_t>(QuantPart::kAbsmax)] = {amCopy.data() + 1, am.size()};
    QuantizedTensorView badPayload = f16.view();
    const auto& pay = f16.part(QuantPart::kPayload);
    AlignedBuffer payCopy = std::move(AlignedBuffer::allocate(pay.size() + 1).value());
    badPayload.parts[static_cast<size_t>(QuantPart::kPayload)] = {payCopy.data() + 1, pay.size()};
    const Status a = cuda::dequantize(badAbsmax, DType::kF32, out, 64 * 64 * 4, nullptr);
    const Status b = cuda::dequantize(badPayload, DType::kF32, out, 8 * 8 * 4, nullptr);
    const Status c = cuda::dequantize(nf4.view(), DType::kF32, out + 2, 64 * 64 * 4, nullptr);
    const Status d = cuda::dequantize(nf4.view(), DType::kBF16, out + 1, 64 * 64 * 2, nullptr);
    if (!cuda::built()) {  // the stub refuses everything
        CHECK(a.isNotSupported());
        CHECK(c.isNotSupported());
        return;
    }
    CHECK(a.isInvalidArgument());
    CHECK(a.message().find("absmax is not 4-byte aligned") != std::string::npos);
    CHECK(a.message().find(nf4.info.name) != std::string::npos);
    CHECK(b.isInvalidArgument());
    CHECK(b.message().find("payload is not 2-byte aligned") != std::string::npos);
    CHECK(c.isInvalidArgument());
    CHECK(c.message().find("output is not 4-byte aligned") != std::string::npos);
    CHECK(d.isInvalidArgument());
    float* absmax = reinterpret_cast<float*>(out);
    CHECK(cuda::quantize4bit(out + 1, DType::kF32, 64, 64, false, out, absmax, nullptr).isInvalidArgument());
    CHECK(cuda::quantizeInt8(out + 2, DType::kF32, 1, 64, reinterpret_cast<int8_t*>(out), absmax,
                             nullptr).isInvalidArgument());
}

}  // namespace
}  // namespace sli::cudatest

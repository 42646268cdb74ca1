#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "sli/kernels.h"
#include "capture_log.h"
#include "sli/log.h"
#include "sli/quantizer.h"

using namespace sli;

namespace {

std::vector<float> randomValues(size_t n, uint32_t seed, float scale = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = nd(rng);
    return v;
}

Tensor floats(std::string name, std::vector<int64_t> shape, DType dt, const std::vector<float>& v) {
    return Tensor::fromFloats(std::move(name), std::move(shape), dt, v).value();
}

// A small decoder-style layer: two matrices, a bias and a norm.
Layer smallLayer(DType dt = DType::kF16) {
    Layer l("model.layers.0");
    REQUIRE(l.add(floats("self_attn.q_proj.weight", {64, 128}, dt, randomValues(64 * 128, 1, 0.05f))).isOk());
    REQUIRE(l.add(floats("self_attn.q_proj.bias", {64}, dt, randomValues(64, 2))).isOk());
    REQUIRE(l.add(floats("mlp.up_proj.weight", {96, 64}, dt, randomValues(96 * 64, 3, 0.02f))).isOk());
    REQUIRE(l.add(floats("input_layernorm.weight", {128}, dt, randomValues(128, 4))).isOk());
    return l;
}

QuantizationConfig configFor(QuantizationMode m, DType compute = DType::kF16) {
    QuantizationConfig c;
    c.mode = m;
    c.computeDType = compute;
    if (modeIs4bit(m)) c.quantType = modeName(m);
    return c;
}

bool contains(const Status& s, std::string_view what) {
    return s.message().find(what) != std::string::npos;
}

// Largest |original - dequantized| allowed for one element, by mode, from the format alone.
double allowedError(QuantizationMode m, float rowAbsmax) {
    switch (m) {
        case QuantizationMode::kNone: return 0.0;  // checked exactly elsewhere
        case QuantizationMode::kInt8: return rowAbsmax / 127.0 * 0.5 + rowAbsmax * 1e-3;
        case QuantizationMode::kInt8Dynamic: return rowAbsmax / 127.5 * 0.5 + rowAbsmax * 1e-3;
        // Q4_0: d = signed max / -8; the side opposite the max clamps at code 15 (7d).
        case QuantizationMode::kInt4: return rowAbsmax / 8.0 + rowAbsmax * 2e-3;
        // Largest gap between neighbouring NF4 / FP4 codes is under 0.34 of the block absmax.
        case QuantizationMode::kNf4:
        case QuantizationMode::kFp4: return rowAbsmax * 0.17 + rowAbsmax * 2e-3;
    }
    return 0.0;
}

}  // namespace

TEST_CASE("quantizes matrices per mode and keeps biases and norms in the compute dtype") {
    const Layer layer = smallLayer(DType::kF32);
    for (QuantizationMode m : kAllModes) {
        for (DType compute : {DType::kF16, DType::kBF16, DType::kF32}) {
            INFO("mode ", std::string(modeName(m)), " compute ", std::string(dtypeName(compute)));
            LayerQuantizer q(configFor(m, compute));
            auto ql = q.quantizeLayer(layer);
            REQUIRE(ql.isOk());
            CHECK(ql->name == "model.layers.0");
            REQUIRE(ql->tensors.size() == 4);
            const char* names[] = {"self_attn.q_proj.weight", "self_attn.q_proj.bias",
                                   "mlp.up_proj.weight", "input_layernorm.weight"};
            for (size_t i = 0; i < 4; ++i) {
                const QuantizedTensorInfo& info = ql->tensors[i].info;
                CHECK(info.name == names[i]);
                CHECK(info.computeDType == compute);  // also for 4-bit: the dtype dequant produces
                CHECK(info.sourceDType == DType::kF32);
                CHECK(ql->tensors[i].validate().isOk());
            }
            CHECK(ql->tensors[0].info.mode == m);
            CHECK(ql->tensors[2].info.mode == m);
            for (size_t i : {1u, 3u}) {
                CHECK(ql->tensors[i].info.mode == QuantizationMode::kNone);
                CHECK(ql->tensors[i].info.storedDType == compute);
            }
            CHECK(LayerQuantizer::isQuantized(*ql) == (m != QuantizationMode::kNone));
        }
    }
}

TEST_CASE("dequantizes back within each format's rounding error") {
    const Layer layer = smallLayer(DType::kF32);
    for (QuantizationMode m : kAllModes) {
        INFO("mode ", std::string(modeName(m)));
        QuantizationConfig c = configFor(m, DType::kF32);
        auto ql = LayerQuantizer(c).quantizeLayer(layer);
        REQUIRE(ql.isOk());
        auto back = LayerQuantizer::dequantizeLayer(*ql);
        REQUIRE(back.isOk());
        REQUIRE(back->size() == layer.size());
        for (size_t i = 0; i < layer.size(); ++i) {
            const Tensor& a = layer[i];
            const Tensor& b = (*back)[i];
            CHECK(b.name() == a.name());
            CHECK(b.shape() == a.shape());
            CHECK(b.dtype() == DType::kF32);
            const bool matrix = a.shape().size() == 2;
            const int64_t cols = matrix ? a.shape()[1] : a.numel();
            for (int64_t r = 0; r < a.numel() / cols; ++r) {
                float absmax = 0;
                for (int64_t j = 0; j < cols; ++j) absmax = std::max(absmax, std::fabs(a.at(r * cols + j)));
                const double tol = matrix ? allowedError(m, absmax) : 0.0;
                for (int64_t j = 0; j < cols; ++j) {
                    const int64_t k = r * cols + j;
                    if (std::fabs(a.at(k) - b.at(k)) > tol) {
                        FAIL_CHECK(a.name() << "[" << k << "]: " << a.at(k) << " came back as " << b.at(k));
                        break;
                    }
                }
            }
        }
    }
}

TEST_CASE("quantizes from the source values, not from values rounded to the compute dtype") {
    // bf16 keeps 8 mantissa bits: rounding first would move many int8 codes.
    const auto v = randomValues(32 * 64, 11);
    Layer layer("l");
    REQUIRE(layer.add(floats("w", {32, 64}, DType::kF32, v)).isOk());
    for (QuantizationMode m : {QuantizationMode::kInt8, QuantizationMode::kNf4, QuantizationMode::kInt4}) {
        INFO("mode ", std::string(modeName(m)));
        const QuantizationConfig c = configFor(m, DType::kBF16);
        auto ql = LayerQuantizer(c).quantizeLayer(layer);
        REQUIRE(ql.isOk());
        const QuantizedTensor& got = ql->tensors[0];

        QuantizedTensor fromSource, fromRounded;
        fromSource.info = got.info;
        fromRounded.info = got.info;
        std::vector<float> rounded(v.size());
        for (size_t i = 0; i < v.size(); ++i) rounded[i] = bf16ToF32(f32ToBf16(v[i]));
        REQUIRE(kernels::quantize(v, fromSource).isOk());
        REQUIRE(kernels::quantize(rounded, fromRounded).isOk());
        const auto p = got.part(QuantPart::kPayload).bytes();
        const auto ps = fromSource.part(QuantPart::kPayload).bytes();
        const auto pr = fromRounded.part(QuantPart::kPayload).bytes();
        REQUIRE(p.size() == ps.size());
        CHECK(std::memcmp(p.data(), ps.data(), p.size()) == 0);
        CHECK(std::memcmp(p.data(), pr.data(), p.size()) != 0);  // the difference is observable
    }
}

TEST_CASE("a 4-bit tensor records the compute dtype and dequantizes to it by default") {
    QuantizationConfig c = configFor(QuantizationMode::kNf4, DType::kBF16);
    c.doubleQuant = true;
    auto ql = LayerQuantizer(c).quantizeLayer(smallLayer());
    REQUIRE(ql.isOk());
    const QuantizedTensorInfo& info = ql->tensors[0].info;
    CHECK(info.computeDType == DType::kBF16);
    CHECK(info.storedDType == DType::kU8);  // quant_storage, metadata only
    CHECK(info.sourceDType == DType::kF16);
    CHECK(info.blocksize == 64);
    CHECK(info.doubleQuant);
    CHECK(info.nestedBlocksize == 256);
    auto back = dequantizeLayer(*ql);
    REQUIRE(back.isOk());
    for (const Tensor& t : *back) CHECK(t.dtype() == DType::kBF16);
    auto f32 = dequantizeLayer(*ql, DType::kF32);
    REQUIRE(f32.isOk());
    for (const Tensor& t : *f32) CHECK(t.dtype() == DType::kF32);
}

TEST_CASE("llm_int8_skip_modules keeps tensors by simple name, dotted prefix or full name") {
    const Layer layer = smallLayer();
    for (std::vector<std::string> skip : {std::vector<std::string>{"up_proj"},
                                          std::vector<std::string>{"model.layers.0.mlp"},
                                          std::vector<std::string>{"model.layers.0.mlp.up_proj.weight"},
                                          std::vector<std::string>{"mlp"}}) {
        INFO("skip ", skip[0]);
        QuantizationConfig c = configFor(QuantizationMode::kInt8);
        c.llmInt8SkipModules = skip;
        auto ql = LayerQuantizer(c).quantizeLayer(layer);
        REQUIRE(ql.isOk());
        CHECK(ql->tensors[0].info.mode == QuantizationMode::kInt8);
        CHECK(ql->tensors[2].info.mode == QuantizationMode::kNone);
        CHECK(ql->tensors[2].info.storedDType == DType::kF16);
    }
    // Tensor names that already carry the layer prefix are not prefixed twice.
    Layer full("model.layers.0");
    REQUIRE(full.add(floats("model.layers.0.mlp.up_proj.weight", {4, 64}, DType::kF16,
                            randomValues(256, 5))).isOk());
    QuantizationConfig c = configFor(QuantizationMode::kInt8);
    c.llmInt8SkipModules = {"model.layers.0.mlp"};
    auto ql = LayerQuantizer(c).quantizeLayer(full);
    REQUIRE(ql.isOk());
    CHECK(ql->tensors[0].info.mode == QuantizationMode::kNone);
}

TEST_CASE("int4 keeps a tensor whose rows are not a multiple of 32 in the compute dtype") {
    Layer layer("l");
    REQUIRE(layer.add(floats("fits", {8, 64}, DType::kF32, randomValues(512, 6))).isOk());
    REQUIRE(layer.add(floats("odd", {8, 48}, DType::kF32, randomValues(384, 7))).isOk());
    LayerQuantizer q(configFor(QuantizationMode::kInt4));
    CHECK(q.modeFor(layer[0].view()) == QuantizationMode::kInt4);
    CHECK(q.modeFor(layer[1].view()) == QuantizationMode::kNone);
    auto ql = q.quantizeLayer(layer);
    REQUIRE(ql.isOk());
    CHECK(ql->tensors[0].info.mode == QuantizationMode::kInt4);
    CHECK(ql->tensors[0].info.blocksize == 32);
    CHECK(ql->tensors[1].info.mode == QuantizationMode::kNone);
    CHECK(ql->tensors[1].info.storedDType == DType::kF16);
    // Asked for explicitly, the mode does not apply: a clear error naming the tensor.
    auto forced = q.quantizeTensorAs(layer[1].view(), QuantizationMode::kInt4, "l.odd");
    REQUIRE_FALSE(forced.isOk());
    CHECK(forced.status().isInvalidArgument());
    CHECK(contains(forced.status(), "l.odd"));
    CHECK(contains(forced.status(), "32"));
}

TEST_CASE("integer tensors are kept verbatim and come back unchanged") {
    Layer layer("bert.embeddings");
    std::vector<int64_t> ids(512);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>(i);
    REQUIRE(layer.add(Tensor::fromBytes("position_ids", {1, 512}, DType::kI64,
                                        {reinterpret_cast<const uint8_t*>(ids.data()), ids.size() * 8})
                          .value())
                .isOk());
    REQUIRE(layer.add(floats("word_embeddings.weight", {16, 64}, DType::kF16, randomValues(1024, 8))).isOk());
    LayerQuantizer q(configFor(QuantizationMode::kNf4));
    auto ql = q.quantizeLayer(layer);
    REQUIRE(ql.isOk());
    const QuantizedTensor& kept = ql->tensors[0];
    CHECK(kept.info.mode == QuantizationMode::kNone);
    CHECK(kept.info.storedDType == DType::kI64);
    CHECK(std::memcmp(kept.part(QuantPart::kPayload).data(), ids.data(), ids.size() * 8) == 0);
    CHECK(ql->tensors[1].info.mode == QuantizationMode::kNf4);
    auto back = dequantizeLayer(*ql, DType::kF32);
    REQUIRE(back.isOk());
    CHECK((*back)[0].dtype() == DType::kI64);
    CHECK(std::memcmp((*back)[0].data(), ids.data(), ids.size() * 8) == 0);
    CHECK((*back)[1].dtype() == DType::kF32);

    // Forcing a quantized mode onto an integer tensor is an error naming it.
    auto forced = q.quantizeTensorAs(layer[0].view(), QuantizationMode::kInt8, "bert.embeddings.position_ids");
    REQUIRE_FALSE(forced.isOk());
    CHECK(forced.status().isInvalidArgument());
    CHECK(contains(forced.status(), "bert.embeddings.position_ids"));
    CHECK(contains(forced.status(), "i64"));
}

TEST_CASE("rejects bad input with clear errors naming the tensor") {
    SUBCASE("a blocksize that is not a power of two or out of range") {
        for (int bs : {100, 16, 8192, 0, -64}) {
            QuantizationConfig c = configFor(QuantizationMode::kNf4);
            c.blocksize = bs;
            auto created = LayerQuantizer::create(c);
            CHECK(created.status().isInvalidArgument());
            CHECK(contains(created.status(), "blocksize"));
            auto ql = LayerQuantizer(c).quantizeLayer(smallLayer());
            REQUIRE_FALSE(ql.isOk());
            CHECK(ql.status().isInvalidArgument());
            CHECK(contains(ql.status(), "model.layers.0"));
            CHECK(contains(ql.status(), "blocksize"));
        }
    }
    SUBCASE("an empty tensor") {
        Layer layer("l");
        REQUIRE(layer.add(Tensor::zeros("empty.weight", {0, 64}, DType::kF16).value()).isOk());
        for (QuantizationMode m : kAllModes) {
            auto ql = LayerQuantizer(configFor(m)).quantizeLayer(layer);
            REQUIRE_FALSE(ql.isOk());
            CHECK(ql.status().isInvalidArgument());
            CHECK(contains(ql.status(), "l.empty.weight"));
            CHECK(contains(ql.status(), "empty"));
        }
    }
    SUBCASE("data whose size does not match the shape") {
        const Tensor t = floats("w", {8, 64}, DType::kF16, randomValues(512, 9));
        TensorView v = t.view();
        const std::vector<int64_t> wrong = {8, 128};
        v.shape = wrong;
        auto q = LayerQuantizer(configFor(QuantizationMode::kNf4)).quantizeTensor(v, "layer.w");
        REQUIRE_FALSE(q.isOk());
        CHECK(q.status().isInvalidArgument());
        CHECK(contains(q.status(), "layer.w"));
        CHECK(contains(q.status(), "[8, 128]"));
        TensorView noData = t.view();
        noData.data = nullptr;
        CHECK(LayerQuantizer(configFor(QuantizationMode::kInt8)).quantizeTensor(noData).status().isInvalidArgument());
        const std::vector<int64_t> negative = {-8, 64};
        TensorView neg = t.view();
        neg.shape = negative;
        CHECK(LayerQuantizer(configFor(QuantizationMode::kInt8)).quantizeTensor(neg).status().isInvalidArgument());
    }
    SUBCASE("a dtype with no exact f32 widening") {
        Layer layer("l");
        REQUIRE(layer.add(Tensor::zeros("fp8.weight", {4, 64}, DType::kF8E4M3).value()).isOk());
        auto ql = LayerQuantizer(configFor(QuantizationMode::kInt8)).quantizeLayer(layer);
        REQUIRE_FALSE(ql.isOk());
        CHECK(ql.status().isNotSupported());
        CHECK(contains(ql.status(), "l.fp8.weight"));
    }
    SUBCASE("a mode that does not apply to the tensor") {
        const Tensor bias = floats("bias", {64}, DType::kF16, randomValues(64, 10));
        LayerQuantizer q(configFor(QuantizationMode::kInt8));
        for (QuantizationMode m : {QuantizationMode::kInt8, QuantizationMode::kInt8Dynamic,
                                   QuantizationMode::kInt4}) {
            auto r = q.quantizeTensorAs(bias.view(), m, "layer.bias");
            REQUIRE_FALSE(r.isOk());
            CHECK(r.status().isInvalidArgument());
            CHECK(contains(r.status(), "layer.bias"));
            CHECK(contains(r.status(), "two or more dimensions"));
        }
        // NF4 applies to any shape (bitsandbytes flattens), so forcing it works.
        CHECK(LayerQuantizer(configFor(QuantizationMode::kNf4)).quantizeTensorAs(bias.view(), QuantizationMode::kNf4).isOk());
    }
    SUBCASE("an unknown mode name in the one-line helper") {
        auto ql = quantizeLayer(smallLayer(), "nf5");
        REQUIRE_FALSE(ql.isOk());
        CHECK(ql.status().isInvalidArgument());
        CHECK(contains(ql.status(), "nf5"));
        CHECK(contains(ql.status(), "model.layers.0"));
    }
    SUBCASE("dequantizing to a non-compute dtype or from corrupt parts") {
        auto ql = quantizeLayer(smallLayer(), QuantizationMode::kNf4);
        REQUIRE(ql.isOk());
        auto bad = dequantizeLayer(*ql, DType::kI8);
        REQUIRE_FALSE(bad.isOk());
        CHECK(bad.status().isInvalidArgument());
        CHECK(contains(bad.status(), "self_attn.q_proj.weight"));

        QuantizedTensor& t = ql->tensors[2];
        t.part(QuantPart::kAbsmax) = AlignedBuffer::allocate(3).value();
        auto corrupt = dequantizeLayer(*ql);
        REQUIRE_FALSE(corrupt.isOk());
        CHECK(contains(corrupt.status(), "mlp.up_proj.weight"));
        CHECK(contains(corrupt.status(), "model.layers.0"));
    }
}

TEST_CASE("counts bits per weight honestly, statistics included") {
    CHECK(bitsPerWeight(QuantizationMode::kNf4, DType::kF16, 64, false) == 4.5);
    CHECK(bitsPerWeight(QuantizationMode::kFp4, DType::kF16, 64, false) == 4.5);
    CHECK(bitsPerWeight(QuantizationMode::kNf4, DType::kF16, 64, true) ==
          doctest::Approx(4.0 + 8.0 / 64 + 32.0 / (64 * 256)));
    CHECK(bitsPerWeight(QuantizationMode::kNf4, DType::kF16, 64, true) == doctest::Approx(4.127).epsilon(1e-3));
    CHECK(bitsPerWeight(QuantizationMode::kNf4, DType::kF16, 128, false) == 4.25);
    CHECK(bitsPerWeight(QuantizationMode::kInt8, DType::kF16, 64, false, 4096) == 8.0 + 32.0 / 4096);
    CHECK(bitsPerWeight(QuantizationMode::kInt8Dynamic, DType::kF16, 64, false, 128) == 8.25);
    CHECK(bitsPerWeight(QuantizationMode::kInt4) == 4.5);
    CHECK(bitsPerWeight(QuantizationMode::kNone, DType::kF16) == 16.0);
    CHECK(bitsPerWeight(QuantizationMode::kNone, DType::kF32) == 32.0);
    CHECK(bitsPerWeight(getNf4Config()) == doctest::Approx(4.127).epsilon(1e-3));

    QuantizationConfig c = configFor(QuantizationMode::kNf4);
    c.doubleQuant = false;
    LayerQuantizer q(c);
    CHECK(q.quantizedSizeRatio() == 4.5 / 16.0);

    // Measured on a real tensor: payload n/2, f32 absmax per 64, the 16-entry codebook.
    Layer layer("l");
    REQUIRE(layer.add(floats("w", {256, 256}, DType::kF16, randomValues(65536, 12))).isOk());
    auto ql = q.quantizeLayer(layer);
    REQUIRE(ql.isOk());
    const double n = 65536;
    const double bytes = n / 2 + n / 64 * 4 + 16 * 4;
    CHECK(ql->tensors[0].storedBytes() == static_cast<size_t>(bytes));
    CHECK(bitsPerWeight(ql->tensors[0]) == doctest::Approx(8 * bytes / n));
    CHECK(bitsPerWeight(*ql) == doctest::Approx(8 * bytes / n));
    CHECK(LayerQuantizer::quantizedSizeRatio(*ql) == doctest::Approx(bytes / (n * 2)));

    // INT8: payload plus one f32 per row.
    auto q8 = quantizeLayer(layer, QuantizationMode::kInt8);
    REQUIRE(q8.isOk());
    CHECK(bitsPerWeight(q8->tensors[0]) == doctest::Approx(8.0 + 32.0 / 256));
    CHECK(LayerQuantizer(configFor(QuantizationMode::kInt8)).quantizedSizeRatio(256) ==
          doctest::Approx((8.0 + 32.0 / 256) / 16));
    CHECK(LayerQuantizer::quantizedSizeRatio(QuantizedLayer{}) == 0.0);
}

TEST_CASE("the one-line helpers match an explicit LayerQuantizer") {
    const Layer layer = smallLayer();
    QuantizeOptions opt;
    opt.config.doubleQuant = false;
    opt.layerName = "renamed";
    opt.index = 3;
    auto a = quantizeLayer(layer, "FP4", opt);  // the mode overrides quant_type
    REQUIRE(a.isOk());
    CHECK(a->name == "renamed");
    CHECK(a->index == 3);
    QuantizationConfig c = configFor(QuantizationMode::kFp4);
    c.doubleQuant = false;
    auto b = LayerQuantizer(c).quantizeLayer(layer, "renamed", 3);
    REQUIRE(b.isOk());
    REQUIRE(a->tensors.size() == b->tensors.size());
    for (size_t i = 0; i < a->tensors.size(); ++i) {
        CHECK(a->tensors[i].info.mode == b->tensors[i].info.mode);
        const auto pa = a->tensors[i].part(QuantPart::kPayload).bytes();
        const auto pb = b->tensors[i].part(QuantPart::kPayload).bytes();
        REQUIRE(pa.size() == pb.size());
        CHECK(std::memcmp(pa.data(), pb.data(), pa.size()) == 0);
    }
    // Defaults: NF4, layer name from the layer.
    auto d = quantizeLayer(layer);
    REQUIRE(d.isOk());
    CHECK(d->name == "model.layers.0");
    CHECK(d->tensors[0].info.mode == QuantizationMode::kNf4);
    auto back = dequantizeLayer(*d, DType::kF32);
    REQUIRE(back.isOk());
    CHECK((*back)[0].dtype() == DType::kF32);
    CHECK(back->name() == "model.layers.0");
}

TEST_CASE("mode none stores the compute dtype exactly rounded") {
    const auto v = randomValues(4 * 64, 13);
    Layer layer("l");
    REQUIRE(layer.add(floats("w", {4, 64}, DType::kF32, v)).isOk());
    auto ql = quantizeLayer(layer, QuantizationMode::kNone);
    REQUIRE(ql.isOk());
    CHECK_FALSE(LayerQuantizer::isQuantized(*ql));
    CHECK_FALSE(LayerQuantizer::isQuantized(ql->tensors[0]));
    const auto* p = ql->tensors[0].part(QuantPart::kPayload).as<uint16_t>();
    for (size_t i = 0; i < v.size(); ++i) CHECK(p[i] == f32ToF16(v[i]));
}

TEST_CASE("upgrades a mode one step along nf4, int8, int8_dynamic, none") {
    CHECK(upgradeMode(QuantizationMode::kNf4) == QuantizationMode::kInt8);
    CHECK(upgradeMode(QuantizationMode::kFp4) == QuantizationMode::kInt8);
    CHECK(upgradeMode(QuantizationMode::kInt4) == QuantizationMode::kInt8);
    CHECK(upgradeMode(QuantizationMode::kInt8) == QuantizationMode::kInt8Dynamic);
    CHECK(upgradeMode(QuantizationMode::kInt8Dynamic) == QuantizationMode::kNone);
    CHECK(upgradeMode(QuantizationMode::kNone) == QuantizationMode::kNone);
    const QuantizationConfig u = upgradeConfig(getNf4Config());
    CHECK(u.mode == QuantizationMode::kInt8);
    CHECK(u.validate().isOk());
}

TEST_CASE("tensor full names join layer and tensor names once") {
    CHECK(tensorFullName("model.layers.3", "mlp.up_proj.weight") == "model.layers.3.mlp.up_proj.weight");
    CHECK(tensorFullName("model.layers.3", "model.layers.3.mlp.up_proj.weight") ==
          "model.layers.3.mlp.up_proj.weight");
    CHECK(tensorFullName("model.layers.3", "model.layers.30.mlp.up_proj.weight") ==
          "model.layers.3.model.layers.30.mlp.up_proj.weight");
    CHECK(tensorFullName("", "lm_head.weight") == "lm_head.weight");
    // groupIntoLayers' pre / post groups hold full names already.
    CHECK(tensorFullName("post", "lm_head.weight") == "lm_head.weight");
    CHECK(tensorFullName("pre", "model.embed_tokens.weight") == "model.embed_tokens.weight");

    // So getInt8Config's skip list finds lm_head in the post group.
    Layer post("post");
    REQUIRE(post.add(floats("lm_head.weight", {8, 64}, DType::kF16, randomValues(512, 14))).isOk());
    auto q = LayerQuantizer(getInt8Config()).quantizeLayer(post);
    REQUIRE(q.isOk());
    CHECK(q->tensors[0].info.mode == QuantizationMode::kNone);
}

TEST_CASE("LLM.int8 warns, naming the tensor, when rows hold values past the fp16 range") {
    // Row 1 holds 1e5: LLM.int8 rounds to fp16 first (bitsandbytes' semantics), so its SCB is
    // infinite and the whole row dequantizes to NaN. Quantization goes on (the format is
    // bnb's) but says so; the other rows are unaffected.
    std::vector<float> v = randomValues(4 * 64, 21, 0.05f);
    v[64 + 5] = 1.0e5f;
    const Tensor t = floats("model.layers.0.mlp.up_proj.weight", {4, 64}, DType::kF32, v);
    Result<QuantizedTensor> q = Status::internal("not run");
    const std::string log = testutil::captureWarnings(
        [&] { q = LayerQuantizer(configFor(QuantizationMode::kInt8)).quantizeTensor(t.view()); });
    REQUIRE(q.isOk());
    CHECK(log.find("model.layers.0.mlp.up_proj.weight") != std::string::npos);
    CHECK(log.find("1 of 4 rows") != std::string::npos);
    auto dq = LayerQuantizer::dequantizeTensor(*q, DType::kF32);
    REQUIRE(dq.isOk());
    const float* out = reinterpret_cast<const float*>(dq->data());
    CHECK(std::isfinite(out[0]));
    CHECK(std::isnan(out[64]));
}

#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

#include "sli/quantizer.h"

using namespace sli;

namespace {

Tensor matrix(std::string name, int64_t rows, int64_t cols, uint32_t seed = 1) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 0.05f);
    std::vector<float> v(static_cast<size_t>(rows * cols));
    for (auto& x : v) x = nd(rng);
    return Tensor::fromFloats(std::move(name), {rows, cols}, DType::kF16, v).value();
}

Tensor vec(std::string name, int64_t n) {
    std::vector<float> v(static_cast<size_t>(n), 1.0f);
    return Tensor::fromFloats(std::move(name), {n}, DType::kF16, v).value();
}

QuantizationConfig cfg(QuantizationMode m) {
    QuantizationConfig c;
    c.mode = m;
    if (modeIs4bit(m)) c.quantType = modeName(m);
    return c;
}

QuantizationMode modeOf(const QuantizedLayer& l, std::string_view name) {
    const QuantizedTensor* t = l.find(name);
    REQUIRE(t != nullptr);
    return t->info.mode;
}

// A tiny Llama checkpoint grouped the way the cache groups it: pre, one block, post.
std::vector<Layer> tinyLlama() {
    std::vector<Layer> model;
    Layer pre("pre");
    REQUIRE(pre.add(matrix("model.embed_tokens.weight", 32, 64)).isOk());
    model.push_back(std::move(pre));
    Layer block("model.layers.0");
    REQUIRE(block.add(matrix("self_attn.q_proj.weight", 64, 64, 2)).isOk());
    REQUIRE(block.add(matrix("self_attn.o_proj.weight", 64, 64, 3)).isOk());
    REQUIRE(block.add(matrix("mlp.up_proj.weight", 128, 64, 4)).isOk());
    REQUIRE(block.add(matrix("mlp.down_proj.weight", 64, 128, 5)).isOk());
    REQUIRE(block.add(vec("input_layernorm.weight", 64)).isOk());
    model.push_back(std::move(block));
    Layer post("post");
    REQUIRE(post.add(vec("model.norm.weight", 64)).isOk());
    REQUIRE(post.add(matrix("lm_head.weight", 32, 64, 6)).isOk());
    model.push_back(std::move(post));
    return model;
}

}  // namespace

TEST_CASE("the mixed precision config puts attention in int8 and ffn in nf4") {
    const AdaptiveQuantizer aq = getMixedPrecisionConfig();
    CHECK(aq.baseConfig().mode == QuantizationMode::kNf4);
    CHECK(aq.attentionConfig().mode == QuantizationMode::kInt8);
    CHECK(aq.ffnConfig().mode == QuantizationMode::kNf4);

    auto q = aq.quantizeModel(tinyLlama());
    REQUIRE(q.isOk());
    REQUIRE(q->size() == 3);
    for (size_t i = 0; i < 3; ++i) CHECK((*q)[i].index == static_cast<int64_t>(i));
    CHECK((*q)[1].name == "model.layers.0");
    CHECK(modeOf((*q)[1], "self_attn.q_proj.weight") == QuantizationMode::kInt8);
    CHECK(modeOf((*q)[1], "self_attn.o_proj.weight") == QuantizationMode::kInt8);
    CHECK(modeOf((*q)[1], "mlp.up_proj.weight") == QuantizationMode::kNf4);
    CHECK(modeOf((*q)[1], "mlp.down_proj.weight") == QuantizationMode::kNf4);
    CHECK(modeOf((*q)[1], "input_layernorm.weight") == QuantizationMode::kNone);
    // Embeddings and lm_head are kept unquantized by the architecture registry's defaults.
    CHECK(modeOf((*q)[0], "model.embed_tokens.weight") == QuantizationMode::kNone);
    CHECK(modeOf((*q)[2], "lm_head.weight") == QuantizationMode::kNone);
    CHECK((*q)[2].find("lm_head.weight")->info.storedDType == DType::kF16);
    // The INT8 weights carry the threshold for the executor.
    CHECK((*q)[1].find("self_attn.q_proj.weight")->info.llmInt8Threshold == 6.0f);
}

TEST_CASE("without an attention config the base is upgraded one step for attention") {
    struct Case {
        QuantizationMode base, attention;
    };
    for (Case c : {Case{QuantizationMode::kNf4, QuantizationMode::kInt8},
                   Case{QuantizationMode::kInt8, QuantizationMode::kInt8Dynamic},
                   Case{QuantizationMode::kInt8Dynamic, QuantizationMode::kNone},
                   Case{QuantizationMode::kNone, QuantizationMode::kNone}}) {
        INFO("base ", std::string(modeName(c.base)));
        const AdaptiveQuantizer aq(cfg(c.base));
        CHECK(aq.attentionConfig().mode == c.attention);
        CHECK(aq.ffnConfig().mode == c.base);  // no FFN config: the base
        Layer l("h.0");
        REQUIRE(l.add(matrix("attn.c_attn.weight", 64, 64)).isOk());
        REQUIRE(l.add(matrix("mlp.c_fc.weight", 64, 64)).isOk());
        auto q = aq.quantizeLayer(l);
        REQUIRE(q.isOk());
        CHECK(modeOf(*q, "attn.c_attn.weight") == c.attention);
        CHECK(modeOf(*q, "mlp.c_fc.weight") == c.base);
    }
}

TEST_CASE("unknown names are classified with the seed keywords") {
    const AdaptiveQuantizer aq(cfg(QuantizationMode::kInt4), cfg(QuantizationMode::kInt8),
                               cfg(QuantizationMode::kNf4));
    CHECK(aq.roleOf("blocks.0.attn.proj.weight") == TensorRole::kAttention);
    CHECK(aq.roleOf("blocks.0.to_qkv.weight") == TensorRole::kAttention);
    CHECK(aq.roleOf("blocks.0.fc1.weight") == TensorRole::kFfn);
    CHECK(aq.roleOf("blocks.0.feedforward.w1") == TensorRole::kFfn);
    CHECK(aq.roleOf("blocks.0.proj.weight") == TensorRole::kOther);
    CHECK(aq.configFor("blocks.0.attn.proj.weight").mode == QuantizationMode::kInt8);
    CHECK(aq.configFor("blocks.0.fc1.weight").mode == QuantizationMode::kNf4);
    CHECK(aq.configFor("blocks.0.proj.weight").mode == QuantizationMode::kInt4);
    // Unknown names get no registry defaults: an embedding-looking matrix is quantized.
    const Tensor e = matrix("tok_embeddings.weight", 32, 64);
    CHECK(aq.modeFor(e.view(), "tok_embeddings.weight") == QuantizationMode::kInt4);
}

TEST_CASE("the architecture registry classifies names the keywords miss") {
    AdaptiveQuantizer aq(cfg(QuantizationMode::kInt4), cfg(QuantizationMode::kInt8),
                         cfg(QuantizationMode::kNf4));
    // BERT's FFN is "intermediate" and "output": no seed keyword matches them.
    CHECK(aq.configFor("bert.encoder.layer.3.intermediate.dense.weight").mode == QuantizationMode::kNf4);
    CHECK(aq.configFor("bert.encoder.layer.3.output.dense.weight").mode == QuantizationMode::kNf4);
    CHECK(aq.configFor("bert.encoder.layer.3.attention.output.dense.weight").mode ==
          QuantizationMode::kInt8);
    CHECK(aq.configFor("model.decoder.layers.1.fc2.weight").mode == QuantizationMode::kNf4);
    CHECK(aq.configFor("bert.pooler.dense.weight").mode == QuantizationMode::kNone);
    // With the registry off, the keywords alone decide.
    aq.setUseArchitectureRegistry(false);
    CHECK(aq.configFor("bert.encoder.layer.3.intermediate.dense.weight").mode == QuantizationMode::kInt4);
    CHECK(aq.configFor("bert.pooler.dense.weight").mode == QuantizationMode::kInt4);
}

TEST_CASE("keyword patterns are configurable") {
    AdaptiveQuantizer aq(cfg(QuantizationMode::kInt4), cfg(QuantizationMode::kInt8),
                         cfg(QuantizationMode::kNf4));
    aq.setUseArchitectureRegistry(false);
    aq.setKeywords({"Mixer"}, {"w1", "w2"});
    CHECK(aq.roleOf("blocks.0.mixer.weight") == TensorRole::kAttention);  // case-insensitive
    CHECK(aq.roleOf("blocks.0.w2.weight") == TensorRole::kFfn);
    CHECK(aq.roleOf("blocks.0.attn.weight") == TensorRole::kOther);  // defaults replaced
}

TEST_CASE("registry defaults can be turned off") {
    AdaptiveQuantizer aq = getMixedPrecisionConfig();
    const Tensor e = matrix("model.embed_tokens.weight", 32, 64);
    CHECK(aq.modeFor(e.view(), "model.embed_tokens.weight") == QuantizationMode::kNone);
    aq.setKeepRegistryDefaults(false);
    CHECK(aq.modeFor(e.view(), "model.embed_tokens.weight") == QuantizationMode::kNf4);
    // Each config's own skip list still applies: getInt8Config skips lm_head.
    const AdaptiveQuantizer int8(getInt8Config());
    AdaptiveQuantizer noDefaults = int8;
    noDefaults.setKeepRegistryDefaults(false);
    const Tensor head = matrix("lm_head.weight", 32, 64);
    CHECK(noDefaults.modeFor(head.view(), "lm_head.weight") == QuantizationMode::kNone);
}

TEST_CASE("an explicit architecture reads names with that family's rules only") {
    AdaptiveQuantizer aq(cfg(QuantizationMode::kInt4), cfg(QuantizationMode::kInt8),
                         cfg(QuantizationMode::kNf4));
    aq.setArchitecture(Architecture::kGpt2);
    CHECK(aq.roleOf("transformer.h.0.attn.c_proj.weight") == TensorRole::kAttention);
    CHECK(aq.roleOf("transformer.h.0.mlp.c_proj.weight") == TensorRole::kFfn);
    // A GPT-2 mask buffer is neither attention weights nor quantized.
    const Tensor mask = matrix("h.0.attn.bias", 32, 32);
    CHECK(aq.modeFor(mask.view(), "h.0.attn.bias") == QuantizationMode::kNone);
}

TEST_CASE("reports invalid configs and failing layers by name") {
    QuantizationConfig bad = cfg(QuantizationMode::kNf4);
    bad.blocksize = 48;
    auto a = AdaptiveQuantizer::create(cfg(QuantizationMode::kNf4), bad);
    REQUIRE_FALSE(a.isOk());
    CHECK(a.status().isInvalidArgument());
    CHECK(a.status().message().find("attention") != std::string::npos);
    a = AdaptiveQuantizer::create(cfg(QuantizationMode::kNf4), std::nullopt, bad);
    REQUIRE_FALSE(a.isOk());
    CHECK(a.status().message().find("ffn") != std::string::npos);
    a = AdaptiveQuantizer::create(bad);
    REQUIRE_FALSE(a.isOk());
    CHECK(a.status().message().find("base") != std::string::npos);
    CHECK(AdaptiveQuantizer::create(getNf4Config(), getInt8Config()).isOk());

    // A layer holding an empty tensor: the error names layer and tensor.
    std::vector<Layer> model = tinyLlama();
    REQUIRE(model[1].add(Tensor::zeros("mlp.gate_proj.weight", {0, 64}, DType::kF16).value()).isOk());
    auto q = getMixedPrecisionConfig().quantizeModel(model);
    REQUIRE_FALSE(q.isOk());
    CHECK(q.status().message().find("model.layers.0") != std::string::npos);
    CHECK(q.status().message().find("mlp.gate_proj.weight") != std::string::npos);

    auto empty = getMixedPrecisionConfig().quantizeModel({});
    REQUIRE(empty.isOk());
    CHECK(empty->empty());
}

TEST_CASE("adaptive results dequantize like any quantized layer") {
    auto q = getMixedPrecisionConfig().quantizeModel(tinyLlama());
    REQUIRE(q.isOk());
    for (const QuantizedLayer& l : *q) {
        auto back = dequantizeLayer(l, DType::kF32);
        REQUIRE(back.isOk());
        CHECK(back->size() == l.tensors.size());
    }
    CHECK(LayerQuantizer::isQuantized((*q)[1]));
    CHECK_FALSE(LayerQuantizer::isQuantized((*q)[0]));
}

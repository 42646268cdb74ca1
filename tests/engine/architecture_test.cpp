#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "sli/architecture.h"

using namespace sli;

namespace {

std::vector<std::string> llamaNames(int layers) {
    std::vector<std::string> n = {"model.embed_tokens.weight"};
    for (int i = 0; i < layers; ++i) {
        const std::string p = "model.layers." + std::to_string(i) + ".";
        for (const char* s : {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                              "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                              "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
                              "input_layernorm.weight", "post_attention_layernorm.weight"}) {
            n.push_back(p + s);
        }
    }
    n.push_back("model.norm.weight");
    n.push_back("lm_head.weight");
    return n;
}

void checkPlacement(std::string_view name, Architecture arch, LayerPosition pos, int64_t index,
                    TensorRole role, bool keep, std::string_view layerName) {
    INFO("tensor ", std::string(name));
    const TensorPlacement p = classifyTensor(name, arch);
    CHECK(p.recognized);
    CHECK(p.position == pos);
    CHECK(p.layerIndex == index);
    CHECK(p.role == role);
    CHECK(p.keepUnquantized == keep);
    CHECK(p.layerName == layerName);
}

}  // namespace

TEST_CASE("llama, mistral and qwen2 names map to layers, roles and defaults") {
    using R = TensorRole;
    using P = LayerPosition;
    for (Architecture a : {Architecture::kUnknown, Architecture::kLlama, Architecture::kMistral,
                           Architecture::kQwen2}) {
        checkPlacement("model.embed_tokens.weight", a, P::kPre, -1, R::kEmbedding, true, "pre");
        checkPlacement("model.layers.7.self_attn.q_proj.weight", a, P::kBlock, 7, R::kAttention,
                       false, "model.layers.7");
        checkPlacement("model.layers.7.self_attn.k_proj.bias", a, P::kBlock, 7, R::kAttention, true,
                       "model.layers.7");
        checkPlacement("model.layers.12.mlp.down_proj.weight", a, P::kBlock, 12, R::kFfn, false,
                       "model.layers.12");
        checkPlacement("model.layers.0.input_layernorm.weight", a, P::kBlock, 0, R::kNorm, true,
                       "model.layers.0");
        checkPlacement("model.layers.0.post_attention_layernorm.weight", a, P::kBlock, 0, R::kNorm,
                       true, "model.layers.0");
        checkPlacement("model.norm.weight", a, P::kPost, -1, R::kNorm, true, "post");
        checkPlacement("lm_head.weight", a, P::kPost, -1, R::kHead, true, "post");
    }
    CHECK(classifyTensor("model.layers.3.mlp.up_proj.weight", Architecture::kQwen2).architecture ==
          Architecture::kQwen2);
}

TEST_CASE("mixture-of-experts names (gpt-oss, Qwen2-MoE, Mixtral): routers and expert biases are kept") {
    using R = TensorRole;
    using P = LayerPosition;
    const Architecture a = Architecture::kUnknown;
    // gpt-oss: stacked experts, their stacked biases, the router
    checkPlacement("model.layers.3.mlp.experts.gate_up_proj", a, P::kBlock, 3, R::kFfn, false,
                   "model.layers.3");
    checkPlacement("model.layers.3.mlp.experts.gate_up_proj_bias", a, P::kBlock, 3, R::kFfn, true,
                   "model.layers.3");
    checkPlacement("model.layers.3.mlp.experts.down_proj_bias", a, P::kBlock, 3, R::kFfn, true,
                   "model.layers.3");
    checkPlacement("model.layers.3.mlp.router.weight", a, P::kBlock, 3, R::kFfn, true, "model.layers.3");
    checkPlacement("model.layers.3.mlp.router.bias", a, P::kBlock, 3, R::kFfn, true, "model.layers.3");
    checkPlacement("model.layers.3.self_attn.sinks", a, P::kBlock, 3, R::kAttention, false,
                   "model.layers.3");
    // Qwen2-MoE / DeepSeek: mlp.gate is the router, mlp.gate_proj and the experts' are weights
    checkPlacement("model.layers.1.mlp.gate.weight", a, P::kBlock, 1, R::kFfn, true, "model.layers.1");
    checkPlacement("model.layers.1.mlp.gate_proj.weight", a, P::kBlock, 1, R::kFfn, false,
                   "model.layers.1");
    checkPlacement("model.layers.1.mlp.experts.5.gate_proj.weight", a, P::kBlock, 1, R::kFfn, false,
                   "model.layers.1");
    checkPlacement("model.layers.1.mlp.shared_expert_gate.weight", a, P::kBlock, 1, R::kFfn, false,
                   "model.layers.1");
    // Mixtral
    checkPlacement("model.layers.0.block_sparse_moe.gate.weight", a, P::kBlock, 0, R::kFfn, true,
                   "model.layers.0");
    checkPlacement("model.layers.0.block_sparse_moe.experts.7.w1.weight", a, P::kBlock, 0, R::kFfn,
                   false, "model.layers.0");
}

TEST_CASE("gpt2 names with and without the transformer prefix") {
    using R = TensorRole;
    using P = LayerPosition;
    for (std::string pre : {"", "transformer."}) {
        checkPlacement(pre + "wte.weight", Architecture::kGpt2, P::kPre, -1, R::kEmbedding, true, "pre");
        checkPlacement(pre + "wpe.weight", Architecture::kUnknown, P::kPre, -1, R::kEmbedding, true,
                       "pre");
        checkPlacement(pre + "h.3.attn.c_attn.weight", Architecture::kUnknown, P::kBlock, 3,
                       R::kAttention, false, pre + "h.3");
        checkPlacement(pre + "h.3.attn.c_proj.bias", Architecture::kGpt2, P::kBlock, 3, R::kAttention,
                       false, pre + "h.3");
        checkPlacement(pre + "h.3.mlp.c_fc.weight", Architecture::kUnknown, P::kBlock, 3, R::kFfn,
                       false, pre + "h.3");
        checkPlacement(pre + "h.11.ln_2.bias", Architecture::kGpt2, P::kBlock, 11, R::kNorm, true,
                       pre + "h.11");
        checkPlacement(pre + "ln_f.weight", Architecture::kUnknown, P::kPost, -1, R::kNorm, true,
                       "post");
        // The causal-mask buffers of old checkpoints are not weights.
        checkPlacement(pre + "h.0.attn.bias", Architecture::kGpt2, P::kBlock, 0, R::kOther, true,
                       pre + "h.0");
        checkPlacement(pre + "h.0.attn.masked_bias", Architecture::kGpt2, P::kBlock, 0, R::kOther,
                       true, pre + "h.0");
    }
}

TEST_CASE("bert names with the bert prefix and sentence-transformers names without it") {
    using R = TensorRole;
    using P = LayerPosition;
    for (std::string pre : {"", "bert."}) {
        checkPlacement(pre + "embeddings.word_embeddings.weight", Architecture::kUnknown, P::kPre, -1,
                       R::kEmbedding, true, "pre");
        checkPlacement(pre + "embeddings.token_type_embeddings.weight", Architecture::kBert, P::kPre,
                       -1, R::kEmbedding, true, "pre");
        checkPlacement(pre + "embeddings.LayerNorm.weight", Architecture::kUnknown, P::kPre, -1,
                       R::kNorm, true, "pre");
        checkPlacement(pre + "embeddings.position_ids", Architecture::kBert, P::kPre, -1, R::kOther,
                       true, "pre");
        checkPlacement(pre + "encoder.layer.2.attention.self.query.weight", Architecture::kUnknown,
                       P::kBlock, 2, R::kAttention, false, pre + "encoder.layer.2");
        checkPlacement(pre + "encoder.layer.2.attention.output.dense.weight", Architecture::kBert,
                       P::kBlock, 2, R::kAttention, false, pre + "encoder.layer.2");
        checkPlacement(pre + "encoder.layer.2.attention.output.LayerNorm.bias", Architecture::kBert,
                       P::kBlock, 2, R::kNorm, true, pre + "encoder.layer.2");
        checkPlacement(pre + "encoder.layer.2.intermediate.dense.weight", Architecture::kUnknown,
                       P::kBlock, 2, R::kFfn, false, pre + "encoder.layer.2");
        checkPlacement(pre + "encoder.layer.10.output.dense.weight", Architecture::kBert, P::kBlock,
                       10, R::kFfn, false, pre + "encoder.layer.10");
        checkPlacement(pre + "encoder.layer.10.output.LayerNorm.weight", Architecture::kUnknown,
                       P::kBlock, 10, R::kNorm, true, pre + "encoder.layer.10");
        checkPlacement(pre + "pooler.dense.weight", Architecture::kUnknown, P::kPost, -1, R::kHead,
                       true, "post");
    }
    checkPlacement("cls.predictions.transform.LayerNorm.weight", Architecture::kBert, P::kPost, -1,
                   R::kNorm, true, "post");
    checkPlacement("cls.predictions.decoder.weight", Architecture::kBert, P::kPost, -1, R::kHead,
                   true, "post");
}

TEST_CASE("opt names, with per-layer and final layer norms told apart") {
    using R = TensorRole;
    using P = LayerPosition;
    for (std::string pre : {"model.", ""}) {
        checkPlacement(pre + "decoder.embed_tokens.weight", Architecture::kUnknown, P::kPre, -1,
                       R::kEmbedding, true, "pre");
        checkPlacement(pre + "decoder.embed_positions.weight", Architecture::kOpt, P::kPre, -1,
                       R::kEmbedding, true, "pre");
        checkPlacement(pre + "decoder.layers.5.self_attn.out_proj.weight", Architecture::kUnknown,
                       P::kBlock, 5, R::kAttention, false, pre + "decoder.layers.5");
        checkPlacement(pre + "decoder.layers.5.self_attn_layer_norm.weight", Architecture::kOpt,
                       P::kBlock, 5, R::kNorm, true, pre + "decoder.layers.5");
        checkPlacement(pre + "decoder.layers.5.fc1.weight", Architecture::kUnknown, P::kBlock, 5,
                       R::kFfn, false, pre + "decoder.layers.5");
        checkPlacement(pre + "decoder.layers.5.fc2.bias", Architecture::kOpt, P::kBlock, 5, R::kFfn,
                       false, pre + "decoder.layers.5");
        checkPlacement(pre + "decoder.layers.5.final_layer_norm.weight", Architecture::kOpt,
                       P::kBlock, 5, R::kNorm, true, pre + "decoder.layers.5");
        checkPlacement(pre + "decoder.final_layer_norm.weight", Architecture::kUnknown, P::kPost, -1,
                       R::kNorm, true, "post");
    }
    checkPlacement("lm_head.weight", Architecture::kOpt, LayerPosition::kPost, -1, R::kHead, true,
                   "post");
}

TEST_CASE("unknown names fall back to the seed keyword rules") {
    CHECK(classifyByKeywords("blocks.0.attn.proj") == TensorRole::kAttention);
    CHECK(classifyByKeywords("x.Query.w") == TensorRole::kAttention);
    CHECK(classifyByKeywords("x.to_qkv.w") == TensorRole::kAttention);
    CHECK(classifyByKeywords("x.value") == TensorRole::kAttention);
    CHECK(classifyByKeywords("x.feedforward.w1") == TensorRole::kFfn);
    CHECK(classifyByKeywords("x.fc_in.weight") == TensorRole::kFfn);
    CHECK(classifyByKeywords("x.MLP.w") == TensorRole::kFfn);
    CHECK(classifyByKeywords("x.ffn.w") == TensorRole::kFfn);
    CHECK(classifyByKeywords("x.proj.weight") == TensorRole::kOther);
    // Attention keywords win when both match, as in the seed.
    CHECK(classifyByKeywords("attn_fc.weight") == TensorRole::kAttention);

    const TensorPlacement p = classifyTensor("backbone.blocks.4.attn.proj.weight");
    CHECK_FALSE(p.recognized);
    CHECK(p.architecture == Architecture::kUnknown);
    CHECK(p.role == TensorRole::kAttention);
    CHECK(p.position == LayerPosition::kBlock);
    CHECK(p.layerIndex == 4);
    CHECK(p.layerName == "backbone.blocks.4");
    CHECK_FALSE(p.keepUnquantized);

    const TensorPlacement e = classifyTensor("tok_embeddings.weight");
    CHECK_FALSE(e.recognized);
    CHECK(e.position == LayerPosition::kPre);
    const TensorPlacement h = classifyTensor("output.weight");
    CHECK(h.position == LayerPosition::kPost);
    // A family's own rules only: a GPT-2 name read as Llama is not recognized.
    CHECK_FALSE(classifyTensor("h.0.attn.c_attn.weight", Architecture::kLlama).recognized);
}

TEST_CASE("detects the architecture from tensor names") {
    CHECK(detectArchitecture(llamaNames(2)) == Architecture::kLlama);
    const std::vector<std::string> gpt2 = {"wte.weight", "wpe.weight", "h.0.attn.c_attn.weight",
                                           "h.0.mlp.c_fc.weight", "ln_f.weight"};
    CHECK(detectArchitecture(gpt2) == Architecture::kGpt2);
    const std::vector<std::string> bert = {"embeddings.word_embeddings.weight",
                                           "encoder.layer.0.attention.self.query.weight",
                                           "pooler.dense.weight"};
    CHECK(detectArchitecture(bert) == Architecture::kBert);
    const std::vector<std::string> opt = {"model.decoder.embed_tokens.weight",
                                          "model.decoder.layers.0.fc1.weight", "lm_head.weight"};
    CHECK(detectArchitecture(opt) == Architecture::kOpt);
    const std::vector<std::string> other = {"foo.bar", "baz"};
    CHECK(detectArchitecture(other) == Architecture::kUnknown);
    CHECK(detectArchitecture(std::vector<std::string>{}) == Architecture::kUnknown);
}

TEST_CASE("reads the architecture from config.json model_type or architectures") {
    auto a = architectureFromConfigText(R"({"model_type": "mistral", "hidden_size": 4096})");
    REQUIRE(a.isOk());
    CHECK(*a == Architecture::kMistral);
    a = architectureFromConfigText(R"({"architectures": ["Qwen2ForCausalLM"]})");
    REQUIRE(a.isOk());
    CHECK(*a == Architecture::kQwen2);
    a = architectureFromConfigText(R"({"model_type": "something", "architectures": ["GPT2LMHeadModel"]})");
    REQUIRE(a.isOk());
    CHECK(*a == Architecture::kGpt2);
    a = architectureFromConfigText(R"({"architectures": ["BertModel"], "model_type": null})");
    REQUIRE(a.isOk());
    CHECK(*a == Architecture::kBert);
    a = architectureFromConfigText(R"({"model_type": "OPT"})");
    REQUIRE(a.isOk());
    CHECK(*a == Architecture::kOpt);
    a = architectureFromConfigText(R"({"model_type": "t5", "architectures": ["T5Model"]})");
    REQUIRE(a.isOk());
    CHECK(*a == Architecture::kUnknown);
}

TEST_CASE("rejects a malformed config.json with a clear error") {
    auto a = architectureFromConfigText("[1, 2]");
    CHECK(a.status().isInvalidArgument());
    a = architectureFromConfigText(R"({"model_type": 3})");
    REQUIRE_FALSE(a.isOk());
    CHECK(a.status().message().find("model_type") != std::string::npos);
    a = architectureFromConfigText(R"({"architectures": "LlamaForCausalLM"})");
    REQUIRE_FALSE(a.isOk());
    CHECK(a.status().message().find("architectures") != std::string::npos);
    a = architectureFromConfigText(R"({"architectures": [1]})");
    CHECK(a.status().isInvalidArgument());
    a = architectureFromConfigText("{not json");
    REQUIRE_FALSE(a.isOk());
    CHECK(a.status().message().find("config.json") != std::string::npos);
}

TEST_CASE("groups a llama checkpoint into pre, numerically ordered blocks and post") {
    auto names = llamaNames(11);
    // Shards often list tensors out of order: reverse to check the ordering.
    std::vector<std::string> shuffled(names.rbegin(), names.rend());
    auto g = groupIntoLayers(shuffled);
    REQUIRE(g.isOk());
    REQUIRE(g->size() == 13);
    CHECK((*g)[0].name == "pre");
    CHECK((*g)[0].position == LayerPosition::kPre);
    CHECK((*g)[0].tensorNames == std::vector<std::string>{"model.embed_tokens.weight"});
    for (int i = 0; i < 11; ++i) {
        const LayerGroup& b = (*g)[static_cast<size_t>(i + 1)];
        CHECK(b.name == "model.layers." + std::to_string(i));  // 10 after 9, not after 1
        CHECK(b.layerIndex == i);
        CHECK(b.index == i + 1);
        CHECK(b.tensorNames.size() == 9);
    }
    const LayerGroup& post = g->back();
    CHECK(post.name == "post");
    CHECK(post.index == 12);
    CHECK(post.tensorNames == std::vector<std::string>{"lm_head.weight", "model.norm.weight"});
}

TEST_CASE("groups gpt2 and bert checkpoints") {
    const std::vector<std::string> gpt2 = {"transformer.h.1.mlp.c_fc.weight", "transformer.wte.weight",
                                           "transformer.h.0.attn.c_attn.weight",
                                           "transformer.ln_f.bias", "transformer.wpe.weight",
                                           "transformer.h.1.ln_1.weight"};
    auto g = groupIntoLayers(gpt2);
    REQUIRE(g.isOk());
    REQUIRE(g->size() == 4);
    CHECK((*g)[0].tensorNames == std::vector<std::string>{"transformer.wte.weight", "transformer.wpe.weight"});
    CHECK((*g)[1].name == "transformer.h.0");
    CHECK((*g)[2].name == "transformer.h.1");
    CHECK((*g)[2].tensorNames.size() == 2);
    CHECK((*g)[3].tensorNames == std::vector<std::string>{"transformer.ln_f.bias"});

    const std::vector<std::string> bert = {"encoder.layer.0.output.dense.weight", "pooler.dense.bias",
                                           "embeddings.LayerNorm.weight"};
    g = groupIntoLayers(bert);
    REQUIRE(g.isOk());
    REQUIRE(g->size() == 3);
    CHECK((*g)[0].name == "pre");
    CHECK((*g)[1].name == "encoder.layer.0");
    CHECK((*g)[2].name == "post");
}

TEST_CASE("a checkpoint without embeddings or head has no pre or post group") {
    const std::vector<std::string> names = {"model.layers.1.mlp.up_proj.weight",
                                            "model.layers.0.mlp.up_proj.weight"};
    auto g = groupIntoLayers(names);
    REQUIRE(g.isOk());
    REQUIRE(g->size() == 2);
    CHECK((*g)[0].name == "model.layers.0");
    CHECK((*g)[0].index == 0);
    CHECK((*g)[1].name == "model.layers.1");
    auto empty = groupIntoLayers(std::vector<std::string>{});
    REQUIRE(empty.isOk());
    CHECK(empty->empty());
}

TEST_CASE("rejects duplicate and empty tensor names when grouping") {
    const std::vector<std::string> dup = {"model.layers.0.mlp.up_proj.weight",
                                          "model.layers.0.mlp.up_proj.weight"};
    auto g = groupIntoLayers(dup);
    REQUIRE_FALSE(g.isOk());
    CHECK(g.status().isInvalidArgument());
    CHECK(g.status().message().find("model.layers.0.mlp.up_proj.weight") != std::string::npos);
    const std::vector<std::string> empty = {"model.norm.weight", ""};
    CHECK(groupIntoLayers(empty).status().isInvalidArgument());
}

TEST_CASE("names the architectures and roles") {
    CHECK(std::string(architectureName(Architecture::kQwen2)) == "qwen2");
    CHECK(std::string(architectureName(Architecture::kGpt2)) == "gpt2");
    CHECK(std::string(tensorRoleName(TensorRole::kFfn)) == "ffn");
    CHECK(std::string(tensorRoleName(TensorRole::kHead)) == "head");
}

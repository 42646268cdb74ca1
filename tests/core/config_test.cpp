#include <doctest/doctest.h>

#include <thread>

#include "sli/config.h"

using namespace sli;

TEST_CASE("modes round trip through their strings") {
    for (QuantizationMode m : kAllModes) {
        auto r = parseMode(modeName(m));
        REQUIRE(r.isOk());
        CHECK(*r == m);
    }
    CHECK(*parseMode("NF4") == QuantizationMode::kNf4);
    auto bad = parseMode("int3");
    REQUIRE_FALSE(bad.isOk());
    CHECK(bad.status().isInvalidArgument());
    CHECK(bad.status().message().find("int8_dynamic") != std::string::npos);
}

TEST_CASE("defaults are the seed's") {
    QuantizationConfig c;
    CHECK(c.mode == QuantizationMode::kNone);
    CHECK(c.computeDType == DType::kF16);
    CHECK(c.compressStatistics);
    CHECK(c.quantStorageDType == DType::kU8);
    CHECK(c.doubleQuant);
    CHECK(c.quantType == "nf4");
    CHECK(c.llmInt8Threshold == 6.0);
    CHECK(c.llmInt8SkipModules.empty());
    CHECK(c.blocksize == 64);
    CHECK(c.validate().isOk());
}

TEST_CASE("to_dict and from_dict round trip exactly") {
    QuantizationConfig c = getNf4Config();
    c.computeDType = DType::kBF16;
    c.blocksize = 128;
    c.llmInt8Threshold = 3.5;
    c.llmInt8SkipModules = {"lm_head", "model.layers.0.mlp"};
    const std::string text = c.toJsonString();
    CHECK(text ==
          "{\"mode\": \"nf4\", \"compute_dtype\": \"bfloat16\", \"compress_statistics\": true, "
          "\"quant_storage_dtype\": \"uint8\", \"double_quant\": true, \"quant_type\": \"nf4\", "
          "\"llm_int8_threshold\": 3.5, \"llm_int8_skip_modules\": [\"lm_head\", "
          "\"model.layers.0.mlp\"], \"blocksize\": 128}");
    auto back = QuantizationConfig::fromJsonString(text);
    REQUIRE(back.isOk());
    CHECK(*back == c);
    CHECK(back->fingerprint() == c.fingerprint());
    CHECK(getInt8Config().fingerprint() != getNf4Config().fingerprint());
}

TEST_CASE("from_dict fills defaults for missing keys") {
    auto r = QuantizationConfig::fromJsonString(R"({"mode": "int8"})");
    REQUIRE(r.isOk());
    CHECK(r->mode == QuantizationMode::kInt8);
    CHECK(r->blocksize == 64);
    auto n = QuantizationConfig::fromJsonString(R"({"llm_int8_skip_modules": null})");
    CHECK(n.isOk());
    auto fp4 = QuantizationConfig::fromJsonString(R"({"mode": "fp4"})");
    REQUIRE(fp4.isOk());
    CHECK(fp4->quantType == "fp4");
}

TEST_CASE("validation rejects bad values with clear messages") {
    struct Case {
        const char* json;
        const char* mentions;
    } cases[] = {
        {R"({"mode": "nf4", "blocksize": 48})", "power of two"},
        {R"({"mode": "nf4", "blocksize": 8192})", "32..4096"},
        {R"({"mode": "fp4", "blocksize": 16})", "32..4096"},
        {R"({"llm_int8_threshold": -1})", "llm_int8_threshold"},
        {R"({"mode": "nf4", "quant_type": "fp4"})", "contradicts"},
        {R"({"mode": "fp4", "quant_type": "nf4"})", "contradicts"},
        {R"({"quant_type": "int2"})", "quant_type"},
        {R"({"bogus": 1})", "unknown config key \"bogus\""},
        {R"({"mode": 4})", "must be a string"},
        {R"({"double_quant": "yes"})", "must be a boolean"},
        {R"({"blocksize": 64.5})", "must be an integer"},
        {R"({"compute_dtype": "int8"})", "compute_dtype"},
        {R"({"compute_dtype": "float17"})", "unknown dtype"},
        {R"({"llm_int8_skip_modules": [1]})", "array of strings"},
        {R"({"mode": "int5"})", "unknown quantization mode"},
        {R"([1, 2])", "JSON object"},
        {R"({"mode": )", "invalid JSON"},
    };
    for (const auto& c : cases) {
        auto r = QuantizationConfig::fromJsonString(c.json);
        REQUIRE_MESSAGE(!r.isOk(), std::string(c.json));
        CHECK(r.status().isInvalidArgument());
        CHECK_MESSAGE(r.status().message().find(c.mentions) != std::string::npos,
                      std::string(c.json) << " -> " << r.status().message());
    }
}

TEST_CASE("skip modules match by simple name, dotted prefix or full name") {
    QuantizationConfig c;
    c.llmInt8SkipModules = {"lm_head", "model.layers.0.mlp", "model.layers.1.self_attn.q_proj.weight",
                            "embed_tokens"};
    CHECK(c.isSkipped("lm_head.weight"));
    CHECK(c.isSkipped("model.layers.0.mlp.up_proj.weight"));
    CHECK(c.isSkipped("model.layers.1.self_attn.q_proj.weight"));
    CHECK(c.isSkipped("model.embed_tokens.weight"));
    CHECK_FALSE(c.isSkipped("model.layers.1.self_attn.k_proj.weight"));
    CHECK_FALSE(c.isSkipped("model.layers.0.mlpx.up_proj.weight"));
    CHECK_FALSE(c.isSkipped("model.layers.10.mlp.up_proj.weight"));
    CHECK_FALSE(c.isSkipped("my_lm_head.weight"));
}

TEST_CASE("presets are the seed's") {
    CHECK(getInt8Config().mode == QuantizationMode::kInt8);
    CHECK(getInt8Config().isSkipped("lm_head.weight"));
    CHECK(getInt8Config().isSkipped("model.embed_tokens.weight"));
    CHECK(getNf4Config().mode == QuantizationMode::kNf4);
    CHECK(getNf4Config().doubleQuant);
    CHECK(getFp4Config().mode == QuantizationMode::kFp4);
    CHECK(getFp4Config().quantType == "fp4");
    for (auto c : {getInt8Config(), getNf4Config(), getFp4Config()}) CHECK(c.validate().isOk());
}

TEST_CASE("the registry has the built-ins and is safe to use from threads") {
    QuantizationRegistry reg;
    CHECK(reg.list() == std::vector<std::string>{"fp4", "int8", "nf4"});
    auto missing = reg.get("q3");
    REQUIRE_FALSE(missing.isOk());
    CHECK(missing.status().isNotFound());
    CHECK(missing.status().message().find("fp4, int8, nf4") != std::string::npos);
    CHECK(reg.registerConfig("nf4", getFp4Config()).isInvalidArgument());
    CHECK(reg.registerConfig("", getFp4Config()).isInvalidArgument());
    QuantizationConfig bad = getNf4Config();
    bad.blocksize = 7;
    CHECK(reg.registerConfig("bad", bad).isInvalidArgument());

    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&reg, t] {
            for (int i = 0; i < 50; ++i) {
                QuantizationConfig c = getNf4Config();
                c.blocksize = 32 << (i % 4);
                std::string name = std::to_string(t);  // (not "t" + ...: GCC 12 -Wrestrict)
                name.insert(0, 1, 't').append("_").append(std::to_string(i));
                (void)reg.registerConfig(name, c);
                (void)reg.get("nf4");
                (void)reg.list();
            }
        });
    }
    for (auto& th : threads) th.join();
    CHECK(reg.list().size() == 3 + 200);
    CHECK(reg.get("t2_5")->blocksize == 64);
    CHECK(QuantizationRegistry::global().contains("int8"));
}

#include "engine/ingest.h"

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>

#include "io/cache_format.h"
#include "io/file.h"
#include "io_test_util.h"
#include "sli/cache.h"

using namespace sli;
using sli::testing::TempDir;

namespace {

std::vector<std::string> planNames(const std::vector<std::string>& names) {
    std::vector<CheckpointTensor> ts;
    for (const auto& n : names) {
        CheckpointTensor t;
        t.name = n;
        ts.push_back(t);
    }
    std::vector<std::string> out;
    for (const auto& lp : planLayers(ts)) {
        std::string s = lp.name + ":";
        for (size_t i : lp.tensors) s += " " + names[i];
        out.push_back(s);
    }
    return out;
}

}  // namespace

TEST_CASE("tensors are grouped into execution-ordered layers") {
    auto p = planNames({"lm_head.weight", "model.layers.10.mlp.up_proj.weight",
                        "model.layers.2.self_attn.q_proj.weight", "model.norm.weight",
                        "model.embed_tokens.weight", "model.layers.2.mlp.up_proj.weight"});
    REQUIRE(p.size() == 4);
    CHECK(p[0] == "pre: model.embed_tokens.weight");
    CHECK(p[1] == "model.layers.2: model.layers.2.self_attn.q_proj.weight model.layers.2.mlp.up_proj.weight");
    CHECK(p[2] == "model.layers.10: model.layers.10.mlp.up_proj.weight");
    CHECK(p[3] == "post: lm_head.weight model.norm.weight");
    auto g = planNames({"transformer.wte.weight", "transformer.h.0.attn.c_attn.weight", "transformer.ln_f.weight"});
    REQUIRE(g.size() == 3);
    CHECK(g[1] == "transformer.h.0: transformer.h.0.attn.c_attn.weight");
    auto b = planNames({"embeddings.word_embeddings.weight", "encoder.layer.1.output.dense.weight",
                        "encoder.layer.0.output.dense.weight", "pooler.dense.weight"});
    REQUIRE(b.size() == 4);
    CHECK(b[1] == "encoder.layer.0: encoder.layer.0.output.dense.weight");
    CHECK(b[3] == "post: pooler.dense.weight");
}

TEST_CASE("ingesting in mode none keeps the bytes and reuses complete layers on a rerun") {
    TempDir dir;
    std::vector<uint16_t> w(64 * 32), n(32);
    for (size_t i = 0; i < w.size(); ++i) w[i] = f32ToF16(static_cast<float>(i % 17) * 0.25f - 2.0f);
    for (auto& x : n) x = f32ToF16(1.0f);
    std::vector<int64_t> ids = {0, 1, 2, 3};
    auto b = [](const auto& v) {
        return std::span(reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(v[0]));
    };
    const std::string ck = dir.file("m.safetensors");
    REQUIRE(writeSafetensors(ck, {{"model.embed_tokens.weight", DType::kF16, {64, 32}, b(w)},
                                  {"model.layers.0.mlp.up_proj.weight", DType::kF16, {64, 32}, b(w)},
                                  {"model.layers.0.input_layernorm.weight", DType::kF16, {32}, b(n)},
                                  {"position_ids", DType::kI64, {4}, b(ids)}})
                .isOk());
    IngestOptions opt;
    opt.input = ck;
    opt.cacheRoot = dir.file("cache");
    opt.modelId = "m";
    auto sum = ingestCheckpoint(opt);
    REQUIRE(sum.isOk());
    CHECK(sum->layers == 3);
    CHECK(sum->layersWritten == 3);
    auto cache = LayerCache::open(opt.cacheRoot);
    REQUIRE(cache.isOk());
    auto l1 = (*cache)->getLayer("m", 1, opt.config);
    REQUIRE(l1.isOk());
    REQUIRE(l1->tensors.size() == 2);
    CHECK(l1->tensors[0].info.mode == QuantizationMode::kNone);
    CHECK(std::memcmp(l1->tensors[0].parts[0].data(), w.data(), w.size() * 2) == 0);
    auto l2 = (*cache)->getLayer("m", 2, opt.config);
    REQUIRE(l2.isOk());
    CHECK(l2->tensors[0].info.storedDType == DType::kI64);  // integer tensors kept verbatim
    auto again = ingestCheckpoint(opt);
    REQUIRE(again.isOk());
    CHECK(again->layersReused == 3);
    CHECK(again->layersWritten == 0);
}

TEST_CASE("quantized modes go through the kernels; embeddings and norms stay unquantized") {
    TempDir dir;
    std::vector<float> w(64 * 64);
    for (size_t i = 0; i < w.size(); ++i) w[i] = std::sin(static_cast<float>(i)) * 0.1f;
    auto b = std::span(reinterpret_cast<const uint8_t*>(w.data()), w.size() * 4);
    const std::string ck = dir.file("m.safetensors");
    REQUIRE(writeSafetensors(ck, {{"model.embed_tokens.weight", DType::kF32, {64, 64}, b},
                                  {"model.layers.0.mlp.up_proj.weight", DType::kF32, {64, 64}, b}})
                .isOk());
    IngestOptions opt;
    opt.input = ck;
    opt.cacheRoot = dir.file("cache");
    opt.config = getNf4Config();
    auto sum = ingestCheckpoint(opt);
    if (!sum.isOk() && sum.status().isNotSupported()) {
        MESSAGE("kernels not built: " << sum.status().message());
        return;
    }
    REQUIRE(sum.isOk());
    CHECK(sum->modelId == io::baseName(dir.path()));
    auto cache = LayerCache::open(opt.cacheRoot);
    auto pre = (*cache)->getLayer(sum->modelId, 0, opt.config);
    REQUIRE(pre.isOk());
    CHECK(pre->tensors[0].info.mode == QuantizationMode::kNone);
    auto blk = (*cache)->getLayer(sum->modelId, 1, opt.config);
    REQUIRE(blk.isOk());
    CHECK(blk->tensors[0].info.mode == QuantizationMode::kNf4);
    CHECK(blk->tensors[0].info.doubleQuant);
    opt.defaultSkips = false;
    opt.cacheRoot = dir.file("cache2");
    REQUIRE(ingestCheckpoint(opt).isOk());
    auto c2 = LayerCache::open(opt.cacheRoot);
    CHECK((*c2)->getLayer(sum->modelId, 0, opt.config)->tensors[0].info.mode == QuantizationMode::kNf4);
}

TEST_CASE("an incomplete bitsandbytes set is refused naming the tensor") {
    TempDir dir;
    std::vector<uint8_t> packed(32), qs;
    const std::string js = R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [8, 8]})";
    qs.assign(js.begin(), js.end());
    const std::string ck = dir.file("b.safetensors");
    REQUIRE(writeSafetensors(ck, {{"l.weight", DType::kU8, {32, 1}, packed},
                                  {"l.weight.quant_state.bitsandbytes__nf4", DType::kU8,
                                   {static_cast<int64_t>(qs.size())}, qs}})
                .isOk());
    auto m = SafetensorsModel::open(ck);
    REQUIRE(m.isOk());
    auto t = collectCheckpointTensors(*m);
    REQUIRE_FALSE(t.isOk());
    CHECK(t.status().message().find("l.weight") != std::string::npos);
}

TEST_CASE("a bitsandbytes 4-bit set is imported with its bytes and metadata") {
    TempDir dir;
    std::vector<uint8_t> packed(32);
    for (size_t i = 0; i < packed.size(); ++i) packed[i] = static_cast<uint8_t>(i * 13);
    std::vector<float> absmax = {0.5f}, qmap(16);
    for (int i = 0; i < 16; ++i) qmap[i] = static_cast<float>(i) / 15.0f;
    const std::string js = R"({"quant_type": "fp4", "blocksize": 64, "dtype": "bfloat16", "shape": [8, 8]})";
    std::vector<uint8_t> qs(js.begin(), js.end());
    auto f = [](const std::vector<float>& v) {
        return std::span(reinterpret_cast<const uint8_t*>(v.data()), v.size() * 4);
    };
    const std::string ck = dir.file("b.safetensors");
    REQUIRE(writeSafetensors(ck, {{"l.weight", DType::kU8, {32, 1}, packed},
                                  {"l.weight.absmax", DType::kF32, {1}, f(absmax)},
                                  {"l.weight.quant_map", DType::kF32, {16}, f(qmap)},
                                  {"l.weight.quant_state.bitsandbytes__fp4", DType::kU8,
                                   {static_cast<int64_t>(qs.size())}, qs}})
                .isOk());
    auto m = SafetensorsModel::open(ck);
    REQUIRE(m.isOk());
    auto ts = collectCheckpointTensors(*m);
    REQUIRE(ts.isOk());
    REQUIRE(ts->size() == 1);
    auto qt = importBnbTensor(*m, (*ts)[0], {});
    REQUIRE(qt.isOk());
    CHECK(qt->info.mode == QuantizationMode::kFp4);
    CHECK(qt->info.shape == std::vector<int64_t>{8, 8});
    CHECK(qt->info.computeDType == DType::kBF16);
    CHECK(std::memcmp(qt->part(QuantPart::kPayload).data(), packed.data(), 32) == 0);
    CHECK(std::memcmp(qt->part(QuantPart::kQuantMap).data(), qmap.data(), 64) == 0);
}

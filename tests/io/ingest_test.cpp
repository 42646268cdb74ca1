#include "engine/ingest.h"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <cmath>
#include <cstring>

#include "io/cache_format.h"
#include "io/file.h"
#include "file_damage.h"
#include "io_test_util.h"
#include "io/cache_manifest.h"
#include "sli/cache.h"
#include "sli/kernels.h"
#include "sli/quantizer.h"

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
    auto plan = planLayers(ts);
    REQUIRE(plan.isOk());
    for (size_t k = 0; k < plan->size(); ++k) {
        const LayerPlan& lp = (*plan)[k];
        CHECK(lp.index == static_cast<int64_t>(k));  // layer index = execution order
        std::string s = lp.name + ":";
        for (size_t i : lp.tensors) s += " " + names[i];
        out.push_back(s);
    }
    return out;
}

template <typename T>
std::span<const uint8_t> bytesOf(const std::vector<T>& v) {
    return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}

// Deterministic f32 values, about N(0, 0.05)-sized.
std::vector<float> values(size_t n, uint32_t seed) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) {
        v[i] = std::sin(static_cast<float>(i * 7 + seed * 131) * 0.37f) * 0.05f;
    }
    return v;
}

struct Ckpt {
    std::vector<std::vector<float>> data;  // keeps the bytes alive
    std::vector<SafetensorsInput> inputs;
    void add(const std::string& name, std::vector<int64_t> shape) {
        size_t n = 1;
        for (auto d : shape) n *= static_cast<size_t>(d);
        data.push_back(values(n, static_cast<uint32_t>(data.size() + 1)));
        inputs.push_back({name, DType::kF32, std::move(shape), bytesOf(data.back())});
    }
    std::string write(const TempDir& dir, const std::string& file) const {
        const std::string path = dir.file(file);
        REQUIRE(writeSafetensors(path, inputs).isOk());
        return path;
    }
};

// A small Llama-shaped checkpoint: embeddings, `layers` blocks, final norm, lm_head.
Ckpt llamaCkpt(int layers) {
    Ckpt c;
    c.add("model.embed_tokens.weight", {64, 64});
    for (int l = 0; l < layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        c.add(p + "input_layernorm.weight", {64});
        c.add(p + "self_attn.q_proj.weight", {64, 64});
        c.add(p + "self_attn.k_proj.weight", {32, 64});
        c.add(p + "mlp.up_proj.weight", {128, 64});
        c.add(p + "mlp.down_proj.weight", {64, 128});
    }
    c.add("model.norm.weight", {64});
    c.add("lm_head.weight", {64, 64});
    return c;
}

bool kernelsMissing(const Status& st) {
    if (st.isNotSupported()) {
        MESSAGE("kernels not built: " << st.message());
        return true;
    }
    return false;
}

// Layer `index` of opt's cache (model opt.modelId, plain config), read back whole.
QuantizedLayer cachedLayer(const IngestOptions& opt, int64_t index) {
    auto cache = LayerCache::open(opt.cacheRoot);
    REQUIRE(cache.isOk());
    auto l = (*cache)->getLayer(opt.modelId, index, opt.config);
    REQUIRE(l.isOk());
    return std::move(l).value();
}

QuantizationMode modeOf(const QuantizedLayer& l, const std::string& name) {
    const QuantizedTensor* t = l.find(name);
    REQUIRE(t != nullptr);
    return t->info.mode;
}

}  // namespace

TEST_CASE("tensors are grouped into execution-ordered layers by the architecture registry") {
    auto p = planNames({"lm_head.weight", "model.layers.10.mlp.up_proj.weight",
                        "model.layers.2.self_attn.q_proj.weight", "model.norm.weight",
                        "model.embed_tokens.weight", "model.layers.2.mlp.up_proj.weight"});
    REQUIRE(p.size() == 4);
    CHECK(p[0] == "pre: model.embed_tokens.weight");
    CHECK(p[1] == "model.layers.2: model.layers.2.self_attn.q_proj.weight model.layers.2.mlp.up_proj.weight");
    CHECK(p[2] == "model.layers.10: model.layers.10.mlp.up_proj.weight");
    CHECK(p[3] == "post: lm_head.weight model.norm.weight");
    auto g = planNames({"transformer.wte.weight", "transformer.h.1.mlp.c_fc.weight",
                        "transformer.h.0.attn.c_attn.weight", "transformer.wpe.weight",
                        "transformer.ln_f.weight"});
    REQUIRE(g.size() == 4);
    CHECK(g[0] == "pre: transformer.wte.weight transformer.wpe.weight");
    CHECK(g[1] == "transformer.h.0: transformer.h.0.attn.c_attn.weight");
    CHECK(g[2] == "transformer.h.1: transformer.h.1.mlp.c_fc.weight");
    CHECK(g[3] == "post: transformer.ln_f.weight");
    auto b = planNames({"embeddings.word_embeddings.weight", "encoder.layer.1.output.dense.weight",
                        "encoder.layer.0.output.dense.weight", "pooler.dense.weight",
                        "embeddings.LayerNorm.weight"});
    REQUIRE(b.size() == 4);
    CHECK(b[0] == "pre: embeddings.word_embeddings.weight embeddings.LayerNorm.weight");
    CHECK(b[1] == "encoder.layer.0: encoder.layer.0.output.dense.weight");
    CHECK(b[3] == "post: pooler.dense.weight");
    // Only blocks: the first block is layer 0.
    auto o = planNames({"model.layers.1.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight"});
    REQUIRE(o.size() == 2);
    CHECK(o[0] == "model.layers.0: model.layers.0.mlp.up_proj.weight");
}

TEST_CASE("a duplicate tensor name is refused by the layer plan") {
    std::vector<CheckpointTensor> ts(2);
    ts[0].name = ts[1].name = "model.layers.0.mlp.up_proj.weight";
    auto plan = planLayers(ts);
    REQUIRE_FALSE(plan.isOk());
    CHECK(plan.status().message().find("model.layers.0.mlp.up_proj.weight") != std::string::npos);
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

TEST_CASE("the default model id is the input directory's name, trailing slash or \".\" alike") {
    TempDir dir;
    REQUIRE(io::makeDirs(dir.file("tiny-model")).isOk());
    Ckpt ck;
    ck.add("model.embed_tokens.weight", {8, 8});
    ck.add("model.norm.weight", {8});
    ck.write(dir, "tiny-model/model.safetensors");
    for (const std::string& input : {dir.file("tiny-model"), dir.file("tiny-model/"),
                                    dir.file("tiny-model//"), dir.file("tiny-model/."),
                                    dir.file("tiny-model/model.safetensors")}) {
        CAPTURE(input);
        IngestOptions opt;
        opt.input = input;
        opt.cacheRoot = dir.file("cache");
        auto sum = ingestCheckpoint(opt);
        REQUIRE(sum.isOk());
        CHECK(sum->modelId == "tiny-model");
        CHECK(sum->layers == 2);
    }
}

TEST_CASE("a checkpoint rewritten with other shapes is quantized again, not reused") {
    TempDir dir;
    IngestOptions opt;
    opt.cacheRoot = dir.file("cache");
    opt.modelId = std::string("m");  // not = "...": GCC 12 -Wrestrict false positive
    for (const std::vector<int64_t>& shape : {std::vector<int64_t>{64, 32}, {32, 64}}) {
        CAPTURE(shapeToString(shape));
        Ckpt ck;
        ck.add("model.layers.0.mlp.up_proj.weight", shape);
        opt.input = ck.write(dir, "m.safetensors");  // same names, dtype and offsets
        auto sum = ingestCheckpoint(opt);
        REQUIRE(sum.isOk());
        CHECK(sum->layersWritten == 1);
        CHECK(cachedLayer(opt, 0).tensors.at(0).info.shape == shape);
    }
}

TEST_CASE("a checkpoint rewritten with other weights under the same header is quantized again") {
    TempDir dir;
    IngestOptions opt;
    opt.cacheRoot = dir.file("cache");
    opt.modelId = std::string("m");  // not = "...": GCC 12 -Wrestrict false positive
    std::vector<uint8_t> firstPayload;
    for (int round = 0; round < 2; ++round) {
        CAPTURE(round);
        Ckpt ck;
        ck.add("model.layers.0.mlp.up_proj.weight", {64, 32});
        if (round == 1) {  // a "fine-tune": every weight moves a little
            for (float& x : ck.data[0]) x *= 1.01f;
            ck.inputs[0].bytes = bytesOf(ck.data[0]);
        }
        opt.input = ck.write(dir, "m.safetensors");  // identical header both times
        auto sum = ingestCheckpoint(opt);
        REQUIRE(sum.isOk());
        CHECK(sum->layersWritten == 1);
        CHECK(sum->layersReused == 0);
        const QuantizedLayer l = cachedLayer(opt, 0);
        const auto& part = l.tensors.at(0).parts[0];
        std::vector<uint8_t> payload(part.data(), part.data() + part.size());
        if (round == 0) {
            firstPayload = payload;
        } else {
            CHECK(payload != firstPayload);  // the new weights, not the stale cache
        }
    }
}

TEST_CASE("models whose ids once shared a cache folder keep separate caches under one root") {
    // "a/b" and "a--b" (likewise "a b" / "a_b", "a-/b" / "a/-b") were both spelled "a--b"
    // ("a_b", "a---b"): the second model overwrote the first one's cache.
    TempDir dir;
    const Ckpt small = llamaCkpt(1);  // 3 layers
    const Ckpt large = llamaCkpt(2);  // 4 layers
    const std::string smallPath = small.write(dir, "small.safetensors");
    const std::string largePath = large.write(dir, "large.safetensors");
    const std::vector<std::pair<std::string, std::string>> pairs = {
        {"a/b", "a--b"}, {"a b", "a_b"}, {"a-/b", "a/-b"}};
    for (const auto& [first, second] : pairs) {
        CAPTURE(first);
        CAPTURE(second);
        const std::string root = dir.file("cache");
        std::vector<std::string> cacheDirs;
        for (const auto& [id, path] : {std::pair{first, smallPath}, std::pair{second, largePath}}) {
            IngestOptions opt;
            opt.input = path;
            opt.cacheRoot = root;
            opt.modelId = id;
            opt.config = getInt8Config();
            auto sum = ingestCheckpoint(opt);
            if (!sum.isOk() && kernelsMissing(sum.status())) return;
            REQUIRE_MESSAGE(sum.isOk(), sum.status().toString());
            CHECK(sum->modelId == id);
            CHECK(sum->cacheDir == io::cacheDirFor(root, id, opt.config.fingerprint()));
            cacheDirs.push_back(sum->cacheDir);
        }
        CHECK(cacheDirs[0] != cacheDirs[1]);
        // Both caches are intact: each manifest names its own model and layers, and every
        // layer file it lists is there and reads back with its model's id.
        for (size_t k = 0; k < 2; ++k) {
            const std::string& id = k == 0 ? first : second;
            auto m = io::readManifest(cacheDirs[k]);
            REQUIRE_MESSAGE(m.isOk(), m.status().toString());
            CHECK(m->modelId == id);
            CHECK(m->layers.size() == (k == 0 ? 3u : 4u));
            for (const auto& l : m->layers) {
                const std::string file = io::joinPath(cacheDirs[k], l.file);
                auto layer = io::readLayerFile(file, true);
                REQUIRE_MESSAGE(layer.isOk(), layer.status().toString());
                CHECK(layer->tensors.size() == l.tensors);
                auto index = io::readLayerIndex(file);
                REQUIRE(index.isOk());
                CHECK(index->modelId == id);
            }
        }
    }
}

TEST_CASE("a Llama checkpoint keeps embeddings, norms and lm_head unquantized by default") {
    TempDir dir;
    const Ckpt ck = llamaCkpt(2);
    IngestOptions opt;
    opt.input = ck.write(dir, "m.safetensors");
    opt.cacheRoot = dir.file("cache");
    opt.config = getNf4Config();
    auto sum = ingestCheckpoint(opt);
    if (!sum.isOk() && kernelsMissing(sum.status())) return;
    REQUIRE(sum.isOk());
    CHECK(sum->modelId == io::baseName(dir.path()));
    CHECK(sum->architecture == Architecture::kLlama);
    CHECK(sum->layers == 4);
    CHECK(sum->cacheDir == io::cacheDirFor(opt.cacheRoot, sum->modelId, opt.config.fingerprint()));
    auto manifest = io::readManifest(sum->cacheDir);
    REQUIRE(manifest.isOk());
    CHECK(manifest->architecture == "llama");
    CHECK(manifest->policyJson.empty());
    REQUIRE(manifest->layers.size() == 4);
    CHECK(manifest->layers[0].name == "pre");
    CHECK(manifest->layers[1].name == "model.layers.0");
    CHECK(manifest->layers[3].name == "post");
    auto cache = LayerCache::open(opt.cacheRoot);
    REQUIRE(cache.isOk());
    auto pre = (*cache)->getLayer(sum->modelId, 0, opt.config);
    REQUIRE(pre.isOk());
    CHECK(modeOf(*pre, "model.embed_tokens.weight") == QuantizationMode::kNone);
    auto blk = (*cache)->getLayer(sum->modelId, 1, opt.config);
    REQUIRE(blk.isOk());
    CHECK(modeOf(*blk, "model.layers.0.input_layernorm.weight") == QuantizationMode::kNone);
    CHECK(modeOf(*blk, "model.layers.0.self_attn.q_proj.weight") == QuantizationMode::kNf4);
    CHECK(modeOf(*blk, "model.layers.0.mlp.up_proj.weight") == QuantizationMode::kNf4);
    CHECK(blk->find("model.layers.0.mlp.up_proj.weight")->info.doubleQuant);
    auto post = (*cache)->getLayer(sum->modelId, 3, opt.config);
    REQUIRE(post.isOk());
    CHECK(modeOf(*post, "lm_head.weight") == QuantizationMode::kNone);
    CHECK(modeOf(*post, "model.norm.weight") == QuantizationMode::kNone);
    // The quantized bytes are the quantizer's for the same tensor.
    const TensorView src{"model.layers.0.mlp.up_proj.weight", ck.inputs[4].shape, DType::kF32,
                         ck.inputs[4].bytes.data(), ck.inputs[4].bytes.size()};
    REQUIRE(src.name == ck.inputs[4].name);
    auto want = LayerQuantizer(opt.config).quantizeTensor(src);
    REQUIRE(want.isOk());
    const QuantizedTensor* got = blk->find("model.layers.0.mlp.up_proj.weight");
    for (int p = 0; p < kQuantPartCount; ++p) {
        REQUIRE(got->parts[p].size() == want->parts[p].size());
        CHECK(std::memcmp(got->parts[p].data(), want->parts[p].data(), got->parts[p].size()) == 0);
    }
}

TEST_CASE("--skip adds to the default skips and --no-default-skips quantizes them too") {
    TempDir dir;
    const Ckpt ck = llamaCkpt(1);
    IngestOptions opt;
    opt.input = ck.write(dir, "m.safetensors");
    opt.cacheRoot = dir.file("cache");
    opt.modelId = "m";
    opt.config = getInt8Config();
    opt.config.llmInt8SkipModules = {"model.layers.0.mlp"};  // what --skip appends to
    auto sum = ingestCheckpoint(opt);
    if (!sum.isOk() && kernelsMissing(sum.status())) return;
    REQUIRE(sum.isOk());
    auto cache = LayerCache::open(opt.cacheRoot);
    REQUIRE(cache.isOk());
    auto blk = (*cache)->getLayer("m", 1, opt.config);
    REQUIRE(blk.isOk());
    CHECK(modeOf(*blk, "model.layers.0.self_attn.q_proj.weight") == QuantizationMode::kInt8);
    CHECK(modeOf(*blk, "model.layers.0.mlp.up_proj.weight") == QuantizationMode::kNone);
    CHECK(modeOf(*blk, "model.layers.0.mlp.down_proj.weight") == QuantizationMode::kNone);
    CHECK(modeOf(*(*cache)->getLayer("m", 0, opt.config), "model.embed_tokens.weight") ==
          QuantizationMode::kNone);

    // Without default skips: a cache of its own beside the first, embeddings and lm_head
    // quantized, the explicit skip still honoured.
    opt.config.llmInt8SkipModules = {"model.layers.0.mlp"};
    opt.defaultSkips = false;
    auto nds = ingestCheckpoint(opt);
    REQUIRE(nds.isOk());
    CHECK(nds->layersWritten == 3);  // nothing reused from the other policy
    CHECK(nds->cacheDir != sum->cacheDir);
    const std::string policy = ingestPolicyJson(opt);
    CHECK(policy == R"({"default_skips": false})");
    auto manifest = io::readManifest(nds->cacheDir);
    REQUIRE(manifest.isOk());
    CHECK(manifest->policyJson == policy);
    CHECK(manifest->configFingerprint == LayerCache::fingerprint(opt.config, policy));
    CHECK(manifest->configFingerprint != opt.config.fingerprint());
    auto pre = (*cache)->getLayer("m", 0, opt.config, policy);
    REQUIRE(pre.isOk());
    CHECK(modeOf(*pre, "model.embed_tokens.weight") == QuantizationMode::kInt8);
    auto blk2 = (*cache)->getLayer("m", 1, opt.config, policy);
    REQUIRE(blk2.isOk());
    CHECK(modeOf(*blk2, "model.layers.0.mlp.up_proj.weight") == QuantizationMode::kNone);
    auto post = (*cache)->getLayer("m", 2, opt.config, policy);
    REQUIRE(post.isOk());
    CHECK(modeOf(*post, "lm_head.weight") == QuantizationMode::kInt8);
    CHECK(modeOf(*post, "model.norm.weight") == QuantizationMode::kNone);  // 1-D
}

TEST_CASE("the mixed preset quantizes attention to int8 and FFN to nf4 in a cache of its own") {
    TempDir dir;
    const Ckpt ck = llamaCkpt(1);
    IngestOptions opt;
    opt.input = ck.write(dir, "m.safetensors");
    opt.cacheRoot = dir.file("cache");
    opt.modelId = "m";
    useAdaptivePolicy(opt, getMixedPrecisionConfig());
    CHECK(opt.config == getNf4Config());
    auto mixed = ingestCheckpoint(opt);
    if (!mixed.isOk() && kernelsMissing(mixed.status())) return;
    REQUIRE(mixed.isOk());
    const std::string policy = ingestPolicyJson(opt);
    CHECK(policy.find("\"attention\"") != std::string::npos);
    CHECK(policy.find("\"int8\"") != std::string::npos);

    IngestOptions plain = opt;
    plain.attentionConfig.reset();
    plain.ffnConfig.reset();
    CHECK(ingestPolicyJson(plain).empty());
    auto nf4 = ingestCheckpoint(plain);
    REQUIRE(nf4.isOk());
    CHECK(nf4->layersWritten == 3);
    CHECK(nf4->cacheDir != mixed->cacheDir);

    auto m = io::readManifest(mixed->cacheDir);
    REQUIRE(m.isOk());
    CHECK(m->policyJson == policy);
    CHECK(m->configJson == getNf4Config().toJsonString());
    auto cache = LayerCache::open(opt.cacheRoot);
    REQUIRE(cache.isOk());
    auto blk = (*cache)->getLayer("m", 1, opt.config, policy);
    REQUIRE(blk.isOk());
    CHECK(modeOf(*blk, "model.layers.0.self_attn.q_proj.weight") == QuantizationMode::kInt8);
    CHECK(modeOf(*blk, "model.layers.0.self_attn.k_proj.weight") == QuantizationMode::kInt8);
    CHECK(modeOf(*blk, "model.layers.0.mlp.up_proj.weight") == QuantizationMode::kNf4);
    CHECK(modeOf(*blk, "model.layers.0.input_layernorm.weight") == QuantizationMode::kNone);
    CHECK(modeOf(*(*cache)->getLayer("m", 0, opt.config, policy), "model.embed_tokens.weight") ==
          QuantizationMode::kNone);
    auto plainBlk = (*cache)->getLayer("m", 1, opt.config);
    REQUIRE(plainBlk.isOk());
    CHECK(modeOf(*plainBlk, "model.layers.0.self_attn.q_proj.weight") == QuantizationMode::kNf4);
    // The tensors equal what the AdaptiveQuantizer makes of the same layer.
    Layer layer("model.layers.0");
    for (const auto& in : ck.inputs) {
        if (in.name.rfind("model.layers.0.", 0) != 0) continue;
        REQUIRE(layer.add(*Tensor::fromBytes(in.name, in.shape, in.dtype, in.bytes)).isOk());
    }
    auto want = getMixedPrecisionConfig().quantizeLayer(layer);
    REQUIRE(want.isOk());
    REQUIRE(want->tensors.size() == blk->tensors.size());
    for (size_t i = 0; i < want->tensors.size(); ++i) {
        CHECK(want->tensors[i].info.mode == blk->tensors[i].info.mode);
        CHECK(std::memcmp(want->tensors[i].parts[0].data(), blk->tensors[i].parts[0].data(),
                          want->tensors[i].parts[0].size()) == 0);
    }
    // A rerun of the mixed preset reuses its own layers.
    auto again = ingestCheckpoint(opt);
    REQUIRE(again.isOk());
    CHECK(again->layersReused == 3);
    CHECK(again->cacheDir == mixed->cacheDir);
}

TEST_CASE("GPT-2 Conv1D weights are transposed to [out, in] before they are quantized") {
    TempDir dir;
    Ckpt ck;
    ck.add("transformer.wte.weight", {64, 32});
    ck.add("transformer.wpe.weight", {16, 32});
    ck.add("transformer.h.0.ln_1.weight", {32});
    ck.add("transformer.h.0.attn.c_attn.weight", {32, 96});  // Conv1D: [in, out]
    ck.add("transformer.h.0.attn.c_attn.bias", {96});
    ck.add("transformer.h.0.mlp.c_fc.weight", {32, 128});
    ck.add("transformer.h.0.mlp.c_proj.weight", {128, 32});
    ck.add("transformer.ln_f.weight", {32});
    IngestOptions opt;
    opt.input = ck.write(dir, "gpt2.safetensors");
    opt.cacheRoot = dir.file("cache");
    opt.modelId = "gpt2";
    opt.config = getInt8Config();
    opt.config.llmInt8SkipModules = {"transformer.h.0.mlp.c_proj"};
    auto sum = ingestCheckpoint(opt);
    if (!sum.isOk() && kernelsMissing(sum.status())) return;
    REQUIRE(sum.isOk());
    CHECK(sum->architecture == Architecture::kGpt2);
    REQUIRE(sum->layers == 3);
    auto cache = LayerCache::open(opt.cacheRoot);
    REQUIRE(cache.isOk());
    auto pre = (*cache)->getLayer("gpt2", 0, opt.config);
    REQUIRE(pre.isOk());
    CHECK(pre->name == "pre");
    CHECK(modeOf(*pre, "transformer.wte.weight") == QuantizationMode::kNone);
    CHECK(modeOf(*pre, "transformer.wpe.weight") == QuantizationMode::kNone);
    auto blk = (*cache)->getLayer("gpt2", 1, opt.config);
    REQUIRE(blk.isOk());
    CHECK(blk->name == "transformer.h.0");
    const QuantizedTensor* attn = blk->find("transformer.h.0.attn.c_attn.weight");
    REQUIRE(attn != nullptr);
    CHECK(attn->info.mode == QuantizationMode::kInt8);
    CHECK(attn->info.shape == std::vector<int64_t>{96, 32});
    CHECK(blk->find("transformer.h.0.mlp.c_fc.weight")->info.shape == std::vector<int64_t>{128, 32});
    // Kept unquantized: stays [in, out] as stored.
    const QuantizedTensor* kept = blk->find("transformer.h.0.mlp.c_proj.weight");
    CHECK(kept->info.mode == QuantizationMode::kNone);
    CHECK(kept->info.shape == std::vector<int64_t>{128, 32});
    // The int8 bytes are the quantizer's for the transposed source.
    const std::vector<float>& w = ck.data[3];
    std::vector<float> t(w.size());
    for (int r = 0; r < 32; ++r) {
        for (int c = 0; c < 96; ++c) t[static_cast<size_t>(c * 32 + r)] = w[static_cast<size_t>(r * 96 + c)];
    }
    const std::vector<int64_t> shape = {96, 32};
    auto want = LayerQuantizer(opt.config).quantizeTensor(
        {"transformer.h.0.attn.c_attn.weight", shape, DType::kF32, t.data(), t.size() * 4});
    REQUIRE(want.isOk());
    for (int p : {0, 1}) {
        REQUIRE(attn->parts[p].size() == want->parts[p].size());
        CHECK(std::memcmp(attn->parts[p].data(), want->parts[p].data(), attn->parts[p].size()) == 0);
    }
    auto post = (*cache)->getLayer("gpt2", 2, opt.config);
    REQUIRE(post.isOk());
    CHECK(modeOf(*post, "transformer.ln_f.weight") == QuantizationMode::kNone);

    // Mode none: nothing is transposed.
    opt.config = QuantizationConfig{};
    opt.cacheRoot = dir.file("cache-none");
    REQUIRE(ingestCheckpoint(opt).isOk());
    auto c2 = LayerCache::open(opt.cacheRoot);
    auto b2 = (*c2)->getLayer("gpt2", 1, opt.config);
    REQUIRE(b2.isOk());
    CHECK(b2->find("transformer.h.0.attn.c_attn.weight")->info.shape == std::vector<int64_t>{32, 96});
}

TEST_CASE("int4 decides on a GPT-2 Conv1D weight's [out, in] rows and keeps it [in, out] when not quantized") {
    TempDir dir;
    Ckpt ck;
    ck.add("transformer.wte.weight", {64, 48});
    ck.add("transformer.h.0.attn.c_attn.weight", {48, 64});  // [in, out]: [out, in] rows of 48
    ck.add("transformer.h.0.mlp.c_fc.weight", {64, 48});     // [in, out]: [out, in] rows of 64
    ck.add("transformer.ln_f.weight", {48});
    IngestOptions opt;
    opt.input = ck.write(dir, "gpt2.safetensors");
    opt.cacheRoot = dir.file("cache");
    opt.modelId = "gpt2";
    opt.config.mode = QuantizationMode::kInt4;
    auto sum = ingestCheckpoint(opt);
    if (!sum.isOk() && kernelsMissing(sum.status())) return;
    REQUIRE(sum.isOk());
    REQUIRE(sum->architecture == Architecture::kGpt2);
    auto cache = LayerCache::open(opt.cacheRoot);
    REQUIRE(cache.isOk());
    auto blk = (*cache)->getLayer("gpt2", 1, opt.config);
    REQUIRE(blk.isOk());
    // Rows of 48 after the transpose: kept, as stored.
    const QuantizedTensor* attn = blk->find("transformer.h.0.attn.c_attn.weight");
    REQUIRE(attn != nullptr);
    CHECK(attn->info.mode == QuantizationMode::kNone);
    CHECK(attn->info.shape == std::vector<int64_t>{48, 64});
    QuantizationConfig keep = opt.config;
    keep.mode = QuantizationMode::kNone;
    const std::vector<int64_t> stored = {48, 64};
    auto want = LayerQuantizer(keep).quantizeTensor({"transformer.h.0.attn.c_attn.weight", stored,
                                                     DType::kF32, ck.data[1].data(),
                                                     ck.data[1].size() * 4});
    REQUIRE(want.isOk());
    REQUIRE(attn->parts[0].size() == want->parts[0].size());
    CHECK(std::memcmp(attn->parts[0].data(), want->parts[0].data(), want->parts[0].size()) == 0);
    // Rows of 64 after the transpose: quantized as [out, in].
    const QuantizedTensor* fc = blk->find("transformer.h.0.mlp.c_fc.weight");
    REQUIRE(fc != nullptr);
    CHECK(fc->info.mode == QuantizationMode::kInt4);
    CHECK(fc->info.shape == std::vector<int64_t>{48, 64});
}

TEST_CASE("a BERT checkpoint keeps embeddings, LayerNorms and the pooler unquantized") {
    TempDir dir;
    Ckpt ck;
    ck.add("embeddings.word_embeddings.weight", {64, 32});
    ck.add("embeddings.LayerNorm.weight", {32});
    for (int l = 0; l < 2; ++l) {
        const std::string p = "encoder.layer." + std::to_string(l) + ".";
        ck.add(p + "attention.self.query.weight", {32, 32});
        ck.add(p + "attention.output.dense.weight", {32, 32});
        ck.add(p + "attention.output.LayerNorm.weight", {32});
        ck.add(p + "intermediate.dense.weight", {64, 32});
        ck.add(p + "output.dense.weight", {32, 64});
    }
    ck.add("pooler.dense.weight", {32, 32});
    IngestOptions opt;
    opt.input = ck.write(dir, "bert.safetensors");
    opt.cacheRoot = dir.file("cache");
    opt.modelId = "bert";
    useAdaptivePolicy(opt, getMixedPrecisionConfig());
    auto sum = ingestCheckpoint(opt);
    if (!sum.isOk() && kernelsMissing(sum.status())) return;
    REQUIRE(sum.isOk());
    CHECK(sum->architecture == Architecture::kBert);
    REQUIRE(sum->layers == 4);
    const std::string policy = ingestPolicyJson(opt);
    auto cache = LayerCache::open(opt.cacheRoot);
    REQUIRE(cache.isOk());
    auto pre = (*cache)->getLayer("bert", 0, opt.config, policy);
    REQUIRE(pre.isOk());
    CHECK(modeOf(*pre, "embeddings.word_embeddings.weight") == QuantizationMode::kNone);
    auto l1 = (*cache)->getLayer("bert", 2, opt.config, policy);
    REQUIRE(l1.isOk());
    CHECK(l1->name == "encoder.layer.1");
    CHECK(modeOf(*l1, "encoder.layer.1.attention.self.query.weight") == QuantizationMode::kInt8);
    CHECK(modeOf(*l1, "encoder.layer.1.attention.output.dense.weight") == QuantizationMode::kInt8);
    CHECK(modeOf(*l1, "encoder.layer.1.intermediate.dense.weight") == QuantizationMode::kNf4);
    CHECK(modeOf(*l1, "encoder.layer.1.output.dense.weight") == QuantizationMode::kNf4);
    auto post = (*cache)->getLayer("bert", 3, opt.config, policy);
    REQUIRE(post.isOk());
    CHECK(modeOf(*post, "pooler.dense.weight") == QuantizationMode::kNone);
}

TEST_CASE("a checkpoint of no known architecture has no default skips") {
    TempDir dir;
    Ckpt ck;
    ck.add("tok_embed.weight", {64, 64});
    ck.add("blocks.0.proj.weight", {64, 64});
    ck.add("head.weight", {64, 64});
    IngestOptions opt;
    opt.input = ck.write(dir, "x.safetensors");
    opt.cacheRoot = dir.file("cache");
    opt.modelId = std::string("x");  // not = "...": GCC 12 -Wrestrict false positive
    opt.config = getNf4Config();
    auto sum = ingestCheckpoint(opt);
    if (!sum.isOk() && kernelsMissing(sum.status())) return;
    REQUIRE(sum.isOk());
    CHECK(sum->architecture == Architecture::kUnknown);
    REQUIRE(sum->layers == 3);
    auto cache = LayerCache::open(opt.cacheRoot);
    CHECK(modeOf(*(*cache)->getLayer("x", 0, opt.config), "tok_embed.weight") == QuantizationMode::kNf4);
    CHECK(modeOf(*(*cache)->getLayer("x", 2, opt.config), "head.weight") == QuantizationMode::kNf4);
}

namespace {

// The message of collectCheckpointTensors' refusal of checkpoint `ck` (which must fail).
std::string collectFailure(const std::string& ck) {
    auto m = SafetensorsModel::open(ck);
    REQUIRE(m.isOk());
    auto t = collectCheckpointTensors(*m);
    REQUIRE_FALSE(t.isOk());
    return t.status().message();
}

}  // namespace

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
    CHECK(collectFailure(ck).find("l.weight") != std::string::npos);
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

namespace {

std::vector<uint8_t> fileBytes(const std::string& path) {
    auto b = io::readWholeFile(path);
    REQUIRE(b.isOk());
    return *b;
}

}  // namespace

TEST_CASE("verifyReused quantizes a layer with damaged data again and reuses the intact ones") {
    TempDir dir;
    const Ckpt ck = llamaCkpt(2);
    IngestOptions opt;
    opt.input = ck.write(dir, "m.safetensors");
    opt.cacheRoot = dir.file("cache");
    opt.modelId.assign(1, 'm');  // not = "m": a GCC 12 -Wrestrict false positive
    opt.config = getNf4Config();
    auto first = ingestCheckpoint(opt);
    if (!first.isOk() && kernelsMissing(first.status())) return;
    REQUIRE(first.isOk());
    REQUIRE(first->layers == 4);
    const std::string path = io::joinPath(first->cacheDir, io::layerFileName(2));
    const std::vector<uint8_t> clean = fileBytes(path);
    REQUIRE(sli::testing::flipByte(path, clean.size() - 100));  // last extent: index intact

    auto plain = ingestCheckpoint(opt);  // reads indexes only: the damage goes unseen
    REQUIRE(plain.isOk());
    CHECK(plain->layersReused == 4);
    CHECK(plain->layersRepaired == 0);
    CHECK_FALSE(io::verifyLayerFile(path).isOk());

    opt.verifyReused = true;
    auto repaired = ingestCheckpoint(opt);
    REQUIRE(repaired.isOk());
    CHECK(repaired->layersWritten == 1);
    CHECK(repaired->layersRepaired == 1);
    CHECK(repaired->layersReused == 3);
    CHECK(io::verifyLayerFile(path).isOk());
    CHECK(fileBytes(path) == clean);  // quantization is deterministic

    // A damaged index is found without verifyReused too, and counted as a repair.
    opt.verifyReused = false;
    REQUIRE(sli::testing::flipByte(path, 40));
    auto again = ingestCheckpoint(opt);
    REQUIRE(again.isOk());
    CHECK(again->layersRepaired == 1);
    CHECK(fileBytes(path) == clean);
}

TEST_CASE("onlyLayers repairs the layers named and touches nothing else; bad requests are refused") {
    TempDir dir;
    const Ckpt ck = llamaCkpt(2);
    IngestOptions opt;
    opt.input = ck.write(dir, "m.safetensors");
    opt.cacheRoot = dir.file("cache");
    opt.modelId.assign(1, 'm');
    opt.config = getNf4Config();
    opt.onlyLayers = {1};
    // No cache yet: nothing to repair, nothing written.
    auto none = ingestCheckpoint(opt);
    REQUIRE_FALSE(none.isOk());
    CHECK(none.status().toString().find("repairing layers of") != std::string::npos);
    if (std::filesystem::exists(opt.cacheRoot)) {
        for (const auto& e : std::filesystem::recursive_directory_iterator(opt.cacheRoot)) {
            CHECK(e.path().extension() != ".slc");
        }
    }
    opt.onlyLayers.clear();
    auto first = ingestCheckpoint(opt);
    if (!first.isOk() && kernelsMissing(first.status())) return;
    REQUIRE(first.isOk());
    const std::string p1 = io::joinPath(first->cacheDir, io::layerFileName(1));
    const std::string p2 = io::joinPath(first->cacheDir, io::layerFileName(2));
    const std::vector<uint8_t> clean1 = fileBytes(p1);
    const std::vector<uint8_t> clean2 = fileBytes(p2);
    REQUIRE(sli::testing::flipByte(p1, clean1.size() - 100));
    REQUIRE(sli::testing::flipByte(p2, clean2.size() - 100));

    opt.verifyReused = true;
    opt.onlyLayers = {1};
    auto one = ingestCheckpoint(opt);
    REQUIRE_MESSAGE(one.isOk(), one.status().toString());
    CHECK(one->layersRepaired == 1);
    CHECK(one->layersWritten == 1);
    CHECK(fileBytes(p1) == clean1);
    CHECK(fileBytes(p2) != clean2);  // not named: left damaged, unread

    opt.onlyLayers = {9};
    auto missing = ingestCheckpoint(opt);
    REQUIRE_FALSE(missing.isOk());
    CHECK(missing.status().isInvalidArgument());
    CHECK(missing.status().message().find("has no layer 9") != std::string::npos);
    CHECK(fileBytes(p2) != clean2);
}

TEST_CASE("ingestOptionsForCache reads back the options that made a cache") {
    TempDir dir;
    const Ckpt ck = llamaCkpt(1);
    IngestOptions opt;
    opt.input = ck.write(dir, "m.safetensors");
    opt.cacheRoot = dir.file("cache");
    opt.modelId = "org/m";
    useAdaptivePolicy(opt, getMixedPrecisionConfig());
    opt.defaultSkips = false;
    opt.compressPayload = true;
    auto sum = ingestCheckpoint(opt);
    if (!sum.isOk() && kernelsMissing(sum.status())) return;
    REQUIRE(sum.isOk());

    auto back = ingestOptionsForCache(sum->cacheDir + "/");
    REQUIRE(back.isOk());
    CHECK(back->input == opt.input);
    CHECK(back->modelId == "org/m");
    CHECK(back->config == opt.config);
    REQUIRE(back->attentionConfig.has_value());
    CHECK(*back->attentionConfig == *opt.attentionConfig);
    REQUIRE(back->ffnConfig.has_value());
    CHECK(*back->ffnConfig == *opt.ffnConfig);
    CHECK_FALSE(back->defaultSkips);
    CHECK(back->compressPayload);
    CHECK(back->verifyReused);
    CHECK(ingestPolicyJson(*back) == ingestPolicyJson(opt));
    auto again = ingestCheckpoint(*back);
    REQUIRE(again.isOk());
    CHECK(again->cacheDir == sum->cacheDir);
    CHECK(again->layersReused == sum->layers);

    // A plain cache: no policy, default skips on, payloads uncompressed.
    IngestOptions plain;
    plain.input = opt.input;
    plain.cacheRoot = opt.cacheRoot;
    plain.modelId = "m";
    auto psum = ingestCheckpoint(plain);
    REQUIRE(psum.isOk());
    auto pback = ingestOptionsForCache(psum->cacheDir);
    REQUIRE(pback.isOk());
    CHECK(pback->config == plain.config);
    CHECK_FALSE(pback->attentionConfig.has_value());
    CHECK(pback->defaultSkips);
    CHECK_FALSE(pback->compressPayload);
}

TEST_CASE("ingestOptionsForCache refuses a moved cache, a changed source and a vanished one") {
    TempDir dir;
    Ckpt ck = llamaCkpt(1);
    IngestOptions opt;
    opt.input = ck.write(dir, "m.safetensors");
    opt.cacheRoot = dir.file("cache");
    opt.modelId = "m";
    auto sum = ingestCheckpoint(opt);
    REQUIRE(sum.isOk());

    const std::string moved = dir.file("elsewhere");
    REQUIRE(io::makeDirs(moved).isOk());
    REQUIRE(std::rename(sum->cacheDir.c_str(), (moved + "/x").c_str()) == 0);
    auto m = ingestOptionsForCache(moved + "/x");
    REQUIRE_FALSE(m.isOk());
    CHECK(m.status().isInvalidArgument());
    CHECK(m.status().message().find("moved or renamed by hand") != std::string::npos);
    REQUIRE(std::rename((moved + "/x").c_str(), sum->cacheDir.c_str()) == 0);
    REQUIRE(ingestOptionsForCache(sum->cacheDir).isOk());

    ck.add("model.extra.weight", {8, 8});  // another header: another fingerprint
    ck.write(dir, "m.safetensors");
    auto changed = ingestOptionsForCache(sum->cacheDir);
    REQUIRE_FALSE(changed.isOk());
    CHECK(changed.status().message().find("has changed since") != std::string::npos);
    CHECK(changed.status().message().find(opt.input) != std::string::npos);

    REQUIRE(io::removeFile(opt.input).isOk());
    auto gone = ingestOptionsForCache(sum->cacheDir);
    REQUIRE_FALSE(gone.isOk());
    CHECK(gone.status().isNotFound());
    CHECK(gone.status().message().find("no longer exists") != std::string::npos);

    auto none = ingestOptionsForCache(dir.file("no-such-cache"));
    CHECK_FALSE(none.isOk());
}

TEST_CASE("each layer is reported done once its file is complete; a failure mid-run keeps the layers before it whole") {
    // Layer files are written on a thread of their own while the next layer is quantized.
    TempDir dir;
    Ckpt c = llamaCkpt(5);
    const std::string ck = c.write(dir, "m.safetensors");
    IngestOptions opt;
    opt.input = ck;
    opt.cacheRoot = dir.file("cache");
    opt.modelId = "m";
    opt.config.mode = QuantizationMode::kNf4;
    std::vector<size_t> done;
    std::string cacheDir;
    opt.progress = [&](const IngestProgress& p) {
        done.push_back(p.layersDone);
        // Every layer counted so far has its complete file in place.
        for (size_t i = 0; i < p.layersDone; ++i) {
            const std::string f = io::joinPath(cacheDir, io::layerFileName(static_cast<int64_t>(i)));
            CHECK_MESSAGE(io::verifyLayerFile(f).isOk(), f);
        }
    };
    {
        auto c0 = LayerCache::open(opt.cacheRoot);
        REQUIRE(c0.isOk());
        cacheDir = (*c0)->directoryFor("m", opt.config, ingestPolicyJson(opt));
    }
    auto sum = ingestCheckpoint(opt);
    if (kernelsMissing(sum.status())) return;
    REQUIRE_MESSAGE(sum.isOk(), sum.status().toString());
    CHECK(sum->layersWritten == 7);
    REQUIRE(done.size() == 7);
    for (size_t i = 0; i < done.size(); ++i) CHECK(done[i] == i + 1);

    // A second cache whose source is cut short after the third layer is reported: the run
    // fails naming the checkpoint, every layer file written is whole, no temporary file stays.
    IngestOptions cut = opt;
    cut.config.mode = QuantizationMode::kInt8;
    auto c1 = LayerCache::open(cut.cacheRoot);
    REQUIRE(c1.isOk());
    cacheDir = (*c1)->directoryFor("m", cut.config, ingestPolicyJson(cut));
    cut.progress = [&](const IngestProgress& p) {
        if (p.layersDone == 3) std::filesystem::resize_file(ck, std::filesystem::file_size(ck) / 2);
    };
    auto failed = ingestCheckpoint(cut);
    REQUIRE_FALSE(failed.isOk());
    CHECK_MESSAGE(failed.status().message().find("m.safetensors") != std::string::npos, failed.status().toString());
    size_t whole = 0;
    for (const auto& e : std::filesystem::directory_iterator(cacheDir)) {
        const std::string name = e.path().filename().string();
        CHECK_MESSAGE(name.find(".tmp") == std::string::npos, name);
        if (name.rfind("layer-", 0) == 0) {
            CHECK_MESSAGE(io::verifyLayerFile(e.path().string()).isOk(), name);
            ++whole;
        }
    }
    CHECK(whole >= 3);
    CHECK(whole < 7);
}

namespace {

// An FP8 checkpoint of one Llama MLP weight W ([3, 5] F8_E4M3) and `scale` named
// W + scaleSuffix, plus its layer's norm.
std::string fp8Checkpoint(const TempDir& dir, const std::vector<uint8_t>& w,
                          const std::string& scaleSuffix, DType scaleType,
                          std::vector<int64_t> scaleShape, std::span<const uint8_t> scale) {
    static const std::vector<float> norm(5, 1.0f);
    const std::string ck = dir.file("fp8.safetensors");
    REQUIRE(writeSafetensors(ck, {{"model.layers.0.mlp.up_proj.weight", DType::kF8E4M3, {3, 5}, w},
                                  {"model.layers.0.mlp.up_proj.weight" + scaleSuffix, scaleType,
                                   std::move(scaleShape), scale},
                                  {"model.layers.0.input_layernorm.weight", DType::kF32, {5},
                                   bytesOf(norm)}})
                .isOk());
    return ck;
}

// E4M3 bytes of hand-worked values: 1, 2, -1, 0.5, 3, 448, 2^-9, 1.5, -2, 0.25, 4, -0.5, 6,
// 0, -448 (0x38 1.0, 0x40 2.0, 0xb8 -1.0, 0x30 0.5, 0x44 3.0, 0x7e 448, 0x01 2^-9, 0x3c 1.5,
// 0xc0 -2.0, 0x28 0.25, 0x48 4.0, 0xb0 -0.5, 0x4c 6.0, 0x00 0, 0xfe -448)
const std::vector<uint8_t> kFp8Bytes = {0x38, 0x40, 0xb8, 0x30, 0x44, 0x7e, 0x01, 0x3c,
                                        0xc0, 0x28, 0x48, 0xb0, 0x4c, 0x00, 0xfe};
const float kFp8Values[15] = {1, 2, -1, 0.5f, 3, 448, 0x1p-9f, 1.5f, -2, 0.25f, 4, -0.5f, 6, 0, -448};

// Mode none with f32 compute: the scaled values are stored as they are.
IngestOptions fp8Options(const TempDir& dir, const std::string& ck) {
    IngestOptions opt;
    opt.input = ck;
    opt.cacheRoot = dir.file("cache");
    opt.modelId = "fp8";
    opt.config.mode = QuantizationMode::kNone;
    opt.config.computeDType = DType::kF32;
    return opt;
}

// Ingests `ck` by fp8Options: the stored f32 values of up_proj (its only layer).
std::vector<float> ingestedF32(const TempDir& dir, const std::string& ck, IngestSummary* sum) {
    const IngestOptions opt = fp8Options(dir, ck);
    auto s = ingestCheckpoint(opt);
    REQUIRE_MESSAGE(s.isOk(), s.status().toString());
    REQUIRE(s->layers == 1);
    if (sum != nullptr) *sum = *s;
    const QuantizedLayer l = cachedLayer(opt, 0);
    CHECK(l.tensors.size() == 2);  // the weight and the norm: the scale tensor is not kept
    const QuantizedTensor* t = l.find("model.layers.0.mlp.up_proj.weight");
    REQUIRE(t != nullptr);
    CHECK(t->info.sourceDType == DType::kF8E4M3);
    REQUIRE(t->info.storedDType == DType::kF32);
    std::vector<float> v(15);
    std::memcpy(v.data(), t->parts[0].data(), 60);
    return v;
}

}  // namespace

TEST_CASE("FP8 weights are multiplied by their block scales (weight_scale_inv) before quantizing") {
    TempDir dir;
    // [3, 5] in blocks of 2 x 2: scales [2, 3]; rows 0-1 / row 2, columns 0-1 / 2-3 / 4
    const std::vector<float> s = {0.5f, 4.0f, 0.25f, 2.0f, -1.0f, 3.0f};
    const std::string ck = fp8Checkpoint(dir, kFp8Bytes, "_scale_inv", DType::kF32, {2, 3}, bytesOf(s));
    IngestSummary sum;
    const std::vector<float> v = ingestedF32(dir, ck, &sum);
    CHECK(sum.fp8TensorsScaled == 1);
    CHECK(sum.fp8TensorsKept == 0);
    {  // a rerun reuses the layer and counts the tensor the same
        auto again = ingestCheckpoint(fp8Options(dir, ck));
        REQUIRE(again.isOk());
        CHECK(again->layersReused == 1);
        CHECK(again->fp8TensorsScaled == 1);
    }
    // hand-worked: value x the scale of its block
    const float want[15] = {1 * 0.5f,  2 * 0.5f,   -1 * 4.0f, 0.5f * 4.0f, 3 * 0.25f,
                            448 * 0.5f, 0x1p-9f * 0.5f, 1.5f * 4.0f, -2 * 4.0f, 0.25f * 0.25f,
                            4 * 2.0f,  -0.5f * 2.0f, 6 * -1.0f, 0 * -1.0f, -448 * 3.0f};
    for (int i = 0; i < 15; ++i) {
        CAPTURE(i);
        CHECK(v[static_cast<size_t>(i)] == want[i]);
    }
}

TEST_CASE("FP8 weights with a per-tensor or per-row weight_scale, in f32, bf16 or f16") {
    TempDir dir;
    SUBCASE("per tensor, f32 scalar") {
        const std::vector<float> s = {0.125f};
        const auto v = ingestedF32(dir, fp8Checkpoint(dir, kFp8Bytes, "_scale", DType::kF32, {}, bytesOf(s)), nullptr);
        for (int i = 0; i < 15; ++i) CHECK(v[static_cast<size_t>(i)] == kFp8Values[i] * 0.125f);
    }
    SUBCASE("per row, bf16 [3]") {
        const std::vector<uint16_t> s = {0x3f80, 0x4040, 0xbf00};  // 1, 3, -0.5
        const auto v = ingestedF32(dir, fp8Checkpoint(dir, kFp8Bytes, "_scale", DType::kBF16, {3}, bytesOf(s)), nullptr);
        const float rowScale[3] = {1.0f, 3.0f, -0.5f};
        for (int i = 0; i < 15; ++i) CHECK(v[static_cast<size_t>(i)] == kFp8Values[i] * rowScale[i / 5]);
    }
    SUBCASE("per row, f16 [3, 1]") {
        const std::vector<uint16_t> s = {0x3800, 0x4400, 0x3c00};  // 0.5, 4, 1
        const auto v = ingestedF32(dir, fp8Checkpoint(dir, kFp8Bytes, "_scale", DType::kF16, {3, 1}, bytesOf(s)), nullptr);
        const float rowScale[3] = {0.5f, 4.0f, 1.0f};
        for (int i = 0; i < 15; ++i) CHECK(v[static_cast<size_t>(i)] == kFp8Values[i] * rowScale[i / 5]);
    }
}

TEST_CASE("a scaled FP8 weight is quantized from its scaled values") {
    // 64 x 64 FP8 weight, one scale per 32 x 32 block; NF4 of it must equal NF4 of the scaled
    // f32 values quantized directly
    TempDir dir;
    std::vector<uint8_t> w(64 * 64);
    for (size_t i = 0; i < w.size(); ++i) {
        const auto b = static_cast<uint8_t>((i * 37) % 256);
        w[i] = (b & 0x7f) == 0x7f ? static_cast<uint8_t>(b ^ 1) : b;  // no NaN
    }
    const std::vector<float> s = {0.001f, 0.002f, -0.003f, 0.0005f};
    const std::string ck = dir.file("q.safetensors");
    REQUIRE(writeSafetensors(ck, {{"model.layers.0.mlp.up_proj.weight", DType::kF8E4M3, {64, 64}, w},
                                  {"model.layers.0.mlp.up_proj.weight_scale_inv", DType::kF32, {2, 2}, bytesOf(s)}})
                .isOk());
    IngestOptions opt = fp8Options(dir, ck);
    opt.config.mode = QuantizationMode::kNf4;
    auto sum = ingestCheckpoint(opt);
    if (!sum.isOk() && kernelsMissing(sum.status())) return;
    REQUIRE(sum.isOk());
    const QuantizedLayer l = cachedLayer(opt, 0);
    REQUIRE(l.tensors.size() == 1);
    CHECK(l.tensors[0].info.mode == QuantizationMode::kNf4);
    std::vector<float> scaled(w.size());
    for (size_t i = 0; i < w.size(); ++i) {
        const size_t r = i / 64, c = i % 64;
        scaled[i] = f8e4m3ToF32(w[i]) * s[(r / 32) * 2 + c / 32];
    }
    QuantizedTensor direct;
    direct.info = l.tensors[0].info;
    REQUIRE(kernels::quantize(scaled, direct).isOk());
    for (int p = 0; p < kQuantPartCount; ++p) {
        CAPTURE(p);
        REQUIRE(direct.parts[p].size() == l.tensors[0].parts[p].size());
        CHECK(std::memcmp(direct.parts[p].data(), l.tensors[0].parts[p].data(), direct.parts[p].size()) == 0);
    }
}

TEST_CASE("an FP8 scale tensor that fits no layout is refused naming both tensors, before anything is written") {
    TempDir dir;
    const std::vector<float> s(16, 1.0f);
    std::string ck;
    SUBCASE("a block grid of the wrong size") {
        ck = fp8Checkpoint(dir, kFp8Bytes, "_scale_inv", DType::kF32, {4, 4}, bytesOf(s));
    }
    SUBCASE("a per-row vector of the wrong length") {
        ck = fp8Checkpoint(dir, kFp8Bytes, "_scale", DType::kF32, {5}, std::span(bytesOf(s)).first(20));
    }
    SUBCASE("a non-finite scale (found when the layer is quantized)") {
        const std::vector<float> inf = {1.0f, 2.0f, INFINITY, 1.0f, 1.0f, 1.0f};
        ck = fp8Checkpoint(dir, kFp8Bytes, "_scale_inv", DType::kF32, {2, 3}, bytesOf(inf));
        auto sum = ingestCheckpoint(fp8Options(dir, ck));
        REQUIRE_FALSE(sum.isOk());
        CHECK(sum.status().message().find("weight_scale_inv of FP8 tensor model.layers.0.mlp.up_proj.weight: element 2 is inf") !=
              std::string::npos);
        size_t layerFiles = 0;  // the failed layer left no file behind
        if (std::filesystem::exists(dir.file("cache"))) {
            for (const auto& f : std::filesystem::recursive_directory_iterator(dir.file("cache"))) {
                if (f.path().extension() == ".slc") ++layerFiles;
            }
        }
        CHECK(layerFiles == 0);
        return;
    }
    SUBCASE("an integer scale") {
        const std::vector<int32_t> i = {1};
        ck = fp8Checkpoint(dir, kFp8Bytes, "_scale", DType::kI32, {1}, bytesOf(i));
    }
    auto sum = ingestCheckpoint(fp8Options(dir, ck));
    REQUIRE_FALSE(sum.isOk());
    CHECK(sum.status().isInvalidArgument());
    const std::string m = sum.status().message();
    CHECK(m.find("model.layers.0.mlp.up_proj.weight ") != std::string::npos);
    CHECK(m.find("model.layers.0.mlp.up_proj.weight_scale") != std::string::npos);
    CHECK(m.find("fp8.safetensors") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dir.file("cache")));
}

TEST_CASE("an FP8 weight with both weight_scale_inv and weight_scale is refused as ambiguous") {
    TempDir dir;
    const std::vector<float> one = {1.0f};
    const std::string ck = dir.file("amb.safetensors");
    REQUIRE(writeSafetensors(ck, {{"l.weight", DType::kF8E4M3, {3, 5}, kFp8Bytes},
                                  {"l.weight_scale_inv", DType::kF32, {1}, bytesOf(one)},
                                  {"l.weight_scale", DType::kF32, {1}, bytesOf(one)}})
                .isOk());
    const std::string m = collectFailure(ck);
    CHECK(m.find("l.weight") != std::string::npos);
    CHECK(m.find("ambiguous") != std::string::npos);
}

TEST_CASE("FP8 scales of stacked matrices [E, R, C]: per block, per matrix, per row") {
    // every FP8 value 1.0 (E4M3 0x38, E5M2 0x3c): each output is the scale that applies to it
    const std::vector<uint8_t> ones(2 * 3 * 5, 0x38), ones5(2 * 3 * 5, 0x3c);
    std::vector<float> s(12);
    for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<float>(i + 1);
    const auto run = [&](std::vector<int64_t> scaleShape, DType fp8 = DType::kF8E4M3) {
        const SafetensorsTensorInfo w{"experts.weight", fp8, {2, 3, 5}, 0, 30};
        int64_t n = 1;
        for (int64_t d : scaleShape) n *= d;
        const SafetensorsTensorInfo sc{"experts.weight_scale_inv", DType::kF32, scaleShape, 0,
                                       static_cast<uint64_t>(n) * 4};
        auto layout = fp8ScaleLayout(w, sc);
        REQUIRE_MESSAGE(layout.isOk(), layout.status().toString());
        std::vector<float> out(30);
        applyFp8Scales(fp8, fp8 == DType::kF8E4M3 ? ones.data() : ones5.data(), s.data(), *layout,
                       out.data());
        return out;
    };
    SUBCASE("blocks of 2 x 2: [2, 2, 3]") {
        const std::vector<float> want = {1, 1, 2,  2,  3,  1, 1, 2,  2,  3,  4,  4,  5,  5,  6,
                                         7, 7, 8,  8,  9,  7, 7, 8,  8,  9,  10, 10, 11, 11, 12};
        CHECK(run({2, 2, 3}) == want);
        CHECK(run({2, 2, 3}, DType::kF8E5M2) == want);
    }
    SUBCASE("one per matrix: [2]") {
        const std::vector<float> want = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                         2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2};
        CHECK(run({2}) == want);
    }
    SUBCASE("one per row: [2, 3] and [2, 3, 1]") {
        const std::vector<float> want = {1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
                                         4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6};
        CHECK(run({2, 3}) == want);
        CHECK(run({2, 3, 1}) == want);
    }
    SUBCASE("a grid that does not match the leading dims is refused") {
        const SafetensorsTensorInfo w{"experts.weight", DType::kF8E4M3, {2, 3, 5}, 0, 30};
        const SafetensorsTensorInfo sc{"experts.weight_scale_inv", DType::kF32, {3, 2, 3}, 0, 72};
        auto layout = fp8ScaleLayout(w, sc);
        REQUIRE_FALSE(layout.isOk());
        CHECK(layout.status().message().find("experts.weight_scale_inv [3, 2, 3]") != std::string::npos);
    }
}

namespace {

void writeText(const std::string& path, const std::string& text) {
    std::FILE* f = std::fopen(path.c_str(), "w");
    REQUIRE(f != nullptr);
    REQUIRE(std::fwrite(text.data(), 1, text.size(), f) == text.size());
    std::fclose(f);
}

}  // namespace

TEST_CASE("config.json's weight_block_size decides an FP8 block grid that a power of two would also fit") {
    // [3, 6] in blocks of 2 x 3 (columns 0-2 / 3-5): scales [2, 2]. Inferred from the shapes
    // alone the column block would be 4 (the power of two that also gives 2 blocks).
    TempDir dir;
    const std::vector<uint8_t> ones(18, 0x38);  // E4M3 1.0: each output is its scale
    const std::vector<float> s = {1, 2, 3, 4};
    const std::vector<float> norm(6, 1.0f);
    const std::string ck = dir.file("model.safetensors");
    REQUIRE(writeSafetensors(ck, {{"model.layers.0.mlp.up_proj.weight", DType::kF8E4M3, {3, 6}, ones},
                                  {"model.layers.0.mlp.up_proj.weight_scale_inv", DType::kF32, {2, 2}, bytesOf(s)},
                                  {"model.layers.0.input_layernorm.weight", DType::kF32, {6}, bytesOf(norm)}})
                .isOk());
    writeText(dir.file("config.json"),
              R"({"model_type": "llama", "quantization_config": {"quant_method": "fp8", "weight_block_size": [2, 3]}})");
    auto hint = fp8BlockSizeFromConfig(ck);
    REQUIRE(hint.isOk());
    REQUIRE(hint->has_value());
    CHECK((*hint)->rows == 2);
    CHECK((*hint)->cols == 3);
    IngestOptions opt = fp8Options(dir, dir.path());  // the directory as input
    auto sum = ingestCheckpoint(opt);
    REQUIRE_MESSAGE(sum.isOk(), sum.status().toString());
    const QuantizedLayer l = cachedLayer(opt, 0);
    const QuantizedTensor* t = l.find("model.layers.0.mlp.up_proj.weight");
    REQUIRE(t != nullptr);
    std::vector<float> v(18);
    std::memcpy(v.data(), t->parts[0].data(), 72);
    const std::vector<float> want = {1, 1, 1, 2, 2, 2, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4};
    CHECK(v == want);
}

TEST_CASE("an FP8 block grid that is not config.json's weight_block_size is refused naming both") {
    TempDir dir;
    const std::vector<float> s = {1, 2, 3, 4, 5, 6};
    fp8Checkpoint(dir, kFp8Bytes, "_scale_inv", DType::kF32, {2, 3}, bytesOf(s));
    writeText(dir.file("config.json"), R"({"quantization_config": {"weight_block_size": [128, 128]}})");
    auto sum = ingestCheckpoint(fp8Options(dir, dir.path()));
    REQUIRE_FALSE(sum.isOk());
    const std::string m = sum.status().message();
    CHECK(m.find("weight_scale_inv [2, 3]") != std::string::npos);
    CHECK(m.find("weight_block_size [128, 128]") != std::string::npos);
}

TEST_CASE("fp8BlockSizeFromConfig: absent, without the key, and malformed") {
    TempDir dir;
    const std::string ck = dir.file("m.safetensors");
    auto none = fp8BlockSizeFromConfig(ck);
    REQUIRE(none.isOk());
    CHECK_FALSE(none->has_value());
    writeText(dir.file("config.json"), R"({"model_type": "llama"})");
    auto noKey = fp8BlockSizeFromConfig(ck);
    REQUIRE(noKey.isOk());
    CHECK_FALSE(noKey->has_value());
    for (const char* text : {R"({"quantization_config": {"weight_block_size": [128]}})",
                             R"({"quantization_config": {"weight_block_size": [0, 128]}})",
                             R"({"quantization_config": {"weight_block_size": "128x128"}})",
                             "{not json"}) {
        CAPTURE(text);
        writeText(dir.file("config.json"), text);
        auto bad = fp8BlockSizeFromConfig(ck);
        REQUIRE_FALSE(bad.isOk());
        CHECK(bad.status().message().find("config.json") != std::string::npos);
    }
}

namespace {

// tests/golden/mxfp4_decode.txt (make_mxfp4_golden.py, ml_dtypes): a gpt-oss-style MXFP4
// tensor and its values decoded independently.
struct Mxfp4Golden {
    std::vector<int64_t> shape;  // of the blocks: [2, 3, 4, 16]
    std::vector<uint8_t> blocks, scales;
    std::vector<uint16_t> bf16;
};

std::vector<uint8_t> hexBytes(const std::string& hex) {
    std::vector<uint8_t> out(hex.size() / 2);
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint8_t>(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
    return out;
}

Mxfp4Golden mxfp4Golden() {
    const char* root = std::getenv("SLI_TEST_DATA");
    REQUIRE_MESSAGE(root != nullptr, "SLI_TEST_DATA unset (meson test sets it)");
    std::ifstream in(std::string(root) + "/golden/mxfp4_decode.txt");
    REQUIRE(in.good());
    Mxfp4Golden g;
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream words(line);
        std::string key, hex;
        words >> key;
        if (key == "shape") {
            for (int64_t d = 0; words >> d;) g.shape.push_back(d);
        } else if (key == "blocks" && words >> hex) {
            g.blocks = hexBytes(hex);
        } else if (key == "scales" && words >> hex) {
            g.scales = hexBytes(hex);
        } else if (key == "bf16" && words >> hex) {
            for (size_t i = 0; i + 4 <= hex.size(); i += 4) {
                g.bf16.push_back(static_cast<uint16_t>(std::stoul(hex.substr(i, 4), nullptr, 16)));
            }
        }
    }
    REQUIRE(g.shape == std::vector<int64_t>{2, 3, 4, 16});
    REQUIRE(g.blocks.size() == 2 * 3 * 4 * 16);
    REQUIRE(g.scales.size() == 2 * 3 * 4);
    REQUIRE(g.bf16.size() == 2 * 3 * 4 * 32);
    return g;
}

const std::string kExperts = "model.layers.0.mlp.experts.gate_up_proj";

// The golden tensor as gpt-oss's Hugging Face checkpoint names it (blocks + scales), with the
// layer's norm; `scales` replaces the golden scales when given.
std::string mxfp4Checkpoint(const TempDir& dir, const Mxfp4Golden& g, const std::string& blocksSuffix = "_blocks",
                            const std::string& scalesSuffix = "_scales",
                            std::vector<int64_t> scalesShape = {2, 3, 4}) {
    static const std::vector<float> norm(128, 1.0f);
    const std::string ck = dir.file("mx.safetensors");
    REQUIRE(writeSafetensors(ck, {{kExperts + blocksSuffix, DType::kU8, g.shape, g.blocks},
                                  {kExperts + scalesSuffix, DType::kU8, std::move(scalesShape), g.scales},
                                  {"model.layers.0.input_layernorm.weight", DType::kF32, {128}, bytesOf(norm)}})
                .isOk());
    return ck;
}

IngestOptions mxfp4Options(const TempDir& dir, const std::string& ck) {
    IngestOptions opt = fp8Options(dir, ck);
    opt.modelId = "mx";
    return opt;
}

size_t layerFilesUnder(const std::string& root) {
    size_t n = 0;
    if (!std::filesystem::exists(root)) return 0;
    for (const auto& f : std::filesystem::recursive_directory_iterator(root)) {
        if (f.path().extension() == ".slc") ++n;
    }
    return n;
}

}  // namespace

TEST_CASE("MXFP4 blocks decode to bf16 exactly as ml_dtypes decodes them") {
    const Mxfp4Golden g = mxfp4Golden();
    std::vector<uint16_t> out(g.bf16.size(), 0xdead);
    CHECK(decodeMxfp4ToBf16(g.blocks.data(), g.scales.data(), 24, out.data()) == -1);
    for (size_t i = 0; i < out.size(); ++i) {
        CAPTURE(i);
        CHECK(out[i] == g.bf16[i]);
    }
    // hand-worked: byte 0x1f = high nibble 1 (0.5), low nibble 0xf (-6); scale 128 = 2
    std::vector<uint8_t> blk(16, 0x1f);
    const uint8_t s = 128;
    REQUIRE(decodeMxfp4ToBf16(blk.data(), &s, 1, out.data()) == -1);
    CHECK(out[0] == f32ToBf16(-12.0f));
    CHECK(out[1] == f32ToBf16(1.0f));
    CHECK(out[31] == f32ToBf16(1.0f));
}

TEST_CASE("MXFP4 scales that are NaN or push a value past bf16's range are found by group") {
    std::vector<uint8_t> blk(48, 0x22);  // three groups of 1.0s
    std::vector<uint16_t> out(96);
    std::vector<uint8_t> s = {127, 127, 0xff};
    CHECK(decodeMxfp4ToBf16(blk.data(), s.data(), 3, out.data()) == 2);
    s = {252, 254, 127};  // 1.0 * 2^127 is finite
    CHECK(decodeMxfp4ToBf16(blk.data(), s.data(), 3, out.data()) == -1);
    CHECK(out[32] == f32ToBf16(0x1p127f));
    blk[20] = 0x40;  // group 1: a 2.0 (low nibble 0 is 0.0, high 4 is 2.0): 2^128
    CHECK(decodeMxfp4ToBf16(blk.data(), s.data(), 3, out.data()) == 1);
    s = {127, 253, 127};  // 2.0 * 2^126 = 2^127 still fits
    CHECK(decodeMxfp4ToBf16(blk.data(), s.data(), 3, out.data()) == -1);
    blk[21] = 0x06;  // 4.0 * 2^126 = 2^128 does not
    CHECK(decodeMxfp4ToBf16(blk.data(), s.data(), 3, out.data()) == 1);
}

TEST_CASE("an MXFP4 checkpoint (gpt-oss experts) is ingested as its decoded weight") {
    const Mxfp4Golden g = mxfp4Golden();
    TempDir dir;
    std::string blocksSuffix = "_blocks", scalesSuffix = "_scales";
    SUBCASE("Hugging Face names") {}
    SUBCASE("the original release's names") {
        blocksSuffix = ".blocks";
        scalesSuffix = ".scales";
    }
    const std::string ck = mxfp4Checkpoint(dir, g, blocksSuffix, scalesSuffix);
    const IngestOptions opt = mxfp4Options(dir, ck);
    auto sum = ingestCheckpoint(opt);
    REQUIRE_MESSAGE(sum.isOk(), sum.status().toString());
    CHECK(sum->mxfp4TensorsDecoded == 1);
    CHECK(sum->tensors == 2);  // the weight and the norm: blocks and scales are not kept
    CHECK(sum->weights == 2 * 3 * 128 + 128);
    {
        const QuantizedLayer l = cachedLayer(opt, 0);
        REQUIRE(l.tensors.size() == 2);
        const QuantizedTensor* t = l.find(kExperts);
        REQUIRE(t != nullptr);
        CHECK(t->info.shape == std::vector<int64_t>{2, 3, 128});
        CHECK(t->info.sourceDType == DType::kBF16);
        REQUIRE(t->info.storedDType == DType::kF32);
        REQUIRE(t->parts[0].size() == g.bf16.size() * 4);
        const float* v = t->parts[0].as<float>();
        for (size_t i = 0; i < g.bf16.size(); ++i) {
            CAPTURE(i);
            CHECK(floatBits(v[i]) == floatBits(bf16ToF32(g.bf16[i])));
        }
    }
    auto again = ingestCheckpoint(opt);  // reused, still counted
    REQUIRE(again.isOk());
    CHECK(again->layersReused == 1);
    CHECK(again->mxfp4TensorsDecoded == 1);
}

TEST_CASE("an MXFP4 weight is quantized from its decoded values") {
    const Mxfp4Golden g = mxfp4Golden();
    TempDir dir;
    IngestOptions opt = mxfp4Options(dir, mxfp4Checkpoint(dir, g));
    opt.config.mode = QuantizationMode::kNf4;
    auto sum = ingestCheckpoint(opt);
    if (!sum.isOk() && kernelsMissing(sum.status())) return;
    REQUIRE_MESSAGE(sum.isOk(), sum.status().toString());
    const QuantizedLayer l = cachedLayer(opt, 0);
    const QuantizedTensor* t = l.find(kExperts);
    REQUIRE(t != nullptr);
    CHECK(t->info.mode == QuantizationMode::kNf4);
    QuantizedTensor direct;
    direct.info = t->info;
    REQUIRE(kernels::quantize(DType::kBF16, g.bf16.data(), direct).isOk());
    for (int p = 0; p < kQuantPartCount; ++p) {
        CAPTURE(p);
        REQUIRE(direct.parts[p].size() == t->parts[p].size());
        CHECK(std::memcmp(direct.parts[p].data(), t->parts[p].data(), direct.parts[p].size()) == 0);
    }
}

TEST_CASE("MXFP4 blocks and scales that do not fit are refused naming both, before anything is written") {
    const Mxfp4Golden g = mxfp4Golden();
    TempDir dir;
    std::string ck;
    SUBCASE("scales of another shape") {
        ck = mxfp4Checkpoint(dir, g, "_blocks", "_scales", {2, 4, 3});
    }
    SUBCASE("scales of more groups") {
        ck = mxfp4Checkpoint(dir, g, "_blocks", "_scales", {24, 1});
    }
    auto sum = ingestCheckpoint(mxfp4Options(dir, ck));
    REQUIRE_FALSE(sum.isOk());
    CHECK(sum.status().isInvalidArgument());
    const std::string m = sum.status().message();
    CHECK(m.find(kExperts + "_blocks [2, 3, 4, 16]") != std::string::npos);
    CHECK(m.find(kExperts + "_scales") != std::string::npos);
    CHECK(m.find("mx.safetensors") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dir.file("cache")));
}

TEST_CASE("an MXFP4 scale of NaN or out of range fails its layer naming the scales and the group; no file is left") {
    Mxfp4Golden g = mxfp4Golden();
    TempDir dir;
    std::string want;
    SUBCASE("NaN (0xff)") {
        g.scales[5] = 0xff;
        want = kExperts + "_scales of MXFP4 weight " + kExperts + ": group 5 (values 160..191) (scale byte 0xff) is NaN";
    }
    SUBCASE("2^127 times a value of 2 or more") {
        g.scales[7] = 254;
        g.blocks[7 * 16] = 0x44;  // 2.0, 2.0
        want = "group 7 (values 224..255) (scale byte 254, 2^127) scales a value beyond";
    }
    const IngestOptions opt = mxfp4Options(dir, mxfp4Checkpoint(dir, g));
    auto sum = ingestCheckpoint(opt);
    REQUIRE_FALSE(sum.isOk());
    CHECK(sum.status().isInvalidArgument());
    CAPTURE(sum.status().message());
    CHECK(sum.status().message().find(want) != std::string::npos);
    CHECK(sum.status().message().find("layer 0") != std::string::npos);
    CHECK(layerFilesUnder(dir.file("cache")) == 0);
}

TEST_CASE("MXFP4 pairs: a weight name also present is ambiguous; blocks without scales stay plain") {
    const Mxfp4Golden g = mxfp4Golden();
    TempDir dir;
    const std::string ck = dir.file("odd.safetensors");
    SUBCASE("the weight is also a tensor of its own") {
        const std::vector<float> w(2 * 3 * 128, 0.0f);
        REQUIRE(writeSafetensors(ck, {{"e.w_blocks", DType::kU8, g.shape, g.blocks},
                                      {"e.w_scales", DType::kU8, {2, 3, 4}, g.scales},
                                      {"e.w", DType::kF32, {2, 3, 128}, bytesOf(w)}})
                    .isOk());
        const std::string m = collectFailure(ck);
        CHECK(m.find("MXFP4 weight e.w ") != std::string::npos);
        CHECK(m.find("ambiguous") != std::string::npos);
    }
    SUBCASE("no scales, or scales that are not uint8: not MXFP4") {
        const std::vector<float> fs(24, 1.0f);
        REQUIRE(writeSafetensors(ck, {{"e.w_blocks", DType::kU8, g.shape, g.blocks},
                                      {"e.v_blocks", DType::kU8, g.shape, g.blocks},
                                      {"e.v_scales", DType::kF32, {2, 3, 4}, bytesOf(fs)}})
                    .isOk());
        auto m = SafetensorsModel::open(ck);
        REQUIRE(m.isOk());
        auto ts = collectCheckpointTensors(*m);
        REQUIRE(ts.isOk());
        REQUIRE(ts->size() == 3);
        for (const auto& t : *ts) CHECK(t.kind == CheckpointTensor::Kind::kPlain);
    }
}

TEST_CASE("MXFP4 decoding and FP8 scaling split over threads give the same values and the first bad group") {
    // 1 M values: enough for the kernels' split (about 256 K values a thread) to use 4 threads
    const int64_t groups = 32768;
    std::vector<uint8_t> blocks(static_cast<size_t>(groups) * 16), scales(static_cast<size_t>(groups));
    for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = static_cast<uint8_t>((i * 37 + i / 7) % 256);
    for (size_t g = 0; g < scales.size(); ++g) scales[g] = static_cast<uint8_t>(100 + g % 50);
    std::vector<uint16_t> one(static_cast<size_t>(groups) * 32), four(one.size());
    REQUIRE(decodeMxfp4ToBf16(blocks.data(), scales.data(), groups, one.data(), 1) == -1);
    REQUIRE(decodeMxfp4ToBf16(blocks.data(), scales.data(), groups, four.data(), 4) == -1);
    CHECK(one == four);
    scales[30000] = 0xff;  // in the last thread's range
    CHECK(decodeMxfp4ToBf16(blocks.data(), scales.data(), groups, four.data(), 4) == 30000);
    scales[5000] = 0xff;  // in the first one's: the lowest wins
    CHECK(decodeMxfp4ToBf16(blocks.data(), scales.data(), groups, four.data(), 4) == 5000);

    // FP8: 4 stacked 512 x 512 matrices, 128 x 128 blocks
    const SafetensorsTensorInfo w{"experts.weight", DType::kF8E4M3, {4, 512, 512}, 0, 4 * 512 * 512};
    const SafetensorsTensorInfo sc{"experts.weight_scale_inv", DType::kF32, {4, 4, 4}, 0, 64 * 4};
    auto layout = fp8ScaleLayout(w, sc);
    REQUIRE(layout.isOk());
    std::vector<uint8_t> fp8(4 * 512 * 512);
    for (size_t i = 0; i < fp8.size(); ++i) {
        const auto b = static_cast<uint8_t>((i * 53 + i / 512) % 256);
        fp8[i] = (b & 0x7f) == 0x7f ? static_cast<uint8_t>(b ^ 1) : b;
    }
    std::vector<float> s(64);
    for (size_t i = 0; i < s.size(); ++i) s[i] = 0.001f * static_cast<float>(i + 1);
    std::vector<float> a(fp8.size()), b(fp8.size());
    applyFp8Scales(DType::kF8E4M3, fp8.data(), s.data(), *layout, a.data(), 1);
    applyFp8Scales(DType::kF8E4M3, fp8.data(), s.data(), *layout, b.data(), 4);
    CHECK(std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
    // one element by hand: matrix 3, row 300, column 200 -> block (2, 1) of matrix 3
    const size_t at = (3 * 512 + 300) * 512 + 200;
    CHECK(floatBits(b[at]) == floatBits(f8e4m3ToF32(fp8[at]) * s[3 * 16 + 2 * 4 + 1]));
}

// Builds small layer caches for engine tests with the real writer (io/cache_format.h) and the
// real quantizer kernels, and computes the expected full-precision tensors independently of
// the engine: read the layer file back whole and dequantize it with sli::kernels.
#pragma once

#include <unistd.h>

#include <cstring>
#include <doctest/doctest.h>
#include <filesystem>
#include <span>
#include <stdexcept>
#include <random>
#include <string>
#include <vector>

#include "io/cache_format.h"
#include "io/cache_manifest.h"
#include "sli/config.h"
#include "sli/engine.h"
#include "sli/kernels.h"
#include "sli/quantized.h"

namespace sli::testutil {

struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/sli-engine-XXXXXX";
        path = ::mkdtemp(tmpl);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

struct TestCache {
    std::string root;
    std::string dir;  // the model/config directory
    std::vector<std::string> files;
    QuantizationConfig config;
};

inline QuantizedTensor makeTensor(const std::string& name, std::vector<int64_t> shape,
                                  QuantizationMode mode, const QuantizationConfig& cfg,
                                  std::mt19937& rng) {
    QuantizedTensor q;
    q.info.name = name;
    q.info.shape = std::move(shape);
    q.info.mode = mode;
    q.info.computeDType = cfg.computeDType;
    q.info.sourceDType = DType::kF32;
    q.info.storedDType = mode == QuantizationMode::kNone ? DType::kF32 : DType::kU8;
    if (mode == QuantizationMode::kInt8 || mode == QuantizationMode::kInt8Dynamic) {
        q.info.storedDType = DType::kI8;
    }
    if (modeIs4bit(mode)) {
        q.info.blocksize = cfg.blocksize;
        q.info.doubleQuant = cfg.doubleQuant;
        q.info.nestedBlocksize = cfg.doubleQuant ? 256 : 0;
    }
    if (mode == QuantizationMode::kInt4) q.info.blocksize = 32;
    int64_t n = 1;
    for (auto d : q.info.shape) n *= d;
    std::normal_distribution<float> dist(0.0f, 0.05f);
    std::vector<float> src(static_cast<size_t>(n));
    for (auto& v : src) v = dist(rng);
    Status s = kernels::quantize(src, q, 1);
    if (!s.isOk()) throw std::runtime_error(s.toString());
    return q;
}

// A Llama-shaped toy cache: `layers` layers, each with attention + MLP weights in `mode` and a
// norm kept in f32.
inline TestCache makeCache(const std::string& root, int layers, QuantizationMode mode,
                           DType compute = DType::kF32, const std::string& modelId = "toy/llama",
                           int hidden = 128) {
    TestCache tc;
    tc.root = root;
    tc.config.mode = mode;
    tc.config.computeDType = compute;
    if (mode == QuantizationMode::kFp4) tc.config.quantType = "fp4";
    tc.dir = io::cacheDirFor(root, modelId, tc.config.fingerprint());
    std::filesystem::create_directories(tc.dir);
    io::CacheManifest m;
    m.modelId = modelId;
    m.configJson = tc.config.toJsonString();
    m.configFingerprint = tc.config.fingerprint();
    m.source = "synthetic";
    m.sourceFingerprint = "0123456789abcdef";
    std::mt19937 rng(1234);
    for (int l = 0; l < layers; ++l) {
        QuantizedLayer ql;
        ql.index = l;
        ql.name = "model.layers." + std::to_string(l);
        const std::string p = ql.name + ".";
        ql.tensors.push_back(makeTensor(p + "self_attn.q_proj.weight", {hidden, hidden}, mode, tc.config, rng));
        ql.tensors.push_back(makeTensor(p + "mlp.up_proj.weight", {hidden * 2 + 32, hidden}, mode, tc.config, rng));
        ql.tensors.push_back(makeTensor(p + "input_layernorm.weight", {hidden}, QuantizationMode::kNone, tc.config, rng));
        const std::string file = io::layerFileName(l);
        io::LayerFileMeta meta{modelId, m.configJson, m.sourceFingerprint};
        Status s = io::writeLayerFile(tc.dir + "/" + file, ql, meta);
        if (!s.isOk()) throw std::runtime_error(s.toString());
        m.layers.push_back({l, ql.name, file, static_cast<uint32_t>(ql.tensors.size())});
        tc.files.push_back(tc.dir + "/" + file);
    }
    Status s = io::writeManifest(tc.dir, m);
    if (!s.isOk()) throw std::runtime_error(s.toString());
    return tc;
}

// A tensor kept as stored (mode NONE) from raw bytes, no kernels involved: integer buffers
// such as position_ids or attention masks (handed out verbatim), or floats in `dtype`.
inline QuantizedTensor makeStoredTensor(const std::string& name, std::vector<int64_t> shape,
                                        DType dtype, std::span<const uint8_t> bytes,
                                        DType compute) {
    QuantizedTensor q;
    q.info.name = name;
    q.info.shape = std::move(shape);
    q.info.mode = QuantizationMode::kNone;
    q.info.storedDType = dtype;
    q.info.sourceDType = dtype;
    q.info.computeDType = dtypeIsFloat(dtype) ? compute : dtype;
    auto buf = AlignedBuffer::allocate(bytes.size(), false);
    if (!buf.isOk()) throw std::runtime_error(buf.status().toString());
    if (!bytes.empty()) std::memcpy(buf->data(), bytes.data(), bytes.size());
    q.part(QuantPart::kPayload) = std::move(buf).value();
    Status s = q.validate();
    if (!s.isOk()) throw std::runtime_error(s.toString());
    return q;
}

// Writes `layers` (index i at position i) and their manifest as a cache under `root`.
inline TestCache writeCache(const std::string& root, const std::string& modelId,
                            const QuantizationConfig& config, const std::vector<QuantizedLayer>& layers,
                            const io::LayerWriteOptions& options = {}) {
    TestCache tc;
    tc.root = root;
    tc.config = config;
    tc.dir = io::cacheDirFor(root, modelId, config.fingerprint());
    std::filesystem::create_directories(tc.dir);
    io::CacheManifest m;
    m.modelId = modelId;
    m.configJson = config.toJsonString();
    m.configFingerprint = config.fingerprint();
    m.source = "synthetic";
    m.sourceFingerprint = "0123456789abcdef";
    for (const auto& ql : layers) {
        const std::string file = io::layerFileName(ql.index);
        io::LayerFileMeta meta{modelId, m.configJson, m.sourceFingerprint};
        Status s = io::writeLayerFile(tc.dir + "/" + file, ql, meta, options);
        if (!s.isOk()) throw std::runtime_error(s.toString());
        m.layers.push_back({ql.index, ql.name, file, static_cast<uint32_t>(ql.tensors.size())});
        tc.files.push_back(tc.dir + "/" + file);
    }
    Status s = io::writeManifest(tc.dir, m);
    if (!s.isOk()) throw std::runtime_error(s.toString());
    return tc;
}

// Expected bytes of every tensor of layer file `path`, dequantized to `dtype`.
inline std::vector<std::vector<uint8_t>> expectedLayer(const std::string& path, DType dtype) {
    auto q = io::readLayerFile(path, true);
    if (!q.isOk()) throw std::runtime_error(q.status().toString());
    std::vector<std::vector<uint8_t>> out;
    for (const auto& t : q->tensors) {
        std::vector<uint8_t> bytes(static_cast<size_t>(t.info.numel()) * dtypeSize(dtype));
        Status s = kernels::dequantize(t.view(), dtype, bytes, 1);
        if (!s.isOk()) throw std::runtime_error(s.toString());
        out.push_back(std::move(bytes));
    }
    return out;
}

// Checks a CPU lease of `layer` against expectedLayer() of that layer's file in f32.
inline void checkLayer(const Lease& lease, const TestCache& tc, int64_t layer) {
    const auto want = expectedLayer(tc.files[static_cast<size_t>(layer)], DType::kF32);
    const Layer& t = lease.tensors();
    REQUIRE(t.size() == want.size());
    for (size_t k = 0; k < t.size(); ++k) {
        REQUIRE(t[k].nbytes() == want[k].size());
        CHECK_MESSAGE(std::memcmp(t[k].data(), want[k].data(), want[k].size()) == 0,
                      "layer " << layer << " tensor " << t[k].name());
    }
}

// Engine options for a test cache: pread (deterministic everywhere), two workers, a 64 MiB
// budget.
inline EngineOptions cacheEngineOptions(const TestCache& tc) {
    EngineOptions o;
    o.cacheDir = tc.root;
    o.hostBudgetBytes = 64ull << 20;
    o.workerThreads = 2;
    o.ioBackend = "pread";
    return o;
}

// A cache of two 16-value f32 layers ("<prefix>0.w", "<prefix>1.w"), stored as is, handed out
// in `compute`.
inline TestCache writeTinyCache(const std::string& root, const std::string& modelId,
                                const std::string& prefix, DType compute, uint8_t fill) {
    QuantizationConfig cfg;
    cfg.mode = QuantizationMode::kNone;
    cfg.computeDType = compute;
    std::vector<uint8_t> bytes(16 * 4, fill);
    std::vector<QuantizedLayer> layers;
    for (int64_t l = 0; l < 2; ++l) {
        QuantizedLayer ql;
        ql.index = l;
        ql.name = prefix + std::to_string(l);
        ql.tensors.push_back(makeStoredTensor(ql.name + ".w", {16}, DType::kF32, bytes, compute));
        layers.push_back(std::move(ql));
    }
    return writeCache(root, modelId, cfg, layers);
}

}  // namespace sli::testutil

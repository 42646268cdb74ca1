// See slibench_model.h.
#include "slibench_model.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <thread>

#include "io/cache_format.h"
#include "engine/ingest.h"
#include "io/cache_manifest.h"
#include "sli/cache.h"
#include "sli/dtype.h"
#include "sli/kernels.h"
#include "sli/quantized.h"
#include "sli/quantizer.h"
#include "sli/safetensors.h"
#include "sli/tensor.h"

namespace sli::bench {

namespace fs = std::filesystem;

namespace {

constexpr const char* kGeneratorVersion = "1";
constexpr int64_t kGenChunk = 1 << 22;  // elements generated per append

double secondsSince(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// Element i of tensor `tensorId`: about N(0, 0.02) (Irwin-Hall of four 16-bit uniforms) for
// weights, 1 + small noise for norms; a deterministic function of its arguments only.
void fillTensor(uint64_t seed, uint64_t tensorId, bool norm, int64_t begin, int64_t n,
                uint16_t* out) {
    const uint64_t base = splitmix64(seed * 0x2545F4914F6CDD1Dull ^ (tensorId << 40));
    auto work = [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
            const uint64_t h = splitmix64(base + static_cast<uint64_t>(begin + i));
            const float s = static_cast<float>((h & 0xFFFF) + ((h >> 16) & 0xFFFF) +
                                               ((h >> 32) & 0xFFFF) + (h >> 48)) *
                                (1.0f / 65536.0f) -
                            2.0f;  // mean 0, variance 1/3
            const float v = norm ? 1.0f + 0.05f * s : 0.02f * 1.7320508f * s;
            out[i] = f32ToBf16(v);
        }
    };
    if (n < (1 << 16)) {
        work(0, n);
        return;
    }
    std::thread other([&] { work(n / 2, n); });
    work(0, n / 2);
    other.join();
}

std::vector<std::pair<std::string, std::string>> expectedMetadata(const ModelShape& s) {
    return {{"format", "pt"},
            {"slibench_generator", kGeneratorVersion},
            {"slibench_key", s.key()},
            {"hidden_size", std::to_string(s.hidden)},
            {"intermediate_size", std::to_string(s.intermediate)},
            {"num_attention_heads", std::to_string(s.heads)},
            {"num_key_value_heads", std::to_string(s.kvHeads)},
            {"num_hidden_layers", std::to_string(s.layers)}};
}

// OK when `path` is the model `shape` describes (strict header parse, metadata, tensor list).
Result<SafetensorsModel> validateModel(const std::string& path, const ModelShape& shape) {
    SLI_ASSIGN_OR_RETURN(SafetensorsModel m, SafetensorsModel::open(path));
    const auto want = expectedMetadata(shape);
    for (const auto& [k, v] : want) {
        bool found = false;
        for (const auto& [mk, mv] : m.metadata()) found = found || (mk == k && mv == v);
        if (!found) return Status::corruption(path + ": metadata " + k + " is not " + v);
    }
    size_t count = 0;
    for (int64_t l = 0; l < shape.layers; ++l) {
        for (const auto& t : layerTensors(shape, l)) {
            const auto* e = m.find(t.name);
            if (e == nullptr) return Status::corruption(path + ": tensor " + t.name + " missing");
            if (e->info->dtype != DType::kBF16 || e->info->shape != t.shape) {
                return Status::corruption(path + ": tensor " + t.name + " has the wrong shape or dtype");
            }
            ++count;
        }
    }
    if (count != m.tensors().size()) return Status::corruption(path + ": unexpected tensors");
    return m;
}

}  // namespace

Status ModelShape::validate() const {
    if (hidden <= 0 || intermediate <= 0 || heads <= 0 || kvHeads <= 0 || layers <= 0) {
        return Status::invalidArgument("model shape: every size must be positive");
    }
    if (hidden % heads != 0) {
        return Status::invalidArgument("model shape: hidden size " + std::to_string(hidden) +
                                       " is not a multiple of the " + std::to_string(heads) +
                                       " attention heads");
    }
    if (heads % kvHeads != 0) {
        return Status::invalidArgument("model shape: " + std::to_string(heads) +
                                       " attention heads are not a multiple of the " +
                                       std::to_string(kvHeads) + " key/value heads");
    }
    // INT4 (Q4_0) and NF4 blocks: every weight row count a multiple of 32 keeps all modes valid.
    if (hidden % 32 != 0 || intermediate % 32 != 0 || kvDim() % 32 != 0) {
        return Status::invalidArgument(
            "model shape: hidden, intermediate and key/value sizes must be multiples of 32");
    }
    return Status();
}

int64_t ModelShape::paramsPerLayer() const {
    int64_t n = 0;
    for (const auto& t : layerTensors(*this, 0)) {
        int64_t k = 1;
        for (auto d : t.shape) k *= d;
        n += k;
    }
    return n;
}

std::string ModelShape::key() const {
    return "llama-h" + std::to_string(hidden) + "-i" + std::to_string(intermediate) + "-a" +
           std::to_string(heads) + "-kv" + std::to_string(kvHeads) + "-l" +
           std::to_string(layers) + "-s" + std::to_string(seed);
}

std::vector<TensorSpec> layerTensors(const ModelShape& s, int64_t l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const int64_t h = s.hidden, i = s.intermediate, kv = s.kvDim();
    return {
        {p + "input_layernorm.weight", {h}},
        {p + "self_attn.q_proj.weight", {h, h}},
        {p + "self_attn.k_proj.weight", {kv, h}},
        {p + "self_attn.v_proj.weight", {kv, h}},
        {p + "self_attn.o_proj.weight", {h, h}},
        {p + "post_attention_layernorm.weight", {h}},
        {p + "mlp.gate_proj.weight", {i, h}},
        {p + "mlp.up_proj.weight", {i, h}},
        {p + "mlp.down_proj.weight", {h, i}},
    };
}

Result<GeneratedModel> ensureModel(const std::string& workdir, const ModelShape& shape,
                                   const ProgressFn& progress) {
    SLI_RETURN_IF_ERROR(shape.validate());
    GeneratedModel g;
    const std::string dir = workdir + "/models/" + shape.key();
    g.path = dir + "/model.safetensors";
    g.modelId = "slibench/" + shape.key();
    std::error_code ec;
    if (fs::exists(g.path, ec)) {
        auto m = validateModel(g.path, shape);
        if (m.isOk()) {
            g.fingerprint = m->fingerprint();
            g.bytes = m->totalTensorBytes();
            g.reused = true;
            return g;
        }
        if (progress) progress("model " + g.path + " is not valid (" + m.status().message() +
                               "): generating it again");
        fs::remove(g.path, ec);
    }
    fs::create_directories(dir, ec);
    if (ec) return Status::ioError("cannot create " + dir + ": " + ec.message());

    const auto t0 = std::chrono::steady_clock::now();
    std::vector<SafetensorsWriter::TensorDecl> decls;
    for (int64_t l = 0; l < shape.layers; ++l) {
        for (auto& t : layerTensors(shape, l)) decls.push_back({t.name, DType::kBF16, t.shape});
    }
    SLI_ASSIGN_OR_RETURN(SafetensorsWriter w,
                         SafetensorsWriter::create(g.path, decls, expectedMetadata(shape)));
    std::vector<uint16_t> buf(kGenChunk);
    uint64_t tensorId = 0;
    for (int64_t l = 0; l < shape.layers; ++l) {
        for (const auto& t : layerTensors(shape, l)) {
            int64_t n = 1;
            for (auto d : t.shape) n *= d;
            const bool norm = t.shape.size() == 1;
            for (int64_t b = 0; b < n; b += kGenChunk) {
                const int64_t k = std::min<int64_t>(kGenChunk, n - b);
                fillTensor(shape.seed, tensorId, norm, b, k, buf.data());
                SLI_RETURN_IF_ERROR(w.append(std::span<const uint8_t>(
                    reinterpret_cast<const uint8_t*>(buf.data()), static_cast<size_t>(k) * 2)));
            }
            ++tensorId;
        }
        if (progress) {
            progress("generating " + shape.key() + ": layer " + std::to_string(l + 1) + "/" +
                     std::to_string(shape.layers));
        }
    }
    SLI_RETURN_IF_ERROR(w.finish());
    SLI_ASSIGN_OR_RETURN(SafetensorsModel m, validateModel(g.path, shape));
    g.fingerprint = m.fingerprint();
    g.bytes = m.totalTensorBytes();
    g.seconds = secondsSince(t0);
    return g;
}

QuantizationConfig configForMode(QuantizationMode mode) {
    QuantizationConfig c;
    switch (mode) {
        case QuantizationMode::kInt8: c = getInt8Config(); break;
        case QuantizationMode::kNf4: c = getNf4Config(); break;
        case QuantizationMode::kFp4: c = getFp4Config(); break;
        default: c.mode = mode; break;
    }
    c.computeDType = DType::kBF16;
    return c;
}

namespace {

// Fills cb.files / fileBytes / params from the layer files `m` lists under cb.dir, reading
// (and so checking) each file's index.
Status scanLayers(const io::CacheManifest& m, CacheBuild& cb) {
    cb.files.clear();
    cb.fileBytes = cb.params = 0;
    for (const auto& l : m.layers) {
        const std::string path = cb.dir + "/" + l.file;
        SLI_ASSIGN_OR_RETURN(io::LayerFileIndex idx, io::readLayerIndex(path));
        cb.files.push_back(path);
        cb.fileBytes += idx.dataEnd;
        for (const auto& t : idx.tensors) cb.params += static_cast<uint64_t>(t.info.numel());
    }
    if (m.layers.empty()) return Status::notFound("cache " + cb.dir + " lists no layers");
    return Status();
}

}  // namespace

Result<CacheBuild> openCache(const std::string& root, const std::string& modelId) {
    std::error_code ec;
    if (!fs::is_directory(root, ec)) {
        return Status::notFound("cache " + root + ": no such directory");
    }
    SLI_ASSIGN_OR_RETURN(auto dirs, io::findCacheDirs(root));
    std::vector<std::string> matching;
    std::vector<io::CacheManifest> manifests;
    for (const auto& d : dirs) {
        SLI_ASSIGN_OR_RETURN(io::CacheManifest m, io::readManifest(d));
        if (!modelId.empty() && m.modelId != modelId) continue;
        matching.push_back(d);
        manifests.push_back(std::move(m));
    }
    if (matching.empty()) {
        return Status::notFound("no layer cache" +
                                (modelId.empty() ? std::string() : " for model " + modelId) +
                                " under " + root + " (sli quantize --cache writes one)");
    }
    if (matching.size() > 1) {
        std::string list;
        for (const auto& d : matching) list += "\n  " + d;
        return Status::invalidArgument("several layer caches under " + root +
                                       " match; name one directory or a model id:" + list);
    }
    CacheBuild cb;
    cb.dir = matching[0];
    cb.reused = true;
    const io::CacheManifest& m = manifests[0];
    SLI_ASSIGN_OR_RETURN(QuantizationConfig cfg, QuantizationConfig::fromJsonString(m.configJson));
    cb.mode = cfg.mode;
    cb.computeDType = cfg.computeDType;
    if (!m.policyJson.empty()) cb.label = "mixed";
    SLI_RETURN_IF_ERROR(scanLayers(m, cb));
    return cb;
}

Result<CacheBuild> ensureCache(const std::string& workdir, const GeneratedModel& model,
                               QuantizationMode mode, int threads, const ProgressFn& progress) {
    const QuantizationConfig cfg = configForMode(mode);
    SLI_RETURN_IF_ERROR(cfg.validate());
    CacheBuild cb;
    cb.mode = mode;
    cb.computeDType = cfg.computeDType;
    cb.sourceBytes = model.bytes;
    const std::string root = workdir + "/caches";
    cb.dir = io::cacheDirFor(root, model.modelId, LayerCache::fingerprint(cfg));

    // Reuse: manifest from this source and config, every layer present with a valid index.
    auto scan = [&]() -> Status {
        SLI_ASSIGN_OR_RETURN(io::CacheManifest m, io::readManifest(cb.dir));
        if (m.sourceFingerprint != model.fingerprint || m.configFingerprint != cfg.fingerprint() ||
            !m.policyJson.empty()) {
            return Status::invalidArgument("made from another source or configuration");
        }
        return scanLayers(m, cb);
    };
    std::error_code ec;
    if (fs::exists(cb.dir + "/" + io::kManifestName, ec)) {
        Status s = scan();
        if (s.isOk()) {
            cb.reused = true;
            return cb;
        }
        if (progress) progress("cache " + cb.dir + " is incomplete (" + s.message() + "): rebuilding");
    }
    // Start from nothing, so the ingestion below quantizes and writes every layer and its
    // time is the whole pipeline's (read, quantize, write), never a partial rerun's.
    fs::remove_all(cb.dir, ec);
    if (ec) return Status::ioError("cannot remove cache directory " + cb.dir + ": " + ec.message());

    // sli's own machinery: what `sli quantize --preset <mode>` runs.
    IngestOptions in;
    in.input = model.path;
    in.cacheRoot = root;
    in.modelId = model.modelId;
    in.config = cfg;
    in.threads = threads;
    if (progress) {
        in.progress = [&](const IngestProgress& p) {
            progress(std::string("quantizing to ") + modeName(mode) + ": layer " +
                     std::to_string(p.layersDone) + "/" + std::to_string(p.layersTotal));
        };
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto sum = ingestCheckpoint(in);
    cb.buildSeconds = secondsSince(t0);
    if (!sum.isOk()) return sum.status().withContext("quantizing " + model.path);
    if (sum->cacheDir != cb.dir) {
        return Status::internal("ingestion wrote " + sum->cacheDir + ", expected " + cb.dir);
    }
    if (sum->layersWritten != sum->layers) {
        return Status::internal("ingestion reused layers of a removed cache " + cb.dir);
    }
    SLI_RETURN_IF_ERROR(scan());
    return cb;
}

Result<QuantizeSample> sampleQuantize(const GeneratedModel& model, QuantizationMode mode,
                                      int layers, int threads) {
    const LayerQuantizer quantizer(configForMode(mode), threads);
    SLI_ASSIGN_OR_RETURN(SafetensorsModel src, SafetensorsModel::open(model.path));
    QuantizeSample qs;
    ModelShape shape;
    for (int64_t l = 0; l < layers; ++l) {
        for (const auto& spec : layerTensors(shape, l)) {
            const auto* e = src.find(spec.name);
            if (e == nullptr) break;
            SLI_ASSIGN_OR_RETURN(AlignedBuffer raw, AlignedBuffer::allocate(e->info->nbytes(), false));
            SLI_RETURN_IF_ERROR(src.readTensor(*e, raw.bytes()));
            // Timed: bf16 -> f32 widening and the quantize kernel (LayerQuantizer does both).
            const TensorView view{e->info->name, e->info->shape, e->info->dtype, raw.data(),
                                  raw.size()};
            const auto t0 = std::chrono::steady_clock::now();
            auto q = quantizer.quantizeTensor(view);
            qs.seconds += secondsSince(t0);
            if (!q.isOk()) return q.status();
            qs.sourceBytes += e->info->nbytes();
        }
    }
    return qs;
}

}  // namespace sli::bench

// Reference data, per-mode caches, runs and metrics for the MiniLM retention study
// (see retention.h).
#include "retention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "engine/ingest.h"
#include "sli/cache.h"
#include "sli/json.h"
#include "sli/quantizer.h"

namespace sli::minilm {
namespace {

Result<std::string> readFile(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return Status::notFound("cannot open " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

QuantizationConfig configOf(QuantizationMode mode, DType dtype = DType::kF16,
                            bool doubleQuant = true) {
    QuantizationConfig c;
    c.mode = mode;
    c.computeDType = dtype;
    c.doubleQuant = doubleQuant;
    c.quantType = mode == QuantizationMode::kFp4 ? "fp4" : "nf4";
    return c;
}

}  // namespace

Result<Reference> loadReference(const std::string& dir) {
    const std::string jsonPath = dir + "/reference.json";
    SLI_ASSIGN_OR_RETURN(std::string text, readFile(jsonPath));
    auto j = parseJson(text);
    if (!j.isOk()) return j.status().withContext(jsonPath);
    Reference r;
    const Json* dim = j->find("dim");
    const Json* sentences = j->find("sentences");
    const Json* ids = j->find("token_ids");
    const Json* file = j->find("embeddings_file");
    if (dim == nullptr || !dim->asInt64() || sentences == nullptr || !sentences->isArray() ||
        ids == nullptr || !ids->isArray() || file == nullptr || !file->isString() ||
        ids->asArray().size() != sentences->asArray().size()) {
        return Status::invalidArgument(jsonPath +
                                       ": needs dim, sentences, token_ids (one list "
                                       "per sentence) and embeddings_file");
    }
    r.dim = *dim->asInt64();
    for (const Json& s : sentences->asArray()) r.sentences.push_back(s.asString());
    for (const Json& seq : ids->asArray()) {
        std::vector<int32_t> v;
        if (!seq.isArray()) return Status::invalidArgument(jsonPath + ": token_ids entry");
        for (const Json& id : seq.asArray()) {
            auto i = id.asInt64();
            if (!i || *i < 0 || *i > INT32_MAX) {
                return Status::invalidArgument(jsonPath + ": bad token id");
            }
            v.push_back(static_cast<int32_t>(*i));
        }
        r.tokens.ids.push_back(std::move(v));
    }
    if (const Json* sha = j->find("weights_sha256")) r.weightsSha256 = sha->asString();
    const std::string binPath = dir + "/" + file->asString();
    SLI_ASSIGN_OR_RETURN(std::string bin, readFile(binPath));
    const size_t want = r.sentences.size() * static_cast<size_t>(r.dim) * sizeof(float);
    if (bin.size() != want) {
        return Status::corruption(binPath + " holds " + std::to_string(bin.size()) +
                                  " bytes, expected " + std::to_string(want));
    }
    r.embeddings.resize(want / sizeof(float));
    std::memcpy(r.embeddings.data(), bin.data(), want);  // little-endian hosts only
    return r;
}

std::vector<ModeSpec> standardModes() {
    using M = QuantizationMode;
    std::vector<ModeSpec> v;
    v.push_back({"fp32", configOf(M::kNone, DType::kF32), false, "NONE, f32 (baseline)"});
    v.push_back({"none_f16", configOf(M::kNone), false, "NONE, f16"});
    v.push_back({"int8", configOf(M::kInt8), false, "INT8 (LLM.int8 weights)"});
    v.push_back({"int8_dynamic", configOf(M::kInt8Dynamic), false, "INT8_DYNAMIC"});
    v.push_back({"nf4", configOf(M::kNf4), false, "NF4, bs 64, double quant"});
    v.push_back({"nf4_nodq", configOf(M::kNf4, DType::kF16, false), false,
                 "NF4, bs 64, no double quant"});
    v.push_back({"fp4", configOf(M::kFp4), false, "FP4, bs 64, double quant"});
    v.push_back({"int4", configOf(M::kInt4), false, "INT4 (Q4_0)"});
    v.push_back({"mixed", getNf4Config(), true, "mixed preset (NF4, attn INT8)"});
    return v;
}

Result<ModeSpec> findMode(const std::string& name) {
    std::string names;
    for (auto& m : standardModes()) {
        if (m.name == name) return m;
        names += (names.empty() ? "" : ", ") + m.name;
    }
    return Status::invalidArgument("unknown mode " + name + " (" + names + ")");
}

Result<CacheInfo> buildCache(const std::string& modelDir, const std::string& cacheRoot,
                             const ModeSpec& mode, int threads) {
    IngestOptions opt;
    opt.input = modelDir + "/model.safetensors";
    opt.cacheRoot = cacheRoot + "/" + mode.name;
    opt.modelId = "all-MiniLM-L6-v2";
    opt.config = mode.config;
    if (mode.mixedPreset) useAdaptivePolicy(opt, getMixedPrecisionConfig(threads));
    opt.threads = threads;
    auto sum = ingestCheckpoint(opt);
    if (!sum.isOk()) return sum.status().withContext("mode " + mode.name);
    CacheInfo c;
    c.root = opt.cacheRoot;
    c.modelId = sum->modelId;
    c.layers = static_cast<int64_t>(sum->layers);
    c.cacheBytes = sum->cacheBytes;
    c.weights = sum->weights;
    return c;
}

Result<EncoderOutput> runStreamed(BertEncoder& encoder, const CacheInfo& cache,
                                  const TokenBatch& batch, EngineOptions eo,
                                  const EncoderOptions& options) {
    eo.cacheDir = cache.root;
    eo.modelId = cache.modelId;
    if (eo.computeDType == DType::kBool) eo.computeDType = DType::kF32;
    SLI_ASSIGN_OR_RETURN(auto engine, Engine::open(eo));
    EngineLayerSource source(*engine);
    return encoder.run(batch, source, options);
}

Result<std::vector<Layer>> loadDequantized(const CacheInfo& cache, DType dtype, int threads) {
    SLI_ASSIGN_OR_RETURN(auto lc, LayerCache::open(cache.root));
    std::vector<Layer> layers;
    for (int64_t i = 0; i < cache.layers; ++i) {
        SLI_ASSIGN_OR_RETURN(QuantizedLayer q, lc->getLayer(cache.modelId, i));
        SLI_ASSIGN_OR_RETURN(Layer l, LayerQuantizer::dequantizeLayer(q, dtype, threads));
        layers.push_back(std::move(l));
    }
    return layers;
}

double cosine(const float* a, const float* b, int64_t n) {
    double ab = 0, aa = 0, bb = 0;
    for (int64_t i = 0; i < n; ++i) {
        ab += static_cast<double>(a[i]) * b[i];
        aa += static_cast<double>(a[i]) * a[i];
        bb += static_cast<double>(b[i]) * b[i];
    }
    return ab / std::sqrt(aa * bb);
}

std::vector<int64_t> nearestNeighbours(const std::vector<float>& emb, int64_t dim) {
    const int64_t rows = static_cast<int64_t>(emb.size()) / dim;
    std::vector<int64_t> nn(static_cast<size_t>(rows), -1);
    for (int64_t i = 0; i < rows; ++i) {
        double best = -2;
        for (int64_t j = 0; j < rows; ++j) {
            if (j == i) continue;
            const double c = cosine(&emb[i * dim], &emb[j * dim], dim);
            if (c > best) best = c, nn[i] = j;
        }
    }
    return nn;
}

Retention compareOutputs(const EncoderOutput& base, const EncoderOutput& out) {
    Retention r;
    const int64_t d = base.hiddenSize;
    const int64_t rows = static_cast<int64_t>(base.embeddings.size()) / d;
    r.minCosine = 2;
    for (int64_t i = 0; i < rows; ++i) {
        const double c = cosine(&base.embeddings[i * d], &out.embeddings[i * d], d);
        r.meanCosine += c / static_cast<double>(rows);
        r.minCosine = std::min(r.minCosine, c);
    }
    const auto nb = nearestNeighbours(base.embeddings, d);
    const auto no = nearestNeighbours(out.embeddings, d);
    int64_t same = 0;
    for (size_t i = 0; i < nb.size(); ++i) same += nb[i] == no[i];
    r.nnAgreement = static_cast<double>(same) / static_cast<double>(rows);
    for (size_t s = 0; s < base.hiddenStates.size() && s < out.hiddenStates.size(); ++s) {
        double num = 0, den = 0;
        const auto& a = base.hiddenStates[s];
        const auto& b = out.hiddenStates[s];
        for (size_t i = 0; i < a.size(); ++i) {
            const double e = static_cast<double>(b[i]) - a[i];
            num += e * e;
            den += static_cast<double>(a[i]) * a[i];
        }
        r.stageRelL2.push_back(std::sqrt(num / den));
    }
    return r;
}

}  // namespace sli::minilm

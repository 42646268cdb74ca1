// BERT encoder forward pass on streamed layers (see bert_encoder.h).
#include "bert_encoder.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "sli/json.h"

namespace sli::minilm {
namespace {

Result<int64_t> intField(const Json& j, const char* key, int64_t fallback) {
    const Json* v = j.find(key);
    if (v == nullptr) return fallback;
    auto i = v->asInt64();
    if (!v->isNumber() || !i || *i <= 0) {
        return Status::invalidArgument(std::string("config.json: ") + key +
                                       " is not a positive integer");
    }
    return *i;
}

// f32 copy (or the tensor's own bytes when already f32) of a tensor of the expected shape.
Result<const float*> floatsOf(const Layer& layer, const std::string& name,
                              std::vector<int64_t> shape, std::vector<float>& scratch) {
    const Tensor* t = layer.find(name);
    if (t == nullptr) {
        return Status::invalidArgument("layer " + layer.name() + ": tensor " + name +
                                       " is missing");
    }
    if (t->shape() != shape) {
        return Status::invalidArgument("tensor " + name + " has shape " +
                                       shapeToString(t->shape()) + ", expected " +
                                       shapeToString(shape));
    }
    if (t->dtype() == DType::kF32) return t->as<float>();
    scratch.resize(static_cast<size_t>(t->numel()));
    SLI_RETURN_IF_ERROR(convertToF32(t->dtype(), t->data(), t->numel(), scratch.data())
                            .withContext("tensor " + name));
    return scratch.data();
}

// A Linear's weight [out][in] as f32, transposed to [in][out] so the product streams rows.
Status transposedWeight(const Layer& layer, const std::string& name, int64_t out, int64_t in,
                        std::vector<float>& scratch, std::vector<float>& wt) {
    SLI_ASSIGN_OR_RETURN(const float* w, floatsOf(layer, name, {out, in}, scratch));
    wt.resize(static_cast<size_t>(out * in));
    for (int64_t o = 0; o < out; ++o) {
        for (int64_t i = 0; i < in; ++i) wt[i * out + o] = w[o * in + i];
    }
    return Status::ok();
}

// y[t][o] = b[o] + sum_i x[t][i] * wt[i][o] for t in [t0, t1). Four rows at a time share each
// weight row; the inner loop has no reduction, so it vectorizes without reassociation and the
// result does not depend on how rows are split between threads.
void linearRows(const float* x, const float* wt, const float* b, float* y, int64_t t0, int64_t t1,
                int64_t in, int64_t out) {
    int64_t t = t0;
    for (; t + 4 <= t1; t += 4) {
        float* y0 = y + t * out;
        float* y1 = y0 + out;
        float* y2 = y1 + out;
        float* y3 = y2 + out;
        for (int64_t o = 0; o < out; ++o) y0[o] = y1[o] = y2[o] = y3[o] = b[o];
        const float* x0 = x + t * in;
        for (int64_t i = 0; i < in; ++i) {
            const float a0 = x0[i], a1 = x0[in + i], a2 = x0[2 * in + i], a3 = x0[3 * in + i];
            const float* w = wt + i * out;
            for (int64_t o = 0; o < out; ++o) {
                y0[o] += a0 * w[o];
                y1[o] += a1 * w[o];
                y2[o] += a2 * w[o];
                y3[o] += a3 * w[o];
            }
        }
    }
    for (; t < t1; ++t) {
        float* yr = y + t * out;
        for (int64_t o = 0; o < out; ++o) yr[o] = b[o];
        for (int64_t i = 0; i < in; ++i) {
            const float a = x[t * in + i];
            const float* w = wt + i * out;
            for (int64_t o = 0; o < out; ++o) yr[o] += a * w[o];
        }
    }
}

void linear(const float* x, const float* wt, const float* b, float* y, int64_t rows, int64_t in,
            int64_t out, int threads) {
    const int64_t blocks = (rows + 3) / 4;
    const int n = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, blocks)));
    if (n == 1) {
        linearRows(x, wt, b, y, 0, rows, in, out);
        return;
    }
    std::vector<std::thread> pool;
    for (int k = 0; k < n; ++k) {
        const int64_t t0 = std::min(rows, blocks * k / n * 4);
        const int64_t t1 = std::min(rows, blocks * (k + 1) / n * 4);
        pool.emplace_back([=] { linearRows(x, wt, b, y, t0, t1, in, out); });
    }
    for (auto& th : pool) th.join();
}

// x[t] = LayerNorm(x[t] (+ residual[t])) * gamma + beta, statistics in double.
void layerNorm(float* x, const float* residual, const float* gamma, const float* beta, int64_t rows,
               int64_t h, double eps) {
    for (int64_t t = 0; t < rows; ++t) {
        float* r = x + t * h;
        if (residual != nullptr) {
            for (int64_t i = 0; i < h; ++i) r[i] += residual[t * h + i];
        }
        double mean = 0;
        for (int64_t i = 0; i < h; ++i) mean += r[i];
        mean /= static_cast<double>(h);
        double var = 0;
        for (int64_t i = 0; i < h; ++i) var += (r[i] - mean) * (r[i] - mean);
        var /= static_cast<double>(h);
        const double inv = 1.0 / std::sqrt(var + eps);
        for (int64_t i = 0; i < h; ++i) {
            r[i] = static_cast<float>((r[i] - mean) * inv) * gamma[i] + beta[i];
        }
    }
}

// "bert.encoder.layer.3.attention..." -> prefix "bert.encoder.layer.3.", index 3;
// "embeddings.word_embeddings.weight" -> prefix "embeddings.", index -1. False otherwise.
bool groupOf(const std::string& name, std::string* prefix, int64_t* index) {
    static const std::string kLayer = "encoder.layer.";
    static const std::string kEmb = "embeddings.";
    size_t p = name.find(kLayer);
    if (p != std::string::npos && (p == 0 || name[p - 1] == '.')) {
        size_t q = p + kLayer.size();
        size_t e = q;
        while (e < name.size() && name[e] >= '0' && name[e] <= '9') ++e;
        if (e == q || e >= name.size() || name[e] != '.') return false;
        *index = std::stoll(name.substr(q, e - q));
        *prefix = name.substr(0, e + 1);
        return true;
    }
    p = name.find(kEmb);
    if (p != std::string::npos && (p == 0 || name[p - 1] == '.')) {
        *index = -1;
        *prefix = name.substr(0, p + kEmb.size());
        return true;
    }
    return false;
}

}  // namespace

Result<BertConfig> BertConfig::fromFile(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return Status::notFound("cannot open " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    auto j = parseJson(ss.str());
    if (!j.isOk()) return j.status().withContext(path);
    BertConfig c;
    SLI_ASSIGN_OR_RETURN(c.hiddenSize, intField(*j, "hidden_size", c.hiddenSize));
    SLI_ASSIGN_OR_RETURN(c.numHeads, intField(*j, "num_attention_heads", c.numHeads));
    SLI_ASSIGN_OR_RETURN(c.intermediateSize, intField(*j, "intermediate_size", c.intermediateSize));
    SLI_ASSIGN_OR_RETURN(c.numLayers, intField(*j, "num_hidden_layers", c.numLayers));
    SLI_ASSIGN_OR_RETURN(c.maxPositions, intField(*j, "max_position_embeddings", c.maxPositions));
    SLI_ASSIGN_OR_RETURN(c.vocabSize, intField(*j, "vocab_size", c.vocabSize));
    if (const Json* eps = j->find("layer_norm_eps"); eps != nullptr && eps->isNumber()) {
        c.layerNormEps = eps->asDouble();
    }
    if (const Json* act = j->find("hidden_act"); act != nullptr && act->asString() != "gelu") {
        return Status::notSupported(path + ": hidden_act " + act->asString() +
                                    " (only \"gelu\", the erf form)");
    }
    if (const Json* pe = j->find("position_embedding_type");
        pe != nullptr && pe->asString() != "absolute") {
        return Status::notSupported(path + ": position_embedding_type " + pe->asString());
    }
    if (c.hiddenSize % c.numHeads != 0) {
        return Status::invalidArgument(path + ": hidden_size is not a multiple of the heads");
    }
    return c;
}

int64_t TokenBatch::totalTokens() const {
    int64_t n = 0;
    for (const auto& s : ids) n += static_cast<int64_t>(s.size());
    return n;
}

Status EngineLayerSource::withLayer(int64_t k, const std::function<Status(const Layer&)>& fn) {
    SLI_ASSIGN_OR_RETURN(Lease lease, engine_.acquire(k));
    Status s = fn(lease.tensors());
    lease.release();
    return s;
}

Status MemoryLayerSource::withLayer(int64_t k, const std::function<Status(const Layer&)>& fn) {
    if (k < 0 || k >= numLayers()) {
        return Status::invalidArgument("layer " + std::to_string(k) + " out of range");
    }
    return fn(layers_[static_cast<size_t>(k)]);
}

struct BertEncoder::Pass {
    const TokenBatch* batch = nullptr;
    const EncoderOptions* options = nullptr;
    int64_t tokens = 0;
    bool embedded = false;
    int64_t nextLayer = 0;
    std::vector<float> x;  // [tokens][h]
    // scratch
    std::vector<float> q, k, v, ctx, tmp, inter, conv, wt;
    EncoderOutput out;
};

Status BertEncoder::embed(Pass& p, const Layer& layer, const std::string& pre) {
    const int64_t h = config_.hiddenSize;
    std::vector<float> s1, s2, s3, s4, s5;
    SLI_ASSIGN_OR_RETURN(const float* word, floatsOf(layer, pre + "word_embeddings.weight",
                                                     {config_.vocabSize, h}, s1));
    SLI_ASSIGN_OR_RETURN(const float* pos, floatsOf(layer, pre + "position_embeddings.weight",
                                                    {config_.maxPositions, h}, s2));
    const Tensor* typeT = layer.find(pre + "token_type_embeddings.weight");
    if (typeT == nullptr || typeT->shape().size() != 2 || typeT->shape()[1] != h) {
        return Status::invalidArgument("tensor " + pre +
                                       "token_type_embeddings.weight is missing or misshapen");
    }
    SLI_ASSIGN_OR_RETURN(const float* type,
                         floatsOf(layer, pre + "token_type_embeddings.weight", typeT->shape(), s3));
    SLI_ASSIGN_OR_RETURN(const float* g, floatsOf(layer, pre + "LayerNorm.weight", {h}, s4));
    SLI_ASSIGN_OR_RETURN(const float* b, floatsOf(layer, pre + "LayerNorm.bias", {h}, s5));
    p.x.assign(static_cast<size_t>(p.tokens * h), 0.0f);
    int64_t t = 0;
    for (size_t s = 0; s < p.batch->ids.size(); ++s) {
        const auto& seq = p.batch->ids[s];
        if (static_cast<int64_t>(seq.size()) > config_.maxPositions) {
            return Status::invalidArgument("sequence " + std::to_string(s) + " has " +
                                           std::to_string(seq.size()) + " tokens, more than " +
                                           std::to_string(config_.maxPositions) + " positions");
        }
        for (size_t j = 0; j < seq.size(); ++j, ++t) {
            const int32_t id = seq[j];
            if (id < 0 || id >= config_.vocabSize) {
                return Status::invalidArgument("sequence " + std::to_string(s) + ": token id " +
                                               std::to_string(id) + " out of range");
            }
            float* r = p.x.data() + t * h;
            const float* we = word + static_cast<int64_t>(id) * h;
            const float* pe = pos + static_cast<int64_t>(j) * h;
            for (int64_t i = 0; i < h; ++i) r[i] = (we[i] + type[i]) + pe[i];
        }
    }
    layerNorm(p.x.data(), nullptr, g, b, p.tokens, h, config_.layerNormEps);
    p.embedded = true;
    return Status::ok();
}

Status BertEncoder::encoderLayer(Pass& p, const Layer& layer, const std::string& pre) {
    const int64_t h = config_.hiddenSize, f = config_.intermediateSize, T = p.tokens;
    const int64_t heads = config_.numHeads, d = h / heads;
    const int threads = std::max(1, p.options->threads);
    std::vector<float> sb1, sb2, sb3;
    auto proj = [&](const std::string& name, int64_t out, int64_t in, const float* x,
                    std::vector<float>& y) -> Status {
        SLI_RETURN_IF_ERROR(transposedWeight(layer, pre + name + ".weight", out, in, p.conv, p.wt));
        SLI_ASSIGN_OR_RETURN(const float* bias, floatsOf(layer, pre + name + ".bias", {out}, sb1));
        y.resize(static_cast<size_t>(T * out));
        linear(x, p.wt.data(), bias, y.data(), T, in, out, threads);
        return Status::ok();
    };
    auto norm = [&](const std::string& name, float* x, const float* residual) -> Status {
        SLI_ASSIGN_OR_RETURN(const float* g, floatsOf(layer, pre + name + ".weight", {h}, sb2));
        SLI_ASSIGN_OR_RETURN(const float* b, floatsOf(layer, pre + name + ".bias", {h}, sb3));
        layerNorm(x, residual, g, b, T, h, config_.layerNormEps);
        return Status::ok();
    };

    SLI_RETURN_IF_ERROR(proj("attention.self.query", h, h, p.x.data(), p.q));
    SLI_RETURN_IF_ERROR(proj("attention.self.key", h, h, p.x.data(), p.k));
    SLI_RETURN_IF_ERROR(proj("attention.self.value", h, h, p.x.data(), p.v));

    // Attention, per sequence and head, over the sequence's own tokens.
    p.ctx.assign(static_cast<size_t>(T * h), 0.0f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    std::vector<float> prob;
    int64_t off = 0;
    for (const auto& seq : p.batch->ids) {
        const int64_t n = static_cast<int64_t>(seq.size());
        prob.resize(static_cast<size_t>(n));
        for (int64_t hd = 0; hd < heads; ++hd) {
            for (int64_t i = 0; i < n; ++i) {
                const float* qi = p.q.data() + (off + i) * h + hd * d;
                float mx = -INFINITY;
                for (int64_t j = 0; j < n; ++j) {
                    const float* kj = p.k.data() + (off + j) * h + hd * d;
                    float s = 0;
                    for (int64_t e = 0; e < d; ++e) s += qi[e] * kj[e];
                    prob[j] = s * scale;
                    mx = std::max(mx, prob[j]);
                }
                float sum = 0;
                for (int64_t j = 0; j < n; ++j) {
                    prob[j] = std::exp(prob[j] - mx);
                    sum += prob[j];
                }
                const float inv = 1.0f / sum;
                float* ci = p.ctx.data() + (off + i) * h + hd * d;
                for (int64_t j = 0; j < n; ++j) {
                    const float w = prob[j] * inv;
                    const float* vj = p.v.data() + (off + j) * h + hd * d;
                    for (int64_t e = 0; e < d; ++e) ci[e] += w * vj[e];
                }
            }
        }
        off += n;
    }

    SLI_RETURN_IF_ERROR(proj("attention.output.dense", h, h, p.ctx.data(), p.tmp));
    SLI_RETURN_IF_ERROR(norm("attention.output.LayerNorm", p.tmp.data(), p.x.data()));
    p.x.swap(p.tmp);  // x = LN(attn + x)

    SLI_RETURN_IF_ERROR(proj("intermediate.dense", f, h, p.x.data(), p.inter));
    for (float& u : p.inter) {
        u = 0.5f * u * (1.0f + std::erf(u * static_cast<float>(M_SQRT1_2)));
    }
    SLI_RETURN_IF_ERROR(proj("output.dense", h, f, p.inter.data(), p.tmp));
    SLI_RETURN_IF_ERROR(norm("output.LayerNorm", p.tmp.data(), p.x.data()));
    p.x.swap(p.tmp);  // x = LN(ffn + x)
    return Status::ok();
}

Result<EncoderOutput> BertEncoder::run(const TokenBatch& batch, LayerSource& source,
                                       const EncoderOptions& options) {
    Pass p;
    p.batch = &batch;
    p.options = &options;
    p.tokens = batch.totalTokens();
    if (batch.ids.empty() || p.tokens == 0) {
        return Status::invalidArgument("empty token batch");
    }
    for (size_t s = 0; s < batch.ids.size(); ++s) {
        if (batch.ids[s].empty()) {
            return Status::invalidArgument("sequence " + std::to_string(s) + " has no tokens");
        }
    }
    const int64_t h = config_.hiddenSize;
    p.out.hiddenSize = h;

    for (int64_t k = 0; k < source.numLayers(); ++k) {
        SLI_RETURN_IF_ERROR(source.withLayer(k, [&](const Layer& layer) -> Status {
            // The model groups this cache layer holds, in model order.
            std::map<int64_t, std::string> groups;
            for (const Tensor& t : layer) {
                std::string prefix;
                int64_t index = 0;
                if (groupOf(t.name(), &prefix, &index)) groups.emplace(index, prefix);
            }
            for (const auto& [index, prefix] : groups) {
                if (index < 0) {
                    if (p.embedded) {
                        return Status::invalidArgument("layer " + layer.name() +
                                                       ": embeddings seen twice");
                    }
                    SLI_RETURN_IF_ERROR(embed(p, layer, prefix));
                    if (options.keepHiddenStates) {
                        p.out.hiddenStates.push_back(p.x);
                        p.out.stageNames.push_back("embeddings");
                    }
                    continue;
                }
                if (!p.embedded || index != p.nextLayer) {
                    return Status::invalidArgument(
                        "layer " + layer.name() + ": encoder layer " + std::to_string(index) +
                        " arrived out of order (expected " +
                        (p.embedded ? std::to_string(p.nextLayer) : std::string("embeddings")) +
                        ")");
                }
                SLI_RETURN_IF_ERROR(encoderLayer(p, layer, prefix));
                ++p.nextLayer;
                if (options.keepHiddenStates) {
                    p.out.hiddenStates.push_back(p.x);
                    p.out.stageNames.push_back("encoder.layer." + std::to_string(index));
                }
            }
            return Status::ok();
        }));
    }
    if (!p.embedded || p.nextLayer != config_.numLayers) {
        return Status::invalidArgument("the layers ended after " + std::to_string(p.nextLayer) +
                                       " of " + std::to_string(config_.numLayers) +
                                       " encoder layers" +
                                       (p.embedded ? "" : " and without the embeddings"));
    }

    // Mean pooling over each sequence's tokens, then L2 normalization.
    p.out.embeddings.assign(batch.ids.size() * static_cast<size_t>(h), 0.0f);
    int64_t off = 0;
    std::vector<double> acc(static_cast<size_t>(h));
    for (size_t s = 0; s < batch.ids.size(); ++s) {
        const int64_t n = static_cast<int64_t>(batch.ids[s].size());
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t t = 0; t < n; ++t) {
            for (int64_t i = 0; i < h; ++i) acc[i] += p.x[(off + t) * h + i];
        }
        off += n;
        float* e = p.out.embeddings.data() + s * h;
        double sq = 0;
        for (int64_t i = 0; i < h; ++i) {
            e[i] = static_cast<float>(acc[i] / static_cast<double>(n));
            sq += static_cast<double>(e[i]) * e[i];
        }
        if (options.normalize) {
            const double norm = std::max(std::sqrt(sq), 1e-12);
            for (int64_t i = 0; i < h; ++i) e[i] = static_cast<float>(e[i] / norm);
        }
    }
    return std::move(p.out);
}

}  // namespace sli::minilm

// The BERT executor on a tiny synthetic model held in memory (no weights needed): against a
// straightforward double-precision implementation of the padded, masked batch computation,
// batch and thread invariance, other float dtypes, and bad input.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <random>

#include "bert_encoder.h"
#include "minilm_test_util.h"

namespace sli::minilm {
namespace {

BertConfig tinyConfig() {
    BertConfig c;
    c.hiddenSize = 8;
    c.numHeads = 2;
    c.intermediateSize = 16;
    c.numLayers = 2;
    c.maxPositions = 16;
    c.vocabSize = 20;
    return c;
}

using Weights = std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>>;

Weights tinyWeights(const BertConfig& c, uint32_t seed = 7) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 0.3f);
    Weights w;
    auto add = [&](const std::string& name, std::vector<int64_t> shape, float center = 0) {
        int64_t n = 1;
        for (auto d : shape) n *= d;
        std::vector<float> v(static_cast<size_t>(n));
        for (auto& x : v) x = center + nd(rng);
        w[name] = {shape, v};
    };
    const int64_t h = c.hiddenSize, f = c.intermediateSize;
    add("embeddings.word_embeddings.weight", {c.vocabSize, h});
    add("embeddings.position_embeddings.weight", {c.maxPositions, h});
    add("embeddings.token_type_embeddings.weight", {2, h});
    add("embeddings.LayerNorm.weight", {h}, 1.0f);
    add("embeddings.LayerNorm.bias", {h});
    for (int64_t l = 0; l < c.numLayers; ++l) {
        const std::string p = "encoder.layer." + std::to_string(l) + ".";
        for (const char* n : {"attention.self.query", "attention.self.key", "attention.self.value",
                              "attention.output.dense"}) {
            add(p + n + ".weight", {h, h});
            add(p + n + ".bias", {h});
        }
        add(p + "attention.output.LayerNorm.weight", {h}, 1.0f);
        add(p + "attention.output.LayerNorm.bias", {h});
        add(p + "intermediate.dense.weight", {f, h});
        add(p + "intermediate.dense.bias", {f});
        add(p + "output.dense.weight", {h, f});
        add(p + "output.dense.bias", {h});
        add(p + "output.LayerNorm.weight", {h}, 1.0f);
        add(p + "output.LayerNorm.bias", {h});
    }
    add("pooler.dense.weight", {h, h});
    return w;
}

// Cache-like grouping: embeddings, one layer per block, the pooler last.
std::vector<Layer> toLayers(const Weights& w, const BertConfig& c, DType dtype = DType::kF32) {
    std::vector<std::string> groups = {"embeddings."};
    for (int64_t l = 0; l < c.numLayers; ++l)
        groups.push_back("encoder.layer." + std::to_string(l) + ".");
    groups.push_back("pooler.");
    std::vector<Layer> layers;
    for (const auto& g : groups) {
        Layer layer(g.substr(0, g.size() - 1));
        for (const auto& [name, sv] : w) {
            if (name.rfind(g, 0) != 0) continue;
            auto t = Tensor::fromFloats(name, sv.first, dtype, sv.second);
            REQUIRE(t.isOk());
            REQUIRE(layer.add(std::move(t).value()).isOk());
        }
        layers.push_back(std::move(layer));
    }
    return layers;
}

// The padded batch [B][L] with an additive -inf mask on padding keys, in double, written the way
// the formulas read (no packing, no transposes, no blocking).
std::vector<double> naiveForward(const Weights& w, const BertConfig& c, const TokenBatch& batch) {
    const int64_t h = c.hiddenSize, f = c.intermediateSize, nh = c.numHeads, d = h / nh;
    size_t L = 0;
    for (auto& s : batch.ids) L = std::max(L, s.size());
    const size_t B = batch.ids.size();
    auto W = [&](const std::string& n) -> const std::vector<float>& { return w.at(n).second; };
    using Mat = std::vector<std::vector<double>>;  // [B*L][dim]
    auto ln = [&](std::vector<double>& r, const std::string& p) {
        double m = 0, v = 0;
        for (double x : r) m += x;
        m /= h;
        for (double x : r) v += (x - m) * (x - m);
        v /= h;
        for (int64_t i = 0; i < h; ++i) {
            r[i] = (r[i] - m) / std::sqrt(v + c.layerNormEps) * W(p + ".weight")[i] +
                   W(p + ".bias")[i];
        }
    };
    auto lin = [&](const Mat& x, const std::string& p, int64_t out, int64_t in) {
        Mat y(x.size(), std::vector<double>(out));
        for (size_t t = 0; t < x.size(); ++t)
            for (int64_t o = 0; o < out; ++o) {
                double s = W(p + ".bias")[o];
                for (int64_t i = 0; i < in; ++i) s += x[t][i] * W(p + ".weight")[o * in + i];
                y[t][o] = s;
            }
        return y;
    };
    Mat x(B * L, std::vector<double>(h, 0.0));
    for (size_t b = 0; b < B; ++b)
        for (size_t j = 0; j < L; ++j) {
            const int32_t id = j < batch.ids[b].size() ? batch.ids[b][j] : 0;  // [PAD] = 0
            for (int64_t i = 0; i < h; ++i) {
                x[b * L + j][i] = W("embeddings.word_embeddings.weight")[id * h + i] +
                                  W("embeddings.position_embeddings.weight")[j * h + i] +
                                  W("embeddings.token_type_embeddings.weight")[i];
            }
            ln(x[b * L + j], "embeddings.LayerNorm");
        }
    for (int64_t l = 0; l < c.numLayers; ++l) {
        const std::string p = "encoder.layer." + std::to_string(l) + ".";
        Mat q = lin(x, p + "attention.self.query", h, h),
            k = lin(x, p + "attention.self.key", h, h),
            v = lin(x, p + "attention.self.value", h, h);
        Mat ctx(B * L, std::vector<double>(h, 0.0));
        for (size_t b = 0; b < B; ++b)
            for (int64_t hd = 0; hd < nh; ++hd)
                for (size_t i = 0; i < L; ++i) {
                    std::vector<double> s(L);
                    double mx = -INFINITY, sum = 0;
                    for (size_t j = 0; j < L; ++j) {
                        double dot = 0;
                        for (int64_t e = 0; e < d; ++e)
                            dot += q[b * L + i][hd * d + e] * k[b * L + j][hd * d + e];
                        s[j] = dot / std::sqrt(double(d)) +
                               (j < batch.ids[b].size() ? 0.0 : -INFINITY);
                        mx = std::max(mx, s[j]);
                    }
                    for (auto& e : s) sum += (e = std::exp(e - mx));
                    for (size_t j = 0; j < L; ++j)
                        for (int64_t e = 0; e < d; ++e)
                            ctx[b * L + i][hd * d + e] += s[j] / sum * v[b * L + j][hd * d + e];
                }
        Mat a = lin(ctx, p + "attention.output.dense", h, h);
        for (size_t t = 0; t < x.size(); ++t) {
            for (int64_t i = 0; i < h; ++i) a[t][i] += x[t][i];
            ln(a[t], p + "attention.output.LayerNorm");
        }
        Mat in = lin(a, p + "intermediate.dense", f, h);
        for (auto& r : in)
            for (auto& u : r) u = 0.5 * u * (1.0 + std::erf(u / std::sqrt(2.0)));
        Mat o = lin(in, p + "output.dense", h, f);
        for (size_t t = 0; t < x.size(); ++t) {
            for (int64_t i = 0; i < h; ++i) o[t][i] += a[t][i];
            ln(o[t], p + "output.LayerNorm");
        }
        x = o;
    }
    std::vector<double> emb(B * h, 0.0);
    for (size_t b = 0; b < B; ++b) {
        double cnt = 0, sq = 0;
        for (size_t j = 0; j < L; ++j) {
            const double mask = j < batch.ids[b].size() ? 1.0 : 0.0;
            cnt += mask;
            for (int64_t i = 0; i < h; ++i) emb[b * h + i] += mask * x[b * L + j][i];
        }
        for (int64_t i = 0; i < h; ++i) sq += (emb[b * h + i] /= cnt) * emb[b * h + i];
        for (int64_t i = 0; i < h; ++i) emb[b * h + i] /= std::sqrt(sq);
    }
    return emb;
}

TokenBatch tinyBatch() {
    TokenBatch b;
    b.ids = {{1, 5, 7, 2}, {1, 3, 3, 9, 11, 19, 2}, {1, 2}, {1, 4, 6, 8, 10, 12, 14, 16, 18, 2}};
    return b;
}

}  // namespace

TEST_CASE("matches a double-precision padded and masked implementation of the same model") {
    const BertConfig c = tinyConfig();
    const Weights w = tinyWeights(c);
    const auto layers = toLayers(w, c);
    MemoryLayerSource src(layers);
    BertEncoder enc(c);
    auto out = enc.run(tinyBatch(), src);
    REQUIRE(out.isOk());
    const auto want = naiveForward(w, c, tinyBatch());
    REQUIRE(out->embeddings.size() == want.size());
    double worst = 0;
    for (size_t i = 0; i < want.size(); ++i)
        worst = std::max(worst, std::fabs(out->embeddings[i] - want[i]));
    CHECK(worst < 2e-6);
}

TEST_CASE("a sequence's embedding does not depend on the rest of the batch or the thread count") {
    const BertConfig c = tinyConfig();
    const auto layers = toLayers(tinyWeights(c), c);
    MemoryLayerSource src(layers);
    BertEncoder enc(c);
    TokenBatch all = tinyBatch();
    auto full = enc.run(all, src);
    REQUIRE(full.isOk());
    TokenBatch one;
    one.ids = {all.ids[1]};
    auto alone = enc.run(one, src);
    REQUIRE(alone.isOk());
    CHECK(std::equal(alone->embeddings.begin(), alone->embeddings.end(),
                     full->embeddings.begin() + c.hiddenSize));
    EncoderOptions o;
    o.threads = 3;
    auto threaded = enc.run(all, src, o);
    REQUIRE(threaded.isOk());
    CHECK(threaded->embeddings == full->embeddings);
}

TEST_CASE("keeps each stage's hidden states and can skip the normalization") {
    const BertConfig c = tinyConfig();
    const auto layers = toLayers(tinyWeights(c), c);
    MemoryLayerSource src(layers);
    BertEncoder enc(c);
    EncoderOptions o;
    o.keepHiddenStates = true;
    o.normalize = false;
    auto out = enc.run(tinyBatch(), src, o);
    REQUIRE(out.isOk());
    REQUIRE(out->hiddenStates.size() == 3);
    CHECK(out->stageNames[0] == "embeddings");
    CHECK(out->stageNames[2] == "encoder.layer.1");
    CHECK(out->hiddenStates[2].size() == size_t(tinyBatch().totalTokens() * c.hiddenSize));
    double sq = 0;
    for (int64_t i = 0; i < c.hiddenSize; ++i) sq += out->embeddings[i] * out->embeddings[i];
    CHECK(std::fabs(std::sqrt(sq) - 1.0) > 1e-3);  // not normalized
}

TEST_CASE("takes f16 and bf16 tensors and stays close to the f32 run") {
    const BertConfig c = tinyConfig();
    const Weights w = tinyWeights(c);
    BertEncoder enc(c);
    const auto l32 = toLayers(w, c);
    MemoryLayerSource s32(l32);
    auto ref = enc.run(tinyBatch(), s32);
    REQUIRE(ref.isOk());
    for (DType dt : {DType::kF16, DType::kBF16}) {
        const auto l = toLayers(w, c, dt);
        MemoryLayerSource s(l);
        auto out = enc.run(tinyBatch(), s);
        REQUIRE(out.isOk());
        for (size_t r = 0; r < tinyBatch().ids.size(); ++r) {
            CHECK(cosine(&ref->embeddings[r * 8], &out->embeddings[r * 8], 8) > 0.999);
        }
    }
}

TEST_CASE("rejects bad input with a message naming what is wrong") {
    const BertConfig c = tinyConfig();
    const Weights w = tinyWeights(c);
    BertEncoder enc(c);
    auto layers = toLayers(w, c);
    MemoryLayerSource src(layers);

    TokenBatch bad = tinyBatch();
    bad.ids[2][1] = 20;  // vocab is 20
    auto r = enc.run(bad, src);
    CHECK(r.status().isInvalidArgument());
    CHECK(r.status().message().find("token id 20") != std::string::npos);

    TokenBatch tooLong;
    tooLong.ids = {std::vector<int32_t>(17, 3)};
    CHECK(enc.run(tooLong, src).status().message().find("positions") != std::string::npos);
    CHECK(enc.run(TokenBatch{}, src).status().isInvalidArgument());
    TokenBatch emptySeq;
    emptySeq.ids = {{1, 2}, {}};
    CHECK(enc.run(emptySeq, src).status().isInvalidArgument());

    // A missing tensor.
    {
        Weights w2 = w;
        w2.erase("encoder.layer.1.attention.self.key.bias");
        auto l2 = toLayers(w2, c);
        MemoryLayerSource s2(l2);
        auto e = enc.run(tinyBatch(), s2);
        CHECK(e.status().isInvalidArgument());
        CHECK(e.status().message().find("encoder.layer.1.attention.self.key.bias") !=
              std::string::npos);
    }
    // A misshapen tensor.
    {
        Weights w2 = w;
        w2["encoder.layer.0.intermediate.dense.weight"].first = {8, 16};
        auto l2 = toLayers(w2, c);
        MemoryLayerSource s2(l2);
        CHECK(enc.run(tinyBatch(), s2).status().message().find("expected [16, 8]") !=
              std::string::npos);
    }
    // Layers out of order, and missing ones.
    {
        std::vector<Layer> swapped;
        swapped.push_back(std::move(layers[0]));
        swapped.push_back(std::move(layers[2]));
        swapped.push_back(std::move(layers[1]));
        MemoryLayerSource s2(swapped);
        CHECK(enc.run(tinyBatch(), s2).status().message().find("out of order") !=
              std::string::npos);
        swapped.resize(2);
        swapped.erase(swapped.begin() + 1);
        MemoryLayerSource s3(swapped);
        CHECK(enc.run(tinyBatch(), s3).status().message().find("after 0 of 2") !=
              std::string::npos);
    }
}

TEST_CASE("reads a Hugging Face BERT config and refuses what it cannot run") {
    testutil::TempDir tmp;
    const std::string p = tmp.path + "/config.json";
    std::ofstream(p) << R"({"hidden_size": 16, "num_attention_heads": 4, "intermediate_size": 64,
        "num_hidden_layers": 3, "max_position_embeddings": 32, "vocab_size": 100,
        "layer_norm_eps": 1e-07, "hidden_act": "gelu", "position_embedding_type": "absolute"})";
    auto c = BertConfig::fromFile(p);
    REQUIRE(c.isOk());
    CHECK(c->hiddenSize == 16);
    CHECK(c->numHeads == 4);
    CHECK(c->numLayers == 3);
    CHECK(c->layerNormEps == doctest::Approx(1e-7));
    std::ofstream(p) << R"({"hidden_size": 16, "hidden_act": "relu"})";
    CHECK(BertConfig::fromFile(p).status().isNotSupported());
    std::ofstream(p) << R"({"hidden_size": 16, "num_attention_heads": 5})";
    CHECK(BertConfig::fromFile(p).status().isInvalidArgument());
    CHECK(BertConfig::fromFile(tmp.path + "/absent.json").status().isNotFound());
}

}  // namespace sli::minilm

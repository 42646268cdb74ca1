#include "sli/architecture.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <map>
#include <optional>
#include <unordered_set>

namespace sli {

const char* architectureName(Architecture a) noexcept {
    switch (a) {
        case Architecture::kUnknown: return "unknown";
        case Architecture::kLlama: return "llama";
        case Architecture::kMistral: return "mistral";
        case Architecture::kQwen2: return "qwen2";
        case Architecture::kGpt2: return "gpt2";
        case Architecture::kBert: return "bert";
        case Architecture::kOpt: return "opt";
    }
    return "?";
}

const char* tensorRoleName(TensorRole r) noexcept {
    switch (r) {
        case TensorRole::kAttention: return "attention";
        case TensorRole::kFfn: return "ffn";
        case TensorRole::kNorm: return "norm";
        case TensorRole::kEmbedding: return "embedding";
        case TensorRole::kHead: return "head";
        case TensorRole::kOther: return "other";
    }
    return "?";
}

namespace {

using Parts = std::vector<std::string_view>;

Parts split(std::string_view name) {
    Parts out;
    size_t start = 0;
    while (true) {
        const size_t dot = name.find('.', start);
        if (dot == std::string_view::npos) {
            out.push_back(name.substr(start));
            return out;
        }
        out.push_back(name.substr(start, dot - start));
        start = dot + 1;
    }
}

std::optional<int64_t> parseIndex(std::string_view s) {
    if (s.empty() || s.size() > 9) return std::nullopt;
    int64_t v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p != s.data() + s.size() || v < 0) return std::nullopt;
    return v;
}

std::string join(const Parts& parts, size_t n) {
    std::string s;
    for (size_t i = 0; i < n && i < parts.size(); ++i) {
        if (i) s += '.';
        s += parts[i];
    }
    return s;
}

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

TensorPlacement make(Architecture arch, LayerPosition pos, TensorRole role, bool keep,
                     int64_t index = -1, std::string layerName = {}) {
    TensorPlacement p;
    p.architecture = arch;
    p.recognized = true;
    p.position = pos;
    p.role = role;
    p.keepUnquantized = keep;
    p.layerIndex = pos == LayerPosition::kBlock ? index : -1;
    if (pos == LayerPosition::kPre) {
        p.layerName = "pre";
    } else if (pos == LayerPosition::kPost) {
        p.layerName = "post";
    } else {
        p.layerName = std::move(layerName);
    }
    return p;
}

TensorPlacement pre(Architecture a, TensorRole r, bool keep) {
    return make(a, LayerPosition::kPre, r, keep);
}
TensorPlacement post(Architecture a, TensorRole r, bool keep) {
    return make(a, LayerPosition::kPost, r, keep);
}

bool isNormRole(TensorRole r) { return r == TensorRole::kNorm; }

// Roles inside a recognized block whose sub-module name is not one the family defines:
// a norm when the name says so, otherwise the seed keywords.
TensorRole blockFallbackRole(std::string_view sub) {
    const std::string l = lower(sub);
    if (l.find("norm") != std::string::npos || l.starts_with("ln")) return TensorRole::kNorm;
    return classifyByKeywords(sub);
}

TensorPlacement block(Architecture a, TensorRole r, int64_t index, std::string layerName) {
    return make(a, LayerPosition::kBlock, r, isNormRole(r), index, std::move(layerName));
}

// lm_head is shared by the decoder families.
std::optional<TensorPlacement> matchLmHead(Architecture a, const Parts& p) {
    if (p.size() >= 2 && p[0] == "lm_head") return post(a, TensorRole::kHead, true);
    return std::nullopt;
}

// A bias: NAME.bias, or a stacked one such as gpt-oss's mlp.experts.gate_up_proj_bias.
bool isBiasName(std::string_view last) { return last == "bias" || last.ends_with("_bias"); }

TensorPlacement matchLlamaBlock(const Parts& p, size_t o, int64_t idx);

// [model.]embed_tokens, [model.]layers.N.*, [model.]norm, lm_head
std::optional<TensorPlacement> matchLlama(const Parts& p) {
    const Architecture a = Architecture::kLlama;
    if (auto h = matchLmHead(a, p)) return h;
    const size_t o = (!p.empty() && p[0] == "model") ? 1 : 0;
    if (p.size() < o + 2) return std::nullopt;
    const std::string_view first = p[o];
    if (first == "embed_tokens") return pre(a, TensorRole::kEmbedding, true);
    if (first == "norm") return post(a, TensorRole::kNorm, true);
    if (first != "layers" || p.size() < o + 4) return std::nullopt;
    auto idx = parseIndex(p[o + 1]);
    if (!idx) return std::nullopt;
    TensorPlacement t = matchLlamaBlock(p, o, *idx);
    // Biases stay unquantized: most are 1-D and kept anyway, but stacked MoE expert biases
    // ([E, N]) are not, and they are a few KiB added to every output of their expert.
    if (isBiasName(p.back())) t.keepUnquantized = true;
    return t;
}

TensorPlacement matchLlamaBlock(const Parts& p, size_t o, int64_t idx) {
    const Architecture a = Architecture::kLlama;
    const std::string layerName = join(p, o + 2);
    const std::string_view sub = p[o + 2];
    if (sub == "self_attn") {
        // rotary_emb.inv_freq is a buffer, not a weight.
        if (p.size() > o + 3 && p[o + 3] == "rotary_emb") {
            TensorPlacement t = block(a, TensorRole::kOther, idx, layerName);
            t.keepUnquantized = true;
            return t;
        }
        return block(a, TensorRole::kAttention, idx, layerName);
    }
    if (sub == "mlp" || sub == "block_sparse_moe") {
        // A mixture of experts' router (gpt-oss mlp.router, Qwen2-MoE / DeepSeek mlp.gate,
        // Mixtral block_sparse_moe.gate) stays unquantized, as llama.cpp keeps ffn_gate_inp:
        // it is small, and its error changes which experts run.
        TensorPlacement t = block(a, TensorRole::kFfn, idx, layerName);
        const std::string_view module = p.size() > o + 4 ? p[o + 3] : std::string_view();
        t.keepUnquantized = module == "router" || module == "gate";
        return t;
    }
    if (sub == "input_layernorm" || sub == "post_attention_layernorm") {
        return block(a, TensorRole::kNorm, idx, layerName);
    }
    return block(a, blockFallbackRole(sub), idx, layerName);
}

// [transformer.]{wte,wpe}, [transformer.]h.N.*, [transformer.]ln_f, lm_head
std::optional<TensorPlacement> matchGpt2(const Parts& p) {
    const Architecture a = Architecture::kGpt2;
    if (auto h = matchLmHead(a, p)) return h;
    const size_t o = (!p.empty() && p[0] == "transformer") ? 1 : 0;
    if (p.size() < o + 2) return std::nullopt;
    const std::string_view first = p[o];
    if (first == "wte" || first == "wpe") return pre(a, TensorRole::kEmbedding, true);
    if (first == "ln_f") return post(a, TensorRole::kNorm, true);
    if (first != "h" || p.size() < o + 4) return std::nullopt;
    auto idx = parseIndex(p[o + 1]);
    if (!idx) return std::nullopt;
    const std::string layerName = join(p, o + 2);
    const std::string_view sub = p[o + 2];
    if (sub == "attn") {
        // Old checkpoints carry the causal mask buffers attn.bias / attn.masked_bias.
        if (p.size() == o + 4 && (p[o + 3] == "bias" || p[o + 3] == "masked_bias")) {
            TensorPlacement t = block(a, TensorRole::kOther, *idx, layerName);
            t.keepUnquantized = true;
            return t;
        }
        return block(a, TensorRole::kAttention, *idx, layerName);
    }
    if (sub == "mlp") return block(a, TensorRole::kFfn, *idx, layerName);
    if (sub == "ln_1" || sub == "ln_2") return block(a, TensorRole::kNorm, *idx, layerName);
    return block(a, blockFallbackRole(sub), *idx, layerName);
}

bool isLayerNormName(std::string_view s) { return s == "LayerNorm" || s == "layer_norm"; }

// [bert.]embeddings.*, [bert.]encoder.layer.N.*, [bert.]pooler.*, cls.*
std::optional<TensorPlacement> matchBert(const Parts& p) {
    const Architecture a = Architecture::kBert;
    if (p.size() >= 2 && p[0] == "cls") {
        const bool norm = std::any_of(p.begin(), p.end(), isLayerNormName);
        return post(a, norm ? TensorRole::kNorm : TensorRole::kHead, true);
    }
    const size_t o = (!p.empty() && p[0] == "bert") ? 1 : 0;
    if (p.size() < o + 2) return std::nullopt;
    const std::string_view first = p[o];
    if (first == "embeddings") {
        if (isLayerNormName(p[o + 1])) return pre(a, TensorRole::kNorm, true);
        if (p[o + 1] == "position_ids") return pre(a, TensorRole::kOther, true);  // buffer
        return pre(a, TensorRole::kEmbedding, true);
    }
    if (first == "pooler") return post(a, TensorRole::kHead, true);
    if (first != "encoder" || p.size() < o + 5 || p[o + 1] != "layer") return std::nullopt;
    auto idx = parseIndex(p[o + 2]);
    if (!idx) return std::nullopt;
    const std::string layerName = join(p, o + 3);
    const std::string_view sub = p[o + 3];
    // attention.output.LayerNorm and output.LayerNorm are the two norms of a block.
    if (std::any_of(p.begin() + static_cast<long>(o + 3), p.end(), isLayerNormName)) {
        return block(a, TensorRole::kNorm, *idx, layerName);
    }
    if (sub == "attention") return block(a, TensorRole::kAttention, *idx, layerName);
    if (sub == "intermediate" || sub == "output") return block(a, TensorRole::kFfn, *idx, layerName);
    return block(a, blockFallbackRole(sub), *idx, layerName);
}

// [model.]decoder.{embed_tokens,embed_positions,project_in,layers.N.*,final_layer_norm,
// project_out}, lm_head
std::optional<TensorPlacement> matchOpt(const Parts& p) {
    const Architecture a = Architecture::kOpt;
    if (auto h = matchLmHead(a, p)) return h;
    const size_t o = (!p.empty() && p[0] == "model") ? 1 : 0;
    if (p.size() < o + 3 || p[o] != "decoder") return std::nullopt;
    const std::string_view first = p[o + 1];
    if (first == "embed_tokens" || first == "embed_positions") {
        return pre(a, TensorRole::kEmbedding, true);
    }
    if (first == "project_in") return pre(a, TensorRole::kOther, false);
    if (first == "final_layer_norm") return post(a, TensorRole::kNorm, true);
    if (first == "project_out") return post(a, TensorRole::kOther, false);
    if (first != "layers" || p.size() < o + 5) return std::nullopt;
    auto idx = parseIndex(p[o + 2]);
    if (!idx) return std::nullopt;
    const std::string layerName = join(p, o + 3);
    const std::string_view sub = p[o + 3];
    if (sub == "self_attn") return block(a, TensorRole::kAttention, *idx, layerName);
    if (sub == "fc1" || sub == "fc2") return block(a, TensorRole::kFfn, *idx, layerName);
    if (sub == "self_attn_layer_norm" || sub == "final_layer_norm") {
        return block(a, TensorRole::kNorm, *idx, layerName);
    }
    return block(a, blockFallbackRole(sub), *idx, layerName);
}

using Matcher = std::optional<TensorPlacement> (*)(const Parts&);

Matcher matcherFor(Architecture a) {
    switch (a) {
        case Architecture::kLlama:
        case Architecture::kMistral:
        case Architecture::kQwen2: return matchLlama;
        case Architecture::kGpt2: return matchGpt2;
        case Architecture::kBert: return matchBert;
        case Architecture::kOpt: return matchOpt;
        case Architecture::kUnknown: return nullptr;
    }
    return nullptr;
}

constexpr Architecture kFamilies[] = {Architecture::kLlama, Architecture::kGpt2,
                                      Architecture::kBert, Architecture::kOpt};

// The seed keyword rules, plus a layer index from the first all-digit dotted component.
TensorPlacement fallback(std::string_view name, const Parts& p) {
    TensorPlacement t;
    t.architecture = Architecture::kUnknown;
    t.recognized = false;
    t.role = classifyByKeywords(name);
    t.keepUnquantized = false;
    for (size_t i = 0; i < p.size(); ++i) {
        if (auto idx = parseIndex(p[i]); idx && i + 1 < p.size()) {
            t.position = LayerPosition::kBlock;
            t.layerIndex = *idx;
            t.layerName = join(p, i + 1);
            return t;
        }
    }
    // No block number: embeddings run first, anything else is taken to run after the blocks.
    const bool embedding = lower(name).find("embed") != std::string::npos;
    t.position = embedding ? LayerPosition::kPre : LayerPosition::kPost;
    t.layerName = embedding ? "pre" : "post";
    return t;
}

}  // namespace

TensorRole classifyByKeywords(std::string_view tensorName) {
    static constexpr std::string_view kAttention[] = {"attn", "attention", "query",
                                                      "key",  "value",     "qkv"};
    static constexpr std::string_view kFfn[] = {"ffn", "mlp", "feedforward", "fc"};
    const std::string l = lower(tensorName);
    for (auto k : kAttention) {
        if (l.find(k) != std::string::npos) return TensorRole::kAttention;
    }
    for (auto k : kFfn) {
        if (l.find(k) != std::string::npos) return TensorRole::kFfn;
    }
    return TensorRole::kOther;
}

TensorPlacement classifyTensor(std::string_view tensorName, Architecture arch) {
    const Parts p = split(tensorName);
    if (Matcher m = matcherFor(arch)) {
        if (auto t = m(p)) {
            t->architecture = arch;
            return *t;
        }
    } else if (arch == Architecture::kUnknown) {
        for (Architecture a : kFamilies) {
            if (auto t = matcherFor(a)(p)) return *t;
        }
    }
    return fallback(tensorName, p);
}

Architecture detectArchitecture(std::span<const std::string> tensorNames) {
    Architecture best = Architecture::kUnknown;
    size_t bestCount = 0;
    for (Architecture a : kFamilies) {
        const Matcher m = matcherFor(a);
        size_t count = 0;
        for (const auto& n : tensorNames) {
            if (m(split(n))) ++count;
        }
        if (count > bestCount) {
            best = a;
            bestCount = count;
        }
    }
    return best;
}

namespace {

Architecture fromModelType(std::string_view t) {
    const std::string l = lower(t);
    if (l == "llama") return Architecture::kLlama;
    if (l == "mistral") return Architecture::kMistral;
    if (l == "qwen2") return Architecture::kQwen2;
    if (l == "gpt2") return Architecture::kGpt2;
    if (l == "bert") return Architecture::kBert;
    if (l == "opt") return Architecture::kOpt;
    return Architecture::kUnknown;
}

Architecture fromClassName(std::string_view c) {
    // Ordered so that "Qwen2" is not mistaken for a later "Qwen2Moe"-style name: exact
    // family prefixes followed by an upper-case letter (Model, For..., LMHead...).
    static constexpr std::pair<std::string_view, Architecture> kPrefixes[] = {
        {"Llama", Architecture::kLlama}, {"Mistral", Architecture::kMistral},
        {"Qwen2", Architecture::kQwen2}, {"GPT2", Architecture::kGpt2},
        {"Bert", Architecture::kBert},   {"OPT", Architecture::kOpt},
    };
    for (auto [prefix, a] : kPrefixes) {
        if (c.size() > prefix.size() && c.starts_with(prefix) &&
            std::isupper(static_cast<unsigned char>(c[prefix.size()]))) {
            return a;
        }
    }
    return Architecture::kUnknown;
}

}  // namespace

Result<Architecture> architectureFromConfig(const Json& config) {
    if (!config.isObject()) {
        return Status::invalidArgument(std::string("config.json must be a JSON object, not ") +
                                       Json::typeName(config.type()));
    }
    if (const Json* mt = config.find("model_type"); mt && !mt->isNull()) {
        if (!mt->isString()) {
            return Status::invalidArgument(std::string("config.json key \"model_type\" must be a "
                                                       "string, not ") + Json::typeName(mt->type()));
        }
        const Architecture a = fromModelType(mt->asString());
        if (a != Architecture::kUnknown) return a;
    }
    if (const Json* arr = config.find("architectures"); arr && !arr->isNull()) {
        if (!arr->isArray()) {
            return Status::invalidArgument(std::string("config.json key \"architectures\" must be "
                                                       "an array of strings, not ") +
                                           Json::typeName(arr->type()));
        }
        for (const Json& e : arr->asArray()) {
            if (!e.isString()) {
                return Status::invalidArgument("config.json key \"architectures\" must be an "
                                               "array of strings");
            }
            const Architecture a = fromClassName(e.asString());
            if (a != Architecture::kUnknown) return a;
        }
    }
    return Architecture::kUnknown;
}

Result<Architecture> architectureFromConfigText(std::string_view configJson) {
    auto j = parseJson(configJson);
    if (!j.isOk()) return j.status().withContext("config.json");
    return architectureFromConfig(*j);
}

Result<std::vector<LayerGroup>> groupIntoLayers(std::span<const std::string> tensorNames,
                                                Architecture arch) {
    std::vector<LayerGroup> out;
    if (tensorNames.empty()) return out;
    if (arch == Architecture::kUnknown) arch = detectArchitecture(tensorNames);

    std::unordered_set<std::string_view> seen;
    LayerGroup preGroup{"pre", 0, LayerPosition::kPre, -1, {}};
    LayerGroup postGroup{"post", 0, LayerPosition::kPost, -1, {}};
    std::vector<LayerGroup> blocks;
    std::map<std::string, size_t> blockByName;
    for (const std::string& name : tensorNames) {
        if (name.empty()) return Status::invalidArgument("empty tensor name in checkpoint");
        if (!seen.insert(name).second) {
            return Status::invalidArgument("tensor " + name + " appears twice");
        }
        const TensorPlacement t = classifyTensor(name, arch);
        switch (t.position) {
            case LayerPosition::kPre: preGroup.tensorNames.push_back(name); break;
            case LayerPosition::kPost: postGroup.tensorNames.push_back(name); break;
            case LayerPosition::kBlock: {
                auto [it, inserted] = blockByName.try_emplace(t.layerName, blocks.size());
                if (inserted) {
                    blocks.push_back({t.layerName, 0, LayerPosition::kBlock, t.layerIndex, {}});
                }
                blocks[it->second].tensorNames.push_back(name);
                break;
            }
        }
    }
    // Numeric block order; blocks with equal numbers keep their first-appearance order.
    std::stable_sort(blocks.begin(), blocks.end(), [](const LayerGroup& x, const LayerGroup& y) {
        return x.layerIndex < y.layerIndex;
    });
    if (!preGroup.tensorNames.empty()) out.push_back(std::move(preGroup));
    for (auto& b : blocks) out.push_back(std::move(b));
    if (!postGroup.tensorNames.empty()) out.push_back(std::move(postGroup));
    for (size_t i = 0; i < out.size(); ++i) out[i].index = static_cast<int64_t>(i);
    return out;
}

}  // namespace sli

#include "sli/config.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>

namespace sli {

const char* modeName(QuantizationMode m) noexcept {
    switch (m) {
        case QuantizationMode::kNone: return "none";
        case QuantizationMode::kInt8: return "int8";
        case QuantizationMode::kInt8Dynamic: return "int8_dynamic";
        case QuantizationMode::kNf4: return "nf4";
        case QuantizationMode::kFp4: return "fp4";
        case QuantizationMode::kInt4: return "int4";
    }
    return "?";
}

Result<QuantizationMode> parseMode(std::string_view s) {
    std::string lower(s);
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    for (QuantizationMode m : kAllModes) {
        if (lower == modeName(m)) return m;
    }
    return Status::invalidArgument("unknown quantization mode \"" + std::string(s) +
                                   "\"; valid modes: none, int8, int8_dynamic, nf4, fp4, int4");
}

Status QuantizationConfig::validate() const {
    if (!dtypeIsCompute(computeDType)) {
        return Status::invalidArgument(std::string("compute_dtype must be float16, bfloat16 or "
                                                   "float32, not ") + dtypeTorchName(computeDType));
    }
    if (quantType != "nf4" && quantType != "fp4") {
        return Status::invalidArgument("quant_type must be \"nf4\" or \"fp4\", not \"" + quantType + "\"");
    }
    if (mode == QuantizationMode::kNf4 && quantType != "nf4") {
        return Status::invalidArgument("quant_type \"" + quantType + "\" contradicts mode nf4");
    }
    if (mode == QuantizationMode::kFp4 && quantType != "fp4") {
        return Status::invalidArgument("quant_type \"" + quantType + "\" contradicts mode fp4");
    }
    if (!std::isfinite(llmInt8Threshold) || llmInt8Threshold < 0.0) {
        return Status::invalidArgument("llm_int8_threshold must be a finite number >= 0");
    }
    if (modeIs4bit(mode)) {
        if (blocksize < 32 || blocksize > 4096 || (blocksize & (blocksize - 1)) != 0) {
            return Status::invalidArgument("blocksize must be a power of two in 32..4096 for " +
                                           std::string(modeName(mode)) + ", not " +
                                           std::to_string(blocksize));
        }
    } else if (blocksize <= 0) {
        return Status::invalidArgument("blocksize must be positive, not " + std::to_string(blocksize));
    }
    for (const auto& s : llmInt8SkipModules) {
        if (s.empty()) return Status::invalidArgument("llm_int8_skip_modules holds an empty name");
    }
    return Status();
}

Json QuantizationConfig::toJson() const {
    Json j = Json::object();
    j.set("mode", Json::string(modeName(mode)));
    j.set("compute_dtype", Json::string(dtypeTorchName(computeDType)));
    j.set("compress_statistics", Json::boolean(compressStatistics));
    j.set("quant_storage_dtype", Json::string(dtypeTorchName(quantStorageDType)));
    j.set("double_quant", Json::boolean(doubleQuant));
    j.set("quant_type", Json::string(quantType));
    j.set("llm_int8_threshold", Json::number(llmInt8Threshold));
    Json skip = Json::array();
    for (const auto& s : llmInt8SkipModules) skip.push(Json::string(s));
    j.set("llm_int8_skip_modules", std::move(skip));
    j.set("blocksize", Json::integer(blocksize));
    return j;
}

namespace {
Status typeError(std::string_view key, const char* want, const Json& got) {
    return Status::invalidArgument("config key \"" + std::string(key) + "\" must be " + want +
                                   ", not " + Json::typeName(got.type()));
}
}  // namespace

Result<QuantizationConfig> QuantizationConfig::fromJson(const Json& j) {
    if (!j.isObject()) {
        return Status::invalidArgument(std::string("a QuantizationConfig must be a JSON object, not ") +
                                       Json::typeName(j.type()));
    }
    QuantizationConfig c;
    for (const auto& [key, v] : j.asObject()) {
        if (key == "mode") {
            if (!v.isString()) return typeError(key, "a string", v);
            SLI_ASSIGN_OR_RETURN(c.mode, parseMode(v.asString()));
        } else if (key == "compute_dtype" || key == "quant_storage_dtype") {
            if (!v.isString()) return typeError(key, "a string", v);
            auto t = parseDType(v.asString());
            if (!t) return Status::invalidArgument("config key \"" + key + "\": unknown dtype \"" + v.asString() + "\"");
            (key == "compute_dtype" ? c.computeDType : c.quantStorageDType) = *t;
        } else if (key == "compress_statistics" || key == "double_quant") {
            if (!v.isBool()) return typeError(key, "a boolean", v);
            (key == "double_quant" ? c.doubleQuant : c.compressStatistics) = v.asBool();
        } else if (key == "quant_type") {
            if (!v.isString()) return typeError(key, "a string", v);
            c.quantType = v.asString();
        } else if (key == "llm_int8_threshold") {
            if (!v.isNumber()) return typeError(key, "a number", v);
            c.llmInt8Threshold = v.asDouble();
        } else if (key == "llm_int8_skip_modules") {
            if (v.isNull()) continue;  // HF writes null for "none"
            if (!v.isArray()) return typeError(key, "an array of strings", v);
            for (const auto& e : v.asArray()) {
                if (!e.isString()) return typeError(key, "an array of strings", e);
                c.llmInt8SkipModules.push_back(e.asString());
            }
        } else if (key == "blocksize") {
            auto i = v.asInt64();
            if (!v.isNumber() || !i || *i > 1 << 30 || *i < -(1 << 30)) return typeError(key, "an integer", v);
            c.blocksize = static_cast<int>(*i);
        } else {
            return Status::invalidArgument("unknown config key \"" + key + "\"");
        }
    }
    // A 4-bit mode without an explicit quant_type implies its own codebook.
    if (modeIs4bit(c.mode) && j.find("quant_type") == nullptr) c.quantType = modeName(c.mode);
    SLI_RETURN_IF_ERROR(c.validate());
    return c;
}

Result<QuantizationConfig> QuantizationConfig::fromJsonString(std::string_view text) {
    SLI_ASSIGN_OR_RETURN(Json j, parseJson(text));
    return fromJson(j);
}

std::string QuantizationConfig::fingerprint() const {
    // FNV-1a 64 of the canonical JSON: stable across versions and platforms.
    const std::string s = toJsonString();
    uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned char c : s) {
        h ^= c;
        h *= 0x100000001b3ull;
    }
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
}

bool QuantizationConfig::isSkipped(std::string_view name) const {
    std::string_view module = name;
    for (std::string_view suffix : {std::string_view(".weight"), std::string_view(".bias")}) {
        if (module.size() > suffix.size() && module.ends_with(suffix)) {
            module.remove_suffix(suffix.size());
            break;
        }
    }
    const size_t dot = module.rfind('.');
    const std::string_view simple = dot == std::string_view::npos ? module : module.substr(dot + 1);
    for (const std::string& e : llmInt8SkipModules) {
        if (e == name || e == module || e == simple) return true;
        // Dotted prefix ("model.layers.0.mlp") or a dotted component run anywhere
        // ("embed_tokens" in "model.embed_tokens.weight"), as HF's `key + "."` substring test.
        if (name.starts_with(e) && name.size() > e.size() && name[e.size()] == '.') return true;
        const std::string inner = "." + e + ".";
        if (name.find(inner) != std::string_view::npos) return true;
    }
    return false;
}

QuantizationConfig getInt8Config() {
    QuantizationConfig c;
    c.mode = QuantizationMode::kInt8;
    c.llmInt8SkipModules = {"lm_head", "embed_tokens"};
    return c;
}

QuantizationConfig getNf4Config() {
    QuantizationConfig c;
    c.mode = QuantizationMode::kNf4;
    c.quantType = "nf4";
    c.doubleQuant = true;
    return c;
}

QuantizationConfig getFp4Config() {
    QuantizationConfig c;
    c.mode = QuantizationMode::kFp4;
    c.quantType = "fp4";
    c.doubleQuant = false;
    return c;
}

QuantizationRegistry& QuantizationRegistry::global() {
    static QuantizationRegistry r;
    return r;
}

QuantizationRegistry::QuantizationRegistry() {
    entries_.emplace_back("int8", getInt8Config());
    entries_.emplace_back("nf4", getNf4Config());
    entries_.emplace_back("fp4", getFp4Config());
}

Status QuantizationRegistry::registerConfig(std::string name, QuantizationConfig config, bool replace) {
    if (name.empty()) return Status::invalidArgument("a registered configuration needs a name");
    SLI_RETURN_IF_ERROR(config.validate().withContext("configuration \"" + name + "\""));
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [n, c] : entries_) {
        if (n == name) {
            if (!replace) return Status::invalidArgument("configuration \"" + name + "\" is already registered");
            c = std::move(config);
            return Status();
        }
    }
    entries_.emplace_back(std::move(name), std::move(config));
    return Status();
}

Result<QuantizationConfig> QuantizationRegistry::get(std::string_view name) const {
    std::lock_guard<std::mutex> lock(mu_);
    std::string known;
    for (const auto& [n, c] : entries_) {
        if (n == name) return c;
    }
    for (const auto& n : listLocked()) known += (known.empty() ? "" : ", ") + n;
    return Status::notFound("no quantization configuration named \"" + std::string(name) +
                            "\"; registered: " + known);
}

std::vector<std::string> QuantizationRegistry::list() const {
    std::lock_guard<std::mutex> lock(mu_);
    return listLocked();
}

std::vector<std::string> QuantizationRegistry::listLocked() const {
    std::vector<std::string> names;
    for (const auto& e : entries_) names.push_back(e.first);
    std::sort(names.begin(), names.end());
    return names;
}

bool QuantizationRegistry::contains(std::string_view name) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& e : entries_) {
        if (e.first == name) return true;
    }
    return false;
}

}  // namespace sli

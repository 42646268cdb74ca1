// AdaptiveQuantizer and get_mixed_precision_config (see sli/quantizer.h).
#include <algorithm>
#include <cctype>

#include "sli/quantizer.h"

namespace sli {

namespace {

QuantizationConfig keepConfig(const QuantizationConfig& base) {
    QuantizationConfig c = base;
    c.mode = QuantizationMode::kNone;
    return c;
}

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

}  // namespace

AdaptiveQuantizer::AdaptiveQuantizer(QuantizationConfig base,
                                     std::optional<QuantizationConfig> attention,
                                     std::optional<QuantizationConfig> ffn, int threads)
    : base_(base, threads),
      attention_(attention ? *attention : upgradeConfig(base), threads),
      ffn_(ffn ? *ffn : base, threads),
      keep_(keepConfig(base), threads),
      attentionKeywords_{"attn", "attention", "query", "key", "value", "qkv"},
      ffnKeywords_{"ffn", "mlp", "feedforward", "fc"} {}

Result<AdaptiveQuantizer> AdaptiveQuantizer::create(QuantizationConfig base,
                                                    std::optional<QuantizationConfig> attention,
                                                    std::optional<QuantizationConfig> ffn,
                                                    int threads) {
    SLI_RETURN_IF_ERROR(base.validate().withContext("base quantization config"));
    if (attention) SLI_RETURN_IF_ERROR(attention->validate().withContext("attention quantization config"));
    if (ffn) SLI_RETURN_IF_ERROR(ffn->validate().withContext("ffn quantization config"));
    return AdaptiveQuantizer(std::move(base), std::move(attention), std::move(ffn), threads);
}

void AdaptiveQuantizer::setDevice(int cudaDevice) noexcept {
    for (LayerQuantizer* q : {&base_, &attention_, &ffn_, &keep_}) q->setDevice(cudaDevice);
}

void AdaptiveQuantizer::setKeywords(std::vector<std::string> attention, std::vector<std::string> ffn) {
    for (auto& k : attention) k = lower(k);
    for (auto& k : ffn) k = lower(k);
    attentionKeywords_ = std::move(attention);
    ffnKeywords_ = std::move(ffn);
}

TensorRole AdaptiveQuantizer::roleOf(std::string_view fullName) const {
    if (useRegistry_) {
        const TensorPlacement p = classifyTensor(fullName, arch_);
        if (p.recognized) return p.role;
    }
    const std::string l = lower(fullName);
    for (const auto& k : attentionKeywords_) {
        if (!k.empty() && l.find(k) != std::string::npos) return TensorRole::kAttention;
    }
    for (const auto& k : ffnKeywords_) {
        if (!k.empty() && l.find(k) != std::string::npos) return TensorRole::kFfn;
    }
    return TensorRole::kOther;
}

bool AdaptiveQuantizer::keptByRegistry(std::string_view fullName) const {
    if (!useRegistry_ || !keepDefaults_) return false;
    const TensorPlacement p = classifyTensor(fullName, arch_);
    return p.recognized && p.keepUnquantized;
}

const LayerQuantizer& AdaptiveQuantizer::quantizerFor(std::string_view fullName) const {
    if (keptByRegistry(fullName)) return keep_;
    switch (roleOf(fullName)) {
        case TensorRole::kAttention: return attention_;
        case TensorRole::kFfn: return ffn_;
        default: return base_;
    }
}

const QuantizationConfig& AdaptiveQuantizer::configFor(std::string_view fullName) const {
    return quantizerFor(fullName).config();
}

QuantizationMode AdaptiveQuantizer::modeFor(const TensorView& tensor, std::string_view fullName) const {
    const std::string_view name = fullName.empty() ? tensor.name : fullName;
    return quantizerFor(name).modeFor(tensor, name);
}

Result<QuantizedLayer> AdaptiveQuantizer::quantizeLayer(const Layer& layer, std::string_view layerName,
                                                        int64_t index) const {
    QuantizedLayer out;
    out.name = std::string(layerName.empty() ? std::string_view(layer.name()) : layerName);
    out.index = index;
    const std::string ctx = "layer " + (out.name.empty() ? std::string("<unnamed>") : out.name);
    out.tensors.reserve(layer.size());
    for (const Tensor& t : layer) {
        const std::string full = tensorFullName(out.name, t.name());
        auto q = quantizerFor(full).quantizeTensor(t.view(), full);
        if (!q.isOk()) return q.status().withContext(ctx);
        out.tensors.push_back(std::move(q).value());
    }
    return out;
}

Result<std::vector<QuantizedLayer>> AdaptiveQuantizer::quantizeModel(std::span<const Layer> model) const {
    std::vector<QuantizedLayer> out;
    out.reserve(model.size());
    for (size_t i = 0; i < model.size(); ++i) {
        SLI_ASSIGN_OR_RETURN(QuantizedLayer q,
                             quantizeLayer(model[i], model[i].name(), static_cast<int64_t>(i)));
        out.push_back(std::move(q));
    }
    return out;
}

AdaptiveQuantizer getMixedPrecisionConfig(int threads) {
    return AdaptiveQuantizer(getNf4Config(), getInt8Config(), getNf4Config(), threads);
}

}  // namespace sli

// The quantizer API: layers in, quantized layers out, and back (the seed's LayerQuantizer,
// AdaptiveQuantizer, quantize_layer / dequantize_layer and get_mixed_precision_config).
//
// Which tensors are quantized. A tensor is quantized with the config's mode when it is
// floating point (f16, bf16, f32, f64), has two or more dimensions, and is not matched by
// llm_int8_skip_modules (QuantizationConfig::isSkipped on the full name). Everything else is
// kept as mode NONE:
//   - 0-D / 1-D floating tensors (biases, norms) and skipped tensors: in the compute dtype;
//   - INT4 tensors whose rows (numel / shape[0]) are not a multiple of 32: in the compute
//     dtype, with one warning log line (module "engine") naming the tensor;
//   - integer and bool tensors (position_ids buffers, masks, HF's weight_format): verbatim, in
//     their own dtype; dequantizeLayer returns them unchanged. This is the documented policy
//     for "an integer tensor asked to be quantized": kept, never converted, never an error.
// NaN / Inf weights are not an error; they follow bitsandbytes' kernels (kernels/reference.h):
// a NaN never sets a block or row scale and stores code 0 (NF4 -1.0 x absmax, FP4 / INT8 /
// INT8_DYNAMIC 0, Q4_0 q = 0); an Inf makes its block's or row's scale Inf, and that block or
// row dequantizes to NaN / Inf. Mode NONE keeps them as they are.
// Source values are widened exactly to f32 (convertToF32) and quantized from there, never
// after rounding to the compute dtype. The dtype recorded with a tensor (info.computeDType) is
// the compute dtype, the one dequantization produces by default. A tensor's full name is
// tensorFullName(layerName, tensorName) (below).
//
// Errors (Status InvalidArgument / NotSupported, the message naming layer and tensor, never a
// crash): an invalid config (blocksize not a power of two in 32..4096, ...), an empty tensor,
// data whose byte size does not match shape x dtype, an f8 tensor (its values mean value x
// scale; ingestion applies an FP8 checkpoint's scale tensors first, engine/ingest.h),
// quantizeTensor() asked for a mode that does not apply (INT8 / INT4 on fewer than two
// dimensions, INT4 on rows that are not a multiple of 32, any mode on an integer tensor),
// a non-compute output dtype for dequantization, and corrupt quantized parts.
//
// Size accounting is honest: statistics count. bitsPerWeight(NF4, blocksize 64, no double
// quant) is 4 + 32/64 = 4.5; with double quant 4 + 8/64 + 32/(64*256) = 4.127; INT8 and
// INT8_DYNAMIC 8 + 32/cols; INT4 (Q4_0) 4.5; NONE 16 or 32.
//
// Ownership and blocking: inputs are borrowed for the call only; results (QuantizedLayer,
// Layer, Tensor) own their bytes. Every call runs to completion on the calling thread, which
// may fan large tensors out to `threads` kernel threads (0 = every CPU in the affinity mask)
// and joins them before returning. The quantizer objects are immutable after construction (setters
// aside): const methods may be called from several threads at once.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sli/architecture.h"
#include "sli/config.h"
#include "sli/dtype.h"
#include "sli/quantized.h"
#include "sli/status.h"
#include "sli/tensor.h"

namespace sli {

// Bits per weight of `mode` for a large tensor whose rows hold `cols` elements (INT8 /
// INT8_DYNAMIC spend 32 bits per row), statistics included, per-tensor constants (the 16-entry
// codebook, the 256-entry nested map) excluded. `cols` <= 0 means "rows of infinite length".
double bitsPerWeight(QuantizationMode mode, DType computeDType = DType::kF16, int blocksize = 64,
                     bool doubleQuant = false, int64_t cols = 0);
double bitsPerWeight(const QuantizationConfig& config, int64_t cols = 0);
// Exact bits per weight of what was stored: 8 * storedBytes / numel (everything included).
double bitsPerWeight(const QuantizedTensor& tensor);
double bitsPerWeight(const QuantizedLayer& layer);

// The next more precise mode along NF4 -> INT8 -> INT8_DYNAMIC -> NONE (the seed's attention
// upgrade). FP4 and INT4, the other 4-bit modes, step to INT8 like NF4; NONE stays NONE.
QuantizationMode upgradeMode(QuantizationMode mode);
// `config` with upgradeMode(config.mode) (quant_type kept consistent).
QuantizationConfig upgradeConfig(QuantizationConfig config);

// The name skip lists and the architecture registry see: `tensorName` itself when it already
// starts with "<layerName>.", when `layerName` is empty, or when the layer is groupIntoLayers()'
// "pre" / "post" group (whose tensors keep their full names); "<layerName>.<tensorName>"
// otherwise (tensors named relative to their block, as the seed's module state dicts are).
std::string tensorFullName(std::string_view layerName, std::string_view tensorName);

class LayerQuantizer {
public:
    // `threads` is passed to the kernels (0 = every CPU in the affinity mask). An invalid
    // config is reported by quantizeLayer(); create() reports it up front.
    explicit LayerQuantizer(QuantizationConfig config = {}, int threads = 0);
    static Result<LayerQuantizer> create(QuantizationConfig config, int threads = 0);

    const QuantizationConfig& config() const noexcept { return config_; }
    int threads() const noexcept { return threads_; }
    // The CUDA device that quantizes NF4 / FP4 / INT8 tensors (-1, the default: the CPU
    // kernels). The bytes are the CPU quantizer's (kernels/cuda/quant.cuh: the same rules,
    // IEEE-rounded reciprocals); INT8_DYNAMIC, INT4 and NONE always run on the CPU. A device
    // that is absent fails each such tensor (NotSupported); check cuda::deviceAvailable() first.
    void setDevice(int cudaDevice) noexcept { device_ = cudaDevice; }
    int device() const noexcept { return device_; }

    // Quantizes every tensor of `layer` per the policy above. `layerName` (default:
    // layer.name()) names the QuantizedLayer and prefixes tensor names for skip matching;
    // `index` is stored as the QuantizedLayer's execution index. Tensor names in the result are
    // the names in `layer`, in the same order.
    Result<QuantizedLayer> quantizeLayer(const Layer& layer, std::string_view layerName = {},
                                         int64_t index = -1) const;
    // One tensor per the policy (the mode it gets is modeFor()). `fullName` is used for skip
    // matching and messages; the result is named view.name.
    Result<QuantizedTensor> quantizeTensor(const TensorView& tensor,
                                           std::string_view fullName = {}) const;
    // One tensor in exactly `mode`: no fallback. InvalidArgument naming the tensor when the
    // mode does not apply to it (see the header comment).
    Result<QuantizedTensor> quantizeTensorAs(const TensorView& tensor, QuantizationMode mode,
                                             std::string_view fullName = {}) const;
    // The mode quantizeTensor() gives `tensor` (NONE when it is kept).
    QuantizationMode modeFor(const TensorView& tensor, std::string_view fullName = {}) const;

    // Full-precision tensors again, in `outDType` (f16 / bf16 / f32), or, when absent, in each
    // tensor's recorded compute dtype. Integer tensors kept verbatim come back verbatim.
    static Result<Layer> dequantizeLayer(const QuantizedLayer& layer,
                                         std::optional<DType> outDType = std::nullopt,
                                         int threads = 0);
    static Result<Tensor> dequantizeTensor(const QuantizedTensor& tensor,
                                           std::optional<DType> outDType = std::nullopt,
                                           int threads = 0);

    // True when at least one tensor is stored in a mode other than NONE.
    static bool isQuantized(const QuantizedLayer& layer);
    static bool isQuantized(const QuantizedTensor& tensor);

    // Quantized size / full-precision size in the compute dtype, statistics included:
    // bitsPerWeight(config, cols) / (8 * dtypeSize(computeDType)); e.g. NF4, blocksize 64,
    // no double quant, f16: 4.5 / 16 = 0.28125.
    double quantizedSizeRatio(int64_t cols = 0) const;
    // Measured: storedBytes / (numel * dtypeSize(computeDType)) over every tensor of `layer`
    // (tensors kept in their own dtype count at that dtype's size). 0 for an empty layer.
    static double quantizedSizeRatio(const QuantizedLayer& layer);

private:
    QuantizationConfig config_;
    int threads_ = 0;
    int device_ = -1;
};

// The seed's one-line helpers. `options` fills the rest of the QuantizationConfig (its mode
// and, for NF4 / FP4, its quant_type are overridden by `mode`).
struct QuantizeOptions {
    QuantizationConfig config = {};  // compute dtype, blocksize, double quant, skip list, ...
    std::string layerName;           // default: the layer's own name
    int64_t index = -1;
    int threads = 0;
};
Result<QuantizedLayer> quantizeLayer(const Layer& layer,
                                     QuantizationMode mode = QuantizationMode::kNf4,
                                     const QuantizeOptions& options = {});
// `mode` spelled as in configs ("nf4", "int8_dynamic", ...; case-insensitive).
Result<QuantizedLayer> quantizeLayer(const Layer& layer, std::string_view mode,
                                     const QuantizeOptions& options = {});
Result<Layer> dequantizeLayer(const QuantizedLayer& layer,
                              std::optional<DType> computeDType = std::nullopt, int threads = 0);

// Per-tensor configs chosen by what a tensor does (the seed's AdaptiveQuantizer).
//
// A tensor's role comes from the architecture registry when it recognizes the name
// (setUseArchitectureRegistry(false) turns that off), otherwise from the keyword rules, which
// setKeywords() can replace. Attention tensors use the attention config; when none was given,
// that is the base config upgraded one step (upgradeConfig). FFN tensors use the FFN config,
// the base config when none was given. Everything else uses the base config. Tensors the
// registry keeps unquantized by default (embeddings, heads, norms) are kept as NONE in the base
// compute dtype unless setKeepRegistryDefaults(false).
class AdaptiveQuantizer {
public:
    explicit AdaptiveQuantizer(QuantizationConfig base,
                               std::optional<QuantizationConfig> attention = std::nullopt,
                               std::optional<QuantizationConfig> ffn = std::nullopt,
                               int threads = 0);
    // Validates the three configs up front (InvalidArgument naming which one is bad).
    static Result<AdaptiveQuantizer> create(QuantizationConfig base,
                                            std::optional<QuantizationConfig> attention = std::nullopt,
                                            std::optional<QuantizationConfig> ffn = std::nullopt,
                                            int threads = 0);

    const QuantizationConfig& baseConfig() const noexcept { return base_.config(); }
    const QuantizationConfig& attentionConfig() const noexcept { return attention_.config(); }
    const QuantizationConfig& ffnConfig() const noexcept { return ffn_.config(); }

    // Lower-cased substrings; defaults are the seed's (attn, attention, query, key, value, qkv /
    // ffn, mlp, feedforward, fc). Attention keywords are tried first.
    void setKeywords(std::vector<std::string> attention, std::vector<std::string> ffn);
    // The architecture to read names with (kUnknown: try every family, the default).
    void setArchitecture(Architecture arch) { arch_ = arch; }
    void setUseArchitectureRegistry(bool use) { useRegistry_ = use; }
    void setKeepRegistryDefaults(bool keep) { keepDefaults_ = keep; }
    // LayerQuantizer::setDevice() for each config's quantizer.
    void setDevice(int cudaDevice) noexcept;

    // The role that picks the config (kAttention, kFfn, or another role meaning "base").
    TensorRole roleOf(std::string_view fullName) const;
    // The config used for the tensor called `fullName`.
    const QuantizationConfig& configFor(std::string_view fullName) const;
    // The mode a tensor gets (NONE for tensors kept).
    QuantizationMode modeFor(const TensorView& tensor, std::string_view fullName) const;

    Result<QuantizedLayer> quantizeLayer(const Layer& layer, std::string_view layerName = {},
                                         int64_t index = -1) const;
    // Quantizes each layer in order; the i-th result gets index i unless named otherwise.
    // Errors name the layer (and tensor).
    Result<std::vector<QuantizedLayer>> quantizeModel(std::span<const Layer> model) const;

private:
    bool keptByRegistry(std::string_view fullName) const;
    const LayerQuantizer& quantizerFor(std::string_view fullName) const;

    LayerQuantizer base_;
    LayerQuantizer attention_;
    LayerQuantizer ffn_;
    LayerQuantizer keep_;  // mode NONE in the base compute dtype
    std::vector<std::string> attentionKeywords_;
    std::vector<std::string> ffnKeywords_;
    Architecture arch_ = Architecture::kUnknown;
    bool useRegistry_ = true;
    bool keepDefaults_ = true;
};

// The seed's get_mixed_precision_config(): base NF4 (getNf4Config), attention INT8
// (getInt8Config), FFN NF4 (getNf4Config).
AdaptiveQuantizer getMixedPrecisionConfig(int threads = 0);

}  // namespace sli

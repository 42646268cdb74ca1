// Quantization modes, the per-layer QuantizationConfig, named presets and the registry.
//
// These follow the seed Python API (QuantizationMode, QuantizationConfig.to_dict/from_dict,
// QuantizationRegistry, get_int8_config / get_nf4_config / get_fp4_config) with C++ names and
// the same semantics:
//   mode                  what the weights are stored as (NONE keeps the compute dtype)
//   compute_dtype         what dequantization produces (f16, bf16, f32)
//   compress_statistics   statistics extents are zstd-compressed in the cache (lossless)
//   quant_storage_dtype   metadata only: the dtype a 4-bit payload is viewed as (bytes identical)
//   double_quant          bitsandbytes nested quantization of the 4-bit absmax
//   quant_type            "nf4" or "fp4": the 4-bit codebook (must agree with an NF4/FP4 mode)
//   llm_int8_threshold    LLM.int8 activation-outlier threshold, stored with INT8 layers
//   llm_int8_skip_modules tensors kept unquantized (simple name, dotted prefix or full name)
//   blocksize             4-bit block size, a power of two in 32..4096 (default 64)
//
// QuantizationConfig is a plain value type. QuantizationRegistry is thread-safe.
#pragma once

#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sli/dtype.h"
#include "sli/json.h"
#include "sli/status.h"

namespace sli {

enum class QuantizationMode : uint8_t {
    kNone = 0,
    kInt8 = 1,
    kInt8Dynamic = 2,
    kNf4 = 3,
    kFp4 = 4,
    kInt4 = 5,
};

inline constexpr QuantizationMode kAllModes[] = {
    QuantizationMode::kNone, QuantizationMode::kInt8, QuantizationMode::kInt8Dynamic,
    QuantizationMode::kNf4,  QuantizationMode::kFp4,  QuantizationMode::kInt4};

// "none", "int8", "int8_dynamic", "nf4", "fp4", "int4".
const char* modeName(QuantizationMode m) noexcept;
// Inverse of modeName (case-insensitive); InvalidArgument listing the valid names otherwise.
Result<QuantizationMode> parseMode(std::string_view s);
inline bool modeIs4bit(QuantizationMode m) {
    return m == QuantizationMode::kNf4 || m == QuantizationMode::kFp4;
}

struct QuantizationConfig {
    QuantizationMode mode = QuantizationMode::kNone;
    DType computeDType = DType::kF16;
    bool compressStatistics = true;
    DType quantStorageDType = DType::kU8;
    bool doubleQuant = true;
    std::string quantType = "nf4";
    double llmInt8Threshold = 6.0;
    std::vector<std::string> llmInt8SkipModules;
    int blocksize = 64;

    // OK, or InvalidArgument explaining the first problem found.
    Status validate() const;
    // The seed's to_dict(): {"mode": "nf4", "compute_dtype": "float16", ...}.
    Json toJson() const;
    std::string toJsonString() const { return toJson().dump(); }
    // The seed's from_dict(): missing keys take defaults; unknown keys, wrong JSON types and
    // invalid values are InvalidArgument naming the key. The result is validated.
    static Result<QuantizationConfig> fromJson(const Json& j);
    static Result<QuantizationConfig> fromJsonString(std::string_view text);
    // A short stable hex fingerprint of the canonical JSON (names cache directories).
    std::string fingerprint() const;
    // True when `tensorName` matches an llm_int8_skip_modules entry: equal to the full name,
    // equal to its last dotted component (or the component before a trailing ".weight" /
    // ".bias"), or a dotted prefix of it ("model.layers.0.mlp" matches
    // "model.layers.0.mlp.up_proj.weight").
    bool isSkipped(std::string_view tensorName) const;

    bool operator==(const QuantizationConfig&) const = default;
};

// The seed's presets.
QuantizationConfig getInt8Config();  // INT8, skips lm_head and embed_tokens
QuantizationConfig getNf4Config();   // NF4 with double quant
QuantizationConfig getFp4Config();   // FP4

// Named configurations. Built-ins "int8", "nf4", "fp4" exist from the start. Thread-safe.
class QuantizationRegistry {
public:
    // The process-wide registry.
    static QuantizationRegistry& global();
    QuantizationRegistry();

    // Registers (or, with replace, overwrites) `name`. InvalidArgument for an empty name, an
    // invalid config, or an existing name without replace.
    Status registerConfig(std::string name, QuantizationConfig config, bool replace = false);
    // NotFound listing the registered names when absent.
    Result<QuantizationConfig> get(std::string_view name) const;
    std::vector<std::string> list() const;  // sorted
    bool contains(std::string_view name) const;

private:
    std::vector<std::string> listLocked() const;  // requires mu_

    mutable std::mutex mu_;
    std::vector<std::pair<std::string, QuantizationConfig>> entries_;
};

}  // namespace sli

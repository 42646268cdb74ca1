// Quantized tensors and layers: the unit the quantizer produces, the cache stores, and the
// engine dequantizes.
//
// A QuantizedTensor owns up to five byte arrays ("parts"), laid out exactly as bitsandbytes /
// llama.cpp lay them out, so a checkpoint can be imported or exported without conversion:
//
//   mode          kPayload                       kAbsmax                 nested parts / kQuantMap
//   NONE          values in storedDType          -                       -
//   NF4 / FP4     packed codes, (n+1)/2 bytes,   f32[nb], or u8[nb]      kNestedAbsmax f32[ceil(nb/256)],
//                 element 2k in the high nibble  codes when doubleQuant  kNestedQuantMap f32[256],
//                                                                        kQuantMap f32[16] (codebook)
//   INT8          int8 CB[rows][cols]            f32 SCB[rows] (absmax)  -
//   INT8_DYNAMIC  int8 q[rows][cols]             f32 scale[rows]         -
//   INT4          block_q4_0[rows*cols/32]       -                       -
//
// where n = numel(shape), nb = ceil(n / blocksize), rows = shape[0] and cols = n / rows.
// QuantizedTensorView is the same description over borrowed bytes (e.g. a pinned read buffer):
// the engine dequantizes from views without copying. Neither type is internally synchronized.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "sli/config.h"
#include "sli/dtype.h"
#include "sli/status.h"
#include "sli/tensor.h"

namespace sli {

enum class QuantPart : uint8_t {
    kPayload = 0,
    kAbsmax = 1,
    kNestedAbsmax = 2,
    kNestedQuantMap = 3,
    kQuantMap = 4,
};
inline constexpr int kQuantPartCount = 5;
const char* quantPartName(QuantPart p) noexcept;  // "payload", "absmax", ...

// Metadata shared by the owning and the borrowing forms.
struct QuantizedTensorInfo {
    std::string name;
    std::vector<int64_t> shape;  // logical shape of the full-precision tensor
    QuantizationMode mode = QuantizationMode::kNone;
    // NONE: dtype of the stored values. NF4/FP4: quant_storage dtype (metadata; bytes are
    // uint8). INT8 / INT8_DYNAMIC: i8. INT4: u8.
    DType storedDType = DType::kF32;
    DType computeDType = DType::kF16;  // what dequantization produces by default
    DType sourceDType = DType::kF32;   // dtype in the source checkpoint
    int32_t blocksize = 0;             // NF4/FP4 block size; 32 for INT4; 0 otherwise
    bool doubleQuant = false;          // NF4/FP4 only
    int32_t nestedBlocksize = 0;       // 256 when doubleQuant
    float nestedOffset = 0.0f;         // the mean subtracted before nested quantization
    float llmInt8Threshold = 0.0f;     // INT8: activation-outlier threshold for the executor

    int64_t numel() const;
    int64_t rows() const { return shape.empty() ? 1 : shape[0]; }
    int64_t cols() const;
    // Expected byte size of each part for this metadata (0 for parts the mode does not use).
    size_t expectedPartBytes(QuantPart p) const;
    // Structural check: shape, mode-specific fields, part sizes given `partBytes`.
    // InvalidArgument / Corruption naming the tensor.
    Status validateParts(const std::array<size_t, kQuantPartCount>& partBytes) const;
};

struct QuantizedTensorView {
    const QuantizedTensorInfo* info = nullptr;
    std::array<std::span<const uint8_t>, kQuantPartCount> parts{};

    std::span<const uint8_t> part(QuantPart p) const { return parts[static_cast<int>(p)]; }
};

struct QuantizedTensor {
    QuantizedTensorInfo info;
    std::array<AlignedBuffer, kQuantPartCount> parts;

    AlignedBuffer& part(QuantPart p) { return parts[static_cast<int>(p)]; }
    const AlignedBuffer& part(QuantPart p) const { return parts[static_cast<int>(p)]; }
    QuantizedTensorView view() const;
    // Bytes of all parts (what the weights cost in memory, statistics included).
    size_t storedBytes() const;
    Status validate() const;
};

struct QuantizedLayer {
    std::string name;      // e.g. "model.layers.3"
    int64_t index = -1;    // layer index in execution order
    std::vector<QuantizedTensor> tensors;

    size_t storedBytes() const;
    const QuantizedTensor* find(std::string_view tensorName) const;
};

}  // namespace sli

#include "sli/quantized.h"

#include <limits>

namespace sli {

const char* quantPartName(QuantPart p) noexcept {
    switch (p) {
        case QuantPart::kPayload: return "payload";
        case QuantPart::kAbsmax: return "absmax";
        case QuantPart::kNestedAbsmax: return "nested_absmax";
        case QuantPart::kNestedQuantMap: return "nested_quant_map";
        case QuantPart::kQuantMap: return "quant_map";
    }
    return "?";
}

int64_t QuantizedTensorInfo::numel() const {
    auto n = shapeNumel(shape, name);
    return n.isOk() ? *n : -1;
}

int64_t QuantizedTensorInfo::cols() const {
    const int64_t r = rows();
    return r == 0 ? 0 : numel() / r;
}

size_t QuantizedTensorInfo::expectedPartBytes(QuantPart p) const {
    const int64_t n = numel();
    if (n < 0) return 0;
    const auto un = static_cast<size_t>(n);
    switch (mode) {
        case QuantizationMode::kNone:
            return p == QuantPart::kPayload ? un * dtypeSize(storedDType) : 0;
        case QuantizationMode::kNf4:
        case QuantizationMode::kFp4: {
            if (blocksize <= 0) return 0;
            const size_t nb = (un + static_cast<size_t>(blocksize) - 1) / static_cast<size_t>(blocksize);
            switch (p) {
                case QuantPart::kPayload: return (un + 1) / 2;
                case QuantPart::kAbsmax: return doubleQuant ? nb : nb * 4;
                case QuantPart::kNestedAbsmax:
                    if (!doubleQuant || nestedBlocksize <= 0) return 0;
                    return (nb + static_cast<size_t>(nestedBlocksize) - 1) / static_cast<size_t>(nestedBlocksize) * 4;
                case QuantPart::kNestedQuantMap: return doubleQuant ? 256 * 4 : 0;
                case QuantPart::kQuantMap: return 16 * 4;
            }
            return 0;
        }
        case QuantizationMode::kInt8:
        case QuantizationMode::kInt8Dynamic:
            if (p == QuantPart::kPayload) return un;
            if (p == QuantPart::kAbsmax) return static_cast<size_t>(rows()) * 4;
            return 0;
        case QuantizationMode::kInt4:
            return p == QuantPart::kPayload ? un / 32 * 18 : 0;
    }
    return 0;
}

Status QuantizedTensorInfo::validateParts(const std::array<size_t, kQuantPartCount>& partBytes) const {
    auto n = shapeNumel(shape, name);
    if (!n.isOk()) return n.status();
    if (*n == 0) return Status::invalidArgument("tensor " + name + " is empty (shape " + shapeToString(shape) + ")");
    if (static_cast<uint64_t>(*n) > std::numeric_limits<size_t>::max() / 8) {
        // No part could hold it, and expectedPartBytes() would wrap around.
        return Status::invalidArgument("tensor " + name + ": byte size of shape " +
                                       shapeToString(shape) + " overflows");
    }
    switch (mode) {
        case QuantizationMode::kNone: break;
        case QuantizationMode::kNf4:
        case QuantizationMode::kFp4:
            if (blocksize < 32 || blocksize > 4096 || (blocksize & (blocksize - 1)) != 0) {
                return Status::invalidArgument("tensor " + name + ": blocksize " + std::to_string(blocksize) +
                                               " is not a power of two in 32..4096");
            }
            if (doubleQuant && nestedBlocksize != 256) {
                return Status::invalidArgument("tensor " + name + ": nested blocksize must be 256, not " +
                                               std::to_string(nestedBlocksize));
            }
            break;
        case QuantizationMode::kInt8:
        case QuantizationMode::kInt8Dynamic:
            if (shape.size() < 2) {
                return Status::invalidArgument("tensor " + name + ": " + modeName(mode) +
                                               " needs a tensor of two or more dimensions");
            }
            break;
        case QuantizationMode::kInt4:
            if (shape.size() < 2 || cols() % 32 != 0) {
                return Status::invalidArgument("tensor " + name + ": int4 (Q4_0) needs rows whose length is a "
                                               "multiple of 32, shape is " + shapeToString(shape));
            }
            break;
    }
    for (int i = 0; i < kQuantPartCount; ++i) {
        const auto p = static_cast<QuantPart>(i);
        const size_t want = expectedPartBytes(p);
        if (partBytes[i] != want) {
            return Status::corruption("tensor " + name + ": " + quantPartName(p) + " holds " +
                                      std::to_string(partBytes[i]) + " bytes, expected " +
                                      std::to_string(want) + " for " + modeName(mode) + " " +
                                      shapeToString(shape));
        }
    }
    return Status();
}

QuantizedTensorView QuantizedTensor::view() const {
    QuantizedTensorView v;
    v.info = &info;
    for (int i = 0; i < kQuantPartCount; ++i) v.parts[i] = parts[i].bytes();
    return v;
}

size_t QuantizedTensor::storedBytes() const {
    size_t n = 0;
    for (const auto& p : parts) n += p.size();
    return n;
}

Status QuantizedTensor::validate() const {
    std::array<size_t, kQuantPartCount> sizes{};
    for (int i = 0; i < kQuantPartCount; ++i) sizes[i] = parts[i].size();
    return info.validateParts(sizes);
}

size_t QuantizedLayer::storedBytes() const {
    size_t n = 0;
    for (const auto& t : tensors) n += t.storedBytes();
    return n;
}

const QuantizedTensor* QuantizedLayer::find(std::string_view tensorName) const {
    for (const auto& t : tensors) {
        if (t.info.name == tensorName) return &t;
    }
    return nullptr;
}

}  // namespace sli

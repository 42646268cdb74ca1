// LayerQuantizer, the one-line helpers and size accounting (see sli/quantizer.h).
#include "sli/quantizer.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "kernels/cuda/cuda_kernels.h"
#include "sli/kernels.h"
#include "sli/log.h"

namespace sli {

namespace {

constexpr int kNestedBlocksize = 256;
constexpr int kQ4BlockSize = 32;

bool isFloatSource(DType t) {
    return t == DType::kF16 || t == DType::kBF16 || t == DType::kF32 || t == DType::kF64;
}

// Integer and bool tensors are kept verbatim (not weights: position ids, masks, formats).
bool isVerbatimSource(DType t) { return !dtypeIsFloat(t); }

std::string label(const TensorView& t, std::string_view fullName) {
    std::string n(fullName.empty() ? t.name : fullName);
    return "tensor " + (n.empty() ? std::string("<unnamed>") : n);
}

// Structural checks every tensor passes before anything reads its bytes.
Result<int64_t> checkView(const TensorView& t, std::string_view fullName) {
    const std::string what = label(t, fullName);
    auto n = shapeNumel(t.shape, what);
    if (!n.isOk()) return n.status();
    if (*n == 0) {
        return Status::invalidArgument(what + " is empty (shape " + shapeToString(t.shape) + ")");
    }
    if (t.dtype == DType::kF8E4M3 || t.dtype == DType::kF8E5M2) {
        // The values would widen exactly, but an FP8 checkpoint's weights mean value x scale,
        // with scale tensors in a layout of its own (per tensor, per row, per 128 x 128 block)
        // that a lone tensor does not carry: it would quantize the wrong numbers. Ingestion
        // applies the scales first (engine/ingest.h, CheckpointTensor).
        return Status::notSupported(what + ": dtype " + dtypeName(t.dtype) +
                                    " is not quantized alone (its values mean value x scale; "
                                    "`sli quantize` applies an FP8 checkpoint's NAME_scale_inv / "
                                    "NAME_scale tensors and keeps FP8 tensors without one as stored)");
    }
    if (static_cast<uint64_t>(*n) > std::numeric_limits<size_t>::max() / dtypeSize(t.dtype)) {
        // The byte count would wrap around and could then match a too-short `nbytes`.
        return Status::invalidArgument(what + ": byte size of " + dtypeName(t.dtype) + " " +
                                       shapeToString(t.shape) + " overflows");
    }
    const size_t want = static_cast<size_t>(*n) * dtypeSize(t.dtype);
    if (t.nbytes != want) {
        return Status::invalidArgument(what + ": " + std::to_string(t.nbytes) + " bytes of data for " +
                                       dtypeName(t.dtype) + " " + shapeToString(t.shape) + " (" +
                                       std::to_string(want) + " expected)");
    }
    if (t.data == nullptr) return Status::invalidArgument(what + ": no data");
    return *n;
}

int64_t colsOf(std::span<const int64_t> shape, int64_t numel) {
    if (shape.empty() || shape[0] == 0) return numel;
    return numel / shape[0];
}

Result<QuantizedTensor> keepVerbatim(const TensorView& t) {
    QuantizedTensor q;
    q.info.name = std::string(t.name);
    q.info.shape.assign(t.shape.begin(), t.shape.end());
    q.info.mode = QuantizationMode::kNone;
    q.info.storedDType = t.dtype;
    q.info.computeDType = t.dtype;
    q.info.sourceDType = t.dtype;
    SLI_ASSIGN_OR_RETURN(AlignedBuffer buf, AlignedBuffer::allocate(t.nbytes, /*zero=*/false));
    std::memcpy(buf.data(), t.data, t.nbytes);
    q.part(QuantPart::kPayload) = std::move(buf);
    return q;
}

}  // namespace

std::string tensorFullName(std::string_view layerName, std::string_view tensorName) {
    if (layerName.empty() || layerName == "pre" || layerName == "post") return std::string(tensorName);
    if (tensorName.size() > layerName.size() && tensorName.starts_with(layerName) &&
        tensorName[layerName.size()] == '.') {
        return std::string(tensorName);
    }
    return std::string(layerName) + "." + std::string(tensorName);
}

// ---- size accounting --------------------------------------------------------------------

double bitsPerWeight(QuantizationMode mode, DType computeDType, int blocksize, bool doubleQuant,
                     int64_t cols) {
    switch (mode) {
        case QuantizationMode::kNone: return 8.0 * static_cast<double>(dtypeSize(computeDType));
        case QuantizationMode::kNf4:
        case QuantizationMode::kFp4: {
            if (blocksize <= 0) return 0.0;
            const double bs = blocksize;
            return doubleQuant ? 4.0 + 8.0 / bs + 32.0 / (bs * kNestedBlocksize) : 4.0 + 32.0 / bs;
        }
        case QuantizationMode::kInt8:
        case QuantizationMode::kInt8Dynamic:
            return 8.0 + (cols > 0 ? 32.0 / static_cast<double>(cols) : 0.0);
        case QuantizationMode::kInt4: return 8.0 * 18.0 / kQ4BlockSize;
    }
    return 0.0;
}

double bitsPerWeight(const QuantizationConfig& c, int64_t cols) {
    return bitsPerWeight(c.mode, c.computeDType, c.blocksize, c.doubleQuant, cols);
}

double bitsPerWeight(const QuantizedTensor& t) {
    const int64_t n = t.info.numel();
    return n > 0 ? 8.0 * static_cast<double>(t.storedBytes()) / static_cast<double>(n) : 0.0;
}

double bitsPerWeight(const QuantizedLayer& layer) {
    double bits = 0, n = 0;
    for (const auto& t : layer.tensors) {
        const int64_t k = t.info.numel();
        if (k <= 0) continue;
        bits += 8.0 * static_cast<double>(t.storedBytes());
        n += static_cast<double>(k);
    }
    return n > 0 ? bits / n : 0.0;
}

QuantizationMode upgradeMode(QuantizationMode m) {
    switch (m) {
        case QuantizationMode::kNf4:
        case QuantizationMode::kFp4:
        case QuantizationMode::kInt4: return QuantizationMode::kInt8;
        case QuantizationMode::kInt8: return QuantizationMode::kInt8Dynamic;
        case QuantizationMode::kInt8Dynamic:
        case QuantizationMode::kNone: return QuantizationMode::kNone;
    }
    return QuantizationMode::kNone;
}

QuantizationConfig upgradeConfig(QuantizationConfig c) {
    c.mode = upgradeMode(c.mode);
    return c;
}

// ---- LayerQuantizer ------------------------------------------------------------------------

LayerQuantizer::LayerQuantizer(QuantizationConfig config, int threads)
    : config_(std::move(config)), threads_(threads) {}

Result<LayerQuantizer> LayerQuantizer::create(QuantizationConfig config, int threads) {
    SLI_RETURN_IF_ERROR(config.validate().withContext("quantization config"));
    return LayerQuantizer(std::move(config), threads);
}

QuantizationMode LayerQuantizer::modeFor(const TensorView& t, std::string_view fullName) const {
    if (config_.mode == QuantizationMode::kNone) return QuantizationMode::kNone;
    if (!isFloatSource(t.dtype) || t.shape.size() < 2) return QuantizationMode::kNone;
    if (config_.isSkipped(fullName.empty() ? t.name : fullName)) return QuantizationMode::kNone;
    if (config_.mode == QuantizationMode::kInt4) {
        auto n = shapeNumel(t.shape);
        if (!n.isOk() || *n == 0 || colsOf(t.shape, *n) % kQ4BlockSize != 0) {
            return QuantizationMode::kNone;
        }
    }
    return config_.mode;
}

Result<QuantizedTensor> LayerQuantizer::quantizeTensor(const TensorView& t,
                                                       std::string_view fullName) const {
    SLI_RETURN_IF_ERROR(config_.validate().withContext(label(t, fullName) + ": quantization config"));
    SLI_ASSIGN_OR_RETURN(int64_t n, checkView(t, fullName));
    const QuantizationMode mode = modeFor(t, fullName);
    if (mode == QuantizationMode::kNone && config_.mode == QuantizationMode::kInt4 &&
        isFloatSource(t.dtype) && t.shape.size() >= 2 &&
        !config_.isSkipped(fullName.empty() ? t.name : fullName)) {
        SLI_WARN("engine", "%s: rows of %lld values are not a multiple of 32, kept in %s instead of int4",
                 label(t, fullName).c_str(), static_cast<long long>(colsOf(t.shape, n)),
                 dtypeName(config_.computeDType));
    }
    return quantizeTensorAs(t, mode, fullName);
}

Result<QuantizedTensor> LayerQuantizer::quantizeTensorAs(const TensorView& t, QuantizationMode mode,
                                                         std::string_view fullName) const {
    const std::string what = label(t, fullName);
    SLI_RETURN_IF_ERROR(config_.validate().withContext(what + ": quantization config"));
    SLI_ASSIGN_OR_RETURN(int64_t n, checkView(t, fullName));
    if (isVerbatimSource(t.dtype)) {
        if (mode != QuantizationMode::kNone) {
            return Status::invalidArgument(what + ": " + dtypeName(t.dtype) + " is not a floating-point "
                                           "dtype and cannot be quantized to " + modeName(mode));
        }
        return keepVerbatim(t);
    }
    const int64_t cols = colsOf(t.shape, n);
    if ((mode == QuantizationMode::kInt8 || mode == QuantizationMode::kInt8Dynamic ||
         mode == QuantizationMode::kInt4) && t.shape.size() < 2) {
        return Status::invalidArgument(what + ": " + modeName(mode) + " needs a tensor of two or more "
                                       "dimensions, shape is " + shapeToString(t.shape));
    }
    if (mode == QuantizationMode::kInt4 && cols % kQ4BlockSize != 0) {
        return Status::invalidArgument(what + ": int4 (Q4_0) needs rows whose length is a multiple of "
                                       "32, shape is " + shapeToString(t.shape));
    }

    QuantizedTensor q;
    QuantizedTensorInfo& info = q.info;
    info.name = std::string(t.name);
    info.shape.assign(t.shape.begin(), t.shape.end());
    info.mode = mode;
    info.computeDType = config_.computeDType;
    info.sourceDType = t.dtype;
    switch (mode) {
        case QuantizationMode::kNone: info.storedDType = config_.computeDType; break;
        case QuantizationMode::kNf4:
        case QuantizationMode::kFp4:
            info.storedDType = config_.quantStorageDType;
            info.blocksize = config_.blocksize;
            info.doubleQuant = config_.doubleQuant;
            info.nestedBlocksize = config_.doubleQuant ? kNestedBlocksize : 0;
            break;
        case QuantizationMode::kInt8:
            info.storedDType = DType::kI8;
            info.llmInt8Threshold = static_cast<float>(config_.llmInt8Threshold);
            break;
        case QuantizationMode::kInt8Dynamic: info.storedDType = DType::kI8; break;
        case QuantizationMode::kInt4:
            info.storedDType = DType::kU8;
            info.blocksize = kQ4BlockSize;
            break;
    }

    // Quantize from the source values widened exactly to f32 (never from compute-dtype values).
    // 4-bit on the GPU only with the default uint8 quant storage (the device path writes u8).
    const bool onGpu = device_ >= 0 && (((mode == QuantizationMode::kNf4 ||
                                          mode == QuantizationMode::kFp4) &&
                                         info.storedDType == DType::kU8) ||
                                        mode == QuantizationMode::kInt8);
    if (!onGpu) {
        // On the CPU the kernels widen chunk by chunk as they go.
        SLI_RETURN_IF_ERROR(kernels::quantize(t.dtype, t.data, q, threads_).withContext(what));
    } else {
        // (Not zero-filled first: every value is written.)
        AlignedBuffer widened;
        std::span<const float> src;
        if (t.dtype == DType::kF32 && reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0) {
            src = {static_cast<const float*>(t.data), static_cast<size_t>(n)};
        } else {
            auto buf = AlignedBuffer::allocate(static_cast<size_t>(n) * sizeof(float), false);
            if (!buf.isOk()) return buf.status().withContext(what);
            widened = std::move(buf).value();
            SLI_RETURN_IF_ERROR(kernels::widenToF32(t.dtype, t.data, n, widened.as<float>(), threads_).withContext(what));
            src = {widened.as<float>(), static_cast<size_t>(n)};
        }
        SLI_RETURN_IF_ERROR(cuda::quantizeOnDevice(src, q, device_).withContext(what));
    }
    if (mode == QuantizationMode::kInt8) {
        // LLM.int8 rounds the weights to fp16 first (as bitsandbytes): a row with a value past
        // the fp16 range gets an infinite SCB and dequantizes to NaN / Inf throughout.
        const float* scb = q.part(QuantPart::kAbsmax).as<float>();
        int64_t bad = 0;
        const int64_t rows = info.rows();
        for (int64_t r = 0; r < rows; ++r) bad += std::isfinite(scb[r]) ? 0 : 1;
        if (bad > 0) {
            SLI_WARN("engine",
                     "%s: %lld of %lld rows hold values beyond the fp16 range (|w| > 65504); "
                     "LLM.int8 rounds weights to fp16 first, as bitsandbytes does, so those rows "
                     "dequantize to NaN / Inf (int8_dynamic or none keeps them)",
                     what.c_str(), static_cast<long long>(bad), static_cast<long long>(rows));
        }
    }
    return q;
}

Result<QuantizedLayer> LayerQuantizer::quantizeLayer(const Layer& layer, std::string_view layerName,
                                                     int64_t index) const {
    QuantizedLayer out;
    out.name = std::string(layerName.empty() ? std::string_view(layer.name()) : layerName);
    out.index = index;
    const std::string ctx = "layer " + (out.name.empty() ? std::string("<unnamed>") : out.name);
    SLI_RETURN_IF_ERROR(config_.validate().withContext(ctx + ": quantization config"));
    out.tensors.reserve(layer.size());
    for (const Tensor& t : layer) {
        const std::string full = tensorFullName(out.name, t.name());
        auto q = quantizeTensor(t.view(), full);
        if (!q.isOk()) return q.status().withContext(ctx);
        out.tensors.push_back(std::move(q).value());
    }
    return out;
}

Result<Tensor> LayerQuantizer::dequantizeTensor(const QuantizedTensor& q, std::optional<DType> outDType,
                                                int threads) {
    const std::string what = "tensor " + (q.info.name.empty() ? std::string("<unnamed>") : q.info.name);
    SLI_RETURN_IF_ERROR(q.validate());
    if (q.info.mode == QuantizationMode::kNone && isVerbatimSource(q.info.storedDType)) {
        return Tensor::fromBytes(q.info.name, q.info.shape, q.info.storedDType,
                                 q.part(QuantPart::kPayload).bytes());
    }
    const DType dst = outDType.value_or(q.info.computeDType);
    if (!dtypeIsCompute(dst)) {
        return Status::invalidArgument(what + ": cannot dequantize to " + dtypeName(dst) +
                                       ", only to f16, bf16 or f32");
    }
    SLI_ASSIGN_OR_RETURN(Tensor out, Tensor::zeros(q.info.name, q.info.shape, dst));
    SLI_RETURN_IF_ERROR(kernels::dequantize(q.view(), dst, {out.data(), out.nbytes()}, threads)
                            .withContext(what));
    return out;
}

Result<Layer> LayerQuantizer::dequantizeLayer(const QuantizedLayer& layer, std::optional<DType> outDType,
                                              int threads) {
    Layer out(layer.name);
    const std::string ctx = "layer " + (layer.name.empty() ? std::string("<unnamed>") : layer.name);
    for (const QuantizedTensor& q : layer.tensors) {
        auto t = dequantizeTensor(q, outDType, threads);
        if (!t.isOk()) return t.status().withContext(ctx);
        SLI_RETURN_IF_ERROR(out.add(std::move(t).value()).withContext(ctx));
    }
    return out;
}

bool LayerQuantizer::isQuantized(const QuantizedTensor& t) {
    return t.info.mode != QuantizationMode::kNone;
}

bool LayerQuantizer::isQuantized(const QuantizedLayer& layer) {
    for (const auto& t : layer.tensors) {
        if (isQuantized(t)) return true;
    }
    return false;
}

double LayerQuantizer::quantizedSizeRatio(int64_t cols) const {
    return bitsPerWeight(config_, cols) / (8.0 * static_cast<double>(dtypeSize(config_.computeDType)));
}

double LayerQuantizer::quantizedSizeRatio(const QuantizedLayer& layer) {
    double stored = 0, full = 0;
    for (const auto& t : layer.tensors) {
        const int64_t n = t.info.numel();
        if (n <= 0) continue;
        const DType ref = (t.info.mode == QuantizationMode::kNone && isVerbatimSource(t.info.storedDType))
                              ? t.info.storedDType
                              : t.info.computeDType;
        stored += static_cast<double>(t.storedBytes());
        full += static_cast<double>(n) * static_cast<double>(dtypeSize(ref));
    }
    return full > 0 ? stored / full : 0.0;
}

// ---- one-line helpers ----------------------------------------------------------------------

Result<QuantizedLayer> quantizeLayer(const Layer& layer, QuantizationMode mode,
                                     const QuantizeOptions& options) {
    QuantizationConfig c = options.config;
    c.mode = mode;
    if (modeIs4bit(mode)) c.quantType = modeName(mode);
    return LayerQuantizer(std::move(c), options.threads)
        .quantizeLayer(layer, options.layerName, options.index);
}

Result<QuantizedLayer> quantizeLayer(const Layer& layer, std::string_view mode,
                                     const QuantizeOptions& options) {
    auto m = parseMode(mode);
    if (!m.isOk()) {
        return m.status().withContext("layer " +
                                      (options.layerName.empty() ? layer.name() : options.layerName));
    }
    return quantizeLayer(layer, *m, options);
}

Result<Layer> dequantizeLayer(const QuantizedLayer& layer, std::optional<DType> computeDType,
                              int threads) {
    return LayerQuantizer::dequantizeLayer(layer, computeDType, threads);
}

}  // namespace sli

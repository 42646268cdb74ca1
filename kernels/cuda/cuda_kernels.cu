// Facade implementation: validates host metadata, dispatches to the header-only launchers in
// dequant.cuh / quant.cuh, and converts cudaError_t to Status.
#include "kernels/cuda/cuda_kernels.h"

#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/quant.cuh"
#include "kernels/blocks.h"
#include "kernels/reference.h"
#include "kernels/cuda/quant_rules.h"

namespace sli::cuda {

namespace kc = sli::kernels::cuda;

namespace {


std::string tensorName(const QuantizedTensorView& v) {
    return v.info ? "tensor " + v.info->name : std::string("tensor <no info>");
}

bool misaligned(const void* p, size_t alignment) {
    return reinterpret_cast<uintptr_t>(p) % alignment != 0;
}

// The kernels read floats and 16-bit values with naturally aligned loads and store outputs
// likewise; a misaligned access faults on the device (cudaErrorMisalignedAddress, which
// poisons the context for every later call), so such pointers are refused before a launch.
// Byte parts (codes, int8 / Q4_0 payloads) may sit at any offset.
Status checkAlignment(const QuantizedTensorView& v, const void* dst, DType dstType) {
    const QuantizedTensorInfo& info = *v.info;
    for (int i = 0; i < kQuantPartCount; ++i) {
        const auto part = static_cast<QuantPart>(i);
        if (v.parts[static_cast<size_t>(i)].empty()) continue;
        size_t a = 1;
        if (part == QuantPart::kPayload) {
            a = info.mode == QuantizationMode::kNone ? dtypeSize(info.storedDType) : 1;
        } else if (part == QuantPart::kAbsmax) {
            a = modeIs4bit(info.mode) && info.doubleQuant ? 1 : 4;
        } else if (part == QuantPart::kNestedAbsmax || part == QuantPart::kNestedQuantMap) {
            a = 4;
        }
        if (a > 1 && misaligned(v.parts[static_cast<size_t>(i)].data(), a)) {
            return Status::invalidArgument(tensorName(v) + ": device part " + quantPartName(part) +
                                           " is not " + std::to_string(a) + "-byte aligned");
        }
    }
    if (misaligned(dst, dtypeSize(dstType))) {
        return Status::invalidArgument(tensorName(v) + ": device output is not " +
                                       std::to_string(dtypeSize(dstType)) + "-byte aligned");
    }
    return Status::ok();
}

}  // namespace

Status fromCudaError(int err, std::string_view what) {
    if (err == 0) return Status::ok();
    const auto e = static_cast<cudaError_t>(err);
    std::string msg(what);
    msg += ": ";
    msg += cudaGetErrorName(e);
    msg += ": ";
    msg += cudaGetErrorString(e);
    return Status::cudaError(err, std::move(msg));
}

size_t dequantizedBytes(const QuantizedTensorInfo& info, DType dstType) {
    const int64_t n = info.numel();
    return n < 0 ? 0 : static_cast<size_t>(n) * dtypeSize(dstType);
}

Status dequantize(const QuantizedTensorView& v, DType dstType, void* dst, size_t dstBytes,
                  void* stream) {
    if (v.info == nullptr) return Status::invalidArgument("cuda dequantize: view without metadata");
    const QuantizedTensorInfo& info = *v.info;
    if (!dtypeIsCompute(dstType)) {
        return Status::invalidArgument(tensorName(v) + ": cannot dequantize to " +
                                       dtypeName(dstType) + " (f16, bf16 or f32 only)");
    }
    std::array<size_t, kQuantPartCount> sizes{};
    for (int i = 0; i < kQuantPartCount; ++i) sizes[i] = v.parts[i].size();
    SLI_RETURN_IF_ERROR(info.validateParts(sizes));
    const int64_t n = info.numel();
    if (dstBytes < static_cast<size_t>(n) * dtypeSize(dstType)) {
        return Status::invalidArgument(tensorName(v) + ": output holds " + std::to_string(dstBytes) +
                                       " bytes, needs " +
                                       std::to_string(static_cast<size_t>(n) * dtypeSize(dstType)));
    }
    if (dst == nullptr) return Status::invalidArgument(tensorName(v) + ": null output");
    SLI_RETURN_IF_ERROR(checkAlignment(v, dst, dstType));
    auto* s = static_cast<cudaStream_t>(stream);
    auto part = [&](QuantPart p) { return v.part(p).data(); };
    cudaError_t err = cudaSuccess;
    switch (info.mode) {
        case QuantizationMode::kNone: {
            if (!dtypeIsCompute(info.storedDType)) {
                return Status::notSupported(tensorName(v) + ": cuda conversion from " +
                                            dtypeName(info.storedDType) + " is not supported");
            }
            kc::ConvertArgs a;
            a.src = part(QuantPart::kPayload);
            a.srcType = info.storedDType;
            a.n = n;
            a.out = dst;
            err = kc::launchConvert(a, dstType, s);
            break;
        }
        case QuantizationMode::kNf4:
        case QuantizationMode::kFp4: {
            kc::Dequant4Args a;
            a.packed = part(QuantPart::kPayload);
            a.nested = info.doubleQuant;
            if (info.doubleQuant) {
                a.absmaxCodes = part(QuantPart::kAbsmax);
                a.nestedAbsmax = reinterpret_cast<const float*>(part(QuantPart::kNestedAbsmax));
                a.nestedMap = reinterpret_cast<const float*>(part(QuantPart::kNestedQuantMap));
                a.nestedOffset = info.nestedOffset;
            } else {
                a.absmax = reinterpret_cast<const float*>(part(QuantPart::kAbsmax));
            }
            a.fp4 = info.mode == QuantizationMode::kFp4;
            a.blocksize = info.blocksize;
            a.n = n;
            a.out = dst;
            err = kc::launchDequant4bit(a, dstType, s);
            break;
        }
        case QuantizationMode::kInt8:
        case QuantizationMode::kInt8Dynamic: {
            kc::DequantInt8Args a;
            a.q = reinterpret_cast<const int8_t*>(part(QuantPart::kPayload));
            a.scale = reinterpret_cast<const float*>(part(QuantPart::kAbsmax));
            a.n = n;
            a.cols = info.cols();
            a.dynamic = info.mode == QuantizationMode::kInt8Dynamic;
            a.out = dst;
            err = kc::launchDequantInt8(a, dstType, s);
            break;
        }
        case QuantizationMode::kInt4: {
            kc::DequantQ4_0Args a;
            a.blocks = part(QuantPart::kPayload);
            a.nBlocks = n / 32;
            a.out = dst;
            err = kc::launchDequantQ4_0(a, dstType, s);
            break;
        }
    }
    return fromCudaError(err, "cuda dequantize " + tensorName(v) + " (" + modeName(info.mode) + ")");
}

Status quantize4bit(const void* src, DType srcType, int64_t n, int blocksize, bool fp4,
                    uint8_t* packed, float* absmax, void* stream) {
    if (!dtypeIsCompute(srcType)) return Status::invalidArgument("cuda quantize4bit: source must be f32, f16 or bf16");
    if (misaligned(src, dtypeSize(srcType)) || misaligned(absmax, 4)) {
        return Status::invalidArgument("cuda quantize4bit: source or absmax is not naturally aligned");
    }
    if (blocksize < 32 || blocksize > 4096 || (blocksize & (blocksize - 1)) != 0) {
        return Status::invalidArgument("cuda quantize4bit: blocksize " + std::to_string(blocksize) +
                                       " is not a power of two in 32..4096");
    }
    kc::Quant4Args a;
    a.src = src;
    a.srcType = srcType;
    a.n = n;
    a.blocksize = blocksize;
    a.fp4 = fp4;
    a.packed = packed;
    a.absmax = absmax;
    return fromCudaError(kc::launchQuant4bit(a, static_cast<cudaStream_t>(stream)),
                         "cuda quantize4bit");
}

Status quantizeNested(const float* absmax, int64_t nb, float offset, const float* map,
                      uint8_t* codes, float* nestedAbsmax, void* stream) {
    if (misaligned(absmax, 4) || misaligned(map, 4) || misaligned(nestedAbsmax, 4)) {
        return Status::invalidArgument("cuda quantizeNested: a float vector is not 4-byte aligned");
    }
    return fromCudaError(kc::launchQuantNested(absmax, nb, offset, map, codes, nestedAbsmax,
                                               static_cast<cudaStream_t>(stream)),
                         "cuda quantizeNested");
}

Status quantizeInt8(const void* src, DType srcType, int64_t rows, int64_t cols, int8_t* cb,
                    float* scb, void* stream) {
    if (!dtypeIsCompute(srcType)) return Status::invalidArgument("cuda quantizeInt8: source must be f32, f16 or bf16");
    if (misaligned(src, dtypeSize(srcType)) || misaligned(scb, 4)) {
        return Status::invalidArgument("cuda quantizeInt8: source or SCB is not naturally aligned");
    }
    kc::QuantInt8Args a;
    a.src = src;
    a.srcType = srcType;
    a.rows = rows;
    a.cols = cols;
    a.cb = cb;
    a.scb = scb;
    return fromCudaError(kc::launchQuantInt8(a, static_cast<cudaStream_t>(stream)),
                         "cuda quantizeInt8");
}

namespace {

// Owns device allocations made by quantizeOnDevice and frees them on every path.
class DeviceScratch {
public:
    ~DeviceScratch() {
        for (void* p : ptrs_) cudaFree(p);
        if (stream_) cudaStreamDestroy(stream_);
    }
    Status alloc(void** p, size_t bytes, const char* what) {
        SLI_RETURN_IF_ERROR(fromCudaError(cudaMalloc(p, bytes < 16 ? 16 : bytes),
                                          std::string("cudaMalloc ") + what));
        ptrs_.push_back(*p);
        return Status::ok();
    }
    cudaStream_t stream_ = nullptr;

private:
    std::vector<void*> ptrs_;
};

Result<AlignedBuffer> download(const void* d, size_t bytes, cudaStream_t s, const char* what) {
    SLI_ASSIGN_OR_RETURN(AlignedBuffer b, AlignedBuffer::allocate(bytes, false));
    SLI_RETURN_IF_ERROR(fromCudaError(cudaMemcpyAsync(b.data(), d, bytes, cudaMemcpyDeviceToHost, s),
                                      std::string("cuda download ") + what));
    return Result<AlignedBuffer>(std::move(b));
}

}  // namespace

Status quantizeOnDevice(std::span<const float> src, QuantizedTensor& out, int device) {
    QuantizedTensorInfo& info = out.info;
    const int64_t n = info.numel();
    const std::string name = "tensor " + info.name;
    if (n <= 0 || static_cast<size_t>(n) != src.size()) {
        return Status::invalidArgument(name + ": " + std::to_string(src.size()) +
                                       " source values for shape " + shapeToString(info.shape));
    }
    const bool four = modeIs4bit(info.mode);
    if (!four && info.mode != QuantizationMode::kInt8) {
        return Status::notSupported(name + ": GPU quantization of " + modeName(info.mode) +
                                    " is not implemented (use the CPU quantizer)");
    }
    if (four) {
        info.storedDType = info.storedDType == DType::kF32 ? DType::kU8 : info.storedDType;
        info.nestedBlocksize = info.doubleQuant ? 256 : 0;
    } else {
        info.storedDType = DType::kI8;
    }
    {
        std::array<size_t, kQuantPartCount> sizes{};
        for (int i = 0; i < kQuantPartCount; ++i) sizes[i] = info.expectedPartBytes(static_cast<QuantPart>(i));
        SLI_RETURN_IF_ERROR(info.validateParts(sizes));
    }
    SLI_RETURN_IF_ERROR(fromCudaError(cudaSetDevice(device), "cudaSetDevice"));
    DeviceScratch scratch;
    SLI_RETURN_IF_ERROR(fromCudaError(cudaStreamCreateWithFlags(&scratch.stream_, cudaStreamNonBlocking),
                                      "cudaStreamCreate"));
    cudaStream_t s = scratch.stream_;
    void* dSrc = nullptr;
    SLI_RETURN_IF_ERROR(scratch.alloc(&dSrc, src.size_bytes(), "source"));
    SLI_RETURN_IF_ERROR(fromCudaError(
        cudaMemcpyAsync(dSrc, src.data(), src.size_bytes(), cudaMemcpyHostToDevice, s), "cuda upload"));
    const size_t payloadBytes = info.expectedPartBytes(QuantPart::kPayload);
    void* dPayload = nullptr;
    SLI_RETURN_IF_ERROR(scratch.alloc(&dPayload, payloadBytes, "payload"));

    if (!four) {
        const int64_t rows = info.rows();
        void* dScb = nullptr;
        SLI_RETURN_IF_ERROR(scratch.alloc(&dScb, static_cast<size_t>(rows) * 4, "SCB"));
        SLI_RETURN_IF_ERROR(quantizeInt8(dSrc, DType::kF32, rows, info.cols(),
                                         static_cast<int8_t*>(dPayload), static_cast<float*>(dScb), s));
        SLI_ASSIGN_OR_RETURN(out.part(QuantPart::kPayload), download(dPayload, payloadBytes, s, "CB"));
        SLI_ASSIGN_OR_RETURN(out.part(QuantPart::kAbsmax),
                             download(dScb, static_cast<size_t>(rows) * 4, s, "SCB"));
    } else {
        const int64_t nb = (n + info.blocksize - 1) / info.blocksize;
        void* dAbsmax = nullptr;
        SLI_RETURN_IF_ERROR(scratch.alloc(&dAbsmax, static_cast<size_t>(nb) * 4, "absmax"));
        SLI_RETURN_IF_ERROR(quantize4bit(dSrc, DType::kF32, n, info.blocksize,
                                         info.mode == QuantizationMode::kFp4,
                                         static_cast<uint8_t*>(dPayload), static_cast<float*>(dAbsmax), s));
        SLI_ASSIGN_OR_RETURN(out.part(QuantPart::kPayload), download(dPayload, payloadBytes, s, "payload"));
        SLI_ASSIGN_OR_RETURN(AlignedBuffer absmax, download(dAbsmax, static_cast<size_t>(nb) * 4, s, "absmax"));
        SLI_ASSIGN_OR_RETURN(AlignedBuffer qmap, AlignedBuffer::allocate(16 * 4, false));
        for (unsigned i = 0; i < 16; ++i) {
            // The stored quant_map is bnb's get_4bit_type table: FP4 index 8 is +0.0 there.
            const float v = info.mode == QuantizationMode::kFp4
                                ? (i == 8 ? 0.0f : kernels::rules::fp4Value(i))
                                : kernels::rules::nf4Value(i);
            qmap.as<float>()[i] = v;
        }
        out.part(QuantPart::kQuantMap) = std::move(qmap);
        if (!info.doubleQuant) {
            SLI_RETURN_IF_ERROR(fromCudaError(cudaStreamSynchronize(s), "cuda quantize " + name));
            out.part(QuantPart::kAbsmax) = std::move(absmax);
        } else {
            // The offset needs the whole absmax vector (small: n / blocksize floats).
            SLI_RETURN_IF_ERROR(fromCudaError(cudaStreamSynchronize(s), "cuda quantize " + name));
            // The CPU quantizer's offset (kernels/reference.h), so the bytes match it.
            const float offset = kernels::absmaxMean(absmax.as<float>(), nb);
            info.nestedOffset = offset;
            const int64_t nn = (nb + 255) / 256;
            void* dMap = nullptr;
            void* dCodes = nullptr;
            void* dNested = nullptr;
            SLI_RETURN_IF_ERROR(scratch.alloc(&dMap, 256 * 4, "dynamic map"));
            SLI_RETURN_IF_ERROR(scratch.alloc(&dCodes, static_cast<size_t>(nb), "absmax codes"));
            SLI_RETURN_IF_ERROR(scratch.alloc(&dNested, static_cast<size_t>(nn) * 4, "nested absmax"));
            SLI_RETURN_IF_ERROR(fromCudaError(
                cudaMemcpyAsync(dMap, kernels::kDynamicMapBits, 256 * 4, cudaMemcpyHostToDevice, s), "cuda upload map"));
            SLI_RETURN_IF_ERROR(quantizeNested(static_cast<const float*>(dAbsmax), nb, offset,
                                               static_cast<const float*>(dMap),
                                               static_cast<uint8_t*>(dCodes), static_cast<float*>(dNested), s));
            SLI_ASSIGN_OR_RETURN(out.part(QuantPart::kAbsmax), download(dCodes, static_cast<size_t>(nb), s, "codes"));
            SLI_ASSIGN_OR_RETURN(out.part(QuantPart::kNestedAbsmax),
                                 download(dNested, static_cast<size_t>(nn) * 4, s, "nested absmax"));
            SLI_ASSIGN_OR_RETURN(AlignedBuffer map, AlignedBuffer::allocate(256 * 4, false));
            std::memcpy(map.data(), kernels::kDynamicMapBits, 256 * 4);
            out.part(QuantPart::kNestedQuantMap) = std::move(map);
        }
    }
    SLI_RETURN_IF_ERROR(fromCudaError(cudaStreamSynchronize(s), "cuda quantize " + name));
    return out.validate();
}

}  // namespace sli::cuda

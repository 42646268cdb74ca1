// Facade implementation: validates host metadata, dispatches to the header-only launchers in
// dequant.cuh / quant.cuh, and converts cudaError_t to Status.
#include "kernels/cuda/cuda_kernels.h"

#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/quant.cuh"
#include "kernels/cuda/quant_rules.h"

namespace sli::cuda {

namespace kc = sli::kernels::cuda;

namespace {

// The canonical create_dynamic_map() (spec 1.3 / Appendix A; SHA-256 e732639a...), used when
// the GPU quantizer writes a double-quant nested_quant_map.
constexpr uint32_t kDynamicMapBits[256] = {
    0xbf7e3333u, 0xbf7a999au, 0xbf770000u, 0xbf736666u, 0xbf6fcccdu, 0xbf6c3333u, 0xbf68999au, 0xbf650000u,
    0xbf616666u, 0xbf5dcccdu, 0xbf5a3333u, 0xbf56999au, 0xbf530000u, 0xbf4f6666u, 0xbf4bcccdu, 0xbf483333u,
    0xbf44999au, 0xbf410000u, 0xbf3d6666u, 0xbf39cccdu, 0xbf363334u, 0xbf32999au, 0xbf2f0000u, 0xbf2b6666u,
    0xbf27cccdu, 0xbf243334u, 0xbf20999au, 0xbf1d0000u, 0xbf196666u, 0xbf15cccdu, 0xbf123334u, 0xbf0e999au,
    0xbf0b0000u, 0xbf076666u, 0xbf03ccccu, 0xbf003333u, 0xbef93332u, 0xbef20000u, 0xbeeaccccu, 0xbee3999au,
    0xbedc6666u, 0xbed53333u, 0xbece0000u, 0xbec6ccccu, 0xbebf999au, 0xbeb86666u, 0xbeb13333u, 0xbeaa0000u,
    0xbea2ccccu, 0xbe9b999au, 0xbe946666u, 0xbe8d3334u, 0xbe860000u, 0xbe7d9999u, 0xbe6f3333u, 0xbe60cccdu,
    0xbe526666u, 0xbe440000u, 0xbe35999au, 0xbe273333u, 0xbe18cccdu, 0xbe0a6666u, 0xbdf80000u, 0xbddb3334u,
    0xbdc9eb85u, 0xbdc428f7u, 0xbdbe6667u, 0xbdb8a3d7u, 0xbdb2e148u, 0xbdad1eb8u, 0xbda75c2au, 0xbda1999au,
    0xbd9bd70au, 0xbd96147bu, 0xbd9051ebu, 0xbd8a8f5du, 0xbd84cccdu, 0xbd7e147bu, 0xbd728f5du, 0xbd670a3du,
    0xbd5b851fu, 0xbd500000u, 0xbd447ae1u, 0xbd38f5c3u, 0xbd2d70a3u, 0xbd21eb85u, 0xbd166667u, 0xbd0ae148u,
    0xbcfeb852u, 0xbce7ae15u, 0xbcd0a3d7u, 0xbcb9999au, 0xbca28f5du, 0xbc8b851fu, 0xbc68f5c3u, 0xbc3ae148u,
    0xbc1f3b64u, 0xbc160418u, 0xbc0ccccdu, 0xbc039581u, 0xbbf4bc6au, 0xbbe24dd3u, 0xbbcfdf3bu, 0xbbbd70a4u,
    0xbbab020du, 0xbb989374u, 0xbb8624ddu, 0xbb676c8au, 0xbb428f5cu, 0xbb1db22du, 0xbaf1a9fcu, 0xbaa7ef9du,
    0xba7765ffu, 0xba59e83eu, 0xba3c6a80u, 0xba1eecc1u, 0xba016f01u, 0xb9c7e283u, 0xb98ce705u, 0xb923d70bu,
    0xb8ba1f4bu, 0xb88aefb3u, 0xb8378034u, 0xb7b24206u, 0xb70205ffu, 0xb65a1a94u, 0xb513a3b7u, 0x00000000u,
    0x3513a3b7u, 0x365a1a94u, 0x370205ffu, 0x37b24206u, 0x38378034u, 0x388aefb3u, 0x38ba1f4bu, 0x3923d70bu,
    0x398ce705u, 0x39c7e283u, 0x3a016f01u, 0x3a1eecc1u, 0x3a3c6a80u, 0x3a59e83eu, 0x3a7765ffu, 0x3aa7ef9du,
    0x3af1a9fcu, 0x3b1db22du, 0x3b428f5cu, 0x3b676c8au, 0x3b8624ddu, 0x3b989374u, 0x3bab020du, 0x3bbd70a4u,
    0x3bcfdf3bu, 0x3be24dd3u, 0x3bf4bc6au, 0x3c039581u, 0x3c0ccccdu, 0x3c160418u, 0x3c1f3b64u, 0x3c3ae148u,
    0x3c68f5c3u, 0x3c8b851fu, 0x3ca28f5du, 0x3cb9999au, 0x3cd0a3d7u, 0x3ce7ae15u, 0x3cfeb852u, 0x3d0ae148u,
    0x3d166667u, 0x3d21eb85u, 0x3d2d70a3u, 0x3d38f5c3u, 0x3d447ae1u, 0x3d500000u, 0x3d5b851fu, 0x3d670a3du,
    0x3d728f5du, 0x3d7e147bu, 0x3d84cccdu, 0x3d8a8f5du, 0x3d9051ebu, 0x3d96147bu, 0x3d9bd70au, 0x3da1999au,
    0x3da75c2au, 0x3dad1eb8u, 0x3db2e148u, 0x3db8a3d7u, 0x3dbe6667u, 0x3dc428f7u, 0x3dc9eb85u, 0x3ddb3334u,
    0x3df80000u, 0x3e0a6666u, 0x3e18cccdu, 0x3e273333u, 0x3e35999au, 0x3e440000u, 0x3e526666u, 0x3e60cccdu,
    0x3e6f3333u, 0x3e7d9999u, 0x3e860000u, 0x3e8d3334u, 0x3e946666u, 0x3e9b999au, 0x3ea2ccccu, 0x3eaa0000u,
    0x3eb13333u, 0x3eb86666u, 0x3ebf999au, 0x3ec6ccccu, 0x3ece0000u, 0x3ed53333u, 0x3edc6666u, 0x3ee3999au,
    0x3eeaccccu, 0x3ef20000u, 0x3ef93332u, 0x3f003333u, 0x3f03ccccu, 0x3f076666u, 0x3f0b0000u, 0x3f0e999au,
    0x3f123334u, 0x3f15cccdu, 0x3f196666u, 0x3f1d0000u, 0x3f20999au, 0x3f243334u, 0x3f27cccdu, 0x3f2b6666u,
    0x3f2f0000u, 0x3f32999au, 0x3f363334u, 0x3f39cccdu, 0x3f3d6666u, 0x3f410000u, 0x3f44999au, 0x3f483333u,
    0x3f4bcccdu, 0x3f4f6666u, 0x3f530000u, 0x3f56999au, 0x3f5a3333u, 0x3f5dcccdu, 0x3f616666u, 0x3f650000u,
    0x3f68999au, 0x3f6c3333u, 0x3f6fcccdu, 0x3f736666u, 0x3f770000u, 0x3f7a999au, 0x3f7e3333u, 0x3f800000u,
};

std::string tensorName(const QuantizedTensorView& v) {
    return v.info ? "tensor " + v.info->name : std::string("tensor <no info>");
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
    return fromCudaError(kc::launchQuantNested(absmax, nb, offset, map, codes, nestedAbsmax,
                                               static_cast<cudaStream_t>(stream)),
                         "cuda quantizeNested");
}

Status quantizeInt8(const void* src, DType srcType, int64_t rows, int64_t cols, int8_t* cb,
                    float* scb, void* stream) {
    if (!dtypeIsCompute(srcType)) return Status::invalidArgument("cuda quantizeInt8: source must be f32, f16 or bf16");
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

float nestedOffsetOf(std::span<const float> absmax) {
    double sum = 0.0;
    for (float a : absmax) sum += a;
    return absmax.empty() ? 0.0f : static_cast<float>(sum / static_cast<double>(absmax.size()));
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
            const float offset = nestedOffsetOf({absmax.as<float>(), static_cast<size_t>(nb)});
            info.nestedOffset = offset;
            const int64_t nn = (nb + 255) / 256;
            void* dMap = nullptr;
            void* dCodes = nullptr;
            void* dNested = nullptr;
            SLI_RETURN_IF_ERROR(scratch.alloc(&dMap, 256 * 4, "dynamic map"));
            SLI_RETURN_IF_ERROR(scratch.alloc(&dCodes, static_cast<size_t>(nb), "absmax codes"));
            SLI_RETURN_IF_ERROR(scratch.alloc(&dNested, static_cast<size_t>(nn) * 4, "nested absmax"));
            SLI_RETURN_IF_ERROR(fromCudaError(
                cudaMemcpyAsync(dMap, kDynamicMapBits, 256 * 4, cudaMemcpyHostToDevice, s), "cuda upload map"));
            SLI_RETURN_IF_ERROR(quantizeNested(static_cast<const float*>(dAbsmax), nb, offset,
                                               static_cast<const float*>(dMap),
                                               static_cast<uint8_t*>(dCodes), static_cast<float*>(dNested), s));
            SLI_ASSIGN_OR_RETURN(out.part(QuantPart::kAbsmax), download(dCodes, static_cast<size_t>(nb), s, "codes"));
            SLI_ASSIGN_OR_RETURN(out.part(QuantPart::kNestedAbsmax),
                                 download(dNested, static_cast<size_t>(nn) * 4, s, "nested absmax"));
            SLI_ASSIGN_OR_RETURN(AlignedBuffer map, AlignedBuffer::allocate(256 * 4, false));
            std::memcpy(map.data(), kDynamicMapBits, 256 * 4);
            out.part(QuantPart::kNestedQuantMap) = std::move(map);
        }
    }
    SLI_RETURN_IF_ERROR(fromCudaError(cudaStreamSynchronize(s), "cuda quantize " + name));
    return out.validate();
}

}  // namespace sli::cuda

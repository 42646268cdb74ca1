// The GPU API in a build without CUDA (meson -Dcuda=disabled or no nvcc): the same symbols as
// gpu_runtime.cpp, layer_pipeline.cpp and kernels/cuda/cuda_kernels.cu, so callers need no
// #if. deviceCount() is 0 and every factory or launch returns NotSupported; objects that
// can only come from a factory are never constructed, so their other members are unreachable.
#include <string>

#include "engine/gpu/gpu_runtime.h"
#include "engine/gpu/layer_pipeline.h"
#include "kernels/cuda/cuda_kernels.h"
#include "sli/cuda.h"

namespace sli {

namespace {
Status noCuda(const char* what) {
    return Status::notSupported(std::string(what) + ": this build of sli has no CUDA support");
}
}  // namespace

namespace cuda {

bool built() noexcept { return false; }
int deviceCount() noexcept { return 0; }
bool deviceAvailable(int) noexcept { return false; }
std::string deviceDescription(int) { return {}; }

Status fromCudaError(int err, std::string_view what) {
    if (err == 0) return Status::ok();
    return Status::cudaError(err, std::string(what));
}
size_t dequantizedBytes(const QuantizedTensorInfo& info, DType dstType) {
    const int64_t n = info.numel();
    return n < 0 ? 0 : static_cast<size_t>(n) * dtypeSize(dstType);
}
Status dequantize(const QuantizedTensorView&, DType, void*, size_t, void*) {
    return noCuda("cuda dequantize");
}
Status quantize4bit(const void*, DType, int64_t, int, bool, uint8_t*, float*, void*) {
    return noCuda("cuda quantize4bit");
}
Status quantizeNested(const float*, int64_t, float, const float*, uint8_t*, float*, void*) {
    return noCuda("cuda quantizeNested");
}
Status quantizeInt8(const void*, DType, int64_t, int64_t, int8_t*, float*, void*) {
    return noCuda("cuda quantizeInt8");
}
Status quantizeOnDevice(std::span<const float>, QuantizedTensor&, int) {
    return noCuda("cuda quantize");
}

}  // namespace cuda

namespace gpu {

Status copyAsync(void*, const void*, size_t, void*) { return noCuda("cudaMemcpyAsync"); }

CudaStream::~CudaStream() = default;
CudaStream::CudaStream(CudaStream&&) noexcept = default;
CudaStream& CudaStream::operator=(CudaStream&&) noexcept = default;
Result<CudaStream> CudaStream::create(int, int) { return noCuda("CudaStream"); }
Status CudaStream::waitEvent(const CudaEvent&) const { return noCuda("CudaStream"); }
Status CudaStream::synchronize() const { return noCuda("CudaStream"); }

CudaEvent::~CudaEvent() = default;
CudaEvent::CudaEvent(CudaEvent&&) noexcept = default;
CudaEvent& CudaEvent::operator=(CudaEvent&&) noexcept = default;
Result<CudaEvent> CudaEvent::create(int, bool) { return noCuda("CudaEvent"); }
Status CudaEvent::record(void*) const { return noCuda("CudaEvent"); }
Result<bool> CudaEvent::query() const { return noCuda("CudaEvent"); }
Status CudaEvent::synchronize() const { return noCuda("CudaEvent"); }
Result<float> CudaEvent::elapsedMsSince(const CudaEvent&) const { return noCuda("CudaEvent"); }

DeviceBuffer::~DeviceBuffer() = default;
DeviceBuffer::DeviceBuffer(DeviceBuffer&&) noexcept = default;
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&&) noexcept = default;
Result<DeviceBuffer> DeviceBuffer::allocate(int, size_t) { return noCuda("DeviceBuffer"); }

size_t DeviceBufferPool::sizeClass(size_t bytes) noexcept {
    size_t c = size_t{1} << 20;
    while (c < bytes) c <<= 1;
    return c;
}
Result<std::unique_ptr<DeviceBufferPool>> DeviceBufferPool::create(int, uint64_t) {
    return noCuda("DeviceBufferPool");
}
DeviceBufferPool::~DeviceBufferPool() = default;
Result<DeviceBufferPool::PooledBuffer> DeviceBufferPool::acquire(size_t) {
    return noCuda("DeviceBufferPool");
}
uint64_t DeviceBufferPool::allocatedBytes() const { return 0; }
void DeviceBufferPool::trim() {}
void DeviceBufferPool::giveBack(DeviceBuffer&&) {}
DeviceBufferPool::PooledBuffer& DeviceBufferPool::PooledBuffer::operator=(PooledBuffer&& o) noexcept {
    pool_ = o.pool_;
    buffer_ = std::move(o.buffer_);
    return *this;
}
void DeviceBufferPool::PooledBuffer::reset() { pool_ = nullptr; }

HostRegistration::~HostRegistration() = default;
HostRegistration::HostRegistration(HostRegistration&&) noexcept = default;
HostRegistration& HostRegistration::operator=(HostRegistration&&) noexcept = default;
Result<HostRegistration> HostRegistration::registerRange(void*, size_t, int) {
    return noCuda("cudaHostRegister");
}

size_t GpuLayerPipeline::outputBytesFor(std::span<const QuantizedTensorView> tensors, DType dst) {
    size_t total = 0;
    for (const auto& v : tensors) {
        if (v.info) total = (total + 255) / 256 * 256 + cuda::dequantizedBytes(*v.info, dst);
    }
    return (total + 255) / 256 * 256;
}
size_t GpuLayerPipeline::outputBytesFor(std::span<const QuantizedTensorInfo* const> infos,
                                        std::span<const DType> dsts) {
    size_t total = 0;
    for (size_t i = 0; i < infos.size() && i < dsts.size(); ++i) {
        if (infos[i]) total = (total + 255) / 256 * 256 + cuda::dequantizedBytes(*infos[i], dsts[i]);
    }
    return (total + 255) / 256 * 256;
}
Result<std::unique_ptr<GpuLayerPipeline>> GpuLayerPipeline::create(const GpuPipelineOptions&) {
    return noCuda("GpuLayerPipeline");
}
GpuLayerPipeline::~GpuLayerPipeline() = default;
Status GpuLayerPipeline::checkSlot(int) const { return noCuda("GpuLayerPipeline"); }
Result<int> GpuLayerPipeline::reserve() { return noCuda("GpuLayerPipeline"); }
Result<std::span<const GpuTensor>> GpuLayerPipeline::submit(int, std::span<const uint8_t>,
                                                           std::span<const QuantizedTensorView>, DType) {
    return noCuda("GpuLayerPipeline");
}
Result<std::span<const GpuTensor>> GpuLayerPipeline::submit(int, std::span<const uint8_t>,
                                                           std::span<const QuantizedTensorView>,
                                                           std::span<const DType>) {
    return noCuda("GpuLayerPipeline");
}
Result<std::span<const GpuTensor>> GpuLayerPipeline::submitImpl(int, std::span<const uint8_t>,
                                                               std::span<const QuantizedTensorView>,
                                                               std::span<const DType>) {
    return noCuda("GpuLayerPipeline");
}
Result<bool> GpuLayerPipeline::copied(int) const { return noCuda("GpuLayerPipeline"); }
Result<bool> GpuLayerPipeline::ready(int) const { return noCuda("GpuLayerPipeline"); }
Status GpuLayerPipeline::waitCopied(int) const { return noCuda("GpuLayerPipeline"); }
Status GpuLayerPipeline::acquire(int, void*) { return noCuda("GpuLayerPipeline"); }
Status GpuLayerPipeline::release(int, void*) { return noCuda("GpuLayerPipeline"); }
std::span<const GpuTensor> GpuLayerPipeline::tensors(int) const { return {}; }
Result<GpuStageTimes> GpuLayerPipeline::stageTimes(int) const { return noCuda("GpuLayerPipeline"); }

}  // namespace gpu
}  // namespace sli

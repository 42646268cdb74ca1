// CUDA implementation of engine/gpu/gpu_runtime.h and sli/cuda.h.
#include "engine/gpu/gpu_runtime.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <utility>
#include <string>

#include "kernels/cuda/cuda_kernels.h"
#include "sli/cuda.h"
#include "sli/log.h"

namespace sli {

namespace cuda {

bool built() noexcept { return true; }

int deviceCount() noexcept {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no device" / "no driver" error
        return 0;
    }
    return n;
}

bool deviceAvailable(int device) noexcept { return device >= 0 && device < deviceCount(); }

std::string deviceDescription(int device) {
    if (!deviceAvailable(device)) return {};
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, device) != cudaSuccess) return {};
    char buf[512];
    std::snprintf(buf, sizeof buf, "%s, sm_%d%d, %.1f GiB, %d SMs", p.name, p.major, p.minor,
                  static_cast<double>(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0),
                  p.multiProcessorCount);
    return buf;
}

}  // namespace cuda

namespace gpu {

namespace {

// Makes `device` current for the scope and restores the caller's device afterwards.
class DeviceScope {
public:
    explicit DeviceScope(int device) {
        if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
        if (device >= 0 && device != previous_) {
            err_ = cudaSetDevice(device);
            changed_ = err_ == cudaSuccess;
            if (!changed_) cudaGetLastError();  // reported by status(); not a later launch's
        }
    }
    ~DeviceScope() {
        if (changed_ && previous_ >= 0) cudaSetDevice(previous_);
    }
    Status status(int device) const {
        return cuda::fromCudaError(err_, "cudaSetDevice(" + std::to_string(device) + ")");
    }

private:
    int previous_ = -1;
    cudaError_t err_ = cudaSuccess;
    bool changed_ = false;
};

Status check(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return Status::ok();
    return cuda::fromCudaError(e, what);
}

}  // namespace

Status copyAsync(void* dst, const void* src, size_t bytes, void* stream) {
    if (bytes == 0) return Status::ok();
    return check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, static_cast<cudaStream_t>(stream)),
                 "cudaMemcpyAsync");
}

// ---- CudaStream ------------------------------------------------------------------------------
CudaStream::~CudaStream() {
    if (stream_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}
CudaStream::CudaStream(CudaStream&& o) noexcept
    : stream_(std::exchange(o.stream_, nullptr)), device_(o.device_) {}
CudaStream& CudaStream::operator=(CudaStream&& o) noexcept {
    if (this != &o) {
        if (stream_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
        stream_ = std::exchange(o.stream_, nullptr);
        device_ = o.device_;
    }
    return *this;
}
Result<CudaStream> CudaStream::create(int device, int priority) {
    DeviceScope scope(device);
    SLI_RETURN_IF_ERROR(scope.status(device));
    cudaStream_t s = nullptr;
    SLI_RETURN_IF_ERROR(check(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, priority),
                              "cudaStreamCreateWithPriority"));
    CudaStream out;
    out.stream_ = s;
    out.device_ = device;
    return out;
}
Status CudaStream::waitEvent(const CudaEvent& event) const {
    return check(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream_),
                                     static_cast<cudaEvent_t>(event.handle()), 0),
                 "cudaStreamWaitEvent");
}
Status CudaStream::synchronize() const {
    return check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)), "cudaStreamSynchronize");
}

// ---- CudaEvent -------------------------------------------------------------------------------
CudaEvent::~CudaEvent() {
    if (event_) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
}
CudaEvent::CudaEvent(CudaEvent&& o) noexcept
    : event_(std::exchange(o.event_, nullptr)), device_(o.device_) {}
CudaEvent& CudaEvent::operator=(CudaEvent&& o) noexcept {
    if (this != &o) {
        if (event_) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
        event_ = std::exchange(o.event_, nullptr);
        device_ = o.device_;
    }
    return *this;
}
Result<CudaEvent> CudaEvent::create(int device, bool timing) {
    DeviceScope scope(device);
    SLI_RETURN_IF_ERROR(scope.status(device));
    cudaEvent_t e = nullptr;
    SLI_RETURN_IF_ERROR(check(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming),
                              "cudaEventCreate"));
    CudaEvent out;
    out.event_ = e;
    out.device_ = device;
    return out;
}
Status CudaEvent::record(void* stream) const {
    return check(cudaEventRecord(static_cast<cudaEvent_t>(event_), static_cast<cudaStream_t>(stream)),
                 "cudaEventRecord");
}
Result<bool> CudaEvent::query() const {
    const cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event_));
    if (e == cudaSuccess) return true;
    if (e == cudaErrorNotReady) {
        // NotReady is recorded as this thread's last error: clear it, or the next kernel
        // launch's cudaGetLastError() check would report it as that launch's failure.
        cudaGetLastError();
        return false;
    }
    return check(e, "cudaEventQuery");
}
Status CudaEvent::synchronize() const {
    return check(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)), "cudaEventSynchronize");
}
Result<float> CudaEvent::elapsedMsSince(const CudaEvent& start) const {
    float ms = 0;
    SLI_RETURN_IF_ERROR(check(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start.event_),
                                                   static_cast<cudaEvent_t>(event_)),
                              "cudaEventElapsedTime"));
    return ms;
}

// ---- DeviceBuffer ----------------------------------------------------------------------------
DeviceBuffer::~DeviceBuffer() {
    if (data_) {
        DeviceScope scope(device_);
        cudaFree(data_);
    }
}
DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)), device_(o.device_) {}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
        if (data_) {
            DeviceScope scope(device_);
            cudaFree(data_);
        }
        data_ = std::exchange(o.data_, nullptr);
        size_ = std::exchange(o.size_, 0);
        device_ = o.device_;
    }
    return *this;
}
Result<DeviceBuffer> DeviceBuffer::allocate(int device, size_t bytes) {
    DeviceScope scope(device);
    SLI_RETURN_IF_ERROR(scope.status(device));
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes == 0 ? 256 : bytes);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        return Status::resourceExhausted("cudaMalloc of " + std::to_string(bytes) +
                                         " bytes on cuda:" + std::to_string(device) +
                                         ": out of device memory");
    }
    SLI_RETURN_IF_ERROR(check(e, "cudaMalloc"));
    DeviceBuffer out;
    out.data_ = p;
    out.size_ = bytes;
    out.device_ = device;
    return out;
}

// ---- DeviceBufferPool ------------------------------------------------------------------------
size_t DeviceBufferPool::sizeClass(size_t bytes) noexcept {
    size_t c = size_t{1} << 20;
    while (c < bytes) c <<= 1;
    return c;
}

Result<std::unique_ptr<DeviceBufferPool>> DeviceBufferPool::create(int device, uint64_t budgetBytes) {
    if (!cuda::deviceAvailable(device)) {
        return Status::notSupported("cuda:" + std::to_string(device) + " is not available (" +
                                    std::to_string(cuda::deviceCount()) + " CUDA devices)");
    }
    if (budgetBytes == 0) {
        DeviceScope scope(device);
        SLI_RETURN_IF_ERROR(scope.status(device));
        size_t freeB = 0, totalB = 0;
        SLI_RETURN_IF_ERROR(check(cudaMemGetInfo(&freeB, &totalB), "cudaMemGetInfo"));
        budgetBytes = freeB / 10 * 9;
    }
    return std::unique_ptr<DeviceBufferPool>(new DeviceBufferPool(device, budgetBytes));
}

DeviceBufferPool::~DeviceBufferPool() { trim(); }

uint64_t DeviceBufferPool::allocatedBytes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return allocated_;
}

void DeviceBufferPool::trim() {
    std::vector<DeviceBuffer> drop;
    {
        std::lock_guard<std::mutex> lock(mu_);
        for (auto& b : idle_) allocated_ -= b.size();
        drop.swap(idle_);
    }
}

Result<DeviceBufferPool::PooledBuffer> DeviceBufferPool::acquire(size_t bytes) {
    const size_t cls = sizeClass(bytes);
    PooledBuffer out;
    out.pool_ = this;
    std::vector<DeviceBuffer> drop;  // freed outside the lock
    {
        std::lock_guard<std::mutex> lock(mu_);
        for (size_t i = 0; i < idle_.size(); ++i) {
            if (idle_[i].size() == cls) {
                out.buffer_ = std::move(idle_[i]);
                idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(i));
                return out;
            }
        }
        // Free idle buffers of other classes until the request fits the budget.
        while (allocated_ + cls > budget_ && !idle_.empty()) {
            allocated_ -= idle_.back().size();
            drop.push_back(std::move(idle_.back()));
            idle_.pop_back();
        }
        if (allocated_ + cls > budget_) {
            return Status::resourceExhausted(
                "device buffer pool on cuda:" + std::to_string(device_) + ": " +
                std::to_string(cls) + " more bytes would exceed the budget of " +
                std::to_string(budget_) + " (" + std::to_string(allocated_) + " allocated)");
        }
        allocated_ += cls;  // reserved now, so concurrent acquires respect the budget
    }
    drop.clear();
    auto b = DeviceBuffer::allocate(device_, cls);
    if (!b.isOk()) {
        std::lock_guard<std::mutex> lock(mu_);
        allocated_ -= cls;
        return b.status();
    }
    out.buffer_ = std::move(*b);
    return out;
}

void DeviceBufferPool::giveBack(DeviceBuffer&& b) {
    std::lock_guard<std::mutex> lock(mu_);
    idle_.push_back(std::move(b));
}

DeviceBufferPool::PooledBuffer& DeviceBufferPool::PooledBuffer::operator=(PooledBuffer&& o) noexcept {
    if (this != &o) {
        reset();
        pool_ = std::exchange(o.pool_, nullptr);
        buffer_ = std::move(o.buffer_);
    }
    return *this;
}

void DeviceBufferPool::PooledBuffer::reset() {
    if (pool_ && buffer_.data()) pool_->giveBack(std::move(buffer_));
    pool_ = nullptr;
    buffer_ = DeviceBuffer();
}

// ---- HostRegistration ------------------------------------------------------------------------
HostRegistration::~HostRegistration() {
    if (base_) cudaHostUnregister(base_);
}
HostRegistration::HostRegistration(HostRegistration&& o) noexcept
    : base_(std::exchange(o.base_, nullptr)), size_(std::exchange(o.size_, 0)) {}
HostRegistration& HostRegistration::operator=(HostRegistration&& o) noexcept {
    if (this != &o) {
        if (base_) cudaHostUnregister(base_);
        base_ = std::exchange(o.base_, nullptr);
        size_ = std::exchange(o.size_, 0);
    }
    return *this;
}
Result<HostRegistration> HostRegistration::registerRange(void* base, size_t bytes, int device) {
    if (base == nullptr || bytes == 0) {
        return Status::invalidArgument("cudaHostRegister: empty range");
    }
    DeviceScope scope(device);
    SLI_RETURN_IF_ERROR(scope.status(device));
    const cudaError_t e = cudaHostRegister(base, bytes, cudaHostRegisterPortable);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return cuda::fromCudaError(e, "cudaHostRegister of " + std::to_string(bytes) + " bytes");
    }
    HostRegistration out;
    out.base_ = base;
    out.size_ = bytes;
    return out;
}

}  // namespace gpu

}  // namespace sli

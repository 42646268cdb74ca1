// RAII owners of CUDA runtime handles for the engine: streams, events, device buffers, a
// device buffer pool bounded by a budget, and registration of pinned host ranges.
//
// No CUDA types appear here: handles are exposed as `void*` (cudaStream_t / cudaEvent_t are
// pointers), so engine code compiles without CUDA headers. In a build without CUDA every
// factory returns NotSupported (engine/gpu/gpu_stub.cpp).
//
// Ownership: each object owns exactly one handle and releases it in its destructor (move-only).
// Destroying a stream or event with work pending is safe (CUDA defers the release). A
// DeviceBuffer must not be destroyed while enqueued work still uses it: the owner orders that
// (GpuLayerPipeline does it with events). Every factory binds to `device` and restores the
// calling thread's current device before returning.
//
// Blocking: only the functions named synchronize() / wait...() block the host.
// Thread safety: the objects are not internally synchronized, except DeviceBufferPool, whose
// acquire() and the PooledBuffer destructor may run on any thread.
// Errors: Status::cudaError (code = cudaError_t) naming the call; ResourceExhausted when a
// pool's budget or the device memory is exhausted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "sli/cuda.h"
#include "sli/status.h"

namespace sli::gpu {

class CudaEvent;

// cudaMemcpyAsync with cudaMemcpyDefault: the direction comes from the pointers (unified
// addressing). Asynchronous for pinned or device memory; pageable host memory makes it stage
// synchronously.
Status copyAsync(void* dst, const void* src, size_t bytes, void* stream);

// A non-blocking stream (does not synchronize with the legacy default stream).
class CudaStream {
public:
    CudaStream() = default;
    ~CudaStream();
    CudaStream(CudaStream&& o) noexcept;
    CudaStream& operator=(CudaStream&& o) noexcept;
    CudaStream(const CudaStream&) = delete;
    CudaStream& operator=(const CudaStream&) = delete;

    // priority: 0 = default; lower numbers are higher priority (cudaDeviceGetStreamPriorityRange).
    static Result<CudaStream> create(int device, int priority = 0);

    void* handle() const noexcept { return stream_; }  // cudaStream_t
    int device() const noexcept { return device_; }
    // The stream waits (on the GPU) for the event's last record. Does not block the host.
    Status waitEvent(const CudaEvent& event) const;
    // Blocks the host until all work on the stream is done. Not for the hot path.
    Status synchronize() const;

private:
    void* stream_ = nullptr;
    int device_ = -1;
};

class CudaEvent {
public:
    CudaEvent() = default;
    ~CudaEvent();
    CudaEvent(CudaEvent&& o) noexcept;
    CudaEvent& operator=(CudaEvent&& o) noexcept;
    CudaEvent(const CudaEvent&) = delete;
    CudaEvent& operator=(const CudaEvent&) = delete;

    // timing=false creates the event with cudaEventDisableTiming (cheaper to record and wait).
    static Result<CudaEvent> create(int device, bool timing = false);

    void* handle() const noexcept { return event_; }  // cudaEvent_t
    Status record(void* stream) const;
    // True when the work captured by the last record() has completed (or never recorded).
    Result<bool> query() const;
    // Blocks the host until the last record() completes.
    Status synchronize() const;
    // Milliseconds between `start`'s and this event's records (both timing events, completed).
    Result<float> elapsedMsSince(const CudaEvent& start) const;

private:
    void* event_ = nullptr;
    int device_ = -1;
};

// cudaMalloc'd device memory (256-byte aligned), freed with cudaFree.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    ~DeviceBuffer();
    DeviceBuffer(DeviceBuffer&& o) noexcept;
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    // ResourceExhausted when the device is out of memory.
    static Result<DeviceBuffer> allocate(int device, size_t bytes);

    void* data() const noexcept { return data_; }
    size_t size() const noexcept { return size_; }
    int device() const noexcept { return device_; }

private:
    void* data_ = nullptr;
    size_t size_ = 0;
    int device_ = -1;
};

// A pool of device buffers whose total allocation never exceeds a budget. Buffers are
// allocated in size classes (powers of two from 1 MiB) and recycled: once the working set is
// reached, acquire() allocates nothing. When a request does not fit, idle cached buffers are
// freed first; if it still does not fit, ResourceExhausted. The pool must outlive its buffers.
class DeviceBufferPool {
public:
    class PooledBuffer {
    public:
        PooledBuffer() = default;
        ~PooledBuffer() { reset(); }
        PooledBuffer(PooledBuffer&& o) noexcept { *this = std::move(o); }
        PooledBuffer& operator=(PooledBuffer&& o) noexcept;
        PooledBuffer(const PooledBuffer&) = delete;
        PooledBuffer& operator=(const PooledBuffer&) = delete;

        void* data() const noexcept { return buffer_.data(); }
        size_t size() const noexcept { return buffer_.size(); }  // the size class (>= request)
        void reset();                                              // back to the pool

    private:
        friend class DeviceBufferPool;
        DeviceBufferPool* pool_ = nullptr;
        DeviceBuffer buffer_;
    };

    // budgetBytes 0 = 90% of the device's free memory at creation.
    static Result<std::unique_ptr<DeviceBufferPool>> create(int device, uint64_t budgetBytes);
    ~DeviceBufferPool();

    Result<PooledBuffer> acquire(size_t bytes);
    uint64_t budgetBytes() const noexcept { return budget_; }
    uint64_t allocatedBytes() const;  // held by callers plus cached
    int device() const noexcept { return device_; }
    // Frees every cached (idle) buffer.
    void trim();

    static size_t sizeClass(size_t bytes) noexcept;

private:
    DeviceBufferPool(int device, uint64_t budget) : device_(device), budget_(budget) {}
    void giveBack(DeviceBuffer&& b);

    int device_;
    uint64_t budget_;
    mutable std::mutex mu_;
    uint64_t allocated_ = 0;
    std::vector<DeviceBuffer> idle_;
};

// Page-locks an existing host range for the GPU (cudaHostRegister, portable), so
// cudaMemcpyAsync from it is a true asynchronous DMA. For the engine's pinned pool slabs: pin
// once at start, never per layer. The range must stay mapped until this object is destroyed
// (cudaHostUnregister), and no copy from it may be in flight then (the owner synchronizes
// first). Registering costs milliseconds per GiB. `device` >= 0 binds that device for the
// call (the registration is portable; this only avoids creating a context on device 0).
class HostRegistration {
public:
    HostRegistration() = default;
    ~HostRegistration();
    HostRegistration(HostRegistration&& o) noexcept;
    HostRegistration& operator=(HostRegistration&& o) noexcept;
    HostRegistration(const HostRegistration&) = delete;
    HostRegistration& operator=(const HostRegistration&) = delete;

    static Result<HostRegistration> registerRange(void* base, size_t bytes, int device = -1);

    void* base() const noexcept { return base_; }
    size_t size() const noexcept { return size_; }

private:
    void* base_ = nullptr;
    size_t size_ = 0;
};

}  // namespace sli::gpu

// GpuLayerPipeline: the GPU half of the streaming engine for one device. For each layer it
// copies the quantized bytes from a pinned host region to the device, dequantizes them into
// full-precision device tensors, and hands them to the executor's stream without ever
// blocking the host.
//
// Per slot (a device staging buffer + an output buffer + events), one use looks like:
//
//   host:        reserve() -> submit(slot, pinnedRegion, views, dtype) -> ... -> acquire(slot, s)
//                                                                            ... release(slot, s)
//   copy stream:     wait ready[slot] (its previous dequant finished reading staging)
//                    cudaMemcpyAsync H2D pinnedRegion -> staging         record copied[slot]
//   dequant stream:  wait copied[slot], wait released[slot] (executor done with the outputs)
//                    dequant kernels staging -> outputs                  record ready[slot]
//   caller stream s: acquire = cudaStreamWaitEvent(s, ready[slot])       (no host block)
//                    executor kernels read the outputs
//                    release = cudaEventRecord(released[slot], s)        (no host block)
//
// Every dependency between uses of a slot is a GPU-side event wait, so the host never waits
// on the hot path: no cudaStreamSynchronize, no per-chunk or per-layer host sync. The only
// host-blocking calls are waitCopied() (the I/O side needs its pinned region back) and
// stageTimes() (benchmarks).
//
// Contract:
//  * reserve() returns a slot that is free on the host side (never submitted, or released).
//    ResourceExhausted when every slot is submitted and not yet released (the executor holds
//    them all): back-pressure for the engine. It never blocks.
//  * submit(): `hostRegion` must be pinned (HostRegistration or cudaHostAlloc; pageable memory
//    works but makes the copy synchronous) and contain every part of every view. Its bytes
//    are copied as one block, so the device parts keep their offsets (and alignment) within
//    the region. The host region must not be modified until copied(slot) is true. The `info`
//    of each view must outlive the slot's use (GpuTensor points to it).
//  * The returned GpuTensors (device pointers into the slot's output buffer, 256-byte
//    aligned) are valid from acquire() until release() in the caller's stream order.
//  * acquire()/release() may be called from any thread and any stream (nullptr = legacy
//    default stream). release() on a submitted slot that was never acquired is allowed (skip).
//  * submit(), acquire() and release() bind the pipeline's device for their calls (so a null
//    stream is that device's legacy stream) and restore the calling thread's current device,
//    so any thread may call them.
//  * Per-tensor output dtypes (the engine's submit overload): a compute dtype (f16 / bf16 /
//    f32) dequantizes; any other dtype is allowed only for a mode-none tensor stored in exactly
//    that dtype (integer position ids, masks), which is copied device-to-device as stored.
//
// Memory: everything is allocated at create(): slots * (stagingBytes + outputBytes) device
// bytes from a DeviceBufferPool bounded by deviceBudgetBytes; steady state allocates nothing
// (per-slot vectors keep their capacity).
// Thread safety: all methods are thread-safe (slot state is under a mutex; CUDA calls are).
// Destruction waits for all enqueued work on the pipeline's streams and for every recorded
// release event, then frees the buffers.
// Errors: InvalidArgument (bad slot / state / region), Status::cudaError from CUDA, the
// tensor's own error (Corruption naming it) from the metadata check in submit().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "engine/gpu/gpu_runtime.h"
#include "sli/dtype.h"
#include "sli/quantized.h"
#include "sli/status.h"

namespace sli::gpu {

struct GpuPipelineOptions {
    int device = 0;
    int slots = 2;                   // layers in flight on the device (>= 1)
    size_t stagingBytes = 0;         // per slot: the largest layer's quantized region
    size_t outputBytes = 0;          // per slot: see GpuLayerPipeline::outputBytesFor()
    uint64_t deviceBudgetBytes = 0;  // 0 = auto (90% of free memory)
    bool timing = false;             // record per-stage timing events (for benchmarks)
};

// One dequantized tensor in a slot's output buffer.
struct GpuTensor {
    const QuantizedTensorInfo* info = nullptr;
    DType dtype = DType::kF16;
    void* data = nullptr;  // device pointer
    size_t bytes = 0;
};

// Per-use stage durations measured with CUDA events (timing = true only).
struct GpuStageTimes {
    float copyMs = 0;     // the H2D copy
    float dequantMs = 0;  // all dequant kernels of the slot
    // Event-clock positions (ms) relative to the pipeline's epoch event, for overlap analysis.
    float copyStartMs = 0, copyEndMs = 0, dequantStartMs = 0, dequantEndMs = 0;
};

class GpuLayerPipeline {
public:
    static Result<std::unique_ptr<GpuLayerPipeline>> create(const GpuPipelineOptions& options);
    ~GpuLayerPipeline();
    GpuLayerPipeline(const GpuLayerPipeline&) = delete;
    GpuLayerPipeline& operator=(const GpuLayerPipeline&) = delete;

    // Output bytes one slot needs for these tensors (each output 256-byte aligned).
    static size_t outputBytesFor(std::span<const QuantizedTensorView> tensors, DType dst);
    // The same for tensors described by metadata only, one output dtype each.
    static size_t outputBytesFor(std::span<const QuantizedTensorInfo* const> infos,
                                 std::span<const DType> dsts);

    int slots() const noexcept { return static_cast<int>(slots_.size()); }
    int device() const noexcept { return options_.device; }
    const GpuPipelineOptions& options() const noexcept { return options_; }
    void* copyStream() const noexcept { return copyStream_.handle(); }
    void* dequantStream() const noexcept { return dequantStream_.handle(); }

    Result<int> reserve();
    Result<std::span<const GpuTensor>> submit(int slot, std::span<const uint8_t> hostRegion,
                                              std::span<const QuantizedTensorView> tensors,
                                              DType dst);
    // One output dtype per tensor (dsts.size() == tensors.size()); see the contract above.
    Result<std::span<const GpuTensor>> submit(int slot, std::span<const uint8_t> hostRegion,
                                              std::span<const QuantizedTensorView> tensors,
                                              std::span<const DType> dsts);
    // Whether the H2D copy of the slot's last submit is done (its host region is reusable).
    Result<bool> copied(int slot) const;
    Status waitCopied(int slot) const;  // host-blocking
    // Whether the dequant of the slot's last submit is done (non-blocking; true if never
    // submitted). Once true, stageTimes() of that use does not block.
    Result<bool> ready(int slot) const;
    Status acquire(int slot, void* stream);
    Status release(int slot, void* stream);
    // The outputs of the slot's current use (after submit, until the next submit).
    std::span<const GpuTensor> tensors(int slot) const;
    // Blocks until the slot's dequant finished; timing = true only.
    Result<GpuStageTimes> stageTimes(int slot) const;

private:
    enum class SlotState : uint8_t { kFree, kReserved, kSubmitted, kAcquired };
    struct Slot {
        SlotState state = SlotState::kFree;
        DeviceBufferPool::PooledBuffer staging;
        DeviceBufferPool::PooledBuffer output;
        CudaEvent copied;    // recorded on the copy stream after the H2D copy
        CudaEvent ready;     // recorded on the dequant stream after the kernels
        CudaEvent released;  // recorded on the caller's stream by release()
        CudaEvent copyStart, dequantStart;  // timing only
        bool everSubmitted = false;
        std::vector<GpuTensor> outputs;
        std::vector<QuantizedTensorView> deviceViews;
    };

    explicit GpuLayerPipeline(const GpuPipelineOptions& options) : options_(options) {}
    Status checkSlot(int slot) const;
    Result<std::span<const GpuTensor>> submitImpl(int slot, std::span<const uint8_t> hostRegion,
                                                  std::span<const QuantizedTensorView> tensors,
                                                  std::span<const DType> dsts);

    GpuPipelineOptions options_;
    std::unique_ptr<DeviceBufferPool> pool_;
    CudaStream copyStream_;
    CudaStream dequantStream_;
    CudaEvent epoch_;  // timing only
    std::vector<Slot> slots_;
    mutable std::mutex mu_;
    int next_ = 0;
};

}  // namespace sli::gpu

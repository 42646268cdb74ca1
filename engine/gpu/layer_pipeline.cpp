// CUDA implementation of engine/gpu/layer_pipeline.h.
#include "engine/gpu/layer_pipeline.h"

#include <cuda_runtime.h>

#include <string>

#include "kernels/cuda/cuda_kernels.h"
#include "sli/log.h"

namespace sli::gpu {

namespace {

constexpr size_t kOutputAlign = 256;

size_t alignUp(size_t x, size_t a) { return (x + a - 1) / a * a; }

Status check(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return Status::ok();
    return cuda::fromCudaError(e, what);
}

}  // namespace

size_t GpuLayerPipeline::outputBytesFor(std::span<const QuantizedTensorView> tensors, DType dst) {
    size_t total = 0;
    for (const auto& v : tensors) {
        if (v.info) total = alignUp(total, kOutputAlign) + cuda::dequantizedBytes(*v.info, dst);
    }
    return alignUp(total, kOutputAlign);
}

size_t GpuLayerPipeline::outputBytesFor(std::span<const QuantizedTensorInfo* const> infos,
                                        std::span<const DType> dsts) {
    size_t total = 0;
    for (size_t i = 0; i < infos.size() && i < dsts.size(); ++i) {
        if (infos[i]) total = alignUp(total, kOutputAlign) + cuda::dequantizedBytes(*infos[i], dsts[i]);
    }
    return alignUp(total, kOutputAlign);
}

Result<std::unique_ptr<GpuLayerPipeline>> GpuLayerPipeline::create(const GpuPipelineOptions& options) {
    if (options.slots < 1) return Status::invalidArgument("gpu pipeline: slots must be >= 1");
    if (options.stagingBytes == 0 || options.outputBytes == 0) {
        return Status::invalidArgument("gpu pipeline: stagingBytes and outputBytes must be > 0");
    }
    if (!cuda::deviceAvailable(options.device)) {
        return Status::notSupported("gpu pipeline: cuda:" + std::to_string(options.device) +
                                    " is not available (" + std::to_string(cuda::deviceCount()) +
                                    " CUDA devices)");
    }
    std::unique_ptr<GpuLayerPipeline> p(new GpuLayerPipeline(options));
    SLI_ASSIGN_OR_RETURN(p->pool_, DeviceBufferPool::create(options.device, options.deviceBudgetBytes));
    const uint64_t need = static_cast<uint64_t>(options.slots) *
                          (DeviceBufferPool::sizeClass(options.stagingBytes) +
                           DeviceBufferPool::sizeClass(options.outputBytes));
    if (need > p->pool_->budgetBytes()) {
        return Status::resourceExhausted(
            "gpu pipeline on cuda:" + std::to_string(options.device) + ": " +
            std::to_string(options.slots) + " slots need " + std::to_string(need) +
            " device bytes, budget is " + std::to_string(p->pool_->budgetBytes()));
    }
    // The copy stream gets the higher priority: keeping the PCIe link busy is what bounds the
    // pipeline; dequant kernels fill the gaps.
    int least = 0, greatest = 0;
    cudaDeviceGetStreamPriorityRange(&least, &greatest);
    SLI_ASSIGN_OR_RETURN(p->copyStream_, CudaStream::create(options.device, greatest));
    SLI_ASSIGN_OR_RETURN(p->dequantStream_, CudaStream::create(options.device, least));
    if (options.timing) {
        SLI_ASSIGN_OR_RETURN(p->epoch_, CudaEvent::create(options.device, true));
        SLI_RETURN_IF_ERROR(p->epoch_.record(p->copyStream_.handle()));
    }
    p->slots_.resize(static_cast<size_t>(options.slots));
    for (auto& s : p->slots_) {
        SLI_ASSIGN_OR_RETURN(s.staging, p->pool_->acquire(options.stagingBytes));
        SLI_ASSIGN_OR_RETURN(s.output, p->pool_->acquire(options.outputBytes));
        SLI_ASSIGN_OR_RETURN(s.copied, CudaEvent::create(options.device, options.timing));
        SLI_ASSIGN_OR_RETURN(s.ready, CudaEvent::create(options.device, options.timing));
        SLI_ASSIGN_OR_RETURN(s.released, CudaEvent::create(options.device, false));
        if (options.timing) {
            SLI_ASSIGN_OR_RETURN(s.copyStart, CudaEvent::create(options.device, true));
            SLI_ASSIGN_OR_RETURN(s.dequantStart, CudaEvent::create(options.device, true));
        }
    }
    SLI_DEBUG("cuda", "gpu pipeline on cuda:%d: %d slots, staging %zu, output %zu bytes each",
              options.device, options.slots, options.stagingBytes, options.outputBytes);
    return p;
}

GpuLayerPipeline::~GpuLayerPipeline() {
    // Buffers may still be read by enqueued copies, kernels, or the executor's work that
    // precedes a recorded release: wait for all of it before the pool frees them.
    int prev = -1;
    cudaGetDevice(&prev);
    cudaSetDevice(options_.device);
    if (copyStream_.handle()) cudaStreamSynchronize(static_cast<cudaStream_t>(copyStream_.handle()));
    if (dequantStream_.handle()) cudaStreamSynchronize(static_cast<cudaStream_t>(dequantStream_.handle()));
    for (auto& s : slots_) {
        if (s.released.handle()) cudaEventSynchronize(static_cast<cudaEvent_t>(s.released.handle()));
    }
    slots_.clear();
    pool_.reset();
    if (prev >= 0) cudaSetDevice(prev);
}

Status GpuLayerPipeline::checkSlot(int slot) const {
    if (slot < 0 || slot >= static_cast<int>(slots_.size())) {
        return Status::invalidArgument("gpu pipeline: slot " + std::to_string(slot) +
                                       " out of range (" + std::to_string(slots_.size()) + " slots)");
    }
    return Status::ok();
}

Result<int> GpuLayerPipeline::reserve() {
    std::lock_guard<std::mutex> lock(mu_);
    const int n = static_cast<int>(slots_.size());
    for (int k = 0; k < n; ++k) {
        const int i = (next_ + k) % n;
        if (slots_[static_cast<size_t>(i)].state == SlotState::kFree) {
            slots_[static_cast<size_t>(i)].state = SlotState::kReserved;
            next_ = (i + 1) % n;
            return i;
        }
    }
    return Status::resourceExhausted("gpu pipeline: all " + std::to_string(n) +
                                     " slots are in use (release a layer first)");
}

Result<std::span<const GpuTensor>> GpuLayerPipeline::submit(int slot, std::span<const uint8_t> hostRegion,
                                                           std::span<const QuantizedTensorView> tensors,
                                                           DType dst) {
    return submitImpl(slot, hostRegion, tensors, std::span<const DType>(&dst, 1));
}

Result<std::span<const GpuTensor>> GpuLayerPipeline::submit(int slot, std::span<const uint8_t> hostRegion,
                                                           std::span<const QuantizedTensorView> tensors,
                                                           std::span<const DType> dsts) {
    if (dsts.size() != tensors.size()) {
        return Status::invalidArgument("gpu pipeline: " + std::to_string(tensors.size()) +
                                       " tensors but " + std::to_string(dsts.size()) +
                                       " output dtypes");
    }
    return submitImpl(slot, hostRegion, tensors, dsts);
}

namespace {
// Binds a device for the current thread and restores the previous one.
class DeviceGuard {
public:
    explicit DeviceGuard(int device) {
        if (cudaGetDevice(&prev_) == cudaSuccess && prev_ != device) {
            err_ = cudaSetDevice(device);
            if (err_ != cudaSuccess) {
                cudaGetLastError();  // reported by error(); not a later launch's
                prev_ = -1;
            }
        } else {
            prev_ = -1;
        }
    }
    ~DeviceGuard() {
        if (prev_ >= 0) cudaSetDevice(prev_);
    }
    cudaError_t error() const { return err_; }

private:
    int prev_ = -1;
    cudaError_t err_ = cudaSuccess;
};
}  // namespace

Result<std::span<const GpuTensor>> GpuLayerPipeline::submitImpl(int slot, std::span<const uint8_t> hostRegion,
                                                               std::span<const QuantizedTensorView> tensors,
                                                               std::span<const DType> dsts) {
    SLI_RETURN_IF_ERROR(checkSlot(slot));
    DeviceGuard guard(options_.device);
    SLI_RETURN_IF_ERROR(check(guard.error(), "cudaSetDevice (submit)"));
    Slot& s = slots_[static_cast<size_t>(slot)];
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (s.state != SlotState::kReserved) {
            return Status::invalidArgument("gpu pipeline: submit on slot " + std::to_string(slot) +
                                           " that was not reserved");
        }
    }
    if (hostRegion.size() > options_.stagingBytes) {
        return Status::invalidArgument("gpu pipeline: layer region of " + std::to_string(hostRegion.size()) +
                                       " bytes exceeds the staging size " +
                                       std::to_string(options_.stagingBytes));
    }
    // Rebase every part from the host region into the staging buffer, and lay out the outputs.
    const uint8_t* hostBase = hostRegion.data();
    auto* staging = static_cast<uint8_t*>(s.staging.data());
    auto* output = static_cast<uint8_t*>(s.output.data());
    s.outputs.clear();
    s.deviceViews.clear();
    size_t outOff = 0;
    for (size_t k = 0; k < tensors.size(); ++k) {
        const QuantizedTensorView& v = tensors[k];
        const DType dst = dsts.size() == 1 ? dsts[0] : dsts[k];
        if (v.info == nullptr) return Status::invalidArgument("gpu pipeline: tensor view without metadata");
        if (!dtypeIsCompute(dst) &&
            (v.info->mode != QuantizationMode::kNone || v.info->storedDType != dst)) {
            return Status::invalidArgument("gpu pipeline: tensor " + v.info->name +
                                           " cannot be handed out as " + dtypeName(dst) +
                                           " (only a mode-none tensor stored so)");
        }
        QuantizedTensorView dv = v;
        for (int i = 0; i < kQuantPartCount; ++i) {
            const auto& part = v.parts[static_cast<size_t>(i)];
            if (part.empty()) continue;
            if (part.data() < hostBase || part.data() + part.size() > hostBase + hostRegion.size()) {
                return Status::invalidArgument("gpu pipeline: tensor " + v.info->name + " part " +
                                               quantPartName(static_cast<QuantPart>(i)) +
                                               " lies outside the submitted host region");
            }
            dv.parts[static_cast<size_t>(i)] = {staging + (part.data() - hostBase), part.size()};
        }
        const size_t bytes = cuda::dequantizedBytes(*v.info, dst);
        outOff = alignUp(outOff, kOutputAlign);
        if (outOff + bytes > options_.outputBytes) {
            return Status::invalidArgument("gpu pipeline: tensor " + v.info->name +
                                           " does not fit the slot's output buffer (" +
                                           std::to_string(options_.outputBytes) + " bytes)");
        }
        s.outputs.push_back(GpuTensor{v.info, dst, output + outOff, bytes});
        s.deviceViews.push_back(dv);
        outOff += bytes;
    }

    void* cs = copyStream_.handle();
    void* ds = dequantStream_.handle();
    // Copy: the staging buffer is free once the slot's previous dequant finished.
    if (s.everSubmitted) SLI_RETURN_IF_ERROR(copyStream_.waitEvent(s.ready));
    if (options_.timing) SLI_RETURN_IF_ERROR(s.copyStart.record(cs));
    if (!hostRegion.empty()) {
        SLI_RETURN_IF_ERROR(check(cudaMemcpyAsync(staging, hostBase, hostRegion.size(),
                                                  cudaMemcpyHostToDevice, static_cast<cudaStream_t>(cs)),
                                  "cudaMemcpyAsync H2D"));
    }
    SLI_RETURN_IF_ERROR(s.copied.record(cs));
    // Dequant: after the copy, and after the executor released the slot's previous outputs
    // (an event never recorded counts as complete).
    SLI_RETURN_IF_ERROR(dequantStream_.waitEvent(s.copied));
    SLI_RETURN_IF_ERROR(dequantStream_.waitEvent(s.released));
    if (options_.timing) SLI_RETURN_IF_ERROR(s.dequantStart.record(ds));
    for (size_t i = 0; i < s.deviceViews.size(); ++i) {
        const GpuTensor& out = s.outputs[i];
        if (dtypeIsCompute(out.dtype)) {
            SLI_RETURN_IF_ERROR(cuda::dequantize(s.deviceViews[i], out.dtype, out.data, out.bytes, ds));
            continue;
        }
        // Stored as handed out (integer tensors): a device-to-device copy on the dequant stream.
        const auto payload = s.deviceViews[i].part(QuantPart::kPayload);
        if (payload.size() != out.bytes) {
            return Status::corruption("tensor " + out.info->name + ": payload of " +
                                      std::to_string(payload.size()) + " bytes, expected " +
                                      std::to_string(out.bytes));
        }
        if (out.bytes > 0) {
            SLI_RETURN_IF_ERROR(check(cudaMemcpyAsync(out.data, payload.data(), out.bytes,
                                                      cudaMemcpyDeviceToDevice,
                                                      static_cast<cudaStream_t>(ds)),
                                      "cudaMemcpyAsync D2D"));
        }
    }
    SLI_RETURN_IF_ERROR(s.ready.record(ds));
    s.everSubmitted = true;
    {
        std::lock_guard<std::mutex> lock(mu_);
        s.state = SlotState::kSubmitted;
    }
    return std::span<const GpuTensor>(s.outputs);
}

Result<bool> GpuLayerPipeline::copied(int slot) const {
    SLI_RETURN_IF_ERROR(checkSlot(slot));
    return slots_[static_cast<size_t>(slot)].copied.query();
}

Status GpuLayerPipeline::waitCopied(int slot) const {
    SLI_RETURN_IF_ERROR(checkSlot(slot));
    return slots_[static_cast<size_t>(slot)].copied.synchronize();
}

Result<bool> GpuLayerPipeline::ready(int slot) const {
    SLI_RETURN_IF_ERROR(checkSlot(slot));
    return slots_[static_cast<size_t>(slot)].ready.query();
}

Status GpuLayerPipeline::acquire(int slot, void* stream) {
    SLI_RETURN_IF_ERROR(checkSlot(slot));
    Slot& s = slots_[static_cast<size_t>(slot)];
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (s.state != SlotState::kSubmitted && s.state != SlotState::kAcquired) {
            return Status::invalidArgument("gpu pipeline: acquire of slot " + std::to_string(slot) +
                                           " that holds no submitted layer");
        }
        s.state = SlotState::kAcquired;
    }
    DeviceGuard guard(options_.device);  // a null stream is the legacy stream of this device
    SLI_RETURN_IF_ERROR(check(guard.error(), "cudaSetDevice (acquire)"));
    return check(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream),
                                     static_cast<cudaEvent_t>(s.ready.handle()), 0),
                 "cudaStreamWaitEvent (acquire)");
}

Status GpuLayerPipeline::release(int slot, void* stream) {
    SLI_RETURN_IF_ERROR(checkSlot(slot));
    Slot& s = slots_[static_cast<size_t>(slot)];
    std::lock_guard<std::mutex> lock(mu_);
    if (s.state != SlotState::kSubmitted && s.state != SlotState::kAcquired) {
        return Status::invalidArgument("gpu pipeline: release of slot " + std::to_string(slot) +
                                       " that holds no submitted layer");
    }
    // Recorded under the lock so that a concurrent reserve()+submit() sees the new record.
    DeviceGuard guard(options_.device);  // a null stream is the legacy stream of this device
    SLI_RETURN_IF_ERROR(check(guard.error(), "cudaSetDevice (release)"));
    SLI_RETURN_IF_ERROR(s.released.record(stream));
    s.state = SlotState::kFree;
    return Status::ok();
}

std::span<const GpuTensor> GpuLayerPipeline::tensors(int slot) const {
    if (slot < 0 || slot >= static_cast<int>(slots_.size())) return {};
    return slots_[static_cast<size_t>(slot)].outputs;
}

Result<GpuStageTimes> GpuLayerPipeline::stageTimes(int slot) const {
    SLI_RETURN_IF_ERROR(checkSlot(slot));
    if (!options_.timing) return Status::invalidArgument("gpu pipeline: created without timing");
    const Slot& s = slots_[static_cast<size_t>(slot)];
    if (!s.everSubmitted) return Status::invalidArgument("gpu pipeline: slot never submitted");
    SLI_RETURN_IF_ERROR(s.ready.synchronize());
    GpuStageTimes t;
    SLI_ASSIGN_OR_RETURN(t.copyStartMs, s.copyStart.elapsedMsSince(epoch_));
    SLI_ASSIGN_OR_RETURN(t.copyEndMs, s.copied.elapsedMsSince(epoch_));
    SLI_ASSIGN_OR_RETURN(t.dequantStartMs, s.dequantStart.elapsedMsSince(epoch_));
    SLI_ASSIGN_OR_RETURN(t.dequantEndMs, s.ready.elapsedMsSince(epoch_));
    t.copyMs = t.copyEndMs - t.copyStartMs;
    t.dequantMs = t.dequantEndMs - t.dequantStartMs;
    return t;
}

}  // namespace sli::gpu

// sli::Engine: streams a layer cache layer by layer and hands full-precision tensors to the
// executor just in time.
//
// Model: the cache holds one file per layer (see docs/cache-format.md). The engine follows a
// *plan* — a sequence of layer indices (sequential: 0..N-1 once; cyclic: 0..N-1 repeated
// forever, as token-by-token decoding needs; or an explicit list). While the executor works on
// layer plan[k], the engine has already read plan[k+1..k+D] (D = prefetch depth) from disk
// into pinned slots (io_uring with O_DIRECT, or a pread pool), verified each extent's xxh3, and
// dequantized them on worker threads into pooled host tensors. Each tensor is verified and
// dequantized as soon as the read chunks covering it have landed, while the rest of its layer
// is still being read; the layer is handed out only once all of it has been read and done.
//
//   auto engine = sli::Engine::open(options);           // Result<std::unique_ptr<Engine>>
//   for (int64_t i = 0; i < (*engine)->numLayers(); ++i) {
//       auto lease = (*engine)->acquire(i);             // blocks only if layer i is not ready
//       if (!lease.isOk()) ...                          // names layer, tensor and file
//       const sli::Tensor* w = lease->find("model.layers.3.mlp.up_proj.weight");
//       ...                                             // lease's destructor releases the slot
//   }
//
// acquire(i) consumes the next occurrence of layer i in the plan at or after the current
// position; plan entries skipped over are dropped (their slots recycled). A Lease owns its
// slot until released (destructor or release()); tensors it hands out stay valid until then.
// A layer still held (being read, ready or leased) is not read again for a later position of
// the plan that comes into the prefetch window meanwhile (a cyclic plan over no more layers
// than the depth): on the CPU path that position is served from the same slot once it is
// released (up to 8 such positions per slot; stats().layersReused counts them), unless the
// executor asks for it while still holding the layer (two leases of one layer at once), when
// it is read again into another slot. A layer whose slot was already freed is read again.
// A Lease may outlive its Engine (e.g. a member declared before the engine's): releasing it
// then does nothing, and destroying the engine logs an error naming the layers still leased,
// but their tensors are freed with the engine and must not be used after it.
// Memory: everything is allocated at open() from the host budget — `slots` pinned read
// buffers sized for the largest layer plus as many output tensor sets; steady state allocates
// nothing. On the CPU path, when a few layers need much more read buffer or output than the
// median layer (by more than half, plus 1 MiB: typically the embeddings and lm_head of a
// large-vocabulary model, kept unquantized), those get up to 2 slots of their own size and the
// others depth + 1 slots of theirs (stats().largeSlots), whenever that lets the budget hold
// more slots, or as many in less memory. Then at most that many (1 or 2) of the large layers
// can be leased at once, and a large layer waits for one of those slots (as do the positions
// after it). A budget too small for one layer is InvalidArgument at open(), as is any option
// out of its documented range (the message names the option).
//
// GPU (device "cuda:N"): the pinned read slots are registered with CUDA once at open(); after
// a layer's read, worker threads verify its checksums and decompress its statistics into a
// reserved tail of the same pinned slot, then the io thread submits the slot to the device
// pipeline: one H2D copy on a copy stream, dequant kernels on a dequant stream, an event per
// device slot. The pinned slot is reused as soon as its copy is done (not its dequant).
//
//   auto lease = engine->acquire(i, stream);   // host waits only until layer i is *submitted*;
//                                              // `stream` (a cudaStream_t) waits on the GPU
//   for (const sli::DeviceTensor& t : lease->deviceTensors()) launch(..., t.data, stream);
//   lease->release(stream);                    // event on `stream`: the device buffers are
//                                              // reused only after the work enqueued before it
//
// A GPU lease hands out DeviceTensors (device pointers, valid in `stream` order from acquire to
// release); its host tensors() are empty. acquire(i) without a stream on a GPU engine uses the
// legacy default stream (nullptr). release() without a stream records on the acquire stream
// (so does the destructor). Nothing on this path synchronizes the host with the GPU. Device
// memory (device slots of staging + output buffers) comes from a pool bounded by
// deviceBudgetBytes (0 = 90% of free device memory). A build without CUDA, or a machine
// without that device, makes open() return NotSupported naming the reason.
//
// Errors: a layer whose read fails or whose checksum does not match makes acquire() of that
// layer return the error (Corruption / IOError naming layer, tensor and file); other layers
// still stream; reload() reads a failed layer again once its file has been rewritten. An
// acquire() made while every slot (on the GPU path, every device slot) is
// leased returns ResourceExhausted at once instead of waiting for a release that only the
// caller can make; such a refused acquire has no effect: it consumes no plan positions and
// recycles no slot, so after a release the same acquire (or one of a layer it would have
// skipped) is served as if the refused call had never been made. Destroying the engine with
// reads in flight is clean (it waits for them).
//
// Thread safety: acquire() may be called from one executor thread at a time; Lease objects
// may be released from any thread; stats() and writeTrace() are safe from any thread. On the
// GPU path stats(), timings() and writeTrace() may wait for dequant kernels already enqueued
// for released layers (to read their CUDA event times); they are not for the hot path.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "sli/dtype.h"
#include "sli/status.h"
#include "sli/tensor.h"

namespace sli {

enum class LayerOrder : uint8_t { kSequential, kCyclic, kExplicit };

struct EngineOptions {
    std::string cacheDir;        // the directory given to `sli quantize --cache`
    std::string modelId;         // empty: the only model in the cache
    std::string device = "cpu";  // "cpu" or "cuda:N"
    // Output dtype; kF32/kF16/kBF16. Unset (kBool is never a compute dtype) = the cache's
    // compute dtype.
    DType computeDType = DType::kBool;
    // Layers read ahead of the executor (0 = none); lowered, with one info line, when the host
    // budget holds fewer slots. 4 keeps the disk busy while two layers decode (docs/benchmarks.md).
    int prefetchDepth = 4;
    uint64_t hostBudgetBytes = 1ull << 30;      // pinned read slots + host output tensors
    uint64_t deviceBudgetBytes = 0;             // cuda: device buffers (0 = auto)
    std::string ioBackend = "auto";             // "auto", "io_uring", "pread" (env SLI_IO_BACKEND)
    // Reads are split into chunks of at most this size; the engine lowers it (not below 256 KiB)
    // so that the prefetch window of `prefetchDepth` layers keeps `queueDepth` reads in flight.
    // A multiple of 4096 from 4 KiB to 64 MiB.
    uint32_t chunkBytes = 2u << 20;
    uint32_t queueDepth = 64;                   // reads in flight, 1..4096
    int workerThreads = 0;                      // dequant threads, 0..1024 (0 = usable CPUs)
    bool verifyChecksums = true;
    bool directIo = true;                       // O_DIRECT where the filesystem allows it
    LayerOrder order = LayerOrder::kSequential;
    std::vector<int64_t> plan;                  // kExplicit only (non-empty); empty otherwise
    bool recordTrace = true;                    // keep per-layer stage timestamps
    // Called each time a layer read for a plan position fails (read error or checksum
    // mismatch: the error the acquire() of that position will return; not for reads that
    // acquire() already skipped), as soon as the failure is known, which is usually before the
    // executor gets there: sli::Processor uses it to
    // start repairing the layer in the background. Runs on an engine thread with the
    // engine's lock held: it must return quickly and must not call into the engine (queue
    // the work for another thread). An exception it throws is logged and otherwise ignored.
    std::function<void(int64_t layer, const Status& error)> onLayerError;
};

// A full-precision tensor in device memory (GPU leases). `data` is a device pointer (256-byte
// aligned) valid in the lease's stream order until the lease is released.
struct DeviceTensor {
    std::string name;
    std::vector<int64_t> shape;
    DType dtype = DType::kF16;
    void* data = nullptr;
    size_t bytes = 0;
    int device = 0;
};

// Per-layer stage timestamps (steady clock, nanoseconds since the engine opened).
struct LayerTiming {
    int64_t layer = -1;
    uint64_t sequence = 0;  // position in the plan
    int64_t queuedNs = 0, readStartNs = 0, readDoneNs = 0, verifiedNs = 0, dequantStartNs = 0,
            dequantizedNs = 0, acquireCalledNs = 0, acquiredNs = 0, releasedNs = 0;
    // GPU only: the H2D copy (CUDA events, placed on the engine clock through an epoch event
    // recorded at open(); 0 until known). On the GPU path dequantStartNs / dequantizedNs are
    // the dequant kernels' events and verifiedNs the CPU workers' checksum pass.
    int64_t copyStartNs = 0, copiedNs = 0;
    // CPU: [dequantStartNs, dequantizedNs] runs from the first tensor task's start to the last
    // one's end; tasks start as soon as their tensor's bytes have landed, so this window can
    // overlap the layer's read. dequantBusyNs is the workers' time on the layer's tasks
    // (verify + decode + dequantize, summed over tensors): the stage's actual work.
    int64_t dequantBusyNs = 0;
    uint64_t bytesRead = 0;      // quantized bytes read from disk
    uint64_t bytesProduced = 0;  // full-precision bytes handed out
};

struct EngineStats {
    uint64_t layersRead = 0, layersDequantized = 0, layersAcquired = 0;
    // CPU: plan positions served by a slot that still held the layer (no read, no dequant):
    // a cyclic plan over no more layers than the prefetch depth.
    uint64_t layersReused = 0;
    uint64_t bytesRead = 0, bytesProduced = 0;
    double readSeconds = 0, verifySeconds = 0, dequantSeconds = 0, acquireWaitSeconds = 0;
    double h2dSeconds = 0;   // GPU: sum of the H2D copies (CUDA events)
    uint64_t h2dBytes = 0;   // GPU: bytes copied host to device
    uint64_t pinnedBytes = 0, hostOutputBytes = 0;
    uint64_t deviceBytes = 0;  // GPU: device buffers held (staging + outputs)
    int slots = 0;
    int largeSlots = 0;      // CPU: of `slots`, those sized for the large layers (see Memory)
    int workers = 0;         // CPU worker threads (verify, decode, dequantize)
    std::string ioBackend;   // what was actually used: "io_uring" or "pread"
    bool directIo = false;   // whether O_DIRECT was actually used
    std::string device = "cpu";
    int deviceSlots = 0;     // GPU: layers resident on the device at once
};

class Engine;
namespace testing {
std::string engineStateForTesting(const Engine& engine);  // engine/engine_testing.h
}
namespace detail {
struct LeaseAnchor;  // engine.cpp: what a lease releases through; outlives the engine
}

// Owns one acquired layer's tensors until released. Move-only; a moved-from lease is empty
// (layer() -1, no tensors) and its release() does nothing.
class Lease {
public:
    Lease() = default;
    ~Lease();
    Lease(Lease&& o) noexcept;
    Lease& operator=(Lease&& o) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;

    int64_t layer() const noexcept { return layer_; }
    // CPU leases: host tensors in source order, names as in the source model. Empty on a GPU
    // lease.
    const Layer& tensors() const;
    const Tensor* find(std::string_view name) const;
    // GPU leases: device tensors in source order. Empty on a CPU lease.
    bool onDevice() const noexcept { return devicePtr_ != nullptr; }
    std::span<const DeviceTensor> deviceTensors() const noexcept;
    const DeviceTensor* findDevice(std::string_view name) const;
    // Idempotent. A GPU lease records its release event on the stream given to acquire().
    void release();
    // GPU: records the release event on `stream` (a cudaStream_t; the executor's last stream
    // to use the tensors). Does not block. On a CPU lease the same as release().
    void release(void* stream);

private:
    friend class Engine;
    void clearMovedFrom() noexcept;
    std::shared_ptr<detail::LeaseAnchor> anchor_;  // null once released
    int slot_ = -1;
    int64_t layer_ = -1;
    const Layer* layerPtr_ = nullptr;
    const std::vector<DeviceTensor>* devicePtr_ = nullptr;
    void* stream_ = nullptr;
};

class Engine {
public:
    static Result<std::unique_ptr<Engine>> open(const EngineOptions& options);
    virtual ~Engine();

    int64_t numLayers() const noexcept;
    const std::vector<std::string>& layerNames() const noexcept;
    DType computeDType() const noexcept;
    // Blocks until layer i is ready; returns its lease or the error that layer met. On a GPU
    // engine the same as acquire(layer, nullptr).
    Result<Lease> acquire(int64_t layer);
    // GPU: blocks the host only until layer i has been submitted to the device (read and
    // verified); `stream` (a cudaStream_t, nullptr = legacy default stream) is made to wait for
    // the layer's dequant event. On a CPU engine the stream is ignored.
    Result<Lease> acquire(int64_t layer, void* stream);
    // After acquire(layer) failed on the layer's data (its file was damaged, and has been
    // written again since: `sli verify --repair`, sli::Processor), and before the next
    // acquire(): reopens the layer's file, checks that it still has the layout the engine was
    // opened with, and puts the failed plan position back, so that the next acquire(layer)
    // reads it again from the new file (the prefetched layers after it are kept; later
    // positions of the same layer already read from the old file, as a plan over no more
    // layers than the depth does, are read again from the new one; a lease of the layer the
    // executor still holds keeps its tensors until released). CPU path only (NotSupported on
    // a GPU engine). InvalidArgument when the last acquire that took effect (served a layer
    // or failed on its data; one refused or naming a layer with no position left has no
    // effect) was not a failed acquire(layer), or when the file's layout changed (open the
    // engine again then). Errors opening or parsing the file are returned as such.
    // A reload that returns an error changes nothing (it may be tried again, e.g. once the
    // file is rewritten). Called from the executor thread, like acquire().
    Status reload(int64_t layer);
    // -1 for "cpu", N for "cuda:N".
    int device() const noexcept;
    EngineStats stats() const;
    // Stage timestamps of the layers released so far, oldest first: the most recent
    // kMaxTimings of them (a cyclic run goes on for ever; the window is reserved at open()).
    // Empty when recordTrace is off.
    static constexpr size_t kMaxTimings = 1u << 14;
    std::vector<LayerTiming> timings() const;
    // Chrome / Perfetto trace JSON (chrome://tracing, ui.perfetto.dev) of every layer's stages.
    Status writeTrace(const std::string& path) const;

    struct Impl;

private:
    friend class Lease;
    friend std::string testing::engineStateForTesting(const Engine& engine);
    explicit Engine(std::unique_ptr<Impl> impl);
    void releaseSlot(int slot, bool gpu, void* stream);
    std::unique_ptr<Impl> impl_;
};

}  // namespace sli

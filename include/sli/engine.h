// sli::Engine: streams a layer cache layer by layer and hands full-precision tensors to the
// executor just in time.
//
// Model: the cache holds one file per layer (see docs/cache-format.md). The engine follows a
// *plan* — a sequence of layer indices (sequential: 0..N-1 once; cyclic: 0..N-1 repeated
// forever, as token-by-token decoding needs; or an explicit list). While the executor works on
// layer plan[k], the engine has already read plan[k+1..k+D] (D = prefetch depth) from disk
// into pinned slots (io_uring with O_DIRECT, or a pread pool), verified each extent's xxh3, and
// dequantized them on worker threads into pooled host tensors.
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
// Memory: everything is allocated at open() from the host budget — `slots` pinned read
// buffers sized for the largest layer plus as many output tensor sets; steady state allocates
// nothing. A budget too small for one layer is InvalidArgument at open().
//
// Errors: a layer whose read fails or whose checksum does not match makes acquire() of that
// layer return the error (Corruption / IOError naming layer, tensor and file); other layers
// still stream. Destroying the engine with reads in flight is clean (it waits for them).
//
// Thread safety: acquire() may be called from one executor thread at a time; Lease objects
// may be released from any thread; stats() and writeTrace() are safe from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
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
    int prefetchDepth = 2;                      // layers read ahead of the executor (0 = none)
    uint64_t hostBudgetBytes = 1ull << 30;      // pinned read slots + host output tensors
    uint64_t deviceBudgetBytes = 0;             // cuda: device buffers (0 = auto)
    std::string ioBackend = "auto";             // "auto", "io_uring", "pread" (env SLI_IO_BACKEND)
    uint32_t chunkBytes = 2u << 20;             // read split into chunks of this size
    uint32_t queueDepth = 64;                   // reads in flight
    int workerThreads = 0;                      // dequant threads (0 = hardware concurrency)
    bool verifyChecksums = true;
    bool directIo = true;                       // O_DIRECT where the filesystem allows it
    LayerOrder order = LayerOrder::kSequential;
    std::vector<int64_t> plan;                  // for kExplicit
    bool recordTrace = true;                    // keep per-layer stage timestamps
};

// Per-layer stage timestamps (steady clock, nanoseconds since the engine opened).
struct LayerTiming {
    int64_t layer = -1;
    uint64_t sequence = 0;  // position in the plan
    int64_t queuedNs = 0, readStartNs = 0, readDoneNs = 0, verifiedNs = 0, dequantStartNs = 0,
            dequantizedNs = 0, acquireCalledNs = 0, acquiredNs = 0, releasedNs = 0;
    uint64_t bytesRead = 0;      // quantized bytes read from disk
    uint64_t bytesProduced = 0;  // full-precision bytes handed out
};

struct EngineStats {
    uint64_t layersRead = 0, layersDequantized = 0, layersAcquired = 0;
    uint64_t bytesRead = 0, bytesProduced = 0;
    double readSeconds = 0, verifySeconds = 0, dequantSeconds = 0, acquireWaitSeconds = 0;
    uint64_t pinnedBytes = 0, hostOutputBytes = 0;
    int slots = 0;
    std::string ioBackend;   // what was actually used: "io_uring" or "pread"
    bool directIo = false;   // whether O_DIRECT was actually used
};

class Engine;

// Owns one acquired layer's tensors until released. Move-only.
class Lease {
public:
    Lease() = default;
    ~Lease();
    Lease(Lease&& o) noexcept;
    Lease& operator=(Lease&& o) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;

    int64_t layer() const noexcept { return layer_; }
    const Layer& tensors() const;          // in source order, names as in the source model
    const Tensor* find(std::string_view name) const;
    void release();                         // idempotent

private:
    friend class Engine;
    Engine* engine_ = nullptr;
    int slot_ = -1;
    int64_t layer_ = -1;
    const Layer* layerPtr_ = nullptr;
};

class Engine {
public:
    static Result<std::unique_ptr<Engine>> open(const EngineOptions& options);
    virtual ~Engine();

    int64_t numLayers() const noexcept;
    const std::vector<std::string>& layerNames() const noexcept;
    DType computeDType() const noexcept;
    // Blocks until layer i is ready; returns its lease or the error that layer met.
    Result<Lease> acquire(int64_t layer);
    EngineStats stats() const;
    std::vector<LayerTiming> timings() const;
    // Chrome / Perfetto trace JSON (chrome://tracing, ui.perfetto.dev) of every layer's stages.
    Status writeTrace(const std::string& path) const;

    struct Impl;

private:
    friend class Lease;
    explicit Engine(std::unique_ptr<Impl> impl);
    void releaseSlot(int slot);
    std::unique_ptr<Impl> impl_;
};

}  // namespace sli

// slibench's measuring side: one streaming pass of a layer cache through sli::Engine with a
// real executor, the naive synchronous loader it is compared with, and the machine's limits
// (memcpy bandwidth, page-cache dropping, resident-memory probes).
//
// Stage times of engine runs are busy times: the UNION of the per-layer intervals the engine
// records (Engine::timings()), so work spread over several workers is not counted twice.
// Exceptions: the CPU dequant stage is the workers' busy seconds on tensor tasks divided by the
// number of workers (tasks start as their tensor's bytes land, so a layer's dequant window
// includes waits for the rest of its read and would overstate the stage), and verify is the
// workers' CPU seconds of checksumming (interleaved with dequant in each task).
//
// Ownership: plain values. Blocking: everything blocks the calling thread (the executor).
// Thread safety: none needed (slibench's main thread). Errors: Status from the engine / io,
// naming the layer and file.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sli/status.h"
#include "sli/tensor.h"

namespace sli::bench {

// The executor: for each 2-D weight W [out, in] of a layer, Y = X W^T for a batch of `batch`
// tokens (f32 accumulate, rows widened to f32 once per pass), `passes` times; 1-D tensors are
// summed. A checksum of the outputs keeps the work observable. batch 0: a no-op consumer.
class Executor {
public:
    Executor(int batch, int passes) : batch_(batch), passes_(passes) {}
    Status run(const Layer& layer);
    double checksum() const { return checksum_; }
    uint64_t macs() const { return macs_; }

private:
    int batch_, passes_;
    std::vector<float> x_, y_, row_;
    double checksum_ = 0;
    uint64_t macs_ = 0;
};

struct StageTimes {
    double read = 0, verify = 0, dequant = 0, h2d = 0, execute = 0;
    double slowest() const;
};

struct StreamOptions {
    std::string cacheDir;
    std::string device = "cpu";
    std::string backend = "io_uring";
    bool cold = true;  // O_DIRECT (+ page cache dropped when permitted); else buffered
    int depth = 4;
    uint64_t budgetBytes = 2ull << 30;
    uint32_t chunkBytes = 2u << 20;
    uint32_t queueDepth = 64;
    int threads = 0;
    bool verify = true;
    int batch = 1, passes = 1;
    std::string tracePath;  // written when not empty
    std::function<void(int64_t done, int64_t total)> progress;
};

struct StreamResult {
    double wallSeconds = 0;  // first read queued .. last layer released
    double openSeconds = 0;
    uint64_t bytesRead = 0, bytesProduced = 0;
    int64_t layers = 0;
    StageTimes stages;
    uint64_t pinnedBytes = 0, hostOutputBytes = 0;
    int slots = 0;
    int largeSlots = 0;  // of `slots`, those sized for the large layers (EngineStats)
    std::string backendUsed;
    bool directIo = false;
    double checksum = 0;
    double readGbps() const { return wallSeconds > 0 ? bytesRead / wallSeconds / 1e9 : 0; }
    double outputGbps() const { return wallSeconds > 0 ? bytesProduced / wallSeconds / 1e9 : 0; }
    double overlap() const {
        const double s = stages.slowest();
        return s > 0 ? wallSeconds / s : 0;
    }
};

// One sequential pass of the cache through the engine, each layer handed to the executor.
Result<StreamResult> streamEngine(const StreamOptions& options);

// The naive loader: per layer, pread the file (O_DIRECT when cold), verify and dequantize it
// (kernel threads = options.threads), execute, then the next layer. Nothing overlaps.
Result<StreamResult> streamNaive(const StreamOptions& options,
                                 const std::vector<std::string>& files);

// Best-of-`tries` memcpy bandwidth over `bytes`-sized buffers, GB/s of bytes copied.
double measureMemcpyGbps(uint64_t bytes = 256ull << 20, int tries = 5);

// sync + echo 1 > /proc/sys/vm/drop_caches; false when not permitted.
bool dropPageCache();
// Resets this process's VmHWM to its current RSS (/proc/self/clear_refs "5"); false when not
// permitted.
bool resetPeakRss();
uint64_t peakRssBytes();     // VmHWM (getrusage's ru_maxrss as a fallback)
uint64_t currentRssBytes();  // VmRSS

double median(std::vector<double> v);

}  // namespace sli::bench

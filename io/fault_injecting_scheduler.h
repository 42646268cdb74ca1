// FaultInjectingScheduler: a ReadScheduler whose raw backend is wrapped by a decorator that
// injects faults into the raw results, so the real chunking / retry layer above it is exercised
// exactly as in production. For tests (io and engine); never used by the engine itself.
//
// Faults, drawn per raw read from a seeded generator (deterministic for a given plan and order):
//   - EIO (or any errno): the read fails; the request completes with an error naming the file.
//     `failRanges` fail every read of an fd that overlaps a byte range, deterministically.
//   - short reads: the read is issued for fewer bytes (a multiple of shortReadGranularity), so
//     the real kernel result is short and the layer above must resubmit the remainder.
//   - -EAGAIN / -EINTR storms: the read is not issued and answers -EAGAIN (or -EINTR) `burst`
//     times in a row before going through.
//   - delays: a real result is held back for up to maxDelay before it is reported.
// Requests, completions and the contract are those of io/read_scheduler.h.
//
// Thread safety: as ReadScheduler (one owner thread); setPlan() and faultStats() may be called
// from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "io/read_scheduler.h"

namespace sli::io {

struct FaultRange {
    int fd = -1;          // -1: any fd
    uint64_t begin = 0;   // byte range [begin, end) of the file
    uint64_t end = UINT64_MAX;
    int err = 5;          // EIO
};

struct FaultPlan {
    double errorProbability = 0;       // fail with `error`
    int error = 5;                     // EIO
    double shortReadProbability = 0;
    uint32_t shortReadGranularity = 4096;  // injected short lengths are multiples of this
    double againProbability = 0;       // start an -EAGAIN storm
    uint32_t againBurst = 1;           // -EAGAIN answers per storm
    double intrProbability = 0;        // -EINTR once
    double delayProbability = 0;
    std::chrono::microseconds maxDelay{0};
    std::vector<FaultRange> failRanges;
    uint64_t seed = 1;
};

struct FaultStats {
    uint64_t rawReads = 0;  // raw reads seen by the decorator
    uint64_t errors = 0;
    uint64_t shortReads = 0;
    uint64_t again = 0;     // -EAGAIN answers
    uint64_t intr = 0;
    uint64_t delayed = 0;
};

class FaultInjectingBackend;

class FaultInjectingScheduler final : public ReadScheduler {
public:
    // Wraps the backend chosen by options.backend (as makeReadScheduler would).
    static Result<std::unique_ptr<FaultInjectingScheduler>> create(const ReadSchedulerOptions& options,
                                                                   FaultPlan plan);
    // Wraps a given raw backend.
    static std::unique_ptr<FaultInjectingScheduler> wrap(std::unique_ptr<ReadBackend> backend,
                                                         const ReadSchedulerOptions& options,
                                                         FaultPlan plan);
    ~FaultInjectingScheduler() override;

    void setPlan(FaultPlan plan);
    FaultStats faultStats() const;

    const char* backendName() const noexcept override;
    const ReadSchedulerOptions& options() const noexcept override;
    Status registerFile(int fd, std::string name) override;
    void unregisterFile(int fd) override;
    Status registerBuffers(std::span<const MemoryRegion> regions) override;
    using ReadScheduler::submit;
    Status submit(std::span<const ReadRequest> requests) override;
    size_t reap(std::span<ReadCompletion> out, std::chrono::nanoseconds timeout) override;
    size_t pending() const noexcept override;
    void cancelAll() override;

private:
    FaultInjectingScheduler() = default;
    FaultInjectingBackend* faults_ = nullptr;  // owned by inner_
    std::unique_ptr<ReadScheduler> inner_;
};

}  // namespace sli::io

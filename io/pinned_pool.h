// PinnedPool: a fixed set of equal, page-aligned host buffers ("slots") carved once from
// anonymous memory within a byte budget, for reads (io_uring fixed buffers) and later
// host-to-device copies (cudaHostRegister by the CUDA path).
//
// Memory: slabs of anonymous private memory (io/aligned_io.h mapAnonymous), each at most 1 GiB
// (the io_uring fixed-buffer limit) and holding whole slots, faulted in at create(); by default
// each slab starts on a 2 MiB boundary with transparent huge pages requested, so a read lands
// in a few large contiguous segments rather than one per 4 KiB page (measured 1.5-3x faster
// cold reads on a virtio disk). Slot size is rounded up to 4096 and slot count = budget / slot
// size. The pool is mlock'ed when RLIMIT_MEMLOCK allows (or the
// process has CAP_IPC_LOCK); otherwise it stays unlocked and ONE warning per process says so.
// Nothing is allocated after create(): acquire/release only move indices.
//
// Registration hook: regions() lists the slabs (pointer, size) for
// ReadScheduler::registerBuffers() and for cudaHostRegister; the pool never registers itself.
//
// Ownership: the pool owns its memory; a Slot is a move-only lease that returns itself on
// destruction and must not outlive the pool. Thread safety: acquire, tryAcquire, release,
// shutdown and stats may be called from any thread concurrently. acquire() blocks until a slot
// is free or shutdown() is called (then it returns a ResourceExhausted "pool shut down" error).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "io/read_scheduler.h"
#include "sli/status.h"

namespace sli::io {

struct PinnedPoolOptions {
    uint64_t budgetBytes = 256ull << 20;
    uint64_t slotBytes = 16ull << 20;      // rounded up to 4096; at most maxSlabBytes
    bool lockMemory = true;                // try mlock
    bool populate = true;                  // fault every page in at create()
    bool hugePages = true;                 // 2 MiB-aligned slabs with MADV_HUGEPAGE
    uint64_t maxSlabBytes = 1ull << 30;    // io_uring limit per fixed buffer
};

struct PinnedPoolStats {
    uint64_t totalBytes = 0;   // slots * slot size
    uint64_t slotBytes = 0;
    uint32_t slotCount = 0;
    uint32_t slabCount = 0;
    uint32_t freeSlots = 0;
    uint32_t peakInUse = 0;
    bool locked = false;       // every slab is mlock'ed
    uint64_t lockedBytes = 0;
};

class PinnedPool {
public:
    class Slot {
    public:
        Slot() = default;
        ~Slot() { reset(); }
        Slot(Slot&& other) noexcept
            : pool_(other.pool_), index_(other.index_), data_(other.data_) { other.pool_ = nullptr; }
        Slot& operator=(Slot&& other) noexcept;
        Slot(const Slot&) = delete;
        Slot& operator=(const Slot&) = delete;

        explicit operator bool() const noexcept { return pool_ != nullptr; }
        std::byte* data() const noexcept { return data_; }
        uint64_t size() const noexcept;
        uint32_t index() const noexcept { return index_; }
        void reset() noexcept;  // returns the slot to the pool (idempotent)

    private:
        friend class PinnedPool;
        Slot(PinnedPool* pool, uint32_t index, std::byte* data)
            : pool_(pool), index_(index), data_(data) {}
        PinnedPool* pool_ = nullptr;
        uint32_t index_ = 0;
        std::byte* data_ = nullptr;
    };

    // InvalidArgument when the budget cannot hold one slot or the slot exceeds maxSlabBytes;
    // ResourceExhausted when mmap fails.
    static Result<std::unique_ptr<PinnedPool>> create(const PinnedPoolOptions& options);
    ~PinnedPool();
    PinnedPool(const PinnedPool&) = delete;
    PinnedPool& operator=(const PinnedPool&) = delete;

    // Blocks until a slot is free; error after shutdown().
    Result<Slot> acquire();
    // Like acquire() but gives up after `timeout` (ResourceExhausted, retryable).
    Result<Slot> acquireFor(std::chrono::nanoseconds timeout);
    std::optional<Slot> tryAcquire();
    // Wakes every blocked acquire(); later acquires fail. Slots held stay valid.
    void shutdown();
    bool isShutdown() const;

    uint64_t slotBytes() const noexcept { return slotBytes_; }
    uint32_t slotCount() const noexcept { return slotCount_; }
    std::byte* slotData(uint32_t index) const noexcept;
    // The slabs, for io_uring registerBuffers and cudaHostRegister.
    std::span<const MemoryRegion> regions() const noexcept { return regions_; }
    // Calls fn on each slab; stops at and returns the first error.
    Status forEachRegion(const std::function<Status(const MemoryRegion&)>& fn) const;
    PinnedPoolStats stats() const;

private:
    PinnedPool() = default;
    void release(uint32_t index) noexcept;
    Result<Slot> acquireUntil(std::optional<std::chrono::steady_clock::time_point> deadline);

    uint64_t slotBytes_ = 0;
    uint32_t slotCount_ = 0;
    uint32_t slotsPerSlab_ = 0;
    std::vector<MemoryRegion> regions_;
    bool locked_ = false;
    uint64_t lockedBytes_ = 0;

    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<uint32_t> free_;  // stack of free slot indices
    std::vector<bool> inUse_;
    uint32_t peakInUse_ = 0;
    bool shutdown_ = false;
};

}  // namespace sli::io

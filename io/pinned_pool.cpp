#include "io/pinned_pool.h"

#include <sys/mman.h>
#include <sys/resource.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "io/aligned_io.h"
#include "sli/log.h"

namespace sli::io {

namespace {

constexpr uint64_t kPage = 4096;

// RLIMIT_MEMLOCK soft limit in bytes (RLIM_INFINITY as UINT64_MAX).
uint64_t memlockLimit() {
    rlimit rl{};
    if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0) return 0;
    return rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : static_cast<uint64_t>(rl.rlim_cur);
}

void warnUnlockedOnce(const char* why, uint64_t bytes) {
    static std::atomic<bool> said{false};
    if (!said.exchange(true)) {
        SLI_WARN("io",
                 "pinned pool of %llu bytes not locked in memory (%s; RLIMIT_MEMLOCK %llu): "
                 "it may be paged out",
                 static_cast<unsigned long long>(bytes), why,
                 static_cast<unsigned long long>(memlockLimit()));
    }
}

}  // namespace

PinnedPool::Slot& PinnedPool::Slot::operator=(Slot&& other) noexcept {
    if (this != &other) {
        reset();
        pool_ = std::exchange(other.pool_, nullptr);
        index_ = other.index_;
        data_ = other.data_;
    }
    return *this;
}

uint64_t PinnedPool::Slot::size() const noexcept { return pool_ ? pool_->slotBytes() : 0; }

void PinnedPool::Slot::reset() noexcept {
    if (pool_ != nullptr) {
        pool_->release(index_);
        pool_ = nullptr;
        data_ = nullptr;
    }
}

Result<std::unique_ptr<PinnedPool>> PinnedPool::create(const PinnedPoolOptions& options) {
    const uint64_t slot = alignUp(options.slotBytes, kPage);
    const uint64_t maxSlab = alignDown(options.maxSlabBytes, kPage);
    if (slot == 0) return Status::invalidArgument("pinned pool: slot size 0");
    if (slot > maxSlab) {
        return Status::invalidArgument("pinned pool: slot of " + std::to_string(slot) +
                                       " bytes exceeds the slab limit of " +
                                       std::to_string(maxSlab));
    }
    const uint64_t count = options.budgetBytes / slot;
    if (count == 0) {
        return Status::invalidArgument("pinned pool: budget of " +
                                       std::to_string(options.budgetBytes) +
                                       " bytes cannot hold one slot of " + std::to_string(slot));
    }
    if (count > UINT32_MAX) return Status::invalidArgument("pinned pool: too many slots");

    std::unique_ptr<PinnedPool> pool(new PinnedPool());
    pool->slotBytes_ = slot;
    pool->slotCount_ = static_cast<uint32_t>(count);
    pool->slotsPerSlab_ = static_cast<uint32_t>(std::min<uint64_t>(maxSlab / slot, count));
    uint64_t left = count;
    while (left > 0) {
        const uint64_t n = std::min<uint64_t>(left, pool->slotsPerSlab_);
        const size_t bytes = n * slot;
        void* p = mapAnonymous(bytes, options.hugePages);
        if (p == nullptr) {
            return Status::resourceExhausted("pinned pool: mmap of " + std::to_string(bytes) +
                                             " bytes: " + std::strerror(errno));
        }
        pool->regions_.push_back(MemoryRegion{p, bytes});  // unmapped by ~PinnedPool on error
        if (options.populate) {
            Status st = populateForWrite(p, bytes);
            if (!st.isOk()) return st.withContext("pinned pool");
        }
        left -= n;
    }
    const uint64_t total = count * slot;
    if (options.lockMemory) {
        // Root (CAP_IPC_LOCK) ignores the limit, so try and see; undo a partial lock.
        bool ok = true;
        int err = 0;
        for (const MemoryRegion& r : pool->regions_) {
            if (::mlock(r.data, r.size) != 0) {
                ok = false;
                err = errno;
                break;
            }
            pool->lockedBytes_ += r.size;
        }
        if (ok) {
            pool->locked_ = true;
        } else {
            for (const MemoryRegion& r : pool->regions_) ::munlock(r.data, r.size);
            pool->lockedBytes_ = 0;
            warnUnlockedOnce(std::strerror(err), total);
        }
    }
    pool->free_.reserve(count);
    for (uint64_t i = count; i-- > 0;) pool->free_.push_back(static_cast<uint32_t>(i));
    pool->inUse_.assign(count, false);
    SLI_DEBUG("io", "pinned pool: %u slots of %llu bytes in %zu slab(s), %s", pool->slotCount_,
              static_cast<unsigned long long>(slot), pool->regions_.size(),
              pool->locked_ ? "locked" : "not locked");
    return pool;
}

PinnedPool::~PinnedPool() {
    for (const MemoryRegion& r : regions_) unmapAnonymous(r.data, r.size);
}

std::byte* PinnedPool::slotData(uint32_t index) const noexcept {
    if (index >= slotCount_) return nullptr;
    const uint32_t slab = index / slotsPerSlab_;
    const uint32_t within = index % slotsPerSlab_;
    return static_cast<std::byte*>(regions_[slab].data) + static_cast<uint64_t>(within) * slotBytes_;
}

Result<PinnedPool::Slot> PinnedPool::acquireUntil(
    std::optional<std::chrono::steady_clock::time_point> deadline) {
    std::unique_lock lock(mu_);
    auto ready = [this] { return shutdown_ || !free_.empty(); };
    if (deadline) {
        if (!cv_.wait_until(lock, *deadline, ready)) {
            return Status::ioError("pinned pool: no free slot before the deadline", EAGAIN);
        }
    } else {
        cv_.wait(lock, ready);
    }
    if (shutdown_) return Status::resourceExhausted("pinned pool shut down");
    const uint32_t index = free_.back();
    free_.pop_back();
    inUse_[index] = true;
    peakInUse_ = std::max(peakInUse_, slotCount_ - static_cast<uint32_t>(free_.size()));
    return Slot(this, index, slotData(index));
}

Result<PinnedPool::Slot> PinnedPool::acquire() { return acquireUntil(std::nullopt); }

Result<PinnedPool::Slot> PinnedPool::acquireFor(std::chrono::nanoseconds timeout) {
    return acquireUntil(std::chrono::steady_clock::now() + timeout);
}

std::optional<PinnedPool::Slot> PinnedPool::tryAcquire() {
    std::lock_guard lock(mu_);
    if (shutdown_ || free_.empty()) return std::nullopt;
    const uint32_t index = free_.back();
    free_.pop_back();
    inUse_[index] = true;
    peakInUse_ = std::max(peakInUse_, slotCount_ - static_cast<uint32_t>(free_.size()));
    return Slot(this, index, slotData(index));
}

void PinnedPool::release(uint32_t index) noexcept {
    {
        std::lock_guard lock(mu_);
        assert(index < slotCount_ && inUse_[index]);
        inUse_[index] = false;
        free_.push_back(index);
    }
    cv_.notify_one();
}

void PinnedPool::shutdown() {
    {
        std::lock_guard lock(mu_);
        shutdown_ = true;
    }
    cv_.notify_all();
}

bool PinnedPool::isShutdown() const {
    std::lock_guard lock(mu_);
    return shutdown_;
}

Status PinnedPool::forEachRegion(const std::function<Status(const MemoryRegion&)>& fn) const {
    for (const MemoryRegion& r : regions_) SLI_RETURN_IF_ERROR(fn(r));
    return Status::ok();
}

PinnedPoolStats PinnedPool::stats() const {
    std::lock_guard lock(mu_);
    PinnedPoolStats s;
    s.slotBytes = slotBytes_;
    s.slotCount = slotCount_;
    s.totalBytes = slotBytes_ * slotCount_;
    s.slabCount = static_cast<uint32_t>(regions_.size());
    s.freeSlots = static_cast<uint32_t>(free_.size());
    s.peakInUse = peakInUse_;
    s.locked = locked_;
    s.lockedBytes = lockedBytes_;
    return s;
}

}  // namespace sli::io

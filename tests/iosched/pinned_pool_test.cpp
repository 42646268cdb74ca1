// Pinned buffer pool: budget and slot accounting, slabs, blocking acquire and shutdown.
#include <doctest/doctest.h>

#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <string>
#include <chrono>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include "io/aligned_io.h"
#include "io/pinned_pool.h"

using namespace sli;
using namespace sli::io;
using namespace std::chrono_literals;

namespace {

PinnedPoolOptions poolOpts(uint64_t budget, uint64_t slot) {
    PinnedPoolOptions o;
    o.budgetBytes = budget;
    o.slotBytes = slot;
    return o;
}

}  // namespace

TEST_CASE("carves whole slots out of the budget") {
    auto pool = PinnedPool::create(poolOpts(10 << 20, 3 << 20));
    REQUIRE(pool.isOk());
    const PinnedPoolStats s = (*pool)->stats();
    CHECK(s.slotCount == 3);
    CHECK(s.slotBytes == (3 << 20));
    CHECK(s.totalBytes == (9 << 20));
    CHECK(s.freeSlots == 3);
    CHECK(s.slabCount == 1);
    CHECK((*pool)->slotCount() == 3);
}

TEST_CASE("rounds the slot size up to whole pages") {
    auto pool = PinnedPool::create(poolOpts(100000, 5000));
    REQUIRE(pool.isOk());
    CHECK((*pool)->slotBytes() == 8192);
    CHECK((*pool)->slotCount() == 100000 / 8192);
}

TEST_CASE("rejects a budget too small for one slot and a slot larger than a slab") {
    auto small = PinnedPool::create(poolOpts(1 << 20, 2 << 20));
    REQUIRE_FALSE(small.isOk());
    CHECK(small.status().isInvalidArgument());
    CHECK(small.status().message().find("cannot hold one slot") != std::string::npos);

    PinnedPoolOptions o = poolOpts(8 << 20, 4 << 20);
    o.maxSlabBytes = 2 << 20;
    auto big = PinnedPool::create(o);
    REQUIRE_FALSE(big.isOk());
    CHECK(big.status().isInvalidArgument());

    CHECK(PinnedPool::create(poolOpts(1 << 20, 0)).status().isInvalidArgument());
}

TEST_CASE("splits the pool into page-aligned slabs no larger than the slab limit") {
    PinnedPoolOptions o = poolOpts(5 << 20, 512 << 10);  // 10 slots
    o.maxSlabBytes = (1 << 20) + 100;                    // 2 slots per slab
    auto pool = PinnedPool::create(o);
    REQUIRE(pool.isOk());
    auto regions = (*pool)->regions();
    CHECK(regions.size() == 5);
    uint64_t total = 0;
    for (const MemoryRegion& r : regions) {
        CHECK(reinterpret_cast<uintptr_t>(r.data) % 4096 == 0);
        CHECK(r.size <= o.maxSlabBytes);
        CHECK(r.size % (512 << 10) == 0);
        total += r.size;
    }
    CHECK(total == (5 << 20));
    // Every slot lies inside one region, slots do not overlap, memory is writable.
    std::set<std::byte*> starts;
    for (uint32_t i = 0; i < (*pool)->slotCount(); ++i) {
        std::byte* p = (*pool)->slotData(i);
        REQUIRE(p != nullptr);
        bool inside = false;
        for (const MemoryRegion& r : regions) {
            auto* b = static_cast<std::byte*>(r.data);
            inside |= p >= b && p + (*pool)->slotBytes() <= b + r.size;
        }
        CHECK(inside);
        starts.insert(p);
        std::memset(p, static_cast<int>(i), (*pool)->slotBytes());
    }
    CHECK(starts.size() == 10);
    CHECK((*pool)->slotData(10) == nullptr);
    int visited = 0;
    CHECK((*pool)->forEachRegion([&](const MemoryRegion&) {
        ++visited;
        return Status::ok();
    }).isOk());
    CHECK(visited == 5);
    CHECK((*pool)->forEachRegion([](const MemoryRegion&) { return Status::internal("stop"); })
              .code() == Status::Code::kInternal);
}

TEST_CASE("accounts acquired and released slots") {
    auto pool = PinnedPool::create(poolOpts(4 << 20, 1 << 20));
    REQUIRE(pool.isOk());
    PinnedPool& p = **pool;
    std::vector<PinnedPool::Slot> held;
    std::set<uint32_t> indices;
    for (int i = 0; i < 4; ++i) {
        auto s = p.tryAcquire();
        REQUIRE(s.has_value());
        CHECK(s->size() == (1 << 20));
        CHECK(s->data() == p.slotData(s->index()));
        indices.insert(s->index());
        held.push_back(std::move(*s));
    }
    CHECK(indices.size() == 4);
    CHECK_FALSE(p.tryAcquire().has_value());
    CHECK(p.stats().freeSlots == 0);
    CHECK(p.stats().peakInUse == 4);
    held[1].reset();
    held[1].reset();  // idempotent
    CHECK(p.stats().freeSlots == 1);
    PinnedPool::Slot moved = std::move(held[2]);
    CHECK_FALSE(held[2]);
    CHECK(moved);
    held.clear();
    CHECK(p.stats().freeSlots == 3);
    moved = PinnedPool::Slot();
    CHECK(p.stats().freeSlots == 4);
    CHECK(p.stats().peakInUse == 4);
}

TEST_CASE("a blocked acquire wakes when another thread releases a slot") {
    auto pool = PinnedPool::create(poolOpts(1 << 20, 1 << 20));
    REQUIRE(pool.isOk());
    PinnedPool& p = **pool;
    auto first = p.acquire();
    REQUIRE(first.isOk());
    std::atomic<bool> got{false};
    std::thread waiter([&] {
        auto s = p.acquire();
        CHECK(s.isOk());
        got = true;
    });
    std::this_thread::sleep_for(20ms);
    CHECK_FALSE(got.load());
    first->reset();
    waiter.join();
    CHECK(got.load());
    CHECK(p.stats().freeSlots == 1);
}

TEST_CASE("shutdown releases every blocked acquire with an error") {
    auto pool = PinnedPool::create(poolOpts(2 << 20, 1 << 20));
    REQUIRE(pool.isOk());
    PinnedPool& p = **pool;
    auto a = p.acquire();
    auto b = p.acquire();
    REQUIRE(a.isOk());
    REQUIRE(b.isOk());
    std::atomic<int> failed{0};
    std::vector<std::thread> waiters;
    for (int i = 0; i < 3; ++i) {
        waiters.emplace_back([&] {
            auto s = p.acquire();
            if (!s.isOk() && s.status().isResourceExhausted()) ++failed;
        });
    }
    std::this_thread::sleep_for(20ms);
    p.shutdown();
    for (auto& t : waiters) t.join();
    CHECK(failed.load() == 3);
    CHECK(p.isShutdown());
    CHECK_FALSE(p.tryAcquire().has_value());
    // Slots held across shutdown stay valid and return cleanly.
    std::memset(a->data(), 1, a->size());
    a->reset();
    b->reset();
    CHECK(p.stats().freeSlots == 2);
}

TEST_CASE("acquireFor gives up after its timeout") {
    auto pool = PinnedPool::create(poolOpts(1 << 20, 1 << 20));
    REQUIRE(pool.isOk());
    auto a = (*pool)->acquire();
    REQUIRE(a.isOk());
    const auto t0 = std::chrono::steady_clock::now();
    auto b = (*pool)->acquireFor(30ms);
    CHECK_FALSE(b.isOk());
    CHECK(b.status().retryable());
    CHECK(std::chrono::steady_clock::now() - t0 >= 30ms);
}

TEST_CASE("many threads acquire and release without losing slots") {
    auto pool = PinnedPool::create(poolOpts(3 << 16, 1 << 16));
    REQUIRE(pool.isOk());
    PinnedPool& p = **pool;
    std::vector<std::thread> threads;
    std::atomic<int> inUse{0};
    std::atomic<int> maxSeen{0};
    for (int t = 0; t < 6; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 300; ++i) {
                auto s = p.acquire();
                REQUIRE(s.isOk());
                const int now = ++inUse;
                int m = maxSeen.load();
                while (now > m && !maxSeen.compare_exchange_weak(m, now)) {}
                s->data()[i % 4096] = static_cast<std::byte>(t);
                --inUse;
            }
        });
    }
    for (auto& t : threads) t.join();
    CHECK(maxSeen.load() <= 3);
    CHECK(p.stats().freeSlots == 3);
}

TEST_CASE("locks the memory when asked and allowed, and reports it") {
    PinnedPoolOptions o = poolOpts(2 << 20, 1 << 20);
    o.lockMemory = false;
    auto unlocked = PinnedPool::create(o);
    REQUIRE(unlocked.isOk());
    CHECK_FALSE((*unlocked)->stats().locked);
    CHECK((*unlocked)->stats().lockedBytes == 0);

    o.lockMemory = true;
    auto pool = PinnedPool::create(o);
    REQUIRE(pool.isOk());
    const PinnedPoolStats s = (*pool)->stats();
    // Locked or not depends on RLIMIT_MEMLOCK / CAP_IPC_LOCK; either way the report is coherent.
    CHECK(s.lockedBytes == (s.locked ? s.totalBytes : 0));
    MESSAGE("2 MiB pool locked: " << std::string(s.locked ? "yes" : "no (memlock limit)"));
}

namespace {

// The VmFlags line of the /proc/self/smaps entry that contains `p` ("" if none).
std::string vmFlagsOf(const void* p) {
    std::ifstream smaps("/proc/self/smaps");
    const auto addr = reinterpret_cast<uintptr_t>(p);
    std::string line;
    bool inside = false;
    while (std::getline(smaps, line)) {
        uintptr_t lo = 0, hi = 0;
        // Entry headers look like "7f12a0000000-7f12a0400000 rw-p ..."; field lines start
        // with a capitalized name and a colon.
        if (line.find(':') > line.find(' ') &&
            std::sscanf(line.c_str(), "%" SCNxPTR "-%" SCNxPTR, &lo, &hi) == 2) {
            inside = addr >= lo && addr < hi;
            continue;
        }
        if (inside && line.rfind("VmFlags:", 0) == 0) return line;
    }
    return "";
}

bool advisedHuge(const void* p) {
    const std::string flags = vmFlagsOf(p);
    return flags.find(" hg") != std::string::npos;
}

}  // namespace

TEST_CASE("slabs start on a 2 MiB boundary and ask for transparent huge pages") {
    PinnedPoolOptions o = poolOpts(24 << 20, 3 << 20);  // 8 slots of 3 MiB
    auto pool = PinnedPool::create(o);
    REQUIRE(pool.isOk());
    for (const MemoryRegion& r : (*pool)->regions()) {
        CHECK(reinterpret_cast<uintptr_t>(r.data) % (2 << 20) == 0);
        if (std::ifstream("/proc/self/smaps")) CHECK(advisedHuge(r.data));
        // Populated at create(): every byte reads back zero and is writable.
        const auto* b = static_cast<const std::byte*>(r.data);
        CHECK(b[0] == std::byte{0});
        CHECK(b[r.size - 1] == std::byte{0});
    }
    std::memset((*pool)->slotData(7), 0x5a, (*pool)->slotBytes());

    o.hugePages = false;
    auto plain = PinnedPool::create(o);
    REQUIRE(plain.isOk());
    for (const MemoryRegion& r : (*plain)->regions()) {
        CHECK(reinterpret_cast<uintptr_t>(r.data) % 4096 == 0);
        if (std::ifstream("/proc/self/smaps")) CHECK_FALSE(advisedHuge(r.data));
    }
}

TEST_CASE("large aligned buffers are 2 MiB-aligned huge-page mappings, small ones heap memory") {
    auto big = AlignedBuffer::allocate((4 << 20) + 1);
    REQUIRE(big.isOk());
    CHECK(big->size() == (4 << 20) + 4096);
    CHECK(reinterpret_cast<uintptr_t>(big->data()) % (2 << 20) == 0);
    if (std::ifstream("/proc/self/smaps")) CHECK(advisedHuge(big->data()));
    std::memset(big->data(), 1, big->size());

    auto small = AlignedBuffer::allocate(64 << 10);
    REQUIRE(small.isOk());
    CHECK(reinterpret_cast<uintptr_t>(small->data()) % 4096 == 0);
    CHECK(small->size() == (64 << 10));

    // Moves keep ownership (the mapping is released once, by its last owner).
    std::byte* const p = big->data();
    AlignedBuffer moved = std::move(*big);
    CHECK(moved.data() == p);
    CHECK(big->data() == nullptr);
    AlignedBuffer other = std::move(*small);
    other = std::move(moved);
    CHECK(other.data() == p);
    CHECK(other.size() == (4 << 20) + 4096);
}

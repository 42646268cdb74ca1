// RAII wrappers: streams, events, device buffers, the budgeted pool, host registration.
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "engine/gpu/gpu_runtime.h"
#include "sli/cuda.h"
#include "tests/cuda/test_kernels.h"

namespace sli::gpu {
namespace {

TEST_CASE("parses device names") {
    CHECK(*cuda::parseDevice("cpu") == -1);
    CHECK(*cuda::parseDevice("cuda") == 0);
    CHECK(*cuda::parseDevice("cuda:3") == 3);
    CHECK(cuda::parseDevice("cuda:").status().isInvalidArgument());
    CHECK(cuda::parseDevice("cuda:-1").status().isInvalidArgument());
    CHECK(cuda::parseDevice("gpu0").status().isInvalidArgument());
}

TEST_CASE("reports the device and refuses one that does not exist") {
    CHECK(cuda::built());
    CHECK(cuda::deviceAvailable(0));
    CHECK_FALSE(cuda::deviceAvailable(cuda::deviceCount()));
    CHECK(!cuda::deviceDescription(0).empty());
    CHECK_FALSE(CudaStream::create(cuda::deviceCount()).isOk());
}

TEST_CASE("an event orders a stream after another without blocking the host") {
    auto a = CudaStream::create(0);
    auto b = CudaStream::create(0);
    auto e = CudaEvent::create(0);
    REQUIRE((a.isOk() && b.isOk() && e.isOk()));
    CHECK(*e->query());  // never recorded: complete
    cudatest::launchSpin(a->handle(), 20'000'000);  // 20 ms
    REQUIRE(e->record(a->handle()).isOk());
    REQUIRE(b->waitEvent(*e).isOk());
    auto after = CudaEvent::create(0);
    REQUIRE(after->record(b->handle()).isOk());
    CHECK_FALSE(*after->query());  // b is held behind a's spin
    REQUIRE(after->synchronize().isOk());
    CHECK(*e->query());
}

TEST_CASE("timing events measure elapsed GPU time") {
    auto s = CudaStream::create(0);
    auto t0 = CudaEvent::create(0, true);
    auto t1 = CudaEvent::create(0, true);
    REQUIRE(t0->record(s->handle()).isOk());
    cudatest::launchSpin(s->handle(), 2'000'000);
    REQUIRE(t1->record(s->handle()).isOk());
    REQUIRE(s->synchronize().isOk());
    auto ms = t1->elapsedMsSince(*t0);
    REQUIRE(ms.isOk());
    CHECK(*ms >= 1.9f);
}

TEST_CASE("the pool stays within its budget and recycles buffers") {
    auto pool = DeviceBufferPool::create(0, 8u << 20);
    REQUIRE(pool.isOk());
    auto a = (*pool)->acquire(3u << 20);  // class 4 MiB
    REQUIRE(a.isOk());
    CHECK(a->size() == (4u << 20));
    void* first = a->data();
    auto b = (*pool)->acquire(4u << 20);
    REQUIRE(b.isOk());
    CHECK((*pool)->acquire(1).status().isResourceExhausted());
    a->reset();
    auto c = (*pool)->acquire(4u << 20);
    REQUIRE(c.isOk());
    CHECK(c->data() == first);  // recycled, not reallocated
    CHECK((*pool)->allocatedBytes() == (8u << 20));
    c->reset();
    b->reset();
    auto big = (*pool)->acquire(8u << 20);  // frees the idle 4 MiB buffers to make room
    REQUIRE(big.isOk());
    CHECK((*pool)->allocatedBytes() == (8u << 20));
}

TEST_CASE("registers a host range and copies through it") {
    constexpr size_t kBytes = 1 << 20;
    auto* host = static_cast<uint8_t*>(std::aligned_alloc(4096, kBytes));
    for (size_t i = 0; i < kBytes; ++i) host[i] = static_cast<uint8_t>(i * 7);
    {
        auto reg = HostRegistration::registerRange(host, kBytes);
        REQUIRE_MESSAGE(reg.isOk(), reg.status().toString());
        auto d = DeviceBuffer::allocate(0, kBytes);
        auto s = CudaStream::create(0);
        REQUIRE(copyAsync(d->data(), host, kBytes, s->handle()).isOk());
        std::vector<uint8_t> back(kBytes);
        REQUIRE(copyAsync(back.data(), d->data(), kBytes, s->handle()).isOk());
        REQUIRE(s->synchronize().isOk());
        CHECK(std::memcmp(back.data(), host, kBytes) == 0);
        CHECK(HostRegistration::registerRange(nullptr, 0).status().isInvalidArgument());
    }
    std::free(host);
}

}  // namespace
}  // namespace sli::gpu

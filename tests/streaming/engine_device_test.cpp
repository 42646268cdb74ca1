// Engine device selection on a machine or build without CUDA: "cuda:N" is a clear
// NotSupported naming the reason, before any cache is read; bad device strings are
// InvalidArgument. (The GPU path itself is tested in tests/cuda/engine_test.cpp.)
#include <doctest/doctest.h>

#include "engine_test_util.h"
#include "sli/cuda.h"
#include "sli/engine.h"

using namespace sli;
using namespace sli::testutil;

TEST_CASE("open on cuda:0 without CUDA or without a device is NotSupported naming the reason") {
    if (cuda::deviceAvailable(0)) {
        MESSAGE("a CUDA device is present: covered by tests/cuda/engine_test.cpp");
        return;
    }
    TempDir tmp;
    TestCache tc = makeCache(tmp.path, 2, QuantizationMode::kNf4);
    EngineOptions o;
    o.cacheDir = tc.root;
    o.hostBudgetBytes = 64ull << 20;
    o.ioBackend = "pread";
    for (const char* dev : {"cuda:0", "cuda", "cuda:3"}) {
        CAPTURE(dev);
        o.device = dev;
        auto e = Engine::open(o);
        REQUIRE_FALSE(e.isOk());
        CHECK(e.status().isNotSupported());
        const std::string msg = e.status().message();
        CHECK(msg.find(dev) != std::string::npos);
        if (cuda::built()) {
            CHECK(msg.find("no such CUDA device") != std::string::npos);
        } else {
            CHECK(msg.find("no CUDA support") != std::string::npos);
            CHECK(msg.find("-Dcuda=enabled") != std::string::npos);
        }
        CHECK(msg.find("use device \"cpu\"") != std::string::npos);
    }
    for (const char* dev : {"cuda:", "cuda:-1", "cuda:x", "gpu"}) {
        CAPTURE(dev);
        o.device = dev;
        CHECK(Engine::open(o).status().isInvalidArgument());
    }
    o.device = "cpu";
    auto cpu = Engine::open(o);
    REQUIRE(cpu.isOk());
    CHECK((*cpu)->device() == -1);
    auto lease = (*cpu)->acquire(0, nullptr);  // the stream is ignored on the CPU path
    REQUIRE(lease.isOk());
    CHECK_FALSE(lease->onDevice());
    CHECK(lease->deviceTensors().empty());
    CHECK(lease->findDevice("model.layers.0.mlp.up_proj.weight") == nullptr);
    CHECK(lease->find("model.layers.0.mlp.up_proj.weight") != nullptr);
    lease->release(nullptr);
    CHECK((*cpu)->stats().device == "cpu");
}

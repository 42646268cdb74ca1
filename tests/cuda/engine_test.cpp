// sli::Engine on cuda:0: device tensors against the CPU path's (bytes copied back), cyclic
// order, executor work on the caller's stream while later layers load, integer tensors,
// corruption, budgets. test_cuda's main exits 77 without a device.
#include <doctest/doctest.h>

#include <cstring>
#include <fstream>
#include <map>

#include "engine/gpu/gpu_runtime.h"
#include "sli/cuda.h"
#include "sli/engine.h"
#include "tests/cuda/test_kernels.h"
#include "file_damage.h"
#include "tests/streaming/engine_test_util.h"

namespace sli::cudatest {
namespace {

using testutil::TempDir;
using testutil::TestCache;

EngineOptions gpuOptions(const TestCache& tc, const std::string& device = "cuda:0") {
    EngineOptions o;
    o.cacheDir = tc.root;
    o.device = device;
    o.hostBudgetBytes = 64ull << 20;
    o.deviceBudgetBytes = 256ull << 20;
    o.workerThreads = 2;
    o.ioBackend = "pread";
    return o;
}

std::vector<uint8_t> download(const sli::DeviceTensor& t, const gpu::CudaStream& stream) {
    std::vector<uint8_t> host(t.bytes);
    if (t.bytes == 0) return host;
    Status s = gpu::copyAsync(host.data(), t.data, t.bytes, stream.handle());
    REQUIRE_MESSAGE(s.isOk(), s.toString());
    s = stream.synchronize();
    REQUIRE_MESSAGE(s.isOk(), s.toString());
    return host;
}

// Streams `plan` through a GPU engine and a CPU engine with the same options and compares
// every tensor's bytes, names, shapes and dtypes.
void compareWithCpu(const EngineOptions& gpuOpts, const std::vector<int64_t>& plan) {
    EngineOptions cpuOpts = gpuOpts;
    cpuOpts.device = "cpu";
    auto ge = Engine::open(gpuOpts);
    REQUIRE_MESSAGE(ge.isOk(), ge.status().toString());
    auto ce = Engine::open(cpuOpts);
    REQUIRE_MESSAGE(ce.isOk(), ce.status().toString());
    CHECK((*ge)->device() == 0);
    CHECK((*ce)->device() == -1);
    CHECK((*ge)->computeDType() == (*ce)->computeDType());
    auto stream = gpu::CudaStream::create(0);
    REQUIRE(stream.isOk());
    for (int64_t l : plan) {
        CAPTURE(l);
        auto gl = (*ge)->acquire(l, stream->handle());
        REQUIRE_MESSAGE(gl.isOk(), gl.status().toString());
        auto cl = (*ce)->acquire(l);
        REQUIRE_MESSAGE(cl.isOk(), cl.status().toString());
        CHECK(gl->onDevice());
        CHECK_FALSE(cl->onDevice());
        CHECK(gl->tensors().size() == 0);
        const Layer& want = cl->tensors();
        const auto got = gl->deviceTensors();
        REQUIRE(got.size() == want.size());
        for (size_t k = 0; k < got.size(); ++k) {
            CAPTURE(got[k].name);
            CHECK(got[k].name == want[k].name());
            CHECK(got[k].shape == want[k].shape());
            CHECK(got[k].dtype == want[k].dtype());
            CHECK(got[k].device == 0);
            CHECK(reinterpret_cast<uintptr_t>(got[k].data) % 256 == 0);
            REQUIRE(got[k].bytes == want[k].nbytes());
            CHECK(gl->findDevice(got[k].name) == &got[k]);
            const auto bytes = download(got[k], *stream);
            if (!bytes.empty()) CHECK(std::memcmp(bytes.data(), want[k].data(), bytes.size()) == 0);
        }
        gl->release(stream->handle());
    }
}

TEST_CASE("engine on cuda:0 hands out device tensors equal to the CPU path's for every mode and dtype") {
    const QuantizationMode modes[] = {QuantizationMode::kNone, QuantizationMode::kInt8,
                                      QuantizationMode::kInt8Dynamic, QuantizationMode::kNf4,
                                      QuantizationMode::kFp4, QuantizationMode::kInt4};
    for (QuantizationMode mode : modes) {
        TempDir tmp;
        TestCache tc = testutil::makeCache(tmp.path, 3, mode, DType::kF32);
        for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
            for (int depth : {0, 2}) {
                CAPTURE(modeName(mode));
                CAPTURE(std::string(dtypeName(dt)));
                CAPTURE(depth);
                EngineOptions o = gpuOptions(tc);
                o.computeDType = dt;
                o.prefetchDepth = depth;
                compareWithCpu(o, {0, 1, 2});
            }
        }
    }
}

TEST_CASE("engine on cuda:0 hands out integer tensors as stored") {
    TempDir tmp;
    TestCache tc = testutil::makeCache(tmp.path, 2, QuantizationMode::kNf4, DType::kF16);
    // Rewrite layer 1 with an int64 position-id tensor beside the quantized weights.
    auto q = io::readLayerFile(tc.files[1], true);
    REQUIRE(q.isOk());
    QuantizedTensor ids;
    ids.info.name = "model.layers.1.position_ids";
    ids.info.shape = {37};
    ids.info.mode = QuantizationMode::kNone;
    ids.info.storedDType = DType::kI64;
    ids.info.sourceDType = DType::kI64;
    ids.info.computeDType = DType::kF16;
    ids.part(QuantPart::kPayload) = std::move(AlignedBuffer::allocate(37 * 8, false).value());
    for (int64_t i = 0; i < 37; ++i) {
        const int64_t v = i * 1000003 - 5;
        std::memcpy(ids.part(QuantPart::kPayload).data() + 8 * i, &v, 8);
    }
    q->tensors.push_back(std::move(ids));
    io::LayerFileMeta meta{"toy/llama", tc.config.toJsonString(), "0123456789abcdef"};
    Status s = io::writeLayerFile(tc.files[1], *q, meta);
    REQUIRE_MESSAGE(s.isOk(), s.toString());
    EngineOptions o = gpuOptions(tc);
    compareWithCpu(o, {0, 1});
}

TEST_CASE("engine on cuda:0 streams cyclic order over many passes") {
    TempDir tmp;
    TestCache tc = testutil::makeCache(tmp.path, 4, QuantizationMode::kNf4, DType::kBF16);
    EngineOptions o = gpuOptions(tc);
    o.order = LayerOrder::kCyclic;
    o.prefetchDepth = 2;
    std::map<int64_t, std::vector<std::vector<uint8_t>>> expected;
    for (int64_t l = 0; l < 4; ++l) {
        expected[l] = testutil::expectedLayer(tc.files[static_cast<size_t>(l)], DType::kBF16);
    }
    auto e = Engine::open(o);
    REQUIRE_MESSAGE(e.isOk(), e.status().toString());
    auto stream = gpu::CudaStream::create(0);
    REQUIRE(stream.isOk());
    for (int pass = 0; pass < 8; ++pass) {
        for (int64_t l = 0; l < 4; ++l) {
            auto lease = (*e)->acquire(l, stream->handle());
            REQUIRE_MESSAGE(lease.isOk(), lease.status().toString());
            const auto ts = lease->deviceTensors();
            REQUIRE(ts.size() == expected[l].size());
            for (size_t k = 0; k < ts.size(); ++k) {
                const auto got = download(ts[k], *stream);
                CHECK_MESSAGE(got == expected[l][k], "pass " << pass << " layer " << l << " " << ts[k].name);
            }
        }  // the destructor releases on the acquire stream
    }
    const EngineStats st = (*e)->stats();
    CHECK(st.layersAcquired == 32);
    CHECK(st.device == "cuda:0");
    CHECK(st.deviceSlots == 3);
    CHECK(st.h2dBytes > 0);
    CHECK(st.h2dSeconds > 0);
    CHECK(st.hostOutputBytes == 0);
    const auto tl = (*e)->timings();
    REQUIRE(tl.size() == 32);
    for (const auto& t : tl) {
        CHECK(t.copiedNs >= t.copyStartNs);
        CHECK(t.dequantizedNs >= t.dequantStartNs);
        CHECK(t.dequantStartNs >= t.copyStartNs);
    }
}

// The executor: on its own stream, a delay then a checksum of every tensor into one device
// accumulator, with no host synchronization until the end. A buffer reused before the
// executor's work on it (release ordering), or read before its dequant (acquire ordering),
// shows up as a wrong sum.
TEST_CASE("executor work on the caller's stream reads the tensors while later layers load") {
    TempDir tmp;
    TestCache tc = testutil::makeCache(tmp.path, 6, QuantizationMode::kNf4, DType::kF16, "toy/llama", 256);
    unsigned long long want = 0;
    std::vector<unsigned long long> perLayer(6, 0);
    for (int64_t l = 0; l < 6; ++l) {
        for (const auto& t : testutil::expectedLayer(tc.files[static_cast<size_t>(l)], DType::kF16)) {
            perLayer[static_cast<size_t>(l)] += hostChecksum(t.data(), t.size());
        }
    }
    for (int depth : {1, 3}) {
        CAPTURE(depth);
        EngineOptions o = gpuOptions(tc);
        o.order = LayerOrder::kCyclic;
        o.prefetchDepth = depth;
        auto e = Engine::open(o);
        REQUIRE_MESSAGE(e.isOk(), e.status().toString());
        auto stream = gpu::CudaStream::create(0);
        REQUIRE(stream.isOk());
        auto acc = gpu::DeviceBuffer::allocate(0, sizeof(unsigned long long));
        REQUIRE(acc.isOk());
        const unsigned long long zero = 0;
        REQUIRE(gpu::copyAsync(acc->data(), &zero, sizeof(zero), stream->handle()).isOk());
        want = 0;
        for (int pass = 0; pass < 4; ++pass) {
            for (int64_t l = 0; l < 6; ++l) {
                auto lease = (*e)->acquire(l, stream->handle());
                REQUIRE_MESSAGE(lease.isOk(), lease.status().toString());
                launchSpin(stream->handle(), 300'000);  // the executor is slower than loading
                for (const auto& t : lease->deviceTensors()) {
                    launchChecksum(t.data, t.bytes, static_cast<unsigned long long*>(acc->data()),
                                   stream->handle());
                }
                lease->release(stream->handle());
                want += perLayer[static_cast<size_t>(l)];
            }
        }
        unsigned long long got = 0;
        REQUIRE(gpu::copyAsync(&got, acc->data(), sizeof(got), stream->handle()).isOk());
        REQUIRE(stream->synchronize().isOk());
        CHECK(got == want);
    }
}

TEST_CASE("engine on cuda: a corrupt layer fails its acquire; the others stream") {
    TempDir tmp;
    TestCache tc = testutil::makeCache(tmp.path, 4, QuantizationMode::kNf4);
    auto idx = io::readLayerIndex(tc.files[2]);
    REQUIRE(idx.isOk());
    const auto& ext = idx->tensors[1].part(QuantPart::kPayload);
    REQUIRE(sli::testing::flipByte(tc.files[2], ext.offset + 17));
    auto e = Engine::open(gpuOptions(tc));
    REQUIRE(e.isOk());
    auto stream = gpu::CudaStream::create(0);
    REQUIRE(stream.isOk());
    for (int64_t l : {0, 1}) CHECK((*e)->acquire(l, stream->handle()).isOk());
    auto bad = (*e)->acquire(2, stream->handle());
    REQUIRE_FALSE(bad.isOk());
    CHECK(bad.status().isCorruption());
    CHECK(bad.status().message().find("layer 2") != std::string::npos);
    CHECK(bad.status().message().find("mlp.up_proj.weight") != std::string::npos);
    auto last = (*e)->acquire(3, stream->handle());
    CHECK_MESSAGE(last.isOk(), last.status().toString());
}

TEST_CASE("engine on cuda: budgets, leases and device errors are clear") {
    TempDir tmp;
    TestCache tc = testutil::makeCache(tmp.path, 4, QuantizationMode::kInt8);
    EngineOptions o = gpuOptions(tc, "cuda:" + std::to_string(cuda::deviceCount()));
    auto missing = Engine::open(o);
    REQUIRE_FALSE(missing.isOk());
    CHECK(missing.status().isNotSupported());
    CHECK(missing.status().message().find("no such CUDA device") != std::string::npos);

    o = gpuOptions(tc);
    o.deviceBudgetBytes = 1024;
    auto tiny = Engine::open(o);
    REQUIRE_FALSE(tiny.isOk());
    CHECK(tiny.status().isInvalidArgument());
    CHECK(tiny.status().message().find("device budget") != std::string::npos);

    // Holding every device slot: acquire fails instead of deadlocking.
    o = gpuOptions(tc);
    o.prefetchDepth = 1;  // two device slots
    auto e = Engine::open(o);
    REQUIRE(e.isOk());
    CHECK((*e)->stats().deviceSlots == 2);
    auto a = (*e)->acquire(0, nullptr);
    auto b = (*e)->acquire(1, nullptr);
    REQUIRE(a.isOk());
    REQUIRE(b.isOk());
    auto c = (*e)->acquire(2, nullptr);
    CHECK(c.status().isResourceExhausted());
}

}  // namespace
}  // namespace sli::cudatest

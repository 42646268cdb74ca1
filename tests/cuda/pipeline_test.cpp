// GpuLayerPipeline: stream / event ordering with executor work on the caller's stream.
// The pipeline's own streams are delayed with spin kernels so that a missing wait (acquire not
// waiting for the dequant, a slot reused before release) shows up as a wrong checksum.
#include <doctest/doctest.h>

#include <cstdlib>

#include "engine/gpu/layer_pipeline.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/test_kernels.h"

namespace sli::cudatest {
namespace {

// A layer's quantized tensors, their parts packed into one page-aligned host region (parts
// 256-byte aligned, as the cache lays out extents), plus host views into the region.
struct HostLayer {
    std::vector<QuantizedTensor> tensors;
    std::vector<size_t> offsets[kQuantPartCount];
    size_t bytes = 0;
    unsigned long long expected = 0;  // sum of the per-tensor checksums of the reference output
};

HostLayer makeLayer(uint64_t seed, DType dst) {
    HostLayer l;
    l.tensors.push_back(randomTensor(QuantizationMode::kNf4, {128, 256}, 64, true, DType::kU8, seed, true));
    l.tensors.push_back(randomTensor(QuantizationMode::kFp4, {33, 77}, 128, false, DType::kU8, seed + 1, true));
    l.tensors.push_back(randomTensor(QuantizationMode::kInt8, {64, 200}, 0, false, DType::kI8, seed + 2, true));
    l.tensors.push_back(randomTensor(QuantizationMode::kInt4, {32, 256}, 32, false, DType::kU8, seed + 3, true));
    l.tensors.push_back(randomTensor(QuantizationMode::kNone, {50, 64}, 0, false, DType::kBF16, seed + 4, true));
    for (auto& t : l.tensors) {
        for (int p = 0; p < kQuantPartCount; ++p) {
            l.offsets[p].push_back(l.bytes);
            l.bytes += (t.parts[p].size() + 255) / 256 * 256;
        }
        const auto ref = referenceDequantize(t.view(), dst);
        // The byte checksum needs NaN-free outputs (NaN payloads are not portable).
        int64_t nans = 0;
        for (size_t i = 0; i < ref.size(); i += dtypeSize(dst)) nans += isNanElem(ref.data() + i, dst);
        CHECK_MESSAGE(nans == 0, t.info.name);
        l.expected += hostChecksum(ref.data(), ref.size());
    }
    return l;
}

// Copies the layer into `region` and returns views over it.
std::vector<QuantizedTensorView> writeLayer(const HostLayer& l, uint8_t* region) {
    std::vector<QuantizedTensorView> views;
    for (size_t i = 0; i < l.tensors.size(); ++i) {
        QuantizedTensorView v;
        v.info = &l.tensors[i].info;
        for (int p = 0; p < kQuantPartCount; ++p) {
            const auto& part = l.tensors[i].parts[p];
            uint8_t* dst = region + l.offsets[p][i];
            if (!part.empty()) std::memcpy(dst, part.data(), part.size());
            v.parts[p] = {dst, part.size()};
        }
        views.push_back(v);
    }
    return views;
}

struct PinnedRegion {
    uint8_t* data = nullptr;
    gpu::HostRegistration reg;
    explicit PinnedRegion(size_t bytes) {
        data = static_cast<uint8_t*>(std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096));
        auto r = gpu::HostRegistration::registerRange(data, (bytes + 4095) / 4096 * 4096);
        REQUIRE_MESSAGE(r.isOk(), r.status().toString());
        reg = std::move(*r);
    }
    ~PinnedRegion() {
        reg = gpu::HostRegistration();
        std::free(data);
    }
};

void runCyclic(DType dst, bool defaultStream) {
    constexpr int kLayers = 5, kPasses = 4, kSlots = 2;
    std::vector<HostLayer> layers;
    size_t staging = 0, output = 0;
    for (int i = 0; i < kLayers; ++i) {
        layers.push_back(makeLayer(100 + 10 * static_cast<uint64_t>(i), dst));
        staging = std::max(staging, layers.back().bytes);
    }
    for (auto& l : layers) {
        std::vector<QuantizedTensorView> v;
        for (auto& t : l.tensors) v.push_back(t.view());
        output = std::max(output, gpu::GpuLayerPipeline::outputBytesFor(v, dst));
    }
    gpu::GpuPipelineOptions opt;
    opt.slots = kSlots;
    opt.stagingBytes = staging;
    opt.outputBytes = output;
    opt.deviceBudgetBytes = 256ull << 20;
    // The host regions outlive the pipeline, whose destructor waits for the copies from them
    // (also when a REQUIRE below ends the test early).
    std::vector<std::unique_ptr<PinnedRegion>> regions;
    for (int s = 0; s < kSlots; ++s) regions.push_back(std::make_unique<PinnedRegion>(staging));
    auto pipe = gpu::GpuLayerPipeline::create(opt);
    REQUIRE_MESSAGE(pipe.isOk(), pipe.status().toString());
    gpu::GpuLayerPipeline& p = **pipe;
    gpu::CudaStream exec;
    if (!defaultStream) exec = std::move(gpu::CudaStream::create(0).value());
    void* es = defaultStream ? nullptr : exec.handle();

    std::vector<bool> used(kSlots, false);
    constexpr int kUses = kLayers * kPasses;
    gpu::DeviceBuffer sums = std::move(gpu::DeviceBuffer::allocate(0, 2 * kUses * 8).value());
    std::vector<unsigned long long> zeros(2 * kUses, 0);
    // On the executor's stream: a non-blocking stream does not wait for the legacy one.
    REQUIRE(gpu::copyAsync(sums.data(), zeros.data(), zeros.size() * 8, es).isOk());
    auto* dsum = static_cast<unsigned long long*>(sums.data());

    for (int u = 0; u < kUses; ++u) {
        const HostLayer& l = layers[static_cast<size_t>(u % kLayers)];
        auto slot = p.reserve();
        REQUIRE_MESSAGE(slot.isOk(), slot.status().toString());
        // The host region of this slot may be refilled once its previous copy finished.
        if (used[static_cast<size_t>(*slot)]) REQUIRE(p.waitCopied(*slot).isOk());
        used[static_cast<size_t>(*slot)] = true;
        const auto views = writeLayer(l, regions[static_cast<size_t>(*slot)]->data);
        // Delay the copy and the dequant: a reader that does not wait sees stale outputs.
        launchSpin(p.copyStream(), 100'000);
        launchSpin(p.dequantStream(), 200'000);
        auto outs = p.submit(*slot, {regions[static_cast<size_t>(*slot)]->data, l.bytes}, views, dst);
        REQUIRE_MESSAGE(outs.isOk(), outs.status().toString());
        REQUIRE(outs->size() == l.tensors.size());
        REQUIRE(p.acquire(*slot, es).isOk());
        for (const auto& t : *outs) launchChecksum(t.data, t.bytes, dsum + 2 * u, es);
        launchSpin(es, 300'000);  // the executor is still reading when the next layers load
        for (const auto& t : *outs) launchChecksum(t.data, t.bytes, dsum + 2 * u + 1, es);
        REQUIRE(p.release(*slot, es).isOk());
    }
    std::vector<unsigned long long> got(2 * kUses);
    REQUIRE(gpu::copyAsync(got.data(), sums.data(), got.size() * 8, es).isOk());
    if (!defaultStream) REQUIRE(exec.synchronize().isOk());
    for (int u = 0; u < kUses; ++u) {
        CAPTURE(u);
        CHECK(got[2 * u] == layers[static_cast<size_t>(u % kLayers)].expected);
        CHECK(got[2 * u + 1] == layers[static_cast<size_t>(u % kLayers)].expected);
    }
}

TEST_CASE("hands out tensors equal to the reference in cyclic order while later layers load") {
    for (DType dst : {DType::kF16, DType::kBF16, DType::kF32}) {
        CAPTURE(std::string(dtypeName(dst)));
        runCyclic(dst, false);
    }
}

TEST_CASE("orders correctly against an executor on the legacy default stream") {
    runCyclic(DType::kF16, true);
}

TEST_CASE("refuses a new slot while every slot is held, and accepts it after release") {
    HostLayer l = makeLayer(7, DType::kF16);
    std::vector<QuantizedTensorView> hv;
    for (auto& t : l.tensors) hv.push_back(t.view());
    gpu::GpuPipelineOptions opt;
    opt.slots = 2;
    opt.stagingBytes = l.bytes;
    opt.outputBytes = gpu::GpuLayerPipeline::outputBytesFor(hv, DType::kF16);
    opt.deviceBudgetBytes = 64ull << 20;
    // Declared before the pipeline, so it is unregistered only after the pipeline's destructor
    // waited for the copies from it.
    PinnedRegion region(l.bytes);
    auto pipe = gpu::GpuLayerPipeline::create(opt);
    REQUIRE(pipe.isOk());
    const auto views = writeLayer(l, region.data);
    gpu::GpuLayerPipeline& p = **pipe;
    int slots[2];
    for (int& s : slots) {
        auto r = p.reserve();
        REQUIRE(r.isOk());
        s = *r;
        REQUIRE(p.submit(s, {region.data, l.bytes}, views, DType::kF16).isOk());
    }
    CHECK(slots[0] != slots[1]);
    CHECK(p.reserve().status().isResourceExhausted());
    CHECK(p.acquire(slots[0], nullptr).isOk());
    CHECK(p.release(slots[0], nullptr).isOk());
    auto again = p.reserve();
    REQUIRE(again.isOk());
    CHECK(*again == slots[0]);
    CHECK(p.release(slots[1], nullptr).isOk());  // released without acquire: a skipped layer
    CHECK(p.acquire(*again, nullptr).isInvalidArgument());  // reserved, not submitted
}

TEST_CASE("rejects parts outside the submitted region and layers larger than a slot") {
    HostLayer l = makeLayer(9, DType::kF32);
    std::vector<QuantizedTensorView> hv;
    for (auto& t : l.tensors) hv.push_back(t.view());
    gpu::GpuPipelineOptions opt;
    opt.slots = 1;
    opt.stagingBytes = l.bytes;
    opt.outputBytes = gpu::GpuLayerPipeline::outputBytesFor(hv, DType::kF32);
    opt.deviceBudgetBytes = 64ull << 20;
    PinnedRegion region(l.bytes);  // outlives the pipeline (see above)
    auto pipe = gpu::GpuLayerPipeline::create(opt);
    REQUIRE(pipe.isOk());
    const auto views = writeLayer(l, region.data);
    gpu::GpuLayerPipeline& p = **pipe;
    auto slot = p.reserve();
    REQUIRE(slot.isOk());
    CHECK(p.submit(*slot, {region.data, l.bytes - 1}, views, DType::kF32).status().isInvalidArgument());
    CHECK(p.submit(*slot, {region.data, l.bytes}, hv, DType::kF32).status().isInvalidArgument());
    CHECK(p.submit(*slot, {region.data, l.bytes}, views, DType::kF32).isOk());
}

TEST_CASE("refuses a configuration that does not fit the device budget") {
    gpu::GpuPipelineOptions opt;
    opt.slots = 4;
    opt.stagingBytes = 8 << 20;
    opt.outputBytes = 32 << 20;
    opt.deviceBudgetBytes = 64 << 20;
    CHECK(gpu::GpuLayerPipeline::create(opt).status().isResourceExhausted());
}

}  // namespace
}  // namespace sli::cudatest

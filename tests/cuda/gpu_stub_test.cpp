// The GPU API in a build without CUDA: no device, factories refuse with NotSupported.
#include <doctest/doctest.h>

#include "engine/gpu/layer_pipeline.h"
#include "kernels/cuda/cuda_kernels.h"
#include "sli/cuda.h"

namespace sli::gpu {
namespace {

TEST_CASE("reports no CUDA and refuses every GPU object") {
    static int info_dummy = 0;
    CHECK_FALSE(cuda::built());
    CHECK(cuda::deviceCount() == 0);
    CHECK_FALSE(cuda::deviceAvailable(0));
    CHECK(*cuda::parseDevice("cuda:1") == 1);
    CHECK(CudaStream::create(0).status().isNotSupported());
    CHECK(DeviceBuffer::allocate(0, 16).status().isNotSupported());
    CHECK(HostRegistration::registerRange(&info_dummy, 1).status().isNotSupported());
    CHECK(GpuLayerPipeline::create({}).status().isNotSupported());
    QuantizedTensorInfo info;
    info.shape = {4};
    CHECK(cuda::dequantize({&info, {}}, DType::kF32, nullptr, 0, nullptr).isNotSupported());
}

}  // namespace
}  // namespace sli::gpu

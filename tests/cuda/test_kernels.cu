#include "tests/cuda/test_kernels.h"

#include <cuda_runtime.h>

namespace sli::cudatest {

namespace {

__global__ void spinKernel(uint64_t ns) {
    uint64_t start;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    for (;;) {
        uint64_t now;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
        if (now - start >= ns) break;
    }
}

__global__ void checksumKernel(const uint8_t* p, size_t n, unsigned long long* out) {
    unsigned long long s = 0;
    for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        s += static_cast<unsigned long long>(p[i]) * (i % 65521 + 1);
    }
    atomicAdd(out, s);
}

}  // namespace

void launchSpin(void* stream, uint64_t ns) {
    spinKernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(ns);
}

void launchChecksum(const void* data, size_t bytes, unsigned long long* out, void* stream) {
    checksumKernel<<<64, 256, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<const uint8_t*>(data),
                                                                      bytes, out);
}

}  // namespace sli::cudatest

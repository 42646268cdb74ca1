// Stand-in "executor" kernels for the pipeline tests (tests/cuda/test_kernels.cu): they run on
// the caller's stream and read the tensors the pipeline hands out. No CUDA types.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sli::cudatest {

// Busy-waits on the GPU for about `ns` nanoseconds (globaltimer), delaying the stream.
void launchSpin(void* stream, uint64_t ns);
// Adds the checksum of `bytes` bytes at `data` (see hostChecksum) to *out (device).
void launchChecksum(const void* data, size_t bytes, unsigned long long* out, void* stream);
// Checksum: sum over bytes of b_i * (i % 65521 + 1), modulo 2^64.
inline unsigned long long hostChecksum(const uint8_t* p, size_t n) {
    unsigned long long s = 0;
    for (size_t i = 0; i < n; ++i) s += static_cast<unsigned long long>(p[i]) * (i % 65521 + 1);
    return s;
}

}  // namespace sli::cudatest

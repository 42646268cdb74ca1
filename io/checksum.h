// The checksum of the layer cache's extents: XXH3-64 with seed 0, the same bits as
// XXH3_64bits() of libxxhash, from the fastest implementation this CPU runs. The engine hashes
// every byte it streams, so the implementation matters: the library as Debian builds it uses
// SSE2 and runs at about half the speed of the AVX2 / AVX-512 builds, which reach one thread's
// memory read limit (bench/io_bench BM_Checksum beside BM_ReadFloor; figures in
// docs/benchmarks.md). What the hash does not take is left to the reads and the dequantization.
//
// The implementation is chosen once, on first use, by cpuid (engine/core/cpu_features.h):
// AVX-512 (when built and supported), AVX2, else the library. SLI_ISA=scalar or avx2 caps the
// choice as it does for the kernels. A variant that gives a different hash than the library on
// a fixed start-up sample is not used (an error line says so). Thread safety: may be called
// concurrently from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sli::io {

uint64_t checksum64(const void* data, size_t size) noexcept;

// The name of the implementation checksum64() uses: "avx512", "avx2" or "libxxhash".
const char* checksumImplementation() noexcept;

// Every implementation this build has and this CPU runs, the library first (for tests and the
// benchmark: each must give the library's bits).
struct ChecksumImplementation {
    const char* name;
    uint64_t (*fn)(const void* data, size_t size) noexcept;
};
std::vector<ChecksumImplementation> checksumImplementations();

}  // namespace sli::io

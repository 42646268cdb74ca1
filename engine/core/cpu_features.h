// What the CPU (and its OS) can run, for the run-time choice of SIMD code paths (the CPU
// kernels in kernels/dispatch.cpp, the extent checksums in io/checksum.cpp). Internal to the
// library and its tests. Thread safety: every function may be called from any thread.
#pragma once

namespace sli::cpu {

// AVX2 with FMA and F16C (every AVX2 CPU has both; the kernels use all three).
bool hasAvx2() noexcept;
// AVX-512 F, BW, VL and DQ, with F16C and FMA, and an OS that saves the ZMM register state.
bool hasAvx512() noexcept;
// hasAvx512() and AVX-512 VBMI (vpermb / vpermt2b: Ice Lake, Sapphire Rapids, Zen 4 and later).
bool hasAvx512Vbmi() noexcept;

// The highest instruction set the environment allows: SLI_ISA=scalar, avx2 or avx512 caps the
// choice (unset, empty or "auto": no cap). Other values count as no cap; the kernels' dispatch
// warns about them.
enum class IsaCap { kScalar, kAvx2, kAvx512 };
IsaCap isaCapFromEnvironment() noexcept;

// The CPUs this thread may run on: its affinity mask (sched_getaffinity: taskset, cpusets,
// container CPU sets), at least 1. std::thread::hardware_concurrency() where the mask cannot be
// read. What "all cores" means wherever a thread count of 0 asks for them.
int usableCores() noexcept;

}  // namespace sli::cpu

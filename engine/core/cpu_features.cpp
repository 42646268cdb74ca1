#include "cpu_features.h"

#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace sli::cpu {

namespace {

// Whether the OS saves the AVX-512 register state on context switches: CPUID.1:ECX.OSXSAVE, then
// XCR0 bits 1 (SSE), 2 (AVX), 5 (opmask), 6 (ZMM0-15 upper halves), 7 (ZMM16-31). A CPU may
// report AVX-512 while the kernel does not enable it (old kernels, some hypervisors); the
// instructions then fault. Checked here explicitly rather than trusting the compiler runtime
// behind __builtin_cpu_supports to do it.
bool osSavesZmmState() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid(1, &a, &b, &c, &d) == 0 || (c & bit_OSXSAVE) == 0) return false;
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    constexpr unsigned kZmmState = 0xe6;
    return (lo & kZmmState) == kZmmState;
#else
    return false;
#endif
}

// FMA and F16C from CPUID.1:ECX directly (clang's __builtin_cpu_supports does not know "f16c").
bool hasFmaF16c() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid(1, &a, &b, &c, &d) == 0) return false;
    return (c & bit_FMA) != 0 && (c & bit_F16C) != 0;
#else
    return false;
#endif
}

}  // namespace

bool hasAvx2() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_cpu_supports("avx2") && hasFmaF16c();
#else
    return false;
#endif
}

bool hasAvx512() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && hasFmaF16c() &&
           osSavesZmmState();
#else
    return false;
#endif
}

bool hasAvx512Vbmi() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    static const bool yes = hasAvx512() && __builtin_cpu_supports("avx512vbmi");
    return yes;
#else
    return false;
#endif
}

IsaCap isaCapFromEnvironment() noexcept {
    const char* v = std::getenv("SLI_ISA");
    if (v == nullptr) return IsaCap::kAvx512;
    if (std::strcmp(v, "scalar") == 0) return IsaCap::kScalar;
    if (std::strcmp(v, "avx2") == 0) return IsaCap::kAvx2;
    return IsaCap::kAvx512;
}

int usableCores() noexcept {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof(set), &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

}  // namespace sli::cpu

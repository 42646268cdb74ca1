// Helpers shared by the kernels tests: the implementations available on this CPU, and random
// and edge-case inputs.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu_kernels.h"

namespace sli::kernels::testing {

// Every SIMD implementation built into the library that this CPU can run, and the AVX-512
// bodies on SIMDe emulation (avx512KernelsEmulated, "avx512-simde") when that was built.
inline std::vector<const CpuKernels*> fastKernels() {
    std::vector<const CpuKernels*> out;
#if defined(__x86_64__) || defined(__i386__)
    if (avx2Kernels() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
        out.push_back(avx2Kernels());
    }
    if (avx512Kernels() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
        out.push_back(avx512Kernels());
    }
#if SLI_HAVE_AVX512_EMULATED
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
        out.push_back(avx512KernelsEmulated());
    }
#endif
#endif
    return out;
}

inline float nextUp(float x) { return std::nextafter(x, std::numeric_limits<float>::infinity()); }
inline float nextDown(float x) { return std::nextafter(x, -std::numeric_limits<float>::infinity()); }

// Inputs for double quant's 8-bit search of the sorted 256-entry `map`: every entry, every
// midpoint between neighbours and the floats next to each, the ends and beyond, zeros, NaN,
// infinities, the smallest subnormals; then `randomCount` values in (-1.3, 1.3), every fourth
// scaled down by 1e-3.
inline std::vector<float> dynamicMapProbes(const float* map, int randomCount, uint32_t seed) {
    std::vector<float> x{0.0f, -0.0f, 1.0f, -1.0f, 2.0f, -2.0f, 1e30f, -1e30f,
                         std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                         -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::denorm_min(),
                         -std::numeric_limits<float>::denorm_min()};
    for (int i = 0; i < 256; ++i) {
        for (float v : {map[i], nextUp(map[i]), nextDown(map[i])}) x.push_back(v);
        if (i < 255) {
            const float mid = (map[i] + map[i + 1]) * 0.5f;
            for (float v : {mid, nextUp(mid), nextDown(mid)}) x.push_back(v);
        }
    }
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.3f, 1.3f);
    for (int k = 0; k < randomCount; ++k) x.push_back(k % 4 ? u(rng) : u(rng) * 1e-3f);
    return x;
}

// N(0,1) values, each block of `block` scaled by exp(U(-4, 4)).
inline std::vector<float> randomValues(int64_t n, uint32_t seed, int64_t block = 64) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> expo(-4.0f, 4.0f);
    std::vector<float> v(static_cast<size_t>(n));
    float scale = 1.0f;
    for (int64_t i = 0; i < n; ++i) {
        if (i % block == 0) scale = std::exp(expo(rng));
        v[static_cast<size_t>(i)] = normal(rng) * scale;
    }
    return v;
}

// Values that stress the encoders, meant for a block whose absmax is exactly 1.0 (so x * inv
// is x): every NF4 threshold and FP4 literal with its float32 neighbours, codebook values,
// signed zeros, tiny and subnormal magnitudes.
inline std::vector<float> edgeValues() {
    std::vector<float> e = {1.0f, -1.0f, 0.0f, -0.0f, 1e-45f, -1e-45f, 1e-40f, -1e-40f,
                            1e-30f, -1e-30f, 1e-7f, -1e-7f};
    for (float t : kNf4Thresholds) {
        for (float v : {t, nextUp(t), nextDown(t)}) e.push_back(v);
    }
    for (float t : kFp4Thresholds) {
        for (float v : {t, nextUp(t), nextDown(t), -t, -nextUp(t), -nextDown(t)}) e.push_back(v);
    }
    for (float c : kNf4Codebook) e.push_back(c);
    for (float c : kFp4Codebook) e.push_back(c);
    return e;
}

// A tensor of n values cut into blocks of `block`: random blocks, an all-zero block, edge-value
// blocks with absmax exactly 1, a block with huge values, one of subnormals, one with NaN (quiet
// and signaling) and one with Inf (when withNonFinite), one with a negative max of the largest
// magnitude.
inline std::vector<float> mixedValues(int64_t n, int64_t block, uint32_t seed, bool withNonFinite) {
    std::vector<float> v = randomValues(n, seed, block);
    const std::vector<float> edge = edgeValues();
    const int64_t nb = (n + block - 1) / block;
    size_t e = 0;
    for (int64_t b = 0; b < nb; ++b) {
        const int64_t begin = b * block;
        const int64_t end = std::min(n, begin + block);
        const int role = static_cast<int>(b % 9);
        for (int64_t i = begin; i < end; ++i) {
            float& x = v[static_cast<size_t>(i)];
            switch (role) {
                case 1: x = 0.0f; break;
                case 2:
                case 3: x = i == begin ? 1.0f : edge[e++ % edge.size()]; break;
                case 4: x *= 1e35f; break;
                case 5: x *= 1e-41f; break;
                case 6:
                    if (withNonFinite && i == begin + 3) x = std::numeric_limits<float>::quiet_NaN();
                    // a signaling NaN too (what a bf16 NaN without the quiet bit widens to)
                    if (withNonFinite && i == begin + 4) x = -std::numeric_limits<float>::signaling_NaN();
                    break;
                case 7:
                    if (withNonFinite && i == begin + 1) x = -std::numeric_limits<float>::infinity();
                    break;
                case 8:
                    if (i == begin + 2) x = -100.0f;
                    if (i == begin + 5) x = 100.0f;
                    break;
                default: break;
            }
        }
    }
    return v;
}

// (memcmp wants valid pointers even for n = 0: an empty vector may hold none)
inline bool sameBytes(const void* a, const void* b, size_t n) {
    return n == 0 || std::memcmp(a, b, n) == 0;
}

// Index of the first differing element of size `esz`, or -1.
inline int64_t firstDiff(const void* a, const void* b, size_t count, size_t esz) {
    const auto* pa = static_cast<const uint8_t*>(a);
    const auto* pb = static_cast<const uint8_t*>(b);
    for (size_t i = 0; i < count; ++i) {
        if (std::memcmp(pa + i * esz, pb + i * esz, esz) != 0) return static_cast<int64_t>(i);
    }
    return -1;
}

}  // namespace sli::kernels::testing

#include "io/checksum.h"

#include <xxhash.h>

#include <array>
#include <cstdint>
#include <string_view>

#include "engine/core/cpu_features.h"
#include "sli/log.h"

namespace sli::io {

namespace detail {
#if SLI_HAVE_CHECKSUM_AVX2
uint64_t checksum64Avx2(const void* data, size_t size) noexcept;
#endif
#if SLI_HAVE_CHECKSUM_AVX512
uint64_t checksum64Avx512(const void* data, size_t size) noexcept;
#endif
}  // namespace detail

namespace {

uint64_t checksum64Library(const void* data, size_t size) noexcept { return XXH3_64bits(data, size); }

// Whether `fn` gives the library's bits on every length 0..600 (each of XXH3's size classes:
// 0, 1-3, 4-8, 9-16, 17-128, 129-240, and the long-input loop with its partial stripes) and on
// 64 KiB, from a fixed pseudo-random sample.
bool agreesWithLibrary(uint64_t (*fn)(const void*, size_t) noexcept) noexcept {
    static const std::array<uint8_t, 65536 + 64> sample = [] {
        std::array<uint8_t, 65536 + 64> s{};
        uint64_t x = 0x9e3779b97f4a7c15ull;
        for (auto& b : s) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b = static_cast<uint8_t>(x);
        }
        return s;
    }();
    for (size_t n = 0; n <= 600; ++n) {
        if (fn(sample.data() + n % 7, n) != XXH3_64bits(sample.data() + n % 7, n)) return false;
    }
    return fn(sample.data() + 3, 65536) == XXH3_64bits(sample.data() + 3, 65536);
}

// The implementations this build has and this CPU runs, the library first, then by speed.
// One fixed table (nothing allocated: checksum64 is noexcept and chooses from it).
struct Runnable {
    ChecksumImplementation impl[3];
    int count = 0;
};

const Runnable& runnable() noexcept {
    static const Runnable r = [] {
        Runnable t;
        t.impl[t.count++] = {"libxxhash", &checksum64Library};
#if SLI_HAVE_CHECKSUM_AVX2
        if (cpu::hasAvx2()) t.impl[t.count++] = {"avx2", &detail::checksum64Avx2};
#endif
#if SLI_HAVE_CHECKSUM_AVX512
        if (cpu::hasAvx512()) t.impl[t.count++] = {"avx512", &detail::checksum64Avx512};
#endif
        return t;
    }();
    return r;
}

// The fastest runnable one that SLI_ISA allows and that passes the self-test.
ChecksumImplementation choose() noexcept {
    const cpu::IsaCap cap = cpu::isaCapFromEnvironment();
    const Runnable& r = runnable();
    for (int i = r.count - 1; i > 0; --i) {
        const ChecksumImplementation& c = r.impl[i];
        const bool avx512 = std::string_view(c.name) == "avx512";
        if (cap == cpu::IsaCap::kScalar || (avx512 && cap != cpu::IsaCap::kAvx512)) continue;
        if (agreesWithLibrary(c.fn)) return c;
        SLI_ERROR("io", "the %s build of the xxh3 checksum disagrees with libxxhash in the start-up "
                  "self-test: not used", c.name);
    }
    return r.impl[0];
}

const ChecksumImplementation& chosen() noexcept {
    static const ChecksumImplementation c = choose();
    return c;
}

}  // namespace

uint64_t checksum64(const void* data, size_t size) noexcept { return chosen().fn(data, size); }

const char* checksumImplementation() noexcept { return chosen().name; }

std::vector<ChecksumImplementation> checksumImplementations() {
    const Runnable& r = runnable();
    return {r.impl, r.impl + r.count};
}

}  // namespace sli::io

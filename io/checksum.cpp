#include "io/checksum.h"

#include <xxhash.h>

#include <array>
#include <cstdint>

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
    static std::array<uint8_t, 65536 + 64> sample = [] {
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

// Fastest first; nothing allocated (checksum64 is noexcept).
ChecksumImplementation choose() noexcept {
    const cpu::IsaCap cap = cpu::isaCapFromEnvironment();
    struct Candidate {
        const char* name;
        uint64_t (*fn)(const void*, size_t) noexcept;
        bool usable;
    };
    const Candidate candidates[] = {
#if SLI_HAVE_CHECKSUM_AVX512
        {"avx512", &detail::checksum64Avx512, cap == cpu::IsaCap::kAvx512 && cpu::hasAvx512()},
#endif
#if SLI_HAVE_CHECKSUM_AVX2
        {"avx2", &detail::checksum64Avx2, cap != cpu::IsaCap::kScalar && cpu::hasAvx2()},
#endif
        {"libxxhash", &checksum64Library, true},
    };
    for (const Candidate& c : candidates) {
        if (!c.usable) continue;
        if (c.fn == &checksum64Library || agreesWithLibrary(c.fn)) return {c.name, c.fn};
        SLI_ERROR("io", "the %s build of the xxh3 checksum disagrees with libxxhash in the start-up "
                  "self-test: not used", c.name);
    }
    return {"libxxhash", &checksum64Library};
}

const ChecksumImplementation& chosen() noexcept {
    static const ChecksumImplementation c = choose();
    return c;
}

}  // namespace

uint64_t checksum64(const void* data, size_t size) noexcept { return chosen().fn(data, size); }

const char* checksumImplementation() noexcept { return chosen().name; }

std::vector<ChecksumImplementation> checksumImplementations() {
    std::vector<ChecksumImplementation> v{{"libxxhash", &checksum64Library}};
#if SLI_HAVE_CHECKSUM_AVX2
    if (cpu::hasAvx2()) v.push_back({"avx2", &detail::checksum64Avx2});
#endif
#if SLI_HAVE_CHECKSUM_AVX512
    if (cpu::hasAvx512()) v.push_back({"avx512", &detail::checksum64Avx512});
#endif
    return v;
}

}  // namespace sli::io

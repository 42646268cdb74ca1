#include "io/checksum.h"

#include <doctest/doctest.h>
#include <xxhash.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/core/cpu_features.h"

using namespace sli;

TEST_CASE("checksum64 is XXH3-64 with seed 0: the published values and the library's bits") {
    // XXH3-64 of the empty input with seed 0, as the xxHash reference lists it (and as the
    // library computes it); then a short string hashed by the library.
    CHECK(io::checksum64("", 0) == 0x2d06800538d394c2ull);
    CHECK(io::checksum64("xxhash", 6) == XXH3_64bits("xxhash", 6));
}

TEST_CASE("every checksum implementation gives the library's bits on every size class and alignment") {
    const auto impls = io::checksumImplementations();
    REQUIRE(!impls.empty());
    CHECK(std::string(impls.front().name) == "libxxhash");
    std::string names;
    for (const auto& i : impls) names += std::string(" ") + i.name;
    MESSAGE("checksum implementations:" << names << "; in use: " << std::string(io::checksumImplementation()));

    std::mt19937_64 rng(12345);
    std::vector<uint8_t> buf((4 << 20) + 129);
    for (auto& b : buf) b = static_cast<uint8_t>(rng());
    std::vector<size_t> sizes;
    for (size_t n = 0; n <= 2100; ++n) sizes.push_back(n);  // every short class, 1..2 stripes blocks
    for (size_t n : {4095, 4096, 4097, 65535, 65536, 65537, 1 << 20, (1 << 20) + 63, 4 << 20}) {
        sizes.push_back(n);
    }
    for (const auto& impl : impls) {
        CAPTURE(impl.name);
        for (size_t n : sizes) {
            for (size_t off : {size_t{0}, size_t{1}, size_t{63}}) {
                if (n > 4096 && off == 63) continue;  // the long sizes: two alignments are enough
                const uint64_t want = XXH3_64bits(buf.data() + off, n);
                if (impl.fn(buf.data() + off, n) != want) {
                    FAIL_CHECK(impl.name << " differs at size " << n << ", offset " << off);
                }
            }
        }
    }
    // Every byte counts: one bit flipped anywhere in a 1 MiB input changes every implementation's hash.
    for (const auto& impl : impls) {
        const uint64_t before = impl.fn(buf.data(), 1 << 20);
        for (size_t pos : {size_t{0}, size_t{1000}, size_t{(1 << 20) - 1}}) {
            buf[pos] ^= 0x10;
            CHECK_MESSAGE(impl.fn(buf.data(), 1 << 20) != before, impl.name << " at byte " << pos);
            buf[pos] ^= 0x10;
        }
    }
}

TEST_CASE("checksum64 uses the fastest implementation this CPU runs, unless SLI_ISA caps it") {
    const char* isa = std::getenv("SLI_ISA");
    const std::string cap = isa ? isa : "";
    const std::string used = io::checksumImplementation();
    const auto impls = io::checksumImplementations();
    const std::string fastest = impls.back().name;
    if (cap == "scalar") {
        CHECK(used == "libxxhash");
    } else if (cap == "avx2") {
        CHECK(used != "avx512");
    } else {
        CHECK(used == fastest);
    }
#if defined(__x86_64__) && SLI_TEST_EXPECT_AVX2_CHECKSUM
    // The build made an AVX2 variant: an AVX2 CPU must list it.
    if (cpu::hasAvx2()) {
        bool listed = false;
        for (const auto& i : impls) listed = listed || std::string(i.name) == "avx2";
        CHECK(listed);
    }
#endif
}

// Conversions are checked against hand-worked IEEE-754 bit patterns (not against another
// implementation), covering ties, subnormals, overflow, infinities and NaN; the FP8 decoders
// also against ml_dtypes on every byte (tests/golden/fp8_decode.txt, make_fp8_golden.py), and
// the MXFP4 element / scale decoders on every code (tests/golden/mxfp4_decode.txt,
// make_mxfp4_golden.py).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "sli/dtype.h"

using namespace sli;

namespace {
uint16_t h(uint32_t f32bits) { return f32ToF16(bitsFloat(f32bits)); }
uint16_t b(uint32_t f32bits) { return f32ToBf16(bitsFloat(f32bits)); }
}  // namespace

TEST_CASE("f32 to f16 rounds normal values to nearest even") {
    CHECK(h(0x3f800000) == 0x3c00);  // 1.0
    CHECK(h(0xc0000000) == 0xc000);  // -2.0
    CHECK(h(0x3f801000) == 0x3c00);  // 1 + 2^-11: tie, even is 0x3c00
    CHECK(h(0x3f803000) == 0x3c02);  // 1 + 3*2^-11: tie, even is 0x3c02
    CHECK(h(0x3f801001) == 0x3c01);  // just above the tie
    CHECK(h(0x477fe000) == 0x7bff);  // 65504, the largest finite f16
    CHECK(h(0x477fefff) == 0x7bff);  // just below 65520
}

TEST_CASE("f32 to f16 overflows to infinity at 65520") {
    CHECK(h(0x477ff000) == 0x7c00);
    CHECK(h(0xc77ff000) == 0xfc00);
    CHECK(h(0x7f7fffff) == 0x7c00);  // FLT_MAX
    CHECK(h(0x7f800000) == 0x7c00);
    CHECK(h(0xff800000) == 0xfc00);
}

TEST_CASE("f32 to f16 handles subnormals and signed zero") {
    CHECK(h(0x33800000) == 0x0001);  // 2^-24, smallest f16 subnormal
    CHECK(h(0x33000000) == 0x0000);  // 2^-25: tie between 0 and 1 ulp, rounds to even 0
    CHECK(h(0x33000001) == 0x0001);  // just above half an ulp
    CHECK(h(0x33c00000) == 0x0002);  // 1.5 ulp: tie, rounds to even 2
    CHECK(h(0x387fc000) == 0x03ff);  // largest subnormal
    CHECK(h(0x387fe000) == 0x0400);  // tie between largest subnormal and smallest normal
    CHECK(h(0x38800000) == 0x0400);  // 2^-14, smallest normal
    CHECK(h(0x00000001) == 0x0000);  // f32 subnormal underflows
    CHECK(h(0x80000000) == 0x8000);  // -0.0 keeps its sign
    CHECK(h(0xb3800000) == 0x8001);
}

TEST_CASE("f32 to f16 keeps NaN a quiet NaN") {
    CHECK(h(0x7fc00000) == 0x7e00);
    CHECK((h(0x7f800001) & 0x7e00) == 0x7e00);  // signalling NaN becomes quiet, not inf
    CHECK(h(0xffc00000) == 0xfe00);
}

TEST_CASE("f16 to f32 is exact for every class") {
    CHECK(floatBits(f16ToF32(0x3c00)) == 0x3f800000);
    CHECK(floatBits(f16ToF32(0x0001)) == 0x33800000);
    CHECK(floatBits(f16ToF32(0x03ff)) == 0x387fc000);
    CHECK(floatBits(f16ToF32(0x0400)) == 0x38800000);
    CHECK(floatBits(f16ToF32(0x7bff)) == 0x477fe000);
    CHECK(floatBits(f16ToF32(0x7c00)) == 0x7f800000);
    CHECK(floatBits(f16ToF32(0xfc00)) == 0xff800000);
    CHECK(floatBits(f16ToF32(0x8000)) == 0x80000000);
    CHECK(std::isnan(f16ToF32(0x7e00)));
}

TEST_CASE("every f16 value survives a round trip through f32") {
    for (uint32_t v = 0; v < 0x10000; ++v) {
        const auto x = static_cast<uint16_t>(v);
        const bool isNan = (x & 0x7c00) == 0x7c00 && (x & 0x3ff) != 0;
        if (isNan) {
            CHECK(std::isnan(f16ToF32(x)));
            continue;
        }
        REQUIRE(f32ToF16(f16ToF32(x)) == x);
    }
}

TEST_CASE("f32 to bf16 rounds to nearest even") {
    CHECK(b(0x3f800000) == 0x3f80);
    CHECK(b(0x3f808000) == 0x3f80);  // tie, even
    CHECK(b(0x3f818000) == 0x3f82);  // tie, even
    CHECK(b(0x3f808001) == 0x3f81);
    CHECK(b(0x7f7fffff) == 0x7f80);  // FLT_MAX rounds to inf
    CHECK(b(0x00008000) == 0x0000);  // subnormal tie to even zero
    CHECK(b(0x00018000) == 0x0002);  // subnormal tie to even
    CHECK(b(0x80000000) == 0x8000);
    CHECK(b(0xff800000) == 0xff80);
}

TEST_CASE("f32 to bf16 never turns a NaN into infinity") {
    CHECK(b(0x7fc00001) == 0x7fc0);
    CHECK(b(0x7f800001) == 0x7fc0);  // payload only in the low bits: must stay NaN
    CHECK(b(0xff800001) == 0xffc0);
    CHECK(floatBits(bf16ToF32(0x3f80)) == 0x3f800000);
}

TEST_CASE("dtype names round trip in all three spellings") {
    for (int i = 0; i < kDTypeCount; ++i) {
        const auto t = static_cast<DType>(i);
        CHECK(parseDType(dtypeSafetensorsName(t)) == t);
        CHECK(parseDType(dtypeName(t)) == t);
        CHECK(parseDType(dtypeTorchName(t)) == t);
    }
    CHECK(dtypeSize(DType::kBF16) == 2);
    CHECK(dtypeSize(DType::kF64) == 8);
    CHECK(dtypeSize(DType::kF8E4M3) == 1);
    CHECK_FALSE(parseDType("F17").has_value());
    CHECK_FALSE(parseDType("").has_value());
}

TEST_CASE("FP8 decodes: hand-worked values of both formats") {
    // E4M3 (fn): bias 7, 3 mantissa bits, no infinities
    CHECK(f8e4m3ToF32(0x38) == 1.0f);
    CHECK(f8e4m3ToF32(0x40) == 2.0f);
    CHECK(f8e4m3ToF32(0x3c) == 1.5f);
    CHECK(f8e4m3ToF32(0xb8) == -1.0f);
    CHECK(f8e4m3ToF32(0x7e) == 448.0f);            // max: 2^8 * 1.75
    CHECK(f8e4m3ToF32(0x08) == 0x1p-6f);           // min normal
    CHECK(f8e4m3ToF32(0x01) == 0x1p-9f);           // min subnormal
    CHECK(f8e4m3ToF32(0x07) == 7.0f * 0x1p-9f);    // max subnormal
    CHECK(floatBits(f8e4m3ToF32(0x80)) == 0x80000000u);  // -0
    CHECK(std::isnan(f8e4m3ToF32(0x7f)));
    CHECK(std::isnan(f8e4m3ToF32(0xff)));
    CHECK(f8e4m3ToF32(0x78) == 256.0f);            // S.1111.000 is a number, not infinity
    // E5M2: bias 15, 2 mantissa bits, IEEE-like
    CHECK(f8e5m2ToF32(0x3c) == 1.0f);
    CHECK(f8e5m2ToF32(0x7b) == 57344.0f);          // max: 2^15 * 1.75
    CHECK(f8e5m2ToF32(0x7c) == INFINITY);
    CHECK(f8e5m2ToF32(0xfc) == -INFINITY);
    CHECK(std::isnan(f8e5m2ToF32(0x7d)));
    CHECK(f8e5m2ToF32(0x04) == 0x1p-14f);          // min normal
    CHECK(f8e5m2ToF32(0x01) == 0x1p-16f);          // min subnormal
}

TEST_CASE("FP8 decodes match ml_dtypes on every byte") {
    const char* root = std::getenv("SLI_TEST_DATA");
    if (root == nullptr) {
        MESSAGE("SLI_TEST_DATA unset: golden FP8 table not checked");
        return;
    }
    const std::string path = std::string(root) + "/golden/fp8_decode.txt";
    std::FILE* f = std::fopen(path.c_str(), "r");
    REQUIRE_MESSAGE(f != nullptr, "cannot open " << path);
    char line[256];
    int rows = 0;
    while (std::fgets(line, sizeof line, f) != nullptr) {
        if (line[0] == '#') continue;
        unsigned b = 0, e4 = 0, e5 = 0;
        REQUIRE(std::sscanf(line, "%u %x %x", &b, &e4, &e5) == 3);
        CAPTURE(b);
        const auto byte = static_cast<uint8_t>(b);
        const float want4 = bitsFloat(e4), want5 = bitsFloat(e5);
        if (std::isnan(want4)) {
            CHECK(std::isnan(f8e4m3ToF32(byte)));
        } else {
            CHECK(floatBits(f8e4m3ToF32(byte)) == e4);
        }
        if (std::isnan(want5)) {
            CHECK(std::isnan(f8e5m2ToF32(byte)));
        } else {
            CHECK(floatBits(f8e5m2ToF32(byte)) == e5);
        }
        ++rows;
    }
    std::fclose(f);
    CHECK(rows == 256);
}

TEST_CASE("MXFP4 E2M1 elements and E8M0 scales: hand-worked values") {
    // E2M1: S EE M, bias 1; exponent 0 is subnormal (M * 0.5)
    CHECK(floatBits(e2m1ToF32(0x0)) == 0u);
    CHECK(e2m1ToF32(0x1) == 0.5f);   // 0 00 1
    CHECK(e2m1ToF32(0x2) == 1.0f);   // 0 01 0
    CHECK(e2m1ToF32(0x3) == 1.5f);   // 0 01 1
    CHECK(e2m1ToF32(0x5) == 3.0f);   // 0 10 1
    CHECK(e2m1ToF32(0x7) == 6.0f);   // 0 11 1: max
    CHECK(floatBits(e2m1ToF32(0x8)) == 0x80000000u);  // -0
    CHECK(e2m1ToF32(0xc) == -2.0f);  // 1 10 0
    CHECK(e2m1ToF32(0xf) == -6.0f);
    CHECK(e2m1ToF32(0xf7) == 6.0f);  // only the low 4 bits count
    // E8M0: 2^(b - 127)
    CHECK(e8m0ToF32(127) == 1.0f);
    CHECK(e8m0ToF32(128) == 2.0f);
    CHECK(e8m0ToF32(120) == 0x1p-7f);
    CHECK(e8m0ToF32(254) == 0x1p127f);
    CHECK(e8m0ToF32(1) == 0x1p-126f);  // min normal f32
    CHECK(e8m0ToF32(0) == 0x1p-127f);  // an f32 subnormal
    CHECK(std::isnan(e8m0ToF32(255)));
}

TEST_CASE("MXFP4 decodes match ml_dtypes on every element code and scale byte") {
    const char* root = std::getenv("SLI_TEST_DATA");
    REQUIRE_MESSAGE(root != nullptr, "SLI_TEST_DATA unset (meson test sets it)");
    const std::string path = std::string(root) + "/golden/mxfp4_decode.txt";
    std::FILE* f = std::fopen(path.c_str(), "r");
    REQUIRE_MESSAGE(f != nullptr, "cannot open " << path);
    static char line[65536];
    int elements = 0, scales = 0;
    while (std::fgets(line, sizeof line, f) != nullptr) {
        unsigned v = 0, bits = 0;
        if (std::sscanf(line, "e2m1 %u %x", &v, &bits) == 2) {
            CAPTURE(v);
            CHECK(floatBits(e2m1ToF32(static_cast<uint8_t>(v))) == bits);
            ++elements;
        } else if (std::sscanf(line, "e8m0 %u %x", &v, &bits) == 2) {
            CAPTURE(v);
            if (std::isnan(bitsFloat(bits))) {
                CHECK(std::isnan(e8m0ToF32(static_cast<uint8_t>(v))));
            } else {
                CHECK(floatBits(e8m0ToF32(static_cast<uint8_t>(v))) == bits);
            }
            ++scales;
        }
    }
    std::fclose(f);
    CHECK(elements == 16);
    CHECK(scales == 256);
}

// Element types and exact scalar conversions.
//
// DType names every element type the safetensors format knows (so any checkpoint can be
// described), plus the compute dtypes the engine produces (f16, bf16, f32).
//
// The conversions f32 -> f16 / bf16 round to nearest, ties to even, and handle subnormals,
// infinities and NaN exactly like IEEE-754 hardware (a NaN stays a quiet NaN with its sign).
// They are plain functions on integers and floats with no CPU-only types, so CUDA code can
// share them (SLI_HD marks them __host__ __device__ under nvcc). Thread-safe: no state.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#if defined(__CUDACC__)
#define SLI_HD __host__ __device__ __forceinline__
#else
#define SLI_HD inline
#endif

namespace sli {

enum class DType : uint8_t {
    kBool = 0,
    kU8,
    kI8,
    kF8E5M2,
    kF8E4M3,
    kI16,
    kU16,
    kF16,
    kBF16,
    kI32,
    kU32,
    kF32,
    kF64,
    kI64,
    kU64,
};

inline constexpr int kDTypeCount = 15;

// Bytes per element.
size_t dtypeSize(DType t) noexcept;
// The safetensors spelling: "F16", "BF16", "F32", "U8", ...
const char* dtypeSafetensorsName(DType t) noexcept;
// The short lowercase spelling used in configs and the CLI: "f16", "bf16", "f32", "u8", "i8", ...
const char* dtypeName(DType t) noexcept;
// The torch spelling bitsandbytes writes in quant_state JSON: "float16", "bfloat16", "float32",
// "uint8", "int8", ... ("float8_e4m3fn" for F8_E4M3).
const char* dtypeTorchName(DType t) noexcept;
// Parses any of the three spellings above (case-sensitive for safetensors names, which are
// upper case; the others lower case). std::nullopt when unknown.
std::optional<DType> parseDType(std::string_view s) noexcept;
// True for f16, bf16, f32, f64 and the two f8 formats.
bool dtypeIsFloat(DType t) noexcept;
// True for the dtypes dequantization can produce: f16, bf16, f32.
inline bool dtypeIsCompute(DType t) noexcept {
    return t == DType::kF16 || t == DType::kBF16 || t == DType::kF32;
}

SLI_HD uint32_t floatBits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
SLI_HD float bitsFloat(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// f32 -> IEEE binary16, round to nearest even.
SLI_HD uint16_t f32ToF16(float f) {
    const uint32_t x = floatBits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) {  // inf or NaN
        if (absx == 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u);
        // Keep the top mantissa bits, force quiet.
        return static_cast<uint16_t>(sign | 0x7e00u | ((absx >> 13) & 0x3ffu));
    }
    if (absx >= 0x477ff000u) {  // rounds to >= 65520 -> inf
        return static_cast<uint16_t>(sign | 0x7c00u);
    }
    if (absx < 0x38800000u) {  // below the smallest f16 normal (2^-14): subnormal or zero
        if (absx < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25 rounds to 0
        const uint32_t exp = absx >> 23;
        const uint32_t mant = (absx & 0x7fffffu) | 0x800000u;
        // value = mant * 2^(exp-150) and the f16 subnormal unit is 2^-24.
        const uint32_t shift = 126u - exp;
        uint32_t q = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1u);
        const uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) ++q;
        return static_cast<uint16_t>(sign | q);
    }
    // Normal: rebias exponent (127 -> 15) and round the 13 dropped bits.
    uint32_t r = absx - 0x38000000u;  // exponent - 112 in place
    const uint32_t rem = r & 0x1fffu;
    r >>= 13;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;  // carry may roll into the exponent
    return static_cast<uint16_t>(sign | r);
}

SLI_HD float f16ToF32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1fu) return bitsFloat(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        if (mant == 0) return bitsFloat(sign);
        // Subnormal: normalize.
        int e = -1;
        do {
            ++e;
            mant <<= 1;
        } while ((mant & 0x400u) == 0);
        mant &= 0x3ffu;
        return bitsFloat(sign | (static_cast<uint32_t>(112 - e) << 23) | (mant << 13));
    }
    return bitsFloat(sign | ((exp + 112u) << 23) | (mant << 13));
}

// f32 -> bfloat16, round to nearest even; NaN stays NaN (quiet), never rounds to inf.
SLI_HD uint16_t f32ToBf16(float f) {
    const uint32_t x = floatBits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
    const uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
    return static_cast<uint16_t>((x + rounding) >> 16);
}

SLI_HD float bf16ToF32(uint16_t b) { return bitsFloat(static_cast<uint32_t>(b) << 16); }

// FP8 (OCP 8-bit floating point) -> f32, exactly: every FP8 value is an f32.
// E4M3 ("fn", torch.float8_e4m3fn): bias 7, no infinities, S.1111.111 is NaN, max 448,
// subnormals m * 2^-9.
SLI_HD float f8e4m3ToF32(uint8_t b) {
    const uint32_t sign = static_cast<uint32_t>(b & 0x80u) << 24;
    const uint32_t exp = (b >> 3) & 0xfu;
    const uint32_t mant = b & 0x7u;
    if (exp == 0xfu && mant == 0x7u) return bitsFloat(sign | 0x7fc00000u);
    if (exp == 0) return bitsFloat(sign | floatBits(static_cast<float>(mant) * 0x1p-9f));
    return bitsFloat(sign | ((exp + 120u) << 23) | (mant << 20));
}

// E5M2 (torch.float8_e5m2): the top byte of an IEEE binary16 (infinities, NaNs, max 57344).
SLI_HD float f8e5m2ToF32(uint8_t b) { return f16ToF32(static_cast<uint16_t>(b << 8)); }

// MXFP4 (OCP Microscaling formats v1.0, as gpt-oss stores its MoE weights) -> f32, exactly.
// E2M1 element (the low 4 bits of `nibble`): sign, 2 exponent bits (bias 1), 1 mantissa bit;
// the values 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives (0b1000 is -0).
SLI_HD float e2m1ToF32(uint8_t nibble) {
    const uint32_t sign = static_cast<uint32_t>(nibble & 0x8u) << 28;
    const uint32_t exp = (nibble >> 1) & 0x3u;
    const uint32_t mant = nibble & 0x1u;
    if (exp == 0) return bitsFloat(sign | (mant != 0 ? 0x3f000000u : 0u));  // 0.5 or 0
    return bitsFloat(sign | ((exp + 126u) << 23) | (mant << 22));
}

// E8M0 scale: 2^(b - 127), no sign, no mantissa; 0xFF is NaN. b = 0 gives 2^-127, an f32
// subnormal.
SLI_HD float e8m0ToF32(uint8_t b) {
    if (b == 0xffu) return bitsFloat(0x7fc00000u);
    if (b == 0) return bitsFloat(0x00400000u);
    return bitsFloat(static_cast<uint32_t>(b) << 23);
}

}  // namespace sli

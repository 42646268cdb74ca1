#include "sli/dtype.h"

namespace sli {

namespace {
struct DTypeInfo {
    DType type;
    size_t size;
    const char* st;     // safetensors
    const char* shortName;
    const char* torch;
    bool isFloat;
};

constexpr DTypeInfo kInfo[kDTypeCount] = {
    {DType::kBool, 1, "BOOL", "bool", "bool", false},
    {DType::kU8, 1, "U8", "u8", "uint8", false},
    {DType::kI8, 1, "I8", "i8", "int8", false},
    {DType::kF8E5M2, 1, "F8_E5M2", "f8_e5m2", "float8_e5m2", true},
    {DType::kF8E4M3, 1, "F8_E4M3", "f8_e4m3", "float8_e4m3fn", true},
    {DType::kI16, 2, "I16", "i16", "int16", false},
    {DType::kU16, 2, "U16", "u16", "uint16", false},
    {DType::kF16, 2, "F16", "f16", "float16", true},
    {DType::kBF16, 2, "BF16", "bf16", "bfloat16", true},
    {DType::kI32, 4, "I32", "i32", "int32", false},
    {DType::kU32, 4, "U32", "u32", "uint32", false},
    {DType::kF32, 4, "F32", "f32", "float32", true},
    {DType::kF64, 8, "F64", "f64", "float64", true},
    {DType::kI64, 8, "I64", "i64", "int64", false},
    {DType::kU64, 8, "U64", "u64", "uint64", false},
};

const DTypeInfo& info(DType t) { return kInfo[static_cast<int>(t) % kDTypeCount]; }
}  // namespace

size_t dtypeSize(DType t) noexcept { return info(t).size; }
const char* dtypeSafetensorsName(DType t) noexcept { return info(t).st; }
const char* dtypeName(DType t) noexcept { return info(t).shortName; }
const char* dtypeTorchName(DType t) noexcept { return info(t).torch; }
bool dtypeIsFloat(DType t) noexcept { return info(t).isFloat; }

std::optional<DType> parseDType(std::string_view s) noexcept {
    for (const auto& i : kInfo) {
        if (s == i.st || s == i.shortName || s == i.torch) return i.type;
    }
    // Common aliases.
    if (s == "half" || s == "fp16") return DType::kF16;
    if (s == "float" || s == "fp32") return DType::kF32;
    if (s == "double" || s == "fp64") return DType::kF64;
    return std::nullopt;
}

}  // namespace sli

// A small, strict JSON document model used for configs, safetensors headers and cache
// metadata.
//
// Json is a value type (null, bool, number, string, array, object). Objects keep insertion
// order, so serializing reproduces the order in which keys were written (bitsandbytes'
// quant_state JSON depends on that). Numbers keep their source text, so 64-bit integers
// (safetensors offsets) and floats round-trip exactly.
//
// parseJson() accepts RFC 8259 JSON only: no comments, no trailing commas, no NaN, strings
// must be valid UTF-8, nesting depth at most 128, duplicate object keys rejected. Errors are
// InvalidArgument with a byte offset. dump() writes Python json.dumps' default style
// (", " and ": " separators, ASCII with \uXXXX escapes, floats as Python's repr).
// Not thread-safe for concurrent mutation; const use from many threads is fine.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sli/status.h"

namespace sli {

class Json {
public:
    enum class Type : uint8_t { kNull, kBool, kNumber, kString, kArray, kObject };
    using Array = std::vector<Json>;
    using Object = std::vector<std::pair<std::string, Json>>;

    Json() = default;
    static Json null() { return Json(); }
    static Json boolean(bool b);
    static Json number(double d);          // written as Python repr (shortest round trip)
    static Json integer(int64_t i);
    static Json unsignedInteger(uint64_t u);
    static Json string(std::string s);
    static Json array(Array a = {});
    static Json object(Object o = {});

    Type type() const noexcept { return type_; }
    bool isNull() const noexcept { return type_ == Type::kNull; }
    bool isBool() const noexcept { return type_ == Type::kBool; }
    bool isNumber() const noexcept { return type_ == Type::kNumber; }
    bool isString() const noexcept { return type_ == Type::kString; }
    bool isArray() const noexcept { return type_ == Type::kArray; }
    bool isObject() const noexcept { return type_ == Type::kObject; }
    // True for a number written without fraction or exponent.
    bool isInteger() const noexcept;
    static const char* typeName(Type t) noexcept;

    bool asBool() const noexcept { return bool_; }
    // A number's value (0 for other types); text beyond double's range reads as strtod does:
    // +-inf on overflow ("1e999"), +-0 on underflow.
    double asDouble() const noexcept;
    // Exact integer value; nullopt when not an integer or out of range.
    std::optional<int64_t> asInt64() const noexcept;
    std::optional<uint64_t> asUint64() const noexcept;
    const std::string& asString() const noexcept { return str_; }
    const Array& asArray() const noexcept { return *arr_; }
    Array& asArray() noexcept { return *arr_; }
    const Object& asObject() const noexcept { return *obj_; }
    Object& asObject() noexcept { return *obj_; }

    // Object lookup (nullptr when absent or not an object).
    const Json* find(std::string_view key) const noexcept;
    // Object insert-or-replace, keeping the first position of the key.
    Json& set(std::string key, Json value);
    void push(Json value);

    std::string dump() const;

    Json(const Json& o);
    Json& operator=(const Json& o);
    Json(Json&&) noexcept = default;
    Json& operator=(Json&&) noexcept = default;
    bool operator==(const Json& o) const;

private:
    friend class JsonParser;
    Type type_ = Type::kNull;
    bool bool_ = false;
    std::string str_;  // string value, or the number's text
    std::unique_ptr<Array> arr_;
    std::unique_ptr<Object> obj_;
};

Result<Json> parseJson(std::string_view text);
// Python repr() of a double: "0.1", "1e-05", "3.0", "inf" is not JSON and is never produced.
std::string pythonFloatRepr(double d);
// Appends `s` JSON-escaped (with quotes), non-ASCII as \uXXXX like Python's ensure_ascii.
void appendJsonString(std::string& out, std::string_view s);

}  // namespace sli

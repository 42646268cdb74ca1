#include "sli/json.h"

#include <locale.h>
#include <stdlib.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_set>

namespace sli {

Json Json::boolean(bool b) {
    Json j;
    j.type_ = Type::kBool;
    j.bool_ = b;
    return j;
}

Json Json::number(double d) {
    Json j;
    j.type_ = Type::kNumber;
    j.str_ = pythonFloatRepr(d);
    return j;
}

Json Json::integer(int64_t i) {
    Json j;
    j.type_ = Type::kNumber;
    j.str_ = std::to_string(i);
    return j;
}

Json Json::unsignedInteger(uint64_t u) {
    Json j;
    j.type_ = Type::kNumber;
    j.str_ = std::to_string(u);
    return j;
}

Json Json::string(std::string s) {
    Json j;
    j.type_ = Type::kString;
    j.str_ = std::move(s);
    return j;
}

Json Json::array(Array a) {
    Json j;
    j.type_ = Type::kArray;
    j.arr_ = std::make_unique<Array>(std::move(a));
    return j;
}

Json Json::object(Object o) {
    Json j;
    j.type_ = Type::kObject;
    j.obj_ = std::make_unique<Object>(std::move(o));
    return j;
}

Json::Json(const Json& o) : type_(o.type_), bool_(o.bool_), str_(o.str_) {
    if (o.arr_) arr_ = std::make_unique<Array>(*o.arr_);
    if (o.obj_) obj_ = std::make_unique<Object>(*o.obj_);
}

Json& Json::operator=(const Json& o) {
    if (this != &o) {
        Json tmp(o);
        *this = std::move(tmp);
    }
    return *this;
}

bool Json::operator==(const Json& o) const {
    if (type_ != o.type_) return false;
    switch (type_) {
        case Type::kNull: return true;
        case Type::kBool: return bool_ == o.bool_;
        case Type::kNumber: return str_ == o.str_ || asDouble() == o.asDouble();
        case Type::kString: return str_ == o.str_;
        case Type::kArray: return *arr_ == *o.arr_;
        case Type::kObject: return *obj_ == *o.obj_;
    }
    return false;
}

const char* Json::typeName(Type t) noexcept {
    switch (t) {
        case Type::kNull: return "null";
        case Type::kBool: return "boolean";
        case Type::kNumber: return "number";
        case Type::kString: return "string";
        case Type::kArray: return "array";
        case Type::kObject: return "object";
    }
    return "?";
}

bool Json::isInteger() const noexcept {
    return type_ == Type::kNumber && str_.find_first_of(".eE") == std::string::npos;
}

double Json::asDouble() const noexcept {
    if (type_ != Type::kNumber) return 0.0;
    double d = 0.0;
    const auto [p, ec] = std::from_chars(str_.data(), str_.data() + str_.size(), d);
    if (ec == std::errc::result_out_of_range) {
        // from_chars leaves `d` untouched (0) for text beyond double's range; "1e999" must not
        // read as 0 (a threshold or scale silently zeroed). strtod in the C locale gives the
        // IEEE answer: +-inf on overflow (which range checks then refuse), +-0 on underflow.
        static const locale_t cLocale = ::newlocale(LC_NUMERIC_MASK, "C", static_cast<locale_t>(0));
        return cLocale != static_cast<locale_t>(0) ? ::strtod_l(str_.c_str(), nullptr, cLocale)
                                                   : std::strtod(str_.c_str(), nullptr);
    }
    return d;
}

std::optional<int64_t> Json::asInt64() const noexcept {
    if (!isInteger()) return std::nullopt;
    int64_t v = 0;
    auto [p, ec] = std::from_chars(str_.data(), str_.data() + str_.size(), v);
    if (ec != std::errc() || p != str_.data() + str_.size()) return std::nullopt;
    return v;
}

std::optional<uint64_t> Json::asUint64() const noexcept {
    if (!isInteger() || (!str_.empty() && str_[0] == '-')) return std::nullopt;
    uint64_t v = 0;
    auto [p, ec] = std::from_chars(str_.data(), str_.data() + str_.size(), v);
    if (ec != std::errc() || p != str_.data() + str_.size()) return std::nullopt;
    return v;
}

const Json* Json::find(std::string_view key) const noexcept {
    if (type_ != Type::kObject) return nullptr;
    for (const auto& [k, v] : *obj_) {
        if (k == key) return &v;
    }
    return nullptr;
}

Json& Json::set(std::string key, Json value) {
    if (type_ != Type::kObject) *this = object();
    for (auto& [k, v] : *obj_) {
        if (k == key) {
            v = std::move(value);
            return v;
        }
    }
    obj_->emplace_back(std::move(key), std::move(value));
    return obj_->back().second;
}

void Json::push(Json value) {
    if (type_ != Type::kArray) *this = array();
    arr_->push_back(std::move(value));
}

std::string pythonFloatRepr(double d) {
    if (std::isnan(d)) return "NaN";
    if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
    if (d == 0.0) return std::signbit(d) ? "-0.0" : "0.0";
    // Shortest round-trip digits, in scientific form: "d.ddde[+-]xx".
    char sci[64];
    auto res = std::to_chars(sci, sci + sizeof sci, d, std::chars_format::scientific);
    std::string s(sci, res.ptr);
    const bool neg = s[0] == '-';
    if (neg) s.erase(0, 1);
    const size_t e = s.find('e');
    std::string mant = s.substr(0, e);
    const int exp = std::atoi(s.c_str() + e + 1);
    std::string digits;
    for (char c : mant) {
        if (c != '.') digits += c;
    }
    std::string out;
    // Python's repr switches to exponent form when exp < -4 or exp >= 16.
    if (exp < -4 || exp >= 16) {
        out = digits.substr(0, 1);
        if (digits.size() > 1) {
            out += '.';  // (two appends, not "." + ...: GCC 12 -Wrestrict false positive)
            out.append(digits, 1);
        }
        char eb[16];
        std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
        out += eb;
    } else if (exp < 0) {
        out = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    } else {
        const size_t intLen = static_cast<size_t>(exp) + 1;
        if (digits.size() <= intLen) {
            out = digits + std::string(intLen - digits.size(), '0') + ".0";
        } else {
            out = digits.substr(0, intLen) + "." + digits.substr(intLen);
        }
    }
    return neg ? "-" + out : out;
}

void appendJsonString(std::string& out, std::string_view s) {
    out += '"';
    size_t i = 0;
    while (i < s.size()) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            switch (c) {
                case '"': out += "\\\""; break;
                case '\\': out += "\\\\"; break;
                case '\n': out += "\\n"; break;
                case '\r': out += "\\r"; break;
                case '\t': out += "\\t"; break;
                case '\b': out += "\\b"; break;
                case '\f': out += "\\f"; break;
                default:
                    if (c < 0x20) {
                        char b[8];
                        std::snprintf(b, sizeof b, "\\u%04x", c);
                        out += b;
                    } else {
                        out += static_cast<char>(c);
                    }
            }
            ++i;
            continue;
        }
        // Decode one UTF-8 sequence (the strings we hold were validated on parse).
        uint32_t cp = 0;
        int len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        cp = c & (0xff >> (len + 1));
        for (int k = 1; k < len && i + k < s.size(); ++k) {
            cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
        }
        i += len;
        char b[16];
        if (cp >= 0x10000) {
            cp -= 0x10000;
            std::snprintf(b, sizeof b, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
        } else {
            std::snprintf(b, sizeof b, "\\u%04x", cp);
        }
        out += b;
    }
    out += '"';
}

namespace {
void dumpTo(const Json& j, std::string& out) {
    switch (j.type()) {
        case Json::Type::kNull: out += "null"; break;
        case Json::Type::kBool: out += j.asBool() ? "true" : "false"; break;
        case Json::Type::kNumber: out += j.asString(); break;
        case Json::Type::kString: appendJsonString(out, j.asString()); break;
        case Json::Type::kArray: {
            out += '[';
            bool first = true;
            for (const auto& v : j.asArray()) {
                if (!first) out += ", ";
                first = false;
                dumpTo(v, out);
            }
            out += ']';
            break;
        }
        case Json::Type::kObject: {
            out += '{';
            bool first = true;
            for (const auto& [k, v] : j.asObject()) {
                if (!first) out += ", ";
                first = false;
                appendJsonString(out, k);
                out += ": ";
                dumpTo(v, out);
            }
            out += '}';
            break;
        }
    }
}
}  // namespace

std::string Json::dump() const {
    std::string out;
    dumpTo(*this, out);
    return out;
}

class JsonParser {
public:
    explicit JsonParser(std::string_view t) : t_(t) {}

    Result<Json> parseDocument() {
        skipWs();
        Json v;
        SLI_RETURN_IF_ERROR(parseValue(v, 0));
        skipWs();
        if (p_ != t_.size()) return fail("trailing characters after the JSON value");
        return v;
    }

private:
    static constexpr int kMaxDepth = 128;

    Status fail(const std::string& what) const {
        return Status::invalidArgument("invalid JSON at byte " + std::to_string(p_) + ": " + what);
    }
    void skipWs() {
        while (p_ < t_.size() && (t_[p_] == ' ' || t_[p_] == '\t' || t_[p_] == '\n' || t_[p_] == '\r')) ++p_;
    }
    bool literal(std::string_view w) {
        if (t_.substr(p_, w.size()) == w) {
            p_ += w.size();
            return true;
        }
        return false;
    }

    Status parseValue(Json& out, int depth) {
        if (depth > kMaxDepth) return fail("nesting deeper than 128");
        if (p_ >= t_.size()) return fail("unexpected end of input");
        const char c = t_[p_];
        if (c == '{') return parseObject(out, depth + 1);
        if (c == '[') return parseArray(out, depth + 1);
        if (c == '"') {
            std::string s;
            SLI_RETURN_IF_ERROR(parseString(s));
            out = Json::string(std::move(s));
            return Status();
        }
        if (literal("true")) { out = Json::boolean(true); return Status(); }
        if (literal("false")) { out = Json::boolean(false); return Status(); }
        if (literal("null")) { out = Json(); return Status(); }
        if (c == '-' || (c >= '0' && c <= '9')) return parseNumber(out);
        return fail(std::string("unexpected character '") + c + "'");
    }

    Status parseNumber(Json& out) {
        const size_t start = p_;
        if (t_[p_] == '-') ++p_;
        if (p_ >= t_.size()) return fail("truncated number");
        if (t_[p_] == '0') {
            ++p_;
        } else if (t_[p_] >= '1' && t_[p_] <= '9') {
            while (p_ < t_.size() && std::isdigit(static_cast<unsigned char>(t_[p_]))) ++p_;
        } else {
            return fail("malformed number");
        }
        if (p_ < t_.size() && t_[p_] == '.') {
            ++p_;
            if (p_ >= t_.size() || !std::isdigit(static_cast<unsigned char>(t_[p_]))) return fail("malformed fraction");
            while (p_ < t_.size() && std::isdigit(static_cast<unsigned char>(t_[p_]))) ++p_;
        }
        if (p_ < t_.size() && (t_[p_] == 'e' || t_[p_] == 'E')) {
            ++p_;
            if (p_ < t_.size() && (t_[p_] == '+' || t_[p_] == '-')) ++p_;
            if (p_ >= t_.size() || !std::isdigit(static_cast<unsigned char>(t_[p_]))) return fail("malformed exponent");
            while (p_ < t_.size() && std::isdigit(static_cast<unsigned char>(t_[p_]))) ++p_;
        }
        out = Json();
        out.type_ = Json::Type::kNumber;
        out.str_ = std::string(t_.substr(start, p_ - start));
        return Status();
    }

    Status parseHex4(uint32_t& v) {
        if (p_ + 4 > t_.size()) return fail("truncated \\u escape");
        v = 0;
        for (int i = 0; i < 4; ++i) {
            const char c = t_[p_++];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
            else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= static_cast<uint32_t>(c - 'A' + 10);
            else return fail("bad hex digit in \\u escape");
        }
        return Status();
    }

    static void appendUtf8(std::string& s, uint32_t cp) {
        if (cp < 0x80) {
            s += static_cast<char>(cp);
        } else if (cp < 0x800) {
            s += static_cast<char>(0xc0 | (cp >> 6));
            s += static_cast<char>(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            s += static_cast<char>(0xe0 | (cp >> 12));
            s += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
            s += static_cast<char>(0x80 | (cp & 0x3f));
        } else {
            s += static_cast<char>(0xf0 | (cp >> 18));
            s += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
            s += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
            s += static_cast<char>(0x80 | (cp & 0x3f));
        }
    }

    Status parseString(std::string& s) {
        ++p_;  // opening quote
        while (true) {
            if (p_ >= t_.size()) return fail("unterminated string");
            const unsigned char c = static_cast<unsigned char>(t_[p_]);
            if (c == '"') {
                ++p_;
                return Status();
            }
            if (c < 0x20) return fail("control character in string");
            if (c == '\\') {
                ++p_;
                if (p_ >= t_.size()) return fail("unterminated escape");
                const char e = t_[p_++];
                switch (e) {
                    case '"': s += '"'; break;
                    case '\\': s += '\\'; break;
                    case '/': s += '/'; break;
                    case 'b': s += '\b'; break;
                    case 'f': s += '\f'; break;
                    case 'n': s += '\n'; break;
                    case 'r': s += '\r'; break;
                    case 't': s += '\t'; break;
                    case 'u': {
                        uint32_t cp = 0;
                        SLI_RETURN_IF_ERROR(parseHex4(cp));
                        if (cp >= 0xd800 && cp < 0xdc00) {
                            uint32_t lo = 0;
                            if (!(p_ + 2 <= t_.size() && t_[p_] == '\\' && t_[p_ + 1] == 'u')) return fail("unpaired surrogate");
                            p_ += 2;
                            SLI_RETURN_IF_ERROR(parseHex4(lo));
                            if (lo < 0xdc00 || lo >= 0xe000) return fail("unpaired surrogate");
                            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                        } else if (cp >= 0xdc00 && cp < 0xe000) {
                            return fail("unpaired surrogate");
                        }
                        appendUtf8(s, cp);
                        break;
                    }
                    default: return fail("bad escape");
                }
                continue;
            }
            if (c < 0x80) {
                s += static_cast<char>(c);
                ++p_;
                continue;
            }
            // Validate one UTF-8 sequence (no overlongs, no surrogates, <= U+10FFFF).
            int len = 0;
            uint32_t cp = 0;
            if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
            else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
            else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
            else return fail("invalid UTF-8");
            if (p_ + len > t_.size()) return fail("truncated UTF-8");
            for (int k = 1; k < len; ++k) {
                const unsigned char cc = static_cast<unsigned char>(t_[p_ + k]);
                if ((cc & 0xc0) != 0x80) return fail("invalid UTF-8");
                cp = (cp << 6) | (cc & 0x3f);
            }
            if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp < 0xe000))) ||
                (len == 4 && (cp < 0x10000 || cp > 0x10ffff))) {
                return fail("invalid UTF-8");
            }
            s.append(t_.substr(p_, len));
            p_ += len;
        }
    }

    Status parseArray(Json& out, int depth) {
        ++p_;
        out = Json::array();
        skipWs();
        if (p_ < t_.size() && t_[p_] == ']') {
            ++p_;
            return Status();
        }
        while (true) {
            skipWs();
            Json v;
            SLI_RETURN_IF_ERROR(parseValue(v, depth));
            out.asArray().push_back(std::move(v));
            skipWs();
            if (p_ >= t_.size()) return fail("unterminated array");
            if (t_[p_] == ',') { ++p_; continue; }
            if (t_[p_] == ']') { ++p_; return Status(); }
            return fail("expected ',' or ']'");
        }
    }

    Status parseObject(Json& out, int depth) {
        ++p_;
        out = Json::object();
        skipWs();
        if (p_ < t_.size() && t_[p_] == '}') {
            ++p_;
            return Status();
        }
        std::unordered_set<std::string> seen;  // duplicate detection without quadratic scans
        while (true) {
            skipWs();
            if (p_ >= t_.size() || t_[p_] != '"') return fail("expected a string key");
            std::string key;
            SLI_RETURN_IF_ERROR(parseString(key));
            if (!seen.insert(key).second) return fail("duplicate key \"" + key + "\"");
            skipWs();
            if (p_ >= t_.size() || t_[p_] != ':') return fail("expected ':'");
            ++p_;
            skipWs();
            Json v;
            SLI_RETURN_IF_ERROR(parseValue(v, depth));
            out.asObject().emplace_back(std::move(key), std::move(v));
            skipWs();
            if (p_ >= t_.size()) return fail("unterminated object");
            if (t_[p_] == ',') { ++p_; continue; }
            if (t_[p_] == '}') { ++p_; return Status(); }
            return fail("expected ',' or '}'");
        }
    }

    std::string_view t_;
    size_t p_ = 0;
};

Result<Json> parseJson(std::string_view text) { return JsonParser(text).parseDocument(); }

}  // namespace sli

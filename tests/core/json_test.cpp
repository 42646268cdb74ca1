#include <doctest/doctest.h>

#include "sli/json.h"

using namespace sli;

TEST_CASE("parses a safetensors-style header and keeps key order") {
    auto r = parseJson(R"({"b": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 12]},
                          "a": {"dtype": "F32", "shape": [], "data_offsets": [12, 16]},
                          "__metadata__": {"format": "pt"}})");
    REQUIRE(r.isOk());
    const Json& j = *r;
    REQUIRE(j.isObject());
    CHECK(j.asObject()[0].first == "b");
    CHECK(j.asObject()[1].first == "a");
    CHECK(j.find("b")->find("shape")->asArray()[1].asInt64() == 3);
    CHECK(j.find("a")->find("shape")->asArray().empty());
}

TEST_CASE("64-bit integers are exact") {
    auto r = parseJson("[18446744073709551615, -9223372036854775808, 9007199254740993]");
    REQUIRE(r.isOk());
    CHECK(r->asArray()[0].asUint64() == 18446744073709551615ull);
    CHECK(r->asArray()[1].asInt64() == INT64_MIN);
    CHECK(r->asArray()[2].asInt64() == 9007199254740993ll);
    CHECK_FALSE(r->asArray()[0].asInt64().has_value());
    CHECK_FALSE(r->asArray()[1].asUint64().has_value());
}

TEST_CASE("rejects malformed documents with a byte offset") {
    const char* bad[] = {
        "",           "{",         "[1,]",        "{\"a\":1,}", "{'a':1}",   "[01]",
        "[1.]",       "[.5]",      "[1e]",        "NaN",        "[Infinity]", "{\"a\" 1}",
        "\"\\x\"",    "\"abc",     "[1] x",       "{\"a\":1,\"a\":2}", "\"\\ud800\"",
        "\"\xff\"",   "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "[\"a\tb\"]", "tru",
    };
    for (const char* t : bad) {
        auto r = parseJson(t);
        CHECK_MESSAGE(!r.isOk(), "accepted: " << t);
        if (!r.isOk()) {
            CHECK(r.status().isInvalidArgument());
            CHECK(r.status().message().find("at byte") != std::string::npos);
        }
    }
}

TEST_CASE("rejects nesting deeper than 128 levels") {
    std::string deep(200, '[');
    deep += std::string(200, ']');
    CHECK_FALSE(parseJson(deep).isOk());
    std::string ok(100, '[');
    ok += std::string(100, ']');
    CHECK(parseJson(ok).isOk());
}

TEST_CASE("dump matches Python json.dumps defaults") {
    Json j = Json::object();
    j.set("quant_type", Json::string("nf4"));
    j.set("blocksize", Json::integer(64));
    j.set("dtype", Json::string("bfloat16"));
    Json shape = Json::array();
    shape.push(Json::integer(4096));
    shape.push(Json::integer(11008));
    j.set("shape", shape);
    j.set("nested_blocksize", Json::integer(256));
    j.set("nested_dtype", Json::string("float32"));
    j.set("nested_offset", Json::number(0.03412339836359024));
    // The spec's example, byte for byte (173 bytes).
    const std::string want =
        "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [4096, "
        "11008], \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": "
        "0.03412339836359024}";
    CHECK(j.dump() == want);
    CHECK(j.dump().size() == 173);
}

TEST_CASE("floats are written as Python's repr") {
    CHECK(pythonFloatRepr(6.0) == "6.0");
    CHECK(pythonFloatRepr(0.1) == "0.1");
    CHECK(pythonFloatRepr(1e-05) == "1e-05");
    CHECK(pythonFloatRepr(0.0001) == "0.0001");
    CHECK(pythonFloatRepr(1e16) == "1e+16");
    CHECK(pythonFloatRepr(123456789012345.0) == "123456789012345.0");
    CHECK(pythonFloatRepr(-2.5) == "-2.5");
    CHECK(pythonFloatRepr(1.5e-07) == "1.5e-07");
    CHECK(pythonFloatRepr(-0.0) == "-0.0");
}

TEST_CASE("strings escape control and non-ASCII characters like ensure_ascii") {
    Json s = Json::string("a\"b\\c\n\x01\xc3\xa9\xf0\x9f\x98\x80");
    CHECK(s.dump() == "\"a\\\"b\\\\c\\n\\u0001\\u00e9\\ud83d\\ude00\"");
    auto back = parseJson(s.dump());
    REQUIRE(back.isOk());
    CHECK(back->asString() == s.asString());
}

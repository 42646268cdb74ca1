#include "sli/safetensors.h"

#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "io/file.h"
#include "io_test_util.h"

using namespace sli;
using sli::testing::TempDir;

namespace {

std::vector<uint8_t> stFile(const std::string& header, size_t dataBytes, uint64_t lenOverride = 0,
                            bool useOverride = false) {
    std::vector<uint8_t> b;
    b.reserve(8 + header.size() + dataBytes);  // (also quiets a GCC 12 -Warray-bounds false positive)
    b.resize(8);
    const uint64_t n = useOverride ? lenOverride : header.size();
    for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(n >> (8 * i));
    b.insert(b.end(), header.begin(), header.end());
    for (size_t i = 0; i < dataBytes; ++i) b.push_back(static_cast<uint8_t>(i * 7 + 1));
    return b;
}

void put(const std::string& path, const std::vector<uint8_t>& b) {
    REQUIRE(io::atomicWriteFile(path, b).isOk());
}

struct BadCase {
    const char* what;
    std::vector<uint8_t> bytes;
    const char* rule;  // a phrase the message must contain
};

const std::string kOne = R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})";

std::vector<BadCase> badCases() {
    std::vector<BadCase> c;
    c.push_back({"zero-length file", {}, "shorter than the 8-byte header length"});
    c.push_back({"five-byte file", {1, 0, 0, 0, 0}, "shorter than the 8-byte header length"});
    c.push_back({"header length above the limit", stFile(kOne, 8, 100'000'001, true), "exceeds the limit"});
    c.push_back({"header length past the end", stFile(kOne, 8, 4096, true), "past the end of the file"});
    c.push_back({"empty header", stFile("", 0), "header is empty"});
    c.push_back({"invalid UTF-8", stFile("{\"\xff\": 1}", 0), "not valid UTF-8"});
    c.push_back({"header not starting with a brace", stFile("[1, 2]", 0), "does not start with '{'"});
    c.push_back({"invalid JSON", stFile(R"({"a": 1,})", 0), "not valid JSON"});
    c.push_back({"duplicate tensor names",
                 stFile(R"({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})", 2),
                 "not valid JSON"});
    c.push_back({"tensor entry not an object", stFile(R"({"a": [1]})", 0), "entry is not an object"});
    c.push_back({"missing dtype", stFile(R"({"a": {"shape": [2], "data_offsets": [0, 8]}})", 8), "missing \"dtype\""});
    c.push_back({"dtype not a string", stFile(R"({"a": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}})", 8), "\"dtype\" is not a string"});
    c.push_back({"unknown dtype", stFile(R"({"a": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}})", 1), "unknown dtype"});
    c.push_back({"lower-case dtype", stFile(R"({"a": {"dtype": "f32", "shape": [2], "data_offsets": [0, 8]}})", 8), "unknown dtype"});
    c.push_back({"missing shape", stFile(R"({"a": {"dtype": "F32", "data_offsets": [0, 8]}})", 8), "missing \"shape\""});
    c.push_back({"shape not an array", stFile(R"({"a": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}})", 8), "\"shape\" is not an array"});
    c.push_back({"negative dimension", stFile(R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8), "non-negative integer"});
    c.push_back({"fractional dimension", stFile(R"({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 8]}})", 8), "non-negative integer"});
    c.push_back({"missing data_offsets", stFile(R"({"a": {"dtype": "F32", "shape": [2]}})", 8), "missing \"data_offsets\""});
    c.push_back({"three data_offsets", stFile(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}})", 8), "array of two integers"});
    c.push_back({"negative offset", stFile(R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [-1, 0]}})", 0), "non-negative integers"});
    c.push_back({"begin after end", stFile(R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}})", 8), "is after end"});
    c.push_back({"size differs from numel x itemsize", stFile(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8), "needs 12"});
    c.push_back({"element count overflow",
                 stFile(R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})", 8), "overflows"});
    c.push_back({"byte size overflow",
                 stFile(R"({"a": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 8]}})", 8), "overflows"});
    c.push_back({"hole between tensors",
                 stFile(R"({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}, "b": {"dtype": "U8", "shape": [2], "data_offsets": [3, 5]}})", 5), "a hole"});
    c.push_back({"first tensor not at offset 0", stFile(R"({"a": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}})", 4), "a hole"});
    c.push_back({"overlapping tensors",
                 stFile(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}})", 4), "overlapping"});
    c.push_back({"bytes after the last tensor", stFile(kOne, 9), "must end at the end of the file"});
    c.push_back({"data region truncated", stFile(kOne, 5), "truncated"});
    c.push_back({"__metadata__ not an object", stFile(R"({"__metadata__": [1]})", 0), "__metadata__ is not an object"});
    c.push_back({"__metadata__ value not a string", stFile(R"({"__metadata__": {"format": 1}})", 0), "not a string"});
    c.push_back({"__metadata__ a string", stFile(R"({"__metadata__": "pt"})", 0), "__metadata__ is not an object"});
    c.push_back({"__metadata__ a number", stFile(R"({"__metadata__": 0})", 0), "__metadata__ is not an object"});
    return c;
}

}  // namespace

TEST_CASE("every broken safetensors rule is refused with a message naming file and rule") {
    TempDir dir;
    int i = 0;
    const auto cases = badCases();
    CHECK(cases.size() >= 20);
    for (const auto& c : cases) {
        const std::string path = dir.file("bad" + std::to_string(i++) + ".safetensors");
        put(path, c.bytes);
        auto r = SafetensorsFile::open(path);
        INFO(c.what);
        REQUIRE_FALSE(r.isOk());
        const std::string msg = r.status().message();
        INFO(msg);
        CHECK(msg.find(path) != std::string::npos);
        CHECK(msg.find(c.rule) != std::string::npos);
        // The in-memory parser agrees with the file reader.
        CHECK_FALSE(parseSafetensorsHeader(c.bytes, c.bytes.size(), path).isOk());
    }
}

TEST_CASE("a valid file with unaligned data and metadata is read exactly") {
    TempDir dir;
    // The header is padded so the data region starts at an odd offset.
    std::string h = R"({"__metadata__": {"format": "pt"}, "b": {"dtype": "F16", "shape": [3], "data_offsets": [4, 10]}, "a": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}, "e": {"dtype": "F32", "shape": [0, 5], "data_offsets": [10, 10]}})";
    while ((8 + h.size()) % 8 != 3) h += " ";
    const auto bytes = stFile(h, 10);
    const std::string path = dir.file("ok.safetensors");
    put(path, bytes);
    auto f = SafetensorsFile::open(path);
    REQUIRE(f.isOk());
    CHECK(f->header().dataStart % 8 != 0);
    REQUIRE(f->header().tensors.size() == 3);
    CHECK(f->header().tensors[0].name == "a");  // offset order
    CHECK(f->header().tensors[1].name == "b");
    CHECK(f->header().metadata.size() == 1);
    CHECK(f->header().metadata[0].second == "pt");
    const auto* b = f->header().find("b");
    REQUIRE(b != nullptr);
    std::vector<uint8_t> out(6);
    REQUIRE(f->readTensor(*b, out).isOk());
    CHECK(std::memcmp(out.data(), bytes.data() + f->header().dataStart + 4, 6) == 0);
    std::vector<uint8_t> wrong(5);
    CHECK(f->readTensor(*b, wrong).isInvalidArgument());
}

TEST_CASE("a null __metadata__ reads as no metadata") {
    TempDir dir;
    const std::string h =
        R"({"__metadata__": null, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})";
    const auto bytes = stFile(h, 8);
    const std::string path = dir.file("null-metadata.safetensors");
    put(path, bytes);
    auto f = SafetensorsFile::open(path);
    REQUIRE(f.isOk());
    CHECK(f->header().metadata.empty());
    REQUIRE(f->header().tensors.size() == 1);
    CHECK(f->header().tensors[0].name == "a");
    auto parsed = parseSafetensorsHeader(bytes, bytes.size(), path);
    REQUIRE(parsed.isOk());
    CHECK(parsed->metadata.empty());
    std::vector<uint8_t> out(8);
    REQUIRE(f->readTensor(f->header().tensors[0], out).isOk());
    CHECK(std::memcmp(out.data(), bytes.data() + f->header().dataStart, 8) == 0);
}

TEST_CASE("the writer produces files the reader accepts, contents intact") {
    TempDir dir;
    std::vector<float> a = {1.0f, -2.5f, 3.25f};
    std::vector<uint8_t> b = {1, 2, 3, 4, 5};
    const std::string path = dir.file("w.safetensors");
    REQUIRE(writeSafetensors(path,
                             {{"x.weight", DType::kF32, {3}, std::span(reinterpret_cast<const uint8_t*>(a.data()), 12)},
                              {"y", DType::kU8, {5, 1}, b},
                              {"empty", DType::kF16, {0}, {}}},
                             {{"format", "pt"}})
                .isOk());
    auto f = SafetensorsFile::open(path);
    REQUIRE(f.isOk());
    CHECK(f->header().headerLength % 8 == 0);
    std::vector<uint8_t> out(5);
    REQUIRE(f->readTensor(*f->header().find("y"), out).isOk());
    CHECK(out == b);
    std::vector<float> fa(3);
    REQUIRE(f->readTensor(*f->header().find("x.weight"),
                          std::span(reinterpret_cast<uint8_t*>(fa.data()), 12)).isOk());
    CHECK(fa == a);
}

TEST_CASE("an unfinished writer leaves nothing behind") {
    TempDir dir;
    const std::string path = dir.file("u.safetensors");
    {
        auto w = SafetensorsWriter::create(path, {{"a", DType::kU8, {4}}});
        REQUIRE(w.isOk());
        std::vector<uint8_t> two = {1, 2};
        REQUIRE(w->append(two).isOk());
        CHECK(w->finish().isInvalidArgument());
    }
    CHECK_FALSE(io::pathExists(path));
    CHECK(io::listDirectory(dir.path())->empty());
}

namespace {
void writeShard(const std::string& path, const std::vector<std::string>& names) {
    std::vector<float> v = {1, 2, 3, 4};
    std::vector<SafetensorsInput> in;
    for (const auto& n : names) {
        in.push_back({n, DType::kF32, {4}, std::span(reinterpret_cast<const uint8_t*>(v.data()), 16)});
    }
    REQUIRE(writeSafetensors(path, in).isOk());
}
void writeText(const std::string& path, const std::string& s) {
    REQUIRE(io::atomicWriteFile(path, std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size())).isOk());
}
}  // namespace

TEST_CASE("a sharded checkpoint is read as one model through its index") {
    TempDir dir;
    writeShard(dir.file("model-00001-of-00002.safetensors"), {"a", "b"});
    writeShard(dir.file("model-00002-of-00002.safetensors"), {"c"});
    writeText(dir.file("model.safetensors.index.json"),
              R"({"metadata": {"total_size": 48}, "weight_map": {"a": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}})");
    auto m = SafetensorsModel::open(dir.path());
    REQUIRE(m.isOk());
    REQUIRE(m->tensors().size() == 3);
    CHECK(m->shards().size() == 2);
    CHECK(m->find("c") != nullptr);
    CHECK(m->find("c")->shard == 1);
    CHECK(m->totalTensorBytes() == 48);
    CHECK(m->fingerprint().size() == 16);
    auto again = SafetensorsModel::open(dir.file("model.safetensors.index.json"));
    REQUIRE(again.isOk());
    CHECK(again->fingerprint() == m->fingerprint());
}

TEST_CASE("the fingerprint changes with a tensor's shape or the metadata, not with a reopen") {
    TempDir dir;
    std::vector<float> v(8, 1.0f);
    const auto bytes = std::span(reinterpret_cast<const uint8_t*>(v.data()), v.size() * 4);
    auto fingerprintOf = [&](std::vector<int64_t> shape,
                             std::vector<std::pair<std::string, std::string>> md) {
        const std::string path = dir.file("f.safetensors");
        REQUIRE(writeSafetensors(path, {{"w", DType::kF32, std::move(shape), bytes}}, md).isOk());
        auto m = SafetensorsModel::open(path);
        REQUIRE(m.isOk());
        return m->fingerprint();
    };
    const std::string base = fingerprintOf({2, 4}, {});
    CHECK(fingerprintOf({2, 4}, {}) == base);
    CHECK(fingerprintOf({4, 2}, {}) != base);
    CHECK(fingerprintOf({8}, {}) != base);
    CHECK(fingerprintOf({2, 4}, {{"step", "1000"}}) != base);
}

TEST_CASE("the fingerprint changes when sampled weights change under an identical header") {
    TempDir dir;
    // One tensor of 64 KiB: samples at its first, middle and last 4 KiB.
    const size_t n = 16384;
    auto fingerprintWith = [&](size_t at, float value) {
        std::vector<float> v(n, 0.5f);
        if (at < n) v[at] = value;
        const std::string path = dir.file("f.safetensors");
        const auto bytes = std::span(reinterpret_cast<const uint8_t*>(v.data()), v.size() * 4);
        REQUIRE(writeSafetensors(path, {{"w", DType::kF32, {128, 128}, bytes}}).isOk());
        auto m = SafetensorsModel::open(path);
        REQUIRE(m.isOk());
        return m->fingerprint();
    };
    const std::string base = fingerprintWith(n, 0);
    CHECK(fingerprintWith(n, 0) == base);
    CHECK(fingerprintWith(0, -1.0f) != base);             // first sample
    CHECK(fingerprintWith(7200, -1.0f) != base);          // middle sample: floats 7168..8191
    CHECK(fingerprintWith(n - 1, -1.0f) != base);         // last sample
    CHECK(fingerprintWith(n / 4, -1.0f) == base);         // between samples: not read
    // A fine-tune rewrites every weight: always seen.
    std::vector<float> tuned(n);
    for (size_t i = 0; i < n; ++i) tuned[i] = 0.5f + 1e-3f * static_cast<float>(i % 7);
    const std::string path = dir.file("f.safetensors");
    REQUIRE(writeSafetensors(path, {{"w", DType::kF32, {128, 128},
                                     std::span(reinterpret_cast<const uint8_t*>(tuned.data()),
                                               tuned.size() * 4)}})
                .isOk());
    auto m = SafetensorsModel::open(path);
    REQUIRE(m.isOk());
    CHECK(m->fingerprint() != base);
}

TEST_CASE("a missing shard is an error naming the shard") {
    TempDir dir;
    writeShard(dir.file("s1.safetensors"), {"a"});
    writeText(dir.file("model.safetensors.index.json"),
              R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
    auto m = SafetensorsModel::open(dir.path());
    REQUIRE_FALSE(m.isOk());
    CHECK(m.status().message().find("s2.safetensors") != std::string::npos);
    CHECK(m.status().message().find("missing") != std::string::npos);
}

TEST_CASE("a shard lacking a tensor the index names is an error") {
    TempDir dir;
    writeShard(dir.file("s1.safetensors"), {"a"});
    writeText(dir.file("model.safetensors.index.json"),
              R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}})");
    auto m = SafetensorsModel::open(dir.path());
    REQUIRE_FALSE(m.isOk());
    CHECK(m.status().message().find("tensor b") != std::string::npos);
    CHECK(m.status().message().find("lacks it") != std::string::npos);
}

TEST_CASE("index problems are refused: no weight_map, escaping shard names, bad JSON") {
    TempDir dir;
    writeShard(dir.file("s1.safetensors"), {"a"});
    const std::string idx = dir.file("model.safetensors.index.json");
    writeText(idx, R"({"metadata": {}})");
    CHECK(SafetensorsModel::open(dir.path()).status().message().find("weight_map") != std::string::npos);
    writeText(idx, R"({"weight_map": {"a": "../s1.safetensors"}})");
    CHECK(SafetensorsModel::open(dir.path()).status().message().find("not a file name") != std::string::npos);
    writeText(idx, R"({"weight_map": )");
    CHECK(SafetensorsModel::open(dir.path()).status().message().find("not valid JSON") != std::string::npos);
}

TEST_CASE("a directory without an index is the union of its files, duplicates refused") {
    TempDir dir;
    writeShard(dir.file("a.safetensors"), {"x"});
    writeShard(dir.file("b.safetensors"), {"y"});
    auto m = SafetensorsModel::open(dir.path());
    REQUIRE(m.isOk());
    CHECK(m->tensors().size() == 2);
    writeShard(dir.file("c.safetensors"), {"x"});
    auto d = SafetensorsModel::open(dir.path());
    REQUIRE_FALSE(d.isOk());
    CHECK(d.status().message().find("appears in both") != std::string::npos);
}

TEST_CASE("a broken shard inside a sharded checkpoint names that shard") {
    TempDir dir;
    writeShard(dir.file("s1.safetensors"), {"a"});
    put(dir.file("s2.safetensors"), {});
    writeText(dir.file("model.safetensors.index.json"),
              R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
    auto m = SafetensorsModel::open(dir.path());
    REQUIRE_FALSE(m.isOk());
    CHECK(m.status().message().find("s2.safetensors") != std::string::npos);
}

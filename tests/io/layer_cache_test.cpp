#include "sli/cache.h"

#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "io/cache_format.h"
#include "io/cache_manifest.h"
#include "io/file.h"
#include "io_test_util.h"

using namespace sli;
using sli::testing::makeLayer;
using sli::testing::sameBytes;
using sli::testing::TempDir;

TEST_CASE("a cached layer comes back identical and is listed in the manifest") {
    TempDir dir;
    auto cache = LayerCache::open(dir.path());
    REQUIRE(cache.isOk());
    const auto layer = makeLayer(4);
    REQUIRE((*cache)->cacheLayer("org/m", 4, layer, QuantizationMode::kNf4).isOk());
    CHECK((*cache)->contains("org/m", 4));
    CHECK_FALSE((*cache)->contains("org/m", 5));
    CHECK_FALSE((*cache)->contains("other", 4));
    auto back = (*cache)->getLayer("org/m", 4);
    REQUIRE(back.isOk());
    REQUIRE(back->tensors.size() == layer.tensors.size());
    for (size_t i = 0; i < layer.tensors.size(); ++i) CHECK(sameBytes(back->tensors[i], layer.tensors[i]));
    const auto cfg = LayerCache::configForMode(QuantizationMode::kNf4);
    auto m = io::readManifest((*cache)->directoryFor("org/m", cfg));
    REQUIRE(m.isOk());
    CHECK(m->modelId == "org/m");
    REQUIRE(m->findLayer(4) != nullptr);
    CHECK((*cache)->directoryFor("org/m", cfg).find("org--m") != std::string::npos);
    CHECK((*cache)->getLayer("org/m", 5).status().isNotFound());
}

TEST_CASE("getLayer refuses a damaged file with Corruption naming layer and file") {
    TempDir dir;
    auto cache = LayerCache::open(dir.path());
    REQUIRE(cache.isOk());
    REQUIRE((*cache)->cacheLayer("m", 1, makeLayer(1), QuantizationMode::kInt8).isOk());
    const std::string path = (*cache)->layerPath("m", 1, LayerCache::configForMode(QuantizationMode::kInt8));
    auto idx = io::readLayerIndex(path);
    REQUIRE(idx.isOk());
    auto bytes = io::readWholeFile(path);
    REQUIRE(bytes.isOk());
    // A flipped byte in the middle of the first payload, in the header, and a truncation.
    for (int variant = 0; variant < 3; ++variant) {
        auto copy = *bytes;
        if (variant == 0) copy[idx->tensors[0].parts[0].offset + 17] ^= 4;
        if (variant == 1) copy[20] ^= 1;
        if (variant == 2) copy.resize(copy.size() - 100);
        REQUIRE(io::atomicWriteFile(path, copy).isOk());
        auto r = (*cache)->getLayer("m", 1);
        INFO("variant " << variant);
        REQUIRE_FALSE(r.isOk());
        CHECK(r.status().isCorruption());
        CHECK(r.status().message().find(path) != std::string::npos);
    }
    CHECK((*cache)->stats().corruptions == 3);
}

TEST_CASE("the memory tier serves hot layers and notices a replaced file") {
    TempDir dir;
    auto cache = LayerCache::open(dir.path(), 0, 1.0);
    REQUIRE(cache.isOk());
    REQUIRE((*cache)->cacheLayer("m", 0, makeLayer(0, 1), QuantizationMode::kNf4).isOk());
    REQUIRE((*cache)->getLayer("m", 0).isOk());
    REQUIRE((*cache)->getLayer("m", 0).isOk());
    auto s = (*cache)->stats();
    CHECK(s.diskHits == 1);
    CHECK(s.memoryHits == 1);
    CHECK(s.layersInMemory == 1);
    // Another writer replaces the file: the stale memory copy must not be served.
    {
        auto other = LayerCache::open(dir.path());
        REQUIRE(other.isOk());
        REQUIRE((*other)->cacheLayer("m", 0, makeLayer(0, 99), QuantizationMode::kNf4).isOk());
    }
    auto fresh = (*cache)->getLayer("m", 0);
    REQUIRE(fresh.isOk());
    CHECK(sameBytes(fresh->tensors[0], makeLayer(0, 99).tensors[0]));
    CHECK((*cache)->stats().diskHits == 2);
}

TEST_CASE("the memory tier stays within its budget") {
    TempDir dir;
    const auto one = io::encodeLayerFile(makeLayer(0), {}).value().size();
    auto cache = LayerCache::open(dir.path(), 0, static_cast<double>(one) * 2.5 / 1e9);
    REQUIRE(cache.isOk());
    for (int i = 0; i < 5; ++i) {
        REQUIRE((*cache)->cacheLayer("m", i, makeLayer(i), QuantizationMode::kNf4).isOk());
        REQUIRE((*cache)->getLayer("m", i).isOk());
    }
    const auto s = (*cache)->stats();
    CHECK(s.layersInMemory == 2);
    CHECK(s.bytesInMemory <= static_cast<uint64_t>(one * 2.5));
}

TEST_CASE("least-recently-used layers are evicted past the size limit") {
    TempDir dir;
    const auto one = io::encodeLayerFile(makeLayer(0), {}).value().size();
    auto cache = LayerCache::open(dir.path(), static_cast<double>(one) * 3.5 / 1e9, 0);
    REQUIRE(cache.isOk());
    for (int i = 0; i < 3; ++i) {
        REQUIRE((*cache)->cacheLayer("m", i, makeLayer(i), QuantizationMode::kNf4).isOk());
    }
    REQUIRE((*cache)->getLayer("m", 0).isOk());  // 0 is now more recent than 1
    REQUIRE((*cache)->cacheLayer("m", 3, makeLayer(3), QuantizationMode::kNf4).isOk());
    CHECK((*cache)->contains("m", 0));
    CHECK_FALSE((*cache)->contains("m", 1));
    CHECK((*cache)->contains("m", 2));
    CHECK((*cache)->contains("m", 3));
    const auto s = (*cache)->stats();
    CHECK(s.evictions == 1);
    CHECK(s.bytesOnDisk <= static_cast<uint64_t>(one * 3.5));
    REQUIRE((*cache)->evict("m", 2).isOk());
    CHECK_FALSE((*cache)->contains("m", 2));
    CHECK((*cache)->evict("m", 2).isOk());
}

TEST_CASE("a reopened cache knows the files already on disk") {
    TempDir dir;
    {
        auto cache = LayerCache::open(dir.path());
        REQUIRE(cache.isOk());
        REQUIRE((*cache)->cacheLayer("m", 0, makeLayer(0), QuantizationMode::kNf4).isOk());
        REQUIRE((*cache)->cacheLayer("m", 1, makeLayer(1), QuantizationMode::kNf4).isOk());
    }
    auto cache = LayerCache::open(dir.path());
    REQUIRE(cache.isOk());
    CHECK((*cache)->stats().layersOnDisk == 2);
    CHECK((*cache)->getLayer("m", 1).isOk());
}

TEST_CASE("two processes writing the same layer never leave a corrupt file") {
    TempDir dir;
    std::vector<pid_t> kids;
    for (int k = 0; k < 2; ++k) {
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            auto cache = LayerCache::open(dir.path());
            if (!cache.isOk()) _exit(1);
            for (int i = 0; i < 20; ++i) {
                if (!(*cache)->cacheLayer("m", 0, makeLayer(0, 100 * k + i), QuantizationMode::kNf4).isOk()) _exit(2);
            }
            _exit(0);
        }
        kids.push_back(pid);
    }
    // Meanwhile this process reads: every read is either absent or a complete, valid layer.
    auto reader = LayerCache::open(dir.path());
    REQUIRE(reader.isOk());
    int valid = 0, reads = 0;
    std::vector<int> status(kids.size(), -1);
    size_t running = kids.size();
    while (running > 0 && reads < 100000) {
        auto r = (*reader)->getLayer("m", 0);
        ++reads;
        if (r.isOk()) ++valid;
        else CHECK(r.status().isNotFound());
        for (size_t k = 0; k < kids.size(); ++k) {
            if (status[k] != -1) continue;
            int st = 0;
            if (::waitpid(kids[k], &st, WNOHANG) == kids[k]) {
                status[k] = st;
                --running;
            }
        }
    }
    for (size_t k = 0; k < kids.size(); ++k) {
        int st = status[k];
        if (st == -1) REQUIRE(::waitpid(kids[k], &st, 0) == kids[k]);
        CHECK(WIFEXITED(st));
        CHECK(WEXITSTATUS(st) == 0);
    }
    const auto path = (*reader)->layerPath("m", 0, LayerCache::configForMode(QuantizationMode::kNf4));
    CHECK(io::verifyLayerFile(path).isOk());
    auto names = io::listDirectory(io::dirName(path));
    REQUIRE(names.isOk());
    for (const auto& n : *names) CHECK_FALSE(io::isTempName(n));
    MESSAGE(valid << " of " << reads << " concurrent reads found the layer");
}

TEST_CASE("bad arguments are refused") {
    CHECK(LayerCache::open("").status().isInvalidArgument());
    TempDir dir;
    CHECK(LayerCache::open(dir.path(), -1, 0).status().isInvalidArgument());
    auto cache = LayerCache::open(dir.path());
    REQUIRE(cache.isOk());
    CHECK((*cache)->cacheLayer("", 0, makeLayer(0), QuantizationMode::kNf4).isInvalidArgument());
    CHECK((*cache)->cacheLayer("m", -1, makeLayer(0), QuantizationMode::kNf4).isInvalidArgument());
}

TEST_CASE("a manifest with a repeated or negative layer index, or a bad tensor count, is refused") {
    const auto manifest = [](const std::string& layers) {
        return std::string(R"({"format": 1, "model_id": "m", "config": {"mode": "nf4"},)") +
               R"( "config_fingerprint": "f", "source": "/s", "source_fingerprint": "g", "layers": [)" +
               layers + "]}";
    };
    const std::string a = R"({"index": 0, "name": "pre", "file": "layer-00000.slc", "tensors": 1})";
    const std::string b = R"({"index": 1, "name": "model.layers.0", "file": "layer-00001.slc", "tensors": 9})";
    auto ok = io::CacheManifest::parse(manifest(b + ", " + a), "d/MANIFEST.json");
    REQUIRE_MESSAGE(ok.isOk(), ok.status().toString());
    REQUIRE(ok->layers.size() == 2);
    CHECK(ok->layers[0].index == 0);  // sorted by index
    CHECK(ok->layers[1].tensors == 9);

    const std::string dup = R"({"index": 1, "name": "other", "file": "layer-00002.slc", "tensors": 2})";
    auto twice = io::CacheManifest::parse(manifest(a + ", " + b + ", " + dup), "d/MANIFEST.json");
    REQUIRE_FALSE(twice.isOk());
    CHECK(twice.status().isCorruption());
    CHECK(twice.status().message().find("d/MANIFEST.json") != std::string::npos);
    CHECK(twice.status().message().find("layer index 1 is listed twice") != std::string::npos);

    const std::string negative = R"({"index": -1, "name": "x", "file": "layer-x.slc", "tensors": 1})";
    CHECK(io::CacheManifest::parse(manifest(negative), "d/MANIFEST.json").status().isCorruption());
    const std::string huge = R"({"index": 0, "name": "x", "file": "layer-00000.slc", "tensors": 4294967296})";
    CHECK(io::CacheManifest::parse(manifest(huge), "d/MANIFEST.json").status().isCorruption());
    const std::string minus = R"({"index": 0, "name": "x", "file": "layer-00000.slc", "tensors": -3})";
    CHECK(io::CacheManifest::parse(manifest(minus), "d/MANIFEST.json").status().isCorruption());
}

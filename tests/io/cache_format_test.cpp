#include "io/cache_format.h"

#include <doctest/doctest.h>
#include <fcntl.h>

#include <xxhash.h>

#include <cstring>

#include "io/file.h"
#include "io_test_util.h"

using namespace sli;
using sli::testing::makeLayer;
using sli::testing::sameBytes;
using sli::testing::TempDir;

namespace {

io::LayerFileMeta meta() { return {"org/model", "{\"mode\": \"nf4\"}", "0123456789abcdef"}; }

void writeBytes(const std::string& path, const std::vector<uint8_t>& b) {
    REQUIRE(io::atomicWriteFile(path, b).isOk());
}

}  // namespace

TEST_CASE("a written layer reads back byte for byte with its metadata") {
    TempDir dir;
    const auto layer = makeLayer(3);
    const std::string path = dir.file(io::layerFileName(3));
    REQUIRE(io::writeLayerFile(path, layer, meta()).isOk());
    io::LayerFileIndex idx;
    auto back = io::readLayerFile(path, true, &idx);
    REQUIRE(back.isOk());
    CHECK(back->index == 3);
    CHECK(back->name == "model.layers.3");
    CHECK(idx.modelId == "org/model");
    CHECK(idx.configJson == "{\"mode\": \"nf4\"}");
    CHECK(idx.sourceFingerprint == "0123456789abcdef");
    REQUIRE(back->tensors.size() == layer.tensors.size());
    for (size_t i = 0; i < layer.tensors.size(); ++i) {
        CHECK(back->tensors[i].info.name == layer.tensors[i].info.name);
        CHECK(back->tensors[i].info.shape == layer.tensors[i].info.shape);
        CHECK(back->tensors[i].info.mode == layer.tensors[i].info.mode);
        CHECK(back->tensors[i].info.nestedOffset == layer.tensors[i].info.nestedOffset);
        CHECK(back->tensors[i].info.llmInt8Threshold == layer.tensors[i].info.llmInt8Threshold);
        CHECK(sameBytes(back->tensors[i], layer.tensors[i]));
    }
    CHECK(io::verifyLayerFile(path).isOk());
}

TEST_CASE("extents, data region and file size are 4096-aligned") {
    TempDir dir;
    const std::string path = dir.file("l.slc");
    REQUIRE(io::writeLayerFile(path, makeLayer(0), meta()).isOk());
    auto idx = io::readLayerIndex(path);
    REQUIRE(idx.isOk());
    CHECK(idx->dataStart % 4096 == 0);
    CHECK(idx->dataEnd % 4096 == 0);
    CHECK(*io::fileSize(path) == idx->dataEnd);
    for (const auto& t : idx->tensors) {
        for (const auto& x : t.parts) {
            if (!x.empty()) CHECK(x.offset % 4096 == 0);
        }
    }
}

TEST_CASE("statistics are zstd-compressed only when asked, payloads only behind the flag") {
    const auto layer = makeLayer(1);
    auto on = io::encodeLayerFile(layer, meta(), {.compressStatistics = true});
    REQUIRE(on.isOk());
    auto idxOn = io::parseLayerIndex(*on, on->size(), "on");
    REQUIRE(idxOn.isOk());
    const auto& nf4 = idxOn->tensors[0];
    CHECK(nf4.part(QuantPart::kAbsmax).compression == io::Compression::kZstd);
    CHECK(nf4.part(QuantPart::kPayload).compression == io::Compression::kNone);
    CHECK(nf4.scratchBytes() > 0);

    auto off = io::encodeLayerFile(layer, meta(), {.compressStatistics = false});
    REQUIRE(off.isOk());
    auto idxOff = io::parseLayerIndex(*off, off->size(), "off");
    REQUIRE(idxOff.isOk());
    CHECK(idxOff->totalScratchBytes() == 0);

    // A compressible payload is compressed with compressPayload.
    QuantizedLayer zeros;
    zeros.index = 0;
    zeros.name = "z";
    auto t = sli::testing::makeTensor("w", {256, 256}, QuantizationMode::kNone, 1);
    std::memset(t.parts[0].data(), 0, t.parts[0].size());
    zeros.tensors.push_back(std::move(t));
    auto pz = io::encodeLayerFile(zeros, meta(), {.compressPayload = true});
    REQUIRE(pz.isOk());
    auto idxZ = io::parseLayerIndex(*pz, pz->size(), "z");
    REQUIRE(idxZ.isOk());
    CHECK(idxZ->tensors[0].part(QuantPart::kPayload).compression == io::Compression::kZstd);
    auto back = io::decodeLayerFile(*pz, "z");
    REQUIRE(back.isOk());
    CHECK(sameBytes(back->tensors[0], zeros.tensors[0]));
}

TEST_CASE("the engine path decodes views that point into the caller's buffer") {
    TempDir dir;
    const auto layer = makeLayer(2);
    const std::string path = dir.file("l.slc");
    REQUIRE(io::writeLayerFile(path, layer, meta()).isOk());
    auto idx = io::readLayerIndex(path);
    REQUIRE(idx.isOk());
    auto fd = io::openFile(path, O_RDONLY);
    REQUIRE(fd.isOk());
    std::vector<uint8_t> region(idx->dataBytes());
    REQUIRE(io::preadAll(fd->get(), region, idx->dataStart, path).isOk());
    std::vector<uint8_t> scratch(idx->maxScratchBytes());
    for (size_t t = 0; t < idx->tensors.size(); ++t) {
        auto v = io::decodeTensor(*idx, t, region, idx->dataStart, true, scratch);
        REQUIRE(v.isOk());
        CHECK(v->info == &idx->tensors[t].info);
        const auto payload = v->part(QuantPart::kPayload);
        CHECK(payload.data() >= region.data());
        CHECK(payload.data() < region.data() + region.size());
        for (int p = 0; p < kQuantPartCount; ++p) {
            REQUIRE(v->parts[p].size() == layer.tensors[t].parts[p].size());
            if (v->parts[p].empty()) continue;  // empty parts have no storage
            CHECK(std::memcmp(v->parts[p].data(), layer.tensors[t].parts[p].data(),
                              v->parts[p].size()) == 0);
        }
        // A sub-range covering just this tensor works as well.
        const auto& te = idx->tensors[t];
        auto sub = std::span<const uint8_t>(region).subspan(te.fileBegin() - idx->dataStart,
                                                            te.fileEnd() - te.fileBegin());
        CHECK(io::decodeTensor(*idx, t, sub, te.fileBegin(), true, scratch).isOk());
    }
}

TEST_CASE("decodeTensor refuses a short scratch or a buffer that does not cover the tensor") {
    const auto layer = makeLayer(0);
    auto file = io::encodeLayerFile(layer, meta());
    REQUIRE(file.isOk());
    auto idx = io::parseLayerIndex(*file, file->size(), "x");
    REQUIRE(idx.isOk());
    std::vector<uint8_t> none;
    CHECK(io::decodeTensor(*idx, 0, *file, 0, true, none).status().isInvalidArgument());
    std::vector<uint8_t> scratch(idx->maxScratchBytes());
    CHECK(io::decodeTensor(*idx, 0, std::span(*file).first(4096), 0, true, scratch)
              .status()
              .isInvalidArgument());
    CHECK(io::decodeTensor(*idx, 99, *file, 0, true, scratch).status().isInvalidArgument());
}

TEST_CASE("a flipped byte anywhere in the index region is detected") {
    const auto layer = makeLayer(5);
    auto file = io::encodeLayerFile(layer, meta());
    REQUIRE(file.isOk());
    auto idx = io::parseLayerIndex(*file, file->size(), "x");
    REQUIRE(idx.isOk());
    for (uint64_t i = 0; i < idx->indexBytes; ++i) {
        auto copy = *file;
        copy[i] ^= 0x10;
        auto r = io::parseLayerIndex(copy, copy.size(), "x.slc");
        INFO("byte " << i);
        REQUIRE_FALSE(r.isOk());
        CHECK(r.status().isCorruption());
        CHECK(r.status().message().find("x.slc") != std::string::npos);
    }
}

TEST_CASE("a flipped byte in any extent is a Corruption naming layer and tensor") {
    const auto layer = makeLayer(7);
    auto file = io::encodeLayerFile(layer, meta());
    REQUIRE(file.isOk());
    auto idx = io::parseLayerIndex(*file, file->size(), "x");
    REQUIRE(idx.isOk());
    for (size_t t = 0; t < idx->tensors.size(); ++t) {
        for (int p = 0; p < kQuantPartCount; ++p) {
            const auto& x = idx->tensors[t].parts[p];
            if (x.empty()) continue;
            for (uint64_t at : {x.offset, x.offset + x.storedBytes / 2, x.offset + x.storedBytes - 1}) {
                auto copy = *file;
                copy[at] ^= 0x01;
                auto r = io::decodeLayerFile(copy, "/c/layer-00007.slc");
                REQUIRE_FALSE(r.isOk());
                CHECK(r.status().isCorruption());
                const std::string& msg = r.status().message();
                CHECK(msg.find("layer 7") != std::string::npos);
                CHECK(msg.find(idx->tensors[t].info.name) != std::string::npos);
                CHECK(msg.find("/c/layer-00007.slc") != std::string::npos);
                // Without verification the damage would pass unnoticed for raw parts: that
                // is what the checksum is for. Decompression still catches compressed ones.
            }
        }
    }
}

TEST_CASE("verify catches a flipped padding byte, truncation and trailing bytes") {
    TempDir dir;
    const std::string path = dir.file("l.slc");
    auto file = io::encodeLayerFile(makeLayer(1), meta());
    REQUIRE(file.isOk());
    auto idx = io::parseLayerIndex(*file, file->size(), "x");
    REQUIRE(idx.isOk());
    {
        auto copy = *file;
        copy[idx->indexBytes + 1] = 0xff;  // padding between index and data region
        writeBytes(path, copy);
        CHECK(io::verifyLayerFile(path).isCorruption());
        copy = *file;
        copy.back() = 0xff;  // padding after the last extent
        writeBytes(path, copy);
        CHECK(io::verifyLayerFile(path).isCorruption());
    }
    for (size_t cut : {size_t{0}, size_t{10}, size_t{64}, static_cast<size_t>(idx->indexBytes),
                       file->size() - 4096, file->size() - 1}) {
        std::vector<uint8_t> copy(file->begin(), file->begin() + static_cast<long>(cut));
        writeBytes(path, copy);
        INFO("cut at " << cut);
        CHECK(io::verifyLayerFile(path).isCorruption());
        CHECK(io::readLayerIndex(path).status().isCorruption());
    }
    auto longer = *file;
    longer.resize(longer.size() + 4096, 0);
    writeBytes(path, longer);
    CHECK(io::readLayerIndex(path).status().isCorruption());
}

TEST_CASE("a newer format version is NotSupported, bad magic is Corruption") {
    auto file = io::encodeLayerFile(makeLayer(1), meta());
    REQUIRE(file.isOk());
    auto idx = io::parseLayerIndex(*file, file->size(), "x");
    REQUIRE(idx.isOk());
    // Rewrite the version and fix the checksum, as a future writer would.
    auto copy = *file;
    copy[8] = 2;
    // recompute checksum via re-encoding trick: parse rejects on checksum first, so patch it
    // using the same rule as the writer (bytes 56..63 as zero).
    std::vector<uint8_t> index(copy.begin(), copy.begin() + static_cast<long>(idx->indexBytes));
    std::memset(index.data() + 56, 0, 8);
    const uint64_t h = XXH3_64bits(index.data(), index.size());
    for (int i = 0; i < 8; ++i) copy[56 + i] = static_cast<uint8_t>(h >> (8 * i));
    CHECK(io::parseLayerIndex(copy, copy.size(), "x").status().isNotSupported());
    copy = *file;
    copy[0] = 'X';
    CHECK(io::parseLayerIndex(copy, copy.size(), "x").status().isCorruption());
}

TEST_CASE("a layer whose part sizes disagree with its metadata is refused by the writer") {
    auto layer = makeLayer(0);
    layer.tensors[0].info.shape = {64, 64};  // payload now too large
    CHECK_FALSE(io::encodeLayerFile(layer, meta()).isOk());
}

TEST_CASE("an empty layer is a valid file") {
    QuantizedLayer l;
    l.index = 9;
    l.name = "empty";
    auto file = io::encodeLayerFile(l, meta());
    REQUIRE(file.isOk());
    CHECK(file->size() == 4096);
    auto back = io::decodeLayerFile(*file, "e");
    REQUIRE(back.isOk());
    CHECK(back->tensors.empty());
}

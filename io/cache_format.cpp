// Layer-cache file format; byte layout in docs/cache-format.md.
#include "io/cache_format.h"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>

#include "io/checksum.h"
#include "io/file.h"
#include "sli/tensor.h"

namespace sli::io {
namespace {

constexpr uint64_t alignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
constexpr size_t kExtentRecordBytes = 40;
constexpr int kMaxDims = 16;
constexpr uint32_t kMaxStringBytes = 16u << 20;

// ---- little-endian encoding ---------------------------------------------------------------

class Encoder {
public:
    void u8(uint8_t v) { out_.push_back(v); }
    void u16(uint16_t v) { put(v, 2); }
    void u32(uint32_t v) { put(v, 4); }
    void u64(uint64_t v) { put(v, 8); }
    void i32(int32_t v) { put(static_cast<uint32_t>(v), 4); }
    void i64(int64_t v) { put(static_cast<uint64_t>(v), 8); }
    void f32(float v) {
        uint32_t b;
        std::memcpy(&b, &v, 4);
        put(b, 4);
    }
    void str(std::string_view s) {
        u32(static_cast<uint32_t>(s.size()));
        out_.insert(out_.end(), s.begin(), s.end());
    }
    void zeros(size_t n) { out_.insert(out_.end(), n, 0); }
    std::vector<uint8_t>& bytes() { return out_; }
    void patch64(size_t at, uint64_t v) {
        for (int i = 0; i < 8; ++i) out_[at + i] = static_cast<uint8_t>(v >> (8 * i));
    }

private:
    void put(uint64_t v, int n) {
        for (int i = 0; i < n; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
    }
    std::vector<uint8_t> out_;
};

class Decoder {
public:
    Decoder(std::span<const uint8_t> b, size_t pos) : b_(b), pos_(pos) {}
    bool ok() const { return ok_; }
    size_t pos() const { return pos_; }
    uint64_t get(int n) {
        if (!ok_ || b_.size() - pos_ < static_cast<size_t>(n)) {
            ok_ = false;
            return 0;
        }
        uint64_t v = 0;
        for (int i = n - 1; i >= 0; --i) v = (v << 8) | b_[pos_ + i];
        pos_ += n;
        return v;
    }
    uint8_t u8() { return static_cast<uint8_t>(get(1)); }
    uint16_t u16() { return static_cast<uint16_t>(get(2)); }
    uint32_t u32() { return static_cast<uint32_t>(get(4)); }
    uint64_t u64() { return get(8); }
    int32_t i32() { return static_cast<int32_t>(static_cast<uint32_t>(get(4))); }
    int64_t i64() { return static_cast<int64_t>(get(8)); }
    float f32() {
        const uint32_t b = u32();
        float f;
        std::memcpy(&f, &b, 4);
        return f;
    }
    std::string str() {
        const uint32_t n = u32();
        if (!ok_ || n > kMaxStringBytes || b_.size() - pos_ < n) {
            ok_ = false;
            return {};
        }
        std::string s(reinterpret_cast<const char*>(b_.data() + pos_), n);
        pos_ += n;
        return s;
    }

private:
    std::span<const uint8_t> b_;
    size_t pos_;
    bool ok_ = true;
};

uint64_t readLe(const uint8_t* p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}

uint64_t indexChecksum(std::span<const uint8_t> index) {
    // xxh3-64 over the index region with the checksum field (bytes 56..63) taken as zero.
    XXH3_state_t* s = XXH3_createState();
    XXH3_64bits_reset(s);
    XXH3_64bits_update(s, index.data(), 56);
    static const uint8_t zero[8] = {};
    XXH3_64bits_update(s, zero, 8);
    XXH3_64bits_update(s, index.data() + 64, index.size() - 64);
    const uint64_t h = XXH3_64bits_digest(s);
    XXH3_freeState(s);
    return h;
}

std::string where(std::string_view path, const LayerFileIndex* idx = nullptr,
                  const std::string* tensor = nullptr) {
    std::string w;
    if (idx != nullptr && idx->layerIndex >= 0) {
        w += "layer " + std::to_string(idx->layerIndex);
        if (!idx->layerName.empty()) w += " (" + idx->layerName + ")";
        w += " ";
    }
    if (tensor != nullptr) w += "tensor " + *tensor + " ";
    w += "in " + std::string(path);
    return w;
}

bool validDType(uint8_t d) { return d < kDTypeCount; }
bool validMode(uint8_t m) { return m <= static_cast<uint8_t>(QuantizationMode::kInt4); }

bool isStatistics(QuantPart p) { return p != QuantPart::kPayload; }

// The planned layout of one layer file.
struct PlannedPart {
    std::span<const uint8_t> raw;     // the part's bytes
    std::vector<uint8_t> compressed;  // when compressed
    Extent extent;
    std::span<const uint8_t> stored() const {
        return extent.compression == Compression::kZstd ? std::span<const uint8_t>(compressed) : raw;
    }
};

using Sink = std::function<Status(uint64_t offset, std::span<const uint8_t> bytes)>;

// Builds the index region and the extents' layout; writes everything through `sink`.
// Returns the file size (data end).
Result<uint64_t> emitLayer(const QuantizedLayer& layer, const LayerFileMeta& meta,
                           const LayerWriteOptions& options, std::string_view path,
                           const Sink& sink) {
    if (layer.index < 0) {
        return Status::invalidArgument("layer " + layer.name + ": negative layer index for " +
                                       std::string(path));
    }
    if (layer.tensors.size() > 0xffffffffu) return Status::invalidArgument("too many tensors");
    std::vector<std::array<PlannedPart, kQuantPartCount>> plan(layer.tensors.size());
    for (size_t t = 0; t < layer.tensors.size(); ++t) {
        const QuantizedTensor& qt = layer.tensors[t];
        if (Status st = qt.validate(); !st.isOk()) {
            return st.withContext("layer " + std::to_string(layer.index) + " (" + layer.name +
                                  ") for " + std::string(path));
        }
        if (qt.info.shape.size() > kMaxDims) {
            return Status::invalidArgument("tensor " + qt.info.name + ": more than 16 dimensions");
        }
        for (int p = 0; p < kQuantPartCount; ++p) {
            PlannedPart& pp = plan[t][p];
            pp.raw = qt.parts[p].bytes();
            pp.extent.rawBytes = pp.raw.size();
            pp.extent.storedBytes = pp.raw.size();
            if (pp.raw.empty()) continue;
            const bool want = isStatistics(static_cast<QuantPart>(p)) ? options.compressStatistics
                                                                       : options.compressPayload;
            if (want) {
                std::vector<uint8_t> c(ZSTD_compressBound(pp.raw.size()));
                const size_t n = ZSTD_compress(c.data(), c.size(), pp.raw.data(), pp.raw.size(),
                                               options.zstdLevel);
                if (ZSTD_isError(n)) {
                    return Status::internal("zstd compression of tensor " + qt.info.name + ": " +
                                            ZSTD_getErrorName(n));
                }
                // Payloads must save at least 1/16 to be worth decompressing; statistics only
                // need to shrink.
                const size_t limit = isStatistics(static_cast<QuantPart>(p))
                                         ? pp.raw.size()
                                         : pp.raw.size() - pp.raw.size() / 16;
                if (n < limit) {
                    c.resize(n);
                    pp.compressed = std::move(c);
                    pp.extent.compression = Compression::kZstd;
                    pp.extent.storedBytes = n;
                }
            }
            pp.extent.checksum = checksum64(pp.stored().data(), pp.stored().size());
        }
    }

    // Index region size.
    uint64_t indexBytes = kCacheFixedHeaderBytes + 4 * 4 + layer.name.size() + meta.modelId.size() +
                          meta.configJson.size() + meta.sourceFingerprint.size();
    for (const auto& qt : layer.tensors) {
        indexBytes += 4 + qt.info.name.size() + 8 + 8 + 8 + 8 * qt.info.shape.size() +
                      kExtentRecordBytes * kQuantPartCount;
    }
    if (indexBytes > kCacheMaxIndexBytes) {
        return Status::invalidArgument("layer " + layer.name + ": index region too large");
    }
    const uint64_t dataStart = alignUp(indexBytes, kCacheAlignment);
    uint64_t pos = dataStart;
    for (auto& parts : plan) {
        for (auto& pp : parts) {
            if (pp.extent.storedBytes == 0) continue;
            pp.extent.offset = pos;
            pos = alignUp(pos + pp.extent.storedBytes, kCacheAlignment);
        }
    }
    const uint64_t dataEnd = pos;

    Encoder e;
    e.bytes().insert(e.bytes().end(), kCacheMagic, kCacheMagic + 8);
    e.u32(kCacheFormatVersion);
    e.u32(0);  // flags
    e.u64(indexBytes);
    e.u64(dataStart);
    e.u64(dataEnd);
    e.i64(layer.index);
    e.u32(static_cast<uint32_t>(layer.tensors.size()));
    e.u32(0);  // reserved
    e.u64(0);  // checksum, patched below
    e.str(layer.name);
    e.str(meta.modelId);
    e.str(meta.configJson);
    e.str(meta.sourceFingerprint);
    for (size_t t = 0; t < layer.tensors.size(); ++t) {
        const QuantizedTensorInfo& in = layer.tensors[t].info;
        e.str(in.name);
        e.u8(static_cast<uint8_t>(in.mode));
        e.u8(static_cast<uint8_t>(in.storedDType));
        e.u8(static_cast<uint8_t>(in.computeDType));
        e.u8(static_cast<uint8_t>(in.sourceDType));
        e.u8(in.doubleQuant ? 1 : 0);
        e.u8(static_cast<uint8_t>(in.shape.size()));
        e.u16(0);
        e.i32(in.blocksize);
        e.i32(in.nestedBlocksize);
        e.f32(in.nestedOffset);
        e.f32(in.llmInt8Threshold);
        for (int64_t d : in.shape) e.i64(d);
        for (const auto& pp : plan[t]) {
            e.u64(pp.extent.offset);
            e.u64(pp.extent.storedBytes);
            e.u64(pp.extent.rawBytes);
            e.u8(static_cast<uint8_t>(pp.extent.compression));
            e.zeros(7);
            e.u64(pp.extent.checksum);
        }
    }
    if (e.bytes().size() != indexBytes) {
        return Status::internal("cache writer: index size mismatch for " + std::string(path));
    }
    e.patch64(56, indexChecksum(e.bytes()));
    SLI_RETURN_IF_ERROR(sink(0, e.bytes()));
    for (const auto& parts : plan) {
        for (const auto& pp : parts) {
            if (pp.extent.storedBytes == 0) continue;
            SLI_RETURN_IF_ERROR(sink(pp.extent.offset, pp.stored()));
        }
    }
    return dataEnd;
}

Status corrupt(std::string_view path, const std::string& what) {
    return Status::corruption("cache file " + std::string(path) + ": " + what);
}

}  // namespace

const char* compressionName(Compression c) noexcept {
    switch (c) {
        case Compression::kNone: return "none";
        case Compression::kZstd: return "zstd";
    }
    return "?";
}

uint64_t CacheTensorEntry::fileBegin() const noexcept {
    uint64_t b = UINT64_MAX;
    for (const auto& e : parts) {
        if (!e.empty()) b = std::min(b, e.offset);
    }
    return b == UINT64_MAX ? 0 : b;
}

uint64_t CacheTensorEntry::fileEnd() const noexcept {
    uint64_t end = 0;
    for (const auto& e : parts) {
        if (!e.empty()) end = std::max(end, e.offset + e.storedBytes);
    }
    return end;
}

uint64_t CacheTensorEntry::storedBytes() const noexcept {
    uint64_t n = 0;
    for (const auto& e : parts) n += e.storedBytes;
    return n;
}

uint64_t CacheTensorEntry::rawBytes() const noexcept {
    uint64_t n = 0;
    for (const auto& e : parts) n += e.rawBytes;
    return n;
}

uint64_t CacheTensorEntry::scratchBytes() const noexcept {
    uint64_t n = 0;
    for (const auto& e : parts) {
        if (e.compression != Compression::kNone) n += alignUp(e.rawBytes, kCacheScratchAlignment);
    }
    return n;
}

uint64_t LayerFileIndex::maxScratchBytes() const noexcept {
    uint64_t m = 0;
    for (const auto& t : tensors) m = std::max(m, t.scratchBytes());
    return m;
}

uint64_t LayerFileIndex::totalScratchBytes() const noexcept {
    uint64_t m = 0;
    for (const auto& t : tensors) m += t.scratchBytes();
    return m;
}

uint64_t LayerFileIndex::rawBytes() const noexcept {
    uint64_t m = 0;
    for (const auto& t : tensors) m += t.rawBytes();
    return m;
}

std::optional<size_t> LayerFileIndex::find(std::string_view name) const {
    for (size_t i = 0; i < tensors.size(); ++i) {
        if (tensors[i].info.name == name) return i;
    }
    return std::nullopt;
}

std::string layerFileName(int64_t layerIndex) {
    char buf[48];
    std::snprintf(buf, sizeof buf, "layer-%05lld.slc", static_cast<long long>(layerIndex));
    return buf;
}

Result<LayerFileIndex> parseLayerIndex(std::span<const uint8_t> prefix, uint64_t fileSize,
                                       std::string_view path) {
    if (fileSize < kCacheFixedHeaderBytes || prefix.size() < kCacheFixedHeaderBytes) {
        return corrupt(path, "truncated: " + std::to_string(fileSize) +
                                 " bytes, shorter than the 64-byte header");
    }
    if (std::memcmp(prefix.data(), kCacheMagic, 8) != 0) {
        return corrupt(path, "bad magic (not a layer cache file)");
    }
    LayerFileIndex idx;
    idx.path = std::string(path);
    const uint8_t* h = prefix.data();
    idx.formatVersion = static_cast<uint32_t>(readLe(h + 8, 4));
    const uint32_t flags = static_cast<uint32_t>(readLe(h + 12, 4));
    idx.indexBytes = readLe(h + 16, 8);
    idx.dataStart = readLe(h + 24, 8);
    idx.dataEnd = readLe(h + 32, 8);
    const uint64_t storedChecksum = readLe(h + 56, 8);
    if (idx.indexBytes < kCacheFixedHeaderBytes || idx.indexBytes > kCacheMaxIndexBytes) {
        return corrupt(path, "index size " + std::to_string(idx.indexBytes) + " out of range");
    }
    if (idx.indexBytes > fileSize) {
        return corrupt(path, "truncated: the index needs " + std::to_string(idx.indexBytes) +
                                 " bytes, the file has " + std::to_string(fileSize));
    }
    if (prefix.size() < idx.indexBytes) {
        return Status::invalidArgument("cache file " + std::string(path) +
                                       ": buffer shorter than the index region");
    }
    const auto index = prefix.first(idx.indexBytes);
    if (indexChecksum(index) != storedChecksum) {
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION  // fuzz builds only: reach the table parser
        return corrupt(path, "index checksum mismatch (header or tensor table damaged)");
#endif
    }
    // The checksum holds: from here on a bad value means a writer bug or a deliberate forgery,
    // but every field is still checked, since nothing downstream may trust it blindly.
    if (idx.formatVersion != kCacheFormatVersion) {
        return Status::notSupported("cache file " + std::string(path) + ": format version " +
                                    std::to_string(idx.formatVersion) + ", this build reads " +
                                    std::to_string(kCacheFormatVersion));
    }
    if (flags != 0 || readLe(h + 52, 4) != 0) return corrupt(path, "reserved header fields set");
    if (idx.dataStart != alignUp(idx.indexBytes, kCacheAlignment) ||
        idx.dataEnd % kCacheAlignment != 0 || idx.dataEnd < idx.dataStart) {
        return corrupt(path, "data region bounds inconsistent");
    }
    if (idx.dataEnd != fileSize) {
        return corrupt(path, (fileSize < idx.dataEnd ? "truncated: " : "trailing bytes: ") +
                                 std::string("the index says the file holds ") +
                                 std::to_string(idx.dataEnd) + " bytes, it has " +
                                 std::to_string(fileSize));
    }
    idx.layerIndex = static_cast<int64_t>(readLe(h + 40, 8));
    const uint32_t count = static_cast<uint32_t>(readLe(h + 48, 4));
    if (idx.layerIndex < 0) return corrupt(path, "negative layer index");

    Decoder d(index, kCacheFixedHeaderBytes);
    idx.layerName = d.str();
    idx.modelId = d.str();
    idx.configJson = d.str();
    idx.sourceFingerprint = d.str();
    if (!d.ok()) return corrupt(path, "index strings run past the index region");
    // Each record is at least 4 + 24 + 200 bytes: bound the count before reserving.
    if (count > (idx.indexBytes - d.pos()) / (28 + kExtentRecordBytes * kQuantPartCount)) {
        return corrupt(path, "tensor count " + std::to_string(count) + " does not fit the index");
    }
    idx.tensors.resize(count);
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (uint32_t t = 0; t < count; ++t) {
        CacheTensorEntry& te = idx.tensors[t];
        QuantizedTensorInfo& in = te.info;
        in.name = d.str();
        const uint8_t mode = d.u8(), stored = d.u8(), compute = d.u8(), source = d.u8();
        const uint8_t dq = d.u8(), ndim = d.u8();
        const uint16_t reserved = d.u16();
        in.blocksize = d.i32();
        in.nestedBlocksize = d.i32();
        in.nestedOffset = d.f32();
        in.llmInt8Threshold = d.f32();
        if (!d.ok()) return corrupt(path, "tensor table truncated at tensor " + std::to_string(t));
        const std::string tw = "tensor " + in.name + ": ";
        if (!validMode(mode) || !validDType(stored) || !validDType(compute) ||
            !validDType(source) || dq > 1 || ndim > kMaxDims || reserved != 0) {
            return corrupt(path, tw + "invalid mode, dtype or flag in the tensor table");
        }
        in.mode = static_cast<QuantizationMode>(mode);
        in.storedDType = static_cast<DType>(stored);
        in.computeDType = static_cast<DType>(compute);
        in.sourceDType = static_cast<DType>(source);
        in.doubleQuant = dq != 0;
        for (int k = 0; k < ndim; ++k) in.shape.push_back(d.i64());
        std::array<size_t, kQuantPartCount> sizes{};
        for (int p = 0; p < kQuantPartCount; ++p) {
            Extent& x = te.parts[p];
            x.offset = d.u64();
            x.storedBytes = d.u64();
            x.rawBytes = d.u64();
            const uint8_t comp = d.u8();
            uint64_t pad = d.get(7);
            x.checksum = d.u64();
            if (!d.ok()) return corrupt(path, tw + "tensor table truncated");
            if (comp > 1 || pad != 0) return corrupt(path, tw + "invalid extent record");
            x.compression = static_cast<Compression>(comp);
            if (x.storedBytes == 0) {
                if (x.rawBytes != 0 || x.offset != 0 || x.compression != Compression::kNone) {
                    return corrupt(path, tw + "empty extent with non-zero fields");
                }
            } else {
                if (x.offset % kCacheAlignment != 0 || x.offset < idx.dataStart ||
                    x.offset > idx.dataEnd || x.storedBytes > idx.dataEnd - x.offset) {
                    return corrupt(path, tw + quantPartName(static_cast<QuantPart>(p)) +
                                             " extent outside the data region or unaligned");
                }
                if (x.compression == Compression::kNone && x.storedBytes != x.rawBytes) {
                    return corrupt(path, tw + "uncompressed extent whose sizes differ");
                }
                ranges.emplace_back(x.offset, x.offset + x.storedBytes);
            }
            sizes[p] = static_cast<size_t>(x.rawBytes);
        }
        if (auto n = shapeNumel(in.shape, in.name); !n.isOk()) {
            return corrupt(path, tw + n.status().message());
        }
        if (Status st = in.validateParts(sizes); !st.isOk()) {
            return corrupt(path, st.message());
        }
    }
    if (d.pos() != idx.indexBytes) return corrupt(path, "index region has trailing bytes");
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i) {
        if (ranges[i].first < ranges[i - 1].second) return corrupt(path, "extents overlap");
    }
    return idx;
}

Result<LayerFileIndex> readLayerIndex(int fd, const std::string& path) {
    SLI_ASSIGN_OR_RETURN(uint64_t size, fileSize(fd, path));
    if (size < kCacheFixedHeaderBytes) {
        return corrupt(path, "truncated: " + std::to_string(size) + " bytes, shorter than the 64-byte header");
    }
    // Read whole 4096-byte blocks so an O_DIRECT fd works too.
    const uint64_t first = std::min<uint64_t>(alignUp(size, kCacheAlignment), kCacheAlignment);
    void* mem = std::aligned_alloc(kCacheAlignment, kCacheAlignment);
    if (mem == nullptr) return Status::resourceExhausted("allocating an index buffer");
    std::vector<uint8_t> buf;
    auto readAligned = [&](uint64_t n) -> Status {
        // pread in 4096-byte blocks into an aligned bounce buffer, then append.
        buf.clear();
        for (uint64_t off = 0; off < n; off += kCacheAlignment) {
            const uint64_t want = std::min<uint64_t>(kCacheAlignment, size - off);
            ssize_t got;
            do {
                got = ::pread(fd, mem, kCacheAlignment, static_cast<off_t>(off));
            } while (got < 0 && errno == EINTR);
            if (got < 0) return Status::fromErrno(errno, "read " + path);
            if (static_cast<uint64_t>(got) < want) {
                return corrupt(path, "truncated while reading the index");
            }
            buf.insert(buf.end(), static_cast<uint8_t*>(mem), static_cast<uint8_t*>(mem) + want);
        }
        return Status();
    };
    Status st = readAligned(first);
    if (st.isOk() && buf.size() >= kCacheFixedHeaderBytes &&
        std::memcmp(buf.data(), kCacheMagic, 8) == 0) {
        const uint64_t indexBytes = readLe(buf.data() + 16, 8);
        if (indexBytes > buf.size() && indexBytes <= std::min(size, kCacheMaxIndexBytes)) {
            st = readAligned(alignUp(indexBytes, kCacheAlignment));
        }
    }
    std::free(mem);
    SLI_RETURN_IF_ERROR(st);
    return parseLayerIndex(buf, size, path);
}

Result<LayerFileIndex> readLayerIndex(const std::string& path) {
    SLI_ASSIGN_OR_RETURN(UniqueFd fd, openFile(path, O_RDONLY));
    return readLayerIndex(fd.get(), path);
}

Status verifyExtent(const LayerFileIndex& index, size_t t, QuantPart p,
                    std::span<const uint8_t> stored) {
    const CacheTensorEntry& te = index.tensors.at(t);
    const Extent& x = te.part(p);
    if (stored.size() != x.storedBytes ||
        checksum64(stored.data(), stored.size()) != x.checksum) {
        return Status::corruption(where(index.path, &index, &te.info.name) + ": " +
                                  quantPartName(p) + " extent checksum mismatch");
    }
    return Status();
}

Result<QuantizedTensorView> decodeTensor(const LayerFileIndex& index, size_t t,
                                         std::span<const uint8_t> bytes, uint64_t bytesFileOffset,
                                         bool verify, std::span<uint8_t> scratch) {
    if (t >= index.tensors.size()) {
        return Status::invalidArgument("decodeTensor: tensor " + std::to_string(t) +
                                       " out of range for " + index.path);
    }
    const CacheTensorEntry& te = index.tensors[t];
    if (scratch.size() < te.scratchBytes()) {
        return Status::invalidArgument("decodeTensor: scratch of " + std::to_string(scratch.size()) +
                                       " bytes, tensor " + te.info.name + " needs " +
                                       std::to_string(te.scratchBytes()));
    }
    QuantizedTensorView v;
    v.info = &te.info;
    uint64_t scratchPos = 0;
    for (int p = 0; p < kQuantPartCount; ++p) {
        const Extent& x = te.parts[p];
        if (x.empty()) continue;
        if (x.offset < bytesFileOffset || x.offset - bytesFileOffset > bytes.size() ||
            x.storedBytes > bytes.size() - (x.offset - bytesFileOffset)) {
            return Status::invalidArgument("decodeTensor: the buffer given for " +
                                           where(index.path, &index, &te.info.name) +
                                           " does not cover its " +
                                           quantPartName(static_cast<QuantPart>(p)) + " extent");
        }
        const auto stored = bytes.subspan(x.offset - bytesFileOffset, x.storedBytes);
        if (verify) SLI_RETURN_IF_ERROR(verifyExtent(index, t, static_cast<QuantPart>(p), stored));
        if (x.compression == Compression::kNone) {
            v.parts[p] = stored;
            continue;
        }
        uint8_t* dst = scratch.data() + scratchPos;
        const size_t n = ZSTD_decompress(dst, x.rawBytes, stored.data(), stored.size());
        if (ZSTD_isError(n) || n != x.rawBytes) {
            return Status::corruption(where(index.path, &index, &te.info.name) + ": " +
                                      quantPartName(static_cast<QuantPart>(p)) +
                                      " extent does not decompress to its recorded size" +
                                      (ZSTD_isError(n) ? std::string(" (") + ZSTD_getErrorName(n) + ")"
                                                       : std::string()));
        }
        v.parts[p] = std::span<const uint8_t>(dst, x.rawBytes);
        scratchPos += alignUp(x.rawBytes, kCacheScratchAlignment);
    }
    return v;
}

Result<std::vector<uint8_t>> encodeLayerFile(const QuantizedLayer& layer, const LayerFileMeta& meta,
                                             const LayerWriteOptions& options,
                                             std::string_view pathForErrors) {
    std::vector<uint8_t> out;
    auto end = emitLayer(layer, meta, options, pathForErrors,
                         [&](uint64_t off, std::span<const uint8_t> b) -> Status {
                             if (out.size() < off + b.size()) out.resize(off + b.size(), 0);
                             std::memcpy(out.data() + off, b.data(), b.size());
                             return Status();
                         });
    if (!end.isOk()) return end.status();
    out.resize(*end, 0);
    return out;
}

Status writeLayerFile(const std::string& path, const QuantizedLayer& layer,
                      const LayerFileMeta& meta, const LayerWriteOptions& options) {
    return atomicWriteFile(path, [&](int fd, const std::string& tmp) -> Status {
        auto end = emitLayer(layer, meta, options, path,
                             [&](uint64_t off, std::span<const uint8_t> b) {
                                 return pwriteAll(fd, b, off, tmp);
                             });
        if (!end.isOk()) return end.status();
        // The file ends on a 4096 boundary; the padding after the last extent is a hole.
        if (::ftruncate(fd, static_cast<off_t>(*end)) != 0) {
            return Status::fromErrno(errno, "ftruncate " + tmp);
        }
        return Status();
    });
}

Result<QuantizedLayer> decodeLayerFile(std::span<const uint8_t> file, std::string_view path,
                                       bool verify, LayerFileIndex* indexOut) {
    SLI_ASSIGN_OR_RETURN(LayerFileIndex idx, parseLayerIndex(file, file.size(), path));
    QuantizedLayer layer;
    layer.name = idx.layerName;
    layer.index = idx.layerIndex;
    std::vector<uint8_t> scratch(idx.maxScratchBytes());
    for (size_t t = 0; t < idx.tensors.size(); ++t) {
        SLI_ASSIGN_OR_RETURN(QuantizedTensorView v, decodeTensor(idx, t, file, 0, verify, scratch));
        QuantizedTensor qt;
        qt.info = idx.tensors[t].info;
        for (int p = 0; p < kQuantPartCount; ++p) {
            SLI_ASSIGN_OR_RETURN(qt.parts[p], AlignedBuffer::allocate(v.parts[p].size(), false));
            if (!v.parts[p].empty()) std::memcpy(qt.parts[p].data(), v.parts[p].data(), v.parts[p].size());
        }
        layer.tensors.push_back(std::move(qt));
    }
    if (indexOut != nullptr) *indexOut = std::move(idx);
    return layer;
}

Result<QuantizedLayer> readLayerFile(const std::string& path, bool verify,
                                     LayerFileIndex* indexOut) {
    SLI_ASSIGN_OR_RETURN(auto bytes, readWholeFile(path));
    return decodeLayerFile(bytes, path, verify, indexOut);
}

Status verifyLayerFile(const std::string& path, LayerFileIndex* indexOut) {
    SLI_ASSIGN_OR_RETURN(auto bytes, readWholeFile(path));
    LayerFileIndex idx;
    auto layer = decodeLayerFile(bytes, path, true, &idx);
    if (!layer.isOk()) return layer.status();
    // Every byte outside the index region and the extents must be zero padding.
    std::vector<std::pair<uint64_t, uint64_t>> used{{0, idx.indexBytes}};
    for (const auto& te : idx.tensors) {
        for (const auto& x : te.parts) {
            if (!x.empty()) used.emplace_back(x.offset, x.offset + x.storedBytes);
        }
    }
    std::sort(used.begin(), used.end());
    uint64_t pos = 0;
    auto checkZero = [&](uint64_t from, uint64_t to) -> Status {
        for (uint64_t i = from; i < to; ++i) {
            if (bytes[i] != 0) {
                return Status::corruption(where(path, &idx) + ": non-zero padding byte at offset " +
                                          std::to_string(i));
            }
        }
        return Status();
    };
    for (const auto& [b, e] : used) {
        if (b > pos) SLI_RETURN_IF_ERROR(checkZero(pos, b));
        pos = std::max(pos, e);
    }
    SLI_RETURN_IF_ERROR(checkZero(pos, bytes.size()));
    if (indexOut != nullptr) *indexOut = std::move(idx);
    return Status();
}

}  // namespace sli::io

// The layer-cache file format (one file per layer, "*.slc"): writer, index reader, decoder.
//
// Byte-level specification: docs/cache-format.md. In short, a file is
//   [ index region: 64-byte fixed header | layer/model/config/source strings | tensor table ]
//   [ zero padding to 4096 ]
//   [ data region: one extent per non-empty part of each tensor, each starting on a 4096-byte
//     boundary, zero padding between extents and up to a file size that is a multiple of 4096 ]
// The index region carries an xxh3-64 checksum; every extent carries the xxh3-64 of its stored
// bytes. Statistics parts (absmax, nested absmax, quant maps) are zstd-compressed when the
// writer is asked to (and it helps); payloads only behind LayerWriteOptions::compressPayload.
//
// How the engine reads a layer without copying payloads:
//
//   auto idx = io::readLayerIndex(path);        // one small pread; verifies magic, version,
//                                               // index checksum, table, truncation
//   // read file bytes [idx->dataStart, idx->dataEnd) itself (io_uring, O_DIRECT: both ends
//   // are multiples of 4096) into a 4096-aligned pinned buffer `buf`, then per tensor:
//   std::vector<uint8_t> scratch(idx->maxScratchBytes());   // or a pooled buffer
//   auto view = io::decodeTensor(*idx, t, buf, idx->dataStart, /*verify=*/true, scratch);
//   kernels::dequantize(*view, dtype, out);     // view points into buf / scratch / idx
//
// decodeTensor() checks each extent's xxh3 (when verify), decompresses zstd parts into
// `scratch` and returns a QuantizedTensorView whose uncompressed parts point straight into the
// caller's bytes. `bytes` may be the whole data region or any sub-range covering the tensor
// ([entry.fileBegin(), entry.fileEnd())), named by its file offset `bytesFileOffset`.
// Parts in the data region are 64-byte aligned in memory when the buffer is 4096-aligned.
// The view's `info` points into the LayerFileIndex: keep the index alive while using it.
//
// Ownership: LayerFileIndex is a value; the decoders borrow the caller's buffers.
// Blocking: readLayerIndex / readLayerFile / verifyLayerFile / writeLayerFile do blocking I/O;
// parseLayerIndex and decodeTensor are pure CPU. Thread safety: all functions are reentrant;
// a const LayerFileIndex may be shared by many decoding threads.
// Errors: Corruption naming the file, layer and tensor (bad magic, checksum mismatch,
// truncation, impossible table values, failed decompression); NotSupported for a newer format
// version; IOError / NotFound / ResourceExhausted from the OS (ENOSPC, EFBIG) naming the file.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sli/quantized.h"
#include "sli/status.h"

namespace sli::io {

inline constexpr char kCacheMagic[8] = {'S', 'L', 'I', 'C', 'A', 'C', 'H', 'E'};
inline constexpr uint32_t kCacheFormatVersion = 1;
inline constexpr uint64_t kCacheAlignment = 4096;      // extents, data region, file size
inline constexpr uint64_t kCacheFixedHeaderBytes = 64;
inline constexpr uint64_t kCacheMaxIndexBytes = 64ull << 20;
inline constexpr uint64_t kCacheScratchAlignment = 64;  // parts decoded into scratch
inline constexpr const char* kLayerFileSuffix = ".slc";

enum class Compression : uint8_t { kNone = 0, kZstd = 1 };
const char* compressionName(Compression c) noexcept;  // "none", "zstd"

struct Extent {
    uint64_t offset = 0;       // absolute file offset; a multiple of 4096 (0 when empty)
    uint64_t storedBytes = 0;  // bytes on disk
    uint64_t rawBytes = 0;     // bytes of the part after decompression
    Compression compression = Compression::kNone;
    uint64_t checksum = 0;     // xxh3-64 (seed 0) of the stored bytes
    bool empty() const noexcept { return storedBytes == 0; }
};

struct CacheTensorEntry {
    QuantizedTensorInfo info;
    std::array<Extent, kQuantPartCount> parts{};

    const Extent& part(QuantPart p) const { return parts[static_cast<int>(p)]; }
    // [fileBegin(), fileEnd()): the file range covering every non-empty extent (0, 0 if none).
    uint64_t fileBegin() const noexcept;
    uint64_t fileEnd() const noexcept;
    uint64_t storedBytes() const noexcept;  // sum of stored extent sizes
    uint64_t rawBytes() const noexcept;     // sum of decoded part sizes
    // Scratch decodeTensor() needs: compressed parts' raw sizes, each rounded up to 64.
    uint64_t scratchBytes() const noexcept;
};

struct LayerFileIndex {
    std::string path;
    uint32_t formatVersion = 0;
    int64_t layerIndex = -1;
    std::string layerName;          // e.g. "model.layers.3"
    std::string modelId;
    std::string configJson;         // the QuantizationConfig JSON the layer was made with
    std::string sourceFingerprint;  // of the checkpoint it came from
    uint64_t indexBytes = 0;        // bytes [0, indexBytes) are the checksummed index region
    uint64_t dataStart = 0;         // data region [dataStart, dataEnd); both multiples of 4096
    uint64_t dataEnd = 0;           // == file size
    std::vector<CacheTensorEntry> tensors;  // in layer order

    uint64_t dataBytes() const noexcept { return dataEnd - dataStart; }
    uint64_t maxScratchBytes() const noexcept;    // the largest tensor's scratchBytes()
    uint64_t totalScratchBytes() const noexcept;  // sum over tensors (decode all at once)
    uint64_t rawBytes() const noexcept;           // sum of decoded part sizes
    std::optional<size_t> find(std::string_view tensorName) const;
};

// Reads and verifies the index region only (a pread of at most a few KiB for typical layers):
// magic, version, index checksum, table consistency, and that the file is as long as the
// index says (truncation is Corruption).
Result<LayerFileIndex> readLayerIndex(const std::string& path);
// Same from an fd the caller opened (O_DIRECT is fine: reads are 4096-aligned and sized).
Result<LayerFileIndex> readLayerIndex(int fd, const std::string& path);
// Parses an index from the first bytes of a file (`prefix` must hold its index region, or the
// whole file); `fileSize` is the full size. Pure; the fuzzer drives it.
Result<LayerFileIndex> parseLayerIndex(std::span<const uint8_t> prefix, uint64_t fileSize,
                                       std::string_view path);

// See the header comment. `scratch` must hold index.tensors[t].scratchBytes() bytes (any
// alignment; parts are placed at 64-byte offsets within it). InvalidArgument when `bytes`
// does not cover the tensor or scratch is short; Corruption on a checksum mismatch or a bad
// zstd frame.
Result<QuantizedTensorView> decodeTensor(const LayerFileIndex& index, size_t t,
                                         std::span<const uint8_t> bytes, uint64_t bytesFileOffset,
                                         bool verify, std::span<uint8_t> scratch);

// Checks one extent's checksum against `stored` (its stored bytes).
Status verifyExtent(const LayerFileIndex& index, size_t t, QuantPart p,
                    std::span<const uint8_t> stored);

// ---- writing ------------------------------------------------------------------------------

struct LayerWriteOptions {
    bool compressStatistics = true;  // zstd for absmax / nested / quant maps (when it helps)
    bool compressPayload = false;    // zstd for payloads too (when it saves >= 1/16)
    int zstdLevel = 3;
};

struct LayerFileMeta {
    std::string modelId;
    std::string configJson;
    std::string sourceFingerprint;
};

// Writes `layer` (index, name, tensors) atomically to `path` (temporary file in the same
// directory, fsync, rename, directory fsync). Each tensor is validated first.
Status writeLayerFile(const std::string& path, const QuantizedLayer& layer,
                      const LayerFileMeta& meta, const LayerWriteOptions& options = {});
// The same file image in memory (tests, fuzz seeds).
Result<std::vector<uint8_t>> encodeLayerFile(const QuantizedLayer& layer,
                                             const LayerFileMeta& meta,
                                             const LayerWriteOptions& options = {},
                                             std::string_view pathForErrors = "<memory>");

// ---- whole-file helpers -------------------------------------------------------------------

// Decodes every tensor of an in-memory file image into an owned QuantizedLayer.
Result<QuantizedLayer> decodeLayerFile(std::span<const uint8_t> file, std::string_view path,
                                       bool verify = true, LayerFileIndex* indexOut = nullptr);
// Reads a whole file and decodes it (verify: check every extent checksum).
Result<QuantizedLayer> readLayerFile(const std::string& path, bool verify = true,
                                     LayerFileIndex* indexOut = nullptr);
// Full verification: index, every extent checksum and decompression, part sizes, and that
// every byte outside the index and the extents (the padding) is zero.
Status verifyLayerFile(const std::string& path, LayerFileIndex* indexOut = nullptr);

// "layer-00012.slc"
std::string layerFileName(int64_t layerIndex);

}  // namespace sli::io

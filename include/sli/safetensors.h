// Safetensors: a strict reader (single files and sharded checkpoints) and a streaming writer.
//
// Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length
// N, N bytes of UTF-8 JSON, then the data region. The JSON is an object mapping tensor names
// to {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]} (offsets relative to the
// data region), plus an optional "__metadata__" object of string -> string. The reader
// enforces every rule, each failure being InvalidArgument (Corruption for a file whose data
// region disagrees with its header) naming the file and the rule broken:
//   - the file holds at least 8 bytes; N <= 100,000,000; 8 + N <= file size;
//   - the header is valid UTF-8, starts with '{', and parses (sli::parseJson) to an object
//     without duplicate keys;
//   - every tensor entry is an object with a known "dtype" string, a "shape" array of
//     non-negative integers and "data_offsets" [begin, end] of non-negative integers,
//     begin <= end;
//   - end - begin == numel(shape) * itemsize, computed without overflow;
//   - sorted by begin, the tensors tile the data region exactly: the first begins at 0, each
//     next one begins where the previous ended (no holes, no overlaps), and the last ends at
//     the end of the file;
//   - "__metadata__", when present and not null, is an object whose values are all strings
//     (null reads as no metadata, as the reference implementation does).
// Tensor data may be unaligned in the file: the reader copies it with pread into the caller's
// buffer and never dereferences it in place.
//
// Sharded checkpoints: a directory (or its model.safetensors.index.json) whose "weight_map"
// names, for every tensor, the shard file holding it. Each shard is validated as above; a shard
// that is missing, a tensor the index names that its shard lacks, or a shard name leaving the
// directory is an error. A directory without an index is read as the union of its
// *.safetensors files (a tensor name in two of them is an error).
//
// Ownership: SafetensorsFile / SafetensorsModel own their file descriptors. Blocking: every
// read is a blocking pread. Thread safety: after open(), const methods (including readTensor)
// may be called from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sli/dtype.h"
#include "sli/status.h"

namespace sli {

inline constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;

struct SafetensorsTensorInfo {
    std::string name;
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
    uint64_t begin = 0;  // relative to the data region
    uint64_t end = 0;
    uint64_t nbytes() const { return end - begin; }
};

struct SafetensorsHeader {
    uint64_t headerLength = 0;  // N
    uint64_t dataStart = 0;     // 8 + N
    std::vector<SafetensorsTensorInfo> tensors;  // in data-offset order
    std::vector<std::pair<std::string, std::string>> metadata;  // "__metadata__", file order
    // nullptr when absent (linear search is fine; callers build maps when they need many).
    const SafetensorsTensorInfo* find(std::string_view name) const;
};

// Validates a header. `prefix` holds the first bytes of the file (at least 8 + N of them
// when the file is that long); `fileSize` is the whole file's size. `path` only names the
// file in messages. This is the function the fuzzer drives.
Result<SafetensorsHeader> parseSafetensorsHeader(std::span<const uint8_t> prefix,
                                                 uint64_t fileSize, std::string_view path);

class SafetensorsFile {
public:
    SafetensorsFile();
    ~SafetensorsFile();
    SafetensorsFile(SafetensorsFile&&) noexcept;
    SafetensorsFile& operator=(SafetensorsFile&&) noexcept;

    static Result<SafetensorsFile> open(const std::string& path);

    const std::string& path() const noexcept { return path_; }
    const SafetensorsHeader& header() const noexcept { return header_; }
    uint64_t fileSize() const noexcept { return fileSize_; }
    // Reads a tensor's bytes; out.size() must equal its nbytes().
    Status readTensor(const SafetensorsTensorInfo& t, std::span<uint8_t> out) const;
    // Reads `out.size()` bytes starting `offset` bytes into the tensor.
    Status readTensorRange(const SafetensorsTensorInfo& t, uint64_t offset,
                           std::span<uint8_t> out) const;

private:
    std::string path_;
    int fd_ = -1;
    uint64_t fileSize_ = 0;
    SafetensorsHeader header_;
};

// One model spread over one or more safetensors files.
class SafetensorsModel {
public:
    struct Entry {
        const SafetensorsTensorInfo* info;  // owned by the shard
        size_t shard;                        // index into shards()
    };

    // `path`: a .safetensors file, a model.safetensors.index.json, or a directory.
    static Result<SafetensorsModel> open(const std::string& path);

    const std::vector<SafetensorsFile>& shards() const noexcept { return shards_; }
    // Tensors in checkpoint order (shard order, then data-offset order within a shard).
    const std::vector<Entry>& tensors() const noexcept { return tensors_; }
    const Entry* find(std::string_view name) const;
    Status readTensor(const Entry& e, std::span<uint8_t> out) const {
        return shards_[e.shard].readTensor(*e.info, out);
    }
    uint64_t totalTensorBytes() const;
    // A stable hex fingerprint of the checkpoint: xxh3-64 over every shard's name, size,
    // header contents (each tensor's name, offsets, dtype and shape; the metadata) and samples
    // of each tensor's data (its first, middle and last 4 KiB; all of it when smaller). Cheap:
    // at most 12 KiB read per tensor. New weights under an identical header (a fine-tune
    // saved over its base) change it, unless every changed byte lies outside the samples.
    const std::string& fingerprint() const noexcept { return fingerprint_; }
    // Where the model came from (the path given to open()).
    const std::string& source() const noexcept { return source_; }
    // Merged "__metadata__" of the shards plus the index's "metadata" strings.
    const std::vector<std::pair<std::string, std::string>>& metadata() const noexcept {
        return metadata_;
    }

private:
    std::vector<SafetensorsFile> shards_;
    std::vector<Entry> tensors_;
    std::vector<std::pair<std::string, std::string>> metadata_;
    std::string fingerprint_;
    std::string source_;
};

// Streaming writer: declare every tensor up front (the header comes first), then append
// their bytes in declaration order, then finish(). The file appears atomically at finish()
// (temporary file, fsync, rename, directory fsync); destroying an unfinished writer removes
// the temporary file. Output follows the reference rules: the header is padded with spaces
// to a multiple of 8 bytes and tensors are laid out contiguously in declaration order.
class SafetensorsWriter {
public:
    struct TensorDecl {
        std::string name;
        DType dtype = DType::kF32;
        std::vector<int64_t> shape;
    };

    SafetensorsWriter();
    ~SafetensorsWriter();
    SafetensorsWriter(SafetensorsWriter&&) noexcept;
    SafetensorsWriter& operator=(SafetensorsWriter&&) noexcept;

    static Result<SafetensorsWriter> create(
        const std::string& path, std::vector<TensorDecl> tensors,
        const std::vector<std::pair<std::string, std::string>>& metadata = {});
    // Appends bytes of the current tensor (may be called several times per tensor; a tensor
    // is complete once its numel * itemsize bytes have been appended).
    Status append(std::span<const uint8_t> bytes);
    Status finish();
    // Name of the tensor whose bytes append() expects next ("" when all are complete).
    std::string_view currentTensor() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Writes a whole file at once from in-memory tensors (tests and small exports).
struct SafetensorsInput {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::span<const uint8_t> bytes;
};
Status writeSafetensors(const std::string& path, const std::vector<SafetensorsInput>& tensors,
                        const std::vector<std::pair<std::string, std::string>>& metadata = {});

}  // namespace sli

// A read-only memory map of a whole file (Boost.Interprocess file_mapping + mapped_region).
//
// Ownership: MappedFile owns the mapping and unmaps it on destruction (move-only); the bytes
// it exposes stay valid for its lifetime. An empty file maps to an empty span (no mapping).
// Blocking: open() blocks on mmap; touching the bytes may page-fault on disk reads.
// Thread safety: the bytes are immutable and may be read from any number of threads.
// Errors: Boost.Interprocess throws; every exception is caught here and returned as a Status
// (NotFound / IOError) naming the file. No exception leaves io/.
// A mapping must never be registered as an io_uring fixed buffer (file-backed memory).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "sli/status.h"

namespace sli::io {

class MappedFile {
public:
    MappedFile() noexcept;
    ~MappedFile();
    MappedFile(MappedFile&&) noexcept;
    MappedFile& operator=(MappedFile&&) noexcept;
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    static Result<MappedFile> open(const std::string& path);

    std::span<const uint8_t> bytes() const noexcept { return {data_, size_}; }
    const uint8_t* data() const noexcept { return data_; }
    uint64_t size() const noexcept { return size_; }
    const std::string& path() const noexcept { return path_; }
    // madvise(MADV_SEQUENTIAL / WILLNEED) hint; failures are ignored.
    void adviseSequential() const noexcept;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    const uint8_t* data_ = nullptr;
    uint64_t size_ = 0;
    std::string path_;
};

}  // namespace sli::io

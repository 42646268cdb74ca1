// O_DIRECT helpers: opening a file for direct reads (with a buffered fallback where the
// filesystem refuses O_DIRECT), aligned spans, and an owned aligned buffer.
//
// openForDirectRead() tries O_RDONLY|O_DIRECT|O_CLOEXEC and, when the filesystem answers EINVAL
// (tmpfs, some FUSE and overlay mounts), reopens without O_DIRECT and logs ONE info line for the
// whole process saying so ("[sli:io info] O_DIRECT refused by /dev/shm/x: buffered reads").
//
// Reading an arbitrary byte range [offset, offset + length) with O_DIRECT: compute
// `AlignedSpan s = alignedSpan(offset, length)`, read s.length bytes at s.offset into a
// 4096-aligned buffer of at least s.length bytes with the kReadAllowEof flag (the span may run past
// end of file), and use the bytes at buffer + s.skip. Buffered fds accept the same requests.
//
// Ownership: DirectReadFile and AlignedBuffer own their fd / memory (RAII, movable, not
// copyable). Thread safety: distinct objects are independent; the fd may be read from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "sli/status.h"

namespace sli::io {

class DirectReadFile {
public:
    DirectReadFile() = default;
    ~DirectReadFile();
    DirectReadFile(DirectReadFile&& other) noexcept;
    DirectReadFile& operator=(DirectReadFile&& other) noexcept;
    DirectReadFile(const DirectReadFile&) = delete;
    DirectReadFile& operator=(const DirectReadFile&) = delete;

    int fd() const noexcept { return fd_; }
    bool isDirect() const noexcept { return direct_; }
    const std::string& path() const noexcept { return path_; }
    uint64_t size() const noexcept { return size_; }  // at open time
    bool isOpen() const noexcept { return fd_ >= 0; }
    void close() noexcept;

private:
    friend Result<DirectReadFile> openForDirectRead(const std::string& path, bool tryDirect);
    int fd_ = -1;
    bool direct_ = false;
    uint64_t size_ = 0;
    std::string path_;
};

// Opens `path` read-only, O_DIRECT when `tryDirect` and the filesystem allows it.
// Errors: NotFound / IOError naming the path.
Result<DirectReadFile> openForDirectRead(const std::string& path, bool tryDirect = true);

// True when `fd` was opened with O_DIRECT (one fcntl).
bool isDirectFd(int fd) noexcept;

struct AlignedSpan {
    uint64_t offset = 0;  // aligned down
    uint64_t length = 0;  // aligned up, covers [offset, offset + length) of the original range
    uint32_t skip = 0;    // original offset - aligned offset
};
AlignedSpan alignedSpan(uint64_t offset, uint64_t length, uint32_t alignment = 4096) noexcept;

constexpr uint64_t alignUp(uint64_t v, uint64_t a) noexcept { return (v + a - 1) / a * a; }
constexpr uint64_t alignDown(uint64_t v, uint64_t a) noexcept { return v / a * a; }
constexpr bool isAligned(uint64_t v, uint64_t a) noexcept { return v % a == 0; }

// Anonymous private memory for large I/O buffers. With `hugePages`, the mapping starts on a
// 2 MiB boundary and asks for transparent huge pages (MADV_HUGEPAGE; the kernel may still use
// 4 KiB pages): an O_DIRECT read into it then reaches the block device as a few large
// physically contiguous segments instead of one per 4 KiB page. On the virtio disk of the
// development VM that made cold reads 1.5-3x faster (docs/benchmarks.md, "Huge pages").
// Returns nullptr with errno set on failure; `bytes` is rounded up to 4096. Free with
// unmapAnonymous(p, bytes) using the same `bytes`.
void* mapAnonymous(size_t bytes, bool hugePages);
void unmapAnonymous(void* p, size_t bytes) noexcept;
// Faults every page of [p, p + bytes) in for writing (MADV_POPULATE_WRITE, or one store per
// page on kernels without it), so later I/O and mlock find the memory present. Errors:
// ResourceExhausted when the kernel cannot supply the memory (ENOMEM), instead of the OOM
// killer later.
Status populateForWrite(void* p, size_t bytes) noexcept;

// Buffers of at least this size come from mapAnonymous(bytes, true).
constexpr size_t kHugePageBufferBytes = size_t{2} << 20;

// Page-aligned memory (not pinned; use PinnedPool for that). Size rounded up to 4096; from
// kHugePageBufferBytes on it comes from mapAnonymous (with huge pages unless `hugePages` is
// false, which benchmarks use to show the difference), otherwise from the heap.
class AlignedBuffer {
public:
    AlignedBuffer() = default;
    static Result<AlignedBuffer> allocate(size_t bytes, size_t alignment = 4096,
                                          bool hugePages = true);
    ~AlignedBuffer();
    AlignedBuffer(AlignedBuffer&& other) noexcept;
    AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
    AlignedBuffer(const AlignedBuffer&) = delete;
    AlignedBuffer& operator=(const AlignedBuffer&) = delete;

    std::byte* data() const noexcept { return data_; }
    size_t size() const noexcept { return size_; }

private:
    void free() noexcept;

    std::byte* data_ = nullptr;
    size_t size_ = 0;
    bool mapped_ = false;  // from mapAnonymous, else std::aligned_alloc
};

}  // namespace sli::io

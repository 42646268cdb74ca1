#include "io/aligned_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "sli/log.h"

namespace sli::io {

DirectReadFile::~DirectReadFile() { close(); }

DirectReadFile::DirectReadFile(DirectReadFile&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      direct_(other.direct_),
      size_(other.size_),
      path_(std::move(other.path_)) {}

DirectReadFile& DirectReadFile::operator=(DirectReadFile&& other) noexcept {
    if (this != &other) {
        close();
        fd_ = std::exchange(other.fd_, -1);
        direct_ = other.direct_;
        size_ = other.size_;
        path_ = std::move(other.path_);
    }
    return *this;
}

void DirectReadFile::close() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
}

Result<DirectReadFile> openForDirectRead(const std::string& path, bool tryDirect) {
    DirectReadFile f;
    f.path_ = path;
    int fd = -1;
    if (tryDirect) {
        fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
        if (fd >= 0) {
            f.direct_ = true;
        } else if (errno != EINVAL) {
            return Status::fromErrno(errno, "open " + path);
        } else {
            // The filesystem refuses O_DIRECT (tmpfs and friends): say so once per process.
            static std::atomic<bool> said{false};
            if (!said.exchange(true)) {
                SLI_INFO("io", "O_DIRECT refused by the filesystem of %s: using buffered reads",
                         path.c_str());
            }
        }
    }
    if (fd < 0) {
        fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) return Status::fromErrno(errno, "open " + path);
    }
    f.fd_ = fd;
    struct stat st {};
    if (::fstat(fd, &st) != 0) return Status::fromErrno(errno, "stat " + path);
    f.size_ = static_cast<uint64_t>(st.st_size);
    return f;
}

bool isDirectFd(int fd) noexcept {
    const int flags = ::fcntl(fd, F_GETFL);
    return flags >= 0 && (flags & O_DIRECT) != 0;
}

AlignedSpan alignedSpan(uint64_t offset, uint64_t length, uint32_t alignment) noexcept {
    AlignedSpan s;
    s.offset = alignDown(offset, alignment);
    s.skip = static_cast<uint32_t>(offset - s.offset);
    s.length = alignUp(offset + length, alignment) - s.offset;
    return s;
}

namespace {
constexpr size_t kHugePage = size_t{2} << 20;
}  // namespace

void* mapAnonymous(size_t bytes, bool hugePages) {
    const size_t size = alignUp(bytes == 0 ? 1 : bytes, 4096);
    const int flags = MAP_ANONYMOUS | MAP_PRIVATE;
    if (!hugePages) {
        void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, flags, -1, 0);
        return p == MAP_FAILED ? nullptr : p;
    }
    // Over-map by one huge page and trim, so the range starts on a 2 MiB boundary.
    const size_t span = size + kHugePage;
    void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const auto base = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t start = alignUp(base, kHugePage);
    if (start > base) ::munmap(raw, start - base);
    const uintptr_t end = start + size;
    if (base + span > end) ::munmap(reinterpret_cast<void*>(end), base + span - end);
    void* p = reinterpret_cast<void*>(start);
#ifdef MADV_HUGEPAGE
    (void)::madvise(p, size, MADV_HUGEPAGE);  // advice only: 4 KiB pages still work
#endif
    return p;
}

void unmapAnonymous(void* p, size_t bytes) noexcept {
    if (p != nullptr) ::munmap(p, alignUp(bytes == 0 ? 1 : bytes, 4096));
}

Status populateForWrite(void* p, size_t bytes) noexcept {
#ifdef MADV_POPULATE_WRITE
    if (::madvise(p, bytes, MADV_POPULATE_WRITE) == 0) return Status::ok();
    if (errno != EINVAL) {  // EINVAL: a kernel without MADV_POPULATE_WRITE (before 5.14)
        return Status::resourceExhausted("cannot fault in " + std::to_string(bytes) +
                                         " bytes of buffer memory: " + std::strerror(errno));
    }
#endif
    // Older kernels: touch one byte per page (anonymous memory reads back zero anyway).
    auto* b = static_cast<volatile std::byte*>(p);
    for (size_t off = 0; off < bytes; off += 4096) b[off] = std::byte{0};
    return Status::ok();
}

Result<AlignedBuffer> AlignedBuffer::allocate(size_t bytes, size_t alignment, bool hugePages) {
    AlignedBuffer b;
    const size_t align = alignment < 4096 ? 4096 : alignment;
    const size_t size = alignUp(bytes == 0 ? 1 : bytes, align);
    if (size >= kHugePageBufferBytes && align <= kHugePage) {
        void* p = mapAnonymous(size, hugePages);
        if (p == nullptr) {
            return Status::resourceExhausted("cannot map " + std::to_string(size) +
                                             " bytes: " + std::strerror(errno));
        }
        b.data_ = static_cast<std::byte*>(p);
        b.size_ = size;
        b.mapped_ = true;
        return b;
    }
    void* p = std::aligned_alloc(align, size);
    if (p == nullptr) {
        return Status::resourceExhausted("cannot allocate " + std::to_string(size) +
                                         " aligned bytes");
    }
    b.data_ = static_cast<std::byte*>(p);
    b.size_ = size;
    return b;
}

void AlignedBuffer::free() noexcept {
    if (mapped_) {
        unmapAnonymous(data_, size_);
    } else {
        std::free(data_);
    }
    data_ = nullptr;
    size_ = 0;
    mapped_ = false;
}

AlignedBuffer::~AlignedBuffer() { free(); }

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, false)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
    if (this != &other) {
        free();
        data_ = std::exchange(other.data_, nullptr);
        size_ = std::exchange(other.size_, 0);
        mapped_ = std::exchange(other.mapped_, false);
    }
    return *this;
}

}  // namespace sli::io

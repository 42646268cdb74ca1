#include "io/aligned_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
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

Result<AlignedBuffer> AlignedBuffer::allocate(size_t bytes, size_t alignment) {
    AlignedBuffer b;
    const size_t align = alignment < 4096 ? 4096 : alignment;
    const size_t size = alignUp(bytes == 0 ? 1 : bytes, align);
    void* p = std::aligned_alloc(align, size);
    if (p == nullptr) {
        return Status::resourceExhausted("cannot allocate " + std::to_string(size) +
                                         " aligned bytes");
    }
    b.data_ = static_cast<std::byte*>(p);
    b.size_ = size;
    return b;
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
    if (this != &other) {
        std::free(data_);
        data_ = std::exchange(other.data_, nullptr);
        size_ = std::exchange(other.size_, 0);
    }
    return *this;
}

}  // namespace sli::io

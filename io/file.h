// POSIX file helpers: an owning file descriptor, whole-buffer pread / pwrite loops, fsync, an
// atomic "write a file or leave nothing" helper, directory listing, and advisory flock locks.
//
// Ownership: UniqueFd owns one descriptor and closes it in its destructor (move-only).
// FileLock owns one flock() on an fd it opened and releases it on destruction.
// Blocking: every call here blocks on the kernel; nothing is asynchronous.
// Thread safety: the free functions are thread-safe; a UniqueFd may be used for positional
// I/O (pread / pwrite) from several threads at once, but moving or resetting it is not
// synchronized.
// Errors: Status from errno (Status::fromErrno), the message naming the path concerned. EINTR
// is retried internally; short reads / writes are continued; a read that hits end of file
// before the requested bytes is Corruption ("truncated") since every caller here knows the
// size it expects.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sli/status.h"

namespace sli::io {

class UniqueFd {
public:
    UniqueFd() noexcept = default;
    explicit UniqueFd(int fd) noexcept : fd_(fd) {}
    ~UniqueFd() { reset(); }
    UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
    UniqueFd& operator=(UniqueFd&& o) noexcept {
        if (this != &o) reset(o.release());
        return *this;
    }
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;

    int get() const noexcept { return fd_; }
    bool valid() const noexcept { return fd_ >= 0; }
    int release() noexcept {
        int f = fd_;
        fd_ = -1;
        return f;
    }
    void reset(int fd = -1) noexcept;

private:
    int fd_ = -1;
};

// open(2) with O_CLOEXEC added; NotFound / IOError naming `path`.
Result<UniqueFd> openFile(const std::string& path, int flags, mode_t mode = 0644);
Result<uint64_t> fileSize(int fd, std::string_view pathForErrors);
Result<uint64_t> fileSize(const std::string& path);
bool pathExists(const std::string& path);
bool isDirectory(const std::string& path);

// Reads exactly out.size() bytes at `offset`. Corruption "truncated" if EOF comes first.
Status preadAll(int fd, std::span<uint8_t> out, uint64_t offset, std::string_view pathForErrors);
// Writes all of `data` at `offset`.
Status pwriteAll(int fd, std::span<const uint8_t> data, uint64_t offset,
                 std::string_view pathForErrors);
Status fsyncFd(int fd, std::string_view pathForErrors);
// fsync of a directory (makes a rename or unlink in it durable).
Status fsyncDir(const std::string& dir);
// Reads a whole (small) file.
Result<std::vector<uint8_t>> readWholeFile(const std::string& path);

// "a/b/c.txt" -> "a/b" ("." when there is no slash).
std::string dirName(std::string_view path);
// "a/b/c.txt" -> "c.txt".
std::string baseName(std::string_view path);
std::string joinPath(std::string_view a, std::string_view b);
// mkdir -p (0755). OK when it already exists as a directory.
Status makeDirs(const std::string& path);
// Unique temporary name beside `finalPath`: "<dir>/.<base>.tmp.<pid>.<n>".
std::string tempPathFor(const std::string& finalPath);
// True for names made by tempPathFor(); *pid receives the writer's pid.
bool isTempName(std::string_view baseName, int* pid = nullptr);

// Atomically creates or replaces `finalPath`: writes a temporary file in the same directory
// through `writer(fd, tmpPath)`, fsyncs it, renames it over `finalPath` and fsyncs the
// directory. On any failure the temporary file is removed and `finalPath` is untouched, so a
// crash at any moment leaves either the old file or the complete new one.
Status atomicWriteFile(const std::string& finalPath,
                       const std::function<Status(int fd, const std::string& tmpPath)>& writer);
// Convenience: atomicWriteFile with a byte buffer.
Status atomicWriteFile(const std::string& finalPath, std::span<const uint8_t> bytes);

// Entry names of a directory (no "." / ".."), sorted. NotFound / IOError naming `dir`.
Result<std::vector<std::string>> listDirectory(const std::string& dir);
// unlink(2); OK when the file is already gone.
Status removeFile(const std::string& path);

// An advisory flock(2) on a lock file (created if missing). Shared locks coexist; an
// exclusive one waits for all others. Released by the destructor (close of its fd).
class FileLock {
public:
    enum class Kind { kShared, kExclusive };
    FileLock() = default;
    FileLock(FileLock&&) noexcept = default;
    FileLock& operator=(FileLock&&) noexcept = default;
    // Blocks until the lock is granted (EINTR retried).
    static Result<FileLock> acquire(const std::string& lockPath, Kind kind);
    bool held() const noexcept { return fd_.valid(); }
    void unlock() noexcept { fd_.reset(); }

private:
    UniqueFd fd_;
};

}  // namespace sli::io

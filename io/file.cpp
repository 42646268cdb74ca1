#include "io/file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

namespace sli::io {

void UniqueFd::reset(int fd) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
}

Result<UniqueFd> openFile(const std::string& path, int flags, mode_t mode) {
    int fd;
    do {
        fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return Status::fromErrno(errno, "open " + path);
    return UniqueFd(fd);
}

Result<uint64_t> fileSize(int fd, std::string_view pathForErrors) {
    struct stat st;
    if (::fstat(fd, &st) != 0) return Status::fromErrno(errno, "fstat " + std::string(pathForErrors));
    return static_cast<uint64_t>(st.st_size);
}

Result<uint64_t> fileSize(const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return Status::fromErrno(errno, "stat " + path);
    return static_cast<uint64_t>(st.st_size);
}

bool pathExists(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0;
}

bool isDirectory(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

Status preadAll(int fd, std::span<uint8_t> out, uint64_t offset, std::string_view pathForErrors) {
    size_t done = 0;
    while (done < out.size()) {
        const ssize_t n = ::pread(fd, out.data() + done, out.size() - done,
                                  static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            return Status::fromErrno(errno, "read " + std::string(pathForErrors));
        }
        if (n == 0) {
            return Status::corruption(std::string(pathForErrors) + ": truncated: wanted " +
                                      std::to_string(out.size()) + " bytes at offset " +
                                      std::to_string(offset) + ", file ends after " +
                                      std::to_string(offset + done));
        }
        done += static_cast<size_t>(n);
    }
    return Status();
}

Status pwriteAll(int fd, std::span<const uint8_t> data, uint64_t offset,
                 std::string_view pathForErrors) {
    size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::pwrite(fd, data.data() + done, data.size() - done,
                                   static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            return Status::fromErrno(errno, "write " + std::string(pathForErrors));
        }
        if (n == 0) return Status::ioError("write " + std::string(pathForErrors) + ": wrote nothing");
        done += static_cast<size_t>(n);
    }
    return Status();
}

Status fsyncFd(int fd, std::string_view pathForErrors) {
    int rc;
    do {
        rc = ::fsync(fd);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) return Status::fromErrno(errno, "fsync " + std::string(pathForErrors));
    return Status();
}

Status fsyncDir(const std::string& dir) {
    SLI_ASSIGN_OR_RETURN(UniqueFd fd, openFile(dir, O_RDONLY | O_DIRECTORY));
    return fsyncFd(fd.get(), dir);
}

Result<std::vector<uint8_t>> readWholeFile(const std::string& path) {
    SLI_ASSIGN_OR_RETURN(UniqueFd fd, openFile(path, O_RDONLY));
    SLI_ASSIGN_OR_RETURN(uint64_t size, fileSize(fd.get(), path));
    std::vector<uint8_t> out(size);
    SLI_RETURN_IF_ERROR(preadAll(fd.get(), out, 0, path));
    return out;
}

std::string dirName(std::string_view path) {
    const size_t p = path.find_last_of('/');
    if (p == std::string_view::npos) return ".";
    if (p == 0) return "/";
    return std::string(path.substr(0, p));
}

std::string baseName(std::string_view path) {
    const size_t p = path.find_last_of('/');
    return std::string(p == std::string_view::npos ? path : path.substr(p + 1));
}

std::string joinPath(std::string_view a, std::string_view b) {
    if (a.empty()) return std::string(b);
    if (!b.empty() && b.front() == '/') return std::string(b);
    std::string r(a);
    if (r.back() != '/') r += '/';
    r += b;
    return r;
}

Status makeDirs(const std::string& path) {
    if (path.empty() || isDirectory(path)) return Status();
    const std::string parent = dirName(path);
    if (parent != path && parent != "." && parent != "/") SLI_RETURN_IF_ERROR(makeDirs(parent));
    if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
        return Status::fromErrno(errno, "mkdir " + path);
    }
    if (!isDirectory(path)) return Status::ioError(path + " exists and is not a directory");
    return Status();
}

std::string tempPathFor(const std::string& finalPath) {
    static std::atomic<uint64_t> counter{0};
    // Appended piece by piece ("." + ... trips a GCC 12 -Wrestrict false positive).
    std::string name(".");
    name.append(baseName(finalPath)).append(".tmp.").append(std::to_string(::getpid()));
    name.append(".").append(std::to_string(counter.fetch_add(1)));
    return joinPath(dirName(finalPath), name);
}

bool isTempName(std::string_view name, int* pid) {
    if (name.empty() || name[0] != '.') return false;
    const size_t t = name.rfind(".tmp.");
    if (t == std::string_view::npos) return false;
    std::string_view rest = name.substr(t + 5);
    const size_t dot = rest.find('.');
    if (dot == std::string_view::npos || dot == 0) return false;
    int p = 0;
    for (char c : rest.substr(0, dot)) {
        if (c < '0' || c > '9') return false;
        p = p * 10 + (c - '0');
        if (p > 1 << 28) return false;
    }
    if (pid != nullptr) *pid = p;
    return true;
}

Status atomicWriteFile(const std::string& finalPath,
                       const std::function<Status(int fd, const std::string& tmpPath)>& writer) {
    const std::string tmp = tempPathFor(finalPath);
    Status st;
    {
        auto fd = openFile(tmp, O_WRONLY | O_CREAT | O_EXCL | O_TRUNC, 0644);
        if (!fd.isOk()) return fd.status();
        st = writer(fd->get(), tmp);
        if (st.isOk()) st = fsyncFd(fd->get(), tmp);
    }
    if (st.isOk() && ::rename(tmp.c_str(), finalPath.c_str()) != 0) {
        st = Status::fromErrno(errno, "rename " + tmp + " -> " + finalPath);
    }
    if (!st.isOk()) {
        ::unlink(tmp.c_str());
        return st;
    }
    return fsyncDir(dirName(finalPath));
}

Status atomicWriteFile(const std::string& finalPath, std::span<const uint8_t> bytes) {
    return atomicWriteFile(finalPath, [&](int fd, const std::string& tmp) {
        return pwriteAll(fd, bytes, 0, tmp);
    });
}

Result<std::vector<std::string>> listDirectory(const std::string& dir) {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return Status::fromErrno(errno, "opendir " + dir);
    std::vector<std::string> names;
    errno = 0;
    while (struct dirent* e = ::readdir(d)) {
        if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
        names.emplace_back(e->d_name);
    }
    const int err = errno;
    ::closedir(d);
    if (err != 0) return Status::fromErrno(err, "readdir " + dir);
    std::sort(names.begin(), names.end());
    return names;
}

Status removeFile(const std::string& path) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
        return Status::fromErrno(errno, "unlink " + path);
    }
    return Status();
}

Result<FileLock> FileLock::acquire(const std::string& lockPath, Kind kind) {
    FileLock lock;
    SLI_ASSIGN_OR_RETURN(lock.fd_, openFile(lockPath, O_RDWR | O_CREAT, 0644));
    int rc;
    do {
        rc = ::flock(lock.fd_.get(), kind == Kind::kShared ? LOCK_SH : LOCK_EX);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) return Status::fromErrno(errno, "flock " + lockPath);
    return lock;
}

}  // namespace sli::io

// Read scheduler: asynchronous, chunked, retrying reads of byte ranges of files into memory.
//
// Two layers live here.
//
//  * ReadScheduler (what the engine uses): the caller submits ReadRequests (fd, offset, length,
//    destination, tag) and later reaps exactly one ReadCompletion per request, carrying either
//    the full number of bytes asked for or an error. Inside, each request is split into chunks
//    of `chunkBytes`; at most `queueDepth` chunks are in flight at once; short reads are
//    resubmitted for their remainder and -EAGAIN / -EINTR results are resubmitted, so the
//    caller never sees them. An error completion carries a Status naming the file (the name
//    given to registerFile, else "fd N"), the offset and the errno.
//
//  * ReadBackend (the raw layer): moves single chunk reads to the kernel and hands back raw
//    results (bytes or -errno, short reads and -EAGAIN included) without interpreting them.
//    Implementations: io_uring (io/uring_scheduler.h) and a pread thread pool
//    (io/pread_scheduler.h). The retry and chunking logic sits above this line, once, so it can
//    be driven by injected results (io/fault_injecting_scheduler.h).
//
// O_DIRECT: files opened with openForDirectRead() (io/aligned_io.h) may be O_DIRECT. For those,
// offset, length and destination of each request must be multiples of kDirectIoAlignment (4096);
// a misaligned request completes with -EINVAL. To read a range of any size, read the enclosing
// aligned span (alignedSpan() in io/aligned_io.h) into an aligned buffer and use the data at
// `skip` bytes into it. A span that runs past the end of the file needs kReadAllowEof: it then
// completes with the bytes up to end of file. Without the flag a read that meets end of file
// early completes with -ENODATA ("file truncated?").
//
// Ownership: the scheduler never owns the fds or destination buffers. Both must stay valid until
// the request's completion is reaped (or the scheduler is destroyed). Destinations inside memory
// given to registerBuffers() are read with fixed buffers on io_uring (IORING_OP_READ_FIXED).
//
// Thread safety: a ReadScheduler is driven by ONE thread at a time (its owner): submit, reap,
// cancelAll, registerFile and registerBuffers must not run concurrently. Use one scheduler per
// submitting thread (io_uring: one ring per thread). The pread backend's workers are internal.
// Blocking: submit never blocks on I/O; reap blocks up to its timeout; cancelAll and the
// destructor block until the reads already handed to the kernel have finished (milliseconds).
//
// Errors: factories return Result; per-request failures arrive as completions, never as a
// failed submit (submit fails only after cancelAll / on a broken backend).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sli/status.h"

namespace sli::io {

// Alignment required of O_DIRECT offsets, lengths and buffers (covers 512 and 4K sectors).
inline constexpr uint32_t kDirectIoAlignment = 4096;

// ReadRequest::flags
inline constexpr uint32_t kReadAllowEof = 1u << 0;  // end of file before `length` is success

struct ReadRequest {
    int fd = -1;
    uint64_t offset = 0;
    uint32_t length = 0;
    void* dst = nullptr;
    uint64_t tag = 0;  // returned untouched in the completion
    uint32_t flags = 0;
};

struct ReadCompletion {
    uint64_t tag = 0;
    int64_t result = 0;  // bytes read (== length unless kReadAllowEof), or -errno
    Status status;       // OK, or the error naming file, offset and errno
    bool ok() const noexcept { return result >= 0; }
};

// A contiguous piece of anonymous memory (a pinned-pool slab) that may be registered.
struct MemoryRegion {
    void* data = nullptr;
    size_t size = 0;
};

enum class IoBackend { kAuto, kIoUring, kPread };

// "auto", "io_uring" (also "uring", "io-uring"), "pread"; case-insensitive.
Result<IoBackend> parseIoBackend(std::string_view text);
const char* ioBackendName(IoBackend backend) noexcept;
// SLI_IO_BACKEND, or `fallback` when unset; an unparsable value is an InvalidArgument error.
Result<IoBackend> ioBackendFromEnv(IoBackend fallback = IoBackend::kAuto);

struct ReadSchedulerOptions {
    IoBackend backend = IoBackend::kAuto;
    uint32_t chunkBytes = 1u << 20;  // multiple of 4096, 4 KiB .. 64 MiB (1-4 MiB typical)
    uint32_t queueDepth = 64;        // chunks in flight, 1 .. 4096 (32-128 typical)
    uint32_t preadThreads = 0;       // pread backend: 0 = min(queueDepth, 16)
    uint32_t maxRetries = 1000;      // -EAGAIN / -EINTR resubmissions per chunk before failing
};
Status validateOptions(const ReadSchedulerOptions& options);

// ---------------------------------------------------------------------------------------------
// Raw layer.

struct RawRead {
    int fd = -1;              // a plain fd (the backend maps registered fds to fixed slots)
    uint64_t offset = 0;
    uint32_t length = 0;
    void* dst = nullptr;
    uint32_t id = 0;          // opaque, echoed in the RawResult
};

struct RawResult {
    uint32_t id = 0;
    int32_t res = 0;  // bytes (possibly short, 0 = end of file) or -errno (EAGAIN, EINTR, ...)
};

// Not thread-safe: driven by the ReadScheduler's owner thread. submit() is never given more
// than capacity() reads in flight.
class ReadBackend {
public:
    virtual ~ReadBackend() = default;
    virtual const char* name() const noexcept = 0;
    virtual uint32_t capacity() const noexcept = 0;
    // Registered files/buffers are an optimisation: failures are reported, callers go on.
    virtual Status registerFile(int fd) { (void)fd; return Status::ok(); }
    virtual void unregisterFile(int fd) { (void)fd; }
    virtual Status registerBuffers(std::span<const MemoryRegion> regions) {
        (void)regions;
        return Status::notSupported("backend has no fixed buffers");
    }
    // Starts the reads (io_uring: one io_uring_submit for the whole batch).
    virtual Status submit(std::span<const RawRead> reads) = 0;
    // Writes up to out.size() results; waits up to `timeout` when none is ready (0 = poll,
    // negative = forever). Returns the count.
    virtual size_t reap(std::span<RawResult> out, std::chrono::nanoseconds timeout) = 0;
    // Reads handed to the kernel but not yet reaped.
    virtual uint32_t inFlight() const noexcept = 0;
};

// ---------------------------------------------------------------------------------------------
// The scheduler.

class ReadScheduler {
public:
    static constexpr std::chrono::nanoseconds kForever{-1};

    virtual ~ReadScheduler() = default;
    virtual const char* backendName() const noexcept = 0;
    virtual const ReadSchedulerOptions& options() const noexcept = 0;

    // Names `fd` in error messages and, on io_uring, adds it to the registered file table.
    // Call unregisterFile before closing the fd. Registering is optional.
    virtual Status registerFile(int fd, std::string name) = 0;
    virtual void unregisterFile(int fd) = 0;
    // Registers anonymous, page-aligned regions (pinned pool slabs, <= 1 GiB each) for fixed-
    // buffer reads. NotSupported on pread; a kernel refusal (memlock) is returned as an error and
    // reads simply go on without fixed buffers. Call before the first submit.
    virtual Status registerBuffers(std::span<const MemoryRegion> regions) = 0;

    // Queues the requests (any number; at most queueDepth chunks go to the kernel at once).
    virtual Status submit(std::span<const ReadRequest> requests) = 0;
    Status submit(const ReadRequest& request) { return submit(std::span(&request, 1)); }
    // Moves up to out.size() completions into `out`; waits up to `timeout` for the first one
    // (0 = poll, kForever = until one arrives). Returns 0 at once when nothing is pending.
    virtual size_t reap(std::span<ReadCompletion> out, std::chrono::nanoseconds timeout) = 0;
    // Requests submitted and not yet reaped.
    virtual size_t pending() const noexcept = 0;
    // Drops queued chunks, waits for those in flight; every unfinished request then completes
    // with -ECANCELED (reap them to learn which). Later submits fail. Blocks briefly.
    virtual void cancelAll() = 0;
};

// The common chunking + retry layer over any ReadBackend.
std::unique_ptr<ReadScheduler> makeChunkedScheduler(std::unique_ptr<ReadBackend> backend,
                                                    const ReadSchedulerOptions& options);

// Builds the scheduler for options.backend: kAuto picks io_uring when probeIoUring() says it is
// usable, else pread (one info log line saying which). kIoUring fails with NotSupported when
// io_uring is not usable (or not compiled in).
Result<std::unique_ptr<ReadScheduler>> makeReadScheduler(const ReadSchedulerOptions& options);

// Sequential read throughput, in GB/s (1e9 bytes/s), of whole files through a scheduler of the
// given backend (kAuto: io_uring when usable), files opened with openForDirectRead. This is the
// "physical limit" slibench compares the engine against.
//
// Destination memory: requests rotate through a buffer of max(footprintBytes, chunk x depth)
// bytes (huge pages, io::AlignedBuffer) and the data is discarded. The footprint matters: on the
// development VM a reader reusing 32 MiB (about the L3 size) measured 6.0-6.3 GB/s where 256 MiB
// or 1 GiB measured 5.0-5.2 GB/s, because a small buffer stays cache-resident while the
// hypervisor copies into it. The engine keeps every layer until it is used, so it can never
// read into cache-resident memory; kRawReadFootprint keeps the comparison like for like.
// `hugePages` = false reads into 4 KiB pages instead (slibench prints both: see
// io/pinned_pool.h for why the engine's slots use huge pages). `hashThreads` > 0 makes it a
// verifying reader: that many threads xxh3 each chunk as it lands, a slot is read into again
// only after its hash, and the time includes the last hash (the limit for a reader that
// checks what it reads, as the engine does).
constexpr uint64_t kRawReadFootprint = 256ull << 20;
struct RawReadResult {
    double gbps = 0;
    uint64_t bytes = 0;
    double seconds = 0;
    uint32_t chunkBytes = 0;
    uint32_t queueDepth = 0;
    uint64_t footprintBytes = 0;  // destination buffer size used
    int hashThreads = 0;          // > 0: every chunk was hashed (see measureRawRead)
    std::string backend;
};
Result<RawReadResult> measureRawRead(std::span<const std::string> paths, uint32_t chunkBytes,
                                     uint32_t queueDepth, IoBackend backend = IoBackend::kAuto,
                                     uint64_t footprintBytes = kRawReadFootprint,
                                     bool hugePages = true, int hashThreads = 0);
Result<double> measureRawReadGbps(std::span<const std::string> paths, uint32_t chunkBytes,
                                  uint32_t queueDepth, IoBackend backend = IoBackend::kAuto,
                                  uint64_t footprintBytes = kRawReadFootprint);
// Best of a few (chunk, depth) combinations: (1 MiB, 32), (2 MiB, 64), (4 MiB, 64), (4 MiB, 128).
Result<RawReadResult> measureBestRawRead(std::span<const std::string> paths,
                                         IoBackend backend = IoBackend::kAuto,
                                         uint64_t footprintBytes = kRawReadFootprint);

}  // namespace sli::io

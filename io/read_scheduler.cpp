// The chunking + retry layer shared by every backend, backend selection, and the raw read
// throughput measurement.
#include "io/read_scheduler.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <thread>
#include <mutex>
#include <condition_variable>
#include <limits>
#include <optional>
#include <unordered_map>

#include "io/aligned_io.h"
#include "io/checksum.h"
#include "io/pread_scheduler.h"
#include "io/read_scheduler_queue.h"
#include "io/uring_scheduler.h"
#include "sli/log.h"

namespace sli::io {

namespace {

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

using Clock = std::chrono::steady_clock;

// One piece of a request handed to (or waiting for) the backend.
struct Chunk {
    uint32_t req = 0;
    uint32_t length = 0;
    uint64_t offset = 0;
    std::byte* dst = nullptr;
    uint32_t attempts = 0;  // -EAGAIN / -EINTR resubmissions so far
};

struct RequestState {
    ReadRequest req;
    uint64_t next = 0;         // next file offset to carve a chunk from
    uint64_t end = 0;          // req.offset + req.length
    uint64_t bytesDone = 0;
    uint64_t eofAt = std::numeric_limits<uint64_t>::max();
    uint32_t outstanding = 0;  // chunks in flight or waiting for resubmission
    int err = 0;
    bool direct = false;
    bool cancelled = false;
    bool active = false;
};

class ChunkedScheduler final : public ReadScheduler {
public:
    ChunkedScheduler(std::unique_ptr<ReadBackend> backend, const ReadSchedulerOptions& options)
        : backend_(std::move(backend)), options_(options) {
        const uint32_t cap = std::max<uint32_t>(1, backend_->capacity());
        ops_.resize(cap);
        freeOps_.reserve(cap);
        for (uint32_t i = cap; i-- > 0;) freeOps_.push_back(i);
        raw_.resize(cap);
        batch_.reserve(cap);
    }

    ~ChunkedScheduler() override { cancelAll(); }

    const char* backendName() const noexcept override { return backend_->name(); }
    const ReadSchedulerOptions& options() const noexcept override { return options_; }

    Status registerFile(int fd, std::string name) override {
        if (fd < 0) return Status::invalidArgument("registerFile: bad fd for " + name);
        FileInfo& info = files_[fd];
        info.name = std::move(name);
        info.direct = isDirectFd(fd);
        Status st = backend_->registerFile(fd);
        if (!st.isOk()) {
            SLI_DEBUG("io", "%s: %s not in the registered file table: %s", backend_->name(),
                      info.name.c_str(), st.toString().c_str());
        }
        return Status::ok();
    }

    void unregisterFile(int fd) override {
        if (files_.erase(fd) > 0) backend_->unregisterFile(fd);
    }

    Status registerBuffers(std::span<const MemoryRegion> regions) override {
        return backend_->registerBuffers(regions);
    }

    Status submit(std::span<const ReadRequest> requests) override {
        if (cancelled_) return Status::internal("read scheduler: submit after cancelAll");
        for (const ReadRequest& r : requests) {
            const uint32_t slot = allocRequest();
            RequestState& s = reqs_[slot];
            s = RequestState{};
            s.req = r;
            s.active = true;
            s.next = r.offset;
            s.end = r.offset + r.length;
            ++pending_;
            auto it = files_.find(r.fd);
            if (it != files_.end()) {
                s.direct = it->second.direct;
            } else {
                s.direct = r.fd >= 0 && isDirectFd(r.fd);
            }
            if (r.fd < 0 || (r.dst == nullptr && r.length > 0)) {
                s.err = EBADF;
                s.next = s.end;
            } else if (s.direct &&
                       (!isAligned(r.offset, kDirectIoAlignment) ||
                        !isAligned(r.length, kDirectIoAlignment) ||
                        !isAligned(reinterpret_cast<uintptr_t>(r.dst), kDirectIoAlignment))) {
                s.err = EINVAL;
                s.next = s.end;
            }
            if (s.next == s.end) {
                finish(slot);
            } else {
                queue_.push_back(slot);
            }
        }
        pump();
        return Status::ok();
    }

    size_t reap(std::span<ReadCompletion> out, std::chrono::nanoseconds timeout) override {
        if (out.empty()) return 0;
        const bool forever = timeout.count() < 0;
        const Clock::time_point deadline = forever ? Clock::time_point::max() : Clock::now() + timeout;
        for (;;) {
            pump();
            if (!completed_.empty()) return drainCompleted(out);
            if (backend_->inFlight() == 0) return 0;  // nothing can complete
            std::chrono::nanoseconds wait{-1};
            if (!forever) {
                wait = std::max(std::chrono::nanoseconds(0),
                                std::chrono::duration_cast<std::chrono::nanoseconds>(
                                    deadline - Clock::now()));
            }
            const size_t n = backend_->reap(raw_, wait);
            for (size_t i = 0; i < n; ++i) onResult(raw_[i]);
            if (!completed_.empty()) continue;  // pump, then return them
            if (!forever && Clock::now() >= deadline) {
                pump();
                return drainCompleted(out);
            }
        }
    }

    size_t pending() const noexcept override { return pending_; }

    void cancelAll() override {
        cancelled_ = true;
        // Nothing new goes to the kernel: drop queued work.
        for (size_t i = 0; i < queue_.size(); ++i) {
            RequestState& s = reqs_[queue_[i]];
            s.cancelled = true;
            s.next = s.end;
        }
        queue_.clear();
        while (!retry_.empty()) {
            const Chunk c = retry_.pop_front();
            RequestState& s = reqs_[c.req];
            s.cancelled = true;
            --s.outstanding;
        }
        for (uint32_t slot = 0; slot < reqs_.size(); ++slot) {
            RequestState& s = reqs_[slot];
            if (!s.active) continue;
            if (s.next != s.end) {
                s.cancelled = true;
                s.next = s.end;
            }
            if (s.outstanding > 0) s.cancelled = true;
            else if (s.cancelled) finish(slot);
        }
        // Reads the kernel holds write into caller memory: wait for every one of them.
        while (backend_->inFlight() > 0) {
            const size_t n = backend_->reap(raw_, std::chrono::milliseconds(100));
            for (size_t i = 0; i < n; ++i) onResult(raw_[i]);
        }
    }

private:
    struct FileInfo {
        std::string name;
        bool direct = false;
    };

    uint32_t allocRequest() {
        if (!freeReqs_.empty()) {
            const uint32_t slot = freeReqs_.back();
            freeReqs_.pop_back();
            return slot;
        }
        reqs_.emplace_back();
        return static_cast<uint32_t>(reqs_.size() - 1);
    }

    // Hands as many chunks to the backend as it has room for: resubmissions first, then new
    // chunks carved from queued requests in FIFO order.
    void pump() {
        if (cancelled_) return;
        batch_.clear();
        while (!freeOps_.empty() && backend_->inFlight() + batch_.size() < backend_->capacity()) {
            Chunk c;
            if (!retry_.empty()) {
                c = retry_.pop_front();
            } else if (!queue_.empty()) {
                const uint32_t slot = queue_.front();
                RequestState& s = reqs_[slot];
                if (s.next >= s.end) {  // stopped by an error or end of file
                    (void)queue_.pop_front();
                    continue;
                }
                c.req = slot;
                c.offset = s.next;
                c.length = static_cast<uint32_t>(
                    std::min<uint64_t>(options_.chunkBytes, s.end - s.next));
                c.dst = static_cast<std::byte*>(s.req.dst) + (s.next - s.req.offset);
                s.next += c.length;
                ++s.outstanding;
                if (s.next >= s.end) (void)queue_.pop_front();
            } else {
                break;
            }
            const uint32_t id = freeOps_.back();
            freeOps_.pop_back();
            ops_[id] = c;
            batch_.push_back(RawRead{reqs_[c.req].req.fd, c.offset, c.length, c.dst, id});
        }
        if (batch_.empty()) return;
        Status st = backend_->submit(batch_);
        if (!st.isOk()) {
            // The backend took none of them: fail these chunks' requests.
            SLI_ERROR("io", "%s submit failed: %s", backend_->name(), st.toString().c_str());
            const int err = st.sysErrno() ? st.sysErrno() : EIO;
            for (const RawRead& r : batch_) onResult(RawResult{r.id, -err}, /*submitted=*/false);
        }
        batch_.clear();
    }

    void onResult(const RawResult& raw, bool submitted = true) {
        (void)submitted;
        Chunk c = ops_[raw.id];
        freeOps_.push_back(raw.id);
        RequestState& s = reqs_[c.req];
        const int res = raw.res;
        if (res < 0) {
            const int e = -res;
            if ((e == EAGAIN || e == EINTR) && s.err == 0 && !s.cancelled &&
                c.attempts < options_.maxRetries) {
                ++c.attempts;
                retry_.push_back(c);
                return;
            }
            if (s.err == 0) s.err = e;
            s.next = s.end;
        } else if (res == 0) {
            s.eofAt = std::min(s.eofAt, c.offset);
            s.next = s.end;  // chunks beyond end of file would read nothing either
        } else if (static_cast<uint32_t>(res) < c.length) {
            s.bytesDone += static_cast<uint32_t>(res);
            if (s.direct && !isAligned(static_cast<uint32_t>(res), kDirectIoAlignment)) {
                // O_DIRECT only ends a read off an alignment boundary at end of file (a file of
                // 4096k + 512 bytes reads back 512-aligned there). Resubmitting the misaligned
                // remainder would fail with EINVAL on a device with 4096-byte sectors.
                s.eofAt = std::min(s.eofAt, c.offset + static_cast<uint32_t>(res));
                s.next = s.end;
            } else if (s.err == 0 && !s.cancelled) {
                c.offset += static_cast<uint32_t>(res);
                c.dst += res;
                c.length -= static_cast<uint32_t>(res);
                c.attempts = 0;
                retry_.push_front(c);  // the remainder, ahead of new work
                return;
            }
        } else {
            s.bytesDone += c.length;
        }
        --s.outstanding;
        if (s.outstanding == 0 && s.next >= s.end) finish(c.req);
    }

    std::string fileName(const RequestState& s) const {
        // Looked up at completion: the name is only needed for errors.
        auto it = files_.find(s.req.fd);
        return it != files_.end() ? it->second.name : "fd " + std::to_string(s.req.fd);
    }

    void finish(uint32_t slot) {
        RequestState& s = reqs_[slot];
        ReadCompletion done;
        done.tag = s.req.tag;
        // Built only for errors: a successful completion allocates nothing.
        auto whereText = [&] {
            return "read " + fileName(s) + " [offset " + std::to_string(s.req.offset) +
                   ", length " + std::to_string(s.req.length) + "]";
        };
        if (s.cancelled) {
            done.result = -ECANCELED;
            done.status = Status::ioError(whereText() + ": cancelled", ECANCELED);
        } else if (s.err != 0) {
            done.result = -s.err;
            if (s.err == EINVAL && s.direct) {
                done.status = Status::invalidArgument(
                    whereText() + ": O_DIRECT needs offset, length and buffer aligned to 4096");
            } else {
                done.status = Status::fromErrno(s.err, whereText());
            }
        } else if (s.eofAt != std::numeric_limits<uint64_t>::max()) {
            const uint64_t expected = s.eofAt - s.req.offset;
            if ((s.req.flags & kReadAllowEof) && s.bytesDone == expected) {
                done.result = static_cast<int64_t>(s.bytesDone);
            } else {
                done.result = -ENODATA;
                done.status = Status::ioError(whereText() + ": unexpected end of file at offset " +
                                                  std::to_string(s.eofAt) + " (file truncated?)",
                                              ENODATA);
            }
        } else {
            done.result = static_cast<int64_t>(s.bytesDone);
        }
        completed_.push_back(std::move(done));
        s.active = false;
        s.req = ReadRequest{};
        freeReqs_.push_back(slot);
    }

    size_t drainCompleted(std::span<ReadCompletion> out) {
        size_t n = 0;
        while (n < out.size() && !completed_.empty()) {
            out[n++] = completed_.pop_front();
        }
        pending_ -= n;
        return n;
    }

    std::unique_ptr<ReadBackend> backend_;
    ReadSchedulerOptions options_;
    std::unordered_map<int, FileInfo> files_;
    std::vector<RequestState> reqs_;
    std::vector<uint32_t> freeReqs_;
    RingQueue<uint32_t> queue_;  // requests with chunks still to carve
    RingQueue<Chunk> retry_;     // remainders and -EAGAIN resubmissions
    std::vector<Chunk> ops_;      // by raw id
    std::vector<uint32_t> freeOps_;
    std::vector<RawResult> raw_;
    std::vector<RawRead> batch_;
    RingQueue<ReadCompletion> completed_;
    size_t pending_ = 0;
    bool cancelled_ = false;
};

}  // namespace

Result<IoBackend> parseIoBackend(std::string_view text) {
    const std::string t = lower(text);
    if (t == "auto" || t.empty()) return IoBackend::kAuto;
    if (t == "io_uring" || t == "uring" || t == "io-uring" || t == "iouring") return IoBackend::kIoUring;
    if (t == "pread") return IoBackend::kPread;
    return Status::invalidArgument("unknown I/O backend '" + std::string(text) +
                                   "' (expected auto, io_uring or pread)");
}

const char* ioBackendName(IoBackend backend) noexcept {
    switch (backend) {
        case IoBackend::kAuto: return "auto";
        case IoBackend::kIoUring: return "io_uring";
        case IoBackend::kPread: return "pread";
    }
    return "?";
}

Result<IoBackend> ioBackendFromEnv(IoBackend fallback) {
    const char* v = std::getenv("SLI_IO_BACKEND");
    if (v == nullptr || *v == '\0') return fallback;
    auto r = parseIoBackend(v);
    if (!r.isOk()) return r.status().withContext("SLI_IO_BACKEND");
    return r;
}

Status validateOptions(const ReadSchedulerOptions& o) {
    if (o.chunkBytes < 4096 || o.chunkBytes > (64u << 20) || o.chunkBytes % 4096 != 0) {
        return Status::invalidArgument("read scheduler: chunk size " + std::to_string(o.chunkBytes) +
                                       " must be a multiple of 4096 between 4 KiB and 64 MiB");
    }
    if (o.queueDepth < 1 || o.queueDepth > 4096) {
        return Status::invalidArgument("read scheduler: queue depth " + std::to_string(o.queueDepth) +
                                       " must be between 1 and 4096");
    }
    return Status::ok();
}

std::unique_ptr<ReadScheduler> makeChunkedScheduler(std::unique_ptr<ReadBackend> backend,
                                                    const ReadSchedulerOptions& options) {
    return std::make_unique<ChunkedScheduler>(std::move(backend), options);
}

Result<std::unique_ptr<ReadScheduler>> makeReadScheduler(const ReadSchedulerOptions& options) {
    SLI_RETURN_IF_ERROR(validateOptions(options));
    switch (options.backend) {
        case IoBackend::kIoUring: return makeUringScheduler(options);
        case IoBackend::kPread: return makePreadScheduler(options);
        case IoBackend::kAuto: break;
    }
    const IoUringProbe& probe = probeIoUring();
    if (probe.usable) {
        auto r = makeUringScheduler(options);
        if (r.isOk()) {
            static std::atomic<bool> said{false};
            if (!said.exchange(true)) SLI_INFO("io", "read backend: io_uring");
            return r;
        }
        SLI_INFO("io", "read backend: pread (io_uring ring setup failed: %s)",
                 r.status().toString().c_str());
    } else {
        static std::atomic<bool> said{false};
        if (!said.exchange(true)) {
            SLI_INFO("io", "read backend: pread (io_uring unusable: %s)", probe.reason.c_str());
        }
    }
    return makePreadScheduler(options);
}

Result<RawReadResult> measureRawRead(std::span<const std::string> paths, uint32_t chunkBytes,
                                     uint32_t queueDepth, IoBackend backend,
                                     uint64_t footprintBytes, bool hugePages, int hashThreads) {
    ReadSchedulerOptions opts;
    opts.backend = backend;
    opts.chunkBytes = chunkBytes;
    opts.queueDepth = queueDepth;
    SLI_ASSIGN_OR_RETURN(auto sched, makeReadScheduler(opts));
    std::vector<DirectReadFile> files;
    for (const std::string& p : paths) {
        SLI_ASSIGN_OR_RETURN(auto f, openForDirectRead(p));
        SLI_RETURN_IF_ERROR(sched->registerFile(f.fd(), p));
        files.push_back(std::move(f));
    }
    // Requests are one chunk each; every request in flight owns its own buffer slot (freed
    // slots queue up behind the others, so requests rotate through the whole footprint and no
    // two reads ever write the same memory at once). The contents are discarded.
    const uint64_t minSlots = std::max<uint64_t>(queueDepth, footprintBytes / chunkBytes);
    const auto slots = static_cast<uint32_t>(std::min<uint64_t>(minSlots, UINT32_MAX / 2));
    SLI_ASSIGN_OR_RETURN(auto buf, AlignedBuffer::allocate(static_cast<size_t>(slots) * chunkBytes,
                                                           4096, hugePages));
    // As the engine's pool: faulted in beforehand.
    SLI_RETURN_IF_ERROR(populateForWrite(buf.data(), buf.size()));
    const MemoryRegion region{buf.data(), buf.size()};
    (void)sched->registerBuffers(std::span(&region, 1));
    std::deque<uint32_t> freeSlots;
    for (uint32_t i = 0; i < slots; ++i) freeSlots.push_back(i);

    RawReadResult out;
    out.chunkBytes = chunkBytes;
    out.queueDepth = queueDepth;
    out.footprintBytes = buf.size();
    out.backend = sched->backendName();
    std::vector<ReadCompletion> done(queueDepth);

    // hashThreads > 0: each completed chunk is hashed (xxh3-64, as the engine verifies extents)
    // by a worker before its slot may be read into again; the clock stops after the last hash.
    struct Hasher {
        std::mutex mu;
        std::condition_variable cv, doneCv;
        std::deque<std::pair<uint32_t, uint32_t>> todo;  // slot, bytes
        std::deque<uint32_t> hashed;
        int busy = 0;
        bool stop = false;
        uint64_t sink = 0;
    } h;
    std::vector<std::thread> hashers;
    std::byte* const base = buf.data();
    for (int t = 0; t < hashThreads; ++t) {
        hashers.emplace_back([&h, base, chunkBytes] {
            std::unique_lock<std::mutex> lock(h.mu);
            while (true) {
                h.cv.wait(lock, [&h] { return h.stop || !h.todo.empty(); });
                if (h.todo.empty()) return;
                const auto [slot, bytes] = h.todo.front();
                h.todo.pop_front();
                ++h.busy;
                lock.unlock();
                const uint64_t v = checksum64(base + static_cast<uint64_t>(slot) * chunkBytes, bytes);
                lock.lock();
                h.sink ^= v;
                --h.busy;
                h.hashed.push_back(slot);
                h.doneCv.notify_all();
            }
        });
    }
    auto stopHashers = [&h, &hashers] {
        {
            std::lock_guard<std::mutex> lock(h.mu);
            h.stop = true;
        }
        h.cv.notify_all();
        for (auto& t : hashers) t.join();
    };
    // Takes slots the hashers are done with; with `wait`, blocks until there is one (or none
    // is left to hash).
    auto collectHashed = [&h, &freeSlots](bool wait) {
        std::unique_lock<std::mutex> lock(h.mu);
        if (wait) {
            h.doneCv.wait(lock, [&h] { return !h.hashed.empty() || (h.todo.empty() && h.busy == 0); });
        }
        while (!h.hashed.empty()) {
            freeSlots.push_back(h.hashed.front());
            h.hashed.pop_front();
        }
    };

    const auto t0 = Clock::now();
    size_t fileIdx = 0;
    uint64_t offset = 0;
    Status failed;
    while (true) {
        if (hashThreads > 0) collectHashed(false);
        // Keep queueDepth requests outstanding.
        while (sched->pending() < queueDepth && !freeSlots.empty() && fileIdx < files.size()) {
            const DirectReadFile& f = files[fileIdx];
            if (offset >= f.size()) {
                ++fileIdx;
                offset = 0;
                continue;
            }
            const uint32_t slot = freeSlots.front();
            freeSlots.pop_front();
            ReadRequest r;
            r.fd = f.fd();
            r.offset = offset;
            r.length = chunkBytes;
            r.dst = buf.data() + static_cast<uint64_t>(slot) * chunkBytes;
            r.tag = slot;
            r.flags = kReadAllowEof;
            failed = sched->submit(r);
            if (!failed.isOk()) break;
            offset += chunkBytes;
        }
        if (!failed.isOk()) break;
        if (sched->pending() == 0) {
            if (hashThreads == 0 || fileIdx >= files.size()) break;
            collectHashed(true);  // every slot waits for its hash
            continue;
        }
        const size_t n = sched->reap(done, ReadScheduler::kForever);
        for (size_t i = 0; i < n; ++i) {
            if (!done[i].ok()) {
                failed = done[i].status;
                break;
            }
            out.bytes += static_cast<uint64_t>(done[i].result);
            const auto slot = static_cast<uint32_t>(done[i].tag);
            if (hashThreads > 0) {
                {
                    std::lock_guard<std::mutex> lock(h.mu);
                    h.todo.emplace_back(slot, static_cast<uint32_t>(done[i].result));
                }
                h.cv.notify_one();
            } else {
                freeSlots.push_back(slot);
            }
        }
        if (!failed.isOk()) break;
    }
    if (!failed.isOk()) {
        sched->cancelAll();  // reads in flight write into buf: wait for them before freeing it
        stopHashers();
        return failed;
    }
    if (hashThreads > 0) {
        std::unique_lock<std::mutex> lock(h.mu);
        h.doneCv.wait(lock, [&h] { return h.todo.empty() && h.busy == 0; });
    }
    out.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    stopHashers();
    out.hashThreads = hashThreads;
    out.gbps = out.seconds > 0 ? static_cast<double>(out.bytes) / out.seconds / 1e9 : 0;
    for (const auto& f : files) sched->unregisterFile(f.fd());
    return out;
}

Result<double> measureRawReadGbps(std::span<const std::string> paths, uint32_t chunkBytes,
                                  uint32_t queueDepth, IoBackend backend,
                                  uint64_t footprintBytes) {
    SLI_ASSIGN_OR_RETURN(auto r, measureRawRead(paths, chunkBytes, queueDepth, backend,
                                                footprintBytes));
    return r.gbps;
}

Result<RawReadResult> measureBestRawRead(std::span<const std::string> paths, IoBackend backend,
                                         uint64_t footprintBytes) {
    static constexpr std::pair<uint32_t, uint32_t> kCombos[] = {
        {1u << 20, 32}, {2u << 20, 64}, {4u << 20, 64}, {4u << 20, 128}};
    std::optional<RawReadResult> best;
    for (auto [chunk, depth] : kCombos) {
        SLI_ASSIGN_OR_RETURN(auto r, measureRawRead(paths, chunk, depth, backend, footprintBytes));
        if (!best || r.gbps > best->gbps) best = std::move(r);
    }
    return std::move(*best);
}

}  // namespace sli::io

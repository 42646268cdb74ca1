// Built only when liburing is found (see io/meson.build); uring_scheduler_stub.cpp otherwise.
#include "io/uring_scheduler.h"

#include <liburing.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <atomic>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "sli/log.h"

namespace sli::io {

namespace {

constexpr unsigned kFileSlots = 256;
constexpr uint64_t kMaxFixedBuffer = 1ull << 30;  // kernel limit per registered buffer

std::string errText(int err) { return std::strerror(err); }

// Owns one ring. Not movable: registered buffers and files refer to it.
class UringBackend final : public ReadBackend {
public:
    UringBackend() = default;
    UringBackend(const UringBackend&) = delete;
    UringBackend& operator=(const UringBackend&) = delete;

    static Result<std::unique_ptr<UringBackend>> create(uint32_t depth) {
        auto b = std::make_unique<UringBackend>();
        unsigned entries = 1;
        while (entries < depth) entries <<= 1;
        io_uring_params p{};
        // No IPIs to interrupt us for completion task work; TASKRUN_FLAG lets a non-blocking
        // peek see that such work is pending (liburing then enters the kernel once to run it).
        p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
        int rc = io_uring_queue_init_params(entries, &b->ring_, &p);
        if (rc == -EINVAL) {  // older kernel
            p = io_uring_params{};
            rc = io_uring_queue_init_params(entries, &b->ring_, &p);
        }
        if (rc < 0) {
            return Status::notSupported("io_uring_queue_init(" + std::to_string(entries) +
                                        "): " + errText(-rc));
        }
        b->initialised_ = true;
        b->capacity_ = depth;
        b->cqes_.resize(std::max<unsigned>(entries, 32));
        // A sparse registered-file table; registerFile fills slots. Optional.
        if (io_uring_register_files_sparse(&b->ring_, kFileSlots) == 0) {
            b->filesRegistered_ = true;
            for (unsigned i = kFileSlots; i-- > 0;) b->freeFileSlots_.push_back(static_cast<int>(i));
        }
        return b;
    }

    ~UringBackend() override {
        if (!initialised_) return;
        drain();
        io_uring_queue_exit(&ring_);
    }

    const char* name() const noexcept override { return "io_uring"; }
    uint32_t capacity() const noexcept override { return capacity_; }
    uint32_t inFlight() const noexcept override { return inFlight_; }

    Status registerFile(int fd) override {
        if (!filesRegistered_) return Status::notSupported("no registered file table");
        if (fileSlot_.count(fd)) return Status::ok();
        if (freeFileSlots_.empty()) return Status::resourceExhausted("registered file table full");
        const int slot = freeFileSlots_.back();
        int f = fd;
        const int rc = io_uring_register_files_update(&ring_, static_cast<unsigned>(slot), &f, 1);
        if (rc < 0) return Status::fromErrno(-rc, "io_uring_register_files_update");
        freeFileSlots_.pop_back();
        fileSlot_[fd] = slot;
        return Status::ok();
    }

    void unregisterFile(int fd) override {
        auto it = fileSlot_.find(fd);
        if (it == fileSlot_.end()) return;
        int none = -1;
        // In-flight reads keep their own reference to the file.
        (void)io_uring_register_files_update(&ring_, static_cast<unsigned>(it->second), &none, 1);
        freeFileSlots_.push_back(it->second);
        fileSlot_.erase(it);
    }

    Status registerBuffers(std::span<const MemoryRegion> regions) override {
        if (!buffers_.empty()) return Status::invalidArgument("io_uring buffers already registered");
        std::vector<iovec> iov;
        for (const MemoryRegion& r : regions) {
            // Pieces of at most 1 GiB, each one fixed buffer.
            auto* p = static_cast<std::byte*>(r.data);
            uint64_t left = r.size;
            while (left > 0) {
                const uint64_t n = std::min(left, kMaxFixedBuffer);
                iov.push_back(iovec{p, n});
                p += n;
                left -= n;
            }
        }
        if (iov.empty()) return Status::ok();
        const int rc = io_uring_register_buffers(&ring_, iov.data(), static_cast<unsigned>(iov.size()));
        if (rc < 0) {
            static std::atomic<bool> said{false};
            if (!said.exchange(true)) {
                SLI_WARN("io", "io_uring_register_buffers refused (%s): reads without fixed buffers",
                         errText(-rc).c_str());
            }
            return Status::fromErrno(-rc, "io_uring_register_buffers");
        }
        for (size_t i = 0; i < iov.size(); ++i) {
            buffers_.push_back(Fixed{reinterpret_cast<uintptr_t>(iov[i].iov_base),
                                     reinterpret_cast<uintptr_t>(iov[i].iov_base) + iov[i].iov_len,
                                     static_cast<int>(i)});
        }
        std::sort(buffers_.begin(), buffers_.end(),
                  [](const Fixed& a, const Fixed& b) { return a.begin < b.begin; });
        return Status::ok();
    }

    Status submit(std::span<const RawRead> reads) override {
        for (const RawRead& r : reads) {
            io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
            if (sqe == nullptr) {
                // SQ full (cannot happen while inFlight <= entries, but be safe): flush.
                const int rc = io_uring_submit(&ring_);
                if (rc < 0 && rc != -EAGAIN && rc != -EBUSY && rc != -EINTR) {
                    return Status::fromErrno(-rc, "io_uring_submit");
                }
                sqe = io_uring_get_sqe(&ring_);
                if (sqe == nullptr) return Status::ioError("io_uring: submission queue full", EBUSY);
            }
            int fd = r.fd;
            bool fixedFile = false;
            if (auto it = fileSlot_.find(r.fd); it != fileSlot_.end()) {
                fd = it->second;
                fixedFile = true;
            }
            const int buf = findBuffer(r.dst, r.length);
            if (buf >= 0) {
                io_uring_prep_read_fixed(sqe, fd, r.dst, r.length, r.offset, buf);
            } else {
                io_uring_prep_read(sqe, fd, r.dst, r.length, r.offset);
            }
            if (fixedFile) sqe->flags |= IOSQE_FIXED_FILE;
            io_uring_sqe_set_data64(sqe, r.id);
            ++inFlight_;
        }
        // One syscall for the batch. A transient refusal leaves the SQEs queued; reap() flushes.
        const int rc = io_uring_submit(&ring_);
        if (rc < 0 && rc != -EAGAIN && rc != -EBUSY && rc != -EINTR) {
            // The SQEs are prepared and will be flushed by the next enter; report nothing lost.
            SLI_WARN("io", "io_uring_submit: %s", errText(-rc).c_str());
        }
        return Status::ok();
    }

    size_t reap(std::span<RawResult> out, std::chrono::nanoseconds timeout) override {
        if (io_uring_sq_ready(&ring_) > 0) (void)io_uring_submit(&ring_);
        const unsigned want = static_cast<unsigned>(std::min(out.size(), cqes_.size()));
        unsigned n = io_uring_peek_batch_cqe(&ring_, cqes_.data(), want);
        if (n == 0 && timeout.count() != 0 && inFlight_ > 0) {
            io_uring_cqe* cqe = nullptr;
            int rc;
            if (timeout.count() < 0) {
                rc = io_uring_submit_and_wait(&ring_, 1);
            } else {
                __kernel_timespec ts{};
                ts.tv_sec = timeout.count() / 1000000000;
                ts.tv_nsec = timeout.count() % 1000000000;
                rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
            }
            (void)rc;  // -ETIME / -EINTR: simply nothing (more) to report yet
            n = io_uring_peek_batch_cqe(&ring_, cqes_.data(), want);
        }
        for (unsigned i = 0; i < n; ++i) {
            out[i] = RawResult{static_cast<uint32_t>(io_uring_cqe_get_data64(cqes_[i])), cqes_[i]->res};
        }
        io_uring_cq_advance(&ring_, n);
        inFlight_ -= n;
        return n;
    }

private:
    struct Fixed {
        uintptr_t begin, end;
        int index;
    };

    int findBuffer(const void* dst, uint32_t len) const {
        if (buffers_.empty()) return -1;
        const auto a = reinterpret_cast<uintptr_t>(dst);
        auto it = std::upper_bound(buffers_.begin(), buffers_.end(), a,
                                   [](uintptr_t v, const Fixed& f) { return v < f.begin; });
        if (it == buffers_.begin()) return -1;
        --it;
        return (a >= it->begin && a + len <= it->end) ? it->index : -1;
    }

    // Waits for every read the kernel holds: destination memory may be freed right after.
    void drain() {
        if (io_uring_sq_ready(&ring_) > 0) (void)io_uring_submit(&ring_);
        while (inFlight_ > 0) {
            io_uring_cqe* cqe = nullptr;
            const int rc = io_uring_wait_cqe(&ring_, &cqe);
            if (rc < 0) {
                if (rc == -EINTR) continue;
                break;
            }
            io_uring_cqe_seen(&ring_, cqe);
            --inFlight_;
        }
    }

    io_uring ring_{};
    bool initialised_ = false;
    uint32_t capacity_ = 0;
    uint32_t inFlight_ = 0;
    std::vector<io_uring_cqe*> cqes_;
    bool filesRegistered_ = false;
    std::vector<int> freeFileSlots_;
    std::unordered_map<int, int> fileSlot_;
    std::vector<Fixed> buffers_;
};

IoUringProbe runProbe() {
    IoUringProbe p;
    p.compiled = true;
    io_uring ring{};
    int rc = io_uring_queue_init(4, &ring, 0);
    if (rc < 0) {
        p.err = -rc;
        p.reason = "io_uring_queue_init: " + errText(-rc);
        return p;
    }
    io_uring_probe* probe = io_uring_get_probe_ring(&ring);
    if (probe == nullptr) {
        p.err = ENOSYS;
        p.reason = "IORING_REGISTER_PROBE refused";
    } else {
        if (!io_uring_opcode_supported(probe, IORING_OP_READ) ||
            !io_uring_opcode_supported(probe, IORING_OP_READ_FIXED)) {
            p.err = ENOSYS;
            p.reason = "kernel lacks IORING_OP_READ / READ_FIXED";
        }
        io_uring_free_probe(probe);
    }
    if (p.err == 0) {
        // A NOP round trip: seccomp may allow setup and refuse io_uring_enter.
        io_uring_sqe* sqe = io_uring_get_sqe(&ring);
        io_uring_prep_nop(sqe);
        rc = io_uring_submit(&ring);
        io_uring_cqe* cqe = nullptr;
        if (rc >= 0) rc = io_uring_wait_cqe(&ring, &cqe);
        if (rc < 0) {
            p.err = -rc;
            p.reason = "io_uring_enter: " + errText(-rc);
        } else {
            io_uring_cqe_seen(&ring, cqe);
        }
    }
    io_uring_queue_exit(&ring);
    if (p.err == 0) {
        p.usable = true;
        p.reason = "ok";
    }
    return p;
}

}  // namespace

const IoUringProbe& probeIoUring() {
    static const IoUringProbe probe = runProbe();
    return probe;
}

Result<std::unique_ptr<ReadBackend>> makeUringBackend(uint32_t queueDepth) {
    const IoUringProbe& probe = probeIoUring();
    if (!probe.usable) return Status::notSupported("io_uring not usable: " + probe.reason);
    if (queueDepth == 0) return Status::invalidArgument("io_uring queue depth 0");
    SLI_ASSIGN_OR_RETURN(auto b, UringBackend::create(queueDepth));
    return std::unique_ptr<ReadBackend>(std::move(b));
}

Result<std::unique_ptr<ReadScheduler>> makeUringScheduler(const ReadSchedulerOptions& options) {
    SLI_RETURN_IF_ERROR(validateOptions(options));
    SLI_ASSIGN_OR_RETURN(auto backend, makeUringBackend(options.queueDepth));
    return makeChunkedScheduler(std::move(backend), options);
}

}  // namespace sli::io

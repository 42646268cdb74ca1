#include "io/pread_scheduler.h"

#include "io/read_scheduler_queue.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace sli::io {

namespace {

class PreadBackend final : public ReadBackend {
public:
    PreadBackend(uint32_t threads, uint32_t capacity) : capacity_(capacity) {
        workers_.reserve(threads);
        for (uint32_t i = 0; i < threads; ++i) workers_.emplace_back([this] { work(); });
    }

    ~PreadBackend() override {
        {
            std::lock_guard lock(mu_);
            stop_ = true;
            queue_.clear();
        }
        workCv_.notify_all();
        for (std::thread& t : workers_) t.join();
    }

    const char* name() const noexcept override { return "pread"; }
    uint32_t capacity() const noexcept override { return capacity_; }
    uint32_t inFlight() const noexcept override { return inFlight_; }

    Status submit(std::span<const RawRead> reads) override {
        {
            std::lock_guard lock(mu_);
            if (stop_) return Status::internal("pread backend stopped");
            for (const RawRead& r : reads) queue_.push_back(r);
        }
        inFlight_ += static_cast<uint32_t>(reads.size());
        if (reads.size() == 1) {
            workCv_.notify_one();
        } else {
            workCv_.notify_all();
        }
        return Status::ok();
    }

    size_t reap(std::span<RawResult> out, std::chrono::nanoseconds timeout) override {
        std::unique_lock lock(mu_);
        auto ready = [this] { return !done_.empty(); };
        if (!ready()) {
            if (timeout.count() < 0) {
                doneCv_.wait(lock, ready);
            } else if (timeout.count() > 0) {
                doneCv_.wait_for(lock, timeout, ready);
            }
        }
        size_t n = 0;
        while (n < out.size() && !done_.empty()) {
            out[n++] = done_.pop_front();
        }
        lock.unlock();
        inFlight_ -= static_cast<uint32_t>(n);
        return n;
    }

private:
    void work() {
        std::unique_lock lock(mu_);
        for (;;) {
            workCv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
            if (stop_) return;
            const RawRead r = queue_.pop_front();
            lock.unlock();
            // One pread, result reported raw: the layer above retries short reads and EINTR.
            const ssize_t got = ::pread(r.fd, r.dst, r.length, static_cast<off_t>(r.offset));
            const int32_t res = got < 0 ? -errno : static_cast<int32_t>(got);
            lock.lock();
            done_.push_back(RawResult{r.id, res});
            doneCv_.notify_one();
        }
    }

    const uint32_t capacity_;
    uint32_t inFlight_ = 0;  // owner thread only
    std::mutex mu_;
    std::condition_variable workCv_;
    std::condition_variable doneCv_;
    RingQueue<RawRead> queue_;
    RingQueue<RawResult> done_;
    bool stop_ = false;
    std::vector<std::thread> workers_;
};

}  // namespace

Result<std::unique_ptr<ReadBackend>> makePreadBackend(uint32_t threads, uint32_t capacity) {
    if (threads == 0 || capacity == 0) {
        return Status::invalidArgument("pread backend needs at least one thread and one slot");
    }
    return std::unique_ptr<ReadBackend>(std::make_unique<PreadBackend>(threads, capacity));
}

Result<std::unique_ptr<ReadScheduler>> makePreadScheduler(const ReadSchedulerOptions& options) {
    SLI_RETURN_IF_ERROR(validateOptions(options));
    const uint32_t threads =
        options.preadThreads ? options.preadThreads : std::min<uint32_t>(options.queueDepth, 16);
    SLI_ASSIGN_OR_RETURN(auto backend, makePreadBackend(threads, options.queueDepth));
    return makeChunkedScheduler(std::move(backend), options);
}

}  // namespace sli::io

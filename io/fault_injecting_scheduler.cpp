#include "io/fault_injecting_scheduler.h"

#include <algorithm>
#include <cerrno>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include "io/pread_scheduler.h"
#include "io/uring_scheduler.h"

namespace sli::io {

// The decorator on the raw layer: results it invents or alters reach the real chunked layer.
class FaultInjectingBackend final : public ReadBackend {
public:
    FaultInjectingBackend(std::unique_ptr<ReadBackend> inner, FaultPlan plan)
        : inner_(std::move(inner)), plan_(std::move(plan)), rng_(plan_.seed) {
        tmp_.resize(std::max<uint32_t>(1, inner_->capacity()));
    }

    void setPlan(FaultPlan plan) {
        std::lock_guard lock(mu_);
        plan_ = std::move(plan);
        rng_.seed(plan_.seed);
    }

    FaultStats stats() const {
        std::lock_guard lock(mu_);
        return stats_;
    }

    const char* name() const noexcept override { return inner_->name(); }
    uint32_t capacity() const noexcept override { return inner_->capacity(); }
    uint32_t inFlight() const noexcept override {
        return inner_->inFlight() + static_cast<uint32_t>(invented_.size() + held_.size());
    }
    Status registerFile(int fd) override { return inner_->registerFile(fd); }
    void unregisterFile(int fd) override { inner_->unregisterFile(fd); }
    Status registerBuffers(std::span<const MemoryRegion> regions) override {
        return inner_->registerBuffers(regions);
    }

    Status submit(std::span<const RawRead> reads) override {
        pass_.clear();
        {
            std::lock_guard lock(mu_);
            for (RawRead r : reads) {
                ++stats_.rawReads;
                const auto key = std::make_pair(r.fd, r.offset);
                if (auto it = storms_.find(key); it != storms_.end()) {
                    // An -EAGAIN storm in progress for this chunk; afterwards it goes through.
                    if (it->second > 0) {
                        --it->second;
                        ++stats_.again;
                        invented_.push_back(RawResult{r.id, -EAGAIN});
                        continue;
                    }
                    storms_.erase(it);
                    pass_.push_back(r);
                    continue;
                }
                if (int err = rangeError(r); err != 0) {
                    ++stats_.errors;
                    invented_.push_back(RawResult{r.id, -err});
                    continue;
                }
                if (draw(plan_.errorProbability)) {
                    ++stats_.errors;
                    invented_.push_back(RawResult{r.id, -plan_.error});
                    continue;
                }
                if (draw(plan_.againProbability)) {
                    ++stats_.again;
                    if (plan_.againBurst > 1) storms_[key] = plan_.againBurst - 1;
                    invented_.push_back(RawResult{r.id, -EAGAIN});
                    continue;
                }
                if (draw(plan_.intrProbability)) {
                    ++stats_.intr;
                    invented_.push_back(RawResult{r.id, -EINTR});
                    continue;
                }
                const uint32_t g = std::max<uint32_t>(1, plan_.shortReadGranularity);
                if (r.length > g && draw(plan_.shortReadProbability)) {
                    // Issue fewer bytes: the real result is short, the layer above resubmits.
                    std::uniform_int_distribution<uint32_t> len(1, (r.length - 1) / g);
                    r.length = len(rng_) * g;
                    ++stats_.shortReads;
                }
                pass_.push_back(r);
            }
        }
        if (pass_.empty()) return Status::ok();
        return inner_->submit(pass_);
    }

    size_t reap(std::span<RawResult> out, std::chrono::nanoseconds timeout) override {
        using Clock = std::chrono::steady_clock;
        const bool forever = timeout.count() < 0;
        const auto deadline = forever ? Clock::time_point::max() : Clock::now() + timeout;
        for (;;) {
            size_t n = 0;
            const auto now = Clock::now();
            while (n < out.size() && !invented_.empty()) {
                out[n++] = invented_.front();
                invented_.pop_front();
            }
            for (auto it = held_.begin(); it != held_.end() && n < out.size();) {
                if (it->first <= now) {
                    out[n++] = it->second;
                    it = held_.erase(it);
                } else {
                    ++it;
                }
            }
            if (n == out.size()) return n;
            // Poll when we have something; else wait, but not past the next held result.
            std::chrono::nanoseconds wait{0};
            if (n == 0) {
                auto until = deadline;
                if (!held_.empty()) until = std::min(until, held_.begin()->first);
                wait = until == Clock::time_point::max()
                           ? std::chrono::nanoseconds(-1)
                           : std::max(std::chrono::nanoseconds(0),
                                      std::chrono::duration_cast<std::chrono::nanoseconds>(until - now));
            }
            size_t got = 0;
            if (inner_->inFlight() > 0) {
                got = inner_->reap(std::span(tmp_).first(std::min(tmp_.size(), out.size() - n)), wait);
            } else if (n == 0 && !held_.empty() && wait.count() > 0) {
                std::this_thread::sleep_for(wait);
            }
            {
                std::lock_guard lock(mu_);
                for (size_t i = 0; i < got; ++i) {
                    if (plan_.maxDelay.count() > 0 && draw(plan_.delayProbability)) {
                        ++stats_.delayed;
                        std::uniform_int_distribution<int64_t> us(0, plan_.maxDelay.count());
                        held_.emplace(Clock::now() + std::chrono::microseconds(us(rng_)), tmp_[i]);
                    } else {
                        out[n++] = tmp_[i];
                    }
                }
            }
            if (n > 0) return n;
            if (inFlight() == 0) return 0;
            if (!forever && Clock::now() >= deadline) return 0;
        }
    }

private:
    bool draw(double p) {
        if (p <= 0) return false;
        if (p >= 1) return true;
        return std::uniform_real_distribution<double>(0, 1)(rng_) < p;
    }

    int rangeError(const RawRead& r) const {
        for (const FaultRange& f : plan_.failRanges) {
            if ((f.fd == -1 || f.fd == r.fd) && r.offset < f.end && r.offset + r.length > f.begin) {
                return f.err;
            }
        }
        return 0;
    }

    std::unique_ptr<ReadBackend> inner_;
    mutable std::mutex mu_;  // plan_, rng_, stats_ (setPlan / faultStats from other threads)
    FaultPlan plan_;
    std::mt19937_64 rng_;
    FaultStats stats_;
    std::map<std::pair<int, uint64_t>, uint32_t> storms_;
    std::deque<RawResult> invented_;
    std::multimap<std::chrono::steady_clock::time_point, RawResult> held_;
    std::vector<RawRead> pass_;
    std::vector<RawResult> tmp_;
};

Result<std::unique_ptr<FaultInjectingScheduler>> FaultInjectingScheduler::create(
    const ReadSchedulerOptions& options, FaultPlan plan) {
    SLI_RETURN_IF_ERROR(validateOptions(options));
    std::unique_ptr<ReadBackend> backend;
    const bool uring = options.backend == IoBackend::kIoUring ||
                       (options.backend == IoBackend::kAuto && probeIoUring().usable);
    if (uring) {
        SLI_ASSIGN_OR_RETURN(backend, makeUringBackend(options.queueDepth));
    } else {
        const uint32_t threads = options.preadThreads ? options.preadThreads
                                                      : std::min<uint32_t>(options.queueDepth, 16);
        SLI_ASSIGN_OR_RETURN(backend, makePreadBackend(threads, options.queueDepth));
    }
    return wrap(std::move(backend), options, std::move(plan));
}

std::unique_ptr<FaultInjectingScheduler> FaultInjectingScheduler::wrap(
    std::unique_ptr<ReadBackend> backend, const ReadSchedulerOptions& options, FaultPlan plan) {
    auto faults = std::make_unique<FaultInjectingBackend>(std::move(backend), std::move(plan));
    std::unique_ptr<FaultInjectingScheduler> s(new FaultInjectingScheduler());
    s->faults_ = faults.get();
    s->inner_ = makeChunkedScheduler(std::move(faults), options);
    return s;
}

FaultInjectingScheduler::~FaultInjectingScheduler() = default;

void FaultInjectingScheduler::setPlan(FaultPlan plan) { faults_->setPlan(std::move(plan)); }
FaultStats FaultInjectingScheduler::faultStats() const { return faults_->stats(); }
const char* FaultInjectingScheduler::backendName() const noexcept { return inner_->backendName(); }
const ReadSchedulerOptions& FaultInjectingScheduler::options() const noexcept {
    return inner_->options();
}
Status FaultInjectingScheduler::registerFile(int fd, std::string name) {
    return inner_->registerFile(fd, std::move(name));
}
void FaultInjectingScheduler::unregisterFile(int fd) { inner_->unregisterFile(fd); }
Status FaultInjectingScheduler::registerBuffers(std::span<const MemoryRegion> regions) {
    return inner_->registerBuffers(regions);
}
Status FaultInjectingScheduler::submit(std::span<const ReadRequest> requests) {
    return inner_->submit(requests);
}
size_t FaultInjectingScheduler::reap(std::span<ReadCompletion> out, std::chrono::nanoseconds timeout) {
    return inner_->reap(out, timeout);
}
size_t FaultInjectingScheduler::pending() const noexcept { return inner_->pending(); }
void FaultInjectingScheduler::cancelAll() { inner_->cancelAll(); }

}  // namespace sli::io

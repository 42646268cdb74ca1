// Randomized, model-checked stress test of sli::Engine (CPU path).
//
// Each seed builds a small cache (1-8 layers, every tensor in a random mode, blocksize and
// double-quant setting, sometimes one large "embeddings" layer that gets slots of its own),
// opens an engine with random options (backend, depth 0-6, chunk size, queue depth, workers,
// order and explicit plan, output dtype, budget, O_DIRECT) behind a scheduler that injects
// short reads, -EAGAIN / -EINTR storms and delayed completions, then runs a random sequence
// of operations against a model of the documented contract (include/sli/engine.h):
//   - acquire(l) consumes the next occurrence of l at or after the current plan position;
//     a layer with no such occurrence (out of range, passed, or held with no later
//     occurrence) is InvalidArgument at once;
//   - a successful lease hands out exactly the bytes dequantizeLayer gives for that layer's
//     file (computed independently, before any damage);
//   - a layer whose file has a flipped byte fails with Corruption naming the layer and the
//     file, and never hands out data; other layers still stream; every failed acquire's
//     error was reported to EngineOptions::onLayerError before;
//   - an acquire refused with ResourceExhausted happens only while leases are held, consumes
//     nothing, and is served once they are released;
//   - reload() after a failed acquire (acquires without effect, refused or naming no
//     position, may come between) succeeds unless the file can no longer be parsed, puts the
//     position back, and the next acquire of a repaired file hands out the repaired layer; at
//     any other time it is refused, never a crash;
//   - leases are released in any order, on this thread or another, before or after the
//     engine is destroyed (possibly with reads in flight).
// A layer damaged while the engine runs (a flipped byte, a truncated file, EIO on every read of
// its file) or repaired may legitimately still be served from data read before, or fail from
// data read after: either outcome is accepted then (Corruption, or IOError for the last two),
// but a lease's bytes must still be exactly right.
// A watchdog aborts (printing the seed and the operations so far) if one call blocks for more
// than 120 s: a hang is a failure, not a timeout.
//
// SLI_STRESS_SEEDS (default 300) seeds from SLI_STRESS_FIRST_SEED (default 1); a failure
// prints its seed, so `SLI_STRESS_FIRST_SEED=S SLI_STRESS_SEEDS=1` reruns it (thread timing
// varies between runs, the options and operations do not).
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine_testing.h"
#include "engine_test_util.h"
#include "file_damage.h"
#include "io/fault_injecting_scheduler.h"
#include "sli/engine.h"

using namespace sli;
using namespace sli::testutil;

namespace {

uint64_t envU64(const char* name, uint64_t fallback) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') return fallback;
    return std::strtoull(v, nullptr, 10);
}

bool ioUringUsable() {
    io::ReadSchedulerOptions o;
    o.backend = io::IoBackend::kIoUring;
    return io::makeReadScheduler(o).isOk();
}

struct Rand {
    std::mt19937_64 g;
    explicit Rand(uint64_t seed) : g(seed) {}
    int64_t between(int64_t lo, int64_t hi) {  // inclusive
        return std::uniform_int_distribution<int64_t>(lo, hi)(g);
    }
    bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(g) < p; }
    template <class T>
    T pick(std::initializer_list<T> xs) {
        return *(xs.begin() + between(0, static_cast<int64_t>(xs.size()) - 1));
    }
};

int watchdogSeconds() { return static_cast<int>(envU64("SLI_STRESS_WATCHDOG_S", 120)); }

// Aborts the process when one operation blocks too long, saying where.
class Watchdog {
public:
    Watchdog() : thread_([this] { loop(); }) {}
    ~Watchdog() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }
    // `engine` (may be null): whose state to print if the call blocks.
    void begin(std::string what, const Engine* engine = nullptr) {
        std::lock_guard<std::mutex> lock(mu_);
        what_ = std::move(what);
        engine_ = engine;
        deadline_ = std::chrono::steady_clock::now() + std::chrono::seconds(watchdogSeconds());
        armed_ = true;
    }
    void end() {
        std::lock_guard<std::mutex> lock(mu_);
        armed_ = false;
    }

private:
    void loop() {
        std::unique_lock<std::mutex> lock(mu_);
        while (!stop_) {
            cv_.wait_for(lock, std::chrono::seconds(1));
            if (armed_ && std::chrono::steady_clock::now() > deadline_) {
                std::fprintf(stderr, "engine_stress: blocked too long in %s\n", what_.c_str());
                if (engine_ != nullptr) {
                    std::fprintf(stderr, "engine state: %s\n",
                                 testing::engineStateForTesting(*engine_).c_str());
                }
                std::abort();
            }
        }
    }
    std::mutex mu_;
    std::condition_variable cv_;
    bool stop_ = false, armed_ = false;
    std::string what_;
    const Engine* engine_ = nullptr;
    std::chrono::steady_clock::time_point deadline_;
    std::thread thread_;
};

// Releases leases handed to it on its own thread, after a short random pause.
class Releaser {
public:
    explicit Releaser(uint64_t seed) : rng_(seed), thread_([this] { loop(); }) {}
    ~Releaser() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }
    void give(Lease lease) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            queue_.push_back(std::move(lease));
        }
        cv_.notify_all();
    }
    // Until every lease given has been released.
    void drain() {
        std::unique_lock<std::mutex> lock(mu_);
        idleCv_.wait(lock, [this] { return queue_.empty() && !busy_; });
    }

private:
    void loop() {
        std::unique_lock<std::mutex> lock(mu_);
        while (true) {
            cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
            if (queue_.empty()) return;
            Lease l = std::move(queue_.front());
            queue_.pop_front();
            busy_ = true;
            const auto pause = std::chrono::microseconds(rng_() % 2000);
            lock.unlock();
            std::this_thread::sleep_for(pause);
            if (rng_() % 2 == 0) {
                l.release();
            } else {
                Lease gone = std::move(l);  // released by its destructor
            }
            lock.lock();
            busy_ = false;
            idleCv_.notify_all();
        }
    }
    std::mt19937_64 rng_;
    std::mutex mu_;
    std::condition_variable cv_, idleCv_;
    std::deque<Lease> queue_;
    bool busy_ = false, stop_ = false;
    std::thread thread_;
};

// What an acquire of a layer may return: served (exactly the expected bytes), or failed with
// Corruption or IOError (naming the layer and its file). A layer with a flipped byte on disk
// since open may only fail; one damaged while the engine runs may still be served from data
// read before.
struct Expect {
    bool ok = true;
    bool corruption = false;
    bool ioError = false;
    bool broken = false;  // EIO injected or file truncated: never repaired in this run
};

struct Flip {
    uint64_t offset;
    uint8_t mask;
};

// One layer of random tensors. `large`: an embeddings-like f32 table far larger than the rest.
QuantizedLayer randomLayer(int64_t index, bool large, const QuantizationConfig& base, Rand& r,
                           std::mt19937& values) {
    QuantizedLayer ql;
    ql.index = index;
    ql.name = large ? "model.embed_tokens" : "model.layers." + std::to_string(index);
    const std::string p = ql.name + ".";
    if (large) {
        ql.tensors.push_back(makeTensor(p + "weight", {r.between(5000, 9000), 64},
                                        QuantizationMode::kNone, base, values));
        return ql;
    }
    const int64_t hidden = 32 * r.between(1, 4);
    const int tensors = static_cast<int>(r.between(1, 4));
    for (int t = 0; t < tensors; ++t) {
        QuantizationConfig cfg = base;
        cfg.blocksize = static_cast<int>(r.pick<int64_t>({32, 64, 128, 256}));
        cfg.doubleQuant = r.chance(0.4);
        const auto mode = r.pick({QuantizationMode::kNone, QuantizationMode::kInt8,
                                  QuantizationMode::kInt8Dynamic, QuantizationMode::kNf4,
                                  QuantizationMode::kFp4, QuantizationMode::kInt4});
        // Rows of a multiple of 32 values, as INT4 (GGUF Q4_0) needs; odd row counts.
        const int64_t rows = r.between(1, 3) * hidden + r.between(0, 1) * 7;
        ql.tensors.push_back(makeTensor(p + "w" + std::to_string(t), {rows, hidden}, mode, cfg, values));
    }
    ql.tensors.push_back(makeTensor(p + "norm.weight", {hidden}, QuantizationMode::kNone, base, values));
    return ql;
}

// Offset of a random byte inside a random tensor's stored extents of `file`.
uint64_t randomDataOffset(const std::string& file, Rand& r) {
    auto idx = io::readLayerIndex(file);
    REQUIRE_MESSAGE(idx.isOk(), idx.status().toString());
    const auto& t = idx->tensors[static_cast<size_t>(r.between(0, static_cast<int64_t>(idx->tensors.size()) - 1))];
    const auto& ext = t.part(QuantPart::kPayload);
    REQUIRE(ext.storedBytes > 0);
    return ext.offset + static_cast<uint64_t>(r.between(0, static_cast<int64_t>(ext.storedBytes) - 1));
}

// The descriptor this process has open on `path` (the engine's), or -1.
int fdOf(const std::string& path) {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
        const auto target = std::filesystem::read_symlink(e.path(), ec);
        if (!ec && target == path) return std::stoi(e.path().filename().string());
    }
    return -1;
}

struct Held {
    Lease lease;
    int64_t layer;
};

void runSeed(uint64_t seed, bool uring, Watchdog& dog) {
    Rand r(seed);
    std::mt19937 values(static_cast<uint32_t>(seed));
    std::string log = "seed " + std::to_string(seed) + ":";
    INFO(log);

    TempDir tmp;
    QuantizationConfig cfg;
    cfg.mode = QuantizationMode::kNf4;  // nominal: every tensor carries its own mode
    cfg.computeDType = r.pick({DType::kF32, DType::kF16, DType::kBF16});
    const int64_t L = r.between(1, 8);
    const int64_t largeAt = r.chance(0.2) ? r.between(0, L - 1) : -1;
    std::vector<QuantizedLayer> layers;
    for (int64_t l = 0; l < L; ++l) layers.push_back(randomLayer(l, l == largeAt, cfg, r, values));
    const TestCache tc = writeCache(tmp.path, "stress/model", cfg, layers);
    layers.clear();

    EngineOptions o = cacheEngineOptions(tc);
    o.ioBackend = uring && r.chance(0.5) ? "io_uring" : "pread";
    o.prefetchDepth = static_cast<int>(r.between(0, 6));
    o.workerThreads = static_cast<int>(r.between(1, 3));
    o.chunkBytes = static_cast<uint32_t>(r.pick<int64_t>({4096, 8192, 65536, 1 << 20}));
    o.queueDepth = static_cast<uint32_t>(r.pick<int64_t>({1, 2, 4, 16, 64}));
    o.directIo = r.chance(0.8);
    o.recordTrace = r.chance(0.5);
    o.computeDType = r.pick({DType::kBool, DType::kF32, DType::kF16, DType::kBF16});
    o.order = r.pick({LayerOrder::kSequential, LayerOrder::kCyclic, LayerOrder::kExplicit});
    if (o.order == LayerOrder::kExplicit) {
        const int64_t n = r.between(1, 3 * L);
        for (int64_t i = 0; i < n; ++i) o.plan.push_back(r.between(0, L - 1));
    }
    // Every failed acquire must have been reported to onLayerError first, with the same error.
    std::mutex reportsMu;
    std::multiset<std::pair<int64_t, std::string>> reports;
    o.onLayerError = [&reportsMu, &reports](int64_t layer, const Status& e) {
        std::lock_guard<std::mutex> lock(reportsMu);
        reports.emplace(layer, e.toString());
    };
    const bool tightBudget = r.chance(0.2);
    if (tightBudget) o.hostBudgetBytes = static_cast<uint64_t>(r.between(64 << 10, 24 << 20));
    const DType outDt = o.computeDType == DType::kBool ? cfg.computeDType : o.computeDType;

    std::vector<std::vector<std::vector<uint8_t>>> expected;
    for (int64_t l = 0; l < L; ++l) expected.push_back(expectedLayer(tc.files[static_cast<size_t>(l)], outDt));

    std::vector<Expect> state(static_cast<size_t>(L));
    std::vector<std::vector<Flip>> flips(static_cast<size_t>(L));
    auto damage = [&](int64_t l) {
        const Flip f{randomDataOffset(tc.files[static_cast<size_t>(l)], r),
                     static_cast<uint8_t>(1u << r.between(0, 7))};
        REQUIRE(sli::testing::flipByte(tc.files[static_cast<size_t>(l)], f.offset, f.mask));
        flips[static_cast<size_t>(l)].push_back(f);
    };
    auto repair = [&](int64_t l) {
        for (const Flip& f : flips[static_cast<size_t>(l)]) {
            REQUIRE(sli::testing::flipByte(tc.files[static_cast<size_t>(l)], f.offset, f.mask));
        }
        flips[static_cast<size_t>(l)].clear();
    };
    if (r.chance(0.35)) {
        const int64_t l = r.between(0, L - 1);
        damage(l);
        state[static_cast<size_t>(l)] = Expect{false, true, false};
    }

    io::FaultPlan faults;
    faults.shortReadProbability = r.pick({0.0, 0.1, 0.4});
    faults.againProbability = r.pick({0.0, 0.1, 0.3});
    faults.againBurst = static_cast<uint32_t>(r.between(1, 6));
    faults.intrProbability = r.pick({0.0, 0.1});
    faults.delayProbability = r.pick({0.0, 0.2});
    faults.maxDelay = std::chrono::microseconds(r.between(0, 3000));
    faults.seed = seed;
    auto injector = std::make_shared<io::FaultInjectingScheduler*>(nullptr);
    testing::setReadSchedulerFactoryForTesting(
        [faults, injector](const io::ReadSchedulerOptions& so) -> Result<std::unique_ptr<io::ReadScheduler>> {
            auto s = io::FaultInjectingScheduler::create(so, faults);
            if (!s.isOk()) return s.status();
            *injector = s->get();
            return std::unique_ptr<io::ReadScheduler>(std::move(s).value());
        });

    char optsDesc[256];
    std::snprintf(optsDesc, sizeof optsDesc,
                  " L=%lld large=%lld %s depth=%d workers=%d chunk=%u qd=%u direct=%d out=%s "
                  "order=%d plan=%zu budget=%llu corrupt=%d;",
                  static_cast<long long>(L), static_cast<long long>(largeAt), o.ioBackend.c_str(),
                  o.prefetchDepth, o.workerThreads, o.chunkBytes, o.queueDepth, o.directIo ? 1 : 0,
                  dtypeName(outDt), static_cast<int>(o.order), o.plan.size(),
                  static_cast<unsigned long long>(o.hostBudgetBytes),
                  static_cast<int>(std::count_if(state.begin(), state.end(),
                                                 [](const Expect& x) { return x.corruption; })));
    log += optsDesc;

    dog.begin(log + " open");
    auto opened = Engine::open(o);
    dog.end();
    if (!opened.isOk()) {
        // Only a budget too small for one layer may refuse these options.
        REQUIRE_MESSAGE(tightBudget, opened.status().toString());
        CHECK_MESSAGE(opened.status().isInvalidArgument(), opened.status().toString());
        CHECK(opened.status().message().find("budget") != std::string::npos);
        testing::setReadSchedulerFactoryForTesting({});
        return;
    }
    std::unique_ptr<Engine> engine = std::move(opened).value();
    REQUIRE(engine->numLayers() == L);

    // The plan, and the position of the next acquire in it.
    auto planAt = [&](uint64_t k) -> int64_t {
        if (o.order == LayerOrder::kCyclic) return static_cast<int64_t>(k % static_cast<uint64_t>(L));
        return o.order == LayerOrder::kExplicit ? o.plan[k] : static_cast<int64_t>(k);
    };
    const uint64_t planSize = o.order == LayerOrder::kCyclic ? UINT64_MAX
                              : o.order == LayerOrder::kExplicit ? o.plan.size()
                                                                  : static_cast<uint64_t>(L);
    auto nextOccurrence = [&](int64_t layer, uint64_t from) -> std::optional<uint64_t> {
        if (layer < 0 || layer >= L) return std::nullopt;
        if (o.order == LayerOrder::kCyclic) {
            const auto ul = static_cast<uint64_t>(L);
            return from + (static_cast<uint64_t>(layer) + ul - from % ul) % ul;
        }
        for (uint64_t k = from; k < planSize; ++k) {
            if (planAt(k) == layer) return k;
        }
        return std::nullopt;
    };
    uint64_t pos = 0;
    io::FaultPlan faultsNow = faults;  // plus the EIO ranges added while the engine runs
    std::vector<bool> truncated(static_cast<size_t>(L), false);

    std::vector<Held> held;
    std::optional<Releaser> releaser;
    releaser.emplace(seed * 7919);
    size_t givenAway = 0;  // leases handed to the releaser since its last drain
    // (layer, position) of the last acquire when it failed on the layer's data; reload's
    // precondition.
    std::optional<std::pair<int64_t, uint64_t>> lastFailed;
    uint64_t served = 0, corruptSeen = 0, refused = 0, reloads = 0;

    auto checkLease = [&](const Lease& lease, int64_t l) {
        REQUIRE(lease.layer() == l);
        const Layer& t = lease.tensors();
        const auto& want = expected[static_cast<size_t>(l)];
        REQUIRE(t.size() == want.size());
        for (size_t k = 0; k < t.size(); ++k) {
            REQUIRE(t[k].dtype() == outDt);
            REQUIRE(t[k].nbytes() == want[k].size());
            REQUIRE_MESSAGE(std::memcmp(t[k].data(), want[k].data(), want[k].size()) == 0,
                            "layer " << l << " tensor " << t[k].name() << " differs");
        }
    };
    auto releaseAll = [&] {
        held.clear();
        releaser->drain();
        givenAway = 0;
    };

    // One acquire of `l` checked against the model.
    enum class Outcome { kServed, kRefused, kFailed, kNoOccurrence };
    auto acquire = [&](int64_t l) -> Outcome {
        const auto k = nextOccurrence(l, pos);
        log += " a" + std::to_string(l);
        dog.begin(log, engine.get());
        auto got = engine->acquire(l);
        dog.end();
        if (!k) {
            REQUIRE_FALSE_MESSAGE(got.isOk(), "layer " << l << " has no occurrence left");
            CHECK_MESSAGE(got.status().isInvalidArgument(), got.status().toString());
            return Outcome::kNoOccurrence;  // no effect: a reload() may still follow a failure
        }
        if (got.isOk()) {
            REQUIRE_MESSAGE(state[static_cast<size_t>(l)].ok, "a layer with a damaged file was handed out");
            checkLease(*got, l);
            held.push_back({std::move(got).value(), l});
            pos = *k + 1;
            ++served;
            lastFailed.reset();
            return Outcome::kServed;
        }
        const Status& s = got.status();
        if (s.isResourceExhausted()) {
            REQUIRE_MESSAGE(held.size() + givenAway > 0, "refused with no lease held: " << s.toString());
            ++refused;
            log += "R";
            releaseAll();  // (no effect either)
            return Outcome::kRefused;
        }
        const Expect& x = state[static_cast<size_t>(l)];
        REQUIRE_MESSAGE(((s.isCorruption() && x.corruption) || (s.isIOError() && x.ioError)),
                        "layer " << l << ": unexpected error " << s.toString());
        CHECK(s.message().find("layer " + std::to_string(l)) != std::string::npos);
        CHECK(s.message().find(tc.files[static_cast<size_t>(l)]) != std::string::npos);
        {
            std::lock_guard<std::mutex> lock(reportsMu);
            const auto it = reports.find({l, s.toString()});
            REQUIRE_MESSAGE(it != reports.end(), "layer " << l << " failed without onLayerError: " << s.toString());
            reports.erase(it);
        }
        pos = *k + 1;
        ++corruptSeen;
        log += s.isCorruption() ? "C" : "E";
        lastFailed = std::make_pair(l, *k);
        return Outcome::kFailed;
    };

    const int ops = static_cast<int>(r.between(5, 60));
    for (int op = 0; op < ops; ++op) {
        const int what = static_cast<int>(r.between(0, 99));
        if (what < 55) {  // the executor's usual step: the next layer, sometimes a few ahead
            if (pos >= planSize) break;
            uint64_t k = pos;
            while (r.chance(0.15) && k + 1 < planSize) ++k;
            const int64_t l = planAt(k);
            if (acquire(l) == Outcome::kRefused) {
                // The refusal had no effect: with every lease released, the same call is not
                // refused again (it is served, or fails on the layer's damage).
                REQUIRE_MESSAGE(acquire(l) != Outcome::kRefused, "layer " << l << " refused with no lease held");
            }
        } else if (what < 62) {  // any index: out of range, passed, held, or ahead
            acquire(r.between(-1, L));
        } else if (what < 80) {  // release one lease, here or on the other thread
            if (held.empty()) continue;
            const size_t i = static_cast<size_t>(r.between(0, static_cast<int64_t>(held.size()) - 1));
            Lease lease = std::move(held[i].lease);
            log += " r" + std::to_string(held[i].layer);
            held.erase(held.begin() + static_cast<std::ptrdiff_t>(i));
            if (r.chance(0.5)) {
                lease.release();
            } else {
                releaser->give(std::move(lease));
                ++givenAway;
            }
        } else if (what < 88) {  // reload: right after a failure (repaired or not), or out of turn
            const bool afterFailure = lastFailed.has_value() && r.chance(0.8);
            const int64_t l = afterFailure ? lastFailed->first : r.between(0, L - 1);
            const bool inTurn = lastFailed.has_value() && lastFailed->first == l;
            bool repaired = false;
            Expect& x = state[static_cast<size_t>(l)];
            if (inTurn && !x.broken && r.chance(0.7) && !flips[static_cast<size_t>(l)].empty()) {
                repair(l);
                repaired = true;
                x = Expect{true, true, false};  // older data of it may still be in a slot
            }
            log += std::string(" L") + (repaired ? "+" : "") + std::to_string(l);
            dog.begin(log, engine.get());
            const Status s = engine->reload(l);
            dog.end();
            const auto failedAt = lastFailed;
            if (s.isOk()) lastFailed.reset();  // a refused or failed reload changes nothing
            if (!inTurn) {
                CHECK_MESSAGE(s.isInvalidArgument(), "reload out of turn: " << s.toString());
            } else if (s.isOk()) {
                ++reloads;
                pos = failedAt->second;  // the failed position is back
                // The file is open anew: an fd the injected EIO names may now be another file's.
                if (!faultsNow.failRanges.empty()) {
                    faultsNow.failRanges.clear();
                    (*injector)->setPlan(faultsNow);
                }
                if (repaired) {
                    // The next acquire reads the repaired file; reload refuses when the engine
                    // still holds older data of the layer, so later positions read it too.
                    REQUIRE(acquire(l) == Outcome::kServed);
                    state[static_cast<size_t>(l)] = Expect{};
                }
            } else {
                // In turn, only a file that cannot be parsed any more (truncated) is refused.
                REQUIRE_MESSAGE(truncated[static_cast<size_t>(l)], "reload refused: " << s.toString());
                CHECK_MESSAGE((s.isCorruption() || s.isIOError()), s.toString());
            }
        } else if (what < 91) {  // damage a layer while the engine runs
            const int64_t l = r.between(0, L - 1);
            Expect& x = state[static_cast<size_t>(l)];
            if (truncated[static_cast<size_t>(l)]) continue;
            damage(l);
            log += " d" + std::to_string(l);
            x.corruption = true;  // (and served, if it was, from data read before)
        } else if (what < 92) {  // truncate a layer's file while the engine runs
            const int64_t l = r.between(0, L - 1);
            if (truncated[static_cast<size_t>(l)]) continue;
            auto idx = io::readLayerIndex(tc.files[static_cast<size_t>(l)]);
            REQUIRE(idx.isOk());
            const uint64_t keep = idx->dataStart + static_cast<uint64_t>(r.between(0, static_cast<int64_t>(idx->dataBytes()) - 1));
            REQUIRE(::truncate(tc.files[static_cast<size_t>(l)].c_str(), static_cast<off_t>(keep)) == 0);
            truncated[static_cast<size_t>(l)] = true;
            log += " t" + std::to_string(l);
            Expect& x = state[static_cast<size_t>(l)];
            x.corruption = x.ioError = x.broken = true;
        } else if (what < 93) {  // EIO on every read of a layer's file from now on
            const int64_t l = r.between(0, L - 1);
            const int fd = fdOf(tc.files[static_cast<size_t>(l)]);
            if (fd < 0) continue;
            faultsNow.failRanges.push_back(io::FaultRange{fd, 0, UINT64_MAX, EIO});
            (*injector)->setPlan(faultsNow);
            log += " e" + std::to_string(l);
            Expect& x = state[static_cast<size_t>(l)];
            x.ioError = x.broken = true;
        } else if (what < 96) {  // release everything (some on the other thread)
            log += " R*";
            releaseAll();
        } else if (what < 98) {  // read stats / trace concurrently with releases
            if (!held.empty()) {
                releaser->give(std::move(held.back().lease));
                held.pop_back();
                ++givenAway;
            }
            const EngineStats st = engine->stats();
            CHECK(st.layersAcquired >= served);
            (void)engine->timings();
        } else {  // destroy the engine now: reads may be in flight, leases may be held
            break;
        }
    }
    log += " end";
    // Destroy with whatever is held or in flight; leases still held are released afterwards
    // (half on the other thread), which must do nothing.
    if (r.chance(0.5)) releaseAll();
    dog.begin(log + " destroy");
    engine.reset();
    dog.end();
    for (auto& h : held) {
        if (r.chance(0.5)) releaser->give(std::move(h.lease));
    }
    held.clear();
    releaser.reset();
    testing::setReadSchedulerFactoryForTesting({});
    MESSAGE(log << " served=" << served << " corrupt=" << corruptSeen << " refused=" << refused
                << " reloads=" << reloads);
}

}  // namespace

TEST_CASE("random options, plans, faults, damage, releases and reloads keep the engine's contract") {
    const uint64_t first = envU64("SLI_STRESS_FIRST_SEED", 1);
    const uint64_t seeds = envU64("SLI_STRESS_SEEDS", 300);
    const bool uring = ioUringUsable();
    Watchdog dog;
    for (uint64_t s = first; s < first + seeds; ++s) {
        CAPTURE(s);
        runSeed(s, uring, dog);
    }
}

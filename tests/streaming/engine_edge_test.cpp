// Edge cases of the engine's public behaviour: every option out of range at open(), acquire()
// misuse, moved-from leases, cyclic plans deeper than the model, and trace JSON for layer names
// that need escaping.
#include <doctest/doctest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <clocale>
#include <cstdio>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <thread>

#include "engine/engine_testing.h"
#include "engine/trace.h"
#include "file_damage.h"
#include "io/fault_injecting_scheduler.h"
#include "engine_test_util.h"
#include "sli/engine.h"
#include "sli/json.h"

using namespace sli;
using namespace sli::testutil;

namespace {

EngineOptions edgeOptions(const TestCache& tc) { return cacheEngineOptions(tc); }

// Open must fail with InvalidArgument whose message contains `needle`.
void checkRejected(const EngineOptions& o, const std::string& needle) {
    CAPTURE(needle);
    auto e = Engine::open(o);
    REQUIRE_FALSE(e.isOk());
    CHECK_MESSAGE(e.status().isInvalidArgument(), e.status().toString());
    CHECK_MESSAGE(e.status().message().find(needle) != std::string::npos, e.status().toString());
}

std::string readFile(const std::string& path) {
    std::ifstream f(path);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("rejects every out-of-range option at open with a message naming it") {
    TempDir tmp;
    TestCache tc = makeCache(tmp.path, 3, QuantizationMode::kNone);
    EngineOptions o = edgeOptions(tc);
    o.workerThreads = -1;
    checkRejected(o, "workerThreads");
    o = edgeOptions(tc);
    o.workerThreads = 1 << 20;  // would spawn a million threads
    checkRejected(o, "workerThreads");
    for (uint32_t chunk : {0u, 5000u, 4096u * 3 + 1, 128u << 20}) {
        CAPTURE(chunk);
        o = edgeOptions(tc);
        o.chunkBytes = chunk;
        checkRejected(o, "chunkBytes");
    }
    for (uint32_t qd : {0u, 100000u}) {
        CAPTURE(qd);
        o = edgeOptions(tc);
        o.queueDepth = qd;
        checkRejected(o, "queueDepth");
    }
    o = edgeOptions(tc);
    o.prefetchDepth = -3;
    checkRejected(o, "prefetch depth");
    o = edgeOptions(tc);
    o.ioBackend = "spdk";
    checkRejected(o, "spdk");
    o = edgeOptions(tc);
    o.device = "cuda:x";
    checkRejected(o, "cuda:x");
    o = edgeOptions(tc);
    o.order = static_cast<LayerOrder>(9);
    checkRejected(o, "order");
    // A plan is only followed in explicit order: given with another order it is not ignored.
    o = edgeOptions(tc);
    o.plan = {2, 1};
    checkRejected(o, "plan");
    o.order = LayerOrder::kCyclic;
    checkRejected(o, "plan");
    o = edgeOptions(tc);
    o.order = LayerOrder::kExplicit;
    checkRejected(o, "plan");  // empty
    for (int64_t bad : {int64_t{-1}, int64_t{3}, INT64_MIN, INT64_MAX}) {
        CAPTURE(bad);
        o.plan = {0, bad, 1};
        checkRejected(o, "plan");
    }
    // Valid edge values still open: the smallest chunk and queue depth, one worker.
    o = edgeOptions(tc);
    o.chunkBytes = 4096;
    o.queueDepth = 1;
    o.workerThreads = 1;
    auto e = Engine::open(o);
    REQUIRE_MESSAGE(e.isOk(), e.status().toString());
    auto lease = (*e)->acquire(2);
    REQUIRE(lease.isOk());
    checkLayer(*lease, tc, 2);
}

TEST_CASE("a cache directory that is empty, a file or absent is a clear error naming it") {
    TempDir tmp;
    TestCache tc = makeCache(tmp.path, 2, QuantizationMode::kNone);
    EngineOptions o = edgeOptions(tc);
    o.cacheDir = "";
    checkRejected(o, "cacheDir");
    o.cacheDir = tc.files[0];  // a regular file
    auto f = Engine::open(o);
    REQUIRE_FALSE(f.isOk());
    CHECK(f.status().message().find(tc.files[0]) != std::string::npos);
    CHECK_MESSAGE(f.status().message().find("not a directory") != std::string::npos,
                  f.status().toString());
    o.cacheDir = tmp.path + "/absent";
    auto a = Engine::open(o);
    CHECK(a.status().isNotFound());
    CHECK(a.status().message().find(tmp.path + "/absent") != std::string::npos);
    o = edgeOptions(tc);
    o.modelId = "no/such-model";
    auto m = Engine::open(o);
    CHECK(m.status().isNotFound());
    CHECK(m.status().message().find("no/such-model") != std::string::npos);
}

TEST_CASE("acquire of a negative, out-of-range, held or passed layer fails without blocking") {
    TempDir tmp;
    TestCache tc = makeCache(tmp.path, 3, QuantizationMode::kNf4);
    auto e = Engine::open(edgeOptions(tc));
    REQUIRE(e.isOk());
    for (int64_t bad : {int64_t{-1}, int64_t{3}, INT64_MIN, INT64_MAX}) {
        CAPTURE(bad);
        auto r = (*e)->acquire(bad);
        CHECK(r.status().isInvalidArgument());
        CHECK(r.status().message().find(std::to_string(bad)) != std::string::npos);
    }
    auto a = (*e)->acquire(1);
    REQUIRE(a.isOk());
    CHECK((*e)->acquire(1).status().isInvalidArgument());  // held: no later occurrence
    CHECK((*e)->acquire(0).status().isInvalidArgument());  // passed in a single pass
    auto b = (*e)->acquire(2);
    REQUIRE(b.isOk());
    checkLayer(*a, tc, 1);
    checkLayer(*b, tc, 2);
}

namespace {

std::vector<std::vector<uint8_t>> leaseBytes(const Lease& lease) {
    std::vector<std::vector<uint8_t>> out;
    const Layer& t = lease.tensors();
    for (size_t k = 0; k < t.size(); ++k) {
        const auto* p = static_cast<const uint8_t*>(t[k].data());
        out.emplace_back(p, p + t[k].nbytes());
    }
    return out;
}

}  // namespace

TEST_CASE("an acquire refused because every slot is leased consumes no plan positions") {
    // Two slots (depth 1), layers 0 and 1 held: acquire(3) is refused. Layer 2 (skipped over
    // had it been served) is still there after a release, and its tensors are those a fresh
    // engine hands out.
    TempDir tmp;
    TestCache tc = makeCache(tmp.path, 4, QuantizationMode::kNf4);
    struct Case {
        const char* what;
        LayerOrder order;
        std::vector<int64_t> plan;
    };
    for (const Case& c : {Case{"sequential", LayerOrder::kSequential, {}},
                          Case{"explicit", LayerOrder::kExplicit, {0, 1, 2, 0, 3}},
                          Case{"cyclic", LayerOrder::kCyclic, {}}}) {
        SUBCASE(c.what) {
            EngineOptions o = edgeOptions(tc);
            o.order = c.order;
            o.plan = c.plan;
            o.prefetchDepth = 1;
            o.recordTrace = true;
            auto e = Engine::open(o);
            REQUIRE_MESSAGE(e.isOk(), e.status().toString());
            auto l0 = (*e)->acquire(0);
            auto l1 = (*e)->acquire(1);
            REQUIRE(l0.isOk());
            REQUIRE(l1.isOk());
            for (int attempt = 0; attempt < 2; ++attempt) {  // a second refusal changes nothing
                auto refused = (*e)->acquire(3);
                REQUIRE_FALSE(refused.isOk());
                CHECK_MESSAGE(refused.status().isResourceExhausted(), refused.status().toString());
                CHECK(refused.status().message().find("slots are leased") != std::string::npos);
            }
            l0->release();
            auto l2 = (*e)->acquire(2);
            REQUIRE_MESSAGE(l2.isOk(), l2.status().toString());
            checkLayer(*l2, tc, 2);
            const auto got = leaseBytes(*l2);
            l2->release();
            // Position 2 was served, not a later occurrence of layer 2 (cyclic: the next pass).
            const auto timings = (*e)->timings();
            REQUIRE(timings.size() == 2);
            CHECK(timings.back().layer == 2);
            CHECK(timings.back().sequence == 2);
            // The rest of the plan is intact too.
            l1->release();
            const int64_t next = c.order == LayerOrder::kExplicit ? 0 : 3;
            auto after = (*e)->acquire(next);
            REQUIRE_MESSAGE(after.isOk(), after.status().toString());
            checkLayer(*after, tc, next);

            auto fresh = Engine::open(o);
            REQUIRE(fresh.isOk());
            for (int64_t l : {0, 1}) REQUIRE((*fresh)->acquire(l).isOk());
            auto want = (*fresh)->acquire(2);
            REQUIRE(want.isOk());
            CHECK(got == leaseBytes(*want));
        }
    }
}

TEST_CASE("a moved-from lease holds nothing and a moved-to lease releases exactly once") {
    TempDir tmp;
    TestCache tc = makeCache(tmp.path, 4, QuantizationMode::kInt8);
    EngineOptions o = edgeOptions(tc);
    o.prefetchDepth = 1;  // two slots: a leaked or double release shows up as a refusal
    auto e = Engine::open(o);
    REQUIRE(e.isOk());
    auto r = (*e)->acquire(0);
    REQUIRE(r.isOk());
    const std::string name = r->tensors()[0].name();
    Lease a = std::move(*r);
    CHECK(r->find(name) == nullptr);
    CHECK(r->tensors().size() == 0);
    CHECK(r->layer() == -1);
    CHECK(a.find(name) != nullptr);
    CHECK(a.find("no.such.tensor") == nullptr);
    Lease b;
    b = std::move(a);
    CHECK(a.find(name) == nullptr);
    CHECK(a.layer() == -1);
    a.release();  // moved-from: nothing to release
    checkLayer(b, tc, 0);
    auto c = (*e)->acquire(1);
    REQUIRE(c.isOk());
    b = std::move(*c);  // releases layer 0's slot, takes layer 1's
    CHECK(b.layer() == 1);
    b.release();
    b.release();
    auto d = (*e)->acquire(2);
    auto f = (*e)->acquire(3);
    REQUIRE(d.isOk());
    REQUIRE(f.isOk());
    checkLayer(*d, tc, 2);
    checkLayer(*f, tc, 3);
}

TEST_CASE("cyclic order deeper than the model, on one layer and at depth 0 hands out every pass") {
    TempDir tmp;
    TestCache one = makeCache(tmp.path + "/one", 1, QuantizationMode::kNf4);
    TestCache three = makeCache(tmp.path + "/three", 3, QuantizationMode::kInt8);
    for (const TestCache* tc : {&one, &three}) {
        const int64_t n = tc == &one ? 1 : 3;
        for (int depth : {0, 1, 5, 16}) {
            CAPTURE(n);
            CAPTURE(depth);
            EngineOptions o = edgeOptions(*tc);
            o.order = LayerOrder::kCyclic;
            o.prefetchDepth = depth;
            auto e = Engine::open(o);
            REQUIRE_MESSAGE(e.isOk(), e.status().toString());
            for (int64_t k = 0; k < 4 * n + 1; ++k) {
                auto lease = (*e)->acquire(k % n);
                REQUIRE_MESSAGE(lease.isOk(), lease.status().toString());
                checkLayer(*lease, *tc, k % n);
            }
            // Skipping ahead by more than a pass and holding a layer while taking its next
            // occurrence (depth >= 1 leaves a slot for it).
            auto held = (*e)->acquire(0);
            REQUIRE(held.isOk());
            if (depth >= 1) {
                auto again = (*e)->acquire(0);
                REQUIRE_MESSAGE(again.isOk(), again.status().toString());
                checkLayer(*again, *tc, 0);
            } else {
                CHECK((*e)->acquire(0).status().isResourceExhausted());
            }
        }
    }
}

TEST_CASE("a layer still held is served again from its slot, not read again") {
    // A cyclic plan over no more layers than the depth: the next occurrence of a leased layer
    // enters the prefetch window while it is held. Each layer is read once; later passes are
    // served from the slots (tensors still as the reference's).
    TempDir tmp;
    TestCache tc = makeCache(tmp.path, 3, QuantizationMode::kNf4);
    for (int depth : {3, 5, 8}) {
        CAPTURE(depth);
        EngineOptions o = edgeOptions(tc);
        o.order = LayerOrder::kCyclic;
        o.prefetchDepth = depth;
        o.recordTrace = true;
        auto e = Engine::open(o);
        REQUIRE_MESSAGE(e.isOk(), e.status().toString());
        for (int64_t k = 0; k < 12; ++k) {
            auto lease = (*e)->acquire(k % 3);
            REQUIRE_MESSAGE(lease.isOk(), lease.status().toString());
            checkLayer(*lease, tc, k % 3);
        }
        const EngineStats st = (*e)->stats();
        CHECK(st.layersRead == 3);
        CHECK(st.layersReused == 9);
        CHECK(st.layersAcquired == 12);
    }
    SUBCASE("an explicit plan with repeats, and a position skipped over") {
        EngineOptions o = edgeOptions(tc);
        o.order = LayerOrder::kExplicit;
        o.plan = {0, 1, 0, 1, 2, 0, 1};
        o.prefetchDepth = 4;
        auto e = Engine::open(o);
        REQUIRE_MESSAGE(e.isOk(), e.status().toString());
        for (int64_t l : {0, 1}) {
            auto lease = (*e)->acquire(l);
            REQUIRE(lease.isOk());
            checkLayer(*lease, tc, l);
        }
        // Skips positions 2 (layer 0) and 3 (layer 1), both linked to the slots of positions 0
        // and 1 at the start: those slots are dropped or serve a later position of their
        // layer (whether 5 is linked before the skip depends on the io thread's timing), and
        // every tensor handed out is still the layer's.
        for (int64_t l : {2, 0, 1}) {
            auto lease = (*e)->acquire(l);
            REQUIRE_MESSAGE(lease.isOk(), lease.status().toString());
            checkLayer(*lease, tc, l);
        }
        CHECK((*e)->stats().layersRead + (*e)->stats().layersReused == 5);
    }
    SUBCASE("a second lease of a layer still held is read into another slot") {
        EngineOptions o = edgeOptions(tc);
        o.order = LayerOrder::kCyclic;
        o.prefetchDepth = 4;
        auto e = Engine::open(o);
        REQUIRE(e.isOk());
        auto first = (*e)->acquire(1);
        REQUIRE(first.isOk());
        auto second = (*e)->acquire(1);  // the next pass's layer 1, while the first is held
        REQUIRE_MESSAGE(second.isOk(), second.status().toString());
        checkLayer(*first, tc, 1);
        checkLayer(*second, tc, 1);
        CHECK(&first->tensors() != &second->tensors());
    }
}

// Aborts the test run, printing the engine's slot states, if it is still alive after 60 s:
// a hang in an acquire() becomes a failure with a diagnosis instead of a test timeout.
class HangGuard {
public:
    explicit HangGuard(const Engine& engine)
        : thread_([this, &engine] {
              std::unique_lock<std::mutex> lock(mu_);
              if (!cv_.wait_for(lock, std::chrono::seconds(60), [this] { return done_; })) {
                  std::fprintf(stderr, "acquire blocked for 60 s: %s\n",
                               testing::engineStateForTesting(engine).c_str());
                  std::abort();
              }
          }) {}
    ~HangGuard() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            done_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    bool done_ = false;
    std::thread thread_;
};

TEST_CASE("a second lease of a held layer gets a slot when later layers have taken the rest") {
    // Cyclic over 4 layers at depth 3 (4 slots). Holding layers 0, 1 and 3 links positions 4
    // (layer 0) and 5 (layer 1) to their leased slots, and position 6 (layer 2) takes the
    // last slot. acquire(0) for position 4 while position 0 is still held must read layer 0
    // again, into a slot only position 6 can give up (found by engine_stress_test: it used to
    // wait for ever). Position 6 is then read again when a slot frees.
    TempDir tmp;
    TestCache tc = makeCache(tmp.path, 4, QuantizationMode::kNf4);
    EngineOptions o = edgeOptions(tc);
    o.order = LayerOrder::kCyclic;
    o.prefetchDepth = 3;
    auto e = Engine::open(o);
    REQUIRE_MESSAGE(e.isOk(), e.status().toString());
    HangGuard guard(**e);  // fails the test instead of hanging it
    auto p0 = (*e)->acquire(0);
    auto p1 = (*e)->acquire(1);
    REQUIRE(p0.isOk());
    REQUIRE(p1.isOk());
    {
        auto p2 = (*e)->acquire(2);
        REQUIRE(p2.isOk());
        checkLayer(*p2, tc, 2);
    }
    auto p3 = (*e)->acquire(3);
    REQUIRE(p3.isOk());
    // Once position 6 has been read into the last slot (the state this case is about):
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (testing::engineStateForTesting(**e).find("ready l2@6") == std::string::npos) {
        REQUIRE_MESSAGE(std::chrono::steady_clock::now() < until, testing::engineStateForTesting(**e));
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    auto p4 = (*e)->acquire(0);  // position 4, while position 0 is held
    REQUIRE_MESSAGE(p4.isOk(), p4.status().toString());
    checkLayer(*p4, tc, 0);
    CHECK(&p0->tensors() != &p4->tensors());
    p0->release();
    p3->release();
    auto p5 = (*e)->acquire(1);  // position 5, while position 1 is held
    REQUIRE_MESSAGE(p5.isOk(), p5.status().toString());
    checkLayer(*p5, tc, 1);
    p1->release();
    p4->release();
    for (int64_t l : {2, 3, 0, 1, 2}) {  // positions 6 (given up above) to 10
        auto lease = (*e)->acquire(l);
        REQUIRE_MESSAGE(lease.isOk(), lease.status().toString());
        checkLayer(*lease, tc, l);
    }
}

TEST_CASE("a reload while later reads of the layer are in flight loses no plan position") {
    // Cyclic over 2 layers at depth 4, layer 1 damaged, every read held back 100 ms so that
    // reads stay in flight. reload(1) discards the slot reading position 3 (layer 1) from the
    // old file, to which position 5 is linked; acquire(0) for position 4 then skips position 3.
    // Position 5 must still be read (found by engine_stress_test under TSan: the discarded slot
    // took it along and acquire(1) waited for ever).
    TempDir tmp;
    TestCache tc = makeCache(tmp.path, 2, QuantizationMode::kNf4);
    {
        auto idx = io::readLayerIndex(tc.files[1]);
        REQUIRE(idx.isOk());
        REQUIRE(sli::testing::flipByte(tc.files[1], idx->tensors[0].part(QuantPart::kPayload).offset + 5));
    }
    io::FaultPlan slow;
    slow.delayProbability = 1.0;
    slow.maxDelay = std::chrono::milliseconds(100);
    testing::setReadSchedulerFactoryForTesting(
        [slow](const io::ReadSchedulerOptions& so) -> Result<std::unique_ptr<io::ReadScheduler>> {
            auto s = io::FaultInjectingScheduler::create(so, slow);
            if (!s.isOk()) return s.status();
            return std::unique_ptr<io::ReadScheduler>(std::move(s).value());
        });
    EngineOptions o = edgeOptions(tc);
    o.order = LayerOrder::kCyclic;
    o.prefetchDepth = 4;
    auto e = Engine::open(o);
    REQUIRE_MESSAGE(e.isOk(), e.status().toString());
    HangGuard guard(**e);  // fails the test instead of hanging it
    {
        auto p0 = (*e)->acquire(0);
        REQUIRE(p0.isOk());
        CHECK((*e)->acquire(1).status().isCorruption());
    }
    REQUIRE((*e)->reload(1).isOk());  // the file is still damaged: position 1 fails again later
    auto p2 = (*e)->acquire(0);       // skips position 1
    REQUIRE(p2.isOk());
    auto p4 = (*e)->acquire(0);       // a second lease of layer 0: skips position 3
    REQUIRE_MESSAGE(p4.isOk(), p4.status().toString());
    auto p5 = (*e)->acquire(1);       // position 5: read, and fails on the damage
    CHECK_MESSAGE(p5.status().isCorruption(), p5.status().toString());
    checkLayer(*p2, tc, 0);
    checkLayer(*p4, tc, 0);
    testing::setReadSchedulerFactoryForTesting({});
}

TEST_CASE("the trace is valid JSON for layer names with quotes, backslashes, controls and UTF-8") {
    TempDir tmp;
    const std::vector<std::string> names = {
        "say \"hi\"", "back\\slash\\", "tab\tnew\nline\x01\x1f", "caf\xc3\xa9 \xe5\xb1\x82 \xf0\x9f\x98\x80",
        "bad utf-8 \xff\xc3", "</script>\x7f"};
    std::vector<LayerTiming> timings;
    for (size_t i = 0; i < names.size(); ++i) {
        LayerTiming t;
        t.layer = static_cast<int64_t>(i);
        t.sequence = i;
        t.queuedNs = t.readStartNs = 1000 + static_cast<int64_t>(i);
        t.readDoneNs = 5000;
        t.verifiedNs = 6000;
        t.dequantStartNs = 5500;
        t.dequantizedNs = 7000;
        t.acquireCalledNs = 6500;
        t.acquiredNs = 7100;
        t.releasedNs = 9000;
        timings.push_back(t);
    }
    LayerTiming unnamed;  // a layer index the name list does not cover
    unnamed.layer = 42;
    unnamed.queuedNs = unnamed.readStartNs = 10;
    unnamed.readDoneNs = 20;
    timings.push_back(unnamed);
    const std::string path = tmp.path + "/trace.json";
    REQUIRE(writeTraceFile(path, timings, names).isOk());
    const std::string text = readFile(path);
    auto j = parseJson(text);
    REQUIRE_MESSAGE(j.isOk(), j.status().toString());
    std::map<std::string, int> seen;
    for (const auto& ev : j->find("traceEvents")->asArray()) {
        if (ev.find("ph")->asString() == "X") seen[ev.find("name")->asString()]++;
    }
    for (size_t i = 0; i + 1 < names.size(); ++i) {  // the valid UTF-8 ones round-trip
        if (names[i].find('\xff') != std::string::npos) continue;
        CHECK_MESSAGE(seen[names[i]] > 0, names[i]);
    }
    CHECK(seen["layer 42"] == 1);
    const std::string cmd =
        "python3 -c 'import json,sys; json.load(open(sys.argv[1], encoding=\"utf-8\"))' " + path +
        " 2>/dev/null";
    if (std::system("python3 -c '' 2>/dev/null") == 0) {
        CHECK_MESSAGE(std::system(cmd.c_str()) == 0, "python3 rejects " << path);
    } else {
        MESSAGE("python3 not available: trace checked with sli's own parser only");
    }
}

TEST_CASE("an engine's trace is valid JSON when its cache's layer names need escaping") {
    TempDir tmp;
    QuantizationConfig cfg;
    cfg.mode = QuantizationMode::kNone;
    cfg.computeDType = DType::kF32;
    std::vector<QuantizedLayer> layers;
    const std::vector<std::string> names = {"q\"uote\\d", "ctl\n\x02", "\xce\xbb-layer"};
    std::vector<uint8_t> bytes(64 * 4, 0);
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7);
    for (size_t l = 0; l < names.size(); ++l) {
        QuantizedLayer ql;
        ql.index = static_cast<int64_t>(l);
        ql.name = names[l];
        ql.tensors.push_back(makeStoredTensor(names[l] + ".w", {64}, DType::kF32, bytes, DType::kF32));
        layers.push_back(std::move(ql));
    }
    TestCache tc = writeCache(tmp.path, "odd/names", cfg, layers);
    auto e = Engine::open(edgeOptions(tc));
    REQUIRE_MESSAGE(e.isOk(), e.status().toString());
    CHECK((*e)->layerNames() == names);
    for (int64_t l = 0; l < 3; ++l) {
        auto lease = (*e)->acquire(l);
        REQUIRE(lease.isOk());
        CHECK(lease->find(names[static_cast<size_t>(l)] + ".w") != nullptr);
    }
    const std::string path = tmp.path + "/trace.json";
    REQUIRE((*e)->writeTrace(path).isOk());
    auto j = parseJson(readFile(path));
    REQUIRE_MESSAGE(j.isOk(), j.status().toString());
    int named = 0;
    for (const auto& ev : j->find("traceEvents")->asArray()) {
        const std::string& n = ev.find("name")->asString();
        for (const auto& want : names) named += n == want;
    }
    CHECK(named >= 9);  // read, dequant, executor per layer at least
}

TEST_CASE("a long cyclic run keeps a bounded window of the latest layer timings") {
    // Token-by-token decoding runs for ever: the trace keeps the most recent kMaxTimings
    // releases (engine.h), oldest first, instead of growing without bound.
    TempDir tmp;
    TestCache tc = writeTinyCache(tmp.path, "tiny/cyclic", "l", DType::kF32, 1);
    EngineOptions o = edgeOptions(tc);
    o.order = LayerOrder::kCyclic;
    o.prefetchDepth = 2;
    auto e = Engine::open(o);
    REQUIRE(e.isOk());
    const uint64_t total = Engine::kMaxTimings + 101;
    for (uint64_t k = 0; k < total; ++k) {
        auto lease = (*e)->acquire(static_cast<int64_t>(k % 2));
        REQUIRE(lease.isOk());
    }
    const auto t = (*e)->timings();
    REQUIRE(t.size() == Engine::kMaxTimings);
    CHECK(t.front().sequence == total - Engine::kMaxTimings);
    CHECK(t.back().sequence == total - 1);
    bool ordered = true;
    for (size_t k = 1; k < t.size(); ++k) ordered = ordered && t[k].sequence == t[k - 1].sequence + 1;
    CHECK(ordered);
    CHECK((*e)->stats().layersAcquired == total);
}

TEST_CASE("stats, timings and the trace are read on other threads while leases are released there") {
    // engine.h: one executor thread acquires; leases may be released from any thread; stats()
    // and writeTrace() are safe from any thread (TSan checks the interleavings it sees).
    TempDir tmp;
    TestCache tc = makeCache(tmp.path, 4, QuantizationMode::kNf4);
    EngineOptions o = edgeOptions(tc);
    o.order = LayerOrder::kCyclic;
    o.prefetchDepth = 2;
    auto e = Engine::open(o);
    REQUIRE(e.isOk());
    Engine& engine = **e;
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Lease> handed;
    bool done = false;
    std::thread releaser([&] {
        std::unique_lock<std::mutex> lock(mu);
        while (!done || !handed.empty()) {
            cv.wait(lock, [&] { return done || !handed.empty(); });
            while (!handed.empty()) {
                Lease l = std::move(handed.front());
                handed.pop_front();
                lock.unlock();
                l.release();
                lock.lock();
            }
        }
    });
    std::atomic<bool> stopObserver{false};
    std::atomic<int> traceErrors{0};
    std::thread observer([&] {
        const std::string path = tmp.path + "/trace.json";
        while (!stopObserver.load()) {
            (void)engine.stats();
            (void)engine.timings();
            if (!engine.writeTrace(path).isOk()) traceErrors++;
        }
    });
    const int64_t total = 200;
    int64_t acquired = 0, refused = 0;
    for (int64_t k = 0; k < total;) {
        auto lease = engine.acquire(k % 4);
        if (!lease.isOk()) {  // every slot still held by the releaser's queue: retry
            REQUIRE_MESSAGE(lease.status().isResourceExhausted(), lease.status().toString());
            ++refused;
            std::this_thread::yield();
            continue;
        }
        REQUIRE(lease->layer() == k % 4);
        ++acquired;
        ++k;
        {
            std::lock_guard<std::mutex> lock(mu);
            handed.push_back(std::move(*lease));
        }
        cv.notify_one();
    }
    {
        std::lock_guard<std::mutex> lock(mu);
        done = true;
    }
    cv.notify_one();
    releaser.join();
    stopObserver = true;
    observer.join();
    CHECK(traceErrors.load() == 0);
    CHECK(acquired == total);
    CHECK(engine.stats().layersAcquired == static_cast<uint64_t>(total));
    CHECK(engine.timings().size() == static_cast<size_t>(total));
    MESSAGE("acquire refused while the releaser lagged: " << refused);
}

TEST_CASE("a trace path that cannot be written is an error naming it; no trace recorded is empty") {
    TempDir tmp;
    TestCache tc = makeCache(tmp.path, 2, QuantizationMode::kNone);
    EngineOptions o = edgeOptions(tc);
    o.recordTrace = false;
    auto e = Engine::open(o);
    REQUIRE(e.isOk());
    for (int64_t l = 0; l < 2; ++l) REQUIRE((*e)->acquire(l).isOk());
    CHECK((*e)->timings().empty());
    const std::string bad = tmp.path + "/no/such/dir/trace.json";
    Status st = (*e)->writeTrace(bad);
    REQUIRE_FALSE(st.isOk());
    CHECK(st.message().find(bad) != std::string::npos);
    const std::string path = tmp.path + "/trace.json";
    REQUIRE((*e)->writeTrace(path).isOk());
    auto j = parseJson(readFile(path));
    REQUIRE(j.isOk());
    for (const auto& ev : j->find("traceEvents")->asArray()) CHECK(ev.find("ph")->asString() == "M");
}

TEST_CASE("the trace's times are written with a decimal point whatever the numeric locale") {
    // An executor that calls setlocale(LC_ALL, "") in, say, a German locale must still get a
    // trace that chrome://tracing and Perfetto can read ("ts": 1.500, not 1,500).
    TempDir tmp;
    const char* commaLocale = nullptr;
    for (const char* name : {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "fr_FR.utf8"}) {
        if (std::setlocale(LC_NUMERIC, name) != nullptr) {
            commaLocale = name;
            break;
        }
    }
    if (commaLocale == nullptr && std::system("command -v localedef >/dev/null 2>&1") == 0) {
        // No such locale installed: compile one into the temporary directory.
        const std::string cmd = "localedef -i de_DE -f UTF-8 " + tmp.path +
                                "/de_DE.UTF-8 >/dev/null 2>&1";
        if (std::system(cmd.c_str()) == 0) {
            ::setenv("LOCPATH", tmp.path.c_str(), 1);
            if (std::setlocale(LC_NUMERIC, "de_DE.UTF-8") != nullptr) commaLocale = "de_DE.UTF-8";
            ::unsetenv("LOCPATH");
        }
    }
    if (commaLocale == nullptr) {
        MESSAGE("no locale with a decimal comma available (nor localedef): not checked here");
        return;
    }
    char probe[16];
    std::snprintf(probe, sizeof probe, "%.1f", 1.5);
    const bool comma = std::string(probe) == "1,5";
    LayerTiming t;
    t.layer = 0;
    t.queuedNs = t.readStartNs = 1500;
    t.readDoneNs = 4250;
    t.dequantStartNs = 4300;
    t.dequantizedNs = 9999;
    const std::string json = traceJson({t}, {"l0"});
    std::setlocale(LC_NUMERIC, "C");
    REQUIRE_MESSAGE(comma, commaLocale << " formats 1.5 as " << probe);
    auto j = parseJson(json);
    REQUIRE_MESSAGE(j.isOk(), j.status().toString() << "\n" << json);
    bool found = false;
    for (const auto& ev : j->find("traceEvents")->asArray()) {
        if (ev.find("ph")->asString() != "X" || ev.find("tid")->asInt64() != 1) continue;
        found = true;
        CHECK(ev.find("ts")->asDouble() == doctest::Approx(1.5));
        CHECK(ev.find("dur")->asDouble() == doctest::Approx(2.75));
    }
    CHECK(found);
}

namespace {
uint64_t residentBytes() {
    std::ifstream f("/proc/self/statm");
    uint64_t size = 0, resident = 0;
    f >> size >> resident;
    return resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}
}  // namespace

TEST_CASE("many slots of tiny layers stay within the host budget") {
    // Each slot's output arena is allocated in whole pages: the budget must count them so, or
    // a deep cyclic window of tiny layers takes many times the budget.
    TempDir tmp;
    // f32 stored, f16 out: dequantized into the arena
    TestCache tc = writeTinyCache(tmp.path, "toy/tiny", "t", DType::kF16, 0);
    EngineOptions o = edgeOptions(tc);
    o.order = LayerOrder::kCyclic;
    o.prefetchDepth = 1 << 20;  // as many slots as the budget holds
    o.hostBudgetBytes = 16ull << 20;
    o.workerThreads = 1;
    const uint64_t before = residentBytes();
    auto e = Engine::open(o);
    REQUIRE_MESSAGE(e.isOk(), e.status().toString());
    const uint64_t grown = residentBytes() - std::min(before, residentBytes());
    const EngineStats st = (*e)->stats();
    MESSAGE("slots " << st.slots << ", pinned " << st.pinnedBytes << ", output "
                     << st.hostOutputBytes << ", resident growth " << grown);
    CHECK(st.pinnedBytes + st.hostOutputBytes <= o.hostBudgetBytes);
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
    MESSAGE("sanitizer build: its shadow memory is resident too; growth not checked");
#else
    CHECK(grown <= o.hostBudgetBytes + (4ull << 20));
#endif
    for (int64_t k = 0; k < 6; ++k) {
        auto lease = (*e)->acquire(k % 2);
        REQUIRE(lease.isOk());
        REQUIRE(lease->tensors().size() == 1);
        CHECK(lease->tensors()[0].dtype() == DType::kF16);
    }
}

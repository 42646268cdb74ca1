// sli::Processor: see include/sli/processor.h.
#include "sli/processor.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include "engine/ingest.h"
#include "io/file.h"
#include "sli/cuda.h"
#include "sli/log.h"
#include "sli/quantizer.h"

namespace sli {

namespace {

// Fills the quantization side of `ingest` from the options' preset or config.
Status chooseConfig(const ProcessorOptions& o, IngestOptions& ingest) {
    if (!o.preset.empty() && o.config) {
        return Status::invalidArgument("processor options: give a preset (\"" + o.preset +
                                       "\") or a config, not both");
    }
    if (o.config) {
        SLI_RETURN_IF_ERROR(o.config->validate().withContext("processor options: config"));
        ingest.config = *o.config;
        return Status();
    }
    if (o.preset.empty() || o.preset == "none") {
        ingest.config = QuantizationConfig{};
        return Status();
    }
    if (o.preset == "mixed") {
        useAdaptivePolicy(ingest, getMixedPrecisionConfig(o.quantizeThreads));
        return Status();
    }
    auto c = QuantizationRegistry::global().get(o.preset);
    if (!c.isOk()) {
        return Status::invalidArgument("processor options: unknown preset \"" + o.preset +
                                       "\" (none, mixed, or a registered config): " +
                                       c.status().message());
    }
    ingest.config = *c;
    return Status();
}

// Quantizes layer `layer` of the model again into the cache when its file there is damaged
// (the whole file is checked first: one that reads back intact, as after a transient read
// error, is kept as it is, and an info line says so). The caller has warned already: the
// ingestion's own warning is off, so each repair logs one line.
Status repairLayer(const IngestOptions& ingest, int64_t layer, const std::string& label) {
    IngestOptions one = ingest;
    one.onlyLayers = {layer};
    one.verifyReused = true;
    one.warnRewrites = false;
    auto sum = ingestCheckpoint(one);
    if (!sum.isOk()) return sum.status();
    if (sum->layersWritten == 0) {
        SLI_INFO("processor", "%s reads back intact from %s: kept as it is (the failure was transient)",
                 label.c_str(), sum->cacheDir.c_str());
    }
    return Status();
}

std::string layerLabel(const Processor& p, int64_t layer) {
    std::string s = "layer " + std::to_string(layer);
    if (layer >= 0 && layer < p.numLayers()) {
        s += " (";
        s += p.layerNames()[static_cast<size_t>(layer)];
        s += ")";
    }
    return s;
}

// The one warning of a repair: the layer, the cache, the damage met, the model it comes from.
void warnRepair(const Processor& p, const IngestOptions& ingest, int64_t layer, const Status& damage,
                bool background) {
    SLI_WARN("processor", "%s of %s: %s; quantizing it again from %s%s", layerLabel(p, layer).c_str(),
             p.build().cacheDir.c_str(), damage.toString().c_str(), ingest.input.c_str(),
             background ? " in the background" : "");
}

}  // namespace

// The background repair thread (repairAhead): the engine reports a layer whose read failed
// (usually a prefetch, ahead of the executor); this thread quantizes it again, one layer at a
// time (ingestion rewrites the cache's manifest), in the order the damage was found. acquire()
// takes the result, waiting for it (its layer moved to the front of the queue) if need be.
// Lock order: the engine's lock, then mu (noteDamage runs under the engine's lock); nothing
// here calls into the engine.
struct Processor::Repairer {
    Repairer(const Processor& owner, const IngestOptions& ingest) : owner(owner), ingest(ingest) {}
    const Processor& owner;
    const IngestOptions& ingest;  // the Processor's, immutable after open()
    std::mutex mu;
    std::condition_variable cv;
    struct Job {
        int64_t layer;
        Status damage;   // what the engine met: the repair thread's one warning names it
        bool requested;  // an acquire() waits for it (else found ahead, by a prefetch)
    };
    std::deque<Job> queue;
    int64_t running = -1;
    std::map<int64_t, Status> done;  // results acquire() has not taken yet
    bool stop = false;
    std::thread thread;

    void start() {
        thread = std::thread([this] { loop(); });
    }
    // Pending repairs are dropped; one in progress finishes first.
    void shutdown() {
        {
            std::lock_guard<std::mutex> lock(mu);
            stop = true;
            queue.clear();
        }
        cv.notify_all();
        if (thread.joinable()) thread.join();
    }
    auto findQueued(int64_t layer) {
        return std::find_if(queue.begin(), queue.end(), [layer](const Job& j) { return j.layer == layer; });
    }
    // Engine thread, engine lock held: queues `layer` unless it is queued, being repaired or
    // repaired and not yet taken (that result covers this failure: the engine reads the old
    // file until acquire() has it reload).
    void noteDamage(int64_t layer, const Status& damage) {
        if (!damage.isCorruption() && !damage.isIOError()) return;
        std::lock_guard<std::mutex> lock(mu);
        if (stop || running == layer || done.count(layer) != 0 || findQueued(layer) != queue.end()) return;
        queue.push_back(Job{layer, damage, false});
        cv.notify_all();
    }
    // Executor: the result of a repair of `layer`, whose acquire met `met`. `ahead`: one had
    // started (or finished) before this call; otherwise the layer's queued job (noted ahead,
    // with its damage) or a new one for `met` goes to the front and is waited for. Either
    // way the repair thread logs the one warning of the repair.
    Status await(int64_t layer, const Status& met, bool* ahead) {
        std::unique_lock<std::mutex> lock(mu);
        *ahead = running == layer || done.count(layer) != 0;
        if (!*ahead) {
            Job job{layer, met, true};
            if (auto q = findQueued(layer); q != queue.end()) {
                job.damage = std::move(q->damage);
                queue.erase(q);
            }
            queue.push_front(std::move(job));
            cv.notify_all();
        }
        cv.wait(lock, [&] { return done.count(layer) != 0; });
        Status st = std::move(done[layer]);
        done.erase(layer);
        return st;
    }
    void loop() {
        std::unique_lock<std::mutex> lock(mu);
        for (;;) {
            cv.wait(lock, [&] { return stop || !queue.empty(); });
            if (stop) return;
            Job job = std::move(queue.front());
            queue.pop_front();
            const int64_t layer = job.layer;
            running = layer;
            lock.unlock();
            warnRepair(owner, ingest, layer, job.damage, !job.requested);
            Status st = repairLayer(ingest, layer, layerLabel(owner, layer));
            lock.lock();
            running = -1;
            done[layer] = std::move(st);
            cv.notify_all();
        }
    }
};

Processor::Processor() = default;

Processor::~Processor() {
    // The repair thread first (it reads the engine's layer names); damage the engine reports
    // while it shuts down is then ignored.
    if (repairer_) repairer_->shutdown();
    engine_.reset();
}

Result<std::unique_ptr<Processor>> Processor::open(const ProcessorOptions& o) {
    if (o.modelPath.empty()) return Status::invalidArgument("processor options: no model path");
    if (o.cacheRoot.empty()) return Status::invalidArgument("processor options: no cache root");
    if (!io::pathExists(o.modelPath)) {
        return Status::notFound("model " + o.modelPath + " does not exist");
    }
    IngestOptions ingest;
    ingest.input = o.modelPath;
    ingest.cacheRoot = o.cacheRoot;
    ingest.modelId = o.modelId;
    ingest.defaultSkips = o.defaultSkips;
    ingest.threads = o.quantizeThreads;
    ingest.verifyReused = o.verifyCache;
    if (auto d = cuda::parseDevice(o.engine.device); d.isOk()) ingest.device = *d;
    SLI_RETURN_IF_ERROR(chooseConfig(o, ingest));

    // Complete layers are reused (index read only); missing ones are quantized and written.
    auto sum = ingestCheckpoint(ingest);
    if (!sum.isOk()) return sum.status().withContext("preparing the layer cache of " + o.modelPath);

    std::unique_ptr<Processor> p(new Processor());
    p->config_ = ingest.config;
    p->repairWhileStreaming_ = o.repairWhileStreaming;
    p->build_.cacheDir = sum->cacheDir;
    p->build_.modelId = sum->modelId;
    p->build_.layers = sum->layers;
    p->build_.layersWritten = sum->layersWritten;
    p->build_.layersReused = sum->layersReused;
    p->build_.layersRepaired = sum->layersRepaired;
    p->build_.seconds = sum->seconds;

    // Absolute, so that a repair still finds them if the working directory changes.
    std::error_code ec;
    if (auto a = std::filesystem::absolute(ingest.input, ec); !ec) ingest.input = a.string();
    if (auto a = std::filesystem::absolute(o.cacheRoot, ec); !ec) ingest.cacheRoot = a.string();
    ingest.modelId = sum->modelId;
    ingest.progress = nullptr;
    p->ingest_ = std::make_unique<IngestOptions>(std::move(ingest));

    EngineOptions eo = o.engine;
    eo.cacheDir = sum->cacheDir;  // exactly this configuration's directory
    eo.modelId = sum->modelId;
    if (o.repairWhileStreaming && o.repairAhead) {
        p->repairer_ = std::make_unique<Repairer>(*p, *p->ingest_);
        eo.onLayerError = [r = p->repairer_.get(), user = o.engine.onLayerError](int64_t layer,
                                                                                   const Status& e) {
            if (user) user(layer, e);
            r->noteDamage(layer, e);
        };
    }
    auto engine = Engine::open(eo);
    if (!engine.isOk()) return engine.status().withContext("streaming " + sum->cacheDir);
    p->engine_ = std::move(engine).value();
    if (p->repairer_) p->repairer_->start();
    return p;
}

Result<Lease> Processor::acquire(int64_t layer) {
    auto lease = engine_->acquire(layer);
    if (lease.isOk() || !repairWhileStreaming_) return lease;
    const Status damage = lease.status();
    if (!damage.isCorruption() && !damage.isIOError()) return lease;
    // (a layer out of range is InvalidArgument: only a real layer's data gets here)
    const auto failed = [&](const Status& why) {
        std::string msg = damage.message() + " (repairing layer " + std::to_string(layer) +
                          " failed: " + why.toString() + ")";
        return damage.isCorruption() ? Status::corruption(std::move(msg)) : Status::ioError(std::move(msg));
    };
    // Two rounds at most: a repair that had started before this acquire may have checked the
    // file before the damage this acquire met (the file was damaged again since, or an old
    // read failed late); then one repair more, started now.
    Status met = damage;
    for (int round = 0;; ++round) {
        bool ahead = false;
        if (!repairer_) warnRepair(*this, *ingest_, layer, met, false);  // else the repair thread says so
        const Status repaired = repairer_ ? repairer_->await(layer, met, &ahead)
                                           : repairLayer(*ingest_, layer, layerLabel(*this, layer));
        if (!repaired.isOk()) return failed(repaired);
        if (Status s = engine_->reload(layer); !s.isOk()) return failed(s);
        auto again = engine_->acquire(layer);
        if (again.isOk()) {
            ++repairs_;
            if (ahead) ++repairsAhead_;
            return again;
        }
        met = again.status();
        if (!ahead || round > 0 || (!met.isCorruption() && !met.isIOError())) return failed(met);
    }
}

}  // namespace sli

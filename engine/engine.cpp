// sli::Engine — CPU streaming path. See include/sli/engine.h for the contract.
//
// Threads:
//   io thread      owns the ReadScheduler (one ring per submitting thread). It assigns free
//                  slots to upcoming plan positions (at most `prefetchDepth` ahead of the
//                  executor), submits one O_DIRECT read of each layer file's data region into
//                  the slot's pinned buffer, and on completion queues one task per tensor.
//   workers (W)    take tensor tasks in FIFO order: verify the tensor's extents (xxh3), decode
//                  (zstd statistics into per-worker scratch) and dequantize straight from the
//                  pinned buffer into the slot's pooled output arena.
//   executor       calls acquire(i); waits (condition variable) until the slot holding the
//                  next plan occurrence of i is ready, and gets a Lease; Lease release frees
//                  the slot and wakes the io thread.
//
// Memory is fixed at open(): slots x (pinned read buffer of the largest layer's data region +
// output arena of the largest layer's full-precision tensors) + per-worker scratch.
// Pass-through tensors (mode none, stored uncompressed in the output dtype) are verified and
// handed out straight from the pinned read buffer: no copy, no arena space.
#include "sli/engine.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "io/aligned_io.h"
#include "io/cache_format.h"
#include "io/cache_manifest.h"
#include "io/pinned_pool.h"
#include "io/read_scheduler.h"
#include "sli/config.h"
#include "sli/kernels.h"
#include "sli/log.h"
#include "engine_testing.h"
#include "trace.h"

namespace sli {

namespace {

std::mutex gFactoryMu;
testing::ReadSchedulerFactory gFactory;

}  // namespace

void testing::setReadSchedulerFactoryForTesting(ReadSchedulerFactory factory) {
    std::lock_guard<std::mutex> lock(gFactoryMu);
    gFactory = std::move(factory);
}

namespace {

constexpr const char* kLog = "engine";
constexpr uint64_t kArenaAlign = 64;
constexpr uint32_t kMaxRequestBytes = 1u << 30;  // one ReadRequest covers at most 1 GiB

int64_t nowNs(std::chrono::steady_clock::time_point origin) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                                origin)
               .count();
}

uint64_t alignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

enum class SlotState : uint8_t { kFree, kReading, kDecoding, kReady, kLeased };

struct LayerSource {
    std::string name;
    io::LayerFileIndex index;
    io::DirectReadFile file;
    std::vector<uint64_t> outOffsets;  // per tensor, into the output arena
    std::vector<DType> outDTypes;      // per tensor: the compute dtype, or an integer tensor's own
    // Per tensor: offset of its bytes in the read buffer when it is handed out in place
    // (pass-through), else -1.
    std::vector<int64_t> inPlace;
    uint64_t outBytes = 0;
};

struct SlotData {
    SlotState state = SlotState::kFree;
    int64_t layer = -1;
    uint64_t pos = 0;         // plan position
    bool discard = false;     // skipped by acquire(): free once the io/decode finishes
    int readsLeft = 0;
    std::atomic<int> tasksLeft{0};
    Status error;             // first error of this layer (guarded by Impl::mu)
    io::PinnedPool::Slot buffer;
    AlignedBuffer arena;
    std::map<int64_t, Layer> views;  // per layer: tensors borrowing the arena
    LayerTiming timing;
};

struct Task {
    int slot;
    size_t tensor;
};

}  // namespace

struct Engine::Impl {
    EngineOptions opts;
    std::chrono::steady_clock::time_point origin = std::chrono::steady_clock::now();
    std::string cacheDir;
    std::vector<LayerSource> layers;
    std::vector<std::string> layerNames;
    DType outDType = DType::kF16;
    uint64_t maxDataBytes = 0, maxOutBytes = 0, maxScratch = 0;
    int depth = 2;
    std::unique_ptr<io::PinnedPool> pool;
    std::vector<std::unique_ptr<SlotData>> slots;
    std::unique_ptr<io::ReadScheduler> scheduler;  // driven by the io thread only
    std::string backendName;
    bool anyDirect = false;

    // ---- shared state, guarded by mu -------------------------------------------------
    mutable std::mutex mu;
    std::condition_variable ioCv;     // io thread: slot freed, acquire waiting, stop
    std::condition_variable readyCv;  // executor: a slot became ready / failed
    std::condition_variable taskCv;   // workers: tasks queued, stop
    std::deque<Task> tasks;
    bool stop = false;
    uint64_t nextReadPos = 0;     // next plan position to read
    uint64_t nextAcquirePos = 0;  // plan position the next acquire() consumes
    bool acquireWaiting = false;
    EngineStats stats;
    std::vector<LayerTiming> timings;

    std::thread ioThread;
    std::vector<std::thread> workers;

    // ---- plan -------------------------------------------------------------------------
    bool planFinite() const { return opts.order != LayerOrder::kCyclic; }
    uint64_t planLength() const {
        return opts.order == LayerOrder::kExplicit ? opts.plan.size() : layers.size();
    }
    int64_t planAt(uint64_t pos) const {
        if (opts.order == LayerOrder::kExplicit) return opts.plan[pos];
        return static_cast<int64_t>(pos % layers.size());
    }

    Status openLayers();
    Status allocate();
    void ioLoop();
    void workerLoop(int id);
    void freeSlotLocked(int s);
    void finishTaskLocked(int s);
    Result<Layer*> layerView(int s, int64_t layer);
};

Status Engine::Impl::openLayers() {
    SLI_ASSIGN_OR_RETURN(auto dirs, io::findCacheDirs(opts.cacheDir));
    std::vector<io::CacheManifest> manifests;
    std::vector<std::string> matching;
    for (const auto& d : dirs) {
        auto m = io::readManifest(d);
        if (!m.isOk()) return m.status();
        if (!opts.modelId.empty() && m->modelId != opts.modelId) continue;
        matching.push_back(d);
        manifests.push_back(std::move(m).value());
    }
    if (matching.empty()) {
        return Status::notFound("no layer cache" +
                                (opts.modelId.empty() ? std::string() : " for model " + opts.modelId) +
                                " under " + opts.cacheDir);
    }
    if (matching.size() > 1) {
        std::string list;
        for (const auto& d : matching) list += "\n  " + d;
        return Status::invalidArgument("several layer caches under " + opts.cacheDir +
                                       " match; name one directory or a model id:" + list);
    }
    cacheDir = matching[0];
    const io::CacheManifest& m = manifests[0];
    if (m.layers.empty()) return Status::notFound("cache " + cacheDir + " lists no layers");

    SLI_ASSIGN_OR_RETURN(QuantizationConfig cfg, QuantizationConfig::fromJsonString(m.configJson));
    outDType = dtypeIsCompute(opts.computeDType) ? opts.computeDType : cfg.computeDType;

    for (size_t i = 0; i < m.layers.size(); ++i) {
        const io::ManifestLayer& ml = m.layers[i];
        if (ml.index != static_cast<int64_t>(i)) {
            return Status::corruption("cache " + cacheDir + ": manifest layer " +
                                      std::to_string(i) + " has index " + std::to_string(ml.index));
        }
        LayerSource src;
        src.name = ml.name;
        const std::string path = cacheDir + "/" + ml.file;
        auto f = io::openForDirectRead(path, opts.directIo);
        if (!f.isOk()) {
            return f.status().withContext("layer " + std::to_string(i) + " (" + ml.name +
                                          ") is missing from the cache; run `sli quantize` again");
        }
        src.file = std::move(f).value();
        anyDirect = anyDirect || src.file.isDirect();
        SLI_ASSIGN_OR_RETURN(src.index, io::readLayerIndex(src.file.fd(), path));
        uint64_t off = 0;
        for (const auto& t : src.index.tensors) {
            // Integer / bool tensors (position ids, masks) are handed out as stored.
            const bool raw = t.info.mode == QuantizationMode::kNone && !dtypeIsFloat(t.info.storedDType);
            const DType dt = raw ? t.info.storedDType : outDType;
            const int64_t n = t.info.numel();
            const uint64_t bytes = static_cast<uint64_t>(n) * dtypeSize(dt);
            // Pass-through: stored uncompressed exactly as handed out.
            const io::Extent& payload = t.part(QuantPart::kPayload);
            bool passThrough = t.info.mode == QuantizationMode::kNone && t.info.storedDType == dt &&
                               payload.compression == io::Compression::kNone &&
                               payload.storedBytes == bytes && payload.rawBytes == bytes &&
                               payload.offset >= src.index.dataStart && bytes > 0;
            for (int p = 1; p < kQuantPartCount; ++p) passThrough = passThrough && t.parts[p].empty();
            src.inPlace.push_back(passThrough ? static_cast<int64_t>(payload.offset - src.index.dataStart) : -1);
            src.outOffsets.push_back(off);
            src.outDTypes.push_back(dt);
            if (!passThrough) off = alignUp(off + bytes, kArenaAlign);
        }
        src.outBytes = off;
        maxDataBytes = std::max(maxDataBytes, src.index.dataBytes());
        maxOutBytes = std::max(maxOutBytes, src.outBytes);
        maxScratch = std::max(maxScratch, src.index.maxScratchBytes());
        layerNames.push_back(ml.name);
        layers.push_back(std::move(src));
    }
    if (opts.order == LayerOrder::kExplicit) {
        if (opts.plan.empty()) return Status::invalidArgument("explicit layer order needs a plan");
        for (int64_t l : opts.plan) {
            if (l < 0 || l >= static_cast<int64_t>(layers.size())) {
                return Status::invalidArgument("plan names layer " + std::to_string(l) +
                                               "; the cache has " + std::to_string(layers.size()));
            }
        }
    }
    return Status();
}

Status Engine::Impl::allocate() {
    const int workersWanted =
        opts.workerThreads > 0 ? opts.workerThreads
                               : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    const uint64_t slotRead = alignUp(std::max<uint64_t>(maxDataBytes, 4096), 4096);
    const uint64_t perSlot = slotRead + maxOutBytes;
    const uint64_t scratchTotal = alignUp(maxScratch, 4096) * static_cast<uint64_t>(workersWanted);
    if (opts.hostBudgetBytes < perSlot + scratchTotal) {
        return Status::invalidArgument(
            "host budget of " + std::to_string(opts.hostBudgetBytes) + " bytes cannot hold one layer: " +
            "the largest needs " + std::to_string(slotRead) + " bytes of read buffer and " +
            std::to_string(maxOutBytes) + " bytes of " + dtypeName(outDType) + " output (" +
            std::to_string(perSlot + scratchTotal) + " bytes in all)");
    }
    depth = std::max(0, opts.prefetchDepth);
    const uint64_t fit = (opts.hostBudgetBytes - scratchTotal) / perSlot;
    uint64_t nslots = std::min<uint64_t>(fit, static_cast<uint64_t>(depth) + 1);
    if (planFinite()) nslots = std::min<uint64_t>(nslots, std::max<uint64_t>(1, planLength()));
    if (nslots < static_cast<uint64_t>(depth) + 1 && nslots < planLength()) {
        SLI_WARN(kLog, "host budget holds %llu layer slots: prefetch depth lowered from %d to %llu",
                 static_cast<unsigned long long>(nslots), depth,
                 static_cast<unsigned long long>(nslots - 1));
        depth = static_cast<int>(nslots) - 1;
    }
    io::PinnedPoolOptions po;
    po.budgetBytes = slotRead * nslots;
    po.slotBytes = slotRead;
    po.maxSlabBytes = std::max<uint64_t>(1ull << 30, slotRead);
    SLI_ASSIGN_OR_RETURN(pool, io::PinnedPool::create(po));
    for (uint64_t s = 0; s < nslots; ++s) {
        auto slot = std::make_unique<SlotData>();
        SLI_ASSIGN_OR_RETURN(slot->buffer, pool->acquire());
        SLI_ASSIGN_OR_RETURN(slot->arena, AlignedBuffer::allocate(std::max<uint64_t>(maxOutBytes, 64), false));
        slots.push_back(std::move(slot));
    }
    stats.slots = static_cast<int>(nslots);
    stats.pinnedBytes = pool->stats().totalBytes;
    stats.hostOutputBytes = maxOutBytes * nslots;

    io::ReadSchedulerOptions so;
    auto backend = io::parseIoBackend(opts.ioBackend);
    if (!backend.isOk()) return backend.status();
    so.backend = *backend;
    if (so.backend == io::IoBackend::kAuto) {
        SLI_ASSIGN_OR_RETURN(so.backend, io::ioBackendFromEnv(io::IoBackend::kAuto));
    }
    so.chunkBytes = std::max<uint32_t>(4096, opts.chunkBytes / 4096 * 4096);
    so.queueDepth = std::max<uint32_t>(1, opts.queueDepth);
    testing::ReadSchedulerFactory factory;
    {
        std::lock_guard<std::mutex> lock(gFactoryMu);
        factory = gFactory;
    }
    SLI_ASSIGN_OR_RETURN(scheduler, factory ? factory(so) : io::makeReadScheduler(so));
    backendName = scheduler->backendName();
    for (auto& l : layers) {
        Status s = scheduler->registerFile(l.file.fd(), l.file.path());
        if (!s.isOk()) SLI_DEBUG(kLog, "file registration: %s", s.toString().c_str());
    }
    Status rb = scheduler->registerBuffers(pool->regions());
    if (!rb.isOk()) SLI_DEBUG(kLog, "fixed buffers not registered: %s", rb.toString().c_str());
    stats.ioBackend = backendName;
    stats.directIo = anyDirect;

    for (int w = 0; w < workersWanted; ++w) workers.emplace_back([this, w] { workerLoop(w); });
    ioThread = std::thread([this] { ioLoop(); });
    return Status();
}

Result<Layer*> Engine::Impl::layerView(int s, int64_t layer) {
    SlotData& slot = *slots[static_cast<size_t>(s)];
    auto it = slot.views.find(layer);
    if (it != slot.views.end()) return &it->second;
    const LayerSource& src = layers[static_cast<size_t>(layer)];
    Layer view(src.name);
    for (size_t t = 0; t < src.index.tensors.size(); ++t) {
        const auto& info = src.index.tensors[t].info;
        uint8_t* data = src.inPlace[t] >= 0
                            ? reinterpret_cast<uint8_t*>(slot.buffer.data()) + src.inPlace[t]
                            : slot.arena.data() + src.outOffsets[t];
        SLI_ASSIGN_OR_RETURN(Tensor tensor,
                             Tensor::borrowed(info.name, info.shape, src.outDTypes[t], data));
        SLI_RETURN_IF_ERROR(view.add(std::move(tensor)));
    }
    return &slot.views.emplace(layer, std::move(view)).first->second;
}

void Engine::Impl::freeSlotLocked(int s) {
    SlotData& slot = *slots[static_cast<size_t>(s)];
    slot.state = SlotState::kFree;
    slot.layer = -1;
    slot.discard = false;
    slot.error = Status();
    ioCv.notify_one();
}

void Engine::Impl::ioLoop() {
    std::vector<io::ReadRequest> batch;
    std::vector<io::ReadCompletion> done(64);
    while (true) {
        batch.clear();
        {
            std::unique_lock<std::mutex> lock(mu);
            if (stop) break;
            // Assign free slots to the next plan positions inside the prefetch window.
            for (size_t s = 0; s < slots.size(); ++s) {
                SlotData& slot = *slots[s];
                if (slot.state != SlotState::kFree) continue;
                if (planFinite() && nextReadPos >= planLength()) break;
                // Window: the D positions after the executor's current layer; with D = 0 only
                // the position an acquire() is waiting for.
                if (nextReadPos < nextAcquirePos) nextReadPos = nextAcquirePos;
                const uint64_t window = depth > 0 ? static_cast<uint64_t>(depth) : (acquireWaiting ? 1u : 0u);
                if (nextReadPos >= nextAcquirePos + window) break;
                const uint64_t pos = nextReadPos++;
                const int64_t layer = planAt(pos);
                const LayerSource& src = layers[static_cast<size_t>(layer)];
                slot.state = SlotState::kReading;
                slot.layer = layer;
                slot.pos = pos;
                slot.discard = false;
                slot.error = Status();
                slot.timing = LayerTiming{};
                slot.timing.layer = layer;
                slot.timing.sequence = pos;
                slot.timing.queuedNs = nowNs(origin);
                slot.timing.bytesRead = src.index.dataBytes();
                slot.readsLeft = 0;
                uint64_t off = 0;
                const uint64_t total = src.index.dataBytes();
                do {
                    const uint64_t len = std::min<uint64_t>(total - off, kMaxRequestBytes);
                    io::ReadRequest r;
                    r.fd = src.file.fd();
                    r.offset = src.index.dataStart + off;
                    r.length = static_cast<uint32_t>(len);
                    r.dst = slot.buffer.data() + off;
                    r.tag = s;
                    batch.push_back(r);
                    ++slot.readsLeft;
                    off += len;
                } while (off < total);
                slot.timing.readStartNs = nowNs(origin);
            }
            if (batch.empty() && scheduler->pending() == 0) {
                ioCv.wait(lock);
                continue;
            }
        }
        if (!batch.empty()) {
            Status st = scheduler->submit(batch);
            if (!st.isOk()) {
                std::lock_guard<std::mutex> lock(mu);
                for (const auto& r : batch) {
                    SlotData& slot = *slots[r.tag];
                    if (slot.error.isOk()) slot.error = st;
                    if (--slot.readsLeft == 0) {
                        slot.state = SlotState::kReady;  // carries the error
                        readyCv.notify_all();
                    }
                }
                continue;
            }
        }
        const size_t n = scheduler->reap(done, std::chrono::microseconds(500));
        if (n == 0) continue;
        std::lock_guard<std::mutex> lock(mu);
        for (size_t k = 0; k < n; ++k) {
            const int s = static_cast<int>(done[k].tag);
            SlotData& slot = *slots[static_cast<size_t>(s)];
            if (!done[k].ok() && slot.error.isOk()) {
                slot.error = done[k].status.withContext(
                    "layer " + std::to_string(slot.layer) + " (" +
                    layers[static_cast<size_t>(slot.layer)].name + ")");
            }
            if (--slot.readsLeft > 0) continue;
            slot.timing.readDoneNs = nowNs(origin);
            stats.layersRead++;
            stats.bytesRead += slot.timing.bytesRead;
            stats.readSeconds += (slot.timing.readDoneNs - slot.timing.readStartNs) / 1e9;
            if (slot.discard) {
                freeSlotLocked(s);
                continue;
            }
            const auto& src = layers[static_cast<size_t>(slot.layer)];
            if (!slot.error.isOk() || src.index.tensors.empty()) {
                slot.state = SlotState::kReady;
                readyCv.notify_all();
                continue;
            }
            slot.state = SlotState::kDecoding;
            slot.tasksLeft.store(static_cast<int>(src.index.tensors.size()));
            for (size_t t = 0; t < src.index.tensors.size(); ++t) tasks.push_back({s, t});
            taskCv.notify_all();
        }
    }
    scheduler->cancelAll();
    std::vector<io::ReadCompletion> drain(64);
    while (scheduler->pending() > 0 && scheduler->reap(drain, std::chrono::milliseconds(10)) > 0) {
    }
}

void Engine::Impl::finishTaskLocked(int s) {
    SlotData& slot = *slots[static_cast<size_t>(s)];
    if (slot.tasksLeft.fetch_sub(1) != 1) return;
    slot.timing.dequantizedNs = nowNs(origin);
    stats.layersDequantized++;
    stats.dequantSeconds += (slot.timing.dequantizedNs - slot.timing.dequantStartNs) / 1e9;
    if (slot.discard) {
        freeSlotLocked(s);
        return;
    }
    slot.state = SlotState::kReady;
    readyCv.notify_all();
}

void Engine::Impl::workerLoop(int /*id*/) {
    auto scratchOr = AlignedBuffer::allocate(std::max<uint64_t>(maxScratch, 64), false);
    AlignedBuffer scratch = scratchOr.isOk() ? std::move(scratchOr).value() : AlignedBuffer();
    while (true) {
        Task task;
        {
            std::unique_lock<std::mutex> lock(mu);
            taskCv.wait(lock, [this] { return stop || !tasks.empty(); });
            if (stop) return;
            task = tasks.front();
            tasks.pop_front();
            SlotData& slot = *slots[static_cast<size_t>(task.slot)];
            if (slot.timing.dequantStartNs == 0) slot.timing.dequantStartNs = nowNs(origin);
            if (slot.discard || !slot.error.isOk()) {  // nothing to hand out: skip the work
                finishTaskLocked(task.slot);
                continue;
            }
        }
        SlotData& slot = *slots[static_cast<size_t>(task.slot)];
        const LayerSource& src = layers[static_cast<size_t>(slot.layer)];
        const auto& entry = src.index.tensors[task.tensor];
        Status st;
        const int64_t t0 = nowNs(origin);
        int64_t t1 = t0;
        if (scratch.size() < entry.scratchBytes()) {
            st = Status::resourceExhausted("decode scratch too small for tensor " + entry.info.name);
        } else {
            std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(slot.buffer.data()),
                                           src.index.dataBytes());
            auto view = io::decodeTensor(src.index, task.tensor, bytes, src.index.dataStart,
                                         opts.verifyChecksums, scratch.bytes());
            t1 = nowNs(origin);
            if (!view.isOk()) {
                st = view.status();
            } else if (src.inPlace[task.tensor] < 0) {
                const DType dt = src.outDTypes[task.tensor];
                const uint64_t outBytes = static_cast<uint64_t>(entry.info.numel()) * dtypeSize(dt);
                std::span<uint8_t> out(slot.arena.data() + src.outOffsets[task.tensor], outBytes);
                if (dt == outDType) {
                    st = kernels::dequantize(*view, outDType, out, 1);
                } else {
                    const auto payload = view->part(QuantPart::kPayload);
                    if (payload.size() != outBytes) {
                        st = Status::corruption("tensor " + entry.info.name + ": payload size");
                    } else {
                        std::memcpy(out.data(), payload.data(), outBytes);
                    }
                }
            }
        }
        const int64_t t2 = nowNs(origin);
        std::lock_guard<std::mutex> lock(mu);
        stats.verifySeconds += (t1 - t0) / 1e9;
        slot.timing.verifiedNs = std::max(slot.timing.verifiedNs, t1);
        slot.timing.bytesProduced +=
            static_cast<uint64_t>(entry.info.numel()) * dtypeSize(src.outDTypes[task.tensor]);
        (void)t2;
        if (!st.isOk() && slot.error.isOk()) {
            slot.error = st.withContext("layer " + std::to_string(slot.layer) + " (" + src.name +
                                        ") tensor " + entry.info.name + " in " + src.index.path);
        }
        finishTaskLocked(task.slot);
    }
}

// ---- Engine ---------------------------------------------------------------------------------

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Engine::~Engine() {
    if (!impl_) return;
    {
        std::lock_guard<std::mutex> lock(impl_->mu);
        impl_->stop = true;
    }
    impl_->ioCv.notify_all();
    impl_->taskCv.notify_all();
    impl_->readyCv.notify_all();
    if (impl_->ioThread.joinable()) impl_->ioThread.join();
    for (auto& w : impl_->workers) w.join();
}

Result<std::unique_ptr<Engine>> Engine::open(const EngineOptions& options) {
    if (options.device != "cpu") {
        if (options.device.rfind("cuda", 0) == 0) {
            return Status::notSupported("device " + options.device +
                                        ": the GPU engine path is not wired into sli::Engine yet; "
                                        "use device \"cpu\"");
        }
        return Status::invalidArgument("unknown device \"" + options.device +
                                       "\"; use \"cpu\" or \"cuda:N\"");
    }
    if (options.computeDType != DType::kBool && !dtypeIsCompute(options.computeDType)) {
        return Status::invalidArgument(std::string("compute dtype must be f16, bf16 or f32, not ") +
                                       dtypeName(options.computeDType));
    }
    if (options.prefetchDepth < 0) return Status::invalidArgument("prefetch depth must be >= 0");
    auto impl = std::make_unique<Impl>();
    impl->opts = options;
    SLI_RETURN_IF_ERROR(impl->openLayers());
    SLI_RETURN_IF_ERROR(impl->allocate());
    SLI_INFO(kLog, "engine: %zu layers from %s, %zu slots, depth %d, %s%s, %zu workers",
             impl->layers.size(), impl->cacheDir.c_str(), impl->slots.size(), impl->depth,
             impl->backendName.c_str(), impl->anyDirect ? " O_DIRECT" : " buffered",
             impl->workers.size());
    return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

int64_t Engine::numLayers() const noexcept { return static_cast<int64_t>(impl_->layers.size()); }
const std::vector<std::string>& Engine::layerNames() const noexcept { return impl_->layerNames; }
DType Engine::computeDType() const noexcept { return impl_->outDType; }

Result<Lease> Engine::acquire(int64_t layer) {
    Impl& m = *impl_;
    if (layer < 0 || layer >= numLayers()) {
        return Status::invalidArgument("acquire(" + std::to_string(layer) + "): the cache has " +
                                       std::to_string(numLayers()) + " layers");
    }
    const int64_t calledNs = nowNs(m.origin);
    std::unique_lock<std::mutex> lock(m.mu);
    // The plan position this acquire consumes: the next occurrence of `layer`.
    uint64_t pos = m.nextAcquirePos;
    const uint64_t n = m.layers.size();
    if (m.opts.order == LayerOrder::kCyclic) {
        pos += (static_cast<uint64_t>(layer) + n - pos % n) % n;
    } else {
        while (pos < m.planLength() && m.planAt(pos) != layer) ++pos;
        if (pos >= m.planLength()) {
            return Status::invalidArgument(
                "acquire(" + std::to_string(layer) + "): layer does not occur in the rest of the " +
                (m.opts.order == LayerOrder::kSequential ? "sequential pass (use LayerOrder::kCyclic "
                                                           "to stream the model repeatedly)"
                                                         : "explicit plan"));
        }
    }
    // Drop the positions skipped over.
    for (size_t s = 0; s < m.slots.size(); ++s) {
        SlotData& slot = *m.slots[s];
        if (slot.state != SlotState::kFree && slot.state != SlotState::kLeased && slot.pos < pos) {
            if (slot.state == SlotState::kReady) {
                m.freeSlotLocked(static_cast<int>(s));
            } else {
                slot.discard = true;
            }
        }
    }
    m.nextAcquirePos = pos;
    if (m.nextReadPos < pos) m.nextReadPos = pos;
    m.acquireWaiting = true;
    m.ioCv.notify_one();
    int found = -1;
    while (true) {
        if (m.stop) return Status::internal("engine is shutting down");
        bool anyFreeOrPending = false;
        for (size_t s = 0; s < m.slots.size(); ++s) {
            SlotData& slot = *m.slots[s];
            if (slot.state != SlotState::kLeased) anyFreeOrPending = true;
            if (slot.state == SlotState::kReady && slot.pos == pos && !slot.discard) {
                found = static_cast<int>(s);
            }
        }
        if (found >= 0) break;
        if (!anyFreeOrPending) {
            m.acquireWaiting = false;
            return Status::resourceExhausted(
                "acquire(" + std::to_string(layer) + "): all " + std::to_string(m.slots.size()) +
                " layer slots are leased; release earlier layers first (or raise the host budget)");
        }
        m.readyCv.wait(lock);
    }
    m.acquireWaiting = false;
    m.nextAcquirePos = pos + 1;
    SlotData& slot = *m.slots[static_cast<size_t>(found)];
    if (!slot.error.isOk()) {
        Status err = slot.error;
        m.freeSlotLocked(found);
        return err;
    }
    auto view = m.layerView(found, layer);
    if (!view.isOk()) {
        m.freeSlotLocked(found);
        return view.status();
    }
    slot.state = SlotState::kLeased;
    slot.timing.acquireCalledNs = calledNs;
    slot.timing.acquiredNs = nowNs(m.origin);
    m.stats.layersAcquired++;
    m.stats.bytesProduced += slot.timing.bytesProduced;
    m.stats.acquireWaitSeconds += (slot.timing.acquiredNs - calledNs) / 1e9;
    m.ioCv.notify_one();
    Lease lease;
    lease.engine_ = this;
    lease.slot_ = found;
    lease.layer_ = layer;
    lease.layerPtr_ = *view;
    return lease;
}

void Engine::releaseSlot(int s) {
    Impl& m = *impl_;
    std::lock_guard<std::mutex> lock(m.mu);
    SlotData& slot = *m.slots[static_cast<size_t>(s)];
    slot.timing.releasedNs = nowNs(m.origin);
    if (m.opts.recordTrace) m.timings.push_back(slot.timing);
    m.freeSlotLocked(s);
}

EngineStats Engine::stats() const {
    std::lock_guard<std::mutex> lock(impl_->mu);
    return impl_->stats;
}

std::vector<LayerTiming> Engine::timings() const {
    std::lock_guard<std::mutex> lock(impl_->mu);
    return impl_->timings;
}

Status Engine::writeTrace(const std::string& path) const {
    return writeTraceFile(path, timings(), impl_->layerNames);
}

// ---- Lease ----------------------------------------------------------------------------------

Lease::~Lease() { release(); }

Lease::Lease(Lease&& o) noexcept
    : engine_(o.engine_), slot_(o.slot_), layer_(o.layer_), layerPtr_(o.layerPtr_) {
    o.engine_ = nullptr;
}

Lease& Lease::operator=(Lease&& o) noexcept {
    if (this != &o) {
        release();
        engine_ = o.engine_;
        slot_ = o.slot_;
        layer_ = o.layer_;
        layerPtr_ = o.layerPtr_;
        o.engine_ = nullptr;
    }
    return *this;
}

const Layer& Lease::tensors() const {
    static const Layer kEmpty;
    return layerPtr_ ? *layerPtr_ : kEmpty;
}

const Tensor* Lease::find(std::string_view name) const {
    return layerPtr_ ? layerPtr_->find(name) : nullptr;
}

void Lease::release() {
    if (engine_ == nullptr) return;
    engine_->releaseSlot(slot_);
    engine_ = nullptr;
    layerPtr_ = nullptr;
}

}  // namespace sli

// sli::Engine — CPU streaming path. See include/sli/engine.h for the contract.
//
// Threads:
//   io thread      owns the ReadScheduler (one ring per submitting thread). It assigns free
//                  slots to upcoming plan positions (at most `prefetchDepth` ahead of the
//                  executor) and submits O_DIRECT reads of each layer file's data region, one
//                  per read chunk, into the slot's pinned buffer. As chunks land it tracks the
//                  contiguous landed prefix and queues a task for each tensor whose bytes that
//                  prefix now covers, so tensors are verified while the rest of their layer is
//                  still being read (and the last layer's tail of work is one tensor, not one
//                  layer).
//   workers (W)    take tensor tasks in FIFO order: verify the tensor's extents (xxh3), decode
//                  (zstd statistics into per-worker scratch) and dequantize straight from the
//                  pinned buffer into the slot's pooled output arena. A slot is done when its
//                  reads and all its tensor tasks are (tasksLeft counts the tensors + 1 for
//                  the reads), never earlier: no buffer is reused under a read in flight.
//   executor       calls acquire(i); waits (condition variable) until the slot holding the
//                  next plan occurrence of i is ready, and gets a Lease; Lease release frees
//                  the slot and wakes the io thread.
//
// Memory is fixed at open(): slots x (pinned read buffer of the largest layer's data region +
// output arena of the largest layer's full-precision tensors) + per-worker scratch. On the CPU
// path, layers far larger than the median (embeddings, heads) may instead get up to 2 slots
// of their own size, the others slots of theirs ("slot classes"): such a layer only goes to
// such a slot, and plan positions are still assigned in order.
// Pass-through tensors (mode none, stored uncompressed in the output dtype) are verified and
// handed out straight from the pinned read buffer: no copy, no arena space.
//
// GPU path (device "cuda:N"): the pinned pool's slabs are registered with CUDA at open() and a
// GpuLayerPipeline (copy stream, dequant stream, events per device slot, device buffers from a
// pool bounded by deviceBudgetBytes) does the device half. Each pinned slot holds the layer's
// data region followed by a tail where workers decompress statistics (so every part of every
// view lies in one pinned block that is copied as one H2D transfer). Slot states:
//   kFree -> kReading (workers may already verify + decode landed tensors) -> kDecoding (all
//   landed; workers finish) -> kVerified -> kSubmitting ->
//   kCopying (submitted; freed when the pipeline's copied event fires, polled without blocking)
// Submission ("pump") is done by whichever thread makes progress possible (the worker that
// finishes a layer, or the io thread after a release), one at a time, strictly in plan order,
// so a later layer never takes the device slot an earlier one needs. Device slots ("uses")
// go kFree -> kSubmitted -> kLeased -> kFree (release records an event on the caller's
// stream). Stage times come from the pipeline's CUDA timing events, read only once the
// dequant is known to be done (non-blocking query), except in stats()/timings().
#include "sli/engine.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <system_error>
#include <thread>

#include "engine/core/cpu_features.h"
#include "io/aligned_io.h"
#include "io/cache_format.h"
#include "io/cache_manifest.h"
#include "io/pinned_pool.h"
#include "io/read_scheduler.h"
#include "engine/gpu/gpu_runtime.h"
#include "engine/gpu/layer_pipeline.h"
#include "sli/config.h"
#include "sli/cuda.h"
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

int64_t nowNs(std::chrono::steady_clock::time_point origin) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                                origin)
               .count();
}

uint64_t alignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

enum class SlotState : uint8_t {
    kFree,
    kReading,
    kDecoding,
    kReady,   // CPU: dequantized; both paths: carries a read / verify / submit error
    kLeased,  // CPU only
    kVerified, kSubmitting, kCopying,  // GPU only
};

constexpr uint64_t kDeviceAlign = 256;  // statistics tail and each tensor's decode scratch

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
    // GPU: per tensor, offset in the pinned slot where its compressed parts are decoded (after
    // the data region); regionBytes = data region + that tail (what one H2D copy moves).
    std::vector<uint64_t> statsOffsets;
    uint64_t regionBytes = 0;
    // Per tensor: end of its last stored byte in the data region; landOrder: tensor indices by
    // that end, the order in which a sequential read completes them.
    std::vector<uint64_t> tensorEnd;
    std::vector<uint32_t> landOrder;
};

// Later positions one slot may be linked to (memory per slot stays constant at any depth).
constexpr size_t kMaxLinks = 8;

struct SlotData {
    SlotState state = SlotState::kFree;
    int64_t layer = -1;
    uint64_t pos = 0;         // plan position
    bool discard = false;     // skipped by acquire(): free once the io/decode finishes
    // CPU: later plan positions of the same layer, ascending, that this slot will serve in
    // turn without a read once it is released (or skipped), because the layer was still held
    // when they came into the prefetch window (a cyclic plan over fewer layers than the
    // depth). Capacity kMaxLinks, reserved at open().
    std::vector<uint64_t> reuse;  // at most kMaxLinks (then the position is read)
    bool reused = false;  // holds its layer for a position it did not read (see reuse)
    // Leased, and its layer's file was reloaded since it was read: it serves no later position.
    bool stale = false;
    int readsLeft = 0;
    std::atomic<int> tasksLeft{0};  // tensor tasks not finished + 1 while reads are in flight
    // Read chunks of the data region that have landed (sized at open() for the largest layer),
    // how many of them form a contiguous prefix, and how many tensors (in landOrder) have been
    // queued because that prefix covers them.
    std::vector<uint8_t> chunkLanded;
    uint32_t chunks = 0, landedChunks = 0;
    size_t nextLand = 0;
    Status error;             // first error of this layer (guarded by Impl::mu)
    // CPU slot classes (Impl::classes): sized for the large layers, which only such slots hold.
    bool large = false;
    io::PinnedPool::Slot buffer;
    // Output tensors: this slot's stride of Impl::arenas (huge-page memory faulted in at open(),
    // so the first pass through a slot pays no page faults inside the dequant stage).
    uint8_t* arena = nullptr;
    std::map<int64_t, Layer> views;  // per layer: tensors borrowing the arena
    LayerTiming timing;
    // GPU: the decoded views (parts in this pinned slot), and the device slot it was
    // submitted to (kCopying).
    std::vector<QuantizedTensorView> gpuViews;
    int gpuSlot = -1;
};

enum class GpuState : uint8_t { kFree, kSubmitted, kLeased };

// One device slot of the pipeline and the layer it holds.
struct GpuUse {
    GpuState state = GpuState::kFree;
    int64_t layer = -1;
    uint64_t pos = 0;
    LayerTiming timing;
    bool timingPending = false;  // the CUDA event times of this use are not read yet
    int64_t timingIndex = -1;    // into Impl::timings once released
    std::map<int64_t, std::vector<DeviceTensor>> views;  // per layer, built once
};

struct Task {
    int slot;
    size_t tensor;
};

}  // namespace

// Shared by an engine and every lease it hands out: release() goes through it, so a lease
// released after its engine is gone finds engine == nullptr and does nothing (~Engine clears it
// under mu, and waits for a release in progress).
struct detail::LeaseAnchor {
    std::mutex mu;
    Engine* engine = nullptr;
};

struct Engine::Impl {
    EngineOptions opts;
    std::chrono::steady_clock::time_point origin = std::chrono::steady_clock::now();
    std::string cacheDir;
    std::vector<LayerSource> layers;
    std::vector<io::ManifestLayer> manifestLayers;  // as read at open(): what reload() reopens
    std::vector<std::string> layerNames;
    DType outDType = DType::kF16;
    uint64_t maxDataBytes = 0, maxOutBytes = 0, maxScratch = 0;
    uint32_t readChunk = 0;  // bytes per read request (the scheduler's chunk size)
    int depth = 2;
    std::unique_ptr<io::PinnedPool> pool;
    // CPU slot classes: when a few layers (embeddings, a head) need much more read buffer or
    // output arena than the rest, `largeSlots` slots (from largePool) are sized for those and
    // the depth + 1 others for the rest, instead of every slot for the largest (chosen in
    // allocate()). layerLarge: per layer, whether it is one of them.
    bool classes = false;
    std::vector<uint8_t> layerLarge;
    std::unique_ptr<io::PinnedPool> largePool;
    // Every slot's output arena in one allocation: per-slot buffers would each round up to
    // whole pages (and more), which the budget did not count (many slots of tiny layers).
    io::AlignedBuffer arenas;
    std::vector<std::unique_ptr<SlotData>> slots;
    std::shared_ptr<detail::LeaseAnchor> anchor = std::make_shared<detail::LeaseAnchor>();
    std::unique_ptr<io::ReadScheduler> scheduler;  // driven by the io thread only
    std::string backendName;
    bool anyDirect = false;

    // ---- GPU path (gpuDevice >= 0); declared after pool/slots so it is destroyed first ----
    int gpuDevice = -1;
    uint64_t maxRegionBytes = 0, maxDeviceOutBytes = 0;
    size_t maxTensors = 0;
    std::vector<gpu::HostRegistration> hostRegs;
    std::unique_ptr<gpu::GpuLayerPipeline> pipeline;
    int64_t epochNs = 0;  // engine clock when the pipeline's epoch event was recorded
    bool gpu() const { return gpuDevice >= 0; }

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
    // The layer and plan position of the last acquire() if it failed (-1: it did not, or a
    // later acquire moved on): what reload() may read again.
    int64_t failedLayer = -1;
    uint64_t failedPos = 0;
    // Layers reopened by reload(), swapped in by the io thread (it owns the scheduler's file
    // registrations) before it assigns the next read.
    std::vector<std::pair<int64_t, LayerSource>> pendingSwaps;
    EngineStats stats;
    // Ring of the last kMaxTimings released layers (reserved at open(): a cyclic run neither
    // allocates nor grows); timingsTotal counts every release, so entry k is at k % kMaxTimings
    // while timingsTotal - k <= kMaxTimings.
    std::vector<LayerTiming> timings;
    uint64_t timingsTotal = 0;
    std::vector<GpuUse> gpuUses;   // one per pipeline slot
    int spareGpuSlot = -1;         // reserved, left unused by a failed submit
    bool gpuSubmitting = false;    // one pump at a time

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
    // Opens layer i's file and derives its read / output layout (outDType must be set).
    Result<LayerSource> loadLayer(size_t i, const io::ManifestLayer& ml) const;
    // Names the layer's file to the scheduler (io_uring: a registered file; optional, so a
    // failure is only logged). The scheduler's owner only: open(), then the io thread.
    void registerLayerFile(const LayerSource& l) {
        Status s = scheduler->registerFile(l.file.fd(), l.file.path());
        if (!s.isOk()) SLI_DEBUG(kLog, "file registration: %s", s.toString().c_str());
    }
    Status allocate();
    // Whether slot s may hold `layer` (any slot, unless slot classes are on).
    bool slotFits(size_t s, int64_t layer) const {
        return !classes || slots[s]->large == (layerLarge[static_cast<size_t>(layer)] != 0);
    }
    Status openGpu();
    void pumpGpuLocked(std::unique_lock<std::mutex>& lock);
    void pollCopiesLocked(bool* anyCopying);
    void harvestLocked(int g, bool block);
    void harvestAllLocked(bool blockReleased);
    void ioLoop();
    void workerLoop(int id);
    // Plan positions to read before nextReadPos (see acquire()), in order.
    std::deque<uint64_t> rereadPos;
    void freeSlotLocked(int s);
    // Frees slot s, or, if it is linked to a later position still wanted (reuse), hands
    // its layer to that position as ready without reading it again.
    void retireSlotLocked(int s);
    // CPU: a slot already holding `layer`, error-free and complete (ready or leased), that
    // can serve plan position `pos` after its current one; -1 if none.
    int reusableSlotLocked(int64_t layer, uint64_t pos) const;
    // CPU, from acquire() while it waits for plan position `pos` (of `layer`): if no slot is
    // reading or holding that position and none is free or about to be, but some hold later
    // positions, gives the latest of those up (read again later) so that `pos` can be read.
    void makeRoomLocked(uint64_t pos, int64_t layer);
    // Marks slot s (reading or decoding) to be freed when that ends, its linked positions
    // queued to be read again.
    void discardSlotLocked(int s);
    // Queues plan position q to be read (again), once, in order.
    void queueRereadLocked(uint64_t q) {
        const auto it = std::lower_bound(rereadPos.begin(), rereadPos.end(), q);
        if (it == rereadPos.end() || *it != q) rereadPos.insert(it, q);
    }
    // Drops the later positions linked to slot d; those still wanted are read after all.
    void unlinkLocked(SlotData& d) {
        for (uint64_t q : d.reuse) {
            if (q >= nextAcquirePos) queueRereadLocked(q);
        }
        d.reuse.clear();
    }
    // Links the next unassigned plan positions inside the prefetch window to slots that
    // hold their layers, in order, up to the first one that needs a read. False when the
    // window (or a finite plan) is exhausted. Called by the io thread before it assigns a
    // read, and on acquire / release, so that a layer released quickly is still linked.
    bool linkAheadLocked();
    // Stage timestamps and counters of a layer handed to the executor (mu held).
    void noteAcquiredLocked(LayerTiming& timing, int64_t calledNs);
    void finishTaskLocked(int s);
    // Slot s (not discarded) is done: ready to hand out, or carrying its error, which is
    // then reported to options.onLayerError.
    void setReadyLocked(int s);
    // Queues the tasks of slot s's tensors covered by its landed prefix (all = every tensor).
    void queueLandedLocked(int s, bool all);
    Result<Layer*> layerView(int s, int64_t layer);
    // Appends to the timing ring; returns the entry's index for timingAtLocked().
    int64_t recordTimingLocked(const LayerTiming& t);
    LayerTiming* timingAtLocked(int64_t index);
    std::vector<LayerTiming> timingsLocked() const;
};

std::string testing::engineStateForTesting(const Engine& engine) {
    const Engine::Impl& m = *engine.impl_;
    std::unique_lock<std::mutex> lock(m.mu, std::defer_lock);
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    while (!lock.try_lock()) {
        if (std::chrono::steady_clock::now() > until) return "(engine lock held for over 1 s)";
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    static constexpr const char* kStates[] = {"free",  "reading", "decoding",   "ready",
                                              "leased", "verified", "submitting", "copying"};
    // (appends only: GCC 12 warns falsely about `"literal" + std::string` chains, -Wrestrict)
    std::string out;
    const auto put = [&out](const char* key, auto v) {
        out += key;
        out += std::to_string(v);
    };
    put("nextAcquirePos=", m.nextAcquirePos);
    put(" nextReadPos=", m.nextReadPos);
    put(" acquireWaiting=", m.acquireWaiting ? 1 : 0);
    put(" failedLayer=", m.failedLayer);
    out += " rereadPos=[";
    for (uint64_t p : m.rereadPos) put(" ", p);
    put(" ] tasks=", m.tasks.size());
    put(" pendingSwaps=", m.pendingSwaps.size());
    out += " slots:";
    for (size_t s = 0; s < m.slots.size(); ++s) {
        const SlotData& d = *m.slots[s];
        put(" [", s);
        out += ' ';
        out += kStates[static_cast<int>(d.state)];
        put(" l", d.layer);
        put("@", d.pos);
        if (d.discard) out += " discard";
        if (d.large) out += " large";
        if (!d.error.isOk()) out += " error";
        if (d.state == SlotState::kReading) {
            put(" reads=", d.readsLeft);
            put(" tasks=", d.tasksLeft.load());
        }
        if (!d.reuse.empty()) {
            out += " links";
            for (uint64_t q : d.reuse) put(" ", q);
        }
        out += ']';
    }
    return out;
}

int64_t Engine::Impl::recordTimingLocked(const LayerTiming& t) {
    if (timings.size() < Engine::kMaxTimings) {
        timings.push_back(t);
    } else {
        timings[timingsTotal % Engine::kMaxTimings] = t;
    }
    return static_cast<int64_t>(timingsTotal++);
}

LayerTiming* Engine::Impl::timingAtLocked(int64_t index) {
    if (index < 0 || static_cast<uint64_t>(index) >= timingsTotal ||
        timingsTotal - static_cast<uint64_t>(index) > Engine::kMaxTimings) {
        return nullptr;  // overwritten since
    }
    return &timings[static_cast<uint64_t>(index) % Engine::kMaxTimings];
}

std::vector<LayerTiming> Engine::Impl::timingsLocked() const {
    if (timingsTotal <= Engine::kMaxTimings) return timings;
    std::vector<LayerTiming> out;
    out.reserve(timings.size());
    const size_t oldest = timingsTotal % Engine::kMaxTimings;
    out.insert(out.end(), timings.begin() + static_cast<std::ptrdiff_t>(oldest), timings.end());
    out.insert(out.end(), timings.begin(), timings.begin() + static_cast<std::ptrdiff_t>(oldest));
    return out;
}

Result<LayerSource> Engine::Impl::loadLayer(size_t i, const io::ManifestLayer& ml) const {
    LayerSource src;
    src.name = ml.name;
    const std::string path = cacheDir + "/" + ml.file;
    auto f = io::openForDirectRead(path, opts.directIo);
    if (!f.isOk()) {
        const std::string what = "layer " + std::to_string(i) + " (" + ml.name + ")";
        if (!f.status().isNotFound()) return f.status().withContext(what);  // e.g. EACCES
        return f.status().withContext(what + " is missing from the cache; run `sli quantize` again");
    }
    src.file = std::move(f).value();
    SLI_ASSIGN_OR_RETURN(src.index, io::readLayerIndex(src.file.fd(), path));
    // A valid file of another layer (copied or renamed over this one) would otherwise be
    // handed out as layer i.
    if (src.index.layerIndex != ml.index) {
        return Status::corruption("cache file " + path + " holds layer " +
                                  std::to_string(src.index.layerIndex) + " (" +
                                  src.index.layerName + "); the manifest lists it as layer " +
                                  std::to_string(i) + " (" + ml.name +
                                  "); run `sli quantize` again");
    }
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
    uint64_t tail = alignUp(src.index.dataBytes(), kDeviceAlign);
    for (const auto& t : src.index.tensors) {
        src.statsOffsets.push_back(tail);
        tail += alignUp(t.scratchBytes(), kDeviceAlign);
    }
    src.regionBytes = tail;
    // Extents past the data region are the index's error to report (decodeTensor names
    // it); such a tensor is queued once the whole region has landed.
    for (const auto& t : src.index.tensors) {
        uint64_t end = 0;
        for (const auto& e : t.parts) {
            if (!e.empty()) end = std::max(end, e.offset + e.storedBytes - std::min(e.offset, src.index.dataStart));
        }
        src.tensorEnd.push_back(std::min(end, src.index.dataBytes()));
    }
    src.landOrder.resize(src.index.tensors.size());
    for (size_t t = 0; t < src.landOrder.size(); ++t) src.landOrder[t] = static_cast<uint32_t>(t);
    std::stable_sort(src.landOrder.begin(), src.landOrder.end(), [&src](uint32_t a, uint32_t b) {
        return src.tensorEnd[a] < src.tensorEnd[b];
    });
    return src;
}

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

    manifestLayers = m.layers;
    SLI_ASSIGN_OR_RETURN(QuantizationConfig cfg, QuantizationConfig::fromJsonString(m.configJson));
    outDType = dtypeIsCompute(opts.computeDType) ? opts.computeDType : cfg.computeDType;

    for (size_t i = 0; i < m.layers.size(); ++i) {
        const io::ManifestLayer& ml = m.layers[i];
        if (ml.index != static_cast<int64_t>(i)) {
            return Status::corruption("cache " + cacheDir + ": manifest layer " +
                                      std::to_string(i) + " has index " + std::to_string(ml.index));
        }
        SLI_ASSIGN_OR_RETURN(LayerSource src, loadLayer(i, ml));
        anyDirect = anyDirect || src.file.isDirect();
        maxRegionBytes = std::max(maxRegionBytes, src.regionBytes);
        maxTensors = std::max(maxTensors, src.index.tensors.size());
        if (gpu()) {
            std::vector<const QuantizedTensorInfo*> infos;
            for (const auto& t : src.index.tensors) infos.push_back(&t.info);
            maxDeviceOutBytes = std::max<uint64_t>(
                maxDeviceOutBytes, gpu::GpuLayerPipeline::outputBytesFor(infos, src.outDTypes));
        }
        maxDataBytes = std::max(maxDataBytes, src.index.dataBytes());
        maxOutBytes = std::max(maxOutBytes, src.outBytes);
        maxScratch = std::max(maxScratch, src.index.maxScratchBytes());
        layerNames.push_back(ml.name);
        layers.push_back(std::move(src));
    }
    if (opts.order == LayerOrder::kExplicit) {  // non-empty: checkOptions()
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
    const int workersWanted = opts.workerThreads > 0 ? opts.workerThreads : cpu::usableCores();
    // GPU: the slot also holds the decoded statistics; outputs and scratch live elsewhere.
    const auto readCap = [](uint64_t b) { return alignUp(std::max<uint64_t>(b, 4096), 4096); };
    // Output arena stride: page-aligned for real layers, packed at kArenaAlign for tiny ones.
    const auto outCap = [](uint64_t b) {
        return b == 0 ? 0 : b < 4096 ? alignUp(b, kArenaAlign) : alignUp(b, 4096);
    };
    const uint64_t slotRead = readCap(gpu() ? maxRegionBytes : maxDataBytes);
    const uint64_t hostOut = gpu() ? 0 : outCap(maxOutBytes);
    const uint64_t perSlot = slotRead + hostOut;
    const uint64_t scratchTotal =
        gpu() ? 0 : alignUp(maxScratch, 4096) * static_cast<uint64_t>(workersWanted);
    depth = std::max(0, opts.prefetchDepth);
    uint64_t want = static_cast<uint64_t>(depth) + 1;
    if (planFinite()) want = std::min<uint64_t>(want, std::max<uint64_t>(1, planLength()));
    const uint64_t avail =
        opts.hostBudgetBytes > scratchTotal ? opts.hostBudgetBytes - scratchTotal : 0;
    const uint64_t uniformSlots = std::min<uint64_t>(avail / perSlot, want);

    // Slot classes (CPU): a layer is large when its read buffer or output arena exceeds 1.5 x
    // the median layer's plus 1 MiB. Used when they let the budget hold more slots for the
    // other layers, or the same number in less memory.
    uint64_t regRead = slotRead, regOut = hostOut, bigRead = 0, bigOut = 0, nLarge = 0;
    uint64_t nslots = uniformSlots;
    if (!gpu() && layers.size() >= 3 && want >= 2) {
        std::vector<uint64_t> r, o;
        for (const auto& l : layers) {
            r.push_back(readCap(l.index.dataBytes()));
            o.push_back(outCap(l.outBytes));
        }
        auto median = [](std::vector<uint64_t> v) {
            std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
            return v[v.size() / 2];
        };
        const uint64_t rMed = median(r), oMed = median(o);
        std::vector<uint8_t> large(layers.size(), 0);
        uint64_t cr = 0, co = 0, br = 0, bo = 0, count = 0;
        for (size_t i = 0; i < layers.size(); ++i) {
            large[i] = r[i] > rMed + rMed / 2 + (1u << 20) || o[i] > oMed + oMed / 2 + (1u << 20);
            if (large[i]) {
                ++count;
                br = std::max(br, r[i]);
                bo = std::max(bo, o[i]);
            } else {
                cr = std::max(cr, r[i]);
                co = std::max(co, o[i]);
            }
        }
        if (count > 0) {
            for (uint64_t nl : {std::min<uint64_t>(2, count), uint64_t{1}}) {
                const uint64_t big = br + bo, reg = cr + co;
                if (avail < nl * big + reg) continue;
                const uint64_t nr = std::min<uint64_t>((avail - nl * big) / reg, want);
                if (nr > uniformSlots || (nr == uniformSlots && nl * big + nr * reg < nr * perSlot)) {
                    classes = true;
                    layerLarge = std::move(large);
                    regRead = cr;
                    regOut = co;
                    bigRead = br;
                    bigOut = bo;
                    nLarge = nl;
                    nslots = nr;
                }
                break;
            }
        }
    }
    if (nslots == 0) {
        return Status::invalidArgument(
            "host budget of " + std::to_string(opts.hostBudgetBytes) + " bytes cannot hold one layer: " +
            "the largest needs " + std::to_string(slotRead) + " bytes of read buffer" +
            (gpu() ? std::string(" (with decoded statistics)")
                   : " and " + std::to_string(maxOutBytes) + " bytes of " + dtypeName(outDType) +
                         " output") +
            " (" + std::to_string(perSlot + scratchTotal) + " bytes in all)");
    }
    if (nslots < static_cast<uint64_t>(depth) + 1 && nslots < planLength()) {
        SLI_INFO(kLog, "host budget holds %llu layer slots: prefetch depth lowered from %d to %llu",
                 static_cast<unsigned long long>(nslots), depth,
                 static_cast<unsigned long long>(nslots - 1));
        depth = static_cast<int>(nslots) - 1;
    }
    if (classes) {
        SLI_INFO(kLog, "%llu of %zu layers need larger slots: %llu slots of %llu + %llu bytes for "
                 "them, %llu of %llu + %llu bytes for the others",
                 static_cast<unsigned long long>(std::count(layerLarge.begin(), layerLarge.end(), 1)),
                 layers.size(), static_cast<unsigned long long>(nLarge),
                 static_cast<unsigned long long>(bigRead), static_cast<unsigned long long>(bigOut),
                 static_cast<unsigned long long>(nslots), static_cast<unsigned long long>(regRead),
                 static_cast<unsigned long long>(regOut));
    }
    io::PinnedPoolOptions po;
    po.budgetBytes = regRead * nslots;
    po.slotBytes = regRead;
    po.maxSlabBytes = std::max<uint64_t>(1ull << 30, regRead);
    SLI_ASSIGN_OR_RETURN(pool, io::PinnedPool::create(po));
    if (nLarge > 0) {
        io::PinnedPoolOptions lo;
        lo.budgetBytes = bigRead * nLarge;
        lo.slotBytes = bigRead;
        lo.maxSlabBytes = std::max<uint64_t>(1ull << 30, bigRead);
        SLI_ASSIGN_OR_RETURN(largePool, io::PinnedPool::create(lo));
    }
    // Arenas: the large slots' first (their strides are the larger ones).
    const uint64_t arenaBytes = bigOut * nLarge + regOut * nslots;
    if (!gpu()) {
        SLI_ASSIGN_OR_RETURN(arenas, io::AlignedBuffer::allocate(std::max<uint64_t>(arenaBytes, 64)));
        SLI_RETURN_IF_ERROR(io::populateForWrite(arenas.data(), arenas.size()));
    }
    uint64_t arenaOff = 0;
    for (uint64_t s = 0; s < nLarge + nslots; ++s) {
        auto slot = std::make_unique<SlotData>();
        slot->reuse.reserve(kMaxLinks);  // no allocation when linking
        slot->large = s < nLarge;
        SLI_ASSIGN_OR_RETURN(slot->buffer, slot->large ? largePool->acquire() : pool->acquire());
        if (gpu()) {
            slot->gpuViews.resize(maxTensors);
        } else {
            slot->arena = reinterpret_cast<uint8_t*>(arenas.data()) + arenaOff;
            arenaOff += slot->large ? bigOut : regOut;
        }
        slots.push_back(std::move(slot));
    }
    if (opts.recordTrace) timings.reserve(Engine::kMaxTimings);
    stats.slots = static_cast<int>(nLarge + nslots);
    stats.largeSlots = static_cast<int>(nLarge);
    stats.workers = workersWanted;
    stats.pinnedBytes = pool->stats().totalBytes + (largePool ? largePool->stats().totalBytes : 0);
    stats.hostOutputBytes = gpu() ? 0 : arenaBytes;
    if (gpu()) SLI_RETURN_IF_ERROR(openGpu());

    io::ReadSchedulerOptions so;
    auto backend = io::parseIoBackend(opts.ioBackend);
    if (!backend.isOk()) return backend.status();
    so.backend = *backend;
    if (so.backend == io::IoBackend::kAuto) {
        SLI_ASSIGN_OR_RETURN(so.backend, io::ioBackendFromEnv(io::IoBackend::kAuto));
    }
    so.chunkBytes = std::max<uint32_t>(4096, opts.chunkBytes / 4096 * 4096);
    // Reads in flight are bounded by the prefetch window (depth layers): lower the chunk size
    // so that window still fills the queue depth, or a cold stream leaves the disk idle.
    {
        const uint64_t window = (classes ? regRead : maxDataBytes) * static_cast<uint64_t>(std::max(1, depth));
        const uint64_t fill = window / std::max<uint32_t>(1, opts.queueDepth) / 4096 * 4096;
        const uint64_t floor = 256u << 10;
        if (fill < so.chunkBytes) {
            so.chunkBytes = static_cast<uint32_t>(std::max<uint64_t>(std::min<uint64_t>(fill, so.chunkBytes),
                                                                     std::min<uint64_t>(floor, so.chunkBytes)));
            SLI_DEBUG(kLog, "read chunk lowered to %u bytes so %d layers fill %u reads in flight",
                      so.chunkBytes, std::max(1, depth), opts.queueDepth);
        }
    }
    so.queueDepth = std::max<uint32_t>(1, opts.queueDepth);
    testing::ReadSchedulerFactory factory;
    {
        std::lock_guard<std::mutex> lock(gFactoryMu);
        factory = gFactory;
    }
    SLI_ASSIGN_OR_RETURN(scheduler, factory ? factory(so) : io::makeReadScheduler(so));
    backendName = scheduler->backendName();
    readChunk = so.chunkBytes;
    const uint64_t maxChunks = std::max<uint64_t>(1, (maxDataBytes + readChunk - 1) / readChunk);
    for (auto& slot : slots) slot->chunkLanded.assign(maxChunks, 0);
    for (const auto& l : layers) registerLayerFile(l);
    std::vector<io::MemoryRegion> regions(pool->regions().begin(), pool->regions().end());
    if (largePool) regions.insert(regions.end(), largePool->regions().begin(), largePool->regions().end());
    Status rb = scheduler->registerBuffers(regions);
    if (!rb.isOk()) SLI_DEBUG(kLog, "fixed buffers not registered: %s", rb.toString().c_str());
    stats.ioBackend = backendName;
    stats.directIo = anyDirect;

    try {
        for (int w = 0; w < workersWanted; ++w) workers.emplace_back([this, w] { workerLoop(w); });
        ioThread = std::thread([this] { ioLoop(); });
    } catch (const std::system_error& e) {
        // Out of threads (e.g. a pids limit): stop those started, or ~Impl would terminate.
        {
            std::lock_guard<std::mutex> lock(mu);
            stop = true;
        }
        taskCv.notify_all();
        ioCv.notify_all();
        for (auto& w : workers) w.join();
        workers.clear();
        if (ioThread.joinable()) ioThread.join();
        return Status::resourceExhausted("starting " + std::to_string(workersWanted) +
                                         " engine worker threads: " + e.what());
    }
    return Status();
}

Status Engine::Impl::openGpu() {
    const uint64_t perSlot = gpu::DeviceBufferPool::sizeClass(maxRegionBytes) +
                             gpu::DeviceBufferPool::sizeClass(std::max<uint64_t>(maxDeviceOutBytes, 256));
    uint64_t nslots = static_cast<uint64_t>(depth) + 1;
    if (planFinite()) nslots = std::min<uint64_t>(nslots, std::max<uint64_t>(1, planLength()));
    if (opts.deviceBudgetBytes > 0) {
        const uint64_t fit = opts.deviceBudgetBytes / perSlot;
        if (fit == 0) {
            return Status::invalidArgument(
                "device budget of " + std::to_string(opts.deviceBudgetBytes) +
                " bytes cannot hold one layer on " + opts.device + ": the largest needs " +
                std::to_string(perSlot) + " bytes of device staging and " + dtypeName(outDType) +
                " output buffers");
        }
        if (fit < nslots) {
            SLI_WARN(kLog, "device budget holds %llu layers: prefetch depth lowered from %d to %llu",
                     static_cast<unsigned long long>(fit), depth,
                     static_cast<unsigned long long>(fit - 1));
            nslots = fit;
            depth = std::min(depth, static_cast<int>(fit) - 1);
        }
    }
    // Pin once: every slab of the pool, for true asynchronous DMA from the read slots.
    for (const io::MemoryRegion& r : pool->regions()) {
        auto reg = gpu::HostRegistration::registerRange(r.data, r.size, gpuDevice);
        if (!reg.isOk()) {
            return reg.status().withContext("registering the engine's pinned read slots (" +
                                            std::to_string(r.size) + " bytes) with CUDA");
        }
        hostRegs.push_back(std::move(reg).value());
    }
    gpu::GpuPipelineOptions po;
    po.device = gpuDevice;
    po.slots = static_cast<int>(nslots);
    po.stagingBytes = maxRegionBytes;
    po.outputBytes = std::max<uint64_t>(maxDeviceOutBytes, 256);
    po.deviceBudgetBytes = opts.deviceBudgetBytes;
    po.timing = opts.recordTrace;
    auto p = gpu::GpuLayerPipeline::create(po);
    if (!p.isOk()) return p.status().withContext("engine on " + opts.device);
    pipeline = std::move(p).value();
    epochNs = nowNs(origin);
    gpuUses.resize(nslots);
    stats.device = opts.device;
    stats.deviceSlots = static_cast<int>(nslots);
    stats.deviceBytes = nslots * perSlot;
    return Status();
}

// Submits verified layers to the device, strictly in plan order, while device slots are free.
// Called with `lock` held; drops it around each submit (host-side launches only).
void Engine::Impl::pumpGpuLocked(std::unique_lock<std::mutex>& lock) {
    if (!gpu() || gpuSubmitting) return;
    gpuSubmitting = true;
    while (!stop) {
        int cand = -1;
        for (size_t s = 0; s < slots.size(); ++s) {
            const SlotData& sd = *slots[s];
            const bool inFlight = sd.state == SlotState::kReading ||
                                  sd.state == SlotState::kDecoding ||
                                  sd.state == SlotState::kVerified;
            if (inFlight && !sd.discard && (cand < 0 || sd.pos < slots[cand]->pos)) {
                cand = static_cast<int>(s);
            }
        }
        if (cand < 0 || slots[static_cast<size_t>(cand)]->state != SlotState::kVerified) break;
        int g = spareGpuSlot;
        if (g < 0) {
            auto r = pipeline->reserve();
            if (!r.isOk()) break;  // every device slot holds a layer: wait for a release
            g = *r;
        }
        spareGpuSlot = -1;
        harvestLocked(g, false);
        gpuUses[static_cast<size_t>(g)].timingPending = false;  // not done yet: not timed
        SlotData& slot = *slots[static_cast<size_t>(cand)];
        const LayerSource& src = layers[static_cast<size_t>(slot.layer)];
        slot.state = SlotState::kSubmitting;
        const size_t nt = src.index.tensors.size();
        lock.unlock();
        auto res = pipeline->submit(
            g, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(slot.buffer.data()), src.regionBytes),
            std::span<const QuantizedTensorView>(slot.gpuViews.data(), nt),
            std::span<const DType>(src.outDTypes.data(), nt));
        lock.lock();
        if (!res.isOk()) {
            spareGpuSlot = g;
            if (slot.error.isOk()) {
                slot.error = res.status().withContext("layer " + std::to_string(slot.layer) + " (" +
                                                      src.name + ") on " + opts.device);
            }
            if (slot.discard) {
                freeSlotLocked(cand);
            } else {
                setReadyLocked(cand);  // carries the error
            }
            continue;
        }
        GpuUse& u = gpuUses[static_cast<size_t>(g)];
        u.state = GpuState::kSubmitted;
        u.layer = slot.layer;
        u.pos = slot.pos;
        u.timing = slot.timing;
        u.timing.dequantStartNs = u.timing.dequantizedNs = 0;
        u.timingPending = opts.recordTrace;
        u.timingIndex = -1;
        stats.layersDequantized++;
        stats.h2dBytes += src.regionBytes;
        slot.state = SlotState::kCopying;
        slot.gpuSlot = g;
        if (slot.discard) {  // skipped by acquire() while being submitted
            (void)pipeline->release(g, pipeline->dequantStream());
            u.state = GpuState::kFree;
            u.timingPending = false;
        }
        readyCv.notify_all();
        ioCv.notify_one();  // the io thread frees the pinned slot once copied
    }
    gpuSubmitting = false;
}

// Frees pinned slots whose H2D copy is done (non-blocking queries).
void Engine::Impl::pollCopiesLocked(bool* anyCopying) {
    *anyCopying = false;
    for (size_t s = 0; s < slots.size(); ++s) {
        SlotData& slot = *slots[s];
        if (slot.state != SlotState::kCopying) continue;
        // A later submit to the same device slot re-records `copied` on the same copy stream,
        // so a completed query also covers this slot's (earlier) copy.
        auto done = pipeline->copied(slot.gpuSlot);
        if (!done.isOk()) SLI_ERROR(kLog, "copy query: %s", done.status().toString().c_str());
        if (!done.isOk() || *done) {
            slot.gpuSlot = -1;
            freeSlotLocked(static_cast<int>(s));
        } else {
            *anyCopying = true;
        }
    }
}

// Reads the CUDA event times of device slot g's current use once its dequant is done (or
// waits for it when `block`).
void Engine::Impl::harvestLocked(int g, bool block) {
    GpuUse& u = gpuUses[static_cast<size_t>(g)];
    if (!u.timingPending) return;
    if (!block) {
        auto r = pipeline->ready(g);
        if (!r.isOk() || !*r) return;
    }
    u.timingPending = false;
    auto t = pipeline->stageTimes(g);
    if (!t.isOk()) return;
    auto at = [this](float ms) { return epochNs + static_cast<int64_t>(static_cast<double>(ms) * 1e6); };
    u.timing.copyStartNs = at(t->copyStartMs);
    u.timing.copiedNs = at(t->copyEndMs);
    u.timing.dequantStartNs = at(t->dequantStartMs);
    u.timing.dequantizedNs = at(t->dequantEndMs);
    stats.h2dSeconds += t->copyMs / 1e3;
    stats.dequantSeconds += t->dequantMs / 1e3;
    if (LayerTiming* ltp = timingAtLocked(u.timingIndex)) {
        LayerTiming& lt = *ltp;
        lt.copyStartNs = u.timing.copyStartNs;
        lt.copiedNs = u.timing.copiedNs;
        lt.dequantStartNs = u.timing.dequantStartNs;
        lt.dequantizedNs = u.timing.dequantizedNs;
    }
}

void Engine::Impl::harvestAllLocked(bool blockReleased) {
    if (!gpu()) return;
    for (size_t g = 0; g < gpuUses.size(); ++g) {
        harvestLocked(static_cast<int>(g),
                      blockReleased && gpuUses[g].state == GpuState::kFree);
    }
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
                            : slot.arena + src.outOffsets[t];
        SLI_ASSIGN_OR_RETURN(Tensor tensor,
                             Tensor::borrowed(info.name, info.shape, src.outDTypes[t], data));
        SLI_RETURN_IF_ERROR(view.add(std::move(tensor)));
    }
    return &slot.views.emplace(layer, std::move(view)).first->second;
}

void Engine::Impl::noteAcquiredLocked(LayerTiming& timing, int64_t calledNs) {
    timing.acquireCalledNs = calledNs;
    timing.acquiredNs = nowNs(origin);
    stats.layersAcquired++;
    stats.bytesProduced += timing.bytesProduced;
    stats.acquireWaitSeconds += (timing.acquiredNs - calledNs) / 1e9;
    ioCv.notify_one();
}

void Engine::Impl::freeSlotLocked(int s) {
    SlotData& slot = *slots[static_cast<size_t>(s)];
    slot.state = SlotState::kFree;
    slot.layer = -1;
    slot.discard = false;
    unlinkLocked(slot);  // later positions linked to this slot and still wanted: read after all
    slot.reused = false;
    slot.stale = false;
    slot.error = Status();
    ioCv.notify_one();
}

void Engine::Impl::retireSlotLocked(int s) {
    SlotData& slot = *slots[static_cast<size_t>(s)];
    while (!slot.reuse.empty() && slot.reuse.front() < nextAcquirePos) {  // skipped over
        slot.reuse.erase(slot.reuse.begin());
    }
    if (slot.reuse.empty() || !slot.error.isOk()) {
        freeSlotLocked(s);
        return;
    }
    // The same layer again at reuse.front(): its tensors are already here (leases hand out const
    // tensors, so they are as dequantized). A timing record of its own, with no read.
    const int64_t now = nowNs(origin);
    slot.pos = slot.reuse.front();
    slot.reuse.erase(slot.reuse.begin());
    slot.discard = false;
    slot.state = SlotState::kReady;
    slot.reused = true;
    slot.timing = LayerTiming{};
    slot.timing.layer = slot.layer;
    slot.timing.sequence = slot.pos;
    slot.timing.queuedNs = slot.timing.readStartNs = slot.timing.readDoneNs = now;
    slot.timing.verifiedNs = slot.timing.dequantStartNs = slot.timing.dequantizedNs = now;
    readyCv.notify_all();
    ioCv.notify_one();
}

bool Engine::Impl::linkAheadLocked() {
    while (true) {
        if (planFinite() && nextReadPos >= planLength()) return false;
        // Window: the D positions after the executor's current layer; with D = 0 only the
        // position an acquire() is waiting for.
        if (nextReadPos < nextAcquirePos) nextReadPos = nextAcquirePos;
        const uint64_t window = depth > 0 ? static_cast<uint64_t>(depth) : (acquireWaiting ? 1u : 0u);
        if (nextReadPos >= nextAcquirePos + window) return false;
        const int r = reusableSlotLocked(planAt(nextReadPos), nextReadPos);
        if (r < 0) return true;
        // (a slot not yet handed out serves its own position first, then this one)
        slots[static_cast<size_t>(r)]->reuse.push_back(nextReadPos++);
    }
}

int Engine::Impl::reusableSlotLocked(int64_t layer, uint64_t pos) const {
    if (gpu()) return -1;  // the device slots, not these, hold a GPU layer once it is leased
    for (size_t s = 0; s < slots.size(); ++s) {
        const SlotData& slot = *slots[s];
        if (slot.layer != layer || slot.pos >= pos || slot.discard || slot.stale ||
            slot.reuse.size() >= kMaxLinks || !slot.error.isOk()) {
            continue;
        }
        // Being read or decoded, or ready, for a position still to come (a stale ready one
        // is dropped by the next acquire); or leased, unless an acquire() is waiting for `pos`
        // itself: that caller may be the holder (acquire() unlinks such a position when it
        // starts; this keeps the io thread from linking it again while the caller waits). A
        // slot that ends in an error, or is freed otherwise, has its linked position read
        // after all (freeSlotLocked).
        const bool pending = slot.state == SlotState::kReading ||
                             slot.state == SlotState::kDecoding || slot.state == SlotState::kReady;
        if ((pending && slot.pos >= nextAcquirePos) ||
            (slot.state == SlotState::kLeased && !(acquireWaiting && pos == nextAcquirePos))) {
            return static_cast<int>(s);
        }
    }
    return -1;
}

void Engine::Impl::makeRoomLocked(uint64_t pos, int64_t layer) {
    // Reads are assigned in plan order, so the position an acquire() waits for normally has a
    // slot before any later one. Two kinds of position are read out of order: one unlinked
    // from a slot the caller still holds (a second lease of a layer) and one put back by
    // reload(). By then the positions after it may have taken every slot the caller does not
    // hold, and those are freed only when acquired: without this the caller waits for ever.
    int victim = -1;
    for (size_t s = 0; s < slots.size(); ++s) {
        const SlotData& d = *slots[s];
        if (!slotFits(s, layer)) continue;
        if (d.state == SlotState::kFree || d.discard) return;  // free, or freed once its reads end
        if (d.state == SlotState::kLeased) continue;
        if (d.pos == pos) return;  // being read for it
        if (d.pos > pos && (victim < 0 || d.pos > slots[static_cast<size_t>(victim)]->pos)) {
            victim = static_cast<int>(s);
        }
    }
    if (victim < 0) return;
    SlotData& d = *slots[static_cast<size_t>(victim)];
    SLI_DEBUG(kLog, "plan position %llu (layer %lld) gives its slot to position %llu",
              static_cast<unsigned long long>(d.pos), static_cast<long long>(d.layer),
              static_cast<unsigned long long>(pos));
    queueRereadLocked(d.pos);
    if (d.state == SlotState::kReady) {
        freeSlotLocked(victim);  // (its linked positions are read again too)
    } else {
        discardSlotLocked(victim);  // reading or decoding: freed when that ends
    }
    ioCv.notify_one();
}

void Engine::Impl::discardSlotLocked(int s) {
    SlotData& d = *slots[static_cast<size_t>(s)];
    // A discarded slot serves nothing: its linked positions are read after all. (acquire()'s
    // skip logic would otherwise hand a discarded slot's link its position, and the slot,
    // freed as discarded, would take that position with it.)
    unlinkLocked(d);
    d.discard = true;
}

void Engine::Impl::ioLoop() {
    std::vector<io::ReadRequest> batch;
    std::vector<io::ReadCompletion> done(64);
    while (true) {
        batch.clear();
        {
            std::unique_lock<std::mutex> lock(mu);
            if (stop) break;
            bool anyCopying = false;
            if (gpu()) {
                pollCopiesLocked(&anyCopying);
                harvestAllLocked(false);
                pumpGpuLocked(lock);  // a release may have freed a device slot
                if (stop) break;
            }
            // Assign free slots to the next plan positions inside the prefetch window. A
            // position whose layer a slot still holds (ready or leased: a cyclic plan over
            // fewer layers than the depth) is linked to that slot instead of read again.
            // A position unlinked by acquire() (wanted while its slot is still leased) is
            // read first.
            // Positions are assigned in plan order: with slot classes, one whose class has no
            // free slot waits, and so do the positions after it.
            // reload(): once no slot reads or decodes layer l any more (those reading the old
            // file end their reads first; leased ones use nothing of it), the new file
            // replaces it.
            for (auto it = pendingSwaps.begin(); it != pendingSwaps.end();) {
                const int64_t l = it->first;
                if (std::any_of(slots.begin(), slots.end(), [l](const auto& sp) {
                        return sp->layer == l && (sp->state == SlotState::kReading ||
                                                  sp->state == SlotState::kDecoding);
                    })) {
                    ++it;
                    continue;
                }
                LayerSource& cur = layers[static_cast<size_t>(l)];
                scheduler->unregisterFile(cur.file.fd());
                cur = std::move(it->second);  // closes the old file
                registerLayerFile(cur);
                it = pendingSwaps.erase(it);
            }
            const auto swapPending = [this](int64_t l) {
                return std::any_of(pendingSwaps.begin(), pendingSwaps.end(),
                                   [l](const auto& ps) { return ps.first == l; });
            };
            while (!rereadPos.empty() && rereadPos.front() < nextAcquirePos) rereadPos.pop_front();
            while (true) {
                // (links are also made on every acquire and release, when the window moves or
                // a slot changes: here only while a slot can take a read)
                if (std::none_of(slots.begin(), slots.end(), [](const auto& sp) {
                        return sp->state == SlotState::kFree;
                    })) {
                    break;
                }
                const bool reread = !rereadPos.empty();
                if (!reread && !linkAheadLocked()) break;  // window full
                const uint64_t pos = reread ? rereadPos.front() : nextReadPos;
                if (!pendingSwaps.empty() && swapPending(planAt(pos))) break;  // after the swap
                size_t s = 0;  // a free slot of the position's class
                while (s < slots.size() &&
                       (slots[s]->state != SlotState::kFree || !slotFits(s, planAt(pos)))) {
                    ++s;
                }
                if (s == slots.size()) break;  // none: this position and the next ones wait
                if (reread) {
                    rereadPos.pop_front();
                } else {
                    ++nextReadPos;
                }
                SlotData& slot = *slots[s];
                const int64_t layer = planAt(pos);
                const LayerSource& src = layers[static_cast<size_t>(layer)];
                slot.state = SlotState::kReading;
                slot.layer = layer;
                slot.pos = pos;
                slot.discard = false;
                slot.reused = false;
                slot.error = Status();
                slot.timing = LayerTiming{};
                slot.timing.layer = layer;
                slot.timing.sequence = pos;
                slot.timing.queuedNs = nowNs(origin);
                slot.timing.bytesRead = src.index.dataBytes();
                // One request per read chunk (chunk k tagged k << 32 | slot), so completions
                // say which part of the layer has landed.
                const uint64_t total = src.index.dataBytes();
                slot.chunks = static_cast<uint32_t>(std::max<uint64_t>(1, (total + readChunk - 1) / readChunk));
                std::fill_n(slot.chunkLanded.begin(), slot.chunks, uint8_t{0});
                slot.landedChunks = 0;
                slot.nextLand = 0;
                slot.readsLeft = static_cast<int>(slot.chunks);
                slot.tasksLeft.store(static_cast<int>(src.index.tensors.size()) + 1);
                for (uint32_t k = 0; k < slot.chunks; ++k) {
                    const uint64_t off = static_cast<uint64_t>(k) * readChunk;
                    io::ReadRequest r;
                    r.fd = src.file.fd();
                    r.offset = src.index.dataStart + off;
                    r.length = static_cast<uint32_t>(std::min<uint64_t>(total - std::min(off, total), readChunk));
                    r.dst = slot.buffer.data() + off;
                    r.tag = static_cast<uint64_t>(k) << 32 | static_cast<uint64_t>(s);
                    batch.push_back(r);
                }
                slot.timing.readStartNs = nowNs(origin);
            }
            if (batch.empty() && scheduler->pending() == 0) {
                if (anyCopying) {
                    // A copy in flight frees its pinned slot when done: poll, never block on it.
                    ioCv.wait_for(lock, std::chrono::microseconds(200));
                } else {
                    ioCv.wait(lock);
                }
                continue;
            }
        }
        if (!batch.empty()) {
            Status st = scheduler->submit(batch);
            if (!st.isOk()) {
                std::lock_guard<std::mutex> lock(mu);
                for (const auto& r : batch) {
                    const int s = static_cast<int>(r.tag & 0xffffffffu);
                    SlotData& slot = *slots[static_cast<size_t>(s)];
                    if (slot.error.isOk()) slot.error = st;
                    // No task was queued (nothing landed): the slot carries the error.
                    if (--slot.readsLeft == 0) {
                        slot.tasksLeft.store(0);
                        setReadyLocked(s);
                    }
                }
                continue;
            }
        }
        const size_t n =
            scheduler->reap(done, std::chrono::microseconds(gpu() ? 200 : 500));
        if (n == 0) continue;
        std::lock_guard<std::mutex> lock(mu);
        for (size_t k = 0; k < n; ++k) {
            const int s = static_cast<int>(done[k].tag & 0xffffffffu);
            const uint32_t chunk = static_cast<uint32_t>(done[k].tag >> 32);
            SlotData& slot = *slots[static_cast<size_t>(s)];
            if (!done[k].ok() && slot.error.isOk()) {
                slot.error = done[k].status.withContext(
                    "layer " + std::to_string(slot.layer) + " (" +
                    layers[static_cast<size_t>(slot.layer)].name + ")");
            }
            slot.chunkLanded[chunk] = 1;
            while (slot.landedChunks < slot.chunks && slot.chunkLanded[slot.landedChunks]) {
                ++slot.landedChunks;
            }
            if (--slot.readsLeft > 0) {
                queueLandedLocked(s, false);
                continue;
            }
            slot.timing.readDoneNs = nowNs(origin);
            stats.layersRead++;
            stats.bytesRead += slot.timing.bytesRead;
            stats.readSeconds += (slot.timing.readDoneNs - slot.timing.readStartNs) / 1e9;
            if (layers[static_cast<size_t>(slot.layer)].index.tensors.empty()) {
                slot.tasksLeft.store(0);  // nothing to verify or decode
                if (slot.discard) {
                    freeSlotLocked(s);
                } else {
                    setReadyLocked(s);
                }
                continue;
            }
            if (slot.state == SlotState::kReading) slot.state = SlotState::kDecoding;
            queueLandedLocked(s, true);
            finishTaskLocked(s);  // the reads' share: the slot is done once its tasks are
        }
    }
    scheduler->cancelAll();
    std::vector<io::ReadCompletion> drain(64);
    while (scheduler->pending() > 0 && scheduler->reap(drain, std::chrono::milliseconds(10)) > 0) {
    }
}

void Engine::Impl::queueLandedLocked(int s, bool all) {
    SlotData& slot = *slots[static_cast<size_t>(s)];
    const LayerSource& src = layers[static_cast<size_t>(slot.layer)];
    const uint64_t landed =
        all ? UINT64_MAX : static_cast<uint64_t>(slot.landedChunks) * readChunk;
    const size_t first = slot.nextLand;
    while (slot.nextLand < src.landOrder.size()) {
        const uint32_t t = src.landOrder[slot.nextLand];
        if (src.tensorEnd[t] > landed) break;
        tasks.push_back({s, t});  // a failed or discarded slot's tasks are skipped by workers
        ++slot.nextLand;
    }
    if (slot.nextLand > first) taskCv.notify_all();
}

void Engine::Impl::finishTaskLocked(int s) {
    SlotData& slot = *slots[static_cast<size_t>(s)];
    if (slot.tasksLeft.fetch_sub(1) != 1) return;
    if (gpu()) {  // verified and decoded: hand it to the submit pump
        if (slot.discard) {
            freeSlotLocked(s);
        } else if (!slot.error.isOk()) {
            setReadyLocked(s);
        } else {
            slot.state = SlotState::kVerified;
        }
        return;
    }
    slot.timing.dequantizedNs = nowNs(origin);
    stats.layersDequantized++;
    if (slot.discard) {
        freeSlotLocked(s);
        return;
    }
    setReadyLocked(s);
}

void Engine::Impl::setReadyLocked(int s) {
    SlotData& slot = *slots[static_cast<size_t>(s)];
    slot.state = SlotState::kReady;
    readyCv.notify_all();
    if (slot.error.isOk() || !opts.onLayerError) return;
    try {
        opts.onLayerError(slot.layer, slot.error);
    } catch (const std::exception& e) {  // an engine thread must not die of the caller's callback
        SLI_ERROR(kLog, "onLayerError threw for layer %lld: %s", static_cast<long long>(slot.layer), e.what());
    } catch (...) {
        SLI_ERROR(kLog, "onLayerError threw for layer %lld", static_cast<long long>(slot.layer));
    }
}

void Engine::Impl::workerLoop(int /*id*/) {
    AlignedBuffer scratch;  // GPU: statistics are decoded into the pinned slot's tail instead
    if (!gpu()) {
        auto scratchOr = AlignedBuffer::allocate(std::max<uint64_t>(maxScratch, 64), false);
        if (scratchOr.isOk()) scratch = std::move(scratchOr).value();
    }
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
                pumpGpuLocked(lock);
                continue;
            }
        }
        SlotData& slot = *slots[static_cast<size_t>(task.slot)];
        const LayerSource& src = layers[static_cast<size_t>(slot.layer)];
        const auto& entry = src.index.tensors[task.tensor];
        Status st;
        const int64_t t0 = nowNs(origin);
        int64_t t1 = t0;
        if (gpu()) {
            std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(slot.buffer.data()),
                                           src.index.dataBytes());
            std::span<uint8_t> tail(reinterpret_cast<uint8_t*>(slot.buffer.data()) +
                                        src.statsOffsets[task.tensor],
                                    entry.scratchBytes());
            auto view = io::decodeTensor(src.index, task.tensor, bytes, src.index.dataStart,
                                         opts.verifyChecksums, tail);
            t1 = nowNs(origin);
            if (view.isOk()) {
                slot.gpuViews[task.tensor] = *view;
            } else {
                st = view.status();
            }
        } else if (scratch.size() < entry.scratchBytes()) {
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
                std::span<uint8_t> out(
                    slot.arena + src.outOffsets[task.tensor],
                    outBytes);
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
        std::unique_lock<std::mutex> lock(mu);
        stats.verifySeconds += (t1 - t0) / 1e9;
        if (!gpu()) stats.dequantSeconds += (t2 - t0) / 1e9;  // GPU: the kernels' event times
        slot.timing.dequantBusyNs += t2 - t0;
        slot.timing.verifiedNs = std::max(slot.timing.verifiedNs, t1);
        slot.timing.bytesProduced +=
            static_cast<uint64_t>(entry.info.numel()) * dtypeSize(src.outDTypes[task.tensor]);
        if (!st.isOk() && slot.error.isOk()) {
            const std::string ctx = "layer " + std::to_string(slot.layer) + " (" + src.name +
                                    ") tensor " + entry.info.name + " in " + src.index.path;
            // The cache reader's errors already say where (io/cache_format.cpp): not twice.
            slot.error = st.message().find(ctx) != std::string::npos ? st : st.withContext(ctx);
        }
        finishTaskLocked(task.slot);
        pumpGpuLocked(lock);
    }
}

// ---- Engine ---------------------------------------------------------------------------------

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) { impl_->anchor->engine = this; }

Engine::~Engine() {
    if (!impl_) return;
    {
        // From here a lease's release() does nothing (one in progress finishes first).
        std::lock_guard<std::mutex> anchorLock(impl_->anchor->mu);
        impl_->anchor->engine = nullptr;
    }
    {
        std::lock_guard<std::mutex> lock(impl_->mu);
        impl_->stop = true;
        // The tensors of a lease that outlives its engine are freed with it (engine.h): say
        // so, naming the layers, rather than leave a use-after-free to be found later.
        std::string held;
        for (const auto& slot : impl_->slots) {
            if (slot->state == SlotState::kLeased) held.append(" ").append(std::to_string(slot->layer));
        }
        for (const auto& u : impl_->gpuUses) {
            if (u.state == GpuState::kLeased) held.append(" ").append(std::to_string(u.layer));
        }
        if (!held.empty()) {
            SLI_ERROR(kLog,
                      "engine destroyed while leases of layers%s are held: their tensors are "
                      "freed now (releasing those leases later does nothing); release every "
                      "lease before destroying its engine",
                      held.c_str());
        }
    }
    impl_->ioCv.notify_all();
    impl_->taskCv.notify_all();
    impl_->readyCv.notify_all();
    if (impl_->ioThread.joinable()) impl_->ioThread.join();
    for (auto& w : impl_->workers) w.join();
}

namespace {

// The read scheduler's limits (io/read_scheduler.cpp) and a sanity bound on worker threads.
constexpr uint32_t kMinChunkBytes = 4096, kMaxChunkBytes = 64u << 20, kMaxQueueDepth = 4096;
constexpr int kMaxWorkerThreads = 1024;

// Checks what needs no cache: every option out of range is InvalidArgument naming it, before
// anything is opened, allocated or started.
Status checkOptions(const EngineOptions& o) {
    if (o.cacheDir.empty()) return Status::invalidArgument("EngineOptions.cacheDir is empty");
    struct stat st {};
    if (::stat(o.cacheDir.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
        return Status::invalidArgument("cache directory " + o.cacheDir + " is not a directory");
    }
    if (o.prefetchDepth < 0) {
        return Status::invalidArgument("prefetch depth must be >= 0 (EngineOptions.prefetchDepth is " +
                                       std::to_string(o.prefetchDepth) + ")");
    }
    if (o.workerThreads < 0 || o.workerThreads > kMaxWorkerThreads) {
        return Status::invalidArgument("EngineOptions.workerThreads is " +
                                       std::to_string(o.workerThreads) + "; use 0 (one per core) to " +
                                       std::to_string(kMaxWorkerThreads));
    }
    if (o.chunkBytes < kMinChunkBytes || o.chunkBytes > kMaxChunkBytes || o.chunkBytes % 4096 != 0) {
        return Status::invalidArgument("EngineOptions.chunkBytes is " + std::to_string(o.chunkBytes) +
                                       "; use a multiple of 4096 from 4 KiB to 64 MiB");
    }
    if (o.queueDepth < 1 || o.queueDepth > kMaxQueueDepth) {
        return Status::invalidArgument("EngineOptions.queueDepth is " + std::to_string(o.queueDepth) +
                                       "; use 1 to " + std::to_string(kMaxQueueDepth));
    }
    auto backend = io::parseIoBackend(o.ioBackend);
    if (!backend.isOk()) return backend.status().withContext("EngineOptions.ioBackend");
    switch (o.order) {
        case LayerOrder::kSequential:
        case LayerOrder::kCyclic:
            if (!o.plan.empty()) {
                return Status::invalidArgument(
                    "EngineOptions.plan is given but the layer order is not kExplicit: the plan "
                    "would be ignored");
            }
            break;
        case LayerOrder::kExplicit:
            if (o.plan.empty()) return Status::invalidArgument("explicit layer order needs a plan");
            break;
        default:
            return Status::invalidArgument("EngineOptions.order is not a LayerOrder (" +
                                           std::to_string(static_cast<int>(o.order)) + ")");
    }
    return Status();
}

}  // namespace

Result<std::unique_ptr<Engine>> Engine::open(const EngineOptions& options) {
    auto device = cuda::parseDevice(options.device);
    if (!device.isOk()) {
        return Status::invalidArgument("unknown device \"" + options.device +
                                       "\"; use \"cpu\" or \"cuda:N\"");
    }
    if (*device >= 0) {
        if (!cuda::built()) {
            return Status::notSupported("device " + options.device +
                                        ": this build of sli has no CUDA support (configure with "
                                        "meson -Dcuda=enabled); use device \"cpu\"");
        }
        if (!cuda::deviceAvailable(*device)) {
            return Status::notSupported("device " + options.device + ": no such CUDA device (" +
                                        std::to_string(cuda::deviceCount()) +
                                        " visible: no GPU, no driver, or CUDA_VISIBLE_DEVICES); "
                                        "use device \"cpu\"");
        }
    }
    if (options.computeDType != DType::kBool && !dtypeIsCompute(options.computeDType)) {
        return Status::invalidArgument(std::string("compute dtype must be f16, bf16 or f32, not ") +
                                       dtypeName(options.computeDType));
    }
    SLI_RETURN_IF_ERROR(checkOptions(options));
    auto impl = std::make_unique<Impl>();
    impl->opts = options;
    impl->gpuDevice = *device;
    SLI_RETURN_IF_ERROR(impl->openLayers());
    SLI_RETURN_IF_ERROR(impl->allocate());
    SLI_INFO(kLog, "engine: %zu layers from %s on %s, %zu slots (%d on the device), depth %d, %s%s, %zu workers",
             impl->layers.size(), impl->cacheDir.c_str(), options.device.c_str(),
             impl->slots.size(), impl->stats.deviceSlots, impl->depth,
             impl->backendName.c_str(), impl->anyDirect ? " O_DIRECT" : " buffered",
             impl->workers.size());
    return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

int64_t Engine::numLayers() const noexcept { return static_cast<int64_t>(impl_->layers.size()); }
const std::vector<std::string>& Engine::layerNames() const noexcept { return impl_->layerNames; }
DType Engine::computeDType() const noexcept { return impl_->outDType; }
int Engine::device() const noexcept { return impl_->gpuDevice; }

Result<Lease> Engine::acquire(int64_t layer) { return acquire(layer, nullptr); }

Result<Lease> Engine::acquire(int64_t layer, void* stream) {
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
    // Every slot leased (CPU slots, or device slots on the GPU path): no slot can be ready for
    // `pos` nor become ready before a release, which only the caller can do. Refused before
    // anything changes, so the skipped positions are still there for a retry after a release.
    auto allLeased = [&]() -> Status {
        if (m.classes) {  // every slot of the layer's class
            size_t held = 0;
            for (size_t s = 0; s < m.slots.size(); ++s) held += m.slotFits(s, layer) ? 1 : 0;
            const bool large = m.layerLarge[static_cast<size_t>(layer)] != 0;
            return Status::resourceExhausted(
                "acquire(" + std::to_string(layer) + "): all " + std::to_string(held) +
                (large ? " slots sized for the largest layers (embeddings, heads)"
                       : " layer slots for layers of its size") +
                " are leased; release earlier layers first" +
                (large ? std::string(" (the engine keeps up to 2 such slots; a larger host "
                                     "budget does not add more)")
                       : std::string(" (or raise the prefetch depth or the host budget)")));
        }
        const size_t held = m.gpu() ? m.gpuUses.size() : m.slots.size();
        // There are prefetchDepth + 1 slots unless the budget holds fewer: name the limit
        // that actually binds (a larger budget does not help at depth 0).
        const bool budgetBound = held < static_cast<size_t>(m.opts.prefetchDepth) + 1;
        return Status::resourceExhausted(
            "acquire(" + std::to_string(layer) + "): all " + std::to_string(held) +
            (m.gpu() ? " device" : "") +
            " layer slots are leased; release earlier layers first (or raise " +
            (budgetBound ? std::string("the ") + (m.gpu() ? "device" : "host") + " budget"
                         : std::string("the prefetch depth: the engine keeps depth + 1 slots")) +
            ")");
    };
    const bool everySlotLeased =
        m.gpu() ? std::all_of(m.gpuUses.begin(), m.gpuUses.end(),
                              [](const GpuUse& u) { return u.state == GpuState::kLeased; })
                : [&] {
                      for (size_t s = 0; s < m.slots.size(); ++s) {
                          if (m.slotFits(s, layer) && m.slots[s]->state != SlotState::kLeased) {
                              return false;
                          }
                      }
                      return true;
                  }();
    if (everySlotLeased) return allLeased();
    // Drop the positions skipped over (a ready slot linked to a later position still wanted
    // serves that one instead).
    m.nextAcquirePos = pos;
    for (size_t s = 0; s < m.slots.size(); ++s) {
        SlotData& slot = *m.slots[s];
        if (slot.state != SlotState::kFree && slot.state != SlotState::kLeased && slot.pos < pos) {
            if (slot.state == SlotState::kReady || slot.state == SlotState::kVerified) {
                m.retireSlotLocked(static_cast<int>(s));
            } else if (!slot.discard && !slot.reuse.empty() && slot.reuse.back() >= pos) {
                // still being read: for its next linked position still wanted instead
                while (slot.reuse.front() < pos) slot.reuse.erase(slot.reuse.begin());
                slot.pos = slot.reuse.front();
                slot.reuse.erase(slot.reuse.begin());
            } else if (slot.state != SlotState::kCopying) {
                slot.discard = true;
            }
        }
    }
    for (size_t g = 0; g < m.gpuUses.size(); ++g) {
        GpuUse& u = m.gpuUses[g];
        if (u.state == GpuState::kSubmitted && u.pos < pos) {
            // Never handed out: mark the device slot free after its own dequant.
            (void)m.pipeline->release(static_cast<int>(g), m.pipeline->dequantStream());
            u.state = GpuState::kFree;
            u.timingPending = false;
        }
    }
    if (m.nextReadPos < pos) m.nextReadPos = pos;
    // The position may be linked to a slot the caller still holds (a second lease of the same
    // layer): that slot is not free before this returns, so the layer is read again.
    for (auto& sp : m.slots) {
        if (sp->state != SlotState::kLeased) continue;
        if (auto it = std::find(sp->reuse.begin(), sp->reuse.end(), pos); it != sp->reuse.end()) {
            sp->reuse.erase(it);
            m.queueRereadLocked(pos);
        }
    }
    m.acquireWaiting = true;
    m.ioCv.notify_one();
    int found = -1, foundGpu = -1;
    while (true) {
        if (m.stop) return Status::internal("engine is shutting down");
        bool anyFreeOrPending = false;
        for (size_t s = 0; s < m.slots.size(); ++s) {
            SlotData& slot = *m.slots[s];
            if (slot.state != SlotState::kLeased && m.slotFits(s, layer)) anyFreeOrPending = true;
            if (slot.state == SlotState::kReady && slot.pos == pos && !slot.discard) {
                found = static_cast<int>(s);
            }
        }
        if (m.gpu()) {
            // The host waits only until the layer is submitted; its stream waits for the rest.
            anyFreeOrPending = false;
            for (size_t g = 0; g < m.gpuUses.size(); ++g) {
                const GpuUse& u = m.gpuUses[g];
                if (u.state != GpuState::kLeased) anyFreeOrPending = true;
                if (u.state == GpuState::kSubmitted && u.pos == pos) foundGpu = static_cast<int>(g);
            }
        }
        if (found >= 0 || foundGpu >= 0) break;
        if (!anyFreeOrPending) {
            // (not reached with one executor thread: the check above refuses this case before
            // anything changes, and while this waits no slot becomes leased)
            m.acquireWaiting = false;
            return allLeased();
        }
        if (!m.gpu()) m.makeRoomLocked(pos, layer);
        m.readyCv.wait(lock);
    }
    m.acquireWaiting = false;
    m.nextAcquirePos = pos + 1;
    m.failedLayer = -1;
    if (foundGpu >= 0) {
        GpuUse& u = m.gpuUses[static_cast<size_t>(foundGpu)];
        Status st = m.pipeline->acquire(foundGpu, stream);
        if (!st.isOk()) {
            (void)m.pipeline->release(foundGpu, m.pipeline->dequantStream());
            u.state = GpuState::kFree;
            m.ioCv.notify_one();
            return st.withContext("acquire(" + std::to_string(layer) + ") on " + m.opts.device);
        }
        auto it = u.views.find(layer);
        if (it == u.views.end()) {
            std::vector<DeviceTensor> dts;
            for (const gpu::GpuTensor& t : m.pipeline->tensors(foundGpu)) {
                dts.push_back(DeviceTensor{t.info->name, t.info->shape, t.dtype, t.data, t.bytes,
                                           m.gpuDevice});
            }
            it = u.views.emplace(layer, std::move(dts)).first;
        }
        u.state = GpuState::kLeased;
        m.noteAcquiredLocked(u.timing, calledNs);
        Lease lease;
        lease.anchor_ = impl_->anchor;
        lease.slot_ = foundGpu;
        lease.layer_ = layer;
        lease.devicePtr_ = &it->second;
        lease.stream_ = stream;
        return lease;
    }
    SlotData& slot = *m.slots[static_cast<size_t>(found)];
    if (!slot.error.isOk()) {
        Status err = slot.error;
        m.freeSlotLocked(found);
        m.failedLayer = layer;
        m.failedPos = pos;
        return err;
    }
    auto view = m.layerView(found, layer);
    if (!view.isOk()) {
        m.retireSlotLocked(found);  // a later position linked to it gets the same answer
        m.failedLayer = layer;
        m.failedPos = pos;
        return view.status();
    }
    slot.state = SlotState::kLeased;
    if (slot.reused) m.stats.layersReused++;
    (void)m.linkAheadLocked();
    m.noteAcquiredLocked(slot.timing, calledNs);
    Lease lease;
    lease.anchor_ = impl_->anchor;
    lease.slot_ = found;
    lease.layer_ = layer;
    lease.layerPtr_ = *view;
    return lease;
}

namespace {

// Whether a reopened layer fits what open() sized its slots and arenas for: the same read
// region, tensors, output layout and decode scratch.
bool sameLayout(const LayerSource& a, const LayerSource& b) {
    if (a.index.dataStart != b.index.dataStart || a.index.dataBytes() != b.index.dataBytes() ||
        a.index.tensors.size() != b.index.tensors.size() || a.outOffsets != b.outOffsets ||
        a.outDTypes != b.outDTypes || a.inPlace != b.inPlace || a.outBytes != b.outBytes ||
        a.statsOffsets != b.statsOffsets || a.regionBytes != b.regionBytes ||
        a.tensorEnd != b.tensorEnd) {
        return false;
    }
    for (size_t t = 0; t < a.index.tensors.size(); ++t) {
        const auto& x = a.index.tensors[t];
        const auto& y = b.index.tensors[t];
        if (x.info.name != y.info.name || x.info.shape != y.info.shape || x.info.mode != y.info.mode ||
            x.info.storedDType != y.info.storedDType || x.scratchBytes() != y.scratchBytes()) {
            return false;
        }
    }
    return true;
}

}  // namespace

Status Engine::reload(int64_t layer) {
    Impl& m = *impl_;
    const std::string what = "reload(" + std::to_string(layer) + ")";
    if (layer < 0 || layer >= numLayers()) {
        return Status::invalidArgument(what + ": the cache has " + std::to_string(numLayers()) + " layers");
    }
    if (m.gpu()) {
        return Status::notSupported(what + " on " + m.opts.device +
                                    ": only the CPU path rereads a layer; open the engine again");
    }
    {
        std::lock_guard<std::mutex> lock(m.mu);
        if (m.failedLayer != layer) {
            return Status::invalidArgument(what + ": only right after acquire(" + std::to_string(layer) +
                                           ") failed, before the next acquire()");
        }
    }
    // Outside the lock: nothing reads or writes layers[layer] while its last acquire failed
    // and no slot holds it (checked below; only this thread, the executor's, acquires).
    const auto& ml = m.manifestLayers[static_cast<size_t>(layer)];
    SLI_ASSIGN_OR_RETURN(LayerSource fresh, m.loadLayer(static_cast<size_t>(layer), ml));
    if (!sameLayout(m.layers[static_cast<size_t>(layer)], fresh)) {
        return Status::invalidArgument(what + ": cache file " + fresh.file.path() +
                                       " now has another layout (tensors, sizes) than when the "
                                       "engine opened it; open the engine again");
    }
    std::lock_guard<std::mutex> lock(m.mu);
    if (m.failedLayer != layer) {  // (only this thread moves it; checked again for clarity)
        return Status::invalidArgument(what + ": only right after acquire(" + std::to_string(layer) +
                                       ") failed, before the next acquire()");
    }
    // Later positions of the layer already read, or being read, from the old file (a plan over
    // no more layers than the prefetch depth reads the next occurrence early), or linked to a
    // lease the executor still holds: read again from the new one. Slots still reading are
    // freed when their reads end; the io thread swaps the file in only then, and reads no
    // position of this layer before it has. A lease still held keeps its tensors (read and
    // verified before) until released, and serves no later position.
    // (Here nextAcquirePos is still failedPos + 1: every such position is at or after it.)
    for (size_t s = 0; s < m.slots.size(); ++s) {
        SlotData& d = *m.slots[s];
        if (d.state == SlotState::kFree || d.layer != layer || d.discard) continue;
        if (d.state == SlotState::kLeased) {
            m.unlinkLocked(d);
            d.stale = true;
            continue;
        }
        m.queueRereadLocked(d.pos);
        if (d.state == SlotState::kReady) {
            m.freeSlotLocked(static_cast<int>(s));  // (its linked positions are read again too)
        } else {
            m.discardSlotLocked(static_cast<int>(s));
        }
    }
    m.pendingSwaps.emplace_back(layer, std::move(fresh));
    m.nextAcquirePos = m.failedPos;
    m.queueRereadLocked(m.failedPos);
    m.failedLayer = -1;
    m.ioCv.notify_one();
    return Status();
}

void Engine::releaseSlot(int s, bool gpu, void* stream) {
    Impl& m = *impl_;
    std::lock_guard<std::mutex> lock(m.mu);
    if (gpu) {
        GpuUse& u = m.gpuUses[static_cast<size_t>(s)];
        u.timing.releasedNs = nowNs(m.origin);
        if (m.opts.recordTrace) {
            u.timingIndex = m.recordTimingLocked(u.timing);
        }
        // Records the event the next dequant into these buffers waits for. Should that fail,
        // the device slot is never reused (safe: nothing may overwrite what the executor reads).
        Status st = m.pipeline->release(s, stream);
        if (st.isOk()) {
            u.state = GpuState::kFree;
        } else {
            SLI_ERROR(kLog, "release of layer %lld on %s: %s; its device slot is retired",
                      static_cast<long long>(u.layer), m.opts.device.c_str(), st.toString().c_str());
        }
        m.ioCv.notify_one();  // the io thread submits a layer waiting for a device slot
        return;
    }
    SlotData& slot = *m.slots[static_cast<size_t>(s)];
    slot.timing.releasedNs = nowNs(m.origin);
    if (m.opts.recordTrace) m.recordTimingLocked(slot.timing);
    (void)m.linkAheadLocked();  // before the slot is freed: it may serve a position ahead
    m.retireSlotLocked(s);
}

EngineStats Engine::stats() const {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->harvestAllLocked(true);
    return impl_->stats;
}

std::vector<LayerTiming> Engine::timings() const {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->harvestAllLocked(true);
    return impl_->timingsLocked();
}

Status Engine::writeTrace(const std::string& path) const {
    return writeTraceFile(path, timings(), impl_->layerNames);
}

// ---- Lease ----------------------------------------------------------------------------------

Lease::~Lease() { release(); }

Lease::Lease(Lease&& o) noexcept
    : anchor_(std::move(o.anchor_)),
      slot_(o.slot_),
      layer_(o.layer_),
      layerPtr_(o.layerPtr_),
      devicePtr_(o.devicePtr_),
      stream_(o.stream_) {
    o.anchor_.reset();
    o.clearMovedFrom();
}

Lease& Lease::operator=(Lease&& o) noexcept {
    if (this != &o) {
        release();
        anchor_ = std::move(o.anchor_);
        slot_ = o.slot_;
        layer_ = o.layer_;
        layerPtr_ = o.layerPtr_;
        devicePtr_ = o.devicePtr_;
        stream_ = o.stream_;
        o.anchor_.reset();
        o.clearMovedFrom();
    }
    return *this;
}

void Lease::clearMovedFrom() noexcept {
    slot_ = -1;
    layer_ = -1;
    layerPtr_ = nullptr;
    devicePtr_ = nullptr;
    stream_ = nullptr;
}

const Layer& Lease::tensors() const {
    static const Layer kEmpty;
    return layerPtr_ ? *layerPtr_ : kEmpty;
}

const Tensor* Lease::find(std::string_view name) const {
    return layerPtr_ ? layerPtr_->find(name) : nullptr;
}

std::span<const DeviceTensor> Lease::deviceTensors() const noexcept {
    if (devicePtr_ == nullptr) return {};
    return *devicePtr_;
}

const DeviceTensor* Lease::findDevice(std::string_view name) const {
    if (devicePtr_ == nullptr) return nullptr;
    for (const DeviceTensor& t : *devicePtr_) {
        if (t.name == name) return &t;
    }
    return nullptr;
}

void Lease::release() { release(stream_); }

void Lease::release(void* stream) {
    if (!anchor_) return;
    {
        // Held across releaseSlot so that ~Engine cannot free the engine under it.
        std::lock_guard<std::mutex> lock(anchor_->mu);
        if (anchor_->engine != nullptr) {
            anchor_->engine->releaseSlot(slot_, devicePtr_ != nullptr, stream);
        }
    }
    anchor_.reset();
    layerPtr_ = nullptr;
    devicePtr_ = nullptr;
}

}  // namespace sli

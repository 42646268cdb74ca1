// sli::Processor: the seed's SLI processor. One object that takes a model (a safetensors
// checkpoint: one file, a sharded index, or a directory) and a quantization configuration,
// makes sure its layer cache is complete, and streams the layers through sli::Engine.
//
//   sli::ProcessorOptions o;
//   o.modelPath = "/models/llama-7b";          // safetensors file, index json or directory
//   o.cacheRoot = "/var/cache/sli";
//   o.preset = "nf4";                          // or o.config = QuantizationConfig{...}
//   auto p = sli::Processor::open(o);          // Result<std::unique_ptr<Processor>>
//   for (int64_t i = 0; i < (*p)->numLayers(); ++i) {
//       auto lease = (*p)->acquire(i);         // full-precision tensors of layer i
//       ...
//   }
//
// open() runs the ingestion pipeline (engine/ingest.h, what `sli quantize` runs) on the model:
// layers already complete in the cache for the same source and configuration are reused as
// they are (read their index only, nothing quantized again); missing layers (first use, an
// interrupted earlier run, a file removed or evicted) are quantized and written atomically.
// With verifyCache, complete layers are first checked in full (every checksum: a read of the
// whole cache) and damaged ones are quantized again (build().layersRepaired). Without it, a
// damaged layer is found when it is streamed: with repairWhileStreaming (the default), the
// acquire() that meets the damage (Corruption or IOError from the engine) quantizes that
// layer again from the model (after checking that the model is still the one the cache was
// made from), has the engine reread it (Engine::reload) and returns it, with a warning
// naming the layer and the damage (repairsWhileStreaming() counts them). With repairAhead
// (the default), the quantization does not wait for that acquire(): the engine reports a
// failed read as soon as it happens (EngineOptions::onLayerError), usually while prefetching
// layers ahead of the executor, and a background thread of the processor quantizes the layer
// again then (one layer at a time, in the order the damage was found), so that by the time
// the executor gets there acquire() usually only has the engine reread the file
// (repairsAhead() counts those). If the repair fails (the model changed or is gone, its
// layout changed, a second failure), acquire() returns the original error with the reason the
// repair failed; with repairWhileStreaming off, the error as the engine gave it, until a
// later open with verifyCache (or `sli verify --repair`) rewrites the layer.
// Then it opens an Engine on exactly that cache directory; numLayers / layerNames / acquire
// pass through to it, and engine() exposes it for everything else (stats, trace). Layer
// indices are the cache's: execution order, "pre" (embeddings) first when there is one.
//
// Configuration: `preset` names one of "none", "int8", "nf4", "fp4" (the seed's
// get_*_config), "mixed" (getMixedPrecisionConfig: attention INT8, FFN NF4, the rest NF4)
// or any config registered in QuantizationRegistry::global(); or `config` gives one
// explicitly; neither means mode NONE (the compute dtype only). The architecture registry's
// default skips (embeddings, heads, norms stay unquantized) apply unless defaultSkips is off.
//
// Ownership: the Processor owns its Engine; leases must be released before it is destroyed.
// Blocking: open() does file I/O and quantizes on the calling thread (plus quantizeThreads
// kernel threads); acquire() blocks as Engine::acquire does, and while a layer it met
// damaged is repaired (the model's layer read and quantized: on the calling thread without
// repairAhead, else on the background thread, moved to the front of its queue, unless
// already done or under way). The destructor waits for a background repair in progress
// (one layer) and drops those not started.
// Thread safety: as Engine (one executor thread calls acquire; leases may be released from
// any thread). A repair in the background runs beside the engine's threads and writes only the
// damaged layer's file (atomically) and the cache's manifest.
// Errors: open() returns InvalidArgument for bad options (no model path or cache root, an
// unknown preset, both a preset and a config, an invalid config) naming the option, NotFound
// for a model path that does not exist, and the ingestion / engine errors (naming the file,
// layer and tensor) otherwise.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sli/config.h"
#include "sli/engine.h"
#include "sli/status.h"

namespace sli {

struct IngestOptions;  // engine/ingest.h

struct ProcessorOptions {
    std::string modelPath;  // .safetensors file, model.safetensors.index.json, or directory
    std::string modelId;    // default: the model's directory (or file) name, as `sli quantize`
    std::string cacheRoot;  // the cache root (what `sli quantize --cache` is given)
    std::string preset;     // see the header comment; empty: `config`
    std::optional<QuantizationConfig> config;
    bool defaultSkips = true;  // keep the registry's embeddings / heads / norms unquantized
    int quantizeThreads = 1;   // kernel threads while quantizing missing layers (0 = all)
    bool verifyCache = false;  // check complete layers in full at open, rewrite damaged ones
    bool repairWhileStreaming = true;  // acquire() quantizes a damaged layer again (see above)
    // With repairWhileStreaming: a layer whose prefetch read fails is quantized again on a
    // background thread as soon as the engine finds the damage (see above).
    bool repairAhead = true;
    // Streaming options; cacheDir and modelId are filled in by the processor. With
    // engine.device "cuda:N", missing NF4 / FP4 / INT8 layers are quantized on that GPU too
    // (the same bytes as on the CPU); a device that is not available fails open() before any
    // layer is written.
    EngineOptions engine;
};

// What open() did to the cache.
struct ProcessorBuild {
    std::string cacheDir;  // the model / configuration directory the engine streams
    std::string modelId;
    size_t layers = 0;
    size_t layersWritten = 0;  // quantized and written by this open()
    size_t layersReused = 0;   // already complete: not quantized again
    size_t layersRepaired = 0;  // damaged (verifyCache) and written again; in layersWritten
    double seconds = 0;        // time spent bringing the cache up to date
};

class Processor {
public:
    static Result<std::unique_ptr<Processor>> open(const ProcessorOptions& options);
    ~Processor();
    Processor(const Processor&) = delete;
    Processor& operator=(const Processor&) = delete;

    const ProcessorBuild& build() const noexcept { return build_; }
    // The base configuration of the cache (the mixed preset's attention / FFN configs are in
    // its manifest's policy).
    const QuantizationConfig& config() const noexcept { return config_; }
    Engine& engine() noexcept { return *engine_; }

    int64_t numLayers() const noexcept { return engine_->numLayers(); }
    const std::vector<std::string>& layerNames() const noexcept { return engine_->layerNames(); }
    DType computeDType() const noexcept { return engine_->computeDType(); }
    // Engine::acquire, plus the repair described above.
    Result<Lease> acquire(int64_t layer);
    // Layers repaired while streaming (repairWhileStreaming) and then handed out by acquire().
    size_t repairsWhileStreaming() const noexcept { return repairs_; }
    // Of those, the ones whose repair had started in the background (repairAhead) before
    // acquire() reached the damaged layer.
    size_t repairsAhead() const noexcept { return repairsAhead_; }

private:
    struct Repairer;  // processor.cpp
    Processor();
    ProcessorBuild build_;
    std::unique_ptr<IngestOptions> ingest_;  // what open() ran: a repair runs it on one layer
    bool repairWhileStreaming_ = true;
    size_t repairs_ = 0;
    size_t repairsAhead_ = 0;
    std::unique_ptr<Repairer> repairer_;  // repairAhead; stopped before the engine is closed
    QuantizationConfig config_;
    std::unique_ptr<Engine> engine_;
};

}  // namespace sli

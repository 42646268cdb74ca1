// sli::Processor: see include/sli/processor.h.
#include "sli/processor.h"

#include <filesystem>

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

}  // namespace

Processor::Processor() = default;
Processor::~Processor() = default;

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

    EngineOptions eo = o.engine;
    eo.cacheDir = sum->cacheDir;  // exactly this configuration's directory
    eo.modelId = sum->modelId;
    auto engine = Engine::open(eo);
    if (!engine.isOk()) return engine.status().withContext("streaming " + sum->cacheDir);
    p->engine_ = std::move(engine).value();
    // Absolute, so that a repair still finds them if the working directory changes.
    std::error_code ec;
    if (auto a = std::filesystem::absolute(ingest.input, ec); !ec) ingest.input = a.string();
    if (auto a = std::filesystem::absolute(o.cacheRoot, ec); !ec) ingest.cacheRoot = a.string();
    ingest.modelId = sum->modelId;
    ingest.progress = nullptr;
    p->ingest_ = std::make_unique<IngestOptions>(std::move(ingest));
    return p;
}

Result<Lease> Processor::acquire(int64_t layer) {
    auto lease = engine_->acquire(layer);
    if (lease.isOk() || !repairWhileStreaming_) return lease;
    const Status damage = lease.status();
    if (!damage.isCorruption() && !damage.isIOError()) return lease;
    // (a layer out of range is InvalidArgument: only a real layer's data gets here)
    SLI_WARN("processor", "layer %lld (%s) of %s: %s; quantizing it again from %s",
             static_cast<long long>(layer), layerNames()[static_cast<size_t>(layer)].c_str(),
             build_.cacheDir.c_str(),
             damage.toString().c_str(), ingest_->input.c_str());
    const auto failed = [&](const Status& why) {
        std::string msg = damage.message() + " (repairing layer " + std::to_string(layer) +
                          " failed: " + why.toString() + ")";
        return damage.isCorruption() ? Status::corruption(std::move(msg)) : Status::ioError(std::move(msg));
    };
    IngestOptions one = *ingest_;
    one.onlyLayers = {layer};
    one.verifyReused = true;  // an intact file (a transient read error) is kept and reread
    auto sum = ingestCheckpoint(one);
    if (!sum.isOk()) return failed(sum.status());
    if (Status s = engine_->reload(layer); !s.isOk()) return failed(s);
    auto again = engine_->acquire(layer);
    if (!again.isOk()) return failed(again.status());
    ++repairs_;
    return again;
}

}  // namespace sli

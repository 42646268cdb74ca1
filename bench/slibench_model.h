// slibench's model side: the deterministic synthetic Llama-shaped checkpoint (safetensors,
// generated once under the work directory and reused after validation) and its per-mode layer
// caches (quantized once, keyed by the mode's QuantizationConfig fingerprint, reused while the
// manifest, the source fingerprint and every layer file's index check out).
//
// Ownership: plain values; paths point into the work directory, which the caller owns.
// Blocking: file I/O and CPU work on the calling thread plus `threads` kernel threads.
// Thread safety: none needed (slibench's main thread only). Errors: Status naming the file,
// layer or tensor concerned.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sli/config.h"
#include "sli/dtype.h"
#include "sli/status.h"

namespace sli::bench {

struct ModelShape {
    int64_t hidden = 1536;
    int64_t intermediate = 3584;
    int64_t heads = 12;
    int64_t kvHeads = 4;
    int64_t layers = 32;
    uint64_t seed = 1;

    Status validate() const;
    int64_t headDim() const { return hidden / heads; }
    int64_t kvDim() const { return kvHeads * headDim(); }
    int64_t paramsPerLayer() const;
    int64_t params() const { return paramsPerLayer() * layers; }
    // "llama-h1536-i3584-a12-kv4-l32-s1": names the model directory and id.
    std::string key() const;
};

// Tensor names and shapes of block `l`, in checkpoint order.
struct TensorSpec {
    std::string name;
    std::vector<int64_t> shape;
};
std::vector<TensorSpec> layerTensors(const ModelShape& shape, int64_t l);

struct GeneratedModel {
    std::string path;         // the .safetensors file
    std::string modelId;      // "slibench/<key>"
    std::string fingerprint;  // SafetensorsModel::fingerprint()
    uint64_t bytes = 0;       // tensor bytes (bf16)
    bool reused = false;
    double seconds = 0;       // generation time (0 when reused)
};

using ProgressFn = std::function<void(const std::string&)>;

// WORKDIR/models/<key>/model.safetensors: validated and reused when present, (re)generated
// otherwise. Values are a deterministic function of (shape, seed, tensor, element).
Result<GeneratedModel> ensureModel(const std::string& workdir, const ModelShape& shape,
                                   const ProgressFn& progress);

QuantizationConfig configForMode(QuantizationMode mode);

struct CacheBuild {
    QuantizationMode mode = QuantizationMode::kNone;
    std::string label;               // how reports name it; empty: the mode's name
    DType computeDType = DType::kBF16;  // what dequantization produces (the config's)
    std::string dir;                 // the cache directory holding MANIFEST.json
    std::vector<std::string> files;  // layer files, in layer order
    uint64_t fileBytes = 0;          // bytes of the layer files
    uint64_t params = 0;             // weights in the cache
    bool reused = false;
    double buildSeconds = 0;         // ingestCheckpoint wall time (read, quantize, write,
                                     // fsync); 0 when reused
    uint64_t sourceBytes = 0;
    std::string name() const { return label.empty() ? std::string(modeName(mode)) : label; }
    double bitsPerWeight() const {
        return params ? 8.0 * static_cast<double>(fileBytes) / static_cast<double>(params) : 0;
    }
};

// WORKDIR/caches/<model dir>/<config fingerprint>/ for `mode`: reused when complete and made
// from this model, otherwise removed and rebuilt from scratch by the ingestion pipeline
// (engine/ingest.h, what `sli quantize` runs). 2-D tensors take `mode`, norms stay bf16.
Result<CacheBuild> ensureCache(const std::string& workdir, const GeneratedModel& model,
                               QuantizationMode mode, int threads, const ProgressFn& progress);

// An existing layer cache, as `sli quantize --cache ROOT` wrote it (slibench --cache): ROOT is
// a cache root, a model directory in it or one cache directory; modelId (may be empty) picks
// a model when ROOT holds several. Exactly one cache must match (the engine's own rule). Its
// label is its mode's name, or "mixed" for a per-tensor policy (--preset mixed).
Result<CacheBuild> openCache(const std::string& root, const std::string& modelId);

// Quantize throughput of LayerQuantizer on the first `layers` layers of the model, in memory:
// bf16 -> f32 and the quantize kernel are timed (not the read, no write); source GB/s.
struct QuantizeSample {
    uint64_t sourceBytes = 0;
    double seconds = 0;
    double gbps() const { return seconds > 0 ? sourceBytes / seconds / 1e9 : 0; }
};
Result<QuantizeSample> sampleQuantize(const GeneratedModel& model, QuantizationMode mode,
                                      int layers, int threads);

}  // namespace sli::bench

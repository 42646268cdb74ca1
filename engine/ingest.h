// Ingestion: a safetensors checkpoint (one file, a directory, or a sharded index) in, a layer
// cache out. What `sli quantize` runs.
//
// Tensors are grouped into layers in execution order (pre-block tensors such as embeddings,
// then blocks in numeric order, then post-block tensors such as the final norm and lm_head);
// each layer is read, quantized per the config and written (atomically) to
// ROOT/<model>/<config fingerprint>/ before the next is read, so memory stays bounded by about
// one layer (its source bytes, an f32 copy of one tensor, and its quantized form). A manifest
// listing every expected layer is written first. Layers already present and complete for the
// same source are reused, so rerunning an interrupted command finishes it.
//
// Which tensors are quantized: floating-point tensors with two or more dimensions, unless
// skipped by config.llmInt8SkipModules or (with defaultSkips) by being an embedding, head or
// norm. Kept tensors are stored as mode NONE in the compute dtype (integer tensors verbatim).
// INT4 tensors whose rows are not a multiple of 32 are kept too (one warning each).
//
// Hugging Face bitsandbytes checkpoints are recognized (4-bit: P.weight + .absmax + .quant_map
// [+ .nested_absmax + .nested_quant_map] + .quant_state.bitsandbytes__nf4|fp4; 8-bit: int8
// P.weight + P.SCB [+ P.weight_format]) and imported as they are: their bytes become the
// QuantizedTensor parts without re-quantization, whatever mode the config names.
//
// Blocking: file I/O and CPU work on the calling thread plus `threads` kernel threads.
// Errors: Status naming the file / layer / tensor; nothing partial is left in the cache.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "sli/config.h"
#include "sli/quantized.h"
#include "sli/safetensors.h"
#include "sli/status.h"

namespace sli {

struct IngestProgress {
    size_t layersDone = 0;   // written or reused
    size_t layersTotal = 0;
    size_t layersReused = 0;
    uint64_t sourceBytesDone = 0;
    uint64_t sourceBytesTotal = 0;
    double seconds = 0;
    std::string currentLayer;
};

struct IngestOptions {
    std::string input;      // .safetensors file, index json, or directory
    std::string cacheRoot;  // ROOT
    std::string modelId;    // default: the input's directory / file stem
    QuantizationConfig config;
    // Attention tensors get this mode instead (the "mixed" preset); nullopt: config.mode.
    std::optional<QuantizationMode> attentionMode;
    bool defaultSkips = true;
    bool compressPayload = false;
    int threads = 1;
    std::function<void(const IngestProgress&)> progress;  // called after each layer
};

struct IngestSummary {
    std::string cacheDir;
    std::string modelId;
    size_t layers = 0;
    size_t layersWritten = 0;
    size_t layersReused = 0;
    size_t tensors = 0;
    size_t importedBnbTensors = 0;
    uint64_t sourceBytes = 0;
    uint64_t cacheBytes = 0;   // file bytes of the cache's layer files
    uint64_t storedBytes = 0;  // bytes of the quantized parts
    uint64_t weights = 0;      // elements of all tensors
    double seconds = 0;
};

Result<IngestSummary> ingestCheckpoint(const IngestOptions& options);

// One logical tensor of a checkpoint: a plain tensor, or the set of tensors bitsandbytes
// writes for one quantized weight.
struct CheckpointTensor {
    enum class Kind { kPlain, kBnb4, kBnb8 };
    Kind kind = Kind::kPlain;
    std::string name;  // the weight's name ("P.weight" for bitsandbytes)
    const SafetensorsModel::Entry* main = nullptr;
    const SafetensorsModel::Entry* absmax = nullptr;  // 4-bit absmax or 8-bit SCB
    const SafetensorsModel::Entry* quantMap = nullptr;
    const SafetensorsModel::Entry* nestedAbsmax = nullptr;
    const SafetensorsModel::Entry* nestedQuantMap = nullptr;
    const SafetensorsModel::Entry* quantState = nullptr;  // 4-bit JSON
    const SafetensorsModel::Entry* weightFormat = nullptr;  // 8-bit
    uint64_t sourceBytes() const;
};

// Groups a checkpoint's tensors into logical tensors (bitsandbytes sets merged), in
// checkpoint order. InvalidArgument for an incomplete bitsandbytes set.
Result<std::vector<CheckpointTensor>> collectCheckpointTensors(const SafetensorsModel& model);

// Reads a bitsandbytes set as a QuantizedTensor, bytes as they are.
Result<QuantizedTensor> importBnbTensor(const SafetensorsModel& model, const CheckpointTensor& t,
                                        const QuantizationConfig& config);

struct LayerPlan {
    std::string name;
    int64_t index = 0;
    std::vector<size_t> tensors;  // indices into the CheckpointTensor list
};
// Execution-ordered layer groups (pre, blocks, post).
std::vector<LayerPlan> planLayers(const std::vector<CheckpointTensor>& tensors);

}  // namespace sli

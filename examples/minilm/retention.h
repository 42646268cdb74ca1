// Retention of all-MiniLM-L6-v2 under each quantization mode: the pieces minilm_eval and the
// tests share (reference data, per-mode caches, streamed and in-memory runs, metrics).
//
// Reference: tests/golden/minilm/reference.json (sentences, token ids from the model's own
// tokenizer) and reference.f32 (sentence-transformers' embeddings), written by
// tests/golden/make_minilm_reference.py. Weights: tests/data/minilm/ (scripts/fetch_minilm.sh).
//
// Caches: buildCache() runs the same ingestion as `sli quantize` (default skips: embeddings and
// norms kept in the compute dtype; the mixed preset through useAdaptivePolicy) into
// CACHE_ROOT/<mode name>/, reusing a complete cache.
//
// Blocking: everything runs on the calling thread (plus kernel / matmul threads). Errors:
// Status naming the file, mode or layer.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "bert_encoder.h"
#include "sli/config.h"
#include "sli/engine.h"
#include "sli/status.h"

namespace sli::minilm {

struct Reference {
    std::vector<std::string> sentences;
    TokenBatch tokens;
    int64_t dim = 0;
    std::vector<float> embeddings;  // [sentences][dim]
    std::string weightsSha256;
};
// Reads DIR/reference.json and DIR/reference.f32.
Result<Reference> loadReference(const std::string& dir);

// One row of the retention table.
struct ModeSpec {
    std::string name;  // "nf4", "nf4_nodq", "mixed", ...
    QuantizationConfig config;
    bool mixedPreset = false;  // getMixedPrecisionConfig(), as `sli quantize --preset mixed`
    std::string description;
};
// fp32 (the baseline: NONE, f32), then NONE f16, INT8, INT8_DYNAMIC, NF4 (double quant),
// NF4 without double quant, FP4, INT4, and mixed (the seed's get_mixed_precision_config():
// NF4 base and FFN, INT8 attention; what `sli quantize --preset mixed` writes).
std::vector<ModeSpec> standardModes();
Result<ModeSpec> findMode(const std::string& name);

struct CacheInfo {
    std::string root;  // what Engine / LayerCache open
    std::string modelId;
    int64_t layers = 0;
    uint64_t cacheBytes = 0;
    uint64_t weights = 0;
};
// Quantizes MODEL_DIR/model.safetensors per `mode` into CACHE_ROOT/<mode.name>.
Result<CacheInfo> buildCache(const std::string& modelDir, const std::string& cacheRoot,
                             const ModeSpec& mode, int threads);

// One forward pass streamed through an Engine opened on `cache` with `engineOptions`
// (cacheDir / modelId filled in; computeDType defaults to f32).
Result<EncoderOutput> runStreamed(BertEncoder& encoder, const CacheInfo& cache,
                                  const TokenBatch& batch, EngineOptions engineOptions,
                                  const EncoderOptions& options);
// Every layer of `cache` read with LayerCache and dequantized up front with
// LayerQuantizer::dequantizeLayer to `dtype`.
Result<std::vector<Layer>> loadDequantized(const CacheInfo& cache, DType dtype, int threads);

struct Retention {
    double meanCosine = 0, minCosine = 0;
    double nnAgreement = 0;          // share of sentences whose nearest neighbour is the baseline's
    std::vector<double> stageRelL2;  // ||h - h_base|| / ||h_base|| per stage
};
double cosine(const float* a, const float* b, int64_t n);
// Nearest neighbour (cosine, excluding itself) of every row of [rows][dim].
std::vector<int64_t> nearestNeighbours(const std::vector<float>& emb, int64_t dim);
Retention compareOutputs(const EncoderOutput& baseline, const EncoderOutput& out);

}  // namespace sli::minilm

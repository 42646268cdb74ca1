// A small CPU executor for BERT encoders (all-MiniLM-L6-v2 and its kin) whose weights arrive
// layer by layer from sli::Engine::acquire, just in time, or from layers already in memory.
//
// The forward pass is Hugging Face BertModel's (absolute positions, post-LayerNorm):
//   embeddings: word[id] + position[p] + token_type[0], LayerNorm;
//   per encoder layer: Q/K/V projections, scaled dot-product attention per head with softmax
//   over the sequence's own tokens, output projection, residual + LayerNorm; FFN with GELU in
//   its erf form (HF "gelu"), residual + LayerNorm;
//   sentence embedding: mean over the sequence's tokens (the attention mask), then, as
//   sentence-transformers' Normalize module does, L2 normalization.
// Sequences are packed without padding: each attends to its own tokens only, which is what the
// padded computation with an attention mask produces (masked keys get probability 0).
//
// Which tensors belong where is read from their names, not from the cache's layer indices:
// "...embeddings.<part>" feeds the embeddings, "...encoder.layer.<N>.<part>" encoder layer N
// (a "bert." prefix is allowed); anything else (the pooler) is ignored. A cache layer may hold
// several of these groups; they run in model order, and encoder layers must arrive in order.
// Tensors of any float dtype are widened to f32; all arithmetic is f32 (LayerNorm and pooling
// statistics in double). The same inputs and tensors give bitwise the same outputs, whatever
// the thread count (rows are split between threads, never a reduction).
//
// Ownership and blocking: run() borrows the LayerSource's tensors only for the duration of
// the callback that receives them; everything it keeps is copied. run() blocks the calling
// thread (plus `threads` - 1 helper threads per matrix product). A BertEncoder is not
// thread-safe; use one per thread.
//
// Errors: Status InvalidArgument naming the tensor for a missing tensor, a wrong shape, a token
// id out of range, a sequence longer than the position table, or layers out of order.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sli/engine.h"
#include "sli/status.h"
#include "sli/tensor.h"

namespace sli::minilm {

struct BertConfig {
    int64_t hiddenSize = 384;
    int64_t numHeads = 12;
    int64_t intermediateSize = 1536;
    int64_t numLayers = 6;
    int64_t maxPositions = 512;
    int64_t vocabSize = 30522;
    double layerNormEps = 1e-12;

    // Reads a Hugging Face config.json (hidden_size, num_attention_heads, ...). NotSupported
    // for hidden_act other than "gelu" or position_embedding_type other than "absolute".
    static Result<BertConfig> fromFile(const std::string& configJsonPath);
};

// Token ids per sequence, [CLS] ... [SEP], unpadded (token type 0 throughout).
struct TokenBatch {
    std::vector<std::vector<int32_t>> ids;
    int64_t totalTokens() const;
};

struct EncoderOutput {
    int64_t hiddenSize = 0;
    // [sequences][hiddenSize] sentence embeddings (normalized when asked).
    std::vector<float> embeddings;
    // With keepHiddenStates: the packed hidden states [totalTokens][hiddenSize] after the
    // embeddings (stage 0) and after each encoder layer (stage 1 + N), named in stageNames.
    std::vector<std::vector<float>> hiddenStates;
    std::vector<std::string> stageNames;
};

// Hands cache layer k to a callback for the duration of the call.
class LayerSource {
public:
    virtual ~LayerSource() = default;
    virtual int64_t numLayers() const = 0;
    virtual Status withLayer(int64_t k, const std::function<Status(const Layer&)>& fn) = 0;
};

// Layer k is Engine::acquire(k); the lease is released when the callback returns.
class EngineLayerSource final : public LayerSource {
public:
    explicit EngineLayerSource(Engine& engine) : engine_(engine) {}
    int64_t numLayers() const override { return engine_.numLayers(); }
    Status withLayer(int64_t k, const std::function<Status(const Layer&)>& fn) override;

private:
    Engine& engine_;
};

// Layer k is layers[k] (borrowed; must outlive the source).
class MemoryLayerSource final : public LayerSource {
public:
    explicit MemoryLayerSource(const std::vector<Layer>& layers) : layers_(layers) {}
    int64_t numLayers() const override { return static_cast<int64_t>(layers_.size()); }
    Status withLayer(int64_t k, const std::function<Status(const Layer&)>& fn) override;

private:
    const std::vector<Layer>& layers_;
};

struct EncoderOptions {
    bool normalize = true;          // L2-normalize sentence embeddings
    bool keepHiddenStates = false;  // copy every stage's hidden states into the output
    int threads = 1;                // threads per matrix product
};

class BertEncoder {
public:
    explicit BertEncoder(BertConfig config) : config_(config) {}
    const BertConfig& config() const noexcept { return config_; }

    // One forward pass of `batch`, taking layers 0..source.numLayers()-1 in order.
    Result<EncoderOutput> run(const TokenBatch& batch, LayerSource& source,
                              const EncoderOptions& options = {});

private:
    struct Pass;
    Status embed(Pass& pass, const Layer& layer, const std::string& prefix);
    Status encoderLayer(Pass& pass, const Layer& layer, const std::string& prefix);

    BertConfig config_;
};

}  // namespace sli::minilm

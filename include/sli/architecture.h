// Architecture registry: how a checkpoint's tensor names map onto transformer layers.
//
// For the model families the engine knows (Llama / Mistral / Qwen2, GPT-2, BERT, OPT) it says,
// for each tensor name, where the tensor runs (before layer 0, in layer N, or after the last
// layer), what role it plays (attention, FFN, norm, embedding, head, other) and whether it is
// kept unquantized by default (embeddings, heads such as lm_head / pooler, norms; in the Llama
// family also biases, stacked MoE expert biases such as gpt-oss's mlp.experts.gate_up_proj_bias
// included, and MoE routers: mlp.router, mlp.gate, block_sparse_moe.gate). Names it
// does not recognize fall back to the seed's keyword rules (attn, attention, query, key, value,
// qkv -> attention; ffn, mlp, feedforward, fc -> FFN; a dotted integer component is the layer
// index). groupIntoLayers() turns a checkpoint's tensor names into the ordered layer groups the
// cache stores and the engine streams: pre-layer tensors first, blocks in numeric order, then
// post-layer tensors.
//
// Recognized names (an optional prefix in brackets):
//   Llama family  [model.]embed_tokens, [model.]layers.N.{self_attn,mlp,block_sparse_moe,
//                 input_layernorm,post_attention_layernorm}.*, [model.]norm, lm_head
//                 (also Mixtral, Qwen2-MoE and gpt-oss)
//   GPT-2         [transformer.]{wte,wpe}, [transformer.]h.N.{attn,mlp,ln_1,ln_2}.*,
//                 [transformer.]ln_f, lm_head
//   BERT          [bert.]embeddings.*, [bert.]encoder.layer.N.{attention,intermediate,output}.*,
//                 [bert.]pooler.*, cls.* (sentence-transformers checkpoints have no prefix)
//   OPT           [model.]decoder.{embed_tokens,embed_positions,project_in}, [model.]decoder.
//                 layers.N.{self_attn,self_attn_layer_norm,fc1,fc2,final_layer_norm}.*,
//                 [model.]decoder.{final_layer_norm,project_out}, lm_head
//
// Everything here is a pure function of its arguments: thread-safe, never blocks. Errors are
// Status values naming the tensor or config key concerned.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sli/json.h"
#include "sli/status.h"

namespace sli {

enum class Architecture : uint8_t {
    kUnknown = 0,
    kLlama,    // also what name-based detection reports for Mistral and Qwen2 (same names)
    kMistral,
    kQwen2,
    kGpt2,
    kBert,
    kOpt,
};

// "unknown", "llama", "mistral", "qwen2", "gpt2", "bert", "opt" (the HF model_type spelling).
const char* architectureName(Architecture a) noexcept;

enum class TensorRole : uint8_t { kAttention, kFfn, kNorm, kEmbedding, kHead, kOther };
// "attention", "ffn", "norm", "embedding", "head", "other".
const char* tensorRoleName(TensorRole r) noexcept;

// Where a tensor runs relative to the transformer blocks.
enum class LayerPosition : uint8_t {
    kPre,    // embeddings and anything else before block 0
    kBlock,  // inside block `layerIndex`
    kPost,   // final norm, lm_head, pooler, MLM head: after the last block
};

struct TensorPlacement {
    Architecture architecture = Architecture::kUnknown;  // the rules that matched
    bool recognized = false;          // false: the seed keyword fallback decided
    LayerPosition position = LayerPosition::kPost;
    int64_t layerIndex = -1;          // block number for kBlock, -1 otherwise
    TensorRole role = TensorRole::kOther;
    bool keepUnquantized = false;     // embeddings, heads, norms (and Llama biases, routers)
    std::string layerName;            // e.g. "model.layers.3"; "pre" / "post" outside blocks
};

// Classifies one tensor name. With kUnknown the rules of every known family are tried in
// turn (the first that recognizes the name wins), then the keyword fallback; with a specific
// architecture only its rules are tried before the fallback (Mistral / Qwen2 use Llama's).
TensorPlacement classifyTensor(std::string_view tensorName,
                               Architecture arch = Architecture::kUnknown);

// The seed's keyword rules alone (lower-cased substring match, attention keywords first).
TensorRole classifyByKeywords(std::string_view tensorName);

// The family whose rules recognize most of `tensorNames` (ties go to the earlier family in
// the enum); kUnknown when none recognizes at least one name.
Architecture detectArchitecture(std::span<const std::string> tensorNames);

// From a Hugging Face config.json: "model_type" first, then the "architectures" list
// (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel, BertModel,
// OPTForCausalLM, ...). kUnknown when it names a family not listed here; InvalidArgument when
// the JSON is not an object or those keys have the wrong type.
Result<Architecture> architectureFromConfig(const Json& config);
Result<Architecture> architectureFromConfigText(std::string_view configJson);

struct LayerGroup {
    std::string name;    // "pre", "<prefix>.N" for a block (e.g. "model.layers.3"), "post"
    int64_t index = 0;   // position in execution order (0 = first group)
    LayerPosition position = LayerPosition::kBlock;
    int64_t layerIndex = -1;  // block number, -1 for pre / post
    std::vector<std::string> tensorNames;  // in input order
};

// Groups tensor names into execution-ordered layers: one "pre" group (omitted when empty),
// one group per block in numeric block order, one "post" group (omitted when empty). With
// kUnknown the architecture is detected first. InvalidArgument naming the tensor for an empty
// or duplicate name. An empty input gives an empty list.
Result<std::vector<LayerGroup>> groupIntoLayers(std::span<const std::string> tensorNames,
                                                Architecture arch = Architecture::kUnknown);

}  // namespace sli

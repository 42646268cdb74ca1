// Ingestion: a safetensors checkpoint (one file, a directory, or a sharded index) in, a layer
// cache out. What `sli quantize` runs.
//
// Tensors are grouped into layers by the architecture registry (sli/architecture.h:
// detectArchitecture, then groupIntoLayers with that family's rules) in execution order: the
// pre-layer tensors (embeddings) as one group "pre" first, then the blocks in numeric order
// (named as the registry names them, e.g. "model.layers.3"), then the post-layer tensors
// (final norm, lm_head, pooler) as one group "post" last; a group's cache layer index is its
// position in that order (0 = "pre" when there is one). Each layer is read and quantized one
// tensor at a time (the source bytes of one tensor in a reused buffer, which the kernels read
// as they are: see kernels::quantize), then written (atomically, fsynced) to
// ROOT/<model>/<fingerprint>/ on a writer thread while the next layer is quantized; the layer
// after that waits for the write. So memory stays bounded by about two quantized layers and
// one tensor's source bytes (for an FP8 weight with scales, its f32 values besides; for an
// MXFP4 weight, its bf16 values: 4.25 GB for gpt-oss-120b's largest expert tensor). A layer
// counts as done (progress, summary) once its file is complete. A manifest listing every
// expected layer is written first. Layers already present and complete for the same source are
// reused, so rerunning an interrupted command finishes it.
//
// Which tensors are quantized, and how: every plain tensor goes through an AdaptiveQuantizer
// (sli/quantizer.h) set to the detected architecture. Attention tensors use attentionConfig,
// FFN tensors ffnConfig (each defaulting to `config`), everything else `config`; the
// LayerQuantizer rules then keep 0-D / 1-D, integer (verbatim) and skipped tensors
// (config.llmInt8SkipModules, i.e. `--skip`) unquantized. With defaultSkips, the tensors the
// registry keeps unquantized for a known architecture (embeddings, heads such as lm_head /
// pooler, norms, buffers) stay mode NONE too; --skip adds to them. A checkpoint of no known
// architecture has no default skips. INT4 tensors whose rows are not a multiple of 32 are kept
// (one warning each). FP8 weights with a scale tensor and MXFP4 weights are decoded to their
// values first (see CheckpointTensor); FP8 tensors without one are kept verbatim.
//
// GPT-2 Conv1D weights (transformer.h.N.{attn.c_attn, attn.c_proj, attn.q_attn, mlp.c_fc,
// mlp.c_proj}.weight) are stored [in, out]. Like Hugging Face's bitsandbytes integration,
// ingestion transposes each one that gets quantized to [out, in] first, so rows are output
// channels (what INT8's per-row absmax and the exported bitsandbytes layout mean); the cache
// then records, and the engine hands out, shape [out, in]. Such weights kept unquantized
// (mode NONE) stay [in, out] as stored.
//
// The cache directory's fingerprint is the config's, unless a policy beyond the config applies
// (an adaptive attention / FFN config, or defaultSkips off): then ingestPolicyJson() is
// recorded in the manifest and folded into the fingerprint (LayerCache::fingerprint), so a
// "mixed" cache and a plain nf4 one never share a directory. The manifest also records the
// detected architecture.
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

#include "sli/architecture.h"
#include "sli/config.h"
#include "sli/quantized.h"
#include "sli/quantizer.h"
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
    // Default: the input directory's name (trailing slashes ignored, "." / ".." resolved), or a
    // file's directory's name (the file name when that is "."). InvalidArgument when none.
    std::string modelId;
    QuantizationConfig config;
    // The adaptive policy (the "mixed" preset, see useAdaptivePolicy): attention / FFN tensors
    // use these configs; unset: `config`.
    std::optional<QuantizationConfig> attentionConfig;
    std::optional<QuantizationConfig> ffnConfig;
    bool defaultSkips = true;
    bool compressPayload = false;
    int threads = 1;
    // CUDA device that quantizes NF4 / FP4 / INT8 tensors (`sli quantize --device cuda:N`);
    // -1: the CPU. The cache bytes are the same either way (LayerQuantizer::setDevice). A device
    // that is not available is refused up front (NotSupported), before any file is written.
    int device = -1;
    // Layers that would be reused are first verified in full (every checksum, decompression,
    // zero padding: what `sli verify` checks). One whose data is damaged (Corruption or
    // NotSupported) is quantized and written again, with a warning naming it and the damage,
    // and counted in IngestSummary::layersRepaired; a file that cannot be read (permissions,
    // I/O errors) is an error. Off: only a layer's index is read (a few KiB), so damaged data
    // is found when the layer is streamed (acquire fails naming it) or by `sli verify`.
    bool verifyReused = false;
    // The warning for each layer file that is there but damaged or unreadable and is written
    // again. Off where the caller has said so already (sli::Processor's repairs while
    // streaming name the layer and the damage the engine met).
    bool warnRewrites = true;
    // Non-empty: only these cache layer indices are looked at (reused, verified with
    // verifyReused, or written); the others are left as they are, unread, and the manifest is
    // not rewritten. For repairing single layers of an existing cache (sli::Processor, while
    // streaming): the cache's manifest must exist and name the same source, by fingerprint, or
    // the call fails (InvalidArgument) before anything is written, so a changed checkpoint
    // is never mixed into a cache made from another. An index the plan does not have is
    // InvalidArgument.
    std::vector<int64_t> onlyLayers;
    std::function<void(const IngestProgress&)> progress;  // called after each layer
};

// Takes base, attention and FFN configs from `quantizer` (e.g. getMixedPrecisionConfig(): base
// NF4, attention INT8, FFN NF4).
void useAdaptivePolicy(IngestOptions& options, const AdaptiveQuantizer& quantizer);
// The policy beyond `options.config` as compact JSON, {"attention": {config}, "ffn": {config},
// "default_skips": bool} (the config keys only when adaptive); "" when there is none (no
// adaptive configs, default skips on).
std::string ingestPolicyJson(const IngestOptions& options);

struct IngestSummary {
    std::string cacheDir;
    std::string modelId;
    Architecture architecture = Architecture::kUnknown;  // what the registry detected
    size_t layers = 0;
    size_t layersWritten = 0;
    size_t layersReused = 0;
    size_t layersRepaired = 0;  // damaged layers written again (verifyReused); in layersWritten
    size_t tensors = 0;
    size_t importedBnbTensors = 0;
    // FP8 (F8_E4M3 / F8_E5M2) weights that came with a scale tensor (see CheckpointTensor):
    // widened, multiplied by their scales and then quantized (or converted) like any float
    // tensor; the scale tensor is not kept.
    size_t fp8TensorsScaled = 0;
    // FP8 tensors without a scale tensor, kept as stored whatever the mode: their values are
    // not quantized further and the engine hands them out as FP8. A warning says so when a
    // quantizing mode was asked for.
    size_t fp8TensorsKept = 0;
    // MXFP4 weights (blocks + scales, see CheckpointTensor): decoded to bf16, exactly, then
    // quantized (or converted) like any bf16 tensor; the blocks and scales are not kept.
    size_t mxfp4TensorsDecoded = 0;
    uint64_t sourceBytes = 0;
    uint64_t cacheBytes = 0;   // file bytes of the cache's layer files
    uint64_t storedBytes = 0;  // bytes of the quantized parts
    uint64_t weights = 0;      // elements of all tensors
    double seconds = 0;
};

Result<IngestSummary> ingestCheckpoint(const IngestOptions& options);

// The options that made the cache directory `cacheDir` (ROOT/<model dir>/<fingerprint>), read
// back from its manifest: the source checkpoint, model id, config and policy (attention / FFN
// configs, default skips), with payload compression as the directory's first readable layer
// file has it and verifyReused on. ingestCheckpoint(result) then rewrites exactly that
// directory's missing and damaged layers: what `sli verify --repair` runs. Errors:
// InvalidArgument when the manifest does not lead back to `cacheDir` (a cache moved or renamed
// by hand), holds an unreadable config, or the source's fingerprint is no longer the one the
// cache was made from; NotFound when the source checkpoint is gone.
Result<IngestOptions> ingestOptionsForCache(const std::string& cacheDir);

// Whether `name` (of a `dims`-D tensor) is a GPT-2 Conv1D weight of `arch`: stored [in, out],
// transposed to [out, in] by ingestion when it is quantized (see above).
bool isGpt2Conv1DWeight(Architecture arch, std::string_view name, size_t dims);

// How an FP8 weight, seen as `matrices` matrices [rows, cols], maps to its scale tensor: the
// scale of element (m, r, c) is scale[m * matrixStride + (r / blockRows) * scaleCols +
// c / blockCols] (per tensor: matrixStride 0 and one block per matrix).
struct Fp8ScaleLayout {
    int64_t matrices = 1, rows = 1, cols = 1;
    int64_t blockRows = 1, blockCols = 1;
    int64_t scaleCols = 1;
    int64_t matrixStride = 0;
};

// One logical tensor of a checkpoint: a plain tensor, the set of tensors bitsandbytes
// writes for one quantized weight, or an FP8 weight with its scale tensor.
//
// FP8 scales (kFp8Scaled): an F8_E4M3 / F8_E5M2 tensor W with a tensor named W + "_scale_inv"
// (DeepSeek-V3 / Qwen3 "fp8" checkpoints: one scale per block of weight_block_size, 128 x 128)
// or W + "_scale" (compressed-tensors / FBGEMM: one per tensor or per output row). Either way
// the value is fl32(fp8 * scale). The scale is F32, BF16 or F16, and its shape says the layout.
// For a weight [L..., R, C] (L: leading dims, e.g. stacked experts; none for a matrix): one
// element (per tensor), [L...] (per matrix), [L..., R] or [L..., R, 1] (per row), or
// [L..., ceil(R / br), ceil(C / bc)] (per block of br x bc: config.json's weight_block_size
// when it has one, else the powers of two that fit). A weight of fewer than 2 dims takes one
// element only.
//
// MXFP4 (kMxfp4; OCP Microscaling, as gpt-oss stores its MoE experts): a U8 tensor W + "_blocks"
// (Hugging Face) or W + ".blocks" (the original release) of shape [P..., G, 16] with a U8 tensor
// W + "_scales" / W + ".scales" of shape [P..., G] beside it. Each group of 16 bytes holds 32
// E2M1 values, element 2k in the low nibble of byte k and 2k + 1 in the high one, and its scale
// byte s is E8M0: the value is e2m1 * 2^(s - 127). The logical weight is W, [P..., G * 32], as
// the blocks lay it out (for gpt-oss's gate_up_proj [E, 2 * I, H]: output rows, input columns;
// Hugging Face's GptOssExperts module holds the transpose). Every such value is a bf16 value,
// so W is decoded to bf16 exactly and quantized from there. A scale of 0xFF (NaN) or a value
// beyond bf16's range is refused naming the scale tensor and the group. The pair is taken only
// when both tensors are U8; `main` is the blocks tensor and `scale` the scales tensor.
struct CheckpointTensor {
    enum class Kind { kPlain, kBnb4, kBnb8, kFp8Scaled, kMxfp4 };
    Kind kind = Kind::kPlain;
    std::string name;  // the weight's name ("P.weight" for bitsandbytes, W for MXFP4)
    const SafetensorsModel::Entry* main = nullptr;
    const SafetensorsModel::Entry* absmax = nullptr;  // 4-bit absmax or 8-bit SCB
    const SafetensorsModel::Entry* quantMap = nullptr;
    const SafetensorsModel::Entry* nestedAbsmax = nullptr;
    const SafetensorsModel::Entry* nestedQuantMap = nullptr;
    const SafetensorsModel::Entry* quantState = nullptr;  // 4-bit JSON
    const SafetensorsModel::Entry* weightFormat = nullptr;  // 8-bit
    const SafetensorsModel::Entry* scale = nullptr;  // FP8; MXFP4: the scales tensor
    Fp8ScaleLayout fp8Layout;                        // FP8: how `scale` applies
    uint64_t sourceBytes() const;
};

// weight_block_size [rows, cols] from the `quantization_config` of an FP8 checkpoint's
// config.json. When it is known, a per-block scale grid must match it exactly; without it the
// block is inferred from the shapes as the power of two that fits, which cannot tell a
// non-power-of-two block (e.g. 120 rows) from the next power of two when both fit.
struct Fp8BlockSize {
    int64_t rows = 0, cols = 0;
};
// The config.json beside checkpoint `input` (the directory itself, or the directory of a file
// or index): nullopt when there is none or it has no quantization_config.weight_block_size;
// InvalidArgument naming the file when it is not JSON or that key is not two positive integers.
Result<std::optional<Fp8BlockSize>> fp8BlockSizeFromConfig(const std::string& input);

// InvalidArgument naming both tensors when the scale's dtype or shape fits no layout above
// (or, with `block`, a per-block grid that is not the one of that block size).
Result<Fp8ScaleLayout> fp8ScaleLayout(const SafetensorsTensorInfo& weight,
                                      const SafetensorsTensorInfo& scale,
                                      std::optional<Fp8BlockSize> block = std::nullopt);
// fl32(fp8 * scale) for every element of `fp8` (dtype F8_E4M3 or F8_E5M2), into out, rows
// split over up to `threads` threads (kernels::parallelRanges).
void applyFp8Scales(DType fp8Type, const uint8_t* fp8, const float* scales,
                    const Fp8ScaleLayout& layout, float* out, int threads = 1);

// MXFP4 (see CheckpointTensor). The weight's shape: blocks [P..., G, 16] -> [P..., G * 32].
std::vector<int64_t> mxfp4WeightShape(const SafetensorsTensorInfo& blocks);
// InvalidArgument naming both tensors, their shapes and dtypes unless blocks is U8
// [P..., G, 16] with G > 0 and scales is U8 [P..., G].
Status checkMxfp4Pair(const SafetensorsTensorInfo& blocks, const SafetensorsTensorInfo& scales);
// Decodes `groups` groups (16 bytes of `blocks` and one byte of `scales` each: 32 values) to
// bf16 bits in `out`, exactly, on up to `threads` threads (kernels::parallelRanges). Returns
// the index of the first group whose scale is 0xFF (NaN) or one of whose values is beyond
// bf16's range (|v| >= 2^128); `out` then holds no promised values. -1 when every group
// decoded.
int64_t decodeMxfp4ToBf16(const uint8_t* blocks, const uint8_t* scales, int64_t groups,
                          uint16_t* out, int threads = 1);

// Where an FP8 checkpoint's block size comes from: called at most once, when the first FP8
// weight with a scale tensor is met (ingestion reads config.json then, not for other models).
using Fp8BlockSizeSource = std::function<Result<std::optional<Fp8BlockSize>>()>;

// Groups a checkpoint's tensors into logical tensors (bitsandbytes sets, FP8 weights with
// their scales and MXFP4 blocks with their scales merged), in checkpoint order.
// InvalidArgument for an incomplete bitsandbytes set, an FP8 scale that fits no layout
// (fp8ScaleLayout, with the block size of `fp8Block`; none: inferred from the shapes), an
// MXFP4 pair of the wrong shapes (checkMxfp4Pair) or one whose weight name W is also a tensor
// of its own; fp8Block's error, if it fails.
Result<std::vector<CheckpointTensor>> collectCheckpointTensors(
    const SafetensorsModel& model, const Fp8BlockSizeSource& fp8Block = {});

// Reads a bitsandbytes set as a QuantizedTensor, bytes as they are.
Result<QuantizedTensor> importBnbTensor(const SafetensorsModel& model, const CheckpointTensor& t,
                                        const QuantizationConfig& config);

struct LayerPlan {
    std::string name;   // "pre", the block's name (e.g. "model.layers.3"), or "post"
    int64_t index = 0;  // cache layer index = position in execution order
    std::vector<size_t> tensors;  // indices into the CheckpointTensor list, checkpoint order
};
// Execution-ordered layer groups (pre, blocks, post) from groupIntoLayers(); kUnknown: the
// architecture is detected from the names. InvalidArgument for an empty or duplicate name.
Result<std::vector<LayerPlan>> planLayers(const std::vector<CheckpointTensor>& tensors,
                                          Architecture arch = Architecture::kUnknown);

}  // namespace sli

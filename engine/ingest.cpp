// Checkpoint ingestion; see engine/ingest.h.
#include "engine/ingest.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <system_error>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "io/cache_format.h"
#include "io/cache_manifest.h"
#include "io/file.h"
#include "sli/cache.h"
#include "sli/cuda.h"
#include "sli/json.h"
#include "sli/kernels.h"
#include "sli/log.h"
#include "sli/tensor.h"

namespace sli {
namespace {

bool endsWith(std::string_view s, std::string_view suf) {
    return s.size() >= suf.size() && s.substr(s.size() - suf.size()) == suf;
}

}  // namespace

bool isGpt2Conv1DWeight(Architecture arch, std::string_view name, size_t dims) {
    if (arch != Architecture::kGpt2 || dims != 2 || !endsWith(name, ".weight")) return false;
    const TensorPlacement p = classifyTensor(name, arch);
    if (!p.recognized || p.position != LayerPosition::kBlock) return false;
    const std::string_view module = name.substr(0, name.size() - std::strlen(".weight"));
    for (std::string_view m : {".attn.c_attn", ".attn.c_proj", ".attn.q_attn", ".mlp.c_fc",
                               ".mlp.c_proj"}) {
        if (endsWith(module, m)) return true;
    }
    return false;
}

namespace {

// [rows, cols] -> [cols, rows], elements of `esz` bytes.
void transposeBytes(const uint8_t* in, int64_t rows, int64_t cols, size_t esz, uint8_t* out) {
    constexpr int64_t kTile = 32;
    for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
        for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
            const int64_t r1 = std::min(rows, r0 + kTile), c1 = std::min(cols, c0 + kTile);
            for (int64_t r = r0; r < r1; ++r) {
                for (int64_t c = c0; c < c1; ++c) {
                    std::memcpy(out + (c * rows + r) * esz, in + (r * cols + c) * esz, esz);
                }
            }
        }
    }
}

bool isFloatSource(DType d) {
    return d == DType::kF16 || d == DType::kBF16 || d == DType::kF32 || d == DType::kF64;
}

Result<Json> readJsonTensor(const SafetensorsModel& model, const SafetensorsModel::Entry& e) {
    std::vector<uint8_t> b(e.info->nbytes());
    SLI_RETURN_IF_ERROR(model.readTensor(e, b));
    auto j = parseJson(std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
    if (!j.isOk()) {
        return Status::invalidArgument("tensor " + e.info->name + ": quant_state is not JSON: " +
                                       j.status().message());
    }
    return j;
}

Status readPart(const SafetensorsModel& model, const SafetensorsModel::Entry* e,
                AlignedBuffer& out) {
    if (e == nullptr) return Status();
    SLI_ASSIGN_OR_RETURN(out, AlignedBuffer::allocate(e->info->nbytes(), false));
    return model.readTensor(*e, out.bytes());
}

// How plain tensors are quantized: the adaptive quantizer for the detected architecture.
struct TensorPolicy {
    Architecture arch = Architecture::kUnknown;
    AdaptiveQuantizer quantizer;
    DType computeDType = DType::kF16;
    int threads = 1;  // for the decoders before quantizing (FP8 scales, MXFP4), as the kernels
};

// Grows `scratch` to at least `bytes` (the old buffer goes first: peak memory is one tensor).
Status growScratch(AlignedBuffer& scratch, size_t bytes) {
    if (scratch.size() >= bytes) return Status();
    scratch = AlignedBuffer();
    SLI_ASSIGN_OR_RETURN(scratch, AlignedBuffer::allocate(bytes, false));
    return Status();
}

Result<QuantizedTensor> quantizeFp8Scaled(const SafetensorsModel& model, const CheckpointTensor& t,
                                          const std::string& layerName,
                                          const TensorPolicy& policy, AlignedBuffer& scratch);
Result<QuantizedTensor> quantizeMxfp4(const SafetensorsModel& model, const CheckpointTensor& t,
                                      const std::string& layerName, const TensorPolicy& policy,
                                      AlignedBuffer& scratch);
Result<QuantizedTensor> quantizeValues(const CheckpointTensor& t, DType dtype,
                                       std::vector<int64_t> shape, std::span<uint8_t> raw,
                                       const std::string& layerName, const TensorPolicy& policy);

// `scratch` holds the source bytes between tensors: it only grows, so the pages a read lands in
// are faulted in once per run rather than once per tensor (a fresh buffer per tensor cost the
// kernel a page fault and a zeroed page for every 4 KiB of the checkpoint).
Result<QuantizedTensor> quantizePlain(const SafetensorsModel& model, const CheckpointTensor& t,
                                      const std::string& layerName, const TensorPolicy& policy,
                                      AlignedBuffer& scratch) {
    const SafetensorsTensorInfo& src = *t.main->info;
    if (t.kind == CheckpointTensor::Kind::kFp8Scaled) {
        return quantizeFp8Scaled(model, t, layerName, policy, scratch);
    }
    if (t.kind == CheckpointTensor::Kind::kMxfp4) {
        return quantizeMxfp4(model, t, layerName, policy, scratch);
    }
    if (src.dtype == DType::kF8E4M3 || src.dtype == DType::kF8E5M2) {
        // Without its scales an FP8 tensor's values mean nothing alone: kept as stored.
        SLI_ASSIGN_OR_RETURN(AlignedBuffer stored, AlignedBuffer::allocate(src.nbytes(), false));
        SLI_RETURN_IF_ERROR(model.readTensor(*t.main, stored.bytes()));
        QuantizedTensor qt;
        qt.info.name = t.name;
        qt.info.shape = src.shape;
        qt.info.sourceDType = src.dtype;
        qt.info.storedDType = src.dtype;
        qt.info.computeDType = policy.computeDType;
        qt.info.mode = QuantizationMode::kNone;
        qt.part(QuantPart::kPayload) = std::move(stored);
        return qt;
    }
    SLI_RETURN_IF_ERROR(growScratch(scratch, src.nbytes()).withContext("tensor " + t.name));
    std::span<uint8_t> raw = scratch.bytes().first(src.nbytes());
    SLI_RETURN_IF_ERROR(model.readTensor(*t.main, raw));
    return quantizeValues(t, src.dtype, src.shape, raw, layerName, policy);
}

// The FP8 weight with its scales applied, as f32 in `scratch`, then as quantizePlain.
Result<QuantizedTensor> quantizeFp8Scaled(const SafetensorsModel& model, const CheckpointTensor& t,
                                          const std::string& layerName,
                                          const TensorPolicy& policy, AlignedBuffer& scratch) {
    const SafetensorsTensorInfo& w = *t.main->info;
    const SafetensorsTensorInfo& sc = *t.scale->info;
    const Fp8ScaleLayout& layout = t.fp8Layout;
    const int64_t n = layout.matrices * layout.rows * layout.cols;
    // scratch: the f32 values, then the FP8 bytes they come from (one buffer, reused)
    const size_t valueBytes = static_cast<size_t>(n) * sizeof(float);
    SLI_RETURN_IF_ERROR(growScratch(scratch, valueBytes + static_cast<size_t>(n)).withContext("FP8 tensor " + t.name));
    const std::span<uint8_t> fp8 = scratch.bytes().subspan(valueBytes, static_cast<size_t>(n));
    SLI_RETURN_IF_ERROR(model.readTensor(*t.main, fp8));
    AlignedBuffer scaleBytes;
    SLI_RETURN_IF_ERROR(readPart(model, t.scale, scaleBytes));
    std::vector<float> scales(sc.nbytes() / dtypeSize(sc.dtype));
    SLI_RETURN_IF_ERROR(convertToF32(sc.dtype, scaleBytes.data(), static_cast<int64_t>(scales.size()), scales.data())
                            .withContext("scale tensor " + sc.name));
    for (size_t i = 0; i < scales.size(); ++i) {
        if (!std::isfinite(scales[i])) {
            return Status::invalidArgument("scale tensor " + sc.name + " of FP8 tensor " + w.name +
                                           ": element " + std::to_string(i) + " is " +
                                           std::to_string(scales[i]) + ", not a finite scale");
        }
    }
    const std::span<uint8_t> raw = scratch.bytes().first(valueBytes);
    applyFp8Scales(w.dtype, fp8.data(), scales.data(), layout, reinterpret_cast<float*>(raw.data()),
                   policy.threads);
    SLI_ASSIGN_OR_RETURN(QuantizedTensor q,
                         quantizeValues(t, DType::kF32, w.shape, raw, layerName, policy));
    q.info.sourceDType = w.dtype;
    return q;
}

// The MXFP4 weight decoded to bf16 in `scratch`, then as quantizePlain.
Result<QuantizedTensor> quantizeMxfp4(const SafetensorsModel& model, const CheckpointTensor& t,
                                      const std::string& layerName, const TensorPolicy& policy,
                                      AlignedBuffer& scratch) {
    const SafetensorsTensorInfo& blocks = *t.main->info;
    const SafetensorsTensorInfo& sc = *t.scale->info;
    const int64_t groups = static_cast<int64_t>(sc.nbytes());  // checkMxfp4Pair: U8 [P..., G]
    // scratch: the bf16 values, then the packed blocks they come from (one buffer, reused)
    const size_t valueBytes = static_cast<size_t>(groups) * 32 * sizeof(uint16_t);
    SLI_RETURN_IF_ERROR(growScratch(scratch, valueBytes + blocks.nbytes()).withContext("MXFP4 weight " + t.name));
    const std::span<uint8_t> packed = scratch.bytes().subspan(valueBytes, blocks.nbytes());
    SLI_RETURN_IF_ERROR(model.readTensor(*t.main, packed));
    AlignedBuffer scaleBytes;
    SLI_RETURN_IF_ERROR(readPart(model, t.scale, scaleBytes));
    const std::span<uint8_t> raw = scratch.bytes().first(valueBytes);
    const int64_t bad = decodeMxfp4ToBf16(packed.data(), scaleBytes.data(), groups,
                                          reinterpret_cast<uint16_t*>(raw.data()), policy.threads);
    if (bad >= 0) {
        const unsigned byte = scaleBytes.data()[bad];
        std::string why = "(scale byte 0xff) is NaN in E8M0";
        if (byte != 0xffu) {
            why = "(scale byte " + std::to_string(byte) + ", 2^";
            why += std::to_string(static_cast<int>(byte) - 127) + ") scales a value beyond the range of bf16 / f32";
        }
        std::string msg = "scales tensor " + sc.name + " of MXFP4 weight " + t.name + ": group ";
        msg += std::to_string(bad) + " (values " + std::to_string(bad * 32) + ".." +
               std::to_string(bad * 32 + 31) + ") " + why;
        return Status::invalidArgument(msg);
    }
    return quantizeValues(t, DType::kBF16, mxfp4WeightShape(blocks), raw, layerName, policy);
}

// Quantizes one tensor of `dtype` values in `raw` (the caller's buffer) by the policy.
Result<QuantizedTensor> quantizeValues(const CheckpointTensor& t, DType dtype,
                                       std::vector<int64_t> shape, std::span<uint8_t> raw,
                                       const std::string& layerName, const TensorPolicy& policy) {
    const std::string fullName = tensorFullName(layerName, t.name);
    const TensorView view{t.name, shape, dtype, raw.data(), raw.size()};
    AlignedBuffer transposedBytes;  // GPT-2 Conv1D weights that get quantized, [out, in]
    if (isGpt2Conv1DWeight(policy.arch, t.name, shape.size())) {
        // The mode is decided on the [out, in] form that gets quantized (INT4 looks at its
        // rows); a weight that stays unquantized is kept [in, out] as stored.
        const std::vector<int64_t> outIn = {shape[1], shape[0]};
        const TensorView transposed{t.name, outIn, dtype, raw.data(), raw.size()};
        if (policy.quantizer.modeFor(transposed, fullName) == QuantizationMode::kNone) {
            QuantizationConfig keep = policy.quantizer.configFor(fullName);
            if (keep.mode == QuantizationMode::kInt4 && isFloatSource(dtype) &&
                !keep.isSkipped(fullName)) {
                SLI_WARN("engine",
                         "tensor %s: rows of %lld values (Conv1D [in, out] transposed) are not a "
                         "multiple of 32, kept in %s instead of int4",
                         fullName.c_str(), static_cast<long long>(shape[0]),
                         dtypeName(keep.computeDType));
            }
            keep.mode = QuantizationMode::kNone;
            auto q = LayerQuantizer(std::move(keep), 1).quantizeTensor(view, fullName);
            if (!q.isOk()) return q.status().withContext("layer " + layerName);
            return q;
        }
        SLI_ASSIGN_OR_RETURN(transposedBytes, AlignedBuffer::allocate(raw.size(), false));
        transposeBytes(raw.data(), shape[0], shape[1], dtypeSize(dtype), transposedBytes.data());
        raw = transposedBytes.bytes();
        std::swap(shape[0], shape[1]);
    }
    // A one-tensor layer over the source bytes: the quantizer sees the group name and the full
    // tensor name exactly as for a whole layer, while memory stays at one tensor.
    SLI_ASSIGN_OR_RETURN(Tensor borrowed, Tensor::borrowed(t.name, shape, dtype, raw.data()));
    Layer one(layerName);
    SLI_RETURN_IF_ERROR(one.add(std::move(borrowed)));
    SLI_ASSIGN_OR_RETURN(QuantizedLayer q, policy.quantizer.quantizeLayer(one, layerName));
    return std::move(q.tensors.front());
}

// The input directory's name, or a file's directory's name (the file name when that is "."):
// trailing slashes are ignored and a directory given as "." or ".." is named by its real path.
// "" when there is no name (the root directory).
std::string defaultModelId(const std::string& input) {
    std::string path = input;
    while (path.size() > 1 && path.back() == '/') path.pop_back();
    if (!io::isDirectory(path)) {
        std::string base = io::baseName(io::dirName(path));
        if (base.empty() || base == "." || base == "/") base = io::baseName(path);
        return base;
    }
    std::string base = io::baseName(path);
    if (base == "." || base == "..") {
        if (char* real = ::realpath(path.c_str(), nullptr)) {
            base = io::baseName(real);
            std::free(real);
        }
    }
    return base == "." || base == ".." || base == "/" ? std::string() : base;
}

}  // namespace

uint64_t CheckpointTensor::sourceBytes() const {
    uint64_t n = 0;
    for (const auto* e : {main, absmax, quantMap, nestedAbsmax, nestedQuantMap, quantState, weightFormat, scale}) {
        if (e != nullptr) n += e->info->nbytes();
    }
    return n;
}

Result<std::vector<CheckpointTensor>> collectCheckpointTensors(const SafetensorsModel& model,
                                                               const Fp8BlockSizeSource& fp8Block) {
    std::unordered_map<std::string, const SafetensorsModel::Entry*> byName;
    for (const auto& e : model.tensors()) byName[e.info->name] = &e;
    auto get = [&](const std::string& n) -> const SafetensorsModel::Entry* {
        auto it = byName.find(n);
        return it == byName.end() ? nullptr : it->second;
    };
    std::unordered_map<std::string, CheckpointTensor> sets;  // weight name -> set
    std::unordered_set<std::string> consumed;
    for (const auto& e : model.tensors()) {
        const std::string& n = e.info->name;
        for (const char* suffix : {".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4"}) {
            if (!endsWith(n, suffix)) continue;
            const std::string w = n.substr(0, n.size() - std::strlen(suffix));
            CheckpointTensor t;
            t.kind = CheckpointTensor::Kind::kBnb4;
            t.name = w;
            t.main = get(w);
            t.absmax = get(w + ".absmax");
            t.quantMap = get(w + ".quant_map");
            t.nestedAbsmax = get(w + ".nested_absmax");
            t.nestedQuantMap = get(w + ".nested_quant_map");
            t.quantState = &e;
            if (t.main == nullptr || t.absmax == nullptr || t.quantMap == nullptr ||
                ((t.nestedAbsmax == nullptr) != (t.nestedQuantMap == nullptr))) {
                return Status::invalidArgument(
                    "bitsandbytes 4-bit tensor " + w + " in " + model.source() +
                    ": incomplete set (needs " + w + ", .absmax, .quant_map and both or none of "
                    ".nested_absmax / .nested_quant_map)");
            }
            for (const auto* p : {t.main, t.absmax, t.quantMap, t.nestedAbsmax, t.nestedQuantMap, t.quantState}) {
                if (p != nullptr) consumed.insert(p->info->name);
            }
            sets[w] = t;
        }
        if (endsWith(n, ".SCB")) {
            const std::string p = n.substr(0, n.size() - 4);
            CheckpointTensor t;
            t.kind = CheckpointTensor::Kind::kBnb8;
            t.name = p + ".weight";
            t.main = get(t.name);
            t.absmax = &e;
            t.weightFormat = get(p + ".weight_format");
            if (t.main == nullptr || t.main->info->dtype != DType::kI8) {
                return Status::invalidArgument("bitsandbytes 8-bit tensor " + n + " in " +
                                               model.source() + ": " + t.name +
                                               " is missing or not I8");
            }
            for (const auto* q : {t.main, t.absmax, t.weightFormat}) {
                if (q != nullptr) consumed.insert(q->info->name);
            }
            sets[t.name] = t;
        }
    }
    // FP8 weights with a scale tensor beside them (see CheckpointTensor)
    std::optional<std::optional<Fp8BlockSize>> block;  // asked of fp8Block once, when needed
    for (const auto& e : model.tensors()) {
        const std::string& n = e.info->name;
        if (e.info->dtype != DType::kF8E4M3 && e.info->dtype != DType::kF8E5M2) continue;
        if (sets.count(n) != 0 || consumed.count(n) != 0) continue;
        const SafetensorsModel::Entry* inv = get(n + "_scale_inv");
        const SafetensorsModel::Entry* plain = get(n + "_scale");
        if (inv == nullptr && plain == nullptr) continue;
        if (inv != nullptr && plain != nullptr) {
            return Status::invalidArgument("FP8 tensor " + n + " in " + model.source() +
                                           ": both " + n + "_scale_inv and " + n +
                                           "_scale are there; which one applies is ambiguous");
        }
        CheckpointTensor t;
        t.kind = CheckpointTensor::Kind::kFp8Scaled;
        t.name = n;
        t.main = &e;
        t.scale = inv != nullptr ? inv : plain;
        if (consumed.count(t.scale->info->name) != 0) continue;
        if (!block) {
            block.emplace();
            if (fp8Block) {
                SLI_ASSIGN_OR_RETURN(*block, fp8Block());
            }
        }
        auto layout = fp8ScaleLayout(*e.info, *t.scale->info, *block);
        if (!layout.isOk()) return layout.status().withContext(model.source());
        t.fp8Layout = *layout;
        consumed.insert(t.scale->info->name);
        sets[n] = t;
    }
    // MXFP4 weights: blocks with their scales (see CheckpointTensor)
    for (const auto& e : model.tensors()) {
        const std::string& n = e.info->name;
        if (e.info->dtype != DType::kU8 || consumed.count(n) != 0) continue;
        std::string w, scalesName;
        for (const auto& [blocksSuffix, scalesSuffix] :
             {std::pair{"_blocks", "_scales"}, std::pair{".blocks", ".scales"}}) {
            if (endsWith(n, blocksSuffix)) {
                w = n.substr(0, n.size() - std::strlen(blocksSuffix));
                scalesName = w + scalesSuffix;
            }
        }
        if (w.empty()) continue;
        const SafetensorsModel::Entry* sc = get(scalesName);
        if (sc == nullptr || sc->info->dtype != DType::kU8 || consumed.count(scalesName) != 0) {
            continue;
        }
        Status pair = checkMxfp4Pair(*e.info, *sc->info);
        if (!pair.isOk()) return pair.withContext(model.source());
        if (get(w) != nullptr) {
            std::string msg = "MXFP4 weight " + w + " in " + model.source() + " (" + n + " + ";
            msg += scalesName + ") is also a tensor of its own; which one is the weight is ambiguous";
            return Status::invalidArgument(msg);
        }
        CheckpointTensor t;
        t.kind = CheckpointTensor::Kind::kMxfp4;
        t.name = w;
        t.main = &e;
        t.scale = sc;
        consumed.insert(scalesName);
        sets[n] = t;
    }
    std::vector<CheckpointTensor> out;
    for (const auto& e : model.tensors()) {
        const std::string& n = e.info->name;
        if (auto it = sets.find(n); it != sets.end()) {
            out.push_back(it->second);
        } else if (consumed.count(n) == 0) {
            CheckpointTensor t;
            t.name = n;
            t.main = &e;
            out.push_back(t);
        }
    }
    return out;
}

namespace {

int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Elements of a parsed tensor (the parser checked its byte range against its shape).
int64_t elementsOf(const SafetensorsTensorInfo& t) {
    return static_cast<int64_t>(t.nbytes() / dtypeSize(t.dtype));
}

int64_t pow2AtLeast(int64_t v) {
    int64_t p = 1;
    while (p < v) p *= 2;
    return p;
}

}  // namespace

Result<Fp8ScaleLayout> fp8ScaleLayout(const SafetensorsTensorInfo& weight,
                                      const SafetensorsTensorInfo& scale,
                                      std::optional<Fp8BlockSize> block) {
    const auto fail = [&](const std::string& why) {
        return Status::invalidArgument("FP8 tensor " + weight.name + " " +
                                       shapeToString(weight.shape) + ": scale tensor " +
                                       scale.name + " " + shapeToString(scale.shape) + " (" +
                                       dtypeName(scale.dtype) + ") " + why);
    };
    if (scale.dtype != DType::kF32 && scale.dtype != DType::kBF16 && scale.dtype != DType::kF16) {
        return fail("is not f32, bf16 or f16");
    }
    const int64_t n = elementsOf(weight);
    if (n <= 0) return fail("scales an empty weight");
    Fp8ScaleLayout l;
    const std::vector<int64_t>& ws = weight.shape;
    if (ws.size() >= 2) {
        l.rows = ws[ws.size() - 2];
        l.cols = ws.back();
        l.matrices = n / (l.rows * l.cols);
    } else {
        l.cols = n;
    }
    if (elementsOf(scale) == 1) {  // per tensor
        l.blockRows = l.rows;
        l.blockCols = l.cols;
        return l;
    }
    if (ws.size() < 2) return fail("has more than one element for a weight of fewer than 2 dims");
    const std::vector<int64_t> lead(ws.begin(), ws.end() - 2);
    const std::vector<int64_t>& ss = scale.shape;
    const auto startsWithLead = [&](size_t extra) {
        return ss.size() == lead.size() + extra && std::equal(lead.begin(), lead.end(), ss.begin());
    };
    if (!lead.empty() && startsWithLead(0)) {  // per matrix
        l.blockRows = l.rows;
        l.blockCols = l.cols;
        l.matrixStride = 1;
        return l;
    }
    if ((startsWithLead(1) && ss.back() == l.rows) ||
        (startsWithLead(2) && ss[ss.size() - 2] == l.rows && ss.back() == 1)) {  // per row
        l.blockCols = l.cols;
        l.matrixStride = l.rows;
        return l;
    }
    if (startsWithLead(2) && ss[ss.size() - 2] > 0 && ss.back() > 0) {  // per block
        const int64_t s0 = ss[ss.size() - 2], s1 = ss.back();
        l.blockRows = block ? block->rows : pow2AtLeast(ceilDiv(l.rows, s0));
        l.blockCols = block ? block->cols : pow2AtLeast(ceilDiv(l.cols, s1));
        l.scaleCols = s1;
        l.matrixStride = s0 * s1;
        if (ceilDiv(l.rows, l.blockRows) == s0 && ceilDiv(l.cols, l.blockCols) == s1) return l;
        if (block) {
            return fail("is not the grid of config.json's weight_block_size [" +
                        std::to_string(block->rows) + ", " + std::to_string(block->cols) + "]");
        }
    }
    return fail("fits no layout: one element, one per matrix, one per row, or one per "
                "power-of-two block");
}

Result<std::optional<Fp8BlockSize>> fp8BlockSizeFromConfig(const std::string& input) {
    std::string dir = input;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    if (!io::isDirectory(dir)) dir = io::dirName(dir);
    const std::string path = io::joinPath(dir, "config.json");
    if (!io::pathExists(path)) return std::optional<Fp8BlockSize>();
    SLI_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, io::readWholeFile(path));
    auto j = parseJson(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    if (!j.isOk()) return j.status().withContext(path);
    const Json* qc = j->isObject() ? j->find("quantization_config") : nullptr;
    const Json* wbs = qc != nullptr && qc->isObject() ? qc->find("weight_block_size") : nullptr;
    if (wbs == nullptr || wbs->isNull()) return std::optional<Fp8BlockSize>();
    const auto bad = [&] {
        return Status::invalidArgument(path + ": quantization_config.weight_block_size is not "
                                       "two positive integers");
    };
    if (!wbs->isArray() || wbs->asArray().size() != 2) return bad();
    const auto rows = wbs->asArray()[0].asInt64(), cols = wbs->asArray()[1].asInt64();
    if (!rows || !cols || *rows <= 0 || *cols <= 0) return bad();
    return std::optional<Fp8BlockSize>(Fp8BlockSize{*rows, *cols});
}

void applyFp8Scales(DType fp8Type, const uint8_t* fp8, const float* scales,
                    const Fp8ScaleLayout& layout, float* out, int threads) {
    float table[256];
    for (int b = 0; b < 256; ++b) {
        const auto byte = static_cast<uint8_t>(b);
        table[b] = fp8Type == DType::kF8E4M3 ? f8e4m3ToF32(byte) : f8e5m2ToF32(byte);
    }
    // rows of all matrices, split over the threads
    kernels::parallelRanges(layout.matrices * layout.rows, layout.cols, threads, [&](int64_t g0, int64_t g1) {
        for (int64_t g = g0; g < g1; ++g) {
            const int64_t m = g / layout.rows, r = g % layout.rows;
            const float* rowScales =
                scales + m * layout.matrixStride + (r / layout.blockRows) * layout.scaleCols;
            const int64_t at = g * layout.cols;
            for (int64_t c0 = 0, b = 0; c0 < layout.cols; c0 += layout.blockCols, ++b) {
                const float scale = rowScales[b];
                const int64_t c1 = std::min(layout.cols, c0 + layout.blockCols);
                for (int64_t c = c0; c < c1; ++c) out[at + c] = table[fp8[at + c]] * scale;
            }
        }
    });
}

std::vector<int64_t> mxfp4WeightShape(const SafetensorsTensorInfo& blocks) {
    std::vector<int64_t> shape(blocks.shape.begin(), blocks.shape.end() - 1);
    shape.back() *= 32;
    return shape;
}

Status checkMxfp4Pair(const SafetensorsTensorInfo& blocks, const SafetensorsTensorInfo& scales) {
    const std::vector<int64_t>& b = blocks.shape;
    const bool fits = blocks.dtype == DType::kU8 && scales.dtype == DType::kU8 && b.size() >= 2 &&
                      b.back() == 16 && b[b.size() - 2] > 0 &&
                      std::equal(scales.shape.begin(), scales.shape.end(), b.begin(), b.end() - 1);
    if (fits) return Status();
    std::string msg = "MXFP4 blocks " + blocks.name + " " + shapeToString(b) + " (";
    msg += dtypeName(blocks.dtype);
    msg += ") and scales " + scales.name + " " + shapeToString(scales.shape) + " (";
    msg += dtypeName(scales.dtype);
    msg += ") do not fit: the blocks must be uint8 [..., G, 16] (32 values in 16 bytes per group) "
           "and the scales uint8 [..., G], one per group";
    return Status::invalidArgument(msg);
}

namespace {

// For scale byte s and packed byte b: the bf16 bits of e2m1(b & 15) * 2^(s - 127) in the low
// half and of e2m1(b >> 4) * 2^(s - 127) in the high half, at [s * 256 + b]; 256 KiB, built
// once. Each product is exact in f32 and, having at most 2 significant bits, in bf16 too, so
// its top 16 bits are its bf16 (subnormals included: 0.5 * 2^-127 = 2^-128 is 0x0020).
const uint32_t* mxfp4PairTable() {
    static const std::vector<uint32_t> table = [] {
        std::vector<uint32_t> t(256 * 256);
        for (uint32_t s = 0; s < 256; ++s) {
            const float scale = e8m0ToF32(static_cast<uint8_t>(s));
            for (uint32_t b = 0; b < 256; ++b) {
                const auto code = static_cast<uint8_t>(b);
                const uint32_t lo = floatBits(e2m1ToF32(code & 15u) * scale) >> 16;
                const uint32_t hi = floatBits(e2m1ToF32(code >> 4) * scale) >> 16;
                t[s * 256 + b] = lo | (hi << 16);
            }
        }
        return t;
    }();
    return table.data();
}

bool bf16IsInf(uint32_t bits) { return (bits & 0x7fffu) == 0x7f80u; }

int64_t decodeMxfp4Range(const uint8_t* blocks, const uint8_t* scales, int64_t g0, int64_t g1,
                         uint16_t* out) {
    const uint32_t* table = mxfp4PairTable();
    for (int64_t g = g0; g < g1; ++g) {
        const uint8_t s = scales[g];
        if (s == 0xffu) return g;
        const uint32_t* row = table + static_cast<size_t>(s) * 256;
        const uint8_t* in = blocks + g * 16;
        uint32_t pairs[16];
        for (int j = 0; j < 16; ++j) pairs[j] = row[in[j]];
        if (s >= 253) {  // 4 * 2^126 = 2^128 is the first product past the range
            for (uint32_t p : pairs) {
                if (bf16IsInf(p) || bf16IsInf(p >> 16)) return g;
            }
        }
        std::memcpy(out + g * 32, pairs, sizeof pairs);  // little-endian: element 2k first
    }
    return -1;
}

}  // namespace

int64_t decodeMxfp4ToBf16(const uint8_t* blocks, const uint8_t* scales, int64_t groups,
                          uint16_t* out, int threads) {
    std::atomic<int64_t> first{groups};  // the lowest bad group any range found
    kernels::parallelRanges(groups, 32, threads, [&](int64_t g0, int64_t g1) {
        const int64_t bad = decodeMxfp4Range(blocks, scales, g0, g1, out);
        if (bad < 0) return;
        int64_t seen = first.load();
        while (bad < seen && !first.compare_exchange_weak(seen, bad)) {
        }
    });
    return first.load() < groups ? first.load() : -1;
}

Result<QuantizedTensor> importBnbTensor(const SafetensorsModel& model, const CheckpointTensor& t,
                                        const QuantizationConfig& config) {
    QuantizedTensor qt;
    qt.info.name = t.name;
    const std::string where = "bitsandbytes tensor " + t.name + " in " + model.source();
    if (t.kind == CheckpointTensor::Kind::kBnb8) {
        const auto& w = *t.main->info;
        if (w.shape.size() != 2) return Status::invalidArgument(where + ": int8 weight is not 2-D");
        if (t.weightFormat != nullptr) {
            std::vector<uint8_t> f(t.weightFormat->info->nbytes());
            SLI_RETURN_IF_ERROR(model.readTensor(*t.weightFormat, f));
            if (f.size() != 1 || f[0] != 0) {
                return Status::notSupported(where + ": weight_format is not \"row\" (0); tiled "
                                            "int8 layouts are not supported");
            }
        }
        if (t.absmax->info->dtype != DType::kF32) {
            return Status::invalidArgument(where + ": SCB is not F32");
        }
        qt.info.mode = QuantizationMode::kInt8;
        qt.info.shape = w.shape;
        qt.info.storedDType = DType::kI8;
        qt.info.computeDType = config.computeDType;
        qt.info.sourceDType = DType::kF16;  // LLM.int8 quantizes fp16 weights
        qt.info.llmInt8Threshold = static_cast<float>(config.llmInt8Threshold);
        SLI_RETURN_IF_ERROR(readPart(model, t.main, qt.part(QuantPart::kPayload)));
        SLI_RETURN_IF_ERROR(readPart(model, t.absmax, qt.part(QuantPart::kAbsmax)));
    } else {
        SLI_ASSIGN_OR_RETURN(Json js, readJsonTensor(model, *t.quantState));
        auto bad = [&](const std::string& why) {
            return Status::invalidArgument(where + ": quant_state " + why);
        };
        if (!js.isObject()) return bad("is not a JSON object");
        const Json* qtype = js.find("quant_type");
        const Json* bs = js.find("blocksize");
        const Json* dtype = js.find("dtype");
        const Json* shape = js.find("shape");
        if (qtype == nullptr || !qtype->isString() || (qtype->asString() != "nf4" && qtype->asString() != "fp4")) {
            return bad("has no quant_type nf4 / fp4");
        }
        const bool suffixNf4 = endsWith(t.quantState->info->name, "nf4");
        if ((qtype->asString() == "nf4") != suffixNf4) return bad("quant_type disagrees with its key");
        if (bs == nullptr || !bs->asInt64()) return bad("has no integer blocksize");
        if (dtype == nullptr || !dtype->isString() || !parseDType(dtype->asString()) ||
            !dtypeIsCompute(*parseDType(dtype->asString()))) {
            return bad("has no float16 / bfloat16 / float32 dtype");
        }
        if (shape == nullptr || !shape->isArray()) return bad("has no shape");
        for (const Json& d : shape->asArray()) {
            if (!d.asInt64() || *d.asInt64() < 0) return bad("shape is not a list of integers");
            qt.info.shape.push_back(*d.asInt64());
        }
        qt.info.mode = qtype->asString() == "nf4" ? QuantizationMode::kNf4 : QuantizationMode::kFp4;
        qt.info.blocksize = static_cast<int32_t>(*bs->asInt64());
        qt.info.computeDType = *parseDType(dtype->asString());
        qt.info.sourceDType = qt.info.computeDType;
        qt.info.storedDType = t.main->info->dtype;  // quant_storage: bytes are the same
        qt.info.doubleQuant = t.nestedAbsmax != nullptr;
        if (qt.info.doubleQuant) {
            const Json* nbs = js.find("nested_blocksize");
            const Json* noff = js.find("nested_offset");
            const Json* ndt = js.find("nested_dtype");
            if (nbs == nullptr || !nbs->asInt64() || noff == nullptr || !noff->isNumber()) {
                return bad("lacks nested_blocksize / nested_offset for a nested absmax");
            }
            if (ndt != nullptr && (!ndt->isString() || ndt->asString() != "float32")) {
                return bad("nested_dtype is not float32");
            }
            qt.info.nestedBlocksize = static_cast<int32_t>(*nbs->asInt64());
            qt.info.nestedOffset = static_cast<float>(noff->asDouble());
            if (t.absmax->info->dtype != DType::kU8) return bad("nested absmax codes are not U8");
        } else if (t.absmax->info->dtype != DType::kF32) {
            return bad("absmax is not F32");
        }
        SLI_RETURN_IF_ERROR(readPart(model, t.main, qt.part(QuantPart::kPayload)));
        SLI_RETURN_IF_ERROR(readPart(model, t.absmax, qt.part(QuantPart::kAbsmax)));
        SLI_RETURN_IF_ERROR(readPart(model, t.nestedAbsmax, qt.part(QuantPart::kNestedAbsmax)));
        SLI_RETURN_IF_ERROR(readPart(model, t.nestedQuantMap, qt.part(QuantPart::kNestedQuantMap)));
        SLI_RETURN_IF_ERROR(readPart(model, t.quantMap, qt.part(QuantPart::kQuantMap)));
    }
    if (Status st = qt.validate(); !st.isOk()) return st.withContext(where);
    return qt;
}

Result<std::vector<LayerPlan>> planLayers(const std::vector<CheckpointTensor>& tensors,
                                          Architecture arch) {
    std::vector<std::string> names;
    names.reserve(tensors.size());
    std::unordered_map<std::string, size_t> indexOf;
    for (size_t i = 0; i < tensors.size(); ++i) {
        names.push_back(tensors[i].name);
        indexOf.emplace(tensors[i].name, i);
    }
    SLI_ASSIGN_OR_RETURN(auto groups, groupIntoLayers(names, arch));
    std::vector<LayerPlan> plan;
    plan.reserve(groups.size());
    for (auto& g : groups) {
        LayerPlan lp;
        lp.name = std::move(g.name);
        lp.index = g.index;
        for (const auto& n : g.tensorNames) lp.tensors.push_back(indexOf.at(n));
        plan.push_back(std::move(lp));
    }
    return plan;
}

void useAdaptivePolicy(IngestOptions& options, const AdaptiveQuantizer& quantizer) {
    options.config = quantizer.baseConfig();
    options.attentionConfig = quantizer.attentionConfig();
    options.ffnConfig = quantizer.ffnConfig();
}

std::string ingestPolicyJson(const IngestOptions& o) {
    const bool adaptive = o.attentionConfig.has_value() || o.ffnConfig.has_value();
    if (!adaptive && o.defaultSkips) return {};
    Json j = Json::object();
    if (adaptive) {
        j.set("attention", o.attentionConfig.value_or(o.config).toJson());
        j.set("ffn", o.ffnConfig.value_or(o.config).toJson());
    }
    j.set("default_skips", Json::boolean(o.defaultSkips));
    return j.dump();
}

Result<IngestSummary> ingestCheckpoint(const IngestOptions& opt) {
    const auto t0 = std::chrono::steady_clock::now();
    SLI_RETURN_IF_ERROR(opt.config.validate().withContext("quantization config"));
    if (opt.device >= 0 && !cuda::deviceAvailable(opt.device)) {
        return Status::notSupported(
            "quantize on cuda:" + std::to_string(opt.device) + ": " +
            (cuda::built() ? "not available (" + std::to_string(cuda::deviceCount()) + " CUDA devices)"
                           : std::string("this build of sli has no CUDA support")));
    }
    if (opt.attentionConfig) {
        SLI_RETURN_IF_ERROR(opt.attentionConfig->validate().withContext("attention quantization config"));
    }
    if (opt.ffnConfig) {
        SLI_RETURN_IF_ERROR(opt.ffnConfig->validate().withContext("ffn quantization config"));
    }
    SLI_ASSIGN_OR_RETURN(SafetensorsModel model, SafetensorsModel::open(opt.input));
    // (config.json is read only when an FP8 weight with a scale tensor needs its block size)
    SLI_ASSIGN_OR_RETURN(auto tensors, collectCheckpointTensors(model, [&opt] {
                             return fp8BlockSizeFromConfig(opt.input);
                         }));
    std::vector<std::string> names;
    for (const auto& t : tensors) names.push_back(t.name);
    const Architecture arch = detectArchitecture(names);
    auto planned = planLayers(tensors, arch);
    if (!planned.isOk()) return planned.status().withContext(model.source());
    const std::vector<LayerPlan> plan = std::move(planned).value();
    const std::string policyJson = ingestPolicyJson(opt);
    TensorPolicy policy{arch,
                        AdaptiveQuantizer(opt.config, opt.attentionConfig.value_or(opt.config),
                                          opt.ffnConfig.value_or(opt.config), opt.threads),
                        opt.config.computeDType, opt.threads};
    policy.quantizer.setArchitecture(arch);
    policy.quantizer.setKeepRegistryDefaults(opt.defaultSkips);
    policy.quantizer.setDevice(opt.device);

    // Recorded absolute, so that `sli verify --repair` finds it from any directory.
    std::string sourcePath = opt.input;
    {
        std::error_code ec;
        const auto abs = std::filesystem::absolute(opt.input, ec);
        if (!ec) sourcePath = abs.lexically_normal().string();
        while (sourcePath.size() > 1 && sourcePath.back() == '/') sourcePath.pop_back();
    }

    IngestSummary sum;
    std::string firstFp8;  // for the warning on FP8 tensors kept as stored
    const auto countFp8 = [&](const QuantizedTensorInfo& info, const std::string& fullName) {
        if (info.storedDType != DType::kF8E4M3 && info.storedDType != DType::kF8E5M2) return;
        if (sum.fp8TensorsKept++ == 0) firstFp8 = fullName;
    };
    sum.architecture = arch;
    sum.modelId = opt.modelId.empty() ? defaultModelId(opt.input) : opt.modelId;
    if (sum.modelId.empty()) {
        return Status::invalidArgument("no model id can be derived from " + opt.input +
                                       "; give one (--model-id)");
    }
    SLI_ASSIGN_OR_RETURN(auto cache, LayerCache::open(opt.cacheRoot));
    sum.cacheDir = cache->directoryFor(sum.modelId, opt.config, policyJson);
    SLI_RETURN_IF_ERROR(io::makeDirs(sum.cacheDir));
    io::removeStaleTempFiles(sum.cacheDir);

    // The manifest first, so an interrupted run shows which layers are missing.
    io::CacheManifest manifest;
    manifest.modelId = sum.modelId;
    manifest.configJson = opt.config.toJsonString();
    manifest.configFingerprint = LayerCache::fingerprint(opt.config, policyJson);
    manifest.policyJson = policyJson;
    manifest.architecture = architectureName(arch);
    manifest.source = sourcePath;
    manifest.sourceFingerprint = model.fingerprint();
    for (const auto& lp : plan) {
        manifest.layers.push_back({lp.index, lp.name, io::layerFileName(lp.index),
                                   static_cast<uint32_t>(lp.tensors.size())});
    }
    const auto wanted = [&opt](int64_t index) {
        return opt.onlyLayers.empty() ||
               std::find(opt.onlyLayers.begin(), opt.onlyLayers.end(), index) != opt.onlyLayers.end();
    };
    for (int64_t index : opt.onlyLayers) {
        if (std::none_of(plan.begin(), plan.end(), [index](const LayerPlan& lp) { return lp.index == index; })) {
            return Status::invalidArgument(model.source() + " has no layer " + std::to_string(index) +
                                           " (" + std::to_string(plan.size()) + " layers)");
        }
    }
    if (!opt.onlyLayers.empty()) {
        // Single layers of an existing cache: the same source, the same layer list.
        auto old = io::readManifest(sum.cacheDir);
        if (!old.isOk()) return old.status().withContext("repairing layers of " + sum.cacheDir);
        if (old->sourceFingerprint != model.fingerprint() || old->layers.size() != plan.size()) {
            return Status::invalidArgument(
                "cache " + sum.cacheDir + " was made from another version of " + model.source() +
                " (its source fingerprint or layer count differs): a layer quantized now would not "
                "match the others; run `sli quantize` on the whole model again");
        }
    } else {
        SLI_ASSIGN_OR_RETURN(auto lock, io::FileLock::acquire(io::joinPath(sum.cacheDir, io::kLockName),
                                                              io::FileLock::Kind::kExclusive));
        auto old = io::readManifest(sum.cacheDir);
        if (old.isOk()) {
            for (const auto& l : old->layers) {
                if (manifest.findLayer(l.index) == nullptr) {
                    SLI_RETURN_IF_ERROR(io::removeFile(io::joinPath(sum.cacheDir, l.file)));
                }
            }
        }
        SLI_RETURN_IF_ERROR(io::writeManifest(sum.cacheDir, manifest));
    }

    IngestProgress prog;
    AlignedBuffer sourceScratch;  // quantizePlain's source bytes, reused tensor to tensor
    prog.layersTotal = plan.size();
    for (const auto& t : tensors) prog.sourceBytesTotal += t.sourceBytes();
    sum.sourceBytes = prog.sourceBytesTotal;
    sum.layers = plan.size();
    // A layer counts as done (cache bytes, progress) once its file is complete on disk.
    const auto layerDone = [&](const std::string& path, uint64_t layerSource, const std::string& name) {
        auto size = io::fileSize(path);
        if (size.isOk()) sum.cacheBytes += *size;
        ++prog.layersDone;
        prog.sourceBytesDone += layerSource;
        prog.currentLayer = name;
        prog.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (opt.progress) opt.progress(prog);
    };
    // The layer being written (serialized, written, fsynced) on a thread of its own while the
    // next one is quantized: one at a time, so at most two quantized layers are in memory.
    struct PendingWrite {
        std::future<Status> done;
        std::string path;
        uint64_t layerSource = 0;
        std::string name;
        bool repair = false;
    };
    std::optional<PendingWrite> pending;
    // Waits for the layer being written and counts it. Every exit from the loop goes through
    // here first (the future's destructor would wait anyway; this also reports its error).
    const auto settle = [&]() -> Status {
        if (!pending) return Status();
        PendingWrite w = std::move(*pending);
        pending.reset();
        SLI_RETURN_IF_ERROR(w.done.get());
        ++sum.layersWritten;
        if (w.repair) ++sum.layersRepaired;
        layerDone(w.path, w.layerSource, w.name);
        return Status();
    };
    const auto failLayer = [&](Status st) {
        (void)settle();  // this layer's error is the one to report
        return st;
    };
    for (const auto& lp : plan) {
        if (!wanted(lp.index)) {
            SLI_RETURN_IF_ERROR(settle());
            ++prog.layersDone;
            continue;
        }
        const std::string path = io::joinPath(sum.cacheDir, io::layerFileName(lp.index));
        uint64_t layerSource = 0;
        for (size_t ti : lp.tensors) layerSource += tensors[ti].sourceBytes();
        prog.currentLayer = lp.name;
        // Reuse a complete layer from the same source (an interrupted run's work). A file
        // that is there but damaged is written again (and said so).
        auto existing = io::readLayerIndex(path);
        bool reuse = existing.isOk() && existing->sourceFingerprint == model.fingerprint() &&
                     existing->modelId == sum.modelId && existing->layerName == lp.name &&
                     existing->tensors.size() == lp.tensors.size() &&
                     existing->configJson == manifest.configJson;
        Status damage = existing.isOk() ? Status() : existing.status();
        if (reuse && opt.verifyReused) damage = io::verifyLayerFile(path);
        bool repair = false;
        if (!damage.isOk() && io::pathExists(path)) {
            repair = damage.isCorruption() || damage.isNotSupported();
            if (opt.warnRewrites) {
                SLI_WARN("cache", "layer %lld (%s) %s, quantizing it again: %s",
                         static_cast<long long>(lp.index), lp.name.c_str(),
                         repair ? "is damaged" : "cannot be read", damage.toString().c_str());
            }
            reuse = false;
        }
        if (reuse) {
            ++sum.layersReused;
            ++prog.layersReused;
            for (size_t ti : lp.tensors) {
                if (tensors[ti].kind == CheckpointTensor::Kind::kFp8Scaled) ++sum.fp8TensorsScaled;
                if (tensors[ti].kind == CheckpointTensor::Kind::kMxfp4) ++sum.mxfp4TensorsDecoded;
            }
            for (const auto& te : existing->tensors) {
                countFp8(te.info, tensorFullName(lp.name, te.info.name));
                sum.storedBytes += te.rawBytes();
                sum.weights += static_cast<uint64_t>(std::max<int64_t>(0, te.info.numel()));
            }
            sum.tensors += existing->tensors.size();
        } else {
            QuantizedLayer layer;
            layer.name = lp.name;
            layer.index = lp.index;
            for (size_t ti : lp.tensors) {
                const CheckpointTensor& ct = tensors[ti];
                Result<QuantizedTensor> qt =
                    ct.kind == CheckpointTensor::Kind::kPlain ||
                            ct.kind == CheckpointTensor::Kind::kFp8Scaled ||
                            ct.kind == CheckpointTensor::Kind::kMxfp4
                        ? quantizePlain(model, ct, lp.name, policy, sourceScratch)
                        : importBnbTensor(model, ct, opt.config);
                if (!qt.isOk()) {
                    return failLayer(qt.status().withContext("layer " + std::to_string(lp.index) + " (" + lp.name + ")"));
                }
                if (ct.kind == CheckpointTensor::Kind::kBnb4 ||
                    ct.kind == CheckpointTensor::Kind::kBnb8) {
                    ++sum.importedBnbTensors;
                }
                if (ct.kind == CheckpointTensor::Kind::kFp8Scaled) ++sum.fp8TensorsScaled;
                if (ct.kind == CheckpointTensor::Kind::kMxfp4) ++sum.mxfp4TensorsDecoded;
                countFp8(qt->info, tensorFullName(lp.name, ct.name));
                sum.weights += static_cast<uint64_t>(std::max<int64_t>(0, qt->info.numel()));
                layer.tensors.push_back(std::move(*qt));
            }
            sum.storedBytes += layer.storedBytes();
            sum.tensors += layer.tensors.size();
            CacheWriteOptions wo;
            wo.compressPayload = opt.compressPayload;
            wo.sourceFingerprint = model.fingerprint();
            wo.source = sourcePath;
            wo.policyJson = policyJson;
            SLI_RETURN_IF_ERROR(settle());  // the layer before, if it is still being written
            auto job = std::make_shared<const QuantizedLayer>(std::move(layer));
            auto write = [cache = cache.get(), modelId = sum.modelId, index = lp.index, job,
                          &config = opt.config, wo]() {
                return cache->cacheLayer(modelId, index, *job, config, wo);
            };
            PendingWrite w{{}, path, layerSource, lp.name, repair};
            try {
                w.done = std::async(std::launch::async, write);
            } catch (const std::system_error&) {  // no thread to be had: write it here
                std::promise<Status> now;
                now.set_value(write());
                w.done = now.get_future();
            }
            pending = std::move(w);
            continue;
        }
        SLI_RETURN_IF_ERROR(settle());
        layerDone(path, layerSource, lp.name);
    }
    SLI_RETURN_IF_ERROR(settle());
    sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const bool quantizing = opt.config.mode != QuantizationMode::kNone ||
                            (opt.attentionConfig && opt.attentionConfig->mode != QuantizationMode::kNone) ||
                            (opt.ffnConfig && opt.ffnConfig->mode != QuantizationMode::kNone);
    if (sum.fp8TensorsKept > 0 && quantizing) {
        SLI_WARN("engine",
                 "%s: %zu FP8 tensor(s) (the first: %s) kept as stored, not quantized: no "
                 "scale tensor (NAME_scale_inv or NAME_scale) beside them says what their "
                 "values mean",
                 model.source().c_str(), sum.fp8TensorsKept, firstFp8.c_str());
    }
    return sum;
}

Result<IngestOptions> ingestOptionsForCache(const std::string& cacheDirIn) {
    std::string dir = cacheDirIn;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    const std::string manifestPath = io::joinPath(dir, io::kManifestName);
    SLI_ASSIGN_OR_RETURN(io::CacheManifest m, io::readManifest(dir));
    const auto bad = [&](const std::string& what) {
        return Status::invalidArgument(manifestPath + ": " + what);
    };
    IngestOptions o;
    o.input = m.source;
    o.modelId = m.modelId;
    o.verifyReused = true;
    auto config = QuantizationConfig::fromJsonString(m.configJson);
    if (!config.isOk()) return bad("config: " + config.status().message());
    o.config = *config;
    if (!m.policyJson.empty()) {
        auto policy = parseJson(m.policyJson);
        if (!policy.isOk() || !policy->isObject()) return bad("policy is not a JSON object");
        for (const char* key : {"attention", "ffn"}) {
            const Json* j = policy->find(key);
            if (j == nullptr) continue;
            auto c = QuantizationConfig::fromJson(*j);
            if (!c.isOk()) return bad(std::string("policy ") + key + " config: " + c.status().message());
            (std::string_view(key) == "ffn" ? o.ffnConfig : o.attentionConfig) = *c;
        }
        if (const Json* j = policy->find("default_skips"); j != nullptr && j->isBool()) {
            o.defaultSkips = j->asBool();
        }
    }
    // ROOT/<model dir>/<fingerprint>: the options must lead back to exactly this directory.
    const std::string fingerprint = LayerCache::fingerprint(o.config, ingestPolicyJson(o));
    const std::string modelDir = io::dirName(dir);
    o.cacheRoot = io::dirName(modelDir);
    if (fingerprint != m.configFingerprint || io::baseName(dir) != fingerprint ||
        io::baseName(modelDir) != io::modelDirName(o.modelId)) {
        return bad("model " + o.modelId + " with this configuration belongs in " +
                   io::cacheDirFor("ROOT", o.modelId, fingerprint) +
                   " under a cache root, not in " + dir +
                   " (moved or renamed by hand?); run sli quantize again instead");
    }
    if (o.input.empty()) return bad("names no source checkpoint");
    if (!io::pathExists(o.input)) {
        return Status::notFound("source checkpoint " + o.input + " of cache " + dir +
                                " no longer exists");
    }
    {
        SLI_ASSIGN_OR_RETURN(SafetensorsModel model, SafetensorsModel::open(o.input));
        if (model.fingerprint() != m.sourceFingerprint) {
            return Status::invalidArgument(
                "source checkpoint " + o.input + " has changed since cache " + dir +
                " was written (fingerprint " + model.fingerprint() + ", the cache's " +
                m.sourceFingerprint + "): run sli quantize on it to rebuild the cache");
        }
    }
    // Payload compression is not part of the configuration: keep what the layers have.
    for (const auto& l : m.layers) {
        auto idx = io::readLayerIndex(io::joinPath(dir, l.file));
        if (!idx.isOk()) continue;
        for (const auto& t : idx->tensors) {
            if (t.part(QuantPart::kPayload).compression != io::Compression::kNone) {
                o.compressPayload = true;
            }
        }
        break;
    }
    return o;
}

}  // namespace sli

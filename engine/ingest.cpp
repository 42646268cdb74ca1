// Checkpoint ingestion; see engine/ingest.h.
#include "engine/ingest.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <unordered_map>
#include <unordered_set>

#include "io/cache_format.h"
#include "io/cache_manifest.h"
#include "io/file.h"
#include "sli/cache.h"
#include "sli/json.h"
#include "sli/kernels.h"
#include "sli/log.h"
#include "sli/tensor.h"

namespace sli {
namespace {

bool endsWith(std::string_view s, std::string_view suf) {
    return s.size() >= suf.size() && s.substr(s.size() - suf.size()) == suf;
}

std::vector<std::string> splitDots(std::string_view s) {
    std::vector<std::string> out;
    size_t b = 0;
    while (true) {
        const size_t d = s.find('.', b);
        out.emplace_back(s.substr(b, d == std::string_view::npos ? s.npos : d - b));
        if (d == std::string_view::npos) break;
        b = d + 1;
    }
    return out;
}

// Block of a tensor name: ("model.layers", 3) for "model.layers.3.mlp.up_proj.weight".
// TODO(quantizer): replace with sli::groupIntoLayers (include/sli/architecture.h) once merged.
bool blockOf(std::string_view name, std::string* prefix, int64_t* number) {
    static const std::unordered_set<std::string> kContainers = {"layers", "h", "layer", "blocks",
                                                                "block"};
    const auto parts = splitDots(name);
    for (size_t i = 1; i + 1 < parts.size(); ++i) {
        const std::string& p = parts[i];
        if (p.empty() || p.size() > 9 || !std::all_of(p.begin(), p.end(), ::isdigit)) continue;
        if (kContainers.count(parts[i - 1]) == 0) continue;
        std::string pre;
        for (size_t k = 0; k <= i; ++k) pre += (k ? "." : "") + parts[k];
        *prefix = pre;
        *number = std::stoll(p);
        return true;
    }
    return false;
}

std::string lower(std::string_view s) {
    std::string r(s);
    for (auto& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return r;
}

bool isPreBlock(std::string_view name) {
    const std::string l = lower(name);
    return l.find("embed") != std::string::npos || l.find("wte") != std::string::npos ||
           l.find("wpe") != std::string::npos;
}

// Embeddings, heads and norms stay unquantized by default.
bool isDefaultSkip(std::string_view name) {
    const std::string l = lower(name);
    for (const char* k : {"embed", "wte.", "wpe.", "lm_head", "pooler", "norm", "ln_"}) {
        if (l.find(k) != std::string::npos) return true;
    }
    return false;
}

bool isAttention(std::string_view name) {
    const std::string l = lower(name);
    for (const char* k : {"attn", "attention", "query", "key", "value", "qkv"}) {
        if (l.find(k) != std::string::npos) return true;
    }
    return false;
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

// Converts `n` source elements to `dst` in chunks (source alignment never assumed: the bytes
// come from a pread into an aligned buffer).
Status convertBytes(DType src, const uint8_t* in, int64_t n, DType dst, uint8_t* out) {
    constexpr int64_t kChunk = 1 << 16;
    std::vector<float> tmp(static_cast<size_t>(std::min(n, kChunk)));
    for (int64_t b = 0; b < n; b += kChunk) {
        const int64_t m = std::min(kChunk, n - b);
        SLI_RETURN_IF_ERROR(convertToF32(src, in + b * dtypeSize(src), m, tmp.data()));
        SLI_RETURN_IF_ERROR(convertFromF32(tmp.data(), m, dst, out + b * dtypeSize(dst)));
    }
    return Status();
}

struct Policy {
    const QuantizationConfig& config;
    std::optional<QuantizationMode> attentionMode;
    bool defaultSkips;
};

Result<QuantizedTensor> quantizePlain(const SafetensorsModel& model, const CheckpointTensor& t,
                                      const Policy& policy, int threads) {
    const SafetensorsTensorInfo& src = *t.main->info;
    const QuantizationConfig& cfg = policy.config;
    QuantizedTensor qt;
    qt.info.name = t.name;
    qt.info.shape = src.shape;
    qt.info.sourceDType = src.dtype;
    qt.info.computeDType = cfg.computeDType;
    SLI_ASSIGN_OR_RETURN(AlignedBuffer raw, AlignedBuffer::allocate(src.nbytes(), false));
    SLI_RETURN_IF_ERROR(model.readTensor(*t.main, raw.bytes()));
    const int64_t n = static_cast<int64_t>(src.nbytes() / std::max<size_t>(1, dtypeSize(src.dtype)));

    QuantizationMode mode = cfg.mode;
    if (policy.attentionMode && isAttention(t.name)) mode = *policy.attentionMode;
    if (!isFloatSource(src.dtype) || src.shape.size() < 2 || n == 0 || cfg.isSkipped(t.name) ||
        (policy.defaultSkips && isDefaultSkip(t.name))) {
        mode = QuantizationMode::kNone;
    }
    if (mode == QuantizationMode::kInt4 && (n / src.shape[0]) % 32 != 0) {
        SLI_WARN("engine", "tensor %s: rows of %lld elements are not a multiple of 32; kept "
                 "unquantized instead of int4", t.name.c_str(),
                 static_cast<long long>(n / src.shape[0]));
        mode = QuantizationMode::kNone;
    }
    qt.info.mode = mode;
    if (mode == QuantizationMode::kNone) {
        if (!isFloatSource(src.dtype) || src.dtype == cfg.computeDType) {
            qt.info.storedDType = src.dtype;  // verbatim
            qt.part(QuantPart::kPayload) = std::move(raw);
        } else {
            qt.info.storedDType = cfg.computeDType;
            SLI_ASSIGN_OR_RETURN(auto out, AlignedBuffer::allocate(n * dtypeSize(cfg.computeDType), false));
            SLI_RETURN_IF_ERROR(convertBytes(src.dtype, raw.data(), n, cfg.computeDType, out.data()));
            qt.part(QuantPart::kPayload) = std::move(out);
        }
        return qt;
    }
    std::vector<float> f32(static_cast<size_t>(n));
    SLI_RETURN_IF_ERROR(convertToF32(src.dtype, raw.data(), n, f32.data()));
    raw = AlignedBuffer();
    switch (mode) {
        case QuantizationMode::kNf4:
        case QuantizationMode::kFp4:
            qt.info.storedDType = cfg.quantStorageDType;
            qt.info.blocksize = cfg.blocksize;
            qt.info.doubleQuant = cfg.doubleQuant;
            qt.info.nestedBlocksize = cfg.doubleQuant ? 256 : 0;
            break;
        case QuantizationMode::kInt8:
            qt.info.storedDType = DType::kI8;
            qt.info.llmInt8Threshold = static_cast<float>(cfg.llmInt8Threshold);
            break;
        case QuantizationMode::kInt8Dynamic: qt.info.storedDType = DType::kI8; break;
        case QuantizationMode::kInt4:
            qt.info.storedDType = DType::kU8;
            qt.info.blocksize = 32;
            break;
        case QuantizationMode::kNone: break;
    }
    Status st = kernels::quantize(f32, qt, threads);
    if (!st.isOk()) return st.withContext("quantizing tensor " + t.name);
    return qt;
}

}  // namespace

uint64_t CheckpointTensor::sourceBytes() const {
    uint64_t n = 0;
    for (const auto* e : {main, absmax, quantMap, nestedAbsmax, nestedQuantMap, quantState, weightFormat}) {
        if (e != nullptr) n += e->info->nbytes();
    }
    return n;
}

Result<std::vector<CheckpointTensor>> collectCheckpointTensors(const SafetensorsModel& model) {
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

std::vector<LayerPlan> planLayers(const std::vector<CheckpointTensor>& tensors) {
    std::vector<size_t> pre, post;
    std::map<std::pair<std::string, int64_t>, std::vector<size_t>> blocks;
    std::map<std::string, size_t> prefixOrder;
    for (size_t i = 0; i < tensors.size(); ++i) {
        std::string prefix;
        int64_t num = 0;
        if (blockOf(tensors[i].name, &prefix, &num)) {
            const std::string container = prefix.substr(0, prefix.rfind('.'));
            prefixOrder.try_emplace(container, prefixOrder.size());
            blocks[{container, num}].push_back(i);
        } else if (isPreBlock(tensors[i].name)) {
            pre.push_back(i);
        } else {
            post.push_back(i);
        }
    }
    std::vector<LayerPlan> plan;
    if (!pre.empty()) plan.push_back({"pre", 0, pre});
    std::vector<std::pair<std::pair<size_t, int64_t>, std::string>> order;
    for (const auto& [key, idx] : blocks) {
        order.push_back({{prefixOrder[key.first], key.second}, key.first});
    }
    std::sort(order.begin(), order.end());
    for (const auto& [k, container] : order) {
        plan.push_back({container + "." + std::to_string(k.second), 0, blocks[{container, k.second}]});
    }
    if (!post.empty()) plan.push_back({"post", 0, post});
    for (size_t i = 0; i < plan.size(); ++i) plan[i].index = static_cast<int64_t>(i);
    return plan;
}

Result<IngestSummary> ingestCheckpoint(const IngestOptions& opt) {
    const auto t0 = std::chrono::steady_clock::now();
    SLI_RETURN_IF_ERROR(opt.config.validate());
    SLI_ASSIGN_OR_RETURN(SafetensorsModel model, SafetensorsModel::open(opt.input));
    SLI_ASSIGN_OR_RETURN(auto tensors, collectCheckpointTensors(model));
    const auto plan = planLayers(tensors);

    IngestSummary sum;
    sum.modelId = opt.modelId;
    if (sum.modelId.empty()) {
        std::string base = io::isDirectory(opt.input) ? io::baseName(opt.input) : io::baseName(io::dirName(opt.input));
        if (base.empty() || base == "." || base == "/") base = io::baseName(opt.input);
        sum.modelId = base;
    }
    SLI_ASSIGN_OR_RETURN(auto cache, LayerCache::open(opt.cacheRoot));
    sum.cacheDir = cache->directoryFor(sum.modelId, opt.config);
    SLI_RETURN_IF_ERROR(io::makeDirs(sum.cacheDir));
    io::removeStaleTempFiles(sum.cacheDir);

    // The manifest first, so an interrupted run shows which layers are missing.
    io::CacheManifest manifest;
    manifest.modelId = sum.modelId;
    manifest.configJson = opt.config.toJsonString();
    manifest.configFingerprint = opt.config.fingerprint();
    manifest.source = opt.input;
    manifest.sourceFingerprint = model.fingerprint();
    for (const auto& lp : plan) {
        manifest.layers.push_back({lp.index, lp.name, io::layerFileName(lp.index),
                                   static_cast<uint32_t>(lp.tensors.size())});
    }
    {
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
    prog.layersTotal = plan.size();
    for (const auto& t : tensors) prog.sourceBytesTotal += t.sourceBytes();
    sum.sourceBytes = prog.sourceBytesTotal;
    sum.layers = plan.size();
    const Policy policy{opt.config, opt.attentionMode, opt.defaultSkips};

    for (const auto& lp : plan) {
        const std::string path = io::joinPath(sum.cacheDir, io::layerFileName(lp.index));
        uint64_t layerSource = 0;
        for (size_t ti : lp.tensors) layerSource += tensors[ti].sourceBytes();
        prog.currentLayer = lp.name;
        // Reuse a complete layer from the same source (an interrupted run's work).
        auto existing = io::readLayerIndex(path);
        if (existing.isOk() && existing->sourceFingerprint == model.fingerprint() &&
            existing->modelId == sum.modelId && existing->layerName == lp.name &&
            existing->tensors.size() == lp.tensors.size() &&
            existing->configJson == manifest.configJson) {
            ++sum.layersReused;
            ++prog.layersReused;
            for (const auto& te : existing->tensors) {
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
                    ct.kind == CheckpointTensor::Kind::kPlain
                        ? quantizePlain(model, ct, policy, opt.threads)
                        : importBnbTensor(model, ct, opt.config);
                if (!qt.isOk()) {
                    return qt.status().withContext("layer " + std::to_string(lp.index) + " (" + lp.name + ")");
                }
                if (ct.kind != CheckpointTensor::Kind::kPlain) ++sum.importedBnbTensors;
                sum.weights += static_cast<uint64_t>(std::max<int64_t>(0, qt->info.numel()));
                layer.tensors.push_back(std::move(*qt));
            }
            sum.storedBytes += layer.storedBytes();
            sum.tensors += layer.tensors.size();
            CacheWriteOptions wo;
            wo.compressPayload = opt.compressPayload;
            wo.sourceFingerprint = model.fingerprint();
            wo.source = opt.input;
            SLI_RETURN_IF_ERROR(cache->cacheLayer(sum.modelId, lp.index, layer, opt.config, wo));
            ++sum.layersWritten;
        }
        auto size = io::fileSize(path);
        if (size.isOk()) sum.cacheBytes += *size;
        ++prog.layersDone;
        prog.sourceBytesDone += layerSource;
        prog.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (opt.progress) opt.progress(prog);
    }
    sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return sum;
}

}  // namespace sli

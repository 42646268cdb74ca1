// sli: the command-line front end of the layer cache.
//
//   sli quantize INPUT --cache DIR [options]   checkpoint -> layer cache
//   sli inspect DIR [--json]                   what a cache holds
//   sli verify DIR                             checks every checksum
//   sli export DIR --output FILE [--dtype D] [--raw]
//
// Exit codes: 0 success; 1 corrupt or invalid data (a damaged cache for verify / export, a
// broken checkpoint for quantize); 2 usage errors; 3 I/O and other errors (disk full, missing
// files, permissions).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine/ingest.h"
#include "io/cache_format.h"
#include "io/cache_manifest.h"
#include "io/file.h"
#include "sli/cache.h"
#include "sli/config.h"
#include "sli/cuda.h"
#include "sli/json.h"
#include "sli/kernels.h"
#include "sli/quantizer.h"
#include "sli/safetensors.h"
#include "sli_build_config.h"

namespace {

using namespace sli;

constexpr int kExitOk = 0;
constexpr int kExitCorrupt = 1;
constexpr int kExitUsage = 2;
constexpr int kExitIo = 3;

int exitCodeFor(const Status& st) {
    switch (st.code()) {
        case Status::Code::kOk: return kExitOk;
        case Status::Code::kCorruption:
        case Status::Code::kInvalidArgument:
        case Status::Code::kNotSupported: return kExitCorrupt;
        default: return kExitIo;
    }
}

int fail(const Status& st) {
    std::fprintf(stderr, "sli: error: %s\n", st.toString().c_str());
    return exitCodeFor(st);
}

int usageError(const std::string& msg, const char* cmd) {
    std::fprintf(stderr, "sli: %s\nRun 'sli %s--help' for usage.\n", msg.c_str(),
                 cmd ? (std::string(cmd) + " ").c_str() : "");
    return kExitUsage;
}

const char* kMainHelp =
    "usage: sli <command> [options]\n"
    "\n"
    "Commands:\n"
    "  quantize INPUT --cache DIR   quantize a safetensors checkpoint into a layer cache\n"
    "  inspect DIR [--json]         list layers, tensors, modes, bytes, bits per weight\n"
    "  verify DIR                   check every checksum of a cache\n"
    "  export DIR --output FILE     write a cache back out as safetensors\n"
    "\n"
    "Run 'sli <command> --help' for a command's options.\n"
    "Exit codes: 0 ok, 1 corrupt/invalid data, 2 usage error, 3 I/O or other error.\n";

const char* kQuantizeHelp =
    "usage: sli quantize INPUT --cache DIR [options]\n"
    "\n"
    "INPUT is a .safetensors file, a model.safetensors.index.json, or a directory of\n"
    "safetensors files (with or without an index). Layers are written one at a time\n"
    "(atomically) to DIR/<model id>/<config fingerprint>/; rerunning an interrupted\n"
    "command completes it. Hugging Face bitsandbytes checkpoints are imported as they are.\n"
    "FP8 weights with a NAME_scale_inv (per 128 x 128 block, DeepSeek-V3 / Qwen3 FP8) or\n"
    "NAME_scale tensor (per tensor or row, compressed-tensors) are multiplied by their\n"
    "scales, then quantized like any float weight; FP8 tensors without one are kept as\n"
    "stored. MXFP4 weights (gpt-oss: NAME_blocks + NAME_scales, uint8) are decoded to\n"
    "bf16, exactly, and quantized as NAME.\n"
    "\n"
    "Options:\n"
    "  --cache DIR                  cache root (required)\n"
    "  --mode M                     none|int8|int8_dynamic|nf4|fp4|int4\n"
    "  --preset P                   int8|nf4|fp4|mixed (mixed: attention int8, FFN and\n"
    "                               the rest nf4, per the adaptive quantizer)\n"
    "  --config FILE.json           QuantizationConfig JSON\n"
    "  --blocksize N                4-bit block size (power of two, 32..4096)\n"
    "  --double-quant | --no-double-quant\n"
    "  --compute-dtype D            f16|bf16|f32\n"
    "  --skip NAME                  keep NAME unquantized (repeatable; adds to the\n"
    "                               default skips)\n"
    "  --no-default-skips           quantize embeddings / heads / norms too (by default a\n"
    "                               known architecture keeps them unquantized; Llama-\n"
    "                               family biases and MoE routers as well)\n"
    "  --compress-payload           zstd payloads as well as statistics\n"
    "  --repair                     check layers already in the cache in full (every\n"
    "                               checksum) and quantize damaged ones again (default:\n"
    "                               a complete layer's index is read, its data is not)\n"
    "  --model-id ID                default: the input's directory name\n"
    "  --threads N                  kernel threads (default 0: every CPU this process\n"
    "                               may run on; the bytes are the same for any N)\n"
    "  --device D                   cpu (default) or cuda[:N]: NF4, FP4 and INT8 tensors\n"
    "                               are quantized on that GPU, to the same bytes as on\n"
    "                               the CPU (other modes stay on the CPU)\n"
    "  --quiet                      no progress line\n"
    "  --help\n"
    "\n"
    "--preset or --config set the mode; --mode and the other flags override them\n"
    "(with --preset mixed, --mode and --config do not apply; the other flags apply to\n"
    "the attention, FFN and base configs alike).\n"
    "Layers are grouped by the architecture registry (Llama/Mistral/Qwen2, GPT-2, BERT,\n"
    "OPT): embeddings first, blocks in order, final norm / heads last. GPT-2 Conv1D\n"
    "weights that get quantized are transposed to [out, in] first, as Hugging Face does.\n";

const char* kInspectHelp =
    "usage: sli inspect DIR [--json]\n"
    "\n"
    "DIR is what 'sli quantize --cache' was given (or any directory below it).\n"
    "Prints, per model and configuration, every layer with its tensors, modes, stored\n"
    "bytes and bits per weight, missing layers, and totals. --json prints the same as JSON.\n";

const char* kVerifyHelp =
    "usage: sli verify DIR [--model-id ID] [--repair [--threads N] [--quiet]]\n"
    "\n"
    "Checks every layer file of every cache under DIR: the header and table checksums,\n"
    "every extent's xxh3-64, decompression, and that padding is zero. Layers the\n"
    "manifest lists but that were never written are reported as missing.\n"
    "Exit 0 when everything present is intact (missing layers included), 1 when\n"
    "anything is corrupt (each bad layer / tensor / file is named), 2 on usage errors,\n"
    "3 when a file cannot be read (permissions, I/O errors: listed as unreadable).\n"
    "\n"
    "--repair quantizes the damaged and missing layers of each such cache again from\n"
    "the source checkpoint its manifest names, with the configuration it records\n"
    "(what 'sli quantize --repair' would do with the original command), then counts\n"
    "them as repaired: exit 0 when every listed layer is intact afterwards, 3 when a\n"
    "repair could not be done (1 while corrupt layers remain). The source must still\n"
    "be there, unchanged. --threads N: kernel threads (default 0: every CPU this\n"
    "process may run on); --quiet: no progress line.\n";

const char* kExportHelp =
    "usage: sli export DIR --output FILE.safetensors [--dtype f16|bf16|f32] [--raw]\n"
    "                  [--model-id ID] [--threads N]\n"
    "\n"
    "Default: dequantized tensors under their original names, in each tensor's compute\n"
    "dtype or --dtype (dequantized straight into it); GPT-2 Conv1D weights quantized as\n"
    "[out, in] go back to the [in, out] of the source.\n"
    "--raw: quantized tensors in the bitsandbytes / Hugging Face layout (P = name without\n"
    "its trailing \".weight\"): NF4/FP4 as P.weight, P.weight.absmax, P.weight.quant_map,\n"
    "[P.weight.nested_absmax, P.weight.nested_quant_map,] P.weight.quant_state.bitsandbytes__*;\n"
    "INT8 as P.weight + P.SCB; INT8_DYNAMIC as P.weight + P.weight_scale; INT4 as P.weight\n"
    "U8 [nblocks, 18]; unquantized tensors as stored.\n"
    "--threads N: dequantization threads (default 0: every CPU this process may run on).\n";

bool wantsHelp(const std::vector<std::string>& a) {
    return std::find(a.begin(), a.end(), "--help") != a.end() ||
           std::find(a.begin(), a.end(), "-h") != a.end();
}

// A tiny option parser: positional arguments and --flag [value].
struct Args {
    std::vector<std::string> positional;
    std::map<std::string, std::vector<std::string>> values;
    std::vector<std::string> flags;
    bool has(const std::string& f) const {
        return std::find(flags.begin(), flags.end(), f) != flags.end() || values.count(f) != 0;
    }
    std::optional<std::string> value(const std::string& f) const {
        auto it = values.find(f);
        if (it == values.end()) return std::nullopt;
        return it->second.back();
    }
};

std::optional<std::string> parseArgs(const std::vector<std::string>& in,
                                     const std::vector<std::string>& valued,
                                     const std::vector<std::string>& boolean, Args* out) {
    for (size_t i = 0; i < in.size(); ++i) {
        const std::string& a = in[i];
        if (a.size() > 2 && a[0] == '-' && a[1] == '-') {
            std::string name = a, val;
            bool inlineVal = false;
            if (auto eq = a.find('='); eq != std::string::npos) {
                name = a.substr(0, eq);
                val = a.substr(eq + 1);
                inlineVal = true;
            }
            if (std::find(valued.begin(), valued.end(), name) != valued.end()) {
                if (!inlineVal) {
                    if (i + 1 >= in.size()) return "option " + name + " needs a value";
                    val = in[++i];
                }
                out->values[name].push_back(val);
            } else if (std::find(boolean.begin(), boolean.end(), name) != boolean.end() && !inlineVal) {
                out->flags.push_back(name);
            } else {
                return "unknown option " + a;
            }
        } else {
            out->positional.push_back(a);
        }
    }
    return std::nullopt;
}

std::string humanBytes(double b) {
    const char* units[] = {"B", "KB", "MB", "GB", "TB"};
    int u = 0;
    while (b >= 1000 && u < 4) {
        b /= 1000;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
    return buf;
}

std::string clock(double s) {
    if (!std::isfinite(s) || s < 0) return "--:--";
    const long t = std::lround(s);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    return buf;
}

// ---- quantize -----------------------------------------------------------------------------

// One progress line on stderr (a terminal), rewritten after each layer.
void printIngestProgress(const IngestProgress& p) {
    const double rate = p.seconds > 0 ? p.sourceBytesDone / p.seconds : 0;
    const double left = rate > 0 ? (p.sourceBytesTotal - p.sourceBytesDone) / rate : NAN;
    std::fprintf(stderr, "\r\033[K  layers %zu/%zu  %s/%s  %s/s  ETA %s  %s", p.layersDone,
                 p.layersTotal, humanBytes(p.sourceBytesDone).c_str(),
                 humanBytes(p.sourceBytesTotal).c_str(), humanBytes(rate).c_str(),
                 clock(left).c_str(), p.currentLayer.c_str());
    std::fflush(stderr);
}

// --threads N (0..1024) into *threads; an error message, or nullopt when fine or absent.
std::optional<std::string> parseThreads(const Args& a, int* threads) {
    if (auto t = a.value("--threads")) {
        char* end = nullptr;
        const long v = std::strtol(t->c_str(), &end, 10);
        if (end == t->c_str() || *end != 0 || v < 0 || v > 1024) {
            return std::string("--threads needs an integer in 0..1024");
        }
        *threads = static_cast<int>(v);
    }
    return std::nullopt;
}

int cmdQuantize(const std::vector<std::string>& argv) {
    if (wantsHelp(argv)) {
        std::fputs(kQuantizeHelp, stdout);
        return kExitOk;
    }
    Args a;
    if (auto err = parseArgs(argv,
                             {"--cache", "--mode", "--preset", "--config", "--blocksize",
                              "--compute-dtype", "--skip", "--model-id", "--threads", "--device"},
                             {"--double-quant", "--no-double-quant", "--no-default-skips",
                              "--compress-payload", "--repair", "--quiet"},
                             &a)) {
        return usageError(*err, "quantize");
    }
    if (a.positional.size() != 1) return usageError("quantize takes exactly one INPUT", "quantize");
    if (!a.value("--cache")) return usageError("quantize needs --cache DIR", "quantize");
    QuantizationConfig cfg;
    std::optional<AdaptiveQuantizer> adaptive;
    if (auto p = a.value("--preset")) {
        if (*p == "int8") cfg = getInt8Config();
        else if (*p == "nf4") cfg = getNf4Config();
        else if (*p == "fp4") cfg = getFp4Config();
        else if (*p == "mixed") {
            if (a.has("--mode") || a.has("--config")) {
                return usageError("--preset mixed sets a mode per tensor; --mode and --config "
                                  "do not apply to it", "quantize");
            }
            adaptive = getMixedPrecisionConfig();
            cfg = adaptive->baseConfig();
        } else {
            return usageError("unknown preset " + *p + " (int8, nf4, fp4, mixed)", "quantize");
        }
    }
    if (auto f = a.value("--config")) {
        auto text = io::readWholeFile(*f);
        if (!text.isOk()) return fail(text.status());
        auto c = QuantizationConfig::fromJsonString(
            std::string_view(reinterpret_cast<const char*>(text->data()), text->size()));
        if (!c.isOk()) return usageError("--config " + *f + ": " + c.status().message(), "quantize");
        cfg = *c;
    }
    if (auto m = a.value("--mode")) {
        auto mode = parseMode(*m);
        if (!mode.isOk()) return usageError(mode.status().message(), "quantize");
        cfg.mode = *mode;
        if (*mode == QuantizationMode::kNf4) cfg.quantType = "nf4";
        if (*mode == QuantizationMode::kFp4) cfg.quantType = "fp4";
    }
    if (auto b = a.value("--blocksize")) {
        char* end = nullptr;
        const long v = std::strtol(b->c_str(), &end, 10);
        if (end == b->c_str() || *end != 0) return usageError("--blocksize needs an integer", "quantize");
        cfg.blocksize = static_cast<int>(v);
    }
    if (a.has("--double-quant") && a.has("--no-double-quant")) {
        return usageError("--double-quant and --no-double-quant are exclusive", "quantize");
    }
    if (a.has("--double-quant")) cfg.doubleQuant = true;
    if (a.has("--no-double-quant")) cfg.doubleQuant = false;
    if (auto d = a.value("--compute-dtype")) {
        auto dt = parseDType(*d);
        if (!dt || !dtypeIsCompute(*dt)) return usageError("--compute-dtype must be f16, bf16 or f32", "quantize");
        cfg.computeDType = *dt;
    }
    if (auto it = a.values.find("--skip"); it != a.values.end()) {
        for (const auto& s : it->second) cfg.llmInt8SkipModules.push_back(s);
    }
    // The flags given apply to each of the mixed preset's configs alike.
    std::optional<QuantizationConfig> attnCfg, ffnCfg;
    if (adaptive) {
        auto overrideFlags = [&](QuantizationConfig c) {
            if (a.has("--blocksize")) c.blocksize = cfg.blocksize;
            if (a.has("--double-quant") || a.has("--no-double-quant")) c.doubleQuant = cfg.doubleQuant;
            if (a.has("--compute-dtype")) c.computeDType = cfg.computeDType;
            for (const auto& s : cfg.llmInt8SkipModules) {
                if (std::find(c.llmInt8SkipModules.begin(), c.llmInt8SkipModules.end(), s) ==
                    c.llmInt8SkipModules.end()) {
                    c.llmInt8SkipModules.push_back(s);
                }
            }
            return c;
        };
        attnCfg = overrideFlags(adaptive->attentionConfig());
        ffnCfg = overrideFlags(adaptive->ffnConfig());
    }
    if (Status st = cfg.validate(); !st.isOk()) return usageError(st.message(), "quantize");
    for (const auto* c : {&attnCfg, &ffnCfg}) {
        if (!c->has_value()) continue;
        if (Status st = (*c)->validate(); !st.isOk()) return usageError(st.message(), "quantize");
    }
    int threads = 0;
    if (auto err = parseThreads(a, &threads)) return usageError(*err, "quantize");
    int device = -1;
    if (auto d = a.value("--device")) {
        auto dev = cuda::parseDevice(*d);
        if (!dev.isOk()) return usageError(dev.status().message(), "quantize");
        device = *dev;
    }

    IngestOptions opt;
    opt.input = a.positional[0];
    opt.cacheRoot = *a.value("--cache");
    opt.modelId = a.value("--model-id").value_or("");
    opt.config = cfg;
    opt.attentionConfig = attnCfg;
    opt.ffnConfig = ffnCfg;
    opt.defaultSkips = !a.has("--no-default-skips");
    opt.compressPayload = a.has("--compress-payload");
    opt.threads = threads;
    opt.device = device;
    opt.verifyReused = a.has("--repair");
    const bool tty = ::isatty(STDERR_FILENO) && !a.has("--quiet");
    if (tty) opt.progress = printIngestProgress;
    auto sum = ingestCheckpoint(opt);
    if (tty) std::fputs("\n", stderr);
    if (!sum.isOk()) return fail(sum.status());
    const double ratio = sum->sourceBytes ? static_cast<double>(sum->cacheBytes) / sum->sourceBytes : 0;
    const double bpw = sum->weights ? 8.0 * sum->storedBytes / sum->weights : 0;
    std::printf("quantized %s -> %s\n", opt.input.c_str(), sum->cacheDir.c_str());
    std::printf("  model id       %s\n", sum->modelId.c_str());
    if (adaptive) {
        std::printf("  mode           mixed: attention %s, ffn %s, other %s (compute %s)\n",
                    modeName(attnCfg->mode), modeName(ffnCfg->mode), modeName(cfg.mode),
                    dtypeName(cfg.computeDType));
    } else {
        std::printf("  mode           %s (compute %s)\n", modeName(cfg.mode), dtypeName(cfg.computeDType));
    }
    if (device >= 0) std::printf("  device         cuda:%d (%s)\n", device, cuda::deviceDescription(device).c_str());
    std::printf("  architecture   %s%s\n", architectureName(sum->architecture),
                opt.defaultSkips ? "" : " (default skips off)");
    std::printf("  layers         %zu (%zu written, %zu already complete", sum->layers,
                sum->layersWritten, sum->layersReused);
    if (sum->layersRepaired > 0) std::printf(", %zu damaged ones rewritten", sum->layersRepaired);
    std::printf(")\n");
    std::printf("  tensors        %zu (%zu imported from bitsandbytes as is", sum->tensors,
                sum->importedBnbTensors);
    if (sum->fp8TensorsScaled > 0) {
        std::printf(", %zu fp8 dequantized with their scales", sum->fp8TensorsScaled);
    }
    if (sum->fp8TensorsKept > 0) std::printf(", %zu fp8 kept as stored", sum->fp8TensorsKept);
    if (sum->mxfp4TensorsDecoded > 0) std::printf(", %zu mxfp4 decoded", sum->mxfp4TensorsDecoded);
    std::printf(")\n");
    std::printf("  source bytes   %s\n", humanBytes(sum->sourceBytes).c_str());
    std::printf("  cache bytes    %s (ratio %.3f)\n", humanBytes(sum->cacheBytes).c_str(), ratio);
    std::printf("  bits/weight    %.3f\n", bpw);
    std::printf("  time           %.2f s (%s/s)\n", sum->seconds,
                humanBytes(sum->seconds > 0 ? sum->sourceBytes / sum->seconds : 0).c_str());
    return kExitOk;
}

// ---- cache discovery ----------------------------------------------------------------------

struct CacheView {
    std::string dir;
    io::CacheManifest manifest;
};

Result<std::vector<CacheView>> openCaches(const std::string& root, const std::optional<std::string>& modelId) {
    SLI_ASSIGN_OR_RETURN(auto dirs, io::findCacheDirs(root));
    std::vector<CacheView> out;
    for (const auto& d : dirs) {
        auto m = io::readManifest(d);
        if (!m.isOk()) return m.status();
        if (modelId && m->modelId != *modelId) continue;
        out.push_back({d, std::move(*m)});
    }
    if (out.empty()) {
        return Status::notFound("no layer cache under " + root +
                                (modelId ? " for model " + *modelId : std::string()));
    }
    return out;
}

double bitsPerWeight(uint64_t bytes, uint64_t weights) {
    return weights ? 8.0 * static_cast<double>(bytes) / static_cast<double>(weights) : 0.0;
}

// ---- inspect ------------------------------------------------------------------------------

// Damaged or unsupported data, as opposed to a file that could not be read.
bool isDataError(const Status& st) { return st.isCorruption() || st.isNotSupported(); }

int cmdInspect(const std::vector<std::string>& argv) {
    if (wantsHelp(argv)) {
        std::fputs(kInspectHelp, stdout);
        return kExitOk;
    }
    Args a;
    if (auto err = parseArgs(argv, {"--model-id"}, {"--json"}, &a)) return usageError(*err, "inspect");
    if (a.positional.size() != 1) return usageError("inspect takes exactly one DIR", "inspect");
    auto caches = openCaches(a.positional[0], a.value("--model-id"));
    if (!caches.isOk()) return fail(caches.status());
    const bool json = a.has("--json");
    Json all = Json::array();
    bool anyBad = false, anyIo = false;
    for (const auto& c : *caches) {
        Json jc = Json::object();
        jc.set("directory", Json::string(c.dir));
        jc.set("model_id", Json::string(c.manifest.modelId));
        auto cfg = parseJson(c.manifest.configJson);
        jc.set("config", cfg.isOk() ? *cfg : Json::string(c.manifest.configJson));
        jc.set("source", Json::string(c.manifest.source));
        if (!c.manifest.policyJson.empty()) {
            auto pol = parseJson(c.manifest.policyJson);
            jc.set("policy", pol.isOk() ? *pol : Json::string(c.manifest.policyJson));
        }
        if (!c.manifest.architecture.empty()) {
            jc.set("architecture", Json::string(c.manifest.architecture));
        }
        if (!json) {
            std::printf("cache %s\n  model %s\n  config %s\n", c.dir.c_str(),
                        c.manifest.modelId.c_str(), c.manifest.configJson.c_str());
            if (!c.manifest.policyJson.empty()) {
                std::printf("  policy %s\n", c.manifest.policyJson.c_str());
            }
            if (!c.manifest.architecture.empty()) {
                std::printf("  architecture %s\n", c.manifest.architecture.c_str());
            }
            std::printf("  source %s\n", c.manifest.source.c_str());
        }
        Json layers = Json::array();
        uint64_t totStored = 0, totRaw = 0, totFile = 0, totWeights = 0;
        size_t present = 0, missing = 0;
        for (const auto& ml : c.manifest.layers) {
            const std::string path = io::joinPath(c.dir, ml.file);
            Json jl = Json::object();
            jl.set("index", Json::integer(ml.index));
            jl.set("name", Json::string(ml.name));
            jl.set("file", Json::string(ml.file));
            if (!io::pathExists(path)) {
                ++missing;
                jl.set("status", Json::string("missing"));
                if (!json) std::printf("  layer %lld %s: missing\n", static_cast<long long>(ml.index), ml.name.c_str());
                layers.push(std::move(jl));
                continue;
            }
            auto idx = io::readLayerIndex(path);
            if (!idx.isOk()) {
                // Damaged data (exit 1) or a file that cannot be read, e.g. permissions (exit 3)
                const bool bad = isDataError(idx.status());
                (bad ? anyBad : anyIo) = true;
                jl.set("status", Json::string(bad ? "corrupt" : "unreadable"));
                jl.set("error", Json::string(idx.status().message()));
                if (!json) std::printf("  layer %lld %s: %s: %s\n", static_cast<long long>(ml.index),
                                       ml.name.c_str(), bad ? "CORRUPT" : "UNREADABLE",
                                       idx.status().message().c_str());
                layers.push(std::move(jl));
                continue;
            }
            ++present;
            uint64_t stored = 0, raw = 0, weights = 0;
            Json tensors = Json::array();
            for (const auto& te : idx->tensors) {
                const uint64_t n = static_cast<uint64_t>(std::max<int64_t>(0, te.info.numel()));
                stored += te.storedBytes();
                raw += te.rawBytes();
                weights += n;
                Json jt = Json::object();
                jt.set("name", Json::string(te.info.name));
                Json shape = Json::array();
                for (int64_t d : te.info.shape) shape.push(Json::integer(d));
                jt.set("shape", std::move(shape));
                jt.set("mode", Json::string(modeName(te.info.mode)));
                jt.set("stored_dtype", Json::string(dtypeName(te.info.storedDType)));
                jt.set("compute_dtype", Json::string(dtypeName(te.info.computeDType)));
                jt.set("bytes", Json::unsignedInteger(te.rawBytes()));
                jt.set("stored_bytes", Json::unsignedInteger(te.storedBytes()));
                jt.set("bits_per_weight", Json::number(bitsPerWeight(te.rawBytes(), n)));
                tensors.push(std::move(jt));
            }
            const uint64_t fileBytes = idx->dataEnd;
            totStored += stored;
            totRaw += raw;
            totFile += fileBytes;
            totWeights += weights;
            jl.set("status", Json::string("present"));
            jl.set("tensors", std::move(tensors));
            jl.set("bytes", Json::unsignedInteger(raw));
            jl.set("file_bytes", Json::unsignedInteger(fileBytes));
            jl.set("bits_per_weight", Json::number(bitsPerWeight(raw, weights)));
            if (!json) {
                std::printf("  layer %lld %s: %zu tensors, %s (file %s), %.3f bits/weight\n",
                            static_cast<long long>(ml.index), ml.name.c_str(), idx->tensors.size(),
                            humanBytes(raw).c_str(), humanBytes(fileBytes).c_str(),
                            bitsPerWeight(raw, weights));
                for (const auto& te : idx->tensors) {
                    const uint64_t n = static_cast<uint64_t>(std::max<int64_t>(0, te.info.numel()));
                    std::printf("    %-60s %-13s %-5s %-16s %10s %7.3f b/w\n", te.info.name.c_str(),
                                modeName(te.info.mode), dtypeName(te.info.storedDType),
                                shapeToString(te.info.shape).c_str(), humanBytes(te.rawBytes()).c_str(),
                                bitsPerWeight(te.rawBytes(), n));
                }
            }
            layers.push(std::move(jl));
        }
        Json tot = Json::object();
        tot.set("layers", Json::integer(static_cast<int64_t>(c.manifest.layers.size())));
        tot.set("present", Json::integer(static_cast<int64_t>(present)));
        tot.set("missing", Json::integer(static_cast<int64_t>(missing)));
        tot.set("weights", Json::unsignedInteger(totWeights));
        tot.set("bytes", Json::unsignedInteger(totRaw));
        tot.set("stored_bytes", Json::unsignedInteger(totStored));
        tot.set("file_bytes", Json::unsignedInteger(totFile));
        tot.set("bits_per_weight", Json::number(bitsPerWeight(totRaw, totWeights)));
        jc.set("layers", std::move(layers));
        jc.set("totals", std::move(tot));
        if (!json) {
            std::printf("  total: %zu layers (%zu present, %zu missing), %llu weights, %s "
                        "(files %s), %.3f bits/weight\n",
                        c.manifest.layers.size(), present, missing,
                        static_cast<unsigned long long>(totWeights), humanBytes(totRaw).c_str(),
                        humanBytes(totFile).c_str(), bitsPerWeight(totRaw, totWeights));
        }
        all.push(std::move(jc));
    }
    if (json) std::printf("%s\n", all.dump().c_str());
    return anyBad ? kExitCorrupt : anyIo ? kExitIo : kExitOk;
}

// ---- verify -------------------------------------------------------------------------------

int cmdVerify(const std::vector<std::string>& argv) {
    if (wantsHelp(argv)) {
        std::fputs(kVerifyHelp, stdout);
        return kExitOk;
    }
    Args a;
    if (auto err = parseArgs(argv, {"--model-id", "--threads"}, {"--repair", "--quiet"}, &a)) {
        return usageError(*err, "verify");
    }
    if (a.positional.size() != 1) return usageError("verify takes exactly one DIR", "verify");
    const bool repair = a.has("--repair");
    if (!repair && (a.has("--threads") || a.has("--quiet"))) {
        return usageError("--threads and --quiet go with --repair", "verify");
    }
    int threads = 0;
    if (auto err = parseThreads(a, &threads)) return usageError(*err, "verify");
    auto dirs = io::findCacheDirs(a.positional[0]);
    if (!dirs.isOk()) return fail(dirs.status());
    if (dirs->empty()) return fail(Status::notFound("no layer cache under " + a.positional[0]));
    size_t ok = 0, corrupt = 0, missing = 0, unreadable = 0, repaired = 0;
    bool repairFailed = false;
    // One line per file: damaged data counts as corrupt (exit 1), a file that cannot be read
    // (permissions, an I/O error) as unreadable (exit 3).
    const auto report = [&](const Status& st, const std::string& what) {
        if (isDataError(st)) {
            ++corrupt;
            std::printf("  CORRUPT %s: %s\n", what.c_str(), st.message().c_str());
        } else {
            ++unreadable;
            std::printf("  ERROR   %s: %s\n", what.c_str(), st.toString().c_str());
        }
    };
    for (const auto& d : *dirs) {
        auto m = io::readManifest(d);
        if (!m.isOk()) {
            report(m.status(), io::joinPath(d, io::kManifestName));
            continue;
        }
        if (auto id = a.value("--model-id"); id && m->modelId != *id) continue;
        std::printf("cache %s (model %s)\n", d.c_str(), m->modelId.c_str());
        // The listed layers' damage, which --repair can undo.
        const size_t corruptBefore = corrupt, missingBefore = missing, unreadableBefore = unreadable;
        std::vector<std::string> listed;
        for (const auto& ml : m->layers) {
            const std::string path = io::joinPath(d, ml.file);
            listed.push_back(ml.file);
            if (!io::pathExists(path)) {
                std::printf("  MISSING layer %lld (%s): %s\n", static_cast<long long>(ml.index),
                            ml.name.c_str(), path.c_str());
                ++missing;
                continue;
            }
            io::LayerFileIndex idx;
            Status st = io::verifyLayerFile(path, &idx);
            if (st.isOk() && (idx.layerIndex != ml.index || idx.modelId != m->modelId)) {
                st = Status::corruption("cache file " + path + " holds layer " +
                                        std::to_string(idx.layerIndex) + " of model " + idx.modelId +
                                        ", the manifest expects layer " + std::to_string(ml.index) +
                                        " of " + m->modelId);
            }
            if (st.isOk()) {
                ++ok;
                std::printf("  ok      layer %lld (%s): %zu tensors\n", static_cast<long long>(ml.index),
                            ml.name.c_str(), idx.tensors.size());
            } else {
                report(st, "layer " + std::to_string(ml.index) + " (" + ml.name + ")");
            }
        }
        const size_t badCorrupt = corrupt - corruptBefore, badMissing = missing - missingBefore,
                     badUnreadable = unreadable - unreadableBefore;
        if (repair && badCorrupt + badMissing + badUnreadable > 0) {
            // Rewrites exactly the damaged / missing / unreadable layers; the intact ones are
            // verified again on the way (the cache may have changed since the pass above).
            auto opt = ingestOptionsForCache(d);
            const auto run = [&]() -> Result<IngestSummary> {
                if (!opt.isOk()) return opt.status();
                opt->threads = threads;
                if (::isatty(STDERR_FILENO) && !a.has("--quiet")) opt->progress = printIngestProgress;
                auto r = ingestCheckpoint(*opt);
                if (opt->progress) std::fputs("\n", stderr);
                return r;
            };
            const Result<IngestSummary> sum = run();
            if (sum.isOk()) {
                std::printf("  REPAIRED %zu layers from %s (%zu intact)\n", sum->layersWritten,
                            opt->input.c_str(), sum->layersReused);
                repaired += sum->layersWritten;
                ok += sum->layersWritten;
                corrupt -= badCorrupt;
                missing -= badMissing;
                unreadable -= badUnreadable;
            } else {
                std::printf("  NOT REPAIRED: %s\n", sum.status().toString().c_str());
                repairFailed = true;
            }
        }
        // Layer files the manifest does not list are verified too.
        auto names = io::listDirectory(d);
        if (names.isOk()) {
            for (const auto& n : *names) {
                if (n[0] == '.' || n.size() < 4 || n.compare(n.size() - 4, 4, io::kLayerFileSuffix) != 0) continue;
                if (std::find(listed.begin(), listed.end(), n) != listed.end()) continue;
                Status st = io::verifyLayerFile(io::joinPath(d, n));
                if (st.isOk()) {
                    ++ok;
                    std::printf("  ok      %s (not in the manifest)\n", n.c_str());
                } else {
                    report(st, n);
                }
            }
        } else {
            report(names.status(), d);
        }
    }
    std::printf("%zu layers ok, %zu corrupt, %zu missing", ok, corrupt, missing);
    if (unreadable > 0) std::printf(", %zu unreadable", unreadable);
    if (repair) std::printf(" (%zu repaired)", repaired);
    std::printf("\n");
    if (!repair && corrupt + missing + unreadable > 0) {
        std::printf("'sli verify %s --repair' quantizes the damaged and missing layers again "
                    "from their source.\n",
                    a.positional[0].c_str());
    }
    if (corrupt > 0) return kExitCorrupt;
    // A repair asked for and not done (say, of missing layers only) is a failure too.
    return unreadable > 0 || repairFailed ? kExitIo : kExitOk;
}

// ---- export -------------------------------------------------------------------------------

std::string rawPrefix(const std::string& name) {
    const std::string suf = ".weight";
    if (name.size() > suf.size() && name.compare(name.size() - suf.size(), suf.size(), suf) == 0) {
        return name.substr(0, name.size() - suf.size());
    }
    return name;
}

std::string quantStateJson(const QuantizedTensorInfo& in) {
    Json j = Json::object();
    j.set("quant_type", Json::string(in.mode == QuantizationMode::kNf4 ? "nf4" : "fp4"));
    j.set("blocksize", Json::integer(in.blocksize));
    j.set("dtype", Json::string(dtypeTorchName(in.computeDType)));
    Json shape = Json::array();
    for (int64_t d : in.shape) shape.push(Json::integer(d));
    j.set("shape", std::move(shape));
    if (in.doubleQuant) {
        j.set("nested_blocksize", Json::integer(in.nestedBlocksize));
        j.set("nested_dtype", Json::string("float32"));
        j.set("nested_offset", Json::number(static_cast<double>(in.nestedOffset)));
    }
    return j.dump();
}

// One output tensor: where its bytes come from.
struct OutTensor {
    SafetensorsWriter::TensorDecl decl;
    size_t layer;   // index into the layer list
    size_t tensor;  // index in the layer
    int part;       // raw export: the part (-1: the quant_state JSON); dequantized: -1
    std::string literal;  // quant_state JSON bytes
    bool transposeBack = false;  // dequantized GPT-2 Conv1D weight: [out, in] -> [in, out]
};

// [rows, cols] -> [cols, rows], elements of `esz` bytes.
void transposeInto(std::span<const uint8_t> in, int64_t rows, int64_t cols, size_t esz,
                   std::vector<uint8_t>& out) {
    out.resize(in.size());
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
            std::memcpy(out.data() + (c * rows + r) * esz, in.data() + (r * cols + c) * esz, esz);
        }
    }
}

Status convertNone(const QuantizedTensorInfo& in, std::span<const uint8_t> src, DType dst,
                   std::vector<uint8_t>& out) {
    const int64_t n = in.numel();
    out.resize(static_cast<size_t>(n) * dtypeSize(dst));
    if (dst == in.storedDType) {
        std::memcpy(out.data(), src.data(), out.size());
        return Status();
    }
    std::vector<float> tmp(static_cast<size_t>(n));
    SLI_RETURN_IF_ERROR(convertToF32(in.storedDType, src.data(), n, tmp.data()));
    return convertFromF32(tmp.data(), n, dst, out.data());
}

int cmdExport(const std::vector<std::string>& argv) {
    if (wantsHelp(argv)) {
        std::fputs(kExportHelp, stdout);
        return kExitOk;
    }
    Args a;
    if (auto err = parseArgs(argv, {"--output", "--dtype", "--model-id", "--threads"}, {"--raw"}, &a)) {
        return usageError(*err, "export");
    }
    if (a.positional.size() != 1) return usageError("export takes exactly one DIR", "export");
    if (!a.value("--output")) return usageError("export needs --output FILE.safetensors", "export");
    std::optional<DType> dtype;
    if (auto d = a.value("--dtype")) {
        auto dt = parseDType(*d);
        if (!dt || !dtypeIsCompute(*dt)) return usageError("--dtype must be f16, bf16 or f32", "export");
        dtype = *dt;
    }
    const bool raw = a.has("--raw");
    if (raw && dtype) return usageError("--raw exports stored bytes; --dtype does not apply", "export");
    int threads = 0;
    if (auto err = parseThreads(a, &threads)) return usageError(*err, "export");
    auto caches = openCaches(a.positional[0], a.value("--model-id"));
    if (!caches.isOk()) return fail(caches.status());
    if (caches->size() != 1) {
        std::string list;
        for (const auto& c : *caches) list += "\n  " + c.dir + " (model " + c.manifest.modelId + ")";
        return usageError("several caches under " + a.positional[0] +
                              "; pick one with --model-id or a deeper DIR:" + list, "export");
    }
    const CacheView& cache = caches->front();
    std::vector<io::LayerFileIndex> indexes;
    for (const auto& ml : cache.manifest.layers) {
        const std::string path = io::joinPath(cache.dir, ml.file);
        if (!io::pathExists(path)) {
            return fail(Status::notFound("layer " + std::to_string(ml.index) + " (" + ml.name +
                                         ") is missing from " + cache.dir +
                                         "; rerun 'sli quantize' to complete the cache"));
        }
        auto idx = io::readLayerIndex(path);
        if (!idx.isOk()) return fail(idx.status());
        indexes.push_back(std::move(*idx));
    }
    // Ingestion quantizes GPT-2 Conv1D weights as [out, in]; dequantized, they go back to the
    // [in, out] their names stand for in a checkpoint.
    const bool gpt2 = cache.manifest.architecture == architectureName(Architecture::kGpt2);
    std::vector<OutTensor> outs;
    for (size_t l = 0; l < indexes.size(); ++l) {
        for (size_t t = 0; t < indexes[l].tensors.size(); ++t) {
            const QuantizedTensorInfo& in = indexes[l].tensors[t].info;
            const int64_t n = in.numel();
            if (!raw || in.mode == QuantizationMode::kNone) {
                DType d = in.storedDType;
                if (!raw && in.mode != QuantizationMode::kNone) d = dtype.value_or(in.computeDType);
                if (!raw && in.mode == QuantizationMode::kNone && dtypeIsCompute(in.storedDType)) {
                    d = dtype.value_or(in.computeDType);
                }
                OutTensor ot{{in.name, d, in.shape}, l, t, raw ? 0 : -1, {}};
                ot.transposeBack = !raw && gpt2 && in.mode != QuantizationMode::kNone &&
                                   isGpt2Conv1DWeight(Architecture::kGpt2, in.name, in.shape.size());
                if (ot.transposeBack) std::swap(ot.decl.shape[0], ot.decl.shape[1]);
                outs.push_back(std::move(ot));
                continue;
            }
            const std::string P = rawPrefix(in.name);
            const int64_t rows = in.rows();
            const int64_t cols = in.cols();
            switch (in.mode) {
                case QuantizationMode::kNf4:
                case QuantizationMode::kFp4: {
                    const int64_t nb = (n + in.blocksize - 1) / in.blocksize;
                    const int64_t packed = (n + 1) / 2;
                    const int64_t isz = static_cast<int64_t>(dtypeSize(in.storedDType));
                    if (packed % isz != 0) {
                        return fail(Status::notSupported("tensor " + in.name + ": packed bytes not a "
                                                         "multiple of its quant_storage dtype"));
                    }
                    outs.push_back({{P + ".weight", in.storedDType, {packed / isz, 1}}, l, t, 0, {}});
                    outs.push_back({{P + ".weight.absmax", in.doubleQuant ? DType::kU8 : DType::kF32, {nb}}, l, t, 1, {}});
                    if (in.doubleQuant) {
                        outs.push_back({{P + ".weight.nested_absmax", DType::kF32,
                                         {(nb + in.nestedBlocksize - 1) / in.nestedBlocksize}}, l, t, 2, {}});
                        outs.push_back({{P + ".weight.nested_quant_map", DType::kF32, {256}}, l, t, 3, {}});
                    }
                    outs.push_back({{P + ".weight.quant_map", DType::kF32, {16}}, l, t, 4, {}});
                    const std::string js = quantStateJson(in);
                    outs.push_back({{P + ".weight.quant_state.bitsandbytes__" +
                                         (in.mode == QuantizationMode::kNf4 ? "nf4" : "fp4"),
                                     DType::kU8, {static_cast<int64_t>(js.size())}}, l, t, -1, js});
                    break;
                }
                case QuantizationMode::kInt8:
                    outs.push_back({{P + ".weight", DType::kI8, {rows, cols}}, l, t, 0, {}});
                    outs.push_back({{P + ".SCB", DType::kF32, {rows}}, l, t, 1, {}});
                    break;
                case QuantizationMode::kInt8Dynamic:
                    outs.push_back({{P + ".weight", DType::kI8, {rows, cols}}, l, t, 0, {}});
                    outs.push_back({{P + ".weight_scale", DType::kF32, {rows}}, l, t, 1, {}});
                    break;
                case QuantizationMode::kInt4:
                    outs.push_back({{P + ".weight", DType::kU8, {n / 32, 18}}, l, t, 0, {}});
                    break;
                case QuantizationMode::kNone: break;
            }
        }
    }
    std::vector<SafetensorsWriter::TensorDecl> decls;
    for (const auto& o : outs) decls.push_back(o.decl);
    std::vector<std::pair<std::string, std::string>> md = {
        {"format", "pt"}, {"sli_model_id", cache.manifest.modelId}, {"sli_config", cache.manifest.configJson}};
    auto writer = SafetensorsWriter::create(*a.value("--output"), std::move(decls), md);
    if (!writer.isOk()) return fail(writer.status());
    size_t o = 0;
    std::vector<uint8_t> buf, transposed;
    for (size_t l = 0; l < indexes.size(); ++l) {
        auto layer = io::readLayerFile(indexes[l].path, /*verify=*/true);
        if (!layer.isOk()) return fail(layer.status());
        for (; o < outs.size() && outs[o].layer == l; ++o) {
            const OutTensor& ot = outs[o];
            const QuantizedTensor& qt = layer->tensors[ot.tensor];
            Status st;
            if (raw) {
                st = ot.part < 0 ? writer->append(std::span(reinterpret_cast<const uint8_t*>(ot.literal.data()),
                                                             ot.literal.size()))
                                 : writer->append(qt.parts[ot.part].bytes());
            } else if (qt.info.mode == QuantizationMode::kNone) {
                st = convertNone(qt.info, qt.part(QuantPart::kPayload).bytes(), ot.decl.dtype, buf);
                if (st.isOk()) st = writer->append(buf);
            } else {
                buf.resize(static_cast<size_t>(qt.info.numel()) * dtypeSize(ot.decl.dtype));
                st = kernels::dequantize(qt.view(), ot.decl.dtype, buf, threads);
                if (st.isOk() && ot.transposeBack) {
                    transposeInto(buf, qt.info.shape[0], qt.info.shape[1], dtypeSize(ot.decl.dtype),
                                  transposed);
                    st = writer->append(transposed);
                } else if (st.isOk()) {
                    st = writer->append(buf);
                }
            }
            if (!st.isOk()) return fail(st.withContext("exporting " + ot.decl.name));
        }
    }
    if (Status st = writer->finish(); !st.isOk()) return fail(st);
    std::printf("exported %zu tensors from %s to %s%s\n", outs.size(), cache.dir.c_str(),
                a.value("--output")->c_str(), raw ? " (raw)" : "");
    return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
    // A write past RLIMIT_FSIZE must fail with EFBIG (reported), not kill the process.
    ::signal(SIGXFSZ, SIG_IGN);
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty()) {
        std::fputs(kMainHelp, stderr);
        return kExitUsage;
    }
    const std::string cmd = args[0];
    args.erase(args.begin());
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
        std::fputs(kMainHelp, stdout);
        return kExitOk;
    }
    if (cmd == "--version") {
        std::printf("sli %s (kernels: %s)\n", SLI_VERSION, sli::kernels::activeIsa());
        return kExitOk;
    }
    if (cmd == "quantize") return cmdQuantize(args);
    if (cmd == "inspect") return cmdInspect(args);
    if (cmd == "verify") return cmdVerify(args);
    if (cmd == "export") return cmdExport(args);
    return usageError("unknown command '" + cmd + "'", nullptr);
}

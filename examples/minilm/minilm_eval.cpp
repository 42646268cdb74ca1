// minilm_eval: runs all-MiniLM-L6-v2 on layers streamed by sli::Engine, checks the fp32 cache
// against sentence-transformers' reference embeddings, and prints the retention table of every
// quantization mode (mean / min cosine vs fp32, nearest-neighbour agreement, per-layer error).
//
//   scripts/fetch_minilm.sh
//   build/examples/minilm/minilm_eval [--model tests/data/minilm] [--reference tests/golden/minilm]
//       [--cache DIR] [--modes fp32,int8,...] [--threads N] [--json FILE]
//
// Exit status: 0 on success, 1 on an error, 2 on a usage error, 77 when the weights are absent.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "retention.h"
#include "sli/json.h"
#include "sli/log.h"

using namespace sli;
using namespace sli::minilm;

namespace {

constexpr const char* kUsage =
    "usage: minilm_eval [--model DIR] [--reference DIR] [--cache DIR] [--modes LIST]\n"
    "                   [--threads N] [--json FILE]\n"
    "  --model DIR      all-MiniLM-L6-v2 files (default tests/data/minilm; fetch them with\n"
    "                   scripts/fetch_minilm.sh)\n"
    "  --reference DIR  reference.json / reference.f32 (default tests/golden/minilm)\n"
    "  --cache DIR      per-mode layer caches, reused when complete (default\n"
    "                   $TMPDIR/sli-minilm-eval)\n"
    "  --modes LIST     comma-separated, from: fp32,none_f16,int8,int8_dynamic,nf4,nf4_nodq,\n"
    "                   fp4,int4,mixed (default all; fp32 is always run as the baseline)\n"
    "  --threads N      quantization and matmul threads (default 2)\n"
    "  --json FILE      also write the table as JSON\n";

int usage(const std::string& msg) {
    std::fprintf(stderr, "minilm_eval: %s\n%s", msg.c_str(), kUsage);
    return 2;
}

double seconds(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
    std::string modelDir = "tests/data/minilm", refDir = "tests/golden/minilm";
    const char* tmp = std::getenv("TMPDIR");
    std::string cacheRoot = std::string(tmp ? tmp : "/tmp") + "/sli-minilm-eval";
    std::string modesArg, jsonPath;
    int threads = 2;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "-h" || a == "--help") {
            std::fputs(kUsage, stdout);
            return 0;
        }
        if (i + 1 >= argc) return usage(a + " needs a value");
        const std::string v = argv[++i];
        if (a == "--model")
            modelDir = v;
        else if (a == "--reference")
            refDir = v;
        else if (a == "--cache")
            cacheRoot = v;
        else if (a == "--modes")
            modesArg = v;
        else if (a == "--json")
            jsonPath = v;
        else if (a == "--threads") {
            char* end = nullptr;
            const long t = std::strtol(v.c_str(), &end, 10);
            if (*end != 0 || t < 1 || t > 256) return usage("--threads needs 1..256");
            threads = static_cast<int>(t);
        } else {
            return usage("unknown option " + a);
        }
    }
    if (!std::filesystem::exists(modelDir + "/model.safetensors")) {
        std::fprintf(stderr,
                     "minilm_eval: %s/model.safetensors is absent; run "
                     "scripts/fetch_minilm.sh\n",
                     modelDir.c_str());
        return 77;
    }
    std::vector<ModeSpec> modes;
    {
        auto fp32 = findMode("fp32");
        modes.push_back(*fp32);
        std::vector<std::string> names;
        if (modesArg.empty()) {
            for (auto& m : standardModes()) names.push_back(m.name);
        } else {
            size_t p = 0;
            while (p <= modesArg.size()) {
                size_t q = modesArg.find(',', p);
                if (q == std::string::npos) q = modesArg.size();
                names.push_back(modesArg.substr(p, q - p));
                p = q + 1;
            }
        }
        for (auto& n : names) {
            if (n == "fp32") continue;
            auto m = findMode(n);
            if (!m.isOk()) return usage(m.status().message());
            modes.push_back(*m);
        }
    }

    auto ref = loadReference(refDir);
    if (!ref.isOk()) {
        std::fprintf(stderr, "minilm_eval: %s\n", ref.status().toString().c_str());
        return 1;
    }
    auto config = BertConfig::fromFile(modelDir + "/config.json");
    if (!config.isOk()) {
        std::fprintf(stderr, "minilm_eval: %s\n", config.status().toString().c_str());
        return 1;
    }
    BertEncoder encoder(*config);
    EncoderOptions eopt;
    eopt.keepHiddenStates = true;
    eopt.threads = threads;
    EngineOptions engineOptions;
    engineOptions.workerThreads = threads;

    std::printf(
        "all-MiniLM-L6-v2, %zu sentences (%lld tokens), layers streamed by sli::Engine "
        "(computeDType f32)\n",
        ref->sentences.size(), static_cast<long long>(ref->tokens.totalTokens()));
    EncoderOutput baseline;
    Json rows = Json::array();
    std::printf("\n%-13s %-30s %7s %6s %10s %10s %7s  %s\n", "mode", "", "cache", "bits/w",
                "mean cos", "min cos", "NN agr", "rel L2 of each layer's output (emb, L0..L5)");
    for (size_t mi = 0; mi < modes.size(); ++mi) {
        const ModeSpec& m = modes[mi];
        auto t0 = std::chrono::steady_clock::now();
        auto cache = buildCache(modelDir, cacheRoot, m, threads);
        if (!cache.isOk()) {
            std::fprintf(stderr, "minilm_eval: %s\n", cache.status().toString().c_str());
            return 1;
        }
        const double quantSec = seconds(t0);
        t0 = std::chrono::steady_clock::now();
        auto out = runStreamed(encoder, *cache, ref->tokens, engineOptions, eopt);
        if (!out.isOk()) {
            std::fprintf(stderr, "minilm_eval: mode %s: %s\n", m.name.c_str(),
                         out.status().toString().c_str());
            return 1;
        }
        const double runSec = seconds(t0);
        if (mi == 0) {
            baseline = *out;
            EncoderOutput refOut;
            refOut.hiddenSize = ref->dim;
            refOut.embeddings = ref->embeddings;
            Retention r = compareOutputs(refOut, baseline);
            double worst = 0;
            for (size_t i = 0; i < refOut.embeddings.size(); ++i) {
                worst = std::max(worst,
                                 double(std::fabs(refOut.embeddings[i] - baseline.embeddings[i])));
            }
            std::printf(
                "%-13s %-30s %7s %6s %10.7f %10.7f %6.0f%%  fp32 cache vs "
                "sentence-transformers: 1 - min cos %.1e, max |diff| %.1e\n",
                "reference", "sentence-transformers, torch", "-", "-", r.meanCosine, r.minCosine,
                100 * r.nnAgreement, 1 - r.minCosine, worst);
        }
        Retention r = compareOutputs(baseline, *out);
        const double bits =
            8.0 * static_cast<double>(cache->cacheBytes) / static_cast<double>(cache->weights);
        std::string errs;
        Json perLayer = Json::array();
        for (double e : r.stageRelL2) {
            char buf[32];
            std::snprintf(buf, sizeof buf, "%s%.1e", errs.empty() ? "" : " ", e);
            errs += buf;
            perLayer.push(Json::number(e));
        }
        std::printf("%-13s %-30s %5.1fMB %6.2f %10.7f %10.7f %6.0f%%  %s\n", m.name.c_str(),
                    m.description.c_str(), cache->cacheBytes / 1e6, bits, r.meanCosine, r.minCosine,
                    100 * r.nnAgreement, errs.c_str());
        std::fflush(stdout);
        Json row = Json::object();
        row.set("mode", Json::string(m.name));
        row.set("description", Json::string(m.description));
        row.set("cache_bytes", Json::unsignedInteger(cache->cacheBytes));
        row.set("cache_bits_per_weight", Json::number(bits));
        row.set("mean_cosine", Json::number(r.meanCosine));
        row.set("min_cosine", Json::number(r.minCosine));
        row.set("nn_agreement", Json::number(r.nnAgreement));
        row.set("layer_rel_l2", std::move(perLayer));
        row.set("quantize_seconds", Json::number(quantSec));
        row.set("run_seconds", Json::number(runSec));
        rows.push(std::move(row));
    }
    std::printf(
        "\ncache: layer files on disk; bits/w: cache bytes x 8 / weights (all 22.7M, of "
        "which the word embeddings, 11.7M, norms and biases stay in the compute dtype, "
        "f16, by default)\n");
    if (!jsonPath.empty()) {
        std::ofstream f(jsonPath);
        f << rows.dump() << "\n";
        if (!f) {
            std::fprintf(stderr, "minilm_eval: cannot write %s\n", jsonPath.c_str());
            return 1;
        }
    }
    return 0;
}

// Smoke tests of the slibench binary (path in $SLIBENCH): a --tiny run succeeds and writes the
// stable JSON keys; bad work directories, devices, budgets and flags fail with clear messages.
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "sli/json.h"

namespace {

namespace fs = std::filesystem;

struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/sli-slibench-XXXXXX";
        path = ::mkdtemp(tmpl);
    }
    ~TempDir() { fs::remove_all(path); }
};

struct RunOutput {
    int status = -1;
    std::string out;
    std::string err;
};

// Runs slibench with `args`; stdout and stderr captured.
RunOutput slibench(const std::string& args, const std::string& dir) {
    const char* bin = std::getenv("SLIBENCH");
    REQUIRE_MESSAGE(bin != nullptr, "SLIBENCH is not set (run through meson test)");
    const std::string outPath = dir + "/stdout.txt";
    const std::string errPath = dir + "/stderr.txt";
    const std::string cmd = std::string(bin) + " " + args + " >" + outPath + " 2>" + errPath;
    const int st = std::system(cmd.c_str());
    RunOutput out;
    out.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    const auto slurp = [](const std::string& path) {
        std::ifstream f(path);
        std::stringstream ss;
        ss << f.rdbuf();
        return ss.str();
    };
    out.out = slurp(outPath);
    out.err = slurp(errPath);
    return out;
}

sli::Json readJson(const std::string& path) {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    auto j = sli::parseJson(ss.str());
    REQUIRE_MESSAGE(j.isOk(), j.status().toString());
    return std::move(j).value();
}

void requireKeys(const sli::Json& obj, std::initializer_list<const char*> keys,
                 const std::string& where) {
    REQUIRE(obj.isObject());
    for (const char* k : keys) {
        const std::string msg = where + " lacks \"" + k + "\"";
        CHECK_MESSAGE(obj.find(k) != nullptr, msg);
    }
}

}  // namespace

TEST_CASE("a tiny run exits 0 and writes JSON with the stable keys") {
    TempDir tmp;
    const std::string json = tmp.path + "/out.json";
    const std::string trace = tmp.path + "/trace.json";
    auto r = slibench("--tiny --mode none,nf4 --workdir " + tmp.path + "/work --json " + json +
                          " --trace " + trace,
                      tmp.path);
    INFO(r.err);
    REQUIRE(r.status == 0);
    const sli::Json j = readJson(json);
    requireKeys(j, {"machine", "runs", "quantize", "limits", "acceptance"}, "top level");
    requireKeys(*j.find("machine"), {"cpu_model", "cores", "kernel", "io_uring_used", "cuda_used"},
                "machine");
    const sli::Json& runs = *j.find("runs");
    REQUIRE(runs.isArray());
    // none and nf4, cold and warm, at least one backend each; plus the budget-1/8 run.
    CHECK(runs.asArray().size() >= 5);
    for (const sli::Json& run : runs.asArray()) {
        requireKeys(run,
                    {"name", "mode", "backend", "device", "cold", "bytes_read", "wall_s",
                     "read_gbps", "output_gbps", "layers_per_s", "stage_s", "overlap",
                     "baseline_wall_s", "speedup_vs_baseline", "limit", "read_vs_limit",
                     "peak_rss_bytes", "pinned_bytes"},
                    "run");
        requireKeys(*run.find("stage_s"), {"read", "verify", "dequant", "h2d", "execute"}, "stage_s");
        requireKeys(*run.find("limit"), {"raw_read_gbps", "memcpy_gbps"}, "limit");
        CHECK(run.find("bytes_read")->asUint64().value_or(0) > 0);
        CHECK(run.find("wall_s")->asDouble() > 0);
    }
    // A tiny run's ratios come from milliseconds of work: the report says they are not judged.
    const sli::Json* judged = j.find("acceptance")->find("judged");
    REQUIRE(judged != nullptr);
    CHECK(judged->isBool());
    CHECK_FALSE(judged->asBool());
    CHECK(r.out.find("(not judged: --tiny)") != std::string::npos);
    CHECK(r.out.find("MISSED") == std::string::npos);
    // The cold-read figure: one engine and one raw read per pair, judged on the pairs' median.
    const sli::Json* cold = j.find("acceptance")->find("cold_read_vs_raw");
    REQUIRE(cold != nullptr);
    requireKeys(*cold, {"engine_read_gbps", "raw_read_gbps", "ratio", "median_pair_ratio", "judged_on", "met"},
                "cold_read_vs_raw");
    CHECK(cold->find("judged_on")->asString() == "median_pair_ratio");
    CHECK(cold->find("engine_read_gbps")->asArray().size() == cold->find("raw_read_gbps")->asArray().size());
    // The trace is JSON too.
    const sli::Json t = readJson(trace);
    CHECK((t.isObject() || t.isArray()));
}

TEST_CASE("a damaged cache is rebuilt on the next run") {
    TempDir tmp;
    const std::string work = tmp.path + "/work";
    auto r = slibench("--tiny --mode int4 --backend pread --workdir " + work, tmp.path);
    INFO(r.err);
    REQUIRE(r.status == 0);
    std::string victim;
    for (const auto& e : fs::recursive_directory_iterator(work + "/caches")) {
        if (e.path().filename() == "layer-00003.slc") victim = e.path().string();
    }
    REQUIRE(!victim.empty());
    fs::resize_file(victim, 100);
    r = slibench("--tiny --mode int4 --backend pread --workdir " + work, tmp.path);
    INFO(r.err);
    CHECK(r.status == 0);
    CHECK(fs::file_size(victim) > 4096);
}

TEST_CASE("--cache streams an existing cache and reports on it") {
    TempDir tmp;
    const std::string work = tmp.path + "/work";
    // An int8 cache of the tiny model, written by slibench's own run (the ingestion pipeline
    // of `sli quantize`).
    auto r = slibench("--tiny --mode int8 --backend pread --targets-only --workdir " + work,
                      tmp.path);
    INFO(r.err);
    REQUIRE(r.status == 0);
    const std::string json = tmp.path + "/cache.json";
    r = slibench("--cache " + work + "/caches --repeat 1 --backend pread --json " + json, tmp.path);
    INFO(r.err);
    REQUIRE(r.status == 0);
    const sli::Json j = readJson(json);
    const sli::Json& model = *j.find("model");
    requireKeys(model, {"cache_dir", "layers", "params", "cache_bytes"}, "model");
    CHECK(model.find("layers")->asInt64().value_or(0) == 16);  // the tiny model's layers
    CHECK(model.find("cache_dir")->asString().rfind(work + "/caches/", 0) == 0);
    const sli::Json& runs = *j.find("runs");
    REQUIRE(runs.isArray());
    REQUIRE(!runs.asArray().empty());
    for (const sli::Json& run : runs.asArray()) CHECK(run.find("mode")->asString() == "int8");
    // The quantize throughput needs the source model: not measured for a cache.
    const sli::Json& q = *j.find("quantize");
    REQUIRE(q.asArray().size() == 1);
    CHECK(q.asArray()[0].find("kernel_gbps")->isNull());
}

TEST_CASE("--cache errors name the directory; model options do not combine with it") {
    TempDir tmp;
    auto r = slibench("--cache " + tmp.path + "/nowhere", tmp.path);
    CHECK(r.status == 1);
    CHECK(r.err.find(tmp.path + "/nowhere") != std::string::npos);
    r = slibench("--cache " + tmp.path, tmp.path);  // a directory with no cache in it
    CHECK(r.status == 1);
    CHECK(r.err.find("no layer cache") != std::string::npos);
    CHECK(slibench("--cache " + tmp.path + " --mode nf4", tmp.path).status == 2);
    CHECK(slibench("--cache " + tmp.path + " --tiny", tmp.path).status == 2);
    CHECK(slibench("--model-id x", tmp.path).status == 2);
}

TEST_CASE("an unwritable work directory fails with a message naming it") {
    TempDir tmp;
    const std::string file = tmp.path + "/plain-file";
    std::ofstream(file) << "x";
    auto r = slibench("--tiny --workdir " + file + "/work", tmp.path);
    CHECK(r.status == 1);
    CHECK(r.err.find("work directory") != std::string::npos);
    CHECK(r.err.find(file) != std::string::npos);
}

TEST_CASE("a cuda device that is not there is a clear error") {
    TempDir tmp;
    // cuda:99: absent on any machine (without CUDA the build's lack of it is named instead).
    auto r = slibench("--tiny --device cuda:99 --workdir " + tmp.path + "/work", tmp.path);
    CHECK(r.status == 1);
    CHECK(r.err.find("cuda:99") != std::string::npos);
}

TEST_CASE("a budget too small for one layer fails at open with the sizes") {
    TempDir tmp;
    auto r = slibench("--tiny --mode none --budget 8K --workdir " + tmp.path + "/work", tmp.path);
    CHECK(r.status == 1);
    CHECK(r.err.find("cannot hold one layer") != std::string::npos);
}

TEST_CASE("bad flags are usage errors") {
    TempDir tmp;
    CHECK(slibench("--no-such-flag", tmp.path).status == 2);
    CHECK(slibench("--mode nf5", tmp.path).status == 2);
    CHECK(slibench("--depth -1", tmp.path).status == 2);
    CHECK(slibench("--chunk 1000", tmp.path).status == 2);
    auto h = slibench("--help", tmp.path);
    CHECK(h.status == 0);
}

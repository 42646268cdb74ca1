// Bad input for the quantizer API, QuantizationConfig and the Processor facade: every case is a
// clear Status naming the tensor / file / option concerned, never a crash or a silently wrong
// tensor. (The happy paths are in quantizer_test.cpp, config_test.cpp and processor_test.cpp.)
#include <doctest/doctest.h>

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "capture_log.h"
#include "sli/log.h"
#include "sli/processor.h"
#include "sli/quantizer.h"
#include "sli/safetensors.h"

using namespace sli;

using sli::testutil::captureWarnings;

namespace {

struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/sli-bad-input-XXXXXX";
        const char* p = ::mkdtemp(tmpl);
        REQUIRE(p != nullptr);
        path = p;
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

std::vector<float> wave(size_t n, float scale = 0.05f) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = std::sin(static_cast<float>(i) * 0.37f + 0.1f) * scale;
    return v;
}

Tensor floats(std::string name, std::vector<int64_t> shape, DType dt, const std::vector<float>& v) {
    return Tensor::fromFloats(std::move(name), std::move(shape), dt, v).value();
}

QuantizationConfig configFor(QuantizationMode m) {
    QuantizationConfig c;
    c.mode = m;
    if (modeIs4bit(m)) c.quantType = modeName(m);
    return c;
}

bool contains(const Status& s, std::string_view what) {
    return s.message().find(what) != std::string::npos;
}

size_t countLines(const std::string& s, std::string_view what) {
    size_t n = 0;
    for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
    return n;
}

}  // namespace

// ---- quantizer ------------------------------------------------------------------------------

TEST_CASE("an f64 matrix is quantized from its exact values and an integer matrix kept verbatim") {
    std::vector<double> d(8 * 64);
    for (size_t i = 0; i < d.size(); ++i) d[i] = std::sin(static_cast<double>(i)) * 0.03;
    Layer layer("l");
    REQUIRE(layer.add(Tensor::fromBytes("w64", {8, 64}, DType::kF64,
                                        {reinterpret_cast<const uint8_t*>(d.data()), d.size() * 8})
                          .value())
                .isOk());
    std::vector<int32_t> ints(8 * 64, -7);
    REQUIRE(layer.add(Tensor::fromBytes("i32", {8, 64}, DType::kI32,
                                        {reinterpret_cast<const uint8_t*>(ints.data()), ints.size() * 4})
                          .value())
                .isOk());
    for (QuantizationMode m : kAllModes) {
        CAPTURE(std::string(modeName(m)));
        auto ql = LayerQuantizer(configFor(m)).quantizeLayer(layer);
        REQUIRE_MESSAGE(ql.isOk(), ql.status().toString());
        CHECK(ql->tensors[0].info.mode == m);
        CHECK(ql->tensors[0].info.sourceDType == DType::kF64);
        CHECK(ql->tensors[1].info.mode == QuantizationMode::kNone);
        CHECK(ql->tensors[1].info.storedDType == DType::kI32);
        auto back = dequantizeLayer(*ql, DType::kF32);
        REQUIRE(back.isOk());
        const float* w = (*back)[0].as<float>();
        for (size_t i = 0; i < d.size(); ++i) CHECK(std::fabs(w[i] - d[i]) <= 0.03 * 0.2);
        CHECK(std::memcmp((*back)[1].data(), ints.data(), ints.size() * 4) == 0);
    }
}

TEST_CASE("rejects a shape whose byte size wraps around instead of reading past the data") {
    // 2^62 f32 elements are 2^64 bytes: the byte count wraps to 0 in size_t, and must not be
    // taken for the 0 bytes given.
    const float one = 1.0f;
    const std::vector<int64_t> huge = {int64_t{1} << 62, 1};
    for (DType dt : {DType::kF32, DType::kI32}) {
        TensorView v{"huge.weight", huge, dt, &one, 0};
        for (QuantizationMode m : kAllModes) {
            CAPTURE(std::string(modeName(m)));
            auto q = LayerQuantizer(configFor(m)).quantizeTensor(v, "l.huge.weight");
            REQUIRE_FALSE(q.isOk());
            CAPTURE(q.status().toString());
            CHECK(q.status().isInvalidArgument());
            CHECK(contains(q.status(), "l.huge.weight"));
        }
    }
}

TEST_CASE("rejects zero-sized, negative and mismatched shapes naming the tensor") {
    const Tensor t = floats("w", {8, 64}, DType::kF32, wave(512));
    struct Case {
        std::vector<int64_t> shape;
        const char* what;
    };
    for (const Case& c : {Case{{8, 0, 64}, "empty"}, Case{{0}, "empty"}, Case{{-8, -64}, "negative"},
                          Case{{8, -1}, "negative"}, Case{{8, 65}, "bytes"}, Case{{512, 2}, "bytes"},
                          Case{{}, "bytes"}}) {
        CAPTURE(shapeToString(c.shape));
        TensorView v = t.view();
        v.shape = c.shape;
        for (QuantizationMode m : kAllModes) {
            auto q = LayerQuantizer(configFor(m)).quantizeTensor(v, "l.w");
            REQUIRE_FALSE(q.isOk());
            CHECK(q.status().isInvalidArgument());
            CHECK(contains(q.status(), "l.w"));
            CHECK(contains(q.status(), c.what));
        }
    }
}

TEST_CASE("every bad blocksize is refused by the quantizer and the one-line helper") {
    Layer layer("l");
    REQUIRE(layer.add(floats("w", {8, 64}, DType::kF16, wave(512))).isOk());
    for (int bs : {0, -32, 1, 16, 31, 33, 48, 96, 4097, 8192, 1 << 30}) {
        CAPTURE(bs);
        QuantizeOptions o;
        o.config.blocksize = bs;
        for (QuantizationMode m : {QuantizationMode::kNf4, QuantizationMode::kFp4}) {
            auto ql = quantizeLayer(layer, m, o);
            REQUIRE_FALSE(ql.isOk());
            CHECK(ql.status().isInvalidArgument());
            CHECK(contains(ql.status(), "blocksize"));
            CHECK(contains(ql.status(), "layer l"));
        }
    }
    for (int bs : {32, 4096}) {
        QuantizeOptions o;
        o.config.blocksize = bs;
        CHECK(quantizeLayer(layer, QuantizationMode::kNf4, o).isOk());
    }
}

TEST_CASE("int4 keeps unfit matrices in the compute dtype with one log line each, 1-D silently") {
    Layer layer("model.layers.0");
    REQUIRE(layer.add(floats("mlp.odd.weight", {4, 40}, DType::kF32, wave(160))).isOk());
    REQUIRE(layer.add(floats("mlp.fit.weight", {4, 64}, DType::kF32, wave(256))).isOk());
    REQUIRE(layer.add(floats("norm.weight", {64}, DType::kF32, wave(64))).isOk());
    Result<QuantizedLayer> ql = Status::invalidArgument("not run");
    const std::string log = captureWarnings([&] { ql = quantizeLayer(layer, "INT4"); });
    REQUIRE(ql.isOk());
    CHECK(countLines(log, "model.layers.0.mlp.odd.weight") == 1);
    CHECK(countLines(log, "fit.weight") == 0);
    CHECK(countLines(log, "norm.weight") == 0);
    CHECK(ql->tensors[0].info.mode == QuantizationMode::kNone);
    CHECK(ql->tensors[0].info.storedDType == DType::kF16);
    CHECK(ql->tensors[1].info.mode == QuantizationMode::kInt4);
    CHECK(ql->tensors[2].info.mode == QuantizationMode::kNone);
    // The adaptive quantizer keeps the same policy (one line, the tensor named).
    AdaptiveQuantizer a(configFor(QuantizationMode::kInt4), configFor(QuantizationMode::kInt4));
    Result<QuantizedLayer> qa = Status::invalidArgument("not run");
    const std::string log2 = captureWarnings([&] { qa = a.quantizeLayer(layer); });
    REQUIRE(qa.isOk());
    CHECK(countLines(log2, "model.layers.0.mlp.odd.weight") == 1);
    CHECK(qa->tensors[0].info.mode == QuantizationMode::kNone);
}

TEST_CASE("NaN and Inf weights quantize and dequantize without crashing, other blocks intact") {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const float inf = std::numeric_limits<float>::infinity();
    std::vector<float> v = wave(8 * 64);
    v[3] = nan;        // row 0, first block
    v[64 + 1] = inf;   // row 1
    v[128 + 2] = -inf; // row 2
    for (size_t i = 192; i < 256; ++i) v[i] = nan;  // row 3 all NaN
    const Tensor t = floats("w", {8, 64}, DType::kF32, v);
    for (QuantizationMode m : kAllModes) {
        for (bool dq : {false, true}) {
            CAPTURE(std::string(modeName(m)));
            CAPTURE(dq);
            QuantizationConfig c = configFor(m);
            c.doubleQuant = dq;
            c.blocksize = 64;
            auto q = LayerQuantizer(c).quantizeTensor(t.view(), "l.w");
            REQUIRE_MESSAGE(q.isOk(), q.status().toString());
            REQUIRE(q->validate().isOk());
            auto back = LayerQuantizer::dequantizeTensor(*q, DType::kF32);
            REQUIRE(back.isOk());
            // A NaN stores code 0 and never sets its block's scale (bitsandbytes' kernels).
            const float* o0 = back->as<float>();
            if (m == QuantizationMode::kNone) {
                CHECK(std::isnan(o0[3]));
            } else if (m == QuantizationMode::kNf4 && !dq) {
                float absmax = 0;
                for (size_t i = 0; i < 64; ++i) {
                    if (i != 3) absmax = std::max(absmax, std::fabs(v[i]));
                }
                CHECK(o0[3] == -absmax);
            } else if (m != QuantizationMode::kInt4 && !(modeIs4bit(m) && dq)) {
                CHECK(o0[3] == 0.0f);
            }
            // Rows 4..7 hold only finite values; in every per-row / per-block mode they come
            // back finite and close (double quant shares statistics across blocks: finite only).
            const float* o = back->as<float>();
            for (size_t i = 256; i < 512; ++i) {
                if (m == QuantizationMode::kNone) {
                    CHECK(std::fabs(o[i] - v[i]) <= 1e-4f);
                } else if (!(dq && modeIs4bit(m))) {
                    CHECK(std::fabs(o[i] - v[i]) <= 0.05f * 0.2f);
                }
            }
        }
    }
}

TEST_CASE("dequantizing truncated parts or inconsistent metadata is an error naming the tensor") {
    Layer layer("model.layers.1");
    REQUIRE(layer.add(floats("mlp.w", {8, 64}, DType::kF32, wave(512))).isOk());
    for (QuantizationMode m : kAllModes) {
        for (int p = 0; p < kQuantPartCount; ++p) {
            auto ql = quantizeLayer(layer, m);
            REQUIRE(ql.isOk());
            QuantizedTensor& t = ql->tensors[0];
            const size_t size = t.parts[p].size();
            if (size == 0) continue;
            CAPTURE(std::string(modeName(m)));
            CAPTURE(std::string(quantPartName(static_cast<QuantPart>(p))));
            auto shorter = AlignedBuffer::allocate(size - 1).value();
            std::memcpy(shorter.data(), t.parts[p].data(), size - 1);
            t.parts[p] = std::move(shorter);
            auto back = dequantizeLayer(*ql);
            REQUIRE_FALSE(back.isOk());
            CHECK(back.status().isCorruption());
            CHECK(contains(back.status(), "mlp.w"));
            CHECK(contains(back.status(), "model.layers.1"));
        }
    }
    {
        // Metadata whose byte size wraps around size_t must not pass as "0 bytes expected".
        QuantizedTensor t;
        t.info.name = "wrapped";
        t.info.shape = {int64_t{1} << 62, 1};
        t.info.mode = QuantizationMode::kNone;
        t.info.storedDType = DType::kI32;
        const Status s = t.validate();
        CHECK(s.isInvalidArgument());
        CHECK(contains(s, "wrapped"));
        CHECK_FALSE(LayerQuantizer::dequantizeTensor(t).isOk());
    }
    for (DType stored : {DType::kF8E4M3, DType::kF8E5M2, DType::kF64, DType::kBool, DType::kU8}) {
        // Mode none over any stored dtype: a tensor (converted or verbatim) or a clear error.
        CAPTURE(std::string(dtypeName(stored)));
        QuantizedTensor t;
        t.info.name = "odd_storage";
        t.info.shape = {4, 8};
        t.info.mode = QuantizationMode::kNone;
        t.info.storedDType = stored;
        t.part(QuantPart::kPayload) = AlignedBuffer::allocate(32 * dtypeSize(stored)).value();
        auto back = LayerQuantizer::dequantizeTensor(t, DType::kF32);
        if (back.isOk()) {
            CHECK(back->numel() == 32);
            CHECK(back->nbytes() == 32 * dtypeSize(back->dtype()));
        } else {
            CHECK(contains(back.status(), "odd_storage"));
        }
    }
    auto bad = [&](QuantizationMode m, auto&& edit) {
        QuantizeOptions o;
        o.config.doubleQuant = false;
        auto ql = quantizeLayer(layer, m, o);
        REQUIRE(ql.isOk());
        edit(ql->tensors[0].info);
        auto back = dequantizeLayer(*ql);
        REQUIRE_FALSE(back.isOk());
        CHECK(contains(back.status(), "mlp.w"));
        return back.status();
    };
    // Absmax too short for the blocks the info claims.
    CHECK(bad(QuantizationMode::kNf4, [](auto& i) { i.blocksize = 32; }).isCorruption());
    CHECK(bad(QuantizationMode::kNf4, [](auto& i) { i.blocksize = 0; }).isInvalidArgument());
    CHECK(bad(QuantizationMode::kNf4, [](auto& i) { i.blocksize = 96; }).isInvalidArgument());
    CHECK(bad(QuantizationMode::kFp4, [](auto& i) { i.shape = {8, 128}; }).isCorruption());
    CHECK(bad(QuantizationMode::kNf4, [](auto& i) { i.doubleQuant = true; i.nestedBlocksize = 256; }).isCorruption());
    CHECK(bad(QuantizationMode::kNf4, [](auto& i) { i.doubleQuant = true; i.nestedBlocksize = 0; }).isInvalidArgument());
    CHECK(bad(QuantizationMode::kInt8, [](auto& i) { i.shape = {16, 32}; }).isCorruption());
    CHECK(bad(QuantizationMode::kInt8, [](auto& i) { i.shape = {512}; }).isInvalidArgument());
    CHECK(bad(QuantizationMode::kInt8Dynamic, [](auto& i) { i.shape = {8, -64}; }).isInvalidArgument());
    CHECK(bad(QuantizationMode::kInt4, [](auto& i) { i.shape = {16, 16}; }).isInvalidArgument());
    CHECK(bad(QuantizationMode::kNone, [](auto& i) { i.storedDType = DType::kF32; }).isCorruption());
    CHECK(bad(QuantizationMode::kNone, [](auto& i) { i.shape = {0, 64}; }).isInvalidArgument());
    CHECK(bad(QuantizationMode::kNone, [](auto& i) { i.computeDType = DType::kI8; }).isInvalidArgument());
    // A mode value outside the enum (a corrupt cache field) is refused, not decoded.
    CHECK_FALSE(bad(QuantizationMode::kNone, [](auto& i) { i.mode = static_cast<QuantizationMode>(42); }).isOk());
    CHECK_FALSE(bad(QuantizationMode::kInt8, [](auto& i) { i.mode = static_cast<QuantizationMode>(42); }).isOk());
    // Stored values whose byte size wraps around size_t.
    CHECK(bad(QuantizationMode::kNone, [](auto& i) { i.shape = {int64_t{1} << 62, 2}; }).isInvalidArgument());
    CHECK(bad(QuantizationMode::kInt8, [](auto& i) { i.shape = {int64_t{1} << 62, 2}; }).isInvalidArgument());
}

// ---- configuration ---------------------------------------------------------------------------

TEST_CASE("config JSON with bad modes, keys, types or values is an error naming the key") {
    struct Case {
        const char* json;
        const char* named;
    };
    for (const Case& c : {
             Case{R"({"mode": "nf5"})", "nf5"},
             Case{R"({"mode": ""})", "mode"},
             Case{R"({"mode": null})", "mode"},
             Case{R"({"mode": 3})", "mode"},
             Case{R"({"modes": "nf4"})", "modes"},
             Case{R"({"blocksize": "64"})", "blocksize"},
             Case{R"({"blocksize": 64.5})", "blocksize"},
             Case{R"({"blocksize": 1e300})", "blocksize"},
             Case{R"({"blocksize": true})", "blocksize"},
             Case{R"({"mode": "nf4", "blocksize": 48})", "blocksize"},
             Case{R"({"mode": "nf4", "blocksize": -64})", "blocksize"},
             Case{R"({"mode": "int8", "blocksize": 0})", "blocksize"},
             Case{R"({"llm_int8_threshold": -1})", "llm_int8_threshold"},
             Case{R"({"llm_int8_threshold": "6"})", "llm_int8_threshold"},
             Case{R"({"llm_int8_threshold": 1e999})", "llm_int8_threshold"},
             Case{R"({"double_quant": 1})", "double_quant"},
             Case{R"({"compress_statistics": "true"})", "compress_statistics"},
             Case{R"({"compute_dtype": "int8"})", "compute_dtype"},
             Case{R"({"compute_dtype": "float128"})", "float128"},
             Case{R"({"quant_storage_dtype": 8})", "quant_storage_dtype"},
             Case{R"({"quant_type": "int4"})", "quant_type"},
             Case{R"({"mode": "nf4", "quant_type": "fp4"})", "quant_type"},
             Case{R"({"llm_int8_skip_modules": "lm_head"})", "llm_int8_skip_modules"},
             Case{R"({"llm_int8_skip_modules": [1]})", "llm_int8_skip_modules"},
             Case{R"({"llm_int8_skip_modules": [""]})", "llm_int8_skip_modules"},
             Case{R"([])", "object"},
             Case{R"(null)", "object"},
             Case{R"("nf4")", "object"},
             Case{"", ""},
             Case{"{", ""},
             Case{R"({"mode": "nf4",})", ""},
             Case{R"({"mode": "nf4"} trailing)", ""},
         }) {
        CAPTURE(std::string(c.json));
        auto r = QuantizationConfig::fromJsonString(c.json);
        REQUIRE_FALSE(r.isOk());
        CHECK(r.status().isInvalidArgument());
        CHECK(contains(r.status(), c.named));
    }
    // A number beyond double's range is infinite, not 0 (which would silently turn LLM.int8's
    // outlier threshold off); underflow is 0.
    auto big = parseJson("[1e999, -1e999, 1e-999]");
    REQUIRE(big.isOk());
    CHECK(big->asArray()[0].asDouble() == std::numeric_limits<double>::infinity());
    CHECK(big->asArray()[1].asDouble() == -std::numeric_limits<double>::infinity());
    CHECK(big->asArray()[2].asDouble() == 0.0);
    auto tiny = QuantizationConfig::fromJsonString(R"({"llm_int8_threshold": 1e-999})");
    REQUIRE(tiny.isOk());
    CHECK(tiny->llmInt8Threshold == 0.0);
    // Duplicate keys: the last one must not silently win over an invalid first one, nor the
    // other way round; either an error or the RFC's "last wins", never a mix.
    auto dup = QuantizationConfig::fromJsonString(R"({"mode": "nf4", "mode": "int8"})");
    if (dup.isOk()) CHECK(dup->mode == QuantizationMode::kInt8);
}

TEST_CASE("adaptive keyword lists that are empty or match everything behave predictably") {
    Layer layer("block");
    REQUIRE(layer.add(floats("proj.weight", {8, 64}, DType::kF32, wave(512))).isOk());
    REQUIRE(layer.add(floats("proj.bias", {8}, DType::kF32, wave(8))).isOk());
    AdaptiveQuantizer a(configFor(QuantizationMode::kNf4), configFor(QuantizationMode::kInt8),
                        configFor(QuantizationMode::kInt4));
    a.setUseArchitectureRegistry(false);
    a.setKeywords({}, {});
    CHECK(a.roleOf("block.proj.weight") == TensorRole::kOther);
    a.setKeywords({"", ""}, {""});  // empty keywords match nothing
    CHECK(a.roleOf("block.proj.weight") == TensorRole::kOther);
    auto q = a.quantizeLayer(layer);
    REQUIRE(q.isOk());
    CHECK(q->tensors[0].info.mode == QuantizationMode::kNf4);
    a.setKeywords({"."}, {"."});  // matches every dotted name: attention is tried first
    CHECK(a.roleOf("block.proj.weight") == TensorRole::kAttention);
    q = a.quantizeLayer(layer);
    REQUIRE(q.isOk());
    CHECK(q->tensors[0].info.mode == QuantizationMode::kInt8);
    CHECK(q->tensors[1].info.mode == QuantizationMode::kNone);  // 1-D: kept
    a.setKeywords({"ATTN"}, {"PROJ"});  // lower-cased
    CHECK(a.roleOf("block.proj.weight") == TensorRole::kFfn);
    auto bad = AdaptiveQuantizer::create(configFor(QuantizationMode::kNf4), std::nullopt,
                                         [] { auto c = configFor(QuantizationMode::kFp4); c.blocksize = 3; return c; }());
    REQUIRE_FALSE(bad.isOk());
    CHECK(contains(bad.status(), "ffn"));
    std::vector<Layer> model;
    model.push_back(Layer("x"));
    REQUIRE(model.back().add(floats("w", {0, 64}, DType::kF32, {})).isOk());
    auto qm = AdaptiveQuantizer(configFor(QuantizationMode::kNf4)).quantizeModel(model);
    REQUIRE_FALSE(qm.isOk());
    CHECK(contains(qm.status(), "x.w"));
}

// ---- processor -------------------------------------------------------------------------------

namespace {

// One Llama block, f32.
std::string writeModel(const std::string& dir, std::vector<std::vector<float>>& keep) {
    std::vector<SafetensorsInput> in;
    auto add = [&](const std::string& name, std::vector<int64_t> shape) {
        size_t n = 1;
        for (auto d : shape) n *= static_cast<size_t>(d);
        keep.push_back(wave(n));
        in.push_back({name, DType::kF32, std::move(shape),
                      {reinterpret_cast<const uint8_t*>(keep.back().data()), n * 4}});
    };
    add("model.layers.0.input_layernorm.weight", {64});
    add("model.layers.0.self_attn.q_proj.weight", {64, 64});
    add("model.layers.0.mlp.up_proj.weight", {128, 64});
    std::filesystem::create_directories(dir);
    const std::string path = dir + "/model.safetensors";
    REQUIRE(writeSafetensors(path, in).isOk());
    return path;
}

// A safetensors file from a raw header and `dataBytes` bytes of payload.
std::string writeRaw(const std::string& path, const std::string& header, size_t dataBytes) {
    std::ofstream f(path, std::ios::binary);
    const uint64_t len = header.size();
    for (int i = 0; i < 8; ++i) f.put(static_cast<char>((len >> (8 * i)) & 0xff));
    f << header;
    f << std::string(dataBytes, '\0');
    return path;
}

ProcessorOptions options(const std::string& model, const std::string& root) {
    ProcessorOptions o;
    o.modelPath = model;
    o.cacheRoot = root;
    o.modelId = "toy";
    o.preset = "nf4";
    o.engine.hostBudgetBytes = 16ull << 20;
    o.engine.workerThreads = 1;
    o.engine.ioBackend = "pread";
    return o;
}

bool anyLayerFile(const std::string& root) {
    if (!std::filesystem::exists(root)) return false;
    for (auto& e : std::filesystem::recursive_directory_iterator(root)) {
        if (e.path().extension() == ".slc") return true;
    }
    return false;
}

}  // namespace

TEST_CASE("the processor names a broken checkpoint and writes no layer from it") {
    TempDir tmp;
    std::vector<std::vector<float>> keep;
    const std::string good = writeModel(tmp.path + "/good", keep);
    const std::string root = tmp.path + "/cache";
    const std::string w = R"("model.layers.0.mlp.up_proj.weight")";
    struct Case {
        const char* what;
        std::string path;
    };
    std::vector<Case> cases;
    {
        const std::string p = tmp.path + "/truncated.safetensors";
        std::filesystem::copy_file(good, p);
        std::filesystem::resize_file(p, std::filesystem::file_size(p) - 100);
        cases.push_back({"truncated", p});
    }
    cases.push_back({"offsets past the end",
                     writeRaw(tmp.path + "/past.safetensors",
                              "{" + w + R"(:{"dtype":"F32","shape":[4,64],"data_offsets":[0,1024]}})", 16)});
    cases.push_back({"offsets that disagree with the shape",
                     writeRaw(tmp.path + "/short.safetensors",
                              "{" + w + R"(:{"dtype":"F32","shape":[4,64],"data_offsets":[0,512]}})", 1024)});
    cases.push_back({"reversed offsets",
                     writeRaw(tmp.path + "/reversed.safetensors",
                              "{" + w + R"(:{"dtype":"F32","shape":[4,64],"data_offsets":[1024,0]}})", 1024)});
    cases.push_back({"huge offsets",
                     writeRaw(tmp.path + "/huge.safetensors",
                              "{" + w + R"(:{"dtype":"F32","shape":[4,64],"data_offsets":[18446744073709550592,18446744073709551616]}})", 1024)});
    cases.push_back({"a header longer than the file",
                     writeRaw(tmp.path + "/header.safetensors", "{", 0)});
    {
        const std::string p = tmp.path + "/huge_header.safetensors";
        std::ofstream f(p, std::ios::binary);
        f << std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) << "{}";
        cases.push_back({"a header length near 2^63", p});
    }
    cases.push_back({"an empty file", writeRaw(tmp.path + "/empty.safetensors", "", 0)});
    std::filesystem::resize_file(tmp.path + "/empty.safetensors", 0);
    for (const Case& c : cases) {
        CAPTURE(c.what);
        auto p = Processor::open(options(c.path, root));
        REQUIRE_FALSE(p.isOk());
        CHECK(contains(p.status(), std::filesystem::path(c.path).filename().string()));
        CHECK_FALSE(anyLayerFile(root));
    }
}

TEST_CASE("the processor reports a cache root it cannot create, naming it") {
    TempDir tmp;
    std::vector<std::vector<float>> keep;
    const std::string model = writeModel(tmp.path + "/m", keep);
    const std::string file = tmp.path + "/plain";
    { std::ofstream(file) << "x"; }
    auto p = Processor::open(options(model, file + "/cache"));
    REQUIRE_FALSE(p.isOk());
    CHECK(contains(p.status(), file));
    auto q = Processor::open(options(model, file));
    REQUIRE_FALSE(q.isOk());
    CHECK(contains(q.status(), file));
}

TEST_CASE("a model id with slashes or dots stays under the cache root, and a rerun reuses it") {
    TempDir tmp;
    std::vector<std::vector<float>> keep;
    const std::string model = writeModel(tmp.path + "/m", keep);
    const std::string root = tmp.path + "/a/b/cache";
    for (const char* id : {"..", "../..", "../../escape", "/etc", "a/../../b", "./.", "..\\..", "a/b/c"}) {
        CAPTURE(id);
        ProcessorOptions o = options(model, root);
        o.modelId = id;
        auto p = Processor::open(o);
        REQUIRE_MESSAGE(p.isOk(), p.status().toString());
        const auto dir = std::filesystem::weakly_canonical((*p)->build().cacheDir).string();
        const auto canonRoot = std::filesystem::weakly_canonical(root).string();
        CHECK(dir.rfind(canonRoot + "/", 0) == 0);
        CHECK((*p)->build().layersWritten == (*p)->build().layers);
        p = Result<std::unique_ptr<Processor>>(Status::invalidArgument("closed"));
        auto again = Processor::open(o);
        REQUIRE_MESSAGE(again.isOk(), again.status().toString());
        CHECK((*again)->build().layersWritten == 0);
        CHECK((*again)->build().layersReused == (*again)->build().layers);
        CHECK(std::filesystem::weakly_canonical((*again)->build().cacheDir).string() == dir);
    }
    // Nothing was created outside the cache root.
    for (auto& e : std::filesystem::directory_iterator(tmp.path)) {
        CHECK((e.path().filename() == "a" || e.path().filename() == "m"));
    }
    for (auto& e : std::filesystem::directory_iterator(tmp.path + "/a")) CHECK(e.path().filename() == "b");
    for (auto& e : std::filesystem::directory_iterator(tmp.path + "/a/b")) CHECK(e.path().filename() == "cache");
}

TEST_CASE("the processor keeps integer tensors verbatim and streams f64 weights end to end") {
    TempDir tmp;
    std::vector<int64_t> ids(16);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>(i) - 3;
    std::vector<double> w(64 * 64);
    for (size_t i = 0; i < w.size(); ++i) w[i] = std::cos(static_cast<double>(i) * 0.21) * 0.02;
    const std::vector<float> norm = wave(64);
    std::vector<SafetensorsInput> in;
    in.push_back({"model.layers.0.self_attn.position_ids", DType::kI64, {1, 16},
                  {reinterpret_cast<const uint8_t*>(ids.data()), ids.size() * 8}});
    in.push_back({"model.layers.0.mlp.up_proj.weight", DType::kF64, {64, 64},
                  {reinterpret_cast<const uint8_t*>(w.data()), w.size() * 8}});
    in.push_back({"model.layers.0.input_layernorm.weight", DType::kF32, {64},
                  {reinterpret_cast<const uint8_t*>(norm.data()), norm.size() * 4}});
    const std::string model = tmp.path + "/model.safetensors";
    REQUIRE(writeSafetensors(model, in).isOk());
    ProcessorOptions o = options(model, tmp.path + "/cache");
    o.engine.computeDType = DType::kF32;
    auto p = Processor::open(o);
    REQUIRE_MESSAGE(p.isOk(), p.status().toString());
    bool sawIds = false, sawW = false;
    for (int64_t i = 0; i < (*p)->numLayers(); ++i) {
        auto lease = (*p)->acquire(i);
        REQUIRE_MESSAGE(lease.isOk(), lease.status().toString());
        for (const Tensor& t : lease->tensors()) {
            if (t.name().ends_with("position_ids")) {
                sawIds = true;
                CHECK(t.dtype() == DType::kI64);
                REQUIRE(t.nbytes() == ids.size() * 8);
                CHECK(std::memcmp(t.data(), ids.data(), t.nbytes()) == 0);
            } else if (t.name().ends_with("up_proj.weight")) {
                sawW = true;
                REQUIRE(t.dtype() == DType::kF32);
                for (size_t k = 0; k < w.size(); ++k) CHECK(std::fabs(t.as<float>()[k] - w[k]) <= 0.02 * 0.2);
            }
        }
    }
    CHECK(sawIds);
    CHECK(sawW);
}

TEST_CASE("the processor names a model directory without weights and an index with a missing shard") {
    TempDir tmp;
    const std::string root = tmp.path + "/cache";
    std::filesystem::create_directories(tmp.path + "/nothing");
    { std::ofstream(tmp.path + "/nothing/README.md") << "no weights here"; }
    auto a = Processor::open(options(tmp.path + "/nothing", root));
    REQUIRE_FALSE(a.isOk());
    CHECK(contains(a.status(), "nothing"));

    std::vector<std::vector<float>> keep;
    writeModel(tmp.path + "/sharded", keep);
    std::filesystem::rename(tmp.path + "/sharded/model.safetensors",
                            tmp.path + "/sharded/model-00001-of-00002.safetensors");
    const std::string index = tmp.path + "/sharded/model.safetensors.index.json";
    {
        std::ofstream(index) << R"({"metadata": {}, "weight_map": {)"
                             << R"("model.layers.0.input_layernorm.weight": "model-00001-of-00002.safetensors",)"
                             << R"("model.layers.0.self_attn.q_proj.weight": "model-00001-of-00002.safetensors",)"
                             << R"("model.layers.0.mlp.up_proj.weight": "model-00001-of-00002.safetensors",)"
                             << R"("model.layers.0.mlp.down_proj.weight": "model-00002-of-00002.safetensors"}})";
    }
    auto b = Processor::open(options(index, root));
    REQUIRE_FALSE(b.isOk());
    CHECK(contains(b.status(), "model-00002-of-00002.safetensors"));
    CHECK_FALSE(anyLayerFile(root));
    // A shard that lacks a tensor the index places in it.
    std::filesystem::copy_file(tmp.path + "/sharded/model-00001-of-00002.safetensors",
                               tmp.path + "/sharded/model-00002-of-00002.safetensors");
    auto c = Processor::open(options(index, root));
    REQUIRE_FALSE(c.isOk());
    CHECK(contains(c.status(), "down_proj"));
    CHECK_FALSE(anyLayerFile(root));
}

TEST_CASE("a 4-bit mode forced on a tensor checks the blocksize it will be stored with") {
    // The config's blocksize is only checked against 32..4096 for 4-bit modes; forcing NF4 /
    // FP4 from an INT8 config must not store a tensor that no reader accepts.
    const Tensor t = floats("w", {8, 64}, DType::kF32, wave(512));
    for (int bs : {100, 1, 8192}) {
        CAPTURE(bs);
        QuantizationConfig c = configFor(QuantizationMode::kInt8);
        c.blocksize = bs;
        REQUIRE(c.validate().isOk());
        for (QuantizationMode m : {QuantizationMode::kNf4, QuantizationMode::kFp4}) {
            auto q = LayerQuantizer(c).quantizeTensorAs(t.view(), m, "l.w");
            REQUIRE_FALSE(q.isOk());
            CHECK(q.status().isInvalidArgument());
            CHECK(contains(q.status(), "l.w"));
            CHECK(contains(q.status(), "blocksize"));
        }
    }
    QuantizationConfig c = configFor(QuantizationMode::kInt8);
    c.blocksize = 128;
    auto q = LayerQuantizer(c).quantizeTensorAs(t.view(), QuantizationMode::kNf4, "l.w");
    REQUIRE(q.isOk());
    CHECK(q->info.blocksize == 128);
    CHECK(LayerQuantizer::dequantizeTensor(*q).isOk());
}

TEST_CASE("a negative thread count means the calling thread, not a crash") {
    const Tensor t = floats("w", {64, 256}, DType::kF32, wave(64 * 256));
    for (QuantizationMode m : kAllModes) {
        CAPTURE(std::string(modeName(m)));
        auto q = LayerQuantizer(configFor(m), -3).quantizeTensor(t.view(), "l.w");
        REQUIRE_MESSAGE(q.isOk(), q.status().toString());
        auto one = LayerQuantizer(configFor(m), 1).quantizeTensor(t.view(), "l.w");
        REQUIRE(one.isOk());
        for (int p = 0; p < kQuantPartCount; ++p) {
            REQUIRE(q->parts[p].size() == one->parts[p].size());
            if (one->parts[p].empty()) continue;
            CHECK(std::memcmp(q->parts[p].data(), one->parts[p].data(), one->parts[p].size()) == 0);
        }
        auto back = LayerQuantizer::dequantizeTensor(*q, DType::kF32, -7);
        REQUIRE(back.isOk());
    }
}

TEST_CASE("a damaged cached layer is rebuilt or refused on the next run, never streamed as is") {
    TempDir tmp;
    std::vector<std::vector<float>> keep;
    const std::string model = writeModel(tmp.path + "/m", keep);
    const ProcessorOptions o = options(model, tmp.path + "/cache");
    std::string dir;
    std::vector<std::string> files;
    {
        auto p = Processor::open(o);
        REQUIRE_MESSAGE(p.isOk(), p.status().toString());
        dir = (*p)->build().cacheDir;
    }
    for (auto& e : std::filesystem::directory_iterator(dir)) {
        if (e.path().extension() == ".slc") files.push_back(e.path().string());
    }
    REQUIRE_FALSE(files.empty());
    for (int damage = 0; damage < 3; ++damage) {
        CAPTURE(damage);
        for (const auto& f : files) {
            const auto size = std::filesystem::file_size(f);
            if (damage == 0) {
                std::filesystem::resize_file(f, size - 7);
            } else {
                std::fstream s(f, std::ios::in | std::ios::out | std::ios::binary);
                s.seekp(damage == 1 ? static_cast<std::streamoff>(size - 3) : static_cast<std::streamoff>(size / 2));
                s.put('\x5a');
            }
        }
        auto p = Processor::open(o);
        if (!p.isOk()) {
            CHECK(contains(p.status(), dir));
            continue;
        }
        for (int64_t i = 0; i < (*p)->numLayers(); ++i) {
            auto lease = (*p)->acquire(i);
            if (!lease.isOk()) {
                CHECK((contains(lease.status(), "layer") || contains(lease.status(), ".slc")));
                continue;
            }
            for (const Tensor& t : lease->tensors()) {
                if (!t.name().ends_with("up_proj.weight")) continue;
                const std::vector<float>& want = keep[2];
                auto got = t.toFloats();
                REQUIRE(got.isOk());
                for (size_t k = 0; k < want.size(); ++k) CHECK(std::fabs((*got)[k] - want[k]) <= 0.05f * 0.2f);
            }
        }
    }
}

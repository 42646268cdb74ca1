// Helpers shared by the io / cli tests: scratch directories and synthetic quantized layers
// whose parts hold random bytes of the right sizes (the cache format does not interpret them).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "io/file.h"
#include "sli/quantized.h"

namespace sli::testing {

class TempDir {
public:
    TempDir() {
        const char* base = std::getenv("TMPDIR");
        std::string tmpl = std::string(base ? base : "/tmp") + "/sli-test-XXXXXX";
        path_ = ::mkdtemp(tmpl.data()) ? tmpl : std::string();
    }
    ~TempDir() {
        if (!path_.empty()) {
            const std::string cmd = "rm -rf '" + path_ + "'";
            (void)std::system(cmd.c_str());
        }
    }
    const std::string& path() const { return path_; }
    std::string file(const std::string& name) const { return io::joinPath(path_, name); }

private:
    std::string path_;
};

inline QuantizedTensor makeTensor(const std::string& name, std::vector<int64_t> shape,
                                  QuantizationMode mode, uint32_t seed, bool doubleQuant = true) {
    QuantizedTensor t;
    t.info.name = name;
    t.info.shape = std::move(shape);
    t.info.mode = mode;
    t.info.computeDType = DType::kF16;
    t.info.sourceDType = DType::kF32;
    switch (mode) {
        case QuantizationMode::kNone: t.info.storedDType = DType::kF16; break;
        case QuantizationMode::kNf4:
        case QuantizationMode::kFp4:
            t.info.storedDType = DType::kU8;
            t.info.blocksize = 64;
            t.info.doubleQuant = doubleQuant;
            t.info.nestedBlocksize = doubleQuant ? 256 : 0;
            t.info.nestedOffset = doubleQuant ? 0.03125f : 0.0f;
            break;
        case QuantizationMode::kInt8:
        case QuantizationMode::kInt8Dynamic:
            t.info.storedDType = DType::kI8;
            t.info.llmInt8Threshold = 6.0f;
            break;
        case QuantizationMode::kInt4:
            t.info.storedDType = DType::kU8;
            t.info.blocksize = 32;
            break;
    }
    std::mt19937 rng(seed);
    for (int p = 0; p < kQuantPartCount; ++p) {
        const size_t n = t.info.expectedPartBytes(static_cast<QuantPart>(p));
        t.parts[p] = std::move(AlignedBuffer::allocate(n).value());
        // Statistics get a compressible pattern so zstd kicks in; payloads are random.
        for (size_t i = 0; i < n; ++i) {
            t.parts[p].data()[i] = p == 0 ? static_cast<uint8_t>(rng()) : static_cast<uint8_t>(i % 7);
        }
    }
    return t;
}

inline QuantizedLayer makeLayer(int64_t index, uint32_t seed = 1) {
    QuantizedLayer l;
    l.index = index;
    l.name = "model.layers." + std::to_string(index);
    const std::string p = l.name + ".";
    l.tensors.push_back(makeTensor(p + "self_attn.q_proj.weight", {64, 128}, QuantizationMode::kNf4, seed));
    l.tensors.push_back(makeTensor(p + "self_attn.k_proj.weight", {32, 128}, QuantizationMode::kFp4, seed + 1, false));
    l.tensors.push_back(makeTensor(p + "mlp.up_proj.weight", {96, 64}, QuantizationMode::kInt8, seed + 2));
    l.tensors.push_back(makeTensor(p + "mlp.down_proj.weight", {64, 96}, QuantizationMode::kInt8Dynamic, seed + 3));
    l.tensors.push_back(makeTensor(p + "mlp.gate_proj.weight", {16, 64}, QuantizationMode::kInt4, seed + 4));
    l.tensors.push_back(makeTensor(p + "input_layernorm.weight", {128}, QuantizationMode::kNone, seed + 5));
    return l;
}

inline bool sameBytes(const QuantizedTensor& a, const QuantizedTensor& b) {
    for (int p = 0; p < kQuantPartCount; ++p) {
        if (a.parts[p].size() != b.parts[p].size()) return false;
        for (size_t i = 0; i < a.parts[p].size(); ++i) {
            if (a.parts[p].data()[i] != b.parts[p].data()[i]) return false;
        }
    }
    return true;
}

}  // namespace sli::testing

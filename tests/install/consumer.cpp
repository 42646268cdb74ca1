// A program embedding libsli the way a server would, built against the *installed* headers and
// library (pkg-config) or through `dependency('sli')` in a parent meson project. It quantizes a
// small layer to NF4 with the public quantizer API, stores it in a LayerCache, streams it back
// with sli::Engine and checks the engine's tensors against LayerQuantizer::dequantizeLayer.
// Only include/sli/ headers are used: if one of them needed a private header, this would not
// compile. Exit 0 on success, 1 with a message otherwise.
#include <sli/cache.h>
#include <sli/config.h>
#include <sli/engine.h>
#include <sli/quantizer.h>
#include <sli/status.h>
#include <sli/tensor.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace {

int fail(const std::string& what, const sli::Status& s) {
    std::fprintf(stderr, "consumer: %s: %s\n", what.c_str(), s.toString().c_str());
    return 1;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: consumer TEMP_DIR\n");
        return 2;
    }
    const std::string root = std::string(argv[1]) + "/cache";
    std::filesystem::remove_all(root);

    std::vector<float> w(64 * 128);
    for (size_t i = 0; i < w.size(); ++i) w[i] = std::sin(0.37f * static_cast<float>(i)) * 0.05f;
    auto t = sli::Tensor::fromFloats("layers.0.mlp.up_proj.weight", {64, 128}, sli::DType::kF32, w);
    if (!t.isOk()) return fail("tensor", t.status());
    sli::Layer layer("layers.0");
    if (auto s = layer.add(std::move(t).value()); !s.isOk()) return fail("layer", s);

    sli::QuantizationConfig cfg;
    cfg.mode = sli::QuantizationMode::kNf4;
    cfg.computeDType = sli::DType::kF32;
    auto quantizer = sli::LayerQuantizer::create(cfg, 1);
    if (!quantizer.isOk()) return fail("quantizer", quantizer.status());
    auto q = quantizer->quantizeLayer(layer, "layers.0", 0);
    if (!q.isOk()) return fail("quantize", q.status());
    auto expected = sli::LayerQuantizer::dequantizeLayer(*q, sli::DType::kF32, 1);
    if (!expected.isOk()) return fail("dequantize", expected.status());

    {
        auto cache = sli::LayerCache::open(root);
        if (!cache.isOk()) return fail("cache open", cache.status());
        if (auto s = (*cache)->cacheLayer("consumer/toy", 0, *q, cfg); !s.isOk()) {
            return fail("cacheLayer", s);
        }
    }

    sli::EngineOptions eo;
    eo.cacheDir = root;
    eo.computeDType = sli::DType::kF32;
    eo.hostBudgetBytes = 8u << 20;
    eo.workerThreads = 1;
    auto engine = sli::Engine::open(eo);
    if (!engine.isOk()) return fail("engine open", engine.status());
    if ((*engine)->numLayers() != 1) {
        std::fprintf(stderr, "consumer: engine sees %lld layers\n",
                     static_cast<long long>((*engine)->numLayers()));
        return 1;
    }
    auto lease = (*engine)->acquire(0);
    if (!lease.isOk()) return fail("acquire", lease.status());
    const sli::Tensor* got = lease->find("layers.0.mlp.up_proj.weight");
    const sli::Tensor& want = (*expected)[0];
    if (got == nullptr || got->nbytes() != want.nbytes() ||
        std::memcmp(got->data(), want.data(), want.nbytes()) != 0) {
        std::fprintf(stderr, "consumer: the engine's tensor differs from dequantizeLayer's\n");
        return 1;
    }
    double err = 0;
    for (int64_t i = 0; i < want.numel(); ++i)
        err = std::max(err, double(std::fabs(want.at(i) - w[i])));
    std::printf("consumer: sli OK (NF4 layer streamed back, max abs error %.4f)\n", err);
    return err < 0.01 ? 0 : 1;
}

// Streaming under load (skipped, exit 77, without scripts/fetch_minilm.sh): all-MiniLM-L6-v2
// in NF4 run end to end through the engine, cyclic order, many passes, with a host budget
// smaller than the model; every pass is bitwise the in-memory run (all layers dequantized up
// front with LayerQuantizer::dequantizeLayer), and the engine's timings show layer i+1 being
// read while layer i computes.
#include <doctest/doctest.h>

#include "minilm_test_util.h"
#include "sli/quantizer.h"

namespace sli::minilm {

TEST_CASE("a budget smaller than the model streams many cyclic passes bitwise like memory") {
    testutil::requireWeights();
    auto ref = loadReference(testutil::referenceDir());
    REQUIRE(ref.isOk());
    auto config = BertConfig::fromFile(testutil::modelDir() + "/config.json");
    REQUIRE(config.isOk());
    testutil::TempDir tmp;
    auto mode = findMode("nf4");
    REQUIRE(mode.isOk());
    auto cache = buildCache(testutil::modelDir(), tmp.path, *mode, 2);
    REQUIRE_MESSAGE(cache.isOk(), cache.status().toString());

    BertEncoder encoder(*config);
    EncoderOptions eo;
    eo.threads = 1;
    eo.keepHiddenStates = true;

    // In memory: every layer dequantized up front (f16, the cache's compute dtype).
    auto layers = loadDequantized(*cache, DType::kF16, 1);
    REQUIRE_MESSAGE(layers.isOk(), layers.status().toString());
    uint64_t f16Bytes = 0;
    for (const Layer& l : *layers) f16Bytes += l.nbytes();
    const uint64_t f32Bytes = 2 * f16Bytes;  // the model in full precision (all floating)
    MemoryLayerSource memory(*layers);
    auto expected = encoder.run(ref->tokens, memory, eo);
    REQUIRE_MESSAGE(expected.isOk(), expected.status().toString());

    // The smallest budget (in 1 MiB steps from a quarter of the model up) with two slots for
    // the encoder layers: one computing while the next is read and dequantized. The embeddings
    // layer (word embeddings kept in f16, 23 MB) gets a slot of its own size (slot classes).
    EngineOptions o;
    o.cacheDir = cache->root;
    o.modelId = cache->modelId;
    o.computeDType = DType::kF16;
    o.order = LayerOrder::kCyclic;
    o.prefetchDepth = 1;
    o.workerThreads = 1;
    std::unique_ptr<Engine> engine;
    for (uint64_t b = f32Bytes / 4; b < f32Bytes && !engine; b += 1 << 20) {
        o.hostBudgetBytes = b;
        auto e = Engine::open(o);
        if (e.isOk() && (*e)->stats().slots - (*e)->stats().largeSlots >= 2) {
            engine = std::move(e).value();
        }
    }
    REQUIRE_MESSAGE(engine != nullptr, "no budget under the model size holds two slots");
    const EngineStats st = engine->stats();
    MESSAGE("host budget " << o.hostBudgetBytes << " bytes (" << st.slots << " slots, "
                           << st.largeSlots << " of them for the embeddings, pinned "
                           << st.pinnedBytes << ", output " << st.hostOutputBytes
                           << ") for a model of " << f32Bytes << " bytes in f32, " << f16Bytes
                           << " in f16; " << engine->numLayers() << " layers, io " << st.ioBackend);
    CHECK(o.hostBudgetBytes < f32Bytes);
    CHECK(st.pinnedBytes + st.hostOutputBytes <= o.hostBudgetBytes);

    constexpr int kPasses = 6;
    EngineLayerSource streamed(*engine);
    for (int pass = 0; pass < kPasses; ++pass) {
        auto out = encoder.run(ref->tokens, streamed, eo);
        REQUIRE_MESSAGE(out.isOk(), out.status().toString());
        INFO("pass " << pass);
        CHECK(out->embeddings == expected->embeddings);
        CHECK(out->hiddenStates == expected->hiddenStates);
    }

    // The trace: some layer i+1 is read while layer i is held by the executor, in every pass.
    const auto t = engine->timings();
    REQUIRE(t.size() == static_cast<size_t>(kPasses * engine->numLayers()));
    std::map<uint64_t, const LayerTiming*> bySeq;
    for (const auto& x : t) bySeq[x.sequence] = &x;
    int overlapped = 0, dequantOverlapped = 0;
    for (const auto& [seq, cur] : bySeq) {
        auto it = bySeq.find(seq + 1);
        if (it == bySeq.end()) continue;
        const LayerTiming* next = it->second;
        REQUIRE(next->layer == (cur->layer + 1) % engine->numLayers());
        overlapped += next->readStartNs < cur->releasedNs && next->readDoneNs > cur->acquiredNs;
        dequantOverlapped +=
            next->dequantStartNs < cur->releasedNs && next->dequantizedNs > cur->acquiredNs;
    }
    MESSAGE(overlapped << " of " << bySeq.size() - 1 << " consecutive layers read, and "
                       << dequantOverlapped << " dequantized, while the previous one computed");
    CHECK(overlapped >= kPasses);
    CHECK(dequantOverlapped >= kPasses);
    CHECK(engine->writeTrace(tmp.path + "/trace.json").isOk());
}

}  // namespace sli::minilm

// The real all-MiniLM-L6-v2 (skipped, exit 77, without scripts/fetch_minilm.sh): the fp32
// cache (mode NONE, f32), streamed by the engine through the executor, reproduces
// sentence-transformers' embeddings (tests/golden/make_minilm_reference.py) within float
// rounding.
#include <doctest/doctest.h>

#include <cmath>

#include "minilm_test_util.h"

namespace sli::minilm {

TEST_CASE("the fp32 cache reproduces sentence-transformers' embeddings of every sentence") {
    testutil::requireWeights();
    auto ref = loadReference(testutil::referenceDir());
    REQUIRE_MESSAGE(ref.isOk(), ref.status().toString());
    REQUIRE(ref->sentences.size() == 24);
    auto config = BertConfig::fromFile(testutil::modelDir() + "/config.json");
    REQUIRE(config.isOk());
    testutil::TempDir tmp;
    auto fp32 = findMode("fp32");
    REQUIRE(fp32.isOk());
    auto cache = buildCache(testutil::modelDir(), tmp.path, *fp32, 2);
    REQUIRE_MESSAGE(cache.isOk(), cache.status().toString());
    BertEncoder encoder(*config);
    EncoderOptions eo;
    eo.threads = 2;
    auto out = runStreamed(encoder, *cache, ref->tokens, EngineOptions{}, eo);
    REQUIRE_MESSAGE(out.isOk(), out.status().toString());
    REQUIRE(out->embeddings.size() == ref->embeddings.size());
    double worstAbs = 0;
    for (size_t s = 0; s < ref->sentences.size(); ++s) {
        const double c = cosine(&ref->embeddings[s * 384], &out->embeddings[s * 384], 384);
        INFO("sentence " << s << ": " << ref->sentences[s]);
        CHECK(c >= 0.99999);
        for (int i = 0; i < 384; ++i) {
            worstAbs = std::max(worstAbs, double(std::fabs(ref->embeddings[s * 384 + i] -
                                                           out->embeddings[s * 384 + i])));
        }
    }
    MESSAGE("largest element difference from sentence-transformers: " << worstAbs);
    CHECK(worstAbs < 1e-4);  // unit vectors of 384 elements: f32 rounding, not a model change
    // Retrieval agrees exactly.
    CHECK(nearestNeighbours(out->embeddings, 384) == nearestNeighbours(ref->embeddings, 384));
}

TEST_CASE("the reference data is the one the weights were made with") {
    testutil::requireWeights();
    auto ref = loadReference(testutil::referenceDir());
    REQUIRE(ref.isOk());
    CHECK(ref->weightsSha256 == "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db");
    // [CLS] ... [SEP] around every sentence.
    for (const auto& ids : ref->tokens.ids) {
        REQUIRE(ids.size() >= 3);
        CHECK(ids.front() == 101);
        CHECK(ids.back() == 102);
    }
}

}  // namespace sli::minilm

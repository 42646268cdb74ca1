// CPU slot classes: a cache whose first and last layers (embeddings, a head) are far larger
// than its blocks gets up to two slots sized for those and depth + 1 sized for the blocks.
// Checked: the sizes and counts chosen, tensors equal to an independent dequantization in
// every order, a budget that only classes make hold the full depth, and that leases of the
// large layers are limited to their slots with a clear, side-effect-free refusal.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "engine_test_util.h"
#include "sli/engine.h"

using namespace sli;
using namespace sli::testutil;

namespace {

constexpr int kLayers = 8;  // 0 = "pre" (large), 1..6 blocks, 7 = "post" (large)

// pre: a 2048 x 512 f32 embedding kept as stored (4 MiB read, handed out in place);
// blocks: NF4 weights of a 128-wide toy layer and an f32 norm (tens of KiB);
// post: an INT8 2048 x 1024 head (2 MiB read, 8 MiB of f32 output).
TestCache writeLopsidedCache(const std::string& root) {
    QuantizationConfig cfg;
    cfg.mode = QuantizationMode::kNf4;
    cfg.computeDType = DType::kF32;
    std::mt19937 rng(7);
    std::vector<QuantizedLayer> layers;
    for (int l = 0; l < kLayers; ++l) {
        QuantizedLayer ql;
        ql.index = l;
        if (l == 0) {
            ql.name = "pre";
            ql.tensors.push_back(
                makeTensor("model.embed_tokens.weight", {2048, 512}, QuantizationMode::kNone, cfg, rng));
        } else if (l == kLayers - 1) {
            ql.name = "post";
            ql.tensors.push_back(makeTensor("model.norm.weight", {1024}, QuantizationMode::kNone, cfg, rng));
            ql.tensors.push_back(makeTensor("lm_head.weight", {2048, 1024}, QuantizationMode::kInt8, cfg, rng));
        } else {
            ql.name = "model.layers." + std::to_string(l - 1);
            const std::string p = ql.name + ".";
            ql.tensors.push_back(makeTensor(p + "self_attn.q_proj.weight", {128, 128}, QuantizationMode::kNf4, cfg, rng));
            ql.tensors.push_back(makeTensor(p + "mlp.up_proj.weight", {288, 128}, QuantizationMode::kNf4, cfg, rng));
            ql.tensors.push_back(makeTensor(p + "input_layernorm.weight", {128}, QuantizationMode::kNone, cfg, rng));
        }
        layers.push_back(std::move(ql));
    }
    return writeCache(root, "toy/lopsided", cfg, layers);
}

uint64_t dataBytes(const TestCache& tc, int64_t layer) {
    auto idx = io::readLayerIndex(tc.files[static_cast<size_t>(layer)]);
    REQUIRE(idx.isOk());
    return idx->dataBytes();
}

EngineOptions classOptions(const TestCache& tc, int depth) {
    EngineOptions o = cacheEngineOptions(tc);
    o.prefetchDepth = depth;
    o.computeDType = DType::kF32;
    return o;
}

// Streams `plan` (acquire, check, release) through an open engine.
void streamPlan(Engine& e, const TestCache& tc, const std::vector<int64_t>& plan) {
    for (int64_t l : plan) {
        CAPTURE(l);
        auto lease = e.acquire(l);
        REQUIRE_MESSAGE(lease.isOk(), lease.status().toString());
        checkLayer(*lease, tc, l);
    }
}

}  // namespace

TEST_CASE("layers far larger than the rest get slots of their own, every order streams them") {
    TempDir tmp;
    const TestCache tc = writeLopsidedCache(tmp.path);
    const uint64_t bigRead = dataBytes(tc, 0);
    const uint64_t blockRead = dataBytes(tc, 1);
    REQUIRE(bigRead > 8 * blockRead);
    std::vector<int64_t> all(kLayers);
    for (int64_t l = 0; l < kLayers; ++l) all[static_cast<size_t>(l)] = l;

    for (int depth : {1, 2, 4}) {
        CAPTURE(depth);
        {  // sequential
            auto e = Engine::open(classOptions(tc, depth));
            REQUIRE_MESSAGE(e.isOk(), e.status().toString());
            const EngineStats st = (*e)->stats();
            if (depth == 1) {
                // Two uniform slots take less memory than two large plus two block slots.
                CHECK(st.largeSlots == 0);
                CHECK(st.slots == 2);
            } else {
                CHECK(st.largeSlots == 2);
                CHECK(st.slots == depth + 1 + 2);
                // Uniform slots would each hold the largest read buffer (pre's) and the
                // largest output (post's 8 MiB of f32).
                CHECK(st.pinnedBytes < static_cast<uint64_t>(depth + 1) * bigRead);
                CHECK(st.hostOutputBytes < static_cast<uint64_t>(depth + 1) * (8u << 20));
            }
            streamPlan(**e, tc, all);
        }
        {  // cyclic: the wrap from post to pre, three times
            EngineOptions o = classOptions(tc, depth);
            o.order = LayerOrder::kCyclic;
            auto e = Engine::open(o);
            REQUIRE(e.isOk());
            for (int pass = 0; pass < 3; ++pass) streamPlan(**e, tc, all);
        }
        {  // explicit, with the large layers back to back and repeated
            EngineOptions o = classOptions(tc, depth);
            o.order = LayerOrder::kExplicit;
            o.plan = {0, 7, 0, 1, 2, 7, 7, 3, 0, 4, 5, 6, 7};
            auto e = Engine::open(o);
            REQUIRE(e.isOk());
            streamPlan(**e, tc, o.plan);
        }
    }
    // io_uring (where usable), at depth 2.
    EngineOptions o = classOptions(tc, 2);
    o.ioBackend = "auto";
    auto e = Engine::open(o);
    REQUIRE(e.isOk());
    CHECK((*e)->stats().largeSlots == 2);
    streamPlan(**e, tc, all);
}

TEST_CASE("a budget too small for uniform slots at full depth holds it with slot classes") {
    TempDir tmp;
    const TestCache tc = writeLopsidedCache(tmp.path);
    // Room for the two large slots, depth + 1 block slots and scratch, far below 5 uniform
    // slots of 4 MiB read + 8 MiB output.
    EngineOptions o = classOptions(tc, 4);
    o.hostBudgetBytes = 32ull << 20;
    auto e = Engine::open(o);
    REQUIRE_MESSAGE(e.isOk(), e.status().toString());
    CHECK((*e)->stats().slots == 5 + 2);
    CHECK((*e)->stats().pinnedBytes + (*e)->stats().hostOutputBytes <= o.hostBudgetBytes);
    std::vector<int64_t> all(kLayers);
    for (int64_t l = 0; l < kLayers; ++l) all[static_cast<size_t>(l)] = l;
    streamPlan(**e, tc, all);

    // Less: one large slot is all that fits.
    o.hostBudgetBytes = 22ull << 20;
    auto one = Engine::open(o);
    REQUIRE_MESSAGE(one.isOk(), one.status().toString());
    CHECK((*one)->stats().largeSlots == 1);
    streamPlan(**one, tc, all);
}

TEST_CASE("the embeddings can stay leased for a whole pass while the head streams") {
    TempDir tmp;
    const TestCache tc = writeLopsidedCache(tmp.path);
    EngineOptions o = classOptions(tc, 4);
    o.order = LayerOrder::kCyclic;
    auto e = Engine::open(o);
    REQUIRE(e.isOk());
    for (int pass = 0; pass < 2; ++pass) {
        auto pre = (*e)->acquire(0);  // kept, as a tied lm_head would need it at the end
        REQUIRE(pre.isOk());
        for (int64_t l = 1; l < kLayers; ++l) {
            auto lease = (*e)->acquire(l);
            REQUIRE_MESSAGE(lease.isOk(), lease.status().toString());
            checkLayer(*lease, tc, l);
        }
        checkLayer(*pre, tc, 0);
    }
}

TEST_CASE("a lease of a large layer beyond its slots is refused at once and has no effect") {
    TempDir tmp;
    const TestCache tc = writeLopsidedCache(tmp.path);
    EngineOptions o = classOptions(tc, 2);
    o.order = LayerOrder::kExplicit;
    o.plan = {0, 7, 0, 1, 7};
    auto e = Engine::open(o);
    REQUIRE(e.isOk());
    REQUIRE((*e)->stats().largeSlots == 2);
    auto a = (*e)->acquire(0);
    auto b = (*e)->acquire(7);
    REQUIRE(a.isOk());
    REQUIRE(b.isOk());
    for (int attempt = 0; attempt < 2; ++attempt) {  // a second lease of layer 0: no slot left
        auto c = (*e)->acquire(0);
        REQUIRE_FALSE(c.isOk());
        CHECK(c.status().isResourceExhausted());
        CHECK_MESSAGE(c.status().message().find("slots sized for the largest layers") != std::string::npos,
                      c.status().toString());
    }
    b->release();
    auto c = (*e)->acquire(0);  // position 2, as if the refused calls had not been made
    REQUIRE_MESSAGE(c.isOk(), c.status().toString());
    checkLayer(*c, tc, 0);
    checkLayer(*a, tc, 0);
    a->release();
    c->release();
    streamPlan(**e, tc, {1, 7});

    // With one large slot, holding the embeddings blocks the head: refused, then served.
    EngineOptions one = classOptions(tc, 4);
    one.hostBudgetBytes = 22ull << 20;
    auto f = Engine::open(one);
    REQUIRE(f.isOk());
    REQUIRE((*f)->stats().largeSlots == 1);
    auto pre = (*f)->acquire(0);
    REQUIRE(pre.isOk());
    for (int64_t l = 1; l < kLayers - 1; ++l) {
        auto lease = (*f)->acquire(l);
        REQUIRE(lease.isOk());
    }
    auto head = (*f)->acquire(7);
    REQUIRE_FALSE(head.isOk());
    CHECK(head.status().isResourceExhausted());
    pre->release();
    head = (*f)->acquire(7);
    REQUIRE_MESSAGE(head.isOk(), head.status().toString());
    checkLayer(*head, tc, 7);
}

TEST_CASE("layers of similar size share one class of slots") {
    TempDir tmp;
    const TestCache tc = makeCache(tmp.path, 6, QuantizationMode::kNf4);
    auto e = Engine::open(classOptions(tc, 3));
    REQUIRE(e.isOk());
    CHECK((*e)->stats().largeSlots == 0);
    CHECK((*e)->stats().slots == 4);
}

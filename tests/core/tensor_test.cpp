#include <doctest/doctest.h>

#include <cstdint>
#include <limits>

#include "sli/quantized.h"
#include "sli/tensor.h"

using namespace sli;

TEST_CASE("tensors are 64-byte aligned and zero-filled") {
    auto t = Tensor::zeros("w", {3, 5}, DType::kF16);
    REQUIRE(t.isOk());
    CHECK(t->numel() == 15);
    CHECK(t->nbytes() == 30);
    CHECK(reinterpret_cast<uintptr_t>(t->data()) % 64 == 0);
    for (int64_t i = 0; i < 15; ++i) CHECK(t->at(i) == 0.0f);
}

TEST_CASE("fromFloats converts with round to nearest even") {
    const float v[] = {1.0f, 65520.0f, -0.0f, 1.0f + 1.0f / 2048};
    auto t = Tensor::fromFloats("x", {4}, DType::kF16, v);
    REQUIRE(t.isOk());
    const auto* p = t->as<uint16_t>();
    CHECK(p[0] == 0x3c00);
    CHECK(p[1] == 0x7c00);
    CHECK(p[2] == 0x8000);
    CHECK(p[3] == 0x3c00);
}

TEST_CASE("rejects shapes that do not match the data") {
    const uint8_t bytes[6] = {};
    auto r = Tensor::fromBytes("layers.0.w", {2, 2}, DType::kF16, bytes);
    REQUIRE_FALSE(r.isOk());
    CHECK(r.status().isInvalidArgument());
    CHECK(r.status().message().find("layers.0.w") != std::string::npos);
    const float v[3] = {};
    CHECK(Tensor::fromFloats("x", {2, 2}, DType::kF32, v).status().isInvalidArgument());
    CHECK(Tensor::fromFloats("x", {3}, DType::kI8, v).status().isInvalidArgument());
}

TEST_CASE("rejects negative and overflowing shapes") {
    CHECK(Tensor::zeros("n", {2, -1}, DType::kF32).status().isInvalidArgument());
    const int64_t big = std::numeric_limits<int64_t>::max() / 2;
    auto r = Tensor::zeros("big", {big, 4}, DType::kF32);
    REQUIRE_FALSE(r.isOk());
    CHECK(r.status().message().find("overflows") != std::string::npos);
}

TEST_CASE("a layer keeps insertion order and rejects duplicate names") {
    Layer layer("model.layers.0");
    REQUIRE(layer.add(*Tensor::zeros("b", {2}, DType::kF32)).isOk());
    REQUIRE(layer.add(*Tensor::zeros("a", {4}, DType::kF16)).isOk());
    auto dup = layer.add(*Tensor::zeros("b", {1}, DType::kF32));
    CHECK(dup.isInvalidArgument());
    CHECK(dup.message().find("model.layers.0") != std::string::npos);
    CHECK(layer.size() == 2);
    CHECK(layer[0].name() == "b");
    CHECK(layer.find("a")->numel() == 4);
    CHECK(layer.find("c") == nullptr);
    CHECK(layer.nbytes() == 16);
}

TEST_CASE("quantized part sizes follow each mode's layout") {
    QuantizedTensorInfo info;
    info.name = "w";
    info.shape = {3, 33};  // 99 elements: odd count, partial last block
    info.mode = QuantizationMode::kNf4;
    info.blocksize = 64;
    CHECK(info.expectedPartBytes(QuantPart::kPayload) == 50);
    CHECK(info.expectedPartBytes(QuantPart::kAbsmax) == 8);
    CHECK(info.expectedPartBytes(QuantPart::kQuantMap) == 64);
    CHECK(info.expectedPartBytes(QuantPart::kNestedAbsmax) == 0);
    info.doubleQuant = true;
    info.nestedBlocksize = 256;
    CHECK(info.expectedPartBytes(QuantPart::kAbsmax) == 2);
    CHECK(info.expectedPartBytes(QuantPart::kNestedAbsmax) == 4);
    CHECK(info.expectedPartBytes(QuantPart::kNestedQuantMap) == 1024);
    info.mode = QuantizationMode::kInt4;
    info.shape = {2, 64};
    CHECK(info.expectedPartBytes(QuantPart::kPayload) == 4 * 18);
    info.shape = {2, 48};
    CHECK(info.validateParts({}).isInvalidArgument());
    info.mode = QuantizationMode::kInt8;
    info.shape = {4, 8};
    CHECK(info.expectedPartBytes(QuantPart::kAbsmax) == 16);
    CHECK(info.validateParts({32, 16, 0, 0, 0}).isOk());
    CHECK(info.validateParts({31, 16, 0, 0, 0}).isCorruption());
}

TEST_CASE("a borrowed tensor reads the caller's memory and clones into owned storage") {
    alignas(64) float data[6] = {1, 2, 3, 4, 5, 6};
    auto t = Tensor::borrowed("b", {2, 3}, DType::kF32, data);
    REQUIRE(t.isOk());
    CHECK(t->data() == reinterpret_cast<uint8_t*>(data));
    CHECK(t->at(4) == 5.0f);
    data[4] = 7.0f;
    CHECK(t->at(4) == 7.0f);
    auto c = t->clone();
    REQUIRE(c.isOk());
    CHECK(c->data() != t->data());
    data[4] = 9.0f;
    CHECK(c->at(4) == 7.0f);
    CHECK(Tensor::borrowed("bad", {-2}, DType::kF32, data).status().isInvalidArgument());
}

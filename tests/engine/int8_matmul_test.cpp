#include <doctest/doctest.h>

#include <cmath>
#include <algorithm>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "sli/int8_matmul.h"

using namespace sli;

namespace {

// An INT8 (LLM.int8) weight built by hand, independent of the kernels.
QuantizedTensor makeInt8(std::string name, int64_t rows, int64_t cols, const std::vector<int8_t>& cb,
                         const std::vector<float>& scb) {
    QuantizedTensor q;
    q.info.name = std::move(name);
    q.info.shape = {rows, cols};
    q.info.mode = QuantizationMode::kInt8;
    q.info.storedDType = DType::kI8;
    q.info.llmInt8Threshold = 6.0f;
    auto p = AlignedBuffer::allocate(cb.size());
    std::memcpy(p->data(), cb.data(), cb.size());
    q.part(QuantPart::kPayload) = std::move(p).value();
    auto s = AlignedBuffer::allocate(scb.size() * 4);
    std::memcpy(s->data(), scb.data(), scb.size() * 4);
    q.part(QuantPart::kAbsmax) = std::move(s).value();
    return q;
}

// LLM.int8 weight quantization written out directly: SCB = row absmax, CB = rne(w * 127 / SCB).
QuantizedTensor quantizeWeight(const std::vector<float>& w, int64_t rows, int64_t cols) {
    std::vector<int8_t> cb(w.size());
    std::vector<float> scb(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
        float m = 0;
        for (int64_t c = 0; c < cols; ++c) m = std::max(m, std::fabs(w[r * cols + c]));
        scb[r] = m;
        for (int64_t c = 0; c < cols; ++c) {
            cb[r * cols + c] = m == 0 ? 0 : static_cast<int8_t>(std::nearbyint(w[r * cols + c] * (127.0f / m)));
        }
    }
    return makeInt8("w", rows, cols, cb, scb);
}

// Float matmul against the dequantized weight, in double.
std::vector<double> floatMatmul(const std::vector<float>& a, int64_t tokens, const QuantizedTensor& w) {
    const int64_t out = w.info.shape[0], in = w.info.shape[1];
    const auto* cb = reinterpret_cast<const int8_t*>(w.part(QuantPart::kPayload).data());
    const auto* scb = w.part(QuantPart::kAbsmax).as<float>();
    std::vector<double> y(static_cast<size_t>(tokens * out));
    for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t o = 0; o < out; ++o) {
            double s = 0;
            for (int64_t j = 0; j < in; ++j) s += double(a[t * in + j]) * cb[o * in + j] * scb[o] / 127.0;
            y[t * out + o] = s;
        }
    }
    return y;
}

// Bound on |int8 result - float result|: every non-outlier activation is off by at most half a
// quantization step SCA/127/2, times |W| summed, plus float rounding slack.
double errorBound(const std::vector<float>& a, int64_t t, int64_t in, const QuantizedTensor& w, int64_t o,
                  const std::vector<int64_t>& outliers, float sca) {
    const auto* cb = reinterpret_cast<const int8_t*>(w.part(QuantPart::kPayload).data());
    const auto* scb = w.part(QuantPart::kAbsmax).as<float>();
    double sumW = 0, sumAW = 0;
    for (int64_t j = 0; j < in; ++j) {
        const double wd = std::fabs(cb[o * in + j] * scb[o] / 127.0);
        sumAW += std::fabs(a[t * in + j]) * wd;
        if (std::find(outliers.begin(), outliers.end(), j) == outliers.end()) sumW += wd;
    }
    return 0.5 * sca / 127.0 * sumW * 1.001 + 1e-6 * sumAW + 1e-7;
}

Tensor floats(std::string name, std::vector<int64_t> shape, const std::vector<float>& v,
              DType dt = DType::kF32) {
    return Tensor::fromFloats(std::move(name), std::move(shape), dt, v).value();
}

}  // namespace

TEST_CASE("a hand-worked 2x4 example with one outlier column") {
    // W (2 out x 4 in): CB rows and SCB, W = CB * SCB / 127.
    const QuantizedTensor w = makeInt8("w", 2, 4, {127, -64, 0, 32, 10, 20, -127, 5}, {1.27f, 2.54f});
    // Column 2 holds 8 >= 6: an outlier column.
    const std::vector<float> a = {1.0f, 2.0f, 0.5f, -1.0f, 0.25f, -0.5f, 8.0f, 1.0f};

    auto qa = int8VectorwiseQuant(a, 2, 4, 6.0f);
    REQUIRE(qa.isOk());
    CHECK(qa->outlierCols == std::vector<int64_t>{2});
    CHECK(qa->rowAbsmax == std::vector<float>{2.0f, 1.0f});  // outlier excluded from row 1's max
    // Row 0: x * 127/2 = 63.5, 127, -, -63.5 -> ties to even 64, 127, 0 (zeroed), -64.
    // Row 1: x * 127 = 31.75, -63.5, -, 127 -> 32, -64, 0, 127.
    CHECK(qa->q == std::vector<int8_t>{64, 127, 0, -64, 32, -64, 0, 127});

    Int8MatmulStats stats;
    auto y = int8MixedMatmul(floats("a", {2, 4}, a), w, 6.0f, &stats);
    REQUIRE(y.isOk());
    CHECK(stats.outlierCols == std::vector<int64_t>{2});
    CHECK(y->shape() == std::vector<int64_t>{2, 2});
    const float* out = y->as<float>();
    // int32 dot products of CA and CB, scaled by SCA * SCB / 127^2; plus the outlier column
    // through the float path: A[t][2] * (CB[o][2] * SCB[o] / 127) = A[t][2] * {0, -2.54}.
    // t0,o0: 64*127 + 127*-64 + -64*32 = -2048;  t0,o1: 640 + 2540 - 320 = 2860
    // t1,o0: 4064 + 4096 + 4064 = 12224;         t1,o1: 320 - 1280 + 635 = -325
    const double k = 1.0 / 16129.0;
    const double want[4] = {-2048 * 2.0 * 1.27 * k, 2860 * 2.0 * 2.54 * k + 0.5 * -2.54,
                            12224 * 1.0 * 1.27 * k, -325 * 1.0 * 2.54 * k + 8.0 * -2.54};
    for (int i = 0; i < 4; ++i) CHECK(out[i] == doctest::Approx(want[i]).epsilon(1e-5));
}

TEST_CASE("matches a float matmul of the dequantized weight within the int8 rounding bound") {
    std::mt19937 rng(42);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const int64_t tokens = 7, in = 96, outF = 24;
    std::vector<float> w(static_cast<size_t>(outF * in)), a(static_cast<size_t>(tokens * in));
    for (auto& x : w) x = nd(rng) * 0.05f;
    for (auto& x : a) x = nd(rng);
    a[3 * in + 17] = 9.5f;   // one outlier column (17) at threshold 6
    a[5 * in + 40] = -6.0f;  // exactly on the threshold counts (>=)
    const QuantizedTensor qw = quantizeWeight(w, outF, in);
    const auto ref = floatMatmul(a, tokens, qw);
    for (float thr : {0.0f, 6.0f}) {
        INFO("threshold ", thr);
        Int8MatmulStats stats;
        auto y = int8MixedMatmul(floats("a", {tokens, in}, a), qw, thr, &stats);
        REQUIRE(y.isOk());
        if (thr == 6.0f) {
            CHECK(stats.outlierCols == std::vector<int64_t>{17, 40});
        } else {
            CHECK(stats.outlierCols.empty());
        }
        auto qa = int8VectorwiseQuant(a, tokens, in, thr).value();
        for (int64_t t = 0; t < tokens; ++t) {
            for (int64_t o = 0; o < outF; ++o) {
                const double bound = errorBound(a, t, in, qw, o, stats.outlierCols, qa.rowAbsmax[t]);
                CHECK(std::fabs(y->as<float>()[t * outF + o] - ref[t * outF + o]) <= bound);
            }
        }
    }
}

TEST_CASE("an outlier column is what the threshold rescues") {
    // Small activations plus one huge feature: without decomposition the huge value sets every
    // row's scale, and the small values round to zero.
    const int64_t tokens = 4, in = 32, outF = 8;
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> ud(-0.02f, 0.02f);
    std::vector<float> w(static_cast<size_t>(outF * in)), a(static_cast<size_t>(tokens * in));
    for (auto& x : w) x = ud(rng) * 50.0f;
    for (auto& x : a) x = ud(rng);
    for (int64_t t = 0; t < tokens; ++t) a[t * in + 5] = 60.0f;
    const QuantizedTensor qw = quantizeWeight(w, outF, in);
    const auto ref = floatMatmul(a, tokens, qw);
    auto err = [&](float thr) {
        auto y = int8MixedMatmul(floats("a", {tokens, in}, a), qw, thr).value();
        double e = 0;
        for (size_t i = 0; i < ref.size(); ++i) e = std::max(e, std::fabs(y.as<float>()[i] - ref[i]));
        return e;
    };
    const double plain = err(0.0f), mixed = err(6.0f);
    CHECK(plain > 1e-2);             // the small features were lost
    CHECK(mixed < 1e-3);             // kept by the decomposition
    CHECK(mixed * 50 < plain);
}

TEST_CASE("f16 activations give the same result as their f32 values") {
    const QuantizedTensor w = makeInt8("w", 2, 4, {127, -64, 0, 32, 10, 20, -127, 5}, {1.27f, 2.54f});
    const std::vector<float> a = {1.0f, 2.0f, 0.5f, -1.0f, 0.25f, -0.5f, 8.0f, 1.0f};
    auto y32 = int8MixedMatmul(floats("a", {2, 4}, a), w, 6.0f).value();
    auto y16 = int8MixedMatmul(floats("a", {2, 4}, a, DType::kF16), w, 6.0f).value();
    for (int i = 0; i < 4; ++i) CHECK(y32.as<float>()[i] == y16.as<float>()[i]);
    // A 1-D activation is one token.
    auto y1 = int8MixedMatmul(floats("a", {4}, {1.0f, 2.0f, 0.5f, -1.0f}), w, 6.0f).value();
    auto y2 = int8MixedMatmul(floats("a", {1, 4}, {1.0f, 2.0f, 0.5f, -1.0f}), w, 6.0f).value();
    CHECK(y1.shape() == std::vector<int64_t>{1, 2});
    CHECK(y1.as<float>()[0] == y2.as<float>()[0]);
    CHECK(y1.as<float>()[1] == y2.as<float>()[1]);
}

TEST_CASE("a zero activation row gives zeros and a NaN column propagates like a float matmul") {
    const QuantizedTensor w = makeInt8("w", 2, 4, {127, -64, 0, 32, 10, 20, -127, 5}, {1.27f, 2.54f});
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> a = {0.0f, 0.0f, 0.0f, 0.0f, 1.0f, nan, 1.0f, 1.0f};
    Int8MatmulStats stats;
    auto y = int8MixedMatmul(floats("a", {2, 4}, a), w, 0.0f, &stats).value();
    CHECK(stats.outlierCols == std::vector<int64_t>{1});
    CHECK(y.as<float>()[0] == 0.0f);
    CHECK(y.as<float>()[1] == 0.0f);
    CHECK(std::isnan(y.as<float>()[2]));
    CHECK(std::isnan(y.as<float>()[3]));
}

TEST_CASE("rejects bad input with errors naming the tensors") {
    const QuantizedTensor w = makeInt8("layer.w", 2, 4, {127, -64, 0, 32, 10, 20, -127, 5}, {1.27f, 2.54f});
    const Tensor a = floats("acts", {2, 4}, {1, 2, 3, 4, 5, 6, 7, 8});
    std::vector<float> out(4);

    // A weight that is not INT8.
    QuantizedTensor nf4 = makeInt8("layer.w", 2, 4, {127, -64, 0, 32, 10, 20, -127, 5}, {1.27f, 2.54f});
    nf4.info.mode = QuantizationMode::kInt8Dynamic;
    Status s = int8MixedMatmul(a.view(), nf4.view(), 6.0f, out);
    CHECK(s.isInvalidArgument());
    CHECK(s.message().find("layer.w") != std::string::npos);

    // Inner dimension mismatch.
    const Tensor a3 = floats("acts", {2, 3}, {1, 2, 3, 4, 5, 6});
    s = int8MixedMatmul(a3.view(), w.view(), 6.0f, out);
    CHECK(s.isInvalidArgument());
    CHECK(s.message().find("acts") != std::string::npos);

    // Output of the wrong size.
    std::vector<float> small(3);
    CHECK(int8MixedMatmul(a.view(), w.view(), 6.0f, small).isInvalidArgument());

    // Integer activations, 3-D activations.
    const Tensor ai = Tensor::zeros("ints", {2, 4}, DType::kI32).value();
    CHECK(int8MixedMatmul(ai.view(), w.view(), 6.0f, out).isInvalidArgument());
    const Tensor a3d = floats("acts", {1, 2, 4}, {1, 2, 3, 4, 5, 6, 7, 8});
    CHECK(int8MixedMatmul(a3d.view(), w.view(), 6.0f, out).isInvalidArgument());

    // Activations whose byte size does not match the shape.
    TensorView lying = a.view();
    lying.nbytes = 12;
    CHECK(int8MixedMatmul(lying, w.view(), 6.0f, out).isInvalidArgument());

    // SCB of the wrong size: corruption, caught before any read.
    QuantizedTensor bad = makeInt8("layer.w", 2, 4, {127, -64, 0, 32, 10, 20, -127, 5}, {1.27f});
    s = int8MixedMatmul(a.view(), bad.view(), 6.0f, out);
    CHECK_FALSE(s.isOk());
    CHECK(s.message().find("layer.w") != std::string::npos);

    // No metadata.
    CHECK(int8MixedMatmul(a.view(), QuantizedTensorView{}, 6.0f, out).isInvalidArgument());

    // int8VectorwiseQuant with a size that does not match.
    std::vector<float> v(5);
    CHECK(int8VectorwiseQuant(v, 2, 3, 6.0f).status().isInvalidArgument());
}

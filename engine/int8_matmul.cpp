// Reference LLM.int8 mixed matmul (see sli/int8_matmul.h).
#include <cmath>
#include <cstring>
#include <string>

#include "sli/int8_matmul.h"

namespace sli {

namespace {

bool isOutlier(float a, float threshold) {
    if (!std::isfinite(a)) return true;
    return threshold > 0.0f && std::fabs(a) >= threshold;
}

// round half to even of a finite value already within [-127, 127].
int8_t roundHalfEven(float x) { return static_cast<int8_t>(std::nearbyint(x)); }

}  // namespace

Result<Int8VectorwiseQuant> int8VectorwiseQuant(std::span<const float> a, int64_t rows, int64_t cols,
                                                float threshold) {
    if (rows < 0 || cols < 0 || (cols != 0 && rows > INT64_MAX / cols) ||
        static_cast<int64_t>(a.size()) != rows * cols) {
        return Status::invalidArgument("int8VectorwiseQuant: " + std::to_string(a.size()) +
                                       " values for " + std::to_string(rows) + " x " +
                                       std::to_string(cols));
    }
    Int8VectorwiseQuant r;
    r.rows = rows;
    r.cols = cols;
    r.q.assign(a.size(), 0);
    r.rowAbsmax.assign(static_cast<size_t>(rows), 0.0f);
    std::vector<bool> outlier(static_cast<size_t>(cols), false);
    for (int64_t t = 0; t < rows; ++t) {
        for (int64_t j = 0; j < cols; ++j) {
            if (isOutlier(a[t * cols + j], threshold)) outlier[j] = true;
        }
    }
    for (int64_t j = 0; j < cols; ++j) {
        if (outlier[j]) r.outlierCols.push_back(j);
    }
    for (int64_t t = 0; t < rows; ++t) {
        float m = 0.0f;
        for (int64_t j = 0; j < cols; ++j) {
            if (!outlier[j]) m = std::fmax(m, std::fabs(a[t * cols + j]));
        }
        r.rowAbsmax[t] = m;
        if (m == 0.0f) continue;  // a zero row quantizes to zeros
        const float scale = 127.0f / m;
        for (int64_t j = 0; j < cols; ++j) {
            if (!outlier[j]) r.q[t * cols + j] = roundHalfEven(a[t * cols + j] * scale);
        }
    }
    return r;
}

Status int8MixedMatmul(const TensorView& act, const QuantizedTensorView& weight, float threshold,
                       std::span<float> out, Int8MatmulStats* stats) {
    if (weight.info == nullptr) return Status::invalidArgument("int8MixedMatmul: weight has no metadata");
    const QuantizedTensorInfo& wi = *weight.info;
    const std::string wname = "weight " + (wi.name.empty() ? std::string("<unnamed>") : wi.name);
    const std::string aname = "activations " + (act.name.empty() ? std::string("<unnamed>") : std::string(act.name));
    if (wi.mode != QuantizationMode::kInt8) {
        return Status::invalidArgument(wname + " is " + modeName(wi.mode) +
                                       ", the LLM.int8 matmul needs an int8 weight");
    }
    std::array<size_t, kQuantPartCount> sizes{};
    for (int i = 0; i < kQuantPartCount; ++i) sizes[i] = weight.parts[i].size();
    SLI_RETURN_IF_ERROR(wi.validateParts(sizes));
    if (wi.shape.size() != 2) {
        return Status::invalidArgument(wname + ": the LLM.int8 matmul needs a 2-D [out, in] weight, not " +
                                       shapeToString(wi.shape));
    }
    if (act.dtype != DType::kF32 && act.dtype != DType::kF16 && act.dtype != DType::kBF16) {
        return Status::invalidArgument(aname + ": dtype " + dtypeName(act.dtype) +
                                       " is not f32, f16 or bf16");
    }
    if (act.shape.empty() || act.shape.size() > 2) {
        return Status::invalidArgument(aname + ": shape " + shapeToString(act.shape) +
                                       " is not [in] or [tokens, in]");
    }
    SLI_ASSIGN_OR_RETURN(int64_t an, shapeNumel(act.shape, aname));
    const int64_t in = act.shape.back();
    const int64_t tokens = act.shape.size() == 2 ? act.shape[0] : 1;
    const int64_t outF = wi.shape[0];
    if (in != wi.shape[1]) {
        return Status::invalidArgument(aname + " " + shapeToString(act.shape) + " do not match " + wname +
                                       " " + shapeToString(wi.shape) + ": inner dimensions differ");
    }
    if (act.nbytes != static_cast<size_t>(an) * dtypeSize(act.dtype) || (an > 0 && !act.data)) {
        return Status::invalidArgument(aname + ": " + std::to_string(act.nbytes) + " bytes for " +
                                       dtypeName(act.dtype) + " " + shapeToString(act.shape));
    }
    if (static_cast<int64_t>(out.size()) != tokens * outF) {
        return Status::invalidArgument("int8MixedMatmul output for " + aname + " x " + wname + " holds " +
                                       std::to_string(out.size()) + " values, expected " +
                                       std::to_string(tokens * outF));
    }

    std::vector<float> a(static_cast<size_t>(an));
    SLI_RETURN_IF_ERROR(convertToF32(act.dtype, act.data, an, a.data()).withContext(aname));
    SLI_ASSIGN_OR_RETURN(Int8VectorwiseQuant qa, int8VectorwiseQuant(a, tokens, in, threshold));

    const auto* cb = reinterpret_cast<const int8_t*>(weight.part(QuantPart::kPayload).data());
    std::vector<float> scb(static_cast<size_t>(outF));
    std::memcpy(scb.data(), weight.part(QuantPart::kAbsmax).data(), scb.size() * sizeof(float));

    constexpr float kInv127Sq = 1.0f / (127.0f * 127.0f);
    constexpr float kDequant = 7.874015718698502e-3f;  // bitsandbytes int8_vectorwise_dequant
    for (int64_t t = 0; t < tokens; ++t) {
        const int8_t* ca = qa.q.data() + t * in;
        const float* at = a.data() + t * in;
        for (int64_t o = 0; o < outF; ++o) {
            const int8_t* w = cb + o * in;
            int32_t acc = 0;
            for (int64_t j = 0; j < in; ++j) acc += int32_t{ca[j]} * int32_t{w[j]};
            float y = static_cast<float>(acc) * (qa.rowAbsmax[t] * scb[o] * kInv127Sq);
            // Outlier columns against the dequantized weight columns CB * SCB / 127.
            double fp = 0.0;
            for (int64_t j : qa.outlierCols) {
                const float wdq = static_cast<float>(w[j]) * scb[o] * kDequant;
                fp += static_cast<double>(at[j]) * static_cast<double>(wdq);
            }
            out[t * outF + o] = y + static_cast<float>(fp);
        }
    }
    if (stats) stats->outlierCols = std::move(qa.outlierCols);
    return Status();
}

Result<Tensor> int8MixedMatmul(const Tensor& activations, const QuantizedTensor& weight, float threshold,
                               Int8MatmulStats* stats) {
    const int64_t tokens = activations.shape().size() == 2 ? activations.shape()[0] : 1;
    const int64_t outF = weight.info.shape.empty() ? 0 : weight.info.shape[0];
    if (tokens < 0 || outF < 0) return Status::invalidArgument("int8MixedMatmul: negative dimension");
    SLI_ASSIGN_OR_RETURN(Tensor out, Tensor::zeros(activations.name() + "@" + weight.info.name,
                                                   {tokens, outF}, DType::kF32));
    SLI_RETURN_IF_ERROR(int8MixedMatmul(activations.view(), weight.view(), threshold,
                                        {out.as<float>(), static_cast<size_t>(out.numel())}, stats));
    return out;
}

}  // namespace sli

// Reference CPU implementation of the LLM.int8 mixed-precision matmul (bitsandbytes
// MatMul8bitLt with has_fp16_weights=False), so that llm_int8_threshold has an executable
// meaning. It is a scalar reference for tests and tools, not a fast path.
//
// Given activations A [tokens x in] and an INT8 weight (LLM.int8 format: int8 CB [out x in],
// f32 SCB [out] = row absmax), out = A x W^T [tokens x out] in f32, computed as:
//   1. outlier columns: feature columns j where any |A[t][j]| >= threshold (threshold > 0;
//      threshold <= 0 disables the decomposition, bitsandbytes' default). Columns holding a
//      NaN or infinity are always outliers, so non-finite values propagate as in a float
//      matmul instead of going through an integer conversion.
//   2. int8 path: int8VectorwiseQuant(A, threshold): per row, SCA[t] = max |A[t][j]| over the
//      non-outlier columns, CA[t][j] = round_half_even(A[t][j] * 127 / SCA[t]) (0 for a zero
//      row), outlier columns zeroed. acc[t][o] = sum_j CA[t][j] * CB[o][j] in int32;
//      out_int8[t][o] = acc * (SCA[t] * SCB[o] / 127^2).
//   3. float path: out_fp[t][o] = sum_{j outlier} A[t][j] * (CB[o][j] * SCB[o] / 127),
//      accumulated in double against the dequantized weight columns (not original weights).
//   out = out_int8 + out_fp.
// Activations may be f32, f16 or bf16; they are widened exactly to f32 (bitsandbytes casts
// to fp16 first; pass f16 activations to reproduce that).
//
// Pure functions on borrowed inputs (results are owned values); they run on the calling
// thread only and are thread-safe. Errors: InvalidArgument naming the tensor for a weight that is
// not INT8, activations that are not 1-D / 2-D floating point, an inner dimension mismatch,
// an output span of the wrong size, or parts whose sizes do not match the shape.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "sli/quantized.h"
#include "sli/status.h"
#include "sli/tensor.h"

namespace sli {

struct Int8VectorwiseQuant {
    int64_t rows = 0;
    int64_t cols = 0;
    std::vector<int8_t> q;              // [rows x cols], outlier columns zero
    std::vector<float> rowAbsmax;       // SCA [rows], outliers excluded
    std::vector<int64_t> outlierCols;   // ascending
};

// bitsandbytes int8_vectorwise_quant(A, threshold) on row-major f32 `a` [rows x cols].
Result<Int8VectorwiseQuant> int8VectorwiseQuant(std::span<const float> a, int64_t rows,
                                                int64_t cols, float threshold);

struct Int8MatmulStats {
    std::vector<int64_t> outlierCols;  // the columns that took the float path
};

// out [tokens x out] (row-major f32) = activations x weight^T, as described above.
Status int8MixedMatmul(const TensorView& activations, const QuantizedTensorView& weight,
                       float threshold, std::span<float> out, Int8MatmulStats* stats = nullptr);
// Allocating form: an f32 tensor [tokens, out] named "<activations>@<weight>".
Result<Tensor> int8MixedMatmul(const Tensor& activations, const QuantizedTensor& weight,
                               float threshold, Int8MatmulStats* stats = nullptr);

}  // namespace sli

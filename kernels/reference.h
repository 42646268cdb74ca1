// Scalar reference quantization: the executable definition of every mode's bits.
//
// The per-range kernels are in referenceKernels() (cpu_kernels.h); this header adds the
// double-quant steps, which are cheap and always scalar. Semantics, per mode:
//
// NF4 / FP4 (bitsandbytes CUDA kQuantizeBlockwise): the tensor is flattened row-major and cut
//   into runs of `blocksize` values (blocks span rows; the last may be partial).
//   absmax = max over |x| starting at 0 (NaN, quiet or signaling, ignored, as CUDA's fmaxf
//   does; an all-NaN block has absmax 0);
//   inv = 1.0f / absmax (exact: CUDA's fast-math reciprocal may differ by <= 1 ulp, which can
//   flip a code only when x*inv lands within ~1 ulp of a threshold); code = encode(x * inv);
//   element 2k in the high nibble; an odd tail is padded with encode(0 * inv).
//   All-zero block: absmax 0, inv = inf, 0 * inf = NaN -> every code 0000 (CUDA; bnb's CPU
//   backend >= 0.50 gives 0111 for NF4). Dequantization: T(fl32(codebook[code] * absmax)).
// Double quant: offset = mean of the block absmax values, summed in double in index order and
//   rounded once to float32 (deterministic for any thread count; torch's float32 reduction
//   differs by a few ulp, 2 on the golden file: a checkpoint's own offset is read from it,
//   never recomputed). Then
//   absmax - offset (float32) is 8-bit quantized in nested blocks of 256 with the dynamic map
//   (fp32 nested absmax per group, CUDA dQuantize<0> nearest search). Reconstruction is
//   fl32(fl32(map[q] * nested_absmax) + offset).
// INT8 (LLM.int8 weights): w16 = fp16(x) (RNE; beyond the fp16 range becomes +-inf, as bnb's
//   cast), SCB = row max |w16| (NaN ignored) as float32, CB = rne(w16 * fl32(127.0f / SCB))
//   with an exact division (bnb's CPU path; CUDA's __fdividef may differ by +-1 within ~2 ulp
//   of a .5 tie). Zero row: SCB 0, CB 0.
// INT8_DYNAMIC: scale = max(fl32(absmax / 127.5f), 2^-23), q = clamp(rne(x * fl32(1/scale)),
//   -128, 127) (what torch.quantize_per_channel produces; the golden vectors decided the
//   reciprocal multiply). Zero row: scale 2^-23, q 0. Dequant fl32(q * scale).
// INT4: GGUF Q4_0, llama.cpp quantize_row_q4_0_ref (see blocks.h q4_0Encode).
//
// NaN / Inf policy (all modes): a NaN element never sets a block or row scale and encodes to
//   code 0 (NF4/FP4 0000, Q4_0 q 0, INT8 / INT8_DYNAMIC 0). An Inf element makes its scale
//   Inf, so inv = 0: the other elements encode as 0.0 and the Inf itself (Inf * 0 = NaN) as
//   code 0. Dequantization of such data yields NaN / Inf, as in bitsandbytes.
#pragma once

#include <cstdint>

#include "kernels/cpu_kernels.h"

namespace sli::kernels {

// Double-quant offset: mean of absmax[0..nb), double accumulation, one rounding to float32.
float absmaxMean(const float* absmax, int64_t nb) noexcept;

// 8-bit quantization of (absmax[i] - offset) in groups of 256 with `map` (256 sorted floats):
// writes nb codes and ceil(nb / 256) nested absmax values. The codes come from k's
// dynamicEncodeN (the reference's when k is null; every table gives the same bits).
void doubleQuantize(const float* absmax, int64_t nb, float offset, const float* map,
                    uint8_t* codes, float* nestedAbsmax, const CpuKernels* k = nullptr) noexcept;

// Reconstructs absmax[b] for b in [first, first + count): fl32(fl32(map[codes[b]] *
// nestedAbsmax[b / 256]) + offset). `codes` and `nestedAbsmax` index the whole tensor.
void reconstructAbsmax(const uint8_t* codes, const float* nestedAbsmax, const float* map,
                       float offset, int64_t first, int64_t count, float* out) noexcept;

}  // namespace sli::kernels

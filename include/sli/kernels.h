// Quantize / dequantize entry points (CPU). The one interface the rest of the library uses.
//
// quantize() fills a QuantizedTensor from f32 source values following the metadata already set
// in `out.info` (mode, shape, blocksize, doubleQuant, computeDType, ...), allocating its parts
// in the layouts documented in sli/quantized.h. Semantics are bitsandbytes' CUDA kernels (NF4 /
// FP4 / double quant / LLM.int8), PyTorch per-channel symmetric qint8 (INT8_DYNAMIC) and
// llama.cpp Q4_0 (INT4); see ../shared/reference/bitsandbytes-format.md and docs/.
//
// dequantize() writes numel(info.shape) elements of `dst` dtype (f16, bf16 or f32) from a view
// (borrowed bytes, e.g. a pinned read buffer). It validates part sizes first and returns
// InvalidArgument / Corruption naming the tensor instead of reading out of bounds.
//
// Both pick the fastest implementation for this CPU once (AVX-512 > AVX2 > scalar reference,
// by cpuid; SLI_ISA=scalar|avx2|avx512 forces a lower one) and split large tensors over
// `threads` threads (0 = every CPU in the thread's affinity mask, 1 = calling thread only).
// Thread-safe: no shared mutable state; concurrent calls on distinct outputs are fine.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "sli/dtype.h"
#include "sli/quantized.h"
#include "sli/status.h"

namespace sli::kernels {

Status quantize(std::span<const float> src, QuantizedTensor& out, int threads = 1);
// The same from numel(out.info.shape) source values of dtype `srcType` (any dtype
// convertToF32 takes; `src` may be unaligned): each value is widened exactly to f32 first,
// chunk by chunk as the kernels go, so the result is bit for bit quantize() of the widened
// tensor without writing that tensor out. A 2-byte-aligned bf16 source in NF4, FP4 or INT4 is
// read by kernels that widen each value as they load it (AVX2 / AVX-512), with no chunk.
Status quantize(DType srcType, const void* src, QuantizedTensor& out, int threads = 1);
Status dequantize(const QuantizedTensorView& src, DType dst, std::span<uint8_t> out,
                  int threads = 1);

// The source values of a tensor widened exactly to f32, as quantize() wants them: f16 / bf16 /
// f32 through the SIMD conversion (same bits as sli::convertToF32, NaN payloads kept), every
// other dtype convertToF32 supports through it. `in` may be unaligned; `out` holds n floats.
Status widenToF32(DType src, const void* in, int64_t n, float* out, int threads = 1);

// Runs fn(begin, end) over [0, units) in contiguous ranges on up to `threads` threads (0 =
// every CPU in the affinity mask), the calling thread among them, splitting only as far as the kernels
// do (about 256 K values a thread, at valuesPerUnit values a unit). For work beside the
// kernels that should scale the same way (ingestion's FP8 scales and MXFP4 decoding).
void parallelRanges(int64_t units, int64_t valuesPerUnit, int threads,
                    const std::function<void(int64_t, int64_t)>& fn);

// Name of the implementation in use: "avx512", "avx2" or "scalar".
const char* activeIsa() noexcept;

}  // namespace sli::kernels

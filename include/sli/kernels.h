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
// `threads` threads (0 = hardware concurrency, 1 = calling thread only). Thread-safe: no
// shared mutable state; concurrent calls on distinct outputs are fine.
#pragma once

#include <cstdint>
#include <span>

#include "sli/dtype.h"
#include "sli/quantized.h"
#include "sli/status.h"

namespace sli::kernels {

Status quantize(std::span<const float> src, QuantizedTensor& out, int threads = 1);
Status dequantize(const QuantizedTensorView& src, DType dst, std::span<uint8_t> out,
                  int threads = 1);

// Name of the implementation in use: "avx512", "avx2" or "scalar".
const char* activeIsa() noexcept;

}  // namespace sli::kernels

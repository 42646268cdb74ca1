// The CUDA kernels behind a plain C++ interface: what engine and tools code calls to
// dequantize or quantize on a GPU. No CUDA header is included; streams are passed as `void*`
// (a cudaStream_t; nullptr is the legacy default stream) and CUDA errors come back as
// Status::cudaError (code = the cudaError_t value, message naming the tensor and the CUDA
// error string).
//
// Device views: a QuantizedTensorView whose `info` lives in host memory and whose parts' data
// pointers are device addresses (sizes are the parts' byte counts, checked against the
// metadata on the host before anything is launched). Outputs are device pointers.
// Alignment: float parts (absmax, nested absmax / map, SCB), f32 / f16 / bf16 payloads and the
// output must be aligned to their element size (InvalidArgument otherwise: a misaligned device
// access would fault and poison the context); byte parts may sit at any offset. 16-byte
// aligned parts and outputs take the vectorized kernels, others a scalar one.
//
// Blocking: none of these functions waits for the GPU. They enqueue on `stream` and return;
// the caller orders later work with events or stream order. Inputs must stay valid until the
// enqueued work completes. Exception: quantizeOnDevice() (a convenience for the `sli quantize`
// tool) copies host data in and out and synchronizes its own stream.
//
// Thread safety: all functions are reentrant; the device used is the calling thread's current
// device (cudaSetDevice) except where a `device` argument is taken.
//
// Bit-exactness and tolerances: dequantization is bit-identical to sli::kernels::dequantize
// for every mode and output dtype. Quantization is byte-identical to the CPU quantizer (IEEE
// reciprocals); see kernels/cuda/quant.cuh for the bound against bnb's fast-math CUDA build.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "sli/dtype.h"
#include "sli/quantized.h"
#include "sli/status.h"

namespace sli::cuda {

// Converts a cudaError_t (as int) to a Status: OK for 0, otherwise Status::cudaError with
// "<what>: <cudaGetErrorName>: <cudaGetErrorString>".
Status fromCudaError(int err, std::string_view what);

// Dequantizes one tensor on `stream`: `dst` is a device buffer of at least
// numel * dtypeSize(dstType) bytes (`dstBytes`). dstType is f16, bf16 or f32. Every mode is
// supported (NONE converts f32/f16/bf16 payloads). InvalidArgument / Corruption (from the
// metadata check) before any launch; a launch failure as Status::cudaError.
Status dequantize(const QuantizedTensorView& deviceView, DType dstType, void* dst,
                  size_t dstBytes, void* stream);

// Device bytes numel * dtypeSize(dstType) that dequantize() writes for `info`.
size_t dequantizedBytes(const QuantizedTensorInfo& info, DType dstType);

// 4-bit quantization (NF4 when !fp4) of n device values of srcType (f32 / f16 / bf16):
// packed = (n+1)/2 bytes, absmax = ceil(n/blocksize) floats. blocksize: power of two 32..4096.
Status quantize4bit(const void* src, DType srcType, int64_t n, int blocksize, bool fp4,
                    uint8_t* packed, float* absmax, void* stream);
// Double quant of a device absmax vector (blocks of 256): codes u8[nb],
// nestedAbsmax f32[ceil(nb/256)]; `map` = 256 device floats (the dynamic map).
Status quantizeNested(const float* absmax, int64_t nb, float offset, const float* map,
                      uint8_t* codes, float* nestedAbsmax, void* stream);
// LLM.int8 weights: CB int8[rows*cols], SCB f32[rows].
Status quantizeInt8(const void* src, DType srcType, int64_t rows, int64_t cols, int8_t* cb,
                    float* scb, void* stream);

// Convenience for the quantize tool: like sli::kernels::quantize() (metadata already set in
// out.info: mode NF4 / FP4 / INT8, shape, blocksize, doubleQuant) but computed on `device`:
// copies `src` in, quantizes, copies the parts back (allocating them), synchronizes.
// NotSupported for INT8_DYNAMIC / INT4 / NONE (use the CPU quantizer), or without CUDA.
Status quantizeOnDevice(std::span<const float> src, QuantizedTensor& out, int device);

}  // namespace sli::cuda

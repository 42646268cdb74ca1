// The table of CPU kernel entry points, one instance per instruction set (scalar reference,
// AVX2, AVX-512), chosen once at run time by dispatch.cpp. Internal to kernels/ and its tests.
//
// Every entry works on a contiguous range that starts on a block (4-bit, Q4_0) or row (INT8)
// boundary, so callers may split a tensor over threads at those boundaries. Pointers may be
// unaligned except where noted; nothing is validated here (dispatch.cpp validates first).
// The functions are pure: no state, safe to call concurrently on distinct outputs. Every
// implementation produces the same bits as the scalar reference (tests/kernels checks it).
#pragma once

#include <cstdint>
#include <string>

#include "kernels/blocks.h"
#include "sli/dtype.h"

namespace sli::kernels {

enum class Codebook4 : uint8_t { kNf4 = 0, kFp4 = 1 };

// The double-quant statistics of a whole 4-bit tensor, as stored with it: one 8-bit code per
// block, the 256-entry dynamic map, one float32 nested absmax per kNestedBlocksize (256) blocks
// and the offset. Block b's absmax is fl32(fl32(map[codes[b]] * nestedAbsmax[b / 256]) +
// offset): two roundings, never fused. codes and nestedAbsmax index the whole tensor (not a
// thread's range) and may be unaligned; map is 256 floats.
struct DoubleQuantAbsmax {
    const uint8_t* codes;
    const float* map;
    const float* nestedAbsmax;
    float offset;
};

struct CpuKernels {
    const char* name;

    // NF4 / FP4 quantization of n source values starting at a block boundary: writes
    // (n + 1) / 2 packed bytes and ceil(n / blocksize) float32 absmax values.
    void (*quantize4bit)(Codebook4 cb, const float* src, int64_t n, int blocksize,
                         uint8_t* packed, float* absmax);
    // NF4 / FP4 dequantization of n values starting at a block boundary, with float32 absmax
    // (double-quant absmax already reconstructed). dst is f16, bf16 or f32.
    void (*dequantize4bit)(Codebook4 cb, const uint8_t* packed, const float* absmax, int64_t n,
                           int blocksize, DType dst, void* out);
    // The same with double-quant absmax rebuilt block by block inside the loop: packed and
    // out start at block firstBlock of the tensor (firstBlock indexes dq.codes and, / 256,
    // dq.nestedAbsmax). Same bits as reconstructAbsmax (reference.h) then dequantize4bit.
    void (*dequantize4bitDq)(Codebook4 cb, const uint8_t* packed, const DoubleQuantAbsmax& dq,
                             int64_t firstBlock, int64_t n, int blocksize, DType dst, void* out);

    // LLM.int8 weights of `rows` x `cols`: source values are first rounded to fp16 (as bnb
    // casts the weight to fp16), SCB[r] = row absmax, CB = rne(w * fl32(127 / SCB)).
    void (*quantizeInt8)(const float* src, int64_t rows, int64_t cols, int8_t* cb, float* scb);
    // Per-row symmetric int8 (torch per_channel_symmetric qint8): scale = max(absmax / 127.5,
    // eps), q = clamp(rne(w * fl32(1 / scale)), -128, 127).
    void (*quantizeInt8Dynamic)(const float* src, int64_t rows, int64_t cols, int8_t* q,
                                float* scale);
    // out = fl32(q * scale[r]), and for LLM.int8 (llmInt8 = true) then * kInt8DequantFactor
    // (bnb: CB * SCB * 7.874015718698502e-3, two roundings).
    void (*dequantizeInt8)(bool llmInt8, const int8_t* q, const float* scale, int64_t rows,
                           int64_t cols, DType dst, void* out);

    // GGUF Q4_0 over whole blocks of 32 (dst must be 2-byte aligned: block_q4_0).
    void (*quantizeQ4_0)(const float* src, int64_t nblocks, block_q4_0* dst);
    void (*dequantizeQ4_0)(const block_q4_0* src, int64_t nblocks, DType dst, void* out);

    // NONE: f16 / bf16 / f32 to f16 / bf16 / f32 (RNE when narrowing).
    void (*convert)(DType from, const void* src, int64_t n, DType to, void* out);

    // Double quant's 8-bit codes: codes[i] = dynamicEncode(map, fl32(x[i] * scale)) (blocks.h:
    // bitsandbytes' search of the sorted 256-entry map) for n values.
    void (*dynamicEncodeN)(const float* map, const float* x, float scale, int64_t n, uint8_t* codes);

    // quantize4bit from n bfloat16 source values (bits, 2-byte aligned), each widened exactly
    // to f32 as it is read: the same bytes as quantize4bit on the widened values, without
    // writing them out first. nullptr where a table has no such body: dispatch then widens
    // chunks of the source into a scratch buffer.
    void (*quantize4bitBf16)(Codebook4 cb, const uint16_t* src, int64_t n, int blocksize,
                             uint8_t* packed, float* absmax);
    // quantizeQ4_0 from bfloat16 source values (2-byte aligned), likewise.
    void (*quantizeQ4_0Bf16)(const uint16_t* src, int64_t nblocks, block_q4_0* dst);
};

// The scalar reference: the definition every other implementation is tested against.
const CpuKernels& referenceKernels() noexcept;
// nullptr when the file was not built (non-x86 host, compiler without the flags). Callers
// must also check the CPU supports the ISA before calling into them.
const CpuKernels* avx2Kernels() noexcept;
const CpuKernels* avx512Kernels() noexcept;

// Start-up self-test (kernels/self_test.cpp): runs every entry of `k` and of the reference on
// a few thousand fixed values (each mode and output dtype, a partial 4-bit block, an all-zero
// block, NaN, huge and subnormal values) and compares the bits. Returns the name of the first
// entry that disagrees, or an empty string. Dispatch runs it on the table it is about to use
// (about 1 ms: 0.7-0.8 ms for AVX2 on the development VM) and falls back to the next ISA if it
// fails: a guard for a table on hardware it has not been checked on (the AVX-512 one is
// verified by emulation in CI and ran natively on one AVX-512 Xeon so far).
std::string selfTestAgainstReference(const CpuKernels& k);
// Test only (tests/kernels, when SIMDe is installed): the AVX-512 bodies built with the AVX2
// flags on SIMDe's emulated intrinsics. Runs on any CPU that can run avx2Kernels().
const CpuKernels* avx512KernelsEmulated() noexcept;

}  // namespace sli::kernels

// AVX-512 kernels (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mf16c -mfma; chosen
// at run time only when the CPU has all of them and the OS saves the ZMM / opmask state). The
// bodies live in x86_avx512_impl.h.
//
// Built a second time for the tests only (kernels/meson.build, when SIMDe is installed) with
// the AVX2 flags and -DSLI_AVX512_VIA_SIMDE=1: the same bodies on SIMDe's emulated _mm512_*
// intrinsics, exported as avx512KernelsEmulated(), so that machines without AVX-512 check them
// bit for bit against the reference.
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's own AVX-512 headers (_mm512_undefined_* in vcvtps2ph, vinserti64x4, ...) trip
// -Wmaybe-uninitialized; nothing here reads an uninitialized value.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "kernels/x86_avx512_impl.h"

#include "engine/core/cpu_features.h"

namespace sli::kernels {
namespace {

#if SLI_AVX512_VIA_SIMDE
// The emulated table checks every AVX-512 body: the int8 lookup (which runs the arithmetic body
// for f32, row tails and non-finite scales) and Q4_0's.
constexpr auto dequantizeInt8 = x86_512::dequantizeInt8Lookup;
constexpr auto dequantizeQ4_0 = x86_512::dequantizeQ4_0;
#else
// LLM.int8 / int8_dynamic to f16 / bf16: where the CPU has VBMI, the per-row table lookup
// (x86_avx512_impl.h), which keeps up with NF4 where memory does not decide and reaches the
// memory floor where it does (docs/benchmarks.md, "Dequantization with its source and output
// in L2"). Without VBMI the AVX2 body: on the AVX-512 hosts measured (the Xeon of an H200
// machine, "AVX-512 natively", and the development Xeon) the arithmetic AVX-512 body reached
// 0.73-0.97 of the memory floor (0.84-0.91 for bf16 outputs and bf16-checkpoint scales on the
// development Xeon) and the AVX2 one 0.90-1.03. f32 output keeps the arithmetic AVX-512
// body (1.13-1.17 of the floor against 1.12-1.15).
void dequantizeInt8(bool llmInt8, const int8_t* q, const float* scale, int64_t rows, int64_t cols,
                    DType dst, void* out) {
    if (dst != DType::kF32 && cpu::hasAvx512Vbmi()) {
        x86_512::dequantizeInt8Lookup(llmInt8, q, scale, rows, cols, dst, out);
        return;
    }
    const CpuKernels* avx2 = avx2Kernels();
    if (dst != DType::kF32 && avx2 != nullptr) {
        avx2->dequantizeInt8(llmInt8, q, scale, rows, cols, dst, out);
    } else {
        x86_512::dequantizeInt8(llmInt8, q, scale, rows, cols, dst, out);
    }
}

// Q4_0 to f16 / bf16 likewise runs the AVX2 body (one or two blocks per 256-bit table, built
// from 8 exact products; x86_avx2_impl.h): on the development Xeon (2026-11-28) it reads from
// memory as fast as the AVX-512 one (both 0.95-1.05 of the floor, 3 alternating rounds) and,
// with source and output in L2 (bench/kernels_bench dequantize_hot), runs 1.09x (f16) and
// 1.41x (bf16) its speed. f32 output keeps the AVX-512 body (1.21x the AVX2 one in L2).
void dequantizeQ4_0(const block_q4_0* src, int64_t nblocks, DType dst, void* out) {
    const CpuKernels* avx2 = avx2Kernels();
    if (dst != DType::kF32 && avx2 != nullptr) {
        avx2->dequantizeQ4_0(src, nblocks, dst, out);
    } else {
        x86_512::dequantizeQ4_0(src, nblocks, dst, out);
    }
}
#endif

const CpuKernels kAvx512 = {
#if SLI_AVX512_VIA_SIMDE
    "avx512-simde",
#else
    "avx512",
#endif
    x86_512::quantize4bit,
    x86_512::dequantize4bit,
    x86_512::dequantize4bitDq,
    x86_512::quantizeInt8,
    x86_512::quantizeInt8Dynamic,
    dequantizeInt8,
    x86_512::quantizeQ4_0,
    dequantizeQ4_0,
    x86_512::convert,
    x86_512::dynamicEncodeN,
    x86_512::quantize4bitBf16,
    x86_512::quantizeQ4_0Bf16,
};

}  // namespace

#if SLI_AVX512_VIA_SIMDE
const CpuKernels* avx512KernelsEmulated() noexcept { return &kAvx512; }
#else
const CpuKernels* avx512Kernels() noexcept { return &kAvx512; }
#endif

}  // namespace sli::kernels

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

namespace sli::kernels {
namespace {

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
    x86_512::dequantizeInt8,
    x86_512::quantizeQ4_0,
    x86_512::dequantizeQ4_0,
    x86_512::convert,
};

}  // namespace

#if SLI_AVX512_VIA_SIMDE
const CpuKernels* avx512KernelsEmulated() noexcept { return &kAvx512; }
#else
const CpuKernels* avx512Kernels() noexcept { return &kAvx512; }
#endif

}  // namespace sli::kernels

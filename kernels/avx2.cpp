// AVX2 + FMA + F16C kernels (compiled with -mavx2 -mfma -mf16c; chosen at run time only when
// the CPU has all three). The bodies live in x86_avx2_impl.h.
#include "kernels/x86_avx2_impl.h"

namespace sli::kernels {
namespace {

const CpuKernels kAvx2 = {
    "avx2",
    x86::quantize4bit,
    x86::dequantize4bit,
    x86::dequantize4bitDq,
    x86::quantizeInt8,
    x86::quantizeInt8Dynamic,
    x86::dequantizeInt8,
    x86::quantizeQ4_0,
    x86::dequantizeQ4_0,
    x86::convert,
    x86::dynamicEncodeN,
    x86::quantize4bitBf16,
    x86::quantizeQ4_0Bf16,
};

}  // namespace

const CpuKernels* avx2Kernels() noexcept { return &kAvx2; }

}  // namespace sli::kernels

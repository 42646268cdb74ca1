// Device helpers shared by the CUDA kernels: output-dtype traits, 16-byte vector I/O, dtype and
// blocksize dispatch to compile-time constants, and launch geometry.
//
// Header-only, FlashInfer style: depends on the CUDA runtime and sli/dtype.h's SLI_HD scalar
// conversions only, never on the host framework (no Status, no logging, no allocation).
// Launchers built on it return cudaError_t and take a cudaStream_t. Thread safety: stateless.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "sli/dtype.h"

namespace sli::kernels::cuda {

inline constexpr int kThreads = 256;  // threads per block for the element-wise kernels

// Output element types, by the DType they stand for.
enum class OutKind : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

template <OutKind K>
struct OutTraits;
template <>
struct OutTraits<OutKind::kF32> {
    using Word = uint32_t;
    static constexpr int kBytes = 4;
    __device__ __forceinline__ static uint32_t fast(float x) { return __float_as_uint(x); }
    __device__ __forceinline__ static uint32_t exact(float x) { return __float_as_uint(x); }
};
template <>
struct OutTraits<OutKind::kF16> {
    static constexpr int kBytes = 2;
    // cvt.rn.f16.f32: IEEE round-to-nearest-even incl. subnormals and overflow; NaN becomes the
    // canonical NaN, so non-finite inputs go through exact() (sli::f32ToF16 keeps the payload).
    __device__ __forceinline__ static uint32_t fast(float x) {
        return __half_as_ushort(__float2half_rn(x));
    }
    __device__ __forceinline__ static uint32_t exact(float x) { return sli::f32ToF16(x); }
};
template <>
struct OutTraits<OutKind::kBF16> {
    static constexpr int kBytes = 2;
    __device__ __forceinline__ static uint32_t fast(float x) {
        return __bfloat16_as_ushort(__float2bfloat16_rn(x));
    }
    __device__ __forceinline__ static uint32_t exact(float x) { return sli::f32ToBf16(x); }
};

// Stores N (a multiple of 4 for f32, of 8 for 16-bit types) converted values at `dst`, which
// is 16-byte aligned, with 16-byte stores. `finite` = the caller knows no value is NaN, so the
// hardware conversion is bit-identical to the host's; otherwise each value takes the exact path
// when it is NaN.
template <OutKind K, int N>
__device__ __forceinline__ void storeVec(void* dst, const float (&v)[N], bool finite) {
    using T = OutTraits<K>;
    if constexpr (T::kBytes == 4) {
        static_assert(N % 4 == 0);
        uint4* d = reinterpret_cast<uint4*>(dst);
#pragma unroll
        for (int j = 0; j < N / 4; ++j) {
            d[j] = make_uint4(__float_as_uint(v[4 * j]), __float_as_uint(v[4 * j + 1]),
                              __float_as_uint(v[4 * j + 2]), __float_as_uint(v[4 * j + 3]));
        }
    } else {
        static_assert(N % 8 == 0);
        uint32_t h[N];
        if (finite) {
#pragma unroll
            for (int j = 0; j < N; ++j) h[j] = T::fast(v[j]);
        } else {
#pragma unroll
            for (int j = 0; j < N; ++j) h[j] = v[j] != v[j] ? T::exact(v[j]) : T::fast(v[j]);
        }
        uint4* d = reinterpret_cast<uint4*>(dst);
#pragma unroll
        for (int j = 0; j < N / 8; ++j) {
            d[j] = make_uint4(h[8 * j] | (h[8 * j + 1] << 16), h[8 * j + 2] | (h[8 * j + 3] << 16),
                              h[8 * j + 4] | (h[8 * j + 5] << 16),
                              h[8 * j + 6] | (h[8 * j + 7] << 16));
        }
    }
}

// One element, any alignment.
template <OutKind K>
__device__ __forceinline__ void storeOne(void* dst, int64_t i, float v) {
    using T = OutTraits<K>;
    const uint32_t bits = v != v ? T::exact(v) : T::fast(v);
    if constexpr (T::kBytes == 4) {
        static_cast<uint32_t*>(dst)[i] = bits;
    } else {
        static_cast<uint16_t*>(dst)[i] = static_cast<uint16_t>(bits);
    }
}

// fp16 -> f32, exact: the hardware cvt for numbers, sli::f16ToF32 (payload-preserving, the same
// as the host) for NaN.
__device__ __forceinline__ float f16Exact(uint16_t h) {
    const float v = __half2float(__ushort_as_half(h));
    return v != v ? sli::f16ToF32(h) : v;
}

// One element of an f32 / f16 / bf16 source as f32, exactly, any alignment (read-only path).
template <OutKind S>
__device__ __forceinline__ float loadOne(const void* p, int64_t i) {
    if constexpr (S == OutKind::kF32) {
        return __ldg(static_cast<const float*>(p) + i);
    } else if constexpr (S == OutKind::kF16) {
        return f16Exact(__ldg(static_cast<const unsigned short*>(p) + i));
    } else {
        return sli::bf16ToF32(__ldg(static_cast<const unsigned short*>(p) + i));
    }
}

// 16-byte read-only load through the non-coherent path (the data is not written by the kernel).
__device__ __forceinline__ uint4 loadVec(const void* p) {
    return __ldg(reinterpret_cast<const uint4*>(p));
}

__host__ __device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Clears an error that an earlier runtime call left in this thread's last-error slot (a
// cudaEventQuery / cudaStreamQuery answering cudaErrorNotReady records one, as does a failed
// cudaSetDevice), so that the cudaGetLastError() after a launch reports that launch only.
// Sticky errors (a faulted kernel) persist and are still reported by the launch. Launchers
// call it first.
inline void clearStaleError() { (void)cudaGetLastError(); }

inline unsigned gridFor(int64_t work, int64_t perBlock) {
    const int64_t g = (work + perBlock - 1) / perBlock;
    return static_cast<unsigned>(g < 1 ? 1 : g);
}

// Calls f.template operator()<K>() with the OutKind for `dst` (kF32 / kF16 / kBF16).
// Returns cudaErrorInvalidValue for any other dtype.
template <typename F>
cudaError_t dispatchOut(sli::DType dst, F&& f) {
    switch (dst) {
        case sli::DType::kF32: return f.template operator()<OutKind::kF32>();
        case sli::DType::kF16: return f.template operator()<OutKind::kF16>();
        case sli::DType::kBF16: return f.template operator()<OutKind::kBF16>();
        default: return cudaErrorInvalidValue;
    }
}

// Calls f.template operator()<kLog2>() for a power-of-two blocksize in 32..4096.
template <typename F>
cudaError_t dispatchBlocksize(int blocksize, F&& f) {
    switch (blocksize) {
        case 32: return f.template operator()<5>();
        case 64: return f.template operator()<6>();
        case 128: return f.template operator()<7>();
        case 256: return f.template operator()<8>();
        case 512: return f.template operator()<9>();
        case 1024: return f.template operator()<10>();
        case 2048: return f.template operator()<11>();
        case 4096: return f.template operator()<12>();
        default: return cudaErrorInvalidValue;
    }
}

}  // namespace sli::kernels::cuda

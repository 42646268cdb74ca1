// CUDA quantization kernels: NF4 / FP4 (bitsandbytes quantize_4bit), the nested 8-bit
// quantization of a 4-bit absmax vector (double quant), and LLM.int8 weights (CB / SCB).
//
// Header-only and framework-free, like dequant.cuh: launchers take device pointers and a
// cudaStream_t and return the launch's cudaError_t.
//
// Semantics are bnb's CUDA kernels (spec sections 2, 3, 5.2) with one deliberate difference:
// the reciprocal 1/absmax and the LLM.int8 scale 127/SCB are IEEE-rounded (__frcp_rn /
// __fdiv_rn) instead of bnb's fast-math rcp.approx / __fdividef. The result is byte-identical
// to the CPU quantizer (which computes the same expressions exactly). Against checkpoints made
// by bnb's own CUDA build the difference is bounded as the spec says: the approximate
// reciprocal is within 1 ulp, so a 4-bit or 8-bit code can move by one codebook step only for
// an element whose normalized value x * inv lies within ~1 ulp (~6e-8 relative) of a
// threshold, and an LLM.int8 code by +-1 only within ~2 ulp of a .5 tie. absmax / SCB are
// always exact (a max is a max).
//
// Inputs: f32, f16 or bf16 values (flattened row-major). Zero blocks follow CUDA: absmax 0,
// 1/0 = inf, 0 * inf = NaN, every code 0 (NF4 0000, FP4 0000, dynamic index 0). An odd element
// count pads the last byte's low nibble with the code of 0.0 (0 * inv).
// Thread safety: launchers are reentrant.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/quant_rules.h"

namespace sli::kernels::cuda {

namespace detail {

// Loads 8 consecutive source values starting at element i; elements at or beyond n read as 0.
template <OutKind S>
__device__ __forceinline__ void load8(const void* src, int64_t i, int64_t n, bool vec, float (&v)[8]) {
    if (vec && i + 8 <= n) {
        if constexpr (S == OutKind::kF32) {
            const float4 a = __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(src) + i));
            const float4 b =
                __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(src) + i + 4));
            v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
            v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
        } else {
            const uint4 r = loadVec(static_cast<const uint16_t*>(src) + i);
            const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const uint16_t h = static_cast<uint16_t>(w[j >> 1] >> (16 * (j & 1)));
                v[j] = S == OutKind::kF16 ? f16Exact(h) : sli::bf16ToF32(h);
            }
        }
    } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = i + j < n ? loadOne<S>(src, i + j) : 0.0f;
    }
}

// A group of kGroup lanes (a power of two <= 32, aligned within the warp) quantizes one 4-bit
// block of 2^kLog2Bs elements, 8 consecutive elements per lane per step.
template <OutKind S, int kLog2Bs, bool kFp4>
__global__ void __launch_bounds__(kThreads)
    quant4bitKernel(const void* src, int64_t n, uint8_t* packed, float* absmaxOut, bool vecIn,
                    bool vecOut) {
    constexpr int kBs = 1 << kLog2Bs;
    constexpr int kGroup = kBs / 8 < 32 ? kBs / 8 : 32;
    constexpr int kSteps = kBs / (8 * kGroup);
    constexpr int kGroupsPerBlock = kThreads / kGroup;
    const int lane = threadIdx.x % kGroup;
    const int64_t nb = (n + kBs - 1) >> kLog2Bs;
    const int64_t b = static_cast<int64_t>(blockIdx.x) * kGroupsPerBlock + threadIdx.x / kGroup;
    const bool active = b < nb;  // inactive lanes still join the shuffles
    const int64_t blockStart = b << kLog2Bs;

    float amax = 0.0f;
    if (active) {
#pragma unroll 4
        for (int s = 0; s < kSteps; ++s) {
            float v[8];
            load8<S>(src, blockStart + (static_cast<int64_t>(s) * kGroup + lane) * 8, n, vecIn, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) amax = fmaxf(amax, fabsf(v[j]));  // fmaxf drops NaN
        }
    }
#pragma unroll
    for (int off = kGroup / 2; off > 0; off >>= 1) {
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    }
    if (!active) return;
    if (lane == 0) absmaxOut[b] = amax;
    const float inv = rules::rcpRn(amax);
    const int64_t nBytes = (n + 1) >> 1;
#pragma unroll 4
    for (int s = 0; s < kSteps; ++s) {
        const int64_t i = blockStart + (static_cast<int64_t>(s) * kGroup + lane) * 8;
        if (i >= n) break;
        float v[8];
        load8<S>(src, i, n, vecIn, v);
        uint32_t word = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float x0 = rules::mulRn(v[2 * j], inv);
            const float x1 = rules::mulRn(v[2 * j + 1], inv);
            const uint32_t c0 = kFp4 ? rules::fp4Encode(x0) : rules::nf4Encode(x0);
            const uint32_t c1 = kFp4 ? rules::fp4Encode(x1) : rules::nf4Encode(x1);
            word |= ((c0 << 4) | c1) << (8 * j);
        }
        const int64_t k = i >> 1;  // first byte
        if (vecOut && k + 4 <= nBytes) {
            *reinterpret_cast<uint32_t*>(packed + k) = word;
        } else {
            for (int j = 0; j < 4 && k + j < nBytes; ++j) packed[k + j] = static_cast<uint8_t>(word >> (8 * j));
        }
    }
}

// Block-wide max of non-negative values (fmaxf, so NaN is dropped). All threads get the result.
__device__ __forceinline__ float blockMax(float v, float* sScratch) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    const int warp = threadIdx.x / 32;
    if ((threadIdx.x & 31) == 0) sScratch[warp] = v;
    __syncthreads();
    float r = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) r = fmaxf(r, sScratch[w]);
    __syncthreads();
    return r;
}

// One 256-thread block per nested block of 256 absmax values (spec 3): x = absmax - offset,
// nested_absmax = max |x|, code = dynamicEncode(map, x * (1 / nested_absmax)).
__global__ void __launch_bounds__(256)
    quantNestedKernel(const float* absmax, int64_t nb, float offset, const float* map,
                      uint8_t* codes, float* nestedAbsmax) {
    __shared__ float sMap[256];
    __shared__ float sScratch[8];
    sMap[threadIdx.x] = map[threadIdx.x];
    const int64_t i = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x;
    const float x = i < nb ? rules::subRn(absmax[i], offset) : 0.0f;
    __syncthreads();
    const float m = blockMax(fabsf(x), sScratch);
    if (threadIdx.x == 0) nestedAbsmax[blockIdx.x] = m;
    if (i < nb) codes[i] = static_cast<uint8_t>(rules::dynamicEncode(sMap, rules::mulRn(x, rules::rcpRn(m))));
}

// One block per row: SCB = max |fp16(w)|, CB = rne(fp16(w) * (127 / SCB)).
template <OutKind S>
__global__ void __launch_bounds__(kThreads)
    quantInt8Kernel(const void* src, int64_t rows, int64_t cols, int8_t* cb, float* scb) {
    __shared__ float sScratch[kThreads / 32];
    const int64_t r = blockIdx.x;
    const int64_t base = r * cols;
    float m = 0.0f;
    for (int64_t j = threadIdx.x; j < cols; j += kThreads) {
        m = fmaxf(m, fabsf(__half2float(__float2half_rn(loadOne<S>(src, base + j)))));
    }
    m = blockMax(m, sScratch);
    if (threadIdx.x == 0) scb[r] = m;
    const float scale = rules::int8Scale(m);
    for (int64_t j = threadIdx.x; j < cols; j += kThreads) {
        const float w16 = __half2float(__float2half_rn(loadOne<S>(src, base + j)));
        cb[base + j] = rules::int8Encode(w16, scale);
    }
}

}  // namespace detail

struct Quant4Args {
    const void* src = nullptr;
    sli::DType srcType = sli::DType::kF32;
    int64_t n = 0;
    int blocksize = 64;
    bool fp4 = false;
    uint8_t* packed = nullptr;  // (n+1)/2 bytes
    float* absmax = nullptr;    // ceil(n/blocksize) floats
};

inline cudaError_t launchQuant4bit(const Quant4Args& a, cudaStream_t stream) {
    if (a.n <= 0) return a.n == 0 ? cudaSuccess : cudaErrorInvalidValue;
    clearStaleError();
    const bool vecIn = aligned16(a.src);
    const bool vecOut = (reinterpret_cast<uintptr_t>(a.packed) & 3u) == 0;
    return dispatchOut(a.srcType, [&]<OutKind S>() {
        return dispatchBlocksize(a.blocksize, [&]<int kLog2>() {
            constexpr int kBs = 1 << kLog2;
            constexpr int kGroup = kBs / 8 < 32 ? kBs / 8 : 32;
            const int64_t nb = (a.n + kBs - 1) >> kLog2;
            const unsigned grid = gridFor(nb, kThreads / kGroup);
            if (a.fp4) {
                detail::quant4bitKernel<S, kLog2, true>
                    <<<grid, kThreads, 0, stream>>>(a.src, a.n, a.packed, a.absmax, vecIn, vecOut);
            } else {
                detail::quant4bitKernel<S, kLog2, false>
                    <<<grid, kThreads, 0, stream>>>(a.src, a.n, a.packed, a.absmax, vecIn, vecOut);
            }
            return cudaGetLastError();
        });
    });
}

// Double quant of a device absmax vector: codes u8[nb], nestedAbsmax f32[ceil(nb/256)].
// `offset` is the mean the caller subtracted (computed on the host, as the CPU quantizer does);
// `map` is the 256-entry dynamic map on the device.
inline cudaError_t launchQuantNested(const float* absmax, int64_t nb, float offset,
                                     const float* map, uint8_t* codes, float* nestedAbsmax,
                                     cudaStream_t stream) {
    if (nb <= 0) return nb == 0 ? cudaSuccess : cudaErrorInvalidValue;
    clearStaleError();
    detail::quantNestedKernel<<<gridFor(nb, 256), 256, 0, stream>>>(absmax, nb, offset, map,
                                                                      codes, nestedAbsmax);
    return cudaGetLastError();
}

struct QuantInt8Args {
    const void* src = nullptr;
    sli::DType srcType = sli::DType::kF32;
    int64_t rows = 0;
    int64_t cols = 0;
    int8_t* cb = nullptr;   // rows * cols
    float* scb = nullptr;   // rows
};

inline cudaError_t launchQuantInt8(const QuantInt8Args& a, cudaStream_t stream) {
    if (a.rows <= 0 || a.cols <= 0) return a.rows == 0 ? cudaSuccess : cudaErrorInvalidValue;
    if (a.rows > 0x7fffffff) return cudaErrorInvalidValue;
    clearStaleError();
    return dispatchOut(a.srcType, [&]<OutKind S>() {
        detail::quantInt8Kernel<S><<<static_cast<unsigned>(a.rows), kThreads, 0, stream>>>(
            a.src, a.rows, a.cols, a.cb, a.scb);
        return cudaGetLastError();
    });
}

}  // namespace sli::kernels::cuda

// CUDA dequantization kernels: NF4 / FP4 (with or without double-quant absmax), LLM.int8,
// INT8_DYNAMIC (per-channel qint8), INT4 (llama.cpp Q4_0) and NONE (dtype conversion), each to
// f32 / f16 / bf16.
//
// Header-only and framework-free (FlashInfer style): the launchers take device pointers and a
// cudaStream_t, enqueue work, and return the cudaError_t of the launch; they never synchronize
// or allocate. Runtime values (output dtype, 4-bit blocksize, row alignment) are dispatched to
// template constants.
//
// Bit-exactness: every element is computed with the rules in quant_rules.h (explicitly rounded
// __fmul_rn / __fadd_rn, never contracted to FMA), so the output is bit-identical to the CPU
// reference for finite and non-finite values alike (NaN keeps its payload through the exact
// conversion path; finite values use the hardware cvt.rn, which is IEEE RNE). Do not build this
// with --use_fast_math (FTZ would flush subnormal outputs).
//
// Memory access: the aligned fast paths of the 4-bit and int8 kernels give each lane the input
// of one 16-byte output store (an "item"), lanes on consecutive items and kItems items in
// flight per thread, so every warp-wide load and store is one contiguous span; Q4_0 stages
// 16-byte-loaded tiles in shared memory; dtype conversion moves 16-byte chunks. When a pointer is not
// 16-byte aligned (parts borrowed from arbitrary offsets) a scalar kernel produces the same
// values. Thread safety: launchers are reentrant; concurrent launches on distinct outputs are
// fine.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/quant_rules.h"

namespace sli::kernels::cuda {

// Items (one 16-byte output store each) per thread in the coalesced element-wise kernels:
// measured on an H200, NF4 -> f16 ran at 0.95-0.96 of a device-to-device copy with 2 or 4
// (4 chosen), 0.50 with the earlier layout of 64 output bytes per lane.
inline constexpr int kItems = 4;
inline constexpr int kUnroll = 2;  // 8-element chunks in flight per thread (dtype conversion)

// ---- NF4 / FP4 ---------------------------------------------------------------------------------
struct Dequant4Args {
    const uint8_t* packed = nullptr;       // (n+1)/2 bytes, element 2k in the high nibble
    const float* absmax = nullptr;         // f32[nb] when !nested
    const uint8_t* absmaxCodes = nullptr;  // u8[nb] when nested
    const float* nestedAbsmax = nullptr;   // f32[ceil(nb/256)] when nested
    const float* nestedMap = nullptr;      // f32[256] (the stored nested_quant_map)
    float nestedOffset = 0.0f;
    bool nested = false;
    bool fp4 = false;  // false: NF4
    int blocksize = 64;
    int64_t n = 0;
    void* out = nullptr;
};

namespace detail {

struct Lut16 {
    float v[16];
};

template <bool kNested>
struct Absmax4 {
    const float* absmax;
    const uint8_t* codes;
    const float* nestedAbsmax;
    const float* sNqm;  // shared copy of the nested map
    float offset;
    __device__ __forceinline__ float operator()(int64_t b) const {
        if constexpr (kNested) {
            return rules::nestedAbsmax(sNqm[__ldg(codes + b)], __ldg(nestedAbsmax + (b >> 8)),
                                       offset);
        } else {
            return __ldg(absmax + b);
        }
    }
};

template <OutKind K, int kLog2Bs, bool kNested, bool kVector>
__global__ void __launch_bounds__(kThreads)
    dequant4bitKernel(Dequant4Args a, Lut16 lut) {
    __shared__ float sLut[16];
    __shared__ float sNqm[kNested ? 256 : 1];
    if (threadIdx.x < 16) sLut[threadIdx.x] = lut.v[threadIdx.x];
    if constexpr (kNested) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) sNqm[i] = a.nestedMap[i];
    }
    __syncthreads();
    const Absmax4<kNested> absmaxOf{a.absmax, a.absmaxCodes, a.nestedAbsmax, sNqm, a.nestedOffset};
    constexpr int kOutBytes = OutTraits<K>::kBytes;

    if constexpr (kVector) {
        // An item is what one 16-byte output store holds: 8 elements (4 packed bytes) for
        // f16 / bf16, 4 (2 packed bytes) for f32. Lane k of a warp takes item k, so each warp
        // instruction loads and stores one contiguous span (a 16-byte-per-lane stride would
        // leave every store instruction writing half sectors, and L2 the bottleneck).
        // blocksize >= 32, so an item never straddles two absmax blocks.
        constexpr int kElems = 16 / kOutBytes;
        using Packed = std::conditional_t<kElems == 8, unsigned int, unsigned short>;
        const auto* packed = reinterpret_cast<const Packed*>(a.packed);
        const int64_t nItems = a.n / kElems;
        const int64_t first = static_cast<int64_t>(blockIdx.x) * (kThreads * kItems) + threadIdx.x;
        uint32_t w[kItems];
        float scale[kItems];
#pragma unroll
        for (int u = 0; u < kItems; ++u) {
            const int64_t it = first + u * kThreads;
            if (it < nItems) {
                w[u] = __ldg(packed + it);
                scale[u] = absmaxOf((it * kElems) >> kLog2Bs);
            }
        }
#pragma unroll
        for (int u = 0; u < kItems; ++u) {
            const int64_t it = first + u * kThreads;
            if (it >= nItems) break;
            float v[kElems];
#pragma unroll
            for (int j = 0; j < kElems / 2; ++j) {
                const uint32_t byte = (w[u] >> (8 * j)) & 0xffu;
                v[2 * j] = rules::dequant4(sLut[byte >> 4], scale[u]);
                v[2 * j + 1] = rules::dequant4(sLut[byte & 15u], scale[u]);
            }
            storeVec<K, kElems>(static_cast<uint8_t*>(a.out) + it * 16, v, rules::isFinite(scale[u]));
        }
        // The last n % kElems elements: block 0 handles them one per thread.
        if (blockIdx.x == 0) {
            const int64_t i = nItems * kElems + threadIdx.x;
            if (threadIdx.x < kElems && i < a.n) {
                const uint32_t byte = __ldg(a.packed + (i >> 1));
                const uint32_t nib = (i & 1) ? (byte & 15u) : (byte >> 4);
                storeOne<K>(a.out, i, rules::dequant4(sLut[nib], absmaxOf(i >> kLog2Bs)));
            }
        }
    } else {
        const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
        for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.n;
             i += stride) {
            const uint32_t byte = __ldg(a.packed + (i >> 1));
            const uint32_t nib = (i & 1) ? (byte & 15u) : (byte >> 4);
            storeOne<K>(a.out, i, rules::dequant4(sLut[nib], absmaxOf(i >> kLog2Bs)));
        }
    }
}

inline unsigned scalarGrid(int64_t n) {
    const int64_t g = (n + kThreads - 1) / kThreads;
    return static_cast<unsigned>(g < 1 ? 1 : (g > 65535 * 4 ? 65535 * 4 : g));
}

}  // namespace detail

inline cudaError_t launchDequant4bit(const Dequant4Args& a, sli::DType dst, cudaStream_t stream) {
    if (a.n <= 0) return a.n == 0 ? cudaSuccess : cudaErrorInvalidValue;
    clearStaleError();
    detail::Lut16 lut;
    for (unsigned i = 0; i < 16; ++i) lut.v[i] = a.fp4 ? rules::fp4Value(i) : rules::nf4Value(i);
    const bool vec = aligned16(a.packed) && aligned16(a.out);
    return dispatchOut(dst, [&]<OutKind K>() {
        return dispatchBlocksize(a.blocksize, [&]<int kLog2>() {
            if (vec) {
                const unsigned grid = gridFor(a.n / (16 / OutTraits<K>::kBytes), kThreads * kItems);
                if (a.nested) {
                    detail::dequant4bitKernel<K, kLog2, true, true><<<grid, kThreads, 0, stream>>>(a, lut);
                } else {
                    detail::dequant4bitKernel<K, kLog2, false, true><<<grid, kThreads, 0, stream>>>(a, lut);
                }
            } else {
                const unsigned grid = detail::scalarGrid(a.n);
                if (a.nested) {
                    detail::dequant4bitKernel<K, kLog2, true, false><<<grid, kThreads, 0, stream>>>(a, lut);
                } else {
                    detail::dequant4bitKernel<K, kLog2, false, false><<<grid, kThreads, 0, stream>>>(a, lut);
                }
            }
            return cudaGetLastError();
        });
    });
}

// ---- LLM.int8 and INT8_DYNAMIC (row-wise scale) ------------------------------------------------
struct DequantInt8Args {
    const int8_t* q = nullptr;      // [rows][cols]
    const float* scale = nullptr;   // [rows]: SCB (LLM.int8) or the per-channel scale (dynamic)
    int64_t n = 0;
    int64_t cols = 0;
    bool dynamic = false;  // false: LLM.int8 (q * SCB / 127), true: q * scale
    void* out = nullptr;
};

namespace detail {

template <bool kDynamic>
__device__ __forceinline__ float int8Value(int8_t q, float s) {
    if constexpr (kDynamic) return rules::dequantInt8Dynamic(q, s);
    else return rules::dequantInt8(q, s);
}

// kRowAligned: cols % (16 / output bytes) == 0, so an item never straddles two rows.
template <OutKind K, bool kDynamic, bool kVector, bool kRowAligned>
__global__ void __launch_bounds__(kThreads) dequantInt8Kernel(DequantInt8Args a) {
    constexpr int kOutBytes = OutTraits<K>::kBytes;
    if constexpr (kVector) {
        // Coalesced items as in the 4-bit kernel: 8 int8 (one 8-byte load) per 16-byte f16 /
        // bf16 store, 4 (one 4-byte load) per f32 store.
        constexpr int kElems = 16 / kOutBytes;
        using Packed = std::conditional_t<kElems == 8, uint2, unsigned int>;
        const auto* packed = reinterpret_cast<const Packed*>(a.q);
        const int64_t nItems = a.n / kElems;
        const int64_t first = static_cast<int64_t>(blockIdx.x) * (kThreads * kItems) + threadIdx.x;
        Packed raw[kItems];
#pragma unroll
        for (int u = 0; u < kItems; ++u) {
            const int64_t it = first + u * kThreads;
            if (it < nItems) raw[u] = __ldg(packed + it);
        }
#pragma unroll
        for (int u = 0; u < kItems; ++u) {
            const int64_t it = first + u * kThreads;
            if (it >= nItems) break;
            uint32_t w[2];
            if constexpr (kElems == 8) {
                w[0] = raw[u].x;
                w[1] = raw[u].y;
            } else {
                w[0] = raw[u];
                w[1] = 0;
            }
            const int64_t start = it * kElems;
            int64_t row = start / a.cols;
            float s = __ldg(a.scale + row);
            int64_t boundary = (row + 1) * a.cols;
            bool finite = rules::isFinite(s);
            float v[kElems];
#pragma unroll
            for (int j = 0; j < kElems; ++j) {
                if constexpr (!kRowAligned) {
                    if (start + j >= boundary) {
                        ++row;
                        boundary += a.cols;
                        s = __ldg(a.scale + row);
                        finite = finite && rules::isFinite(s);
                    }
                }
                const int8_t q = static_cast<int8_t>((w[j >> 2] >> (8 * (j & 3))) & 0xffu);
                v[j] = int8Value<kDynamic>(q, s);
            }
            storeVec<K, kElems>(static_cast<uint8_t*>(a.out) + start * kOutBytes, v, finite);
        }
        if (blockIdx.x == 0) {
            const int64_t i = nItems * kElems + threadIdx.x;
            if (threadIdx.x < kElems && i < a.n) {
                storeOne<K>(a.out, i, int8Value<kDynamic>(a.q[i], __ldg(a.scale + i / a.cols)));
            }
        }
    } else {
        const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
        for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.n;
             i += stride) {
            storeOne<K>(a.out, i, int8Value<kDynamic>(a.q[i], __ldg(a.scale + i / a.cols)));
        }
    }
}

}  // namespace detail

inline cudaError_t launchDequantInt8(const DequantInt8Args& a, sli::DType dst,
                                     cudaStream_t stream) {
    if (a.n <= 0 || a.cols <= 0) return a.n == 0 ? cudaSuccess : cudaErrorInvalidValue;
    clearStaleError();
    const bool vec = aligned16(a.q) && aligned16(a.out);
    return dispatchOut(dst, [&]<OutKind K>() {
        constexpr int kElems = 16 / OutTraits<K>::kBytes;
        const bool rowAligned = a.cols % kElems == 0;
        auto go = [&]<bool kDyn>() {
            if (vec) {
                const unsigned grid = gridFor(a.n / kElems, kThreads * kItems);
                if (rowAligned) {
                    detail::dequantInt8Kernel<K, kDyn, true, true><<<grid, kThreads, 0, stream>>>(a);
                } else {
                    detail::dequantInt8Kernel<K, kDyn, true, false><<<grid, kThreads, 0, stream>>>(a);
                }
            } else {
                detail::dequantInt8Kernel<K, kDyn, false, false>
                    <<<detail::scalarGrid(a.n), kThreads, 0, stream>>>(a);
            }
            return cudaGetLastError();
        };
        return a.dynamic ? go.template operator()<true>() : go.template operator()<false>();
    });
}

// ---- INT4: llama.cpp Q4_0 ------------------------------------------------------------------------
// block_q4_0 = { fp16 d; uint8 qs[16]; } (18 bytes): element j = (qs[j] & 15) - 8,
// element j + 16 = (qs[j] >> 4) - 8, both times d.
inline constexpr int kQ4_0Bytes = 18;
inline constexpr int kQ4PerThread = 2;  // Q4_0 blocks per thread (bytes in flight)

struct DequantQ4_0Args {
    const uint8_t* blocks = nullptr;  // nBlocks * 18 bytes
    int64_t nBlocks = 0;              // n / 32
    void* out = nullptr;              // nBlocks * 32 elements
};

namespace detail {

template <OutKind K>
__global__ void __launch_bounds__(kThreads) dequantQ4_0Kernel(DequantQ4_0Args a, bool vecIn,
                                                             bool vecOut) {
    constexpr int kTile = kThreads * kQ4PerThread;  // Q4_0 blocks per thread block
    constexpr int kTileBytes = kTile * kQ4_0Bytes;  // a multiple of 16
    static_assert(kTileBytes % 16 == 0);
    __shared__ uint4 sTile[kTileBytes / 16];
    const int64_t tileStart = static_cast<int64_t>(blockIdx.x) * kTile;
    const int64_t tileBlocks = a.nBlocks - tileStart < kTile ? a.nBlocks - tileStart : kTile;
    const uint8_t* src = a.blocks + tileStart * kQ4_0Bytes;
    // Stage the tile with coalesced 16-byte loads (the 18-byte blocks are not 16-byte aligned
    // individually; the tile is when the payload is).
    if (vecIn && tileBlocks == kTile) {
        uint4 r[(kTileBytes / 16 + kThreads - 1) / kThreads];
#pragma unroll
        for (int k = 0; k < (kTileBytes / 16 + kThreads - 1) / kThreads; ++k) {
            const int idx = threadIdx.x + k * kThreads;
            if (idx < kTileBytes / 16) r[k] = loadVec(src + 16 * idx);
        }
#pragma unroll
        for (int k = 0; k < (kTileBytes / 16 + kThreads - 1) / kThreads; ++k) {
            const int idx = threadIdx.x + k * kThreads;
            if (idx < kTileBytes / 16) sTile[idx] = r[k];
        }
    } else {
        uint8_t* s = reinterpret_cast<uint8_t*>(sTile);
        const int bytes = static_cast<int>(tileBlocks) * kQ4_0Bytes;
        for (int i = threadIdx.x; i < bytes; i += kThreads) s[i] = src[i];
    }
    __syncthreads();
    constexpr int kOutBytes = OutTraits<K>::kBytes;
    const uint16_t* s16 = reinterpret_cast<const uint16_t*>(sTile);
#pragma unroll
    for (int k = 0; k < kQ4PerThread; ++k) {
        const int local = threadIdx.x + k * kThreads;
        if (local >= tileBlocks) break;
        const int base = local * (kQ4_0Bytes / 2);  // in uint16 units
        const float d = f16Exact(s16[base]);
        float v[32];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const uint32_t two = s16[base + 1 + j];  // qs[2j] | qs[2j+1] << 8
            v[2 * j] = rules::dequantQ4_0(two & 15u, d);
            v[2 * j + 16] = rules::dequantQ4_0((two >> 4) & 15u, d);
            v[2 * j + 1] = rules::dequantQ4_0((two >> 8) & 15u, d);
            v[2 * j + 17] = rules::dequantQ4_0((two >> 12) & 15u, d);
        }
        const int64_t blk = tileStart + local;
        if (vecOut) {
            storeVec<K, 32>(static_cast<uint8_t*>(a.out) + blk * 32 * kOutBytes, v,
                            rules::isFinite(d));
        } else {
#pragma unroll
            for (int j = 0; j < 32; ++j) storeOne<K>(a.out, blk * 32 + j, v[j]);
        }
    }
}

}  // namespace detail

inline cudaError_t launchDequantQ4_0(const DequantQ4_0Args& a, sli::DType dst,
                                     cudaStream_t stream) {
    if (a.nBlocks <= 0) return a.nBlocks == 0 ? cudaSuccess : cudaErrorInvalidValue;
    clearStaleError();
    const bool vecIn = aligned16(a.blocks);
    const bool vecOut = aligned16(a.out);
    const unsigned grid = gridFor(a.nBlocks, kThreads * kQ4PerThread);
    return dispatchOut(dst, [&]<OutKind K>() {
        detail::dequantQ4_0Kernel<K><<<grid, kThreads, 0, stream>>>(a, vecIn, vecOut);
        return cudaGetLastError();
    });
}

// ---- NONE: dtype conversion ----------------------------------------------------------------------
struct ConvertArgs {
    const void* src = nullptr;
    sli::DType srcType = sli::DType::kF32;  // f32, f16 or bf16
    int64_t n = 0;
    void* out = nullptr;
};

namespace detail {

// A chunk is 8 elements (one 16-byte load of 16-bit values, two of f32).
template <OutKind S, OutKind K, bool kVector>
__global__ void __launch_bounds__(kThreads) convertKernel(ConvertArgs a) {
    constexpr int kInBytes = OutTraits<S>::kBytes;
    constexpr int kOutBytes = OutTraits<K>::kBytes;
    constexpr int kLoads = 8 * kInBytes / 16;
    if constexpr (kVector) {
        const int64_t nChunks = a.n >> 3;
        const int64_t first = static_cast<int64_t>(blockIdx.x) * (kThreads * kUnroll) + threadIdx.x;
        uint4 raw[kUnroll][kLoads];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int64_t c = first + u * kThreads;
            if (c < nChunks) {
#pragma unroll
                for (int l = 0; l < kLoads; ++l) {
                    raw[u][l] = loadVec(static_cast<const uint8_t*>(a.src) + c * 8 * kInBytes + 16 * l);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int64_t c = first + u * kThreads;
            if (c >= nChunks) break;
            float v[8];
            bool finite = true;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                if constexpr (kInBytes == 4) {
                    const uint4& r = raw[u][j >> 2];
                    const uint32_t words[4] = {r.x, r.y, r.z, r.w};
                    v[j] = __uint_as_float(words[j & 3]);
                } else {
                    const uint4& r = raw[u][0];
                    const uint32_t words[4] = {r.x, r.y, r.z, r.w};
                    const uint16_t h = static_cast<uint16_t>(words[j >> 1] >> (16 * (j & 1)));
                    v[j] = S == OutKind::kF16 ? f16Exact(h) : sli::bf16ToF32(h);
                }
                finite = finite && v[j] == v[j];
            }
            storeVec<K, 8>(static_cast<uint8_t*>(a.out) + c * 8 * kOutBytes, v, finite);
        }
        if (blockIdx.x == 0) {
            const int64_t i = (nChunks << 3) + threadIdx.x;
            if (threadIdx.x < 8 && i < a.n) storeOne<K>(a.out, i, loadOne<S>(a.src, i));
        }
    } else {
        const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
        for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.n;
             i += stride) {
            storeOne<K>(a.out, i, loadOne<S>(a.src, i));
        }
    }
}

}  // namespace detail

// Same dtype in and out is a plain cudaMemcpyAsync (device to device).
inline cudaError_t launchConvert(const ConvertArgs& a, sli::DType dst, cudaStream_t stream) {
    if (a.n <= 0) return a.n == 0 ? cudaSuccess : cudaErrorInvalidValue;
    clearStaleError();
    if (a.srcType == dst && dtypeIsCompute(dst)) {
        return cudaMemcpyAsync(a.out, a.src, static_cast<size_t>(a.n) * (dst == sli::DType::kF32 ? 4 : 2),
                               cudaMemcpyDeviceToDevice, stream);
    }
    const bool vec = aligned16(a.src) && aligned16(a.out);
    auto withSrc = [&]<OutKind S>() {
        return dispatchOut(dst, [&]<OutKind K>() {
            if (vec) {
                detail::convertKernel<S, K, true>
                    <<<gridFor(a.n >> 3, kThreads * kUnroll), kThreads, 0, stream>>>(a);
            } else {
                detail::convertKernel<S, K, false><<<detail::scalarGrid(a.n), kThreads, 0, stream>>>(a);
            }
            return cudaGetLastError();
        });
    };
    return dispatchOut(a.srcType, withSrc);
}

}  // namespace sli::kernels::cuda

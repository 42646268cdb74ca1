// sli::kernels::quantize / dequantize: input validation, ISA selection, thread splitting.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "engine/core/cpu_features.h"
#include "kernels/cpu_kernels.h"
#include "kernels/reference.h"
#include "sli/kernels.h"
#include "sli/log.h"

namespace sli::kernels {

#if !SLI_HAVE_AVX2_KERNELS
const CpuKernels* avx2Kernels() noexcept { return nullptr; }
#endif
#if !SLI_HAVE_AVX512_KERNELS
const CpuKernels* avx512Kernels() noexcept { return nullptr; }
#endif

namespace {

const CpuKernels& selectKernels() {
    const CpuKernels* avx512 = cpu::hasAvx512() ? avx512Kernels() : nullptr;
    const CpuKernels* avx2 = cpu::hasAvx2() ? avx2Kernels() : nullptr;
    const char* force = std::getenv("SLI_ISA");
    const std::string want = force ? force : "";
    if (want == "scalar") return referenceKernels();
    if (want == "avx2") {
        if (!avx2) {
            SLI_WARN("kernels", "SLI_ISA=avx2 but this CPU or build has no AVX2 kernels: using scalar");
            return referenceKernels();
        }
        avx512 = nullptr;
    }
    if (!want.empty() && want != "avx2" && want != "avx512" && want != "auto") {
        SLI_WARN("kernels", "SLI_ISA=%s is not one of scalar, avx2, avx512: ignored", want.c_str());
    }
    if (want == "avx512" && !avx512) {
        SLI_WARN("kernels", "SLI_ISA=avx512 but %s: using %s",
                 avx512Kernels() ? "this CPU (or its OS) does not support AVX-512F/BW/VL/DQ"
                                 : "this build has no AVX-512 kernels",
                 avx2 ? avx2->name : referenceKernels().name);
    }
    // The start-up self-test guards each fast table (the AVX-512 one has been verified only
    // through emulation on the development machines): one that disagrees with the reference is
    // not used.
    for (const CpuKernels* k : {avx512, avx2}) {
        if (k == nullptr) continue;
        const std::string bad = selfTestAgainstReference(*k);
        if (bad.empty()) return *k;
        SLI_ERROR("kernels", "%s kernels disagree with the scalar reference (%s) in the start-up "
                  "self-test: not used", k->name, bad.c_str());
    }
    return referenceKernels();
}

const CpuKernels& kernels() {
    static const CpuKernels& k = selectKernels();
    return k;
}

// Values per thread below which splitting costs more than it saves.
constexpr int64_t kMinValuesPerThread = int64_t{1} << 18;

int threadCount(int threads, int64_t values) {
    int t = threads;
    if (t <= 0) t = cpu::usableCores();
    const int64_t useful = std::max<int64_t>(1, values / kMinValuesPerThread);
    return static_cast<int>(std::min<int64_t>(t, useful));
}

// Runs fn(begin, end) over [0, units) split into `threads` contiguous chunks; the calling
// thread takes the last chunk. If a thread cannot be started, its chunk runs here instead.
template <typename Fn>
void parallelFor(int64_t units, int threads, Fn&& fn) {
    threads = static_cast<int>(std::min<int64_t>(threads, units));
    if (threads <= 1) {
        fn(int64_t{0}, units);
        return;
    }
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(threads - 1));
    std::vector<std::pair<int64_t, int64_t>> inline_chunks;
    for (int t = 0; t < threads; ++t) {
        const int64_t begin = units * t / threads;
        const int64_t end = units * (t + 1) / threads;
        if (t == threads - 1) {
            inline_chunks.emplace_back(begin, end);
            break;
        }
        try {
            pool.emplace_back([&fn, begin, end] { fn(begin, end); });
        } catch (const std::system_error&) {
            inline_chunks.emplace_back(begin, end);
        }
    }
    for (auto [b, e] : inline_chunks) fn(b, e);
    for (auto& th : pool) th.join();
}

std::string tensorLabel(const QuantizedTensorInfo& info) {
    return "tensor " + (info.name.empty() ? std::string("<unnamed>") : info.name);
}

Status checkSourceDType(const QuantizedTensorInfo& info) {
    switch (info.mode) {
        case QuantizationMode::kNone:
            if (!dtypeIsCompute(info.storedDType)) {
                return Status::invalidArgument(tensorLabel(info) + ": mode none stores " +
                                               dtypeName(info.storedDType) +
                                               ", expected f16, bf16 or f32");
            }
            break;
        case QuantizationMode::kInt8:
        case QuantizationMode::kInt8Dynamic:
            if (info.storedDType != DType::kI8) {
                return Status::invalidArgument(tensorLabel(info) + ": " + modeName(info.mode) +
                                               " stores i8, not " + dtypeName(info.storedDType));
            }
            break;
        case QuantizationMode::kInt4:
            if (info.storedDType != DType::kU8) {
                return Status::invalidArgument(tensorLabel(info) + ": int4 stores u8 blocks, not " +
                                               dtypeName(info.storedDType));
            }
            if (info.blocksize != 0 && info.blocksize != kQk4_0) {
                return Status::invalidArgument(tensorLabel(info) + ": int4 (Q4_0) blocksize is 32, not " +
                                               std::to_string(info.blocksize));
            }
            break;
        case QuantizationMode::kNf4:
        case QuantizationMode::kFp4: break;
    }
    return Status();
}

Codebook4 codebookOf(QuantizationMode m) {
    return m == QuantizationMode::kFp4 ? Codebook4::kFp4 : Codebook4::kNf4;
}

}  // namespace

const char* activeIsa() noexcept { return kernels().name; }

namespace {

// Values widened per step of the fused quantization: 64 KiB of f32, which stays in L2 while
// the kernel reads it back (widening the whole tensor first wrote 4 bytes per value to memory
// and read them again: a quarter of `sli quantize`'s time).
constexpr int64_t kChunkValues = 16384;

// The source values [begin, begin + count) as f32: the source itself when it is f32 and
// 4-byte aligned, else widened into `scratch` (count floats).
struct SourceF32 {
    const CpuKernels& k;
    DType type;
    const uint8_t* bytes;
    bool direct;
    const float* get(int64_t begin, int64_t count, float* scratch) const {
        if (direct) return reinterpret_cast<const float*>(bytes) + begin;
        k.convert(type, bytes + begin * static_cast<int64_t>(dtypeSize(type)), count, DType::kF32, scratch);
        return scratch;
    }
};

// One scratch chunk per thread, handed out as parallelFor starts its ranges.
struct ScratchPool {
    std::vector<AlignedBuffer> buffers;
    std::atomic<size_t> next{0};
    Status allocate(int threads, int64_t values, bool needed) {
        if (!needed) return Status();
        buffers.resize(static_cast<size_t>(threads));
        for (auto& b : buffers) {
            auto buf = AlignedBuffer::allocate(static_cast<size_t>(values) * sizeof(float), false);
            if (!buf.isOk()) return buf.status();
            b = std::move(buf).value();
        }
        return Status();
    }
    float* take() {
        if (buffers.empty()) return nullptr;
        return buffers[next.fetch_add(1) % buffers.size()].as<float>();
    }
};

// srcCount: the number of source values the caller has, or -1 when it holds numel() by contract.
Status quantizeFrom(DType srcType, const void* src, int64_t srcCount, QuantizedTensor& out, int threads);

}  // namespace

Status quantize(std::span<const float> src, QuantizedTensor& out, int threads) {
    return quantizeFrom(DType::kF32, src.data(), static_cast<int64_t>(src.size()), out, threads);
}

Status quantize(DType srcType, const void* src, QuantizedTensor& out, int threads) {
    return quantizeFrom(srcType, src, -1, out, threads);
}

namespace {

Status quantizeFrom(DType srcType, const void* src, int64_t srcCount, QuantizedTensor& out, int threads) {
    QuantizedTensorInfo& info = out.info;
    if (modeIs4bit(info.mode) && info.doubleQuant && info.nestedBlocksize == 0) {
        info.nestedBlocksize = kNestedBlocksize;  // the only valid value
    }
    std::array<size_t, kQuantPartCount> want{};
    for (int i = 0; i < kQuantPartCount; ++i) want[i] = info.expectedPartBytes(static_cast<QuantPart>(i));
    SLI_RETURN_IF_ERROR(info.validateParts(want));
    SLI_RETURN_IF_ERROR(checkSourceDType(info));
    const int64_t n = info.numel();
    if (srcCount >= 0 && srcCount != n) {
        return Status::invalidArgument(tensorLabel(info) + ": " + std::to_string(srcCount) +
                                       " source values for shape " + shapeToString(info.shape) +
                                       " (" + std::to_string(n) + " elements)");
    }
    if (n > 0 && src == nullptr) {
        return Status::invalidArgument(tensorLabel(info) + ": no source values");
    }
    // Source dtypes the SIMD conversion does not take (f64, integers) are widened whole first.
    AlignedBuffer widenedWhole;
    if (!dtypeIsCompute(srcType)) {
        auto buf = AlignedBuffer::allocate(static_cast<size_t>(n) * sizeof(float), false);
        if (!buf.isOk()) return buf.status().withContext(tensorLabel(info));
        widenedWhole = std::move(buf).value();
        SLI_RETURN_IF_ERROR(convertToF32(srcType, src, n, widenedWhole.as<float>()).withContext(tensorLabel(info)));
        srcType = DType::kF32;
        src = widenedWhole.data();
    }
    for (int i = 0; i < kQuantPartCount; ++i) {
        if (want[i] == 0) {
            out.parts[i] = AlignedBuffer();
            continue;
        }
        auto buf = AlignedBuffer::allocate(want[i], /*zero=*/false);
        if (!buf.isOk()) return buf.status().withContext(tensorLabel(info));
        out.parts[i] = std::move(buf).value();
    }

    const CpuKernels& k = kernels();
    const int nt = threadCount(threads, n);
    const SourceF32 x{k, srcType, static_cast<const uint8_t*>(src),
                      srcType == DType::kF32 && reinterpret_cast<uintptr_t>(src) % alignof(float) == 0};
    ScratchPool scratch;
    // Each unit (a 4-bit or Q4_0 block, an int8 row, one value for none) is quantized from
    // chunks of whole units of about kChunkValues values.
    const auto fused = [&](int64_t units, int64_t unitValues, auto&& quantizeUnits) -> Status {
        if (units <= 0 || unitValues <= 0) return Status();  // (empty tensors are refused above)
        const int64_t perChunk = std::max<int64_t>(1, kChunkValues / unitValues);
        SLI_RETURN_IF_ERROR(scratch.allocate(nt, perChunk * unitValues, !x.direct).withContext(tensorLabel(info)));
        parallelFor(units, nt, [&](int64_t u0, int64_t u1) {
            float* buf = scratch.take();
            for (int64_t u = u0; u < u1; u += perChunk) {
                const int64_t ue = std::min(u1, u + perChunk);
                const int64_t begin = u * unitValues;
                const int64_t count = std::min(n, ue * unitValues) - begin;
                quantizeUnits(u, ue - u, x.get(begin, count, buf), count);
            }
        });
        return Status();
    };
    // A 2-byte-aligned bf16 source goes straight to a kernel that reads bf16, where the table
    // has one (entry): no widened copy.
    const auto bf16Direct = [&](auto entry) {
        return srcType == DType::kBF16 && entry != nullptr &&
               reinterpret_cast<uintptr_t>(src) % alignof(uint16_t) == 0;
    };
    switch (info.mode) {
        case QuantizationMode::kNone: {
            uint8_t* payload = out.part(QuantPart::kPayload).data();
            const size_t osz = dtypeSize(info.storedDType);
            SLI_RETURN_IF_ERROR(fused(n, 1, [&](int64_t u, int64_t, const float* v, int64_t count) {
                k.convert(DType::kF32, v, count, info.storedDType, payload + u * static_cast<int64_t>(osz));
            }));
            break;
        }
        case QuantizationMode::kNf4:
        case QuantizationMode::kFp4: {
            const Codebook4 cb = codebookOf(info.mode);
            const int bs = info.blocksize;
            const int64_t nb = (n + bs - 1) / bs;
            uint8_t* packed = out.part(QuantPart::kPayload).data();
            std::memcpy(out.part(QuantPart::kQuantMap).data(),
                        cb == Codebook4::kNf4 ? kNf4QuantMap : kFp4QuantMap, 16 * 4);
            // With double quant the float absmax is an intermediate.
            std::vector<float> plainAbsmax;
            float* absmax = out.part(QuantPart::kAbsmax).as<float>();
            if (info.doubleQuant) {
                plainAbsmax.resize(static_cast<size_t>(nb));
                absmax = plainAbsmax.data();
            }
            if (bf16Direct(k.quantize4bitBf16)) {
                const auto* bf16 = static_cast<const uint16_t*>(src);
                parallelFor(nb, nt, [&](int64_t b0, int64_t b1) {
                    const int64_t begin = b0 * bs;
                    k.quantize4bitBf16(cb, bf16 + begin, std::min(n, b1 * bs) - begin, bs,
                                       packed + begin / 2, absmax + b0);
                });
            } else {
                SLI_RETURN_IF_ERROR(fused(nb, bs, [&](int64_t b, int64_t, const float* v, int64_t count) {
                    k.quantize4bit(cb, v, count, bs, packed + b * bs / 2, absmax + b);
                }));
            }
            if (info.doubleQuant) {
                float map[256];
                for (int i = 0; i < 256; ++i) map[i] = bitsFloat(kDynamicMapBits[i]);
                std::memcpy(out.part(QuantPart::kNestedQuantMap).data(), map, sizeof map);
                info.nestedOffset = absmaxMean(absmax, nb);
                doubleQuantize(absmax, nb, info.nestedOffset, map,
                               out.part(QuantPart::kAbsmax).data(),
                               out.part(QuantPart::kNestedAbsmax).as<float>(), &k);
            }
            break;
        }
        case QuantizationMode::kInt8:
        case QuantizationMode::kInt8Dynamic: {
            const int64_t rows = info.rows();
            const int64_t cols = info.cols();
            int8_t* q = out.part(QuantPart::kPayload).as<int8_t>();
            float* scale = out.part(QuantPart::kAbsmax).as<float>();
            const auto rowKernel = info.mode == QuantizationMode::kInt8 ? k.quantizeInt8 : k.quantizeInt8Dynamic;
            SLI_RETURN_IF_ERROR(fused(rows, cols, [&](int64_t r, int64_t count, const float* v, int64_t) {
                rowKernel(v, count, cols, q + r * cols, scale + r);
            }));
            break;
        }
        case QuantizationMode::kInt4: {
            auto* blocks = out.part(QuantPart::kPayload).as<block_q4_0>();
            if (bf16Direct(k.quantizeQ4_0Bf16)) {
                const auto* bf16 = static_cast<const uint16_t*>(src);
                parallelFor(n / kQk4_0, nt, [&](int64_t b0, int64_t b1) {
                    k.quantizeQ4_0Bf16(bf16 + b0 * kQk4_0, b1 - b0, blocks + b0);
                });
            } else {
                SLI_RETURN_IF_ERROR(fused(n / kQk4_0, kQk4_0, [&](int64_t b, int64_t count, const float* v, int64_t) {
                    k.quantizeQ4_0(v, count, blocks + b);
                }));
            }
            break;
        }
    }
    return Status();
}

}  // namespace

void parallelRanges(int64_t units, int64_t valuesPerUnit, int threads,
                    const std::function<void(int64_t, int64_t)>& fn) {
    if (units <= 0) return;
    parallelFor(units, threadCount(threads, units * std::max<int64_t>(1, valuesPerUnit)), fn);
}

Status widenToF32(DType src, const void* in, int64_t n, float* out, int threads) {
    if (!dtypeIsCompute(src) || n <= 0) return convertToF32(src, in, n, out);
    const CpuKernels& k = kernels();
    const auto* bytes = static_cast<const uint8_t*>(in);
    const size_t isz = dtypeSize(src);
    // Units of 64 values keep every thread's range on whole cache lines of the output.
    constexpr int64_t kUnit = 64;
    parallelFor((n + kUnit - 1) / kUnit, threadCount(threads, n), [&](int64_t u0, int64_t u1) {
        const int64_t b = u0 * kUnit, e = std::min(n, u1 * kUnit);
        k.convert(src, bytes + b * isz, e - b, DType::kF32, out + b);
    });
    return Status();
}

Status dequantize(const QuantizedTensorView& src, DType dst, std::span<uint8_t> out,
                  int threads) {
    if (src.info == nullptr) return Status::invalidArgument("dequantize: view without tensor info");
    const QuantizedTensorInfo& info = *src.info;
    if (!dtypeIsCompute(dst)) {
        return Status::invalidArgument(tensorLabel(info) + ": cannot dequantize to " +
                                       std::string(dtypeName(dst)) + " (f16, bf16 or f32 only)");
    }
    std::array<size_t, kQuantPartCount> have{};
    for (int i = 0; i < kQuantPartCount; ++i) have[i] = src.parts[i].size();
    SLI_RETURN_IF_ERROR(info.validateParts(have));
    SLI_RETURN_IF_ERROR(checkSourceDType(info));
    const int64_t n = info.numel();
    const size_t outBytes = static_cast<size_t>(n) * dtypeSize(dst);
    if (out.size() != outBytes) {
        return Status::invalidArgument(tensorLabel(info) + ": output holds " +
                                       std::to_string(out.size()) + " bytes, " + dtypeName(dst) +
                                       " " + shapeToString(info.shape) + " needs " +
                                       std::to_string(outBytes));
    }

    const CpuKernels& k = kernels();
    const int nt = threadCount(threads, n);
    uint8_t* o = out.data();
    const size_t osz = dtypeSize(dst);
    const uint8_t* payload = src.part(QuantPart::kPayload).data();
    switch (info.mode) {
        case QuantizationMode::kNone: {
            const size_t isz = dtypeSize(info.storedDType);
            parallelFor(n, nt, [&](int64_t b, int64_t e) {
                k.convert(info.storedDType, payload + b * isz, e - b, dst, o + b * osz);
            });
            break;
        }
        case QuantizationMode::kNf4:
        case QuantizationMode::kFp4: {
            const Codebook4 cb = codebookOf(info.mode);
            const int bs = info.blocksize;
            const int64_t nb = (n + bs - 1) / bs;
            const uint8_t* absmaxBytes = src.part(QuantPart::kAbsmax).data();
            if (!info.doubleQuant) {
                const auto* absmax = reinterpret_cast<const float*>(absmaxBytes);
                parallelFor(nb, nt, [&](int64_t b0, int64_t b1) {
                    const int64_t begin = b0 * bs;
                    const int64_t end = std::min<int64_t>(n, b1 * bs);
                    k.dequantize4bit(cb, payload + begin / 2, absmax + b0, end - begin, bs, dst,
                                     o + begin * osz);
                });
                break;
            }
            // The absmax is rebuilt block by block inside the kernel's loop (a separate
            // rebuild pass before the store-bound kernel measured 0.92 of the data-movement
            // floor; in the loop its scalar work hides under the stores).
            alignas(64) float map[256];
            std::memcpy(map, src.part(QuantPart::kNestedQuantMap).data(), sizeof map);
            const DoubleQuantAbsmax dq{
                absmaxBytes, map,
                reinterpret_cast<const float*>(src.part(QuantPart::kNestedAbsmax).data()),
                info.nestedOffset};
            parallelFor(nb, nt, [&](int64_t b0, int64_t b1) {
                const int64_t begin = b0 * bs;
                const int64_t end = std::min<int64_t>(n, b1 * bs);
                k.dequantize4bitDq(cb, payload + begin / 2, dq, b0, end - begin, bs, dst,
                                   o + begin * osz);
            });
            break;
        }
        case QuantizationMode::kInt8:
        case QuantizationMode::kInt8Dynamic: {
            const int64_t rows = info.rows();
            const int64_t cols = info.cols();
            const auto* q = reinterpret_cast<const int8_t*>(payload);
            const auto* scale = reinterpret_cast<const float*>(src.part(QuantPart::kAbsmax).data());
            const bool llm = info.mode == QuantizationMode::kInt8;
            parallelFor(rows, nt, [&](int64_t r0, int64_t r1) {
                k.dequantizeInt8(llm, q + r0 * cols, scale + r0, r1 - r0, cols, dst,
                                 o + r0 * cols * osz);
            });
            break;
        }
        case QuantizationMode::kInt4: {
            const auto* blocks = reinterpret_cast<const block_q4_0*>(payload);
            parallelFor(n / kQk4_0, nt, [&](int64_t b0, int64_t b1) {
                k.dequantizeQ4_0(blocks + b0, b1 - b0, dst, o + b0 * kQk4_0 * osz);
            });
            break;
        }
    }
    return Status();
}

}  // namespace sli::kernels

// Quantize / dequantize throughput per mode and output dtype on 16M values, one thread, with
// memcpy, memset and a non-temporal fill (the store-bandwidth ceiling) of the same output size
// registered beside each in the same run (the machine's speed drifts, ratios are what to read).
// items = values, bytes = output bytes. Outputs are 64-byte aligned, as the engine's pooled
// output arena (std::vector's 16-byte alignment would keep large outputs off the streaming-store
// path, which wants whole cache lines).
//
//   build/bench/kernels_bench --benchmark_min_time=0.2
//   SLI_ISA=scalar build/bench/kernels_bench ...   (force the reference)
#include <benchmark/benchmark.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <chrono>
#include <cstring>
#include <map>
#include <tuple>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu_kernels.h"
#include "sli/kernels.h"

using namespace sli;

namespace {

constexpr int64_t kRows = 4096;
constexpr int64_t kCols = 4096;
constexpr int64_t kN = kRows * kCols;  // 16M values

const std::vector<float>& source() {
    static const std::vector<float> v = [] {
        std::vector<float> x(static_cast<size_t>(kN));
        std::mt19937 rng(1);
        std::normal_distribution<float> d(0.0f, 0.02f);
        for (auto& f : x) f = d(rng);
        return x;
    }();
    return v;
}

QuantizedTensorInfo infoFor(QuantizationMode mode, bool dq) {
    QuantizedTensorInfo info;
    info.name = "bench.weight";
    info.shape = {kRows, kCols};
    info.mode = mode;
    info.blocksize = modeIs4bit(mode) ? 64 : 0;
    info.doubleQuant = dq;
    info.storedDType = mode == QuantizationMode::kNone ? DType::kBF16
                       : (mode == QuantizationMode::kInt8 || mode == QuantizationMode::kInt8Dynamic)
                           ? DType::kI8
                           : DType::kU8;
    return info;
}

// The same values rounded to bf16, as a bf16 checkpoint holds them (its LLM.int8 row scales
// then have at most 8 significant bits, which the int8 -> bf16 kernel's split-scale path
// takes; the f32 source's full-precision scales take the two-product path).
const std::vector<float>& bf16Source() {
    static const std::vector<float> v = [] {
        std::vector<float> x = source();
        for (auto& f : x) f = bf16ToF32(f32ToBf16(f));
        return x;
    }();
    return v;
}

const QuantizedTensor& quantized(QuantizationMode mode, bool dq, bool fromBf16 = false) {
    static std::map<std::tuple<int, bool, bool>, std::unique_ptr<QuantizedTensor>> cache;
    auto& slot = cache[{static_cast<int>(mode), dq, fromBf16}];
    if (!slot) {
        slot = std::make_unique<QuantizedTensor>();
        slot->info = infoFor(mode, dq);
        if (!kernels::quantize(fromBf16 ? bf16Source() : source(), *slot).isOk()) std::abort();
    }
    return *slot;
}

// A zero-filled 64-byte-aligned buffer (aborts when memory is short: a benchmark).
AlignedBuffer lineBuffer(size_t bytes) {
    auto b = AlignedBuffer::allocate(bytes, /*zero=*/true);
    if (!b.isOk()) std::abort();
    return std::move(b).value();
}

void setCounters(benchmark::State& state, size_t outBytes) {
    state.SetItemsProcessed(state.iterations() * kN);
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(outBytes));
    state.counters["values/s"] = benchmark::Counter(static_cast<double>(kN), benchmark::Counter::kIsIterationInvariantRate);
}

void bmQuantize(benchmark::State& state, QuantizationMode mode, bool dq) {
    QuantizedTensor q;
    size_t outBytes = 0;
    for (auto _ : state) {
        q.info = infoFor(mode, dq);
        if (!kernels::quantize(source(), q, 1).isOk()) state.SkipWithError("quantize failed");
        benchmark::DoNotOptimize(q.parts[0].data());
        outBytes = q.storedBytes();
    }
    setCounters(state, outBytes);
}

// The public entry from a bf16 source, as `sli quantize` runs it on a bf16 checkpoint: the
// source widened to f32 16384 values at a time just before the kernel reads them (so the
// kernel's source is in L2), outputs allocated and first-touched on every call.
void bmQuantizeFromBf16(benchmark::State& state, QuantizationMode mode, bool dq) {
    static const std::vector<uint16_t> bf16 = [] {
        std::vector<uint16_t> v(static_cast<size_t>(kN));
        for (size_t i = 0; i < v.size(); ++i) v[i] = f32ToBf16(source()[i]);
        return v;
    }();
    QuantizedTensor q;
    size_t outBytes = 0;
    for (auto _ : state) {
        q.info = infoFor(mode, dq);
        if (!kernels::quantize(DType::kBF16, bf16.data(), q, 1).isOk())
            state.SkipWithError("quantize failed");
        benchmark::DoNotOptimize(q.parts[0].data());
        outBytes = q.storedBytes();
    }
    setCounters(state, outBytes);
}

// The quantization kernel alone (the CpuKernels entry that kernels::quantize dispatches to),
// into preallocated outputs: kernels::quantize also allocates and first-touches its parts on
// every call (page faults), which this leaves out.
const kernels::CpuKernels& activeKernels() {
    const std::string isa = kernels::activeIsa();
    if (isa == "avx512" && kernels::avx512Kernels()) return *kernels::avx512Kernels();
    if (isa == "avx2" && kernels::avx2Kernels()) return *kernels::avx2Kernels();
    return kernels::referenceKernels();
}

void bmMemcpy(benchmark::State& state, size_t bytes) {
    AlignedBuffer a = lineBuffer(bytes), b = lineBuffer(bytes);
    std::memset(a.data(), 1, bytes);
    for (auto _ : state) {
        std::memcpy(b.data(), a.data(), bytes);
        benchmark::DoNotOptimize(b.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes));
}

void bmMemset(benchmark::State& state, size_t bytes) {
    AlignedBuffer b = lineBuffer(bytes);
    int v = 0;
    for (auto _ : state) {
        std::memset(b.data(), ++v & 0xff, bytes);
        benchmark::DoNotOptimize(b.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes));
}

#if defined(__SSE2__)
// memset with non-temporal 16-byte stores: the rate at which one thread can write memory
// without reading it first, the ceiling for the dequantization kernels' streaming stores.
void bmStreamFill(benchmark::State& state, size_t bytes) {
    AlignedBuffer b = lineBuffer(bytes);
    int v = 0;
    for (auto _ : state) {
        const __m128i x = _mm_set1_epi8(static_cast<char>(++v));
        for (size_t i = 0; i + 64 <= bytes; i += 64) {
            for (size_t j = 0; j < 64; j += 16) {
                _mm_stream_si128(reinterpret_cast<__m128i*>(b.data() + i + j), x);
            }
        }
        _mm_sfence();
        benchmark::DoNotOptimize(b.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes));
}
#endif

// Physical floors: a pure data-movement loop that reads and writes as many bytes per value as a
// dequantization does (`r` source bytes, `w` output bytes per value), with the same
// non-temporal 64-byte-aligned stores and no arithmetic: each 16 source bytes are widened by
// byte unpacking (x2, x4 or x8) and streamed. A dequantization that reads more than NF4's half
// byte per value (int8: 1, none bf16: 2) cannot beat the floor of its own (r, w).
struct Floor {
    int readTimes2;  // source bytes per value x 2 (1 = half a byte)
    int write;       // output bytes per value
    std::string name() const {
        const std::string r = readTimes2 == 1 ? "0.5" : std::to_string(readTimes2 / 2);
        return "movefloor/r" + r + "w" + std::to_string(write);
    }
    size_t srcBytes() const { return static_cast<size_t>(kN) * readTimes2 / 2; }
    size_t outBytes() const { return static_cast<size_t>(kN) * write; }
};

template <int F>  // output bytes per source byte: 1, 2, 4 or 8
void moveWiden(const uint8_t* src, size_t srcBytes, uint8_t* out) {
#if !defined(__SSE2__)
    for (size_t i = 0; i < srcBytes; ++i) std::memset(out + i * F, src[i], F);  // no streaming
#else
    auto put = [out](size_t at, __m128i x) {
        _mm_stream_si128(reinterpret_cast<__m128i*>(out + at), x);
    };
    // 16 source bytes -> 16 F output bytes at o
    auto widen = [&put](__m128i v, size_t o) {
        if constexpr (F == 1) {
            put(o, v);
        } else {
            const __m128i a = _mm_unpacklo_epi8(v, v), b = _mm_unpackhi_epi8(v, v);
            if constexpr (F == 2) {
                put(o, a);
                put(o + 16, b);
            } else {
                const __m128i c[4] = {_mm_unpacklo_epi16(a, a), _mm_unpackhi_epi16(a, a),
                                      _mm_unpacklo_epi16(b, b), _mm_unpackhi_epi16(b, b)};
                for (int k = 0; k < 4; ++k) {
                    if constexpr (F == 4) {
                        put(o + 16 * k, c[k]);
                    } else {
                        put(o + 32 * k, _mm_unpacklo_epi32(c[k], c[k]));
                        put(o + 32 * k + 16, _mm_unpackhi_epi32(c[k], c[k]));
                    }
                }
            }
        }
    };
    // a whole source line per iteration, its 4 loads first (more reads in flight: a loop
    // of single 16-byte steps read measurably slower, below the copy kernel itself)
    size_t i = 0;
    for (; i + 64 <= srcBytes; i += 64) {
        __m128i v[4];
        for (int k = 0; k < 4; ++k)
            v[k] = _mm_load_si128(reinterpret_cast<const __m128i*>(src + i + 16 * k));
        for (int k = 0; k < 4; ++k) widen(v[k], (i + 16 * k) * F);
    }
    for (; i + 16 <= srcBytes; i += 16)
        widen(_mm_load_si128(reinterpret_cast<const __m128i*>(src + i)), i * F);
    _mm_sfence();
#endif
}

#if defined(__x86_64__) || defined(__i386__)
// The same with 32-byte loads and streaming stores, on CPUs with AVX2 (the kernels' own width:
// with 16-byte operations the copy floor r2w2 read 5-8 % slower than the AVX2 copy kernel).
// Byte order within the output does not matter for a floor.
#define SLI_AVX2_FN __attribute__((target("avx2"))) inline
SLI_AVX2_FN void put256nt(uint8_t* p, __m256i x) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), x);
}

template <int F>
SLI_AVX2_FN void widen256(__m256i v, uint8_t* o) {
    if constexpr (F == 1) {
        put256nt(o, v);
    } else {
        const __m256i a = _mm256_unpacklo_epi8(v, v), b = _mm256_unpackhi_epi8(v, v);
        if constexpr (F == 2) {
            put256nt(o, a);
            put256nt(o + 32, b);
        } else {
            const __m256i c[4] = {_mm256_unpacklo_epi16(a, a), _mm256_unpackhi_epi16(a, a),
                                  _mm256_unpacklo_epi16(b, b), _mm256_unpackhi_epi16(b, b)};
            for (int k = 0; k < 4; ++k) {
                if constexpr (F == 4) {
                    put256nt(o + 32 * k, c[k]);
                } else {
                    put256nt(o + 64 * k, _mm256_unpacklo_epi32(c[k], c[k]));
                    put256nt(o + 64 * k + 32, _mm256_unpackhi_epi32(c[k], c[k]));
                }
            }
        }
    }
}

template <int F>
__attribute__((target("avx2"))) void moveWiden256(const uint8_t* src, size_t srcBytes,
                                                  uint8_t* out) {
    size_t i = 0;
    for (; i + 64 <= srcBytes; i += 64) {
        const __m256i v0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(src + i));
        const __m256i v1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(src + i + 32));
        widen256<F>(v0, out + i * F);
        widen256<F>(v1, out + (i + 32) * F);
    }
    _mm_sfence();
    if (i < srcBytes) moveWiden<F>(src + i, srcBytes - i, out + i * F);
}

bool haveAvx2() {
    static const bool yes = __builtin_cpu_supports("avx2");
    return yes;
}
#endif

void runFloor(const Floor& f, const uint8_t* src, uint8_t* out) {
#if defined(__x86_64__) || defined(__i386__)
    if (haveAvx2()) {
        switch (f.write * 2 / f.readTimes2) {
            case 1:
                moveWiden256<1>(src, f.srcBytes(), out);
                return;
            case 2:
                moveWiden256<2>(src, f.srcBytes(), out);
                return;
            case 4:
                moveWiden256<4>(src, f.srcBytes(), out);
                return;
            default:
                moveWiden256<8>(src, f.srcBytes(), out);
                return;
        }
    }
#endif
    switch (f.write * 2 / f.readTimes2) {
        case 1:
            moveWiden<1>(src, f.srcBytes(), out);
            break;
        case 2:
            moveWiden<2>(src, f.srcBytes(), out);
            break;
        case 4:
            moveWiden<4>(src, f.srcBytes(), out);
            break;
        default:
            moveWiden<8>(src, f.srcBytes(), out);
            break;
    }
}

struct FloorBuffers {
    AlignedBuffer src, out;
    explicit FloorBuffers(const Floor& f)
        : src(lineBuffer(f.srcBytes())), out(lineBuffer(f.outBytes())) {
        std::memset(src.data(), 0x5a, f.srcBytes());
    }
};

void bmFloor(benchmark::State& state, Floor f) {
    FloorBuffers b(f);
    for (auto _ : state) {
        runFloor(f, b.src.data(), b.out.data());
        benchmark::DoNotOptimize(b.out.data());
        benchmark::ClobberMemory();
    }
    setCounters(state, f.outBytes());
}

// The quantizers' floor: read the f32 source (4 bytes per value) and write what NF4 / FP4 at
// blocksize 64 write (a 4-bit code per value and a 4-byte absmax per 64 values: 0.5625 bytes per
// value; Q4_0 writes the same 18 bytes per 32 values), with ordinary stores as the quantizers
// use, no arithmetic. Each 64 values (4 cache lines) are XOR-folded to 32 payload bytes and one
// statistic, the source prefetched as far ahead as the quantizers prefetch theirs.
constexpr size_t kQuantizePrefetchAhead = 4096;

// kValueBytes: 4 (an f32 source) or 2 (bf16: the floor of the quantizers that read it directly).
#if defined(__x86_64__) || defined(__i386__)
template <int kValueBytes>
__attribute__((target("avx2"))) void quantizeFloorAvx2(const void* src, size_t n, uint8_t* payload,
                                                       float* stats) {
    constexpr int kLines = 64 * kValueBytes / 64, kLoads = 64 * kValueBytes / 32;
    const auto* bytes = static_cast<const char*>(src);
    for (size_t g = 0; g + 64 <= n; g += 64) {
        const char* at = bytes + g * kValueBytes;
        const auto* p = reinterpret_cast<const __m256i*>(at);
        for (int line = 0; line < kLines; ++line)
            _mm_prefetch(at + kQuantizePrefetchAhead + 64 * line, _MM_HINT_T0);
        __m256i v = _mm256_load_si256(p);
        for (int k = 1; k < kLoads; ++k) v = _mm256_xor_si256(v, _mm256_load_si256(p + k));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(payload + g / 2), v);
        stats[g / 64] = _mm256_cvtss_f32(_mm256_castsi256_ps(v));
    }
}
#endif

template <int kValueBytes = 4>
void quantizeFloor(const void* src, size_t n, uint8_t* payload, float* stats) {
#if defined(__x86_64__) || defined(__i386__)
    if (haveAvx2()) return quantizeFloorAvx2<kValueBytes>(src, n, payload, stats);
#endif
    const auto* bytes = static_cast<const uint8_t*>(src);
    for (size_t g = 0; g + 64 <= n; g += 64) {
        uint64_t w[4] = {};
        for (int k = 0; k < 8 * kValueBytes; ++k) {
            uint64_t x;
            std::memcpy(&x, bytes + g * kValueBytes + 8 * k, 8);
            w[k % 4] ^= x;
        }
        std::memcpy(payload + g / 2, w, 32);
        std::memcpy(stats + g / 64, w, 4);
    }
}

// Times kernel() against floor() in the same moments of the same run: every timed call is
// followed (timer paused) by one run of the floor on buffers of its own; counters
// floor_values/s and vs_floor (total floor time / total kernel time, so > 1 = faster than the
// floor) beside the usual ones.
// `base` names the counters: "floor" gives floor_values/s and vs_floor.
template <class Kernel, class FloorFn>
void timeAgainstFloor(benchmark::State& state, size_t outBytes, Kernel&& kernel, FloorFn&& floor,
                      const std::string& base = "floor") {
    using Clock = std::chrono::steady_clock;
    double kernelS = 0, floorS = 0;
    for (auto _ : state) {
        const auto t0 = Clock::now();
        kernel();
        benchmark::ClobberMemory();
        const auto t1 = Clock::now();
        state.PauseTiming();
        const auto f0 = Clock::now();
        floor();
        benchmark::ClobberMemory();
        const auto f1 = Clock::now();
        state.ResumeTiming();
        kernelS += std::chrono::duration<double>(t1 - t0).count();
        floorS += std::chrono::duration<double>(f1 - f0).count();
    }
    setCounters(state, outBytes);
    if (kernelS > 0 && floorS > 0) {
        state.counters[base + "_values/s"] = benchmark::Counter(
            static_cast<double>(kN) * static_cast<double>(state.iterations()) / floorS);
        state.counters["vs_" + base] = benchmark::Counter(floorS / kernelS);
    }
}

// The quantization kernel alone (the CpuKernels entry that kernels::quantize dispatches to),
// into preallocated outputs, against quantizeFloor: kernels::quantize also allocates and
// first-touches its parts on every call (page faults), which this leaves out. Kernel and floor
// each read a 64 MiB source of their own (the same kind of buffer), which the other's pass
// pushes out of the caches: this is the kernel reading from memory.
size_t quantizedBytes(QuantizationMode mode) {
    return mode == QuantizationMode::kInt4
               ? static_cast<size_t>(kN / 32) * sizeof(kernels::block_q4_0)
               : static_cast<size_t>(kN / 2 + kN / 64 * 4);
}

// One call of the kernel on `values` values of x, outputs at value offset `at`.
void runQuantizeKernel(const kernels::CpuKernels& k, QuantizationMode mode, const float* x,
                       int64_t values, int64_t at, uint8_t* payload, float* stats) {
    if (mode == QuantizationMode::kInt4) {
        k.quantizeQ4_0(x, values / 32, reinterpret_cast<kernels::block_q4_0*>(payload) + at / 32);
    } else {
        const auto cb =
            mode == QuantizationMode::kFp4 ? kernels::Codebook4::kFp4 : kernels::Codebook4::kNf4;
        k.quantize4bit(cb, x, values, 64, payload + at / 2, stats + at / 64);
    }
}

void bmQuantizeKernel(benchmark::State& state, QuantizationMode mode) {
    const kernels::CpuKernels& k = activeKernels();
    AlignedBuffer own = lineBuffer(static_cast<size_t>(kN) * 4);
    std::memcpy(own.data(), source().data(), static_cast<size_t>(kN) * 4);
    const float* x = own.as<float>();
    AlignedBuffer payload = lineBuffer(static_cast<size_t>(kN));  // >= any 4-bit payload
    AlignedBuffer stats = lineBuffer(static_cast<size_t>(kN / 64 * 4));
    // the floor's own source (a copy: the same bytes, other lines) and outputs
    AlignedBuffer floorSrc = lineBuffer(static_cast<size_t>(kN) * 4);
    std::memcpy(floorSrc.data(), x, static_cast<size_t>(kN) * 4);
    AlignedBuffer floorPayload = lineBuffer(static_cast<size_t>(kN / 2));
    AlignedBuffer floorStats = lineBuffer(static_cast<size_t>(kN / 64 * 4));
    timeAgainstFloor(
        state, quantizedBytes(mode),
        [&] {
            runQuantizeKernel(k, mode, x, kN, 0, payload.data(), stats.as<float>());
            benchmark::DoNotOptimize(payload.data());
        },
        [&] {
            quantizeFloor(floorSrc.as<float>(), static_cast<size_t>(kN), floorPayload.data(),
                          floorStats.as<float>());
            benchmark::DoNotOptimize(floorPayload.data());
        });
}

// The NF4 / FP4 kernel that reads a bf16 source directly (quantize4bitBf16, where the table has
// one; kernels::quantize from bf16 calls it without widening), from memory as
// bmQuantizeKernel, against the floor of a bf16 read: 2 bytes per value in, NF4's bytes out.
void bmQuantizeKernelBf16(benchmark::State& state, QuantizationMode mode) {
    const kernels::CpuKernels& k = activeKernels();
    if (k.quantize4bitBf16 == nullptr) {
        state.SkipWithError("no bf16 body in this table (kernels::quantize widens chunks first)");
        return;
    }
    const auto cb = mode == QuantizationMode::kFp4 ? kernels::Codebook4::kFp4 : kernels::Codebook4::kNf4;
    const size_t srcBytes = static_cast<size_t>(kN) * 2;
    AlignedBuffer own = lineBuffer(srcBytes), floorSrc = lineBuffer(srcBytes);
    for (int64_t i = 0; i < kN; ++i) own.as<uint16_t>()[i] = f32ToBf16(source()[static_cast<size_t>(i)]);
    std::memcpy(floorSrc.data(), own.data(), srcBytes);
    AlignedBuffer payload = lineBuffer(static_cast<size_t>(kN / 2));
    AlignedBuffer stats = lineBuffer(static_cast<size_t>(kN / 64 * 4));
    AlignedBuffer floorPayload = lineBuffer(static_cast<size_t>(kN / 2));
    AlignedBuffer floorStats = lineBuffer(static_cast<size_t>(kN / 64 * 4));
    timeAgainstFloor(
        state, quantizedBytes(mode),
        [&] {
            k.quantize4bitBf16(cb, own.as<uint16_t>(), kN, 64, payload.data(), stats.as<float>());
            benchmark::DoNotOptimize(payload.data());
        },
        [&] {
            quantizeFloor<2>(floorSrc.data(), static_cast<size_t>(kN), floorPayload.data(),
                             floorStats.as<float>());
            benchmark::DoNotOptimize(floorPayload.data());
        });
}

// The kernel as kernels::quantize's fused path runs it: each 16384-value chunk (64 KiB of f32)
// is widened from the checkpoint into a buffer that stays in L2, then quantized, so the kernel
// reads a cache-hot source and its own arithmetic decides its speed. Here one such chunk is
// quantized kN / 16384 times into consecutive outputs (no widening: that is the fused path's
// other half).
void bmQuantizeKernelHot(benchmark::State& state, QuantizationMode mode) {
    constexpr int64_t kChunk = 16384;
    const kernels::CpuKernels& k = activeKernels();
    AlignedBuffer chunk = lineBuffer(kChunk * 4);
    std::memcpy(chunk.data(), source().data(), kChunk * 4);
    AlignedBuffer payload = lineBuffer(static_cast<size_t>(kN));
    AlignedBuffer stats = lineBuffer(static_cast<size_t>(kN / 64 * 4));
    for (auto _ : state) {
        for (int64_t at = 0; at < kN; at += kChunk)
            runQuantizeKernel(k, mode, chunk.as<float>(), kChunk, at, payload.data(),
                              stats.as<float>());
        benchmark::DoNotOptimize(payload.data());
        benchmark::ClobberMemory();
    }
    setCounters(state, quantizedBytes(mode));
}

// Dequantization of one mode to one dtype, against the floor of its own (r, w).
void bmDequantize(benchmark::State& state, QuantizationMode mode, bool dq, DType dst, Floor floor,
                  bool fromBf16) {
    const QuantizedTensor& q = quantized(mode, dq, fromBf16);
    AlignedBuffer buf = lineBuffer(static_cast<size_t>(kN) * dtypeSize(dst));
    std::span<uint8_t> out = buf.bytes();
    FloorBuffers fb(floor);
    timeAgainstFloor(
        state, out.size(),
        [&] {
            if (!kernels::dequantize(q.view(), dst, out, 1).isOk())
                state.SkipWithError("dequantize failed");
            benchmark::DoNotOptimize(out.data());
        },
        [&] { runFloor(floor, fb.src.data(), fb.out.data()); });
}

// Dequantization where memory does not decide: a 64 x 1024 tensor (a source of 128 KiB at
// most, none's bf16; 256 KiB of f32 out) dequantized kN / 65536 times per iteration, source
// and output staying in L2 (outputs this small take plain stores), timed against NF4 to the
// same dtype in the same moments: vs_nf4 > 1 = faster per value than NF4. From memory every
// mode is bound by the floor of its own (r, w), which reading more bytes per value than NF4
// lowers; this shows what the kernels themselves cost per value.
const QuantizedTensor& quantizedHot(QuantizationMode mode, bool dq) {
    static std::map<std::pair<int, bool>, std::unique_ptr<QuantizedTensor>> cache;
    auto& slot = cache[{static_cast<int>(mode), dq}];
    if (!slot) {
        constexpr int64_t kHotRows = 64, kHotCols = 1024;
        slot = std::make_unique<QuantizedTensor>();
        slot->info = infoFor(mode, dq);
        slot->info.shape = {kHotRows, kHotCols};
        const std::vector<float> x(source().begin(), source().begin() + kHotRows * kHotCols);
        if (!kernels::quantize(x, *slot).isOk()) std::abort();
    }
    return *slot;
}

void bmDequantizeHot(benchmark::State& state, QuantizationMode mode, bool dq, DType dst) {
    const QuantizedTensor& q = quantizedHot(mode, dq);
    const QuantizedTensor& nf4 = quantizedHot(QuantizationMode::kNf4, false);
    const int64_t n = q.info.numel(), reps = kN / n;
    AlignedBuffer buf = lineBuffer(static_cast<size_t>(n) * dtypeSize(dst));
    AlignedBuffer nf4Buf = lineBuffer(static_cast<size_t>(n) * dtypeSize(dst));
    const auto run = [&state, dst, reps](const QuantizedTensor& t, AlignedBuffer& b) {
        for (int64_t r = 0; r < reps; ++r) {
            if (!kernels::dequantize(t.view(), dst, b.bytes(), 1).isOk())
                state.SkipWithError("dequantize failed");
        }
        benchmark::DoNotOptimize(b.data());
    };
    timeAgainstFloor(
        state, static_cast<size_t>(kN) * dtypeSize(dst), [&] { run(q, buf); },
        [&] { run(nf4, nf4Buf); }, "nf4");
}

void registerAll() {
    struct Mode {
        QuantizationMode mode;
        bool dq;
        const char* name;
    };
    const Mode modes[] = {{QuantizationMode::kNf4, false, "nf4"},        {QuantizationMode::kNf4, true, "nf4_dq"},
                          {QuantizationMode::kFp4, false, "fp4"},        {QuantizationMode::kInt4, false, "int4"},
                          {QuantizationMode::kInt8, false, "int8"},      {QuantizationMode::kInt8Dynamic, false, "int8_dynamic"},
                          {QuantizationMode::kNone, false, "none_bf16"}};
    const std::pair<DType, const char*> outs[] = {{DType::kF16, "f16"}, {DType::kBF16, "bf16"}, {DType::kF32, "f32"}};
    const std::string isa = kernels::activeIsa();
    // Reference bandwidth for each dequant output size (2 and 4 bytes per value).
    for (size_t esz : {size_t{2}, size_t{4}}) {
        const size_t bytes = static_cast<size_t>(kN) * esz;
        const std::string sz = std::to_string(bytes >> 20) + "MiB";
        benchmark::RegisterBenchmark(("memcpy/" + sz).c_str(), bmMemcpy, bytes)->UseRealTime();
        benchmark::RegisterBenchmark(("memset/" + sz).c_str(), bmMemset, bytes)->UseRealTime();
#if defined(__SSE2__)
        benchmark::RegisterBenchmark(("streamfill/" + sz).c_str(), bmStreamFill, bytes)->UseRealTime();
#endif
    }
    // Source bytes per value x 2 of each mode (4-bit: 1 = half a byte; the block statistics,
    // 1/16 byte per value or less, are left out).
    const auto readTimes2 = [](QuantizationMode m) {
        if (m == QuantizationMode::kNone) return 4;  // bf16
        if (m == QuantizationMode::kInt8 || m == QuantizationMode::kInt8Dynamic) return 2;
        return 1;
    };
    for (int r2 : {1, 2, 4}) {
        for (int w : {2, 4}) {
            const Floor f{r2, w};
            benchmark::RegisterBenchmark(f.name().c_str(), bmFloor, f)->UseRealTime();
        }
    }
    for (const Mode& m : modes) {
        for (auto [t, tn] : outs) {
            const Floor f{readTimes2(m.mode), static_cast<int>(dtypeSize(t))};
            benchmark::RegisterBenchmark(
                ("dequantize/" + std::string(m.name) + "->" + tn + "/" + isa).c_str(), bmDequantize,
                m.mode, m.dq, t, f, false)
                ->UseRealTime();
        }
    }
    for (const Mode& m : modes) {
        for (auto [t, tn] : outs) {
            benchmark::RegisterBenchmark(
                ("dequantize_hot/" + std::string(m.name) + "->" + tn + "/" + isa).c_str(),
                bmDequantizeHot, m.mode, m.dq, t)
                ->UseRealTime();
        }
    }
    // LLM.int8 of a bf16 checkpoint (the common case): row scales with few significant bits.
    for (auto [t, tn] : outs) {
        const Floor f{readTimes2(QuantizationMode::kInt8), static_cast<int>(dtypeSize(t))};
        benchmark::RegisterBenchmark(("dequantize/int8_bf16src->" + std::string(tn) + "/" + isa).c_str(),
                                     bmDequantize, QuantizationMode::kInt8, false, t, f, true)
            ->UseRealTime();
    }
    for (const Mode& m : modes) {
        const QuantizedTensor& q = quantized(m.mode, m.dq);
        const size_t bytes = q.storedBytes();
        const std::string sz = std::to_string(bytes >> 10) + "KiB";
        benchmark::RegisterBenchmark(("memcpy/" + sz).c_str(), bmMemcpy, bytes)->UseRealTime();
        benchmark::RegisterBenchmark(("memset/" + sz).c_str(), bmMemset, bytes)->UseRealTime();
        benchmark::RegisterBenchmark(("quantize/" + std::string(m.name) + "/" + isa).c_str(), bmQuantize, m.mode, m.dq)
            ->UseRealTime();
        benchmark::RegisterBenchmark(("quantize_bf16src/" + std::string(m.name) + "/" + isa).c_str(),
                                     bmQuantizeFromBf16, m.mode, m.dq)
            ->UseRealTime();
    }
    for (const Mode& m : modes) {
        if (m.dq || !(modeIs4bit(m.mode) || m.mode == QuantizationMode::kInt4)) continue;
        benchmark::RegisterBenchmark(("quantize_kernel/" + std::string(m.name) + "/" + isa).c_str(),
                                     bmQuantizeKernel, m.mode)->UseRealTime();
        benchmark::RegisterBenchmark(("quantize_kernel_hot/" + std::string(m.name) + "/" + isa).c_str(),
                                     bmQuantizeKernelHot, m.mode)->UseRealTime();
        if (m.mode != QuantizationMode::kInt4) {
            benchmark::RegisterBenchmark(("quantize_kernel_bf16/" + std::string(m.name) + "/" + isa).c_str(),
                                         bmQuantizeKernelBf16, m.mode)->UseRealTime();
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    registerAll();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}

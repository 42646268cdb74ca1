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

#include <cstring>
#include <map>
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

const QuantizedTensor& quantized(QuantizationMode mode, bool dq) {
    static std::map<std::pair<int, bool>, std::unique_ptr<QuantizedTensor>> cache;
    auto& slot = cache[{static_cast<int>(mode), dq}];
    if (!slot) {
        slot = std::make_unique<QuantizedTensor>();
        slot->info = infoFor(mode, dq);
        if (!kernels::quantize(source(), *slot).isOk()) std::abort();
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

void bmDequantize(benchmark::State& state, QuantizationMode mode, bool dq, DType dst) {
    const QuantizedTensor& q = quantized(mode, dq);
    AlignedBuffer buf = lineBuffer(static_cast<size_t>(kN) * dtypeSize(dst));
    std::span<uint8_t> out = buf.bytes();
    for (auto _ : state) {
        if (!kernels::dequantize(q.view(), dst, out, 1).isOk()) state.SkipWithError("dequantize failed");
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    setCounters(state, out.size());
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

// The quantization kernel alone (the CpuKernels entry that kernels::quantize dispatches to),
// into preallocated outputs: kernels::quantize also allocates and first-touches its parts on
// every call (page faults), which this leaves out.
const kernels::CpuKernels& activeKernels() {
    const std::string isa = kernels::activeIsa();
    if (isa == "avx512" && kernels::avx512Kernels()) return *kernels::avx512Kernels();
    if (isa == "avx2" && kernels::avx2Kernels()) return *kernels::avx2Kernels();
    return kernels::referenceKernels();
}

void bmQuantizeKernel(benchmark::State& state, QuantizationMode mode) {
    const kernels::CpuKernels& k = activeKernels();
    const float* x = source().data();
    AlignedBuffer payload = lineBuffer(static_cast<size_t>(kN));  // >= any 4-bit payload
    AlignedBuffer stats = lineBuffer(static_cast<size_t>(kN / 64 * 4));
    size_t outBytes = 0;
    for (auto _ : state) {
        if (mode == QuantizationMode::kInt4) {
            k.quantizeQ4_0(x, kN / 32, payload.as<kernels::block_q4_0>());
            outBytes = static_cast<size_t>(kN / 32) * sizeof(kernels::block_q4_0);
        } else {
            const auto cb = mode == QuantizationMode::kFp4 ? kernels::Codebook4::kFp4 : kernels::Codebook4::kNf4;
            k.quantize4bit(cb, x, kN, 64, payload.data(), stats.as<float>());
            outBytes = static_cast<size_t>(kN / 2 + kN / 64 * 4);
        }
        benchmark::DoNotOptimize(payload.data());
        benchmark::ClobberMemory();
    }
    setCounters(state, outBytes);
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
    for (const Mode& m : modes) {
        for (auto [t, tn] : outs) {
            benchmark::RegisterBenchmark(("dequantize/" + std::string(m.name) + "->" + tn + "/" + isa).c_str(),
                                         bmDequantize, m.mode, m.dq, t)->UseRealTime();
        }
    }
    for (const Mode& m : modes) {
        const QuantizedTensor& q = quantized(m.mode, m.dq);
        const size_t bytes = q.storedBytes();
        const std::string sz = std::to_string(bytes >> 10) + "KiB";
        benchmark::RegisterBenchmark(("memcpy/" + sz).c_str(), bmMemcpy, bytes)->UseRealTime();
        benchmark::RegisterBenchmark(("memset/" + sz).c_str(), bmMemset, bytes)->UseRealTime();
        benchmark::RegisterBenchmark(("quantize/" + std::string(m.name) + "/" + isa).c_str(), bmQuantize, m.mode, m.dq)
            ->UseRealTime();
    }
    for (const Mode& m : modes) {
        if (m.dq || !(modeIs4bit(m.mode) || m.mode == QuantizationMode::kInt4)) continue;
        benchmark::RegisterBenchmark(("quantize_kernel/" + std::string(m.name) + "/" + isa).c_str(),
                                     bmQuantizeKernel, m.mode)->UseRealTime();
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

// cuda_bench: the GPU path's physical-limit ratios, measured in one run on one device.
//
//   h2d        bytes/s of the pipeline's H2D copies vs a plain cudaMemcpyAsync from the same
//              registered (pinned) host memory                          target >= 0.90
//   dequant    NF4 -> f16 kernel (bytes read + written)/s vs a device-to-device cudaMemcpy
//              (2 x bytes)/s; plus NF4 double-quant, INT8, Q4_0 for information
//                                                                        target >= 0.75
//   pipeline   GpuLayerPipeline wall time over L layers (copy -> dequant -> executor reading
//              the outputs on its own stream) vs the slowest stage's total  target <= 1.10
//
// Prints one line per measurement and writes JSON to --json PATH. Flags: --layers N (16),
// --mib M (quantized MiB per layer, 64), --slots S (3), --reps R (10), --json PATH.
// All timings are CUDA events; nothing here is a timed test.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/gpu/gpu_runtime.h"
#include "engine/gpu/layer_pipeline.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/quant_rules.h"
#include "sli/cuda.h"

namespace {

#define CK(x)                                                                                   \
    do {                                                                                        \
        cudaError_t e_ = (x);                                                                   \
        if (e_ != cudaSuccess) {                                                                \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            std::exit(1);                                                                       \
        }                                                                                       \
    } while (0)

template <typename T>
T ok(sli::Result<T> r, const char* what) {
    if (!r.isOk()) {
        std::fprintf(stderr, "%s: %s\n", what, r.status().toString().c_str());
        std::exit(1);
    }
    return std::move(*r);
}
void ok(const sli::Status& s, const char* what) {
    if (!s.isOk()) {
        std::fprintf(stderr, "%s: %s\n", what, s.toString().c_str());
        std::exit(1);
    }
}

struct Timer {
    cudaEvent_t a, b;
    Timer() {
        CK(cudaEventCreate(&a));
        CK(cudaEventCreate(&b));
    }
    ~Timer() {
        cudaEventDestroy(a);
        cudaEventDestroy(b);
    }
    void start(cudaStream_t s) { CK(cudaEventRecord(a, s)); }
    float stopMs(cudaStream_t s) {
        CK(cudaEventRecord(b, s));
        CK(cudaEventSynchronize(b));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, a, b));
        return ms;
    }
};

// Stand-in executor: reads every byte of the outputs (a memory-bound reduction).
__global__ void readAll(const uint4* p, size_t n16, unsigned long long* sink) {
    unsigned long long s = 0;
    for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n16; i += gridDim.x * blockDim.x) {
        const uint4 v = p[i];
        s += v.x ^ v.y ^ v.z ^ v.w;
    }
    if (s == 0x123456789ull) *sink = s;  // practically never: keeps the loads alive
}

struct Json {
    std::string body;
    void add(const std::string& k, double v) {
        char buf[128];
        std::snprintf(buf, sizeof buf, "%s\"%s\": %.6g", body.empty() ? "" : ", ", k.c_str(), v);
        body += buf;
    }
};

// A random NF4 tensor description laid out in `region`: payload, absmax (finite) and the
// stored quant_map (the NF4 codebook), each part starting on a 4 KiB boundary.
struct Nf4Layer {
    sli::QuantizedTensorInfo info;
    size_t payloadBytes = 0, absmaxBytes = 0, qmapBytes = 0, bytes = 0;
    size_t absmaxAt() const { return (payloadBytes + 4095) / 4096 * 4096; }
    size_t qmapAt() const { return absmaxAt() + (absmaxBytes + 4095) / 4096 * 4096; }
};

Nf4Layer makeNf4Info(int64_t n, bool doubleQuant) {
    Nf4Layer l;
    l.info.name = "bench.weight";
    l.info.shape = {n / 4096, 4096};
    l.info.mode = sli::QuantizationMode::kNf4;
    l.info.storedDType = sli::DType::kU8;
    l.info.blocksize = 64;
    l.info.doubleQuant = doubleQuant;
    l.info.nestedBlocksize = doubleQuant ? 256 : 0;
    l.payloadBytes = l.info.expectedPartBytes(sli::QuantPart::kPayload);
    l.absmaxBytes = l.info.expectedPartBytes(sli::QuantPart::kAbsmax);
    l.qmapBytes = l.info.expectedPartBytes(sli::QuantPart::kQuantMap);
    l.bytes = l.qmapAt() + (l.qmapBytes + 4095) / 4096 * 4096;
    return l;
}

void fillNf4(uint8_t* region, const Nf4Layer& l, uint64_t seed) {
    std::mt19937_64 rng(seed);
    auto* p64 = reinterpret_cast<uint64_t*>(region);
    for (size_t i = 0; i < l.payloadBytes / 8; ++i) p64[i] = rng();
    float* am = reinterpret_cast<float*>(region + l.absmaxAt());
    for (size_t i = 0; i < l.absmaxBytes / 4; ++i) am[i] = 0.01f + static_cast<float>(i % 97) * 1e-3f;
    float* qm = reinterpret_cast<float*>(region + l.qmapAt());
    for (unsigned i = 0; i < l.qmapBytes / 4; ++i) qm[i] = sli::kernels::rules::nf4Value(i);
}

sli::QuantizedTensorView viewOf(const Nf4Layer& l, const uint8_t* base) {
    sli::QuantizedTensorView v;
    v.info = &l.info;
    v.parts[static_cast<int>(sli::QuantPart::kPayload)] = {base, l.payloadBytes};
    v.parts[static_cast<int>(sli::QuantPart::kAbsmax)] = {base + l.absmaxAt(), l.absmaxBytes};
    v.parts[static_cast<int>(sli::QuantPart::kQuantMap)] = {base + l.qmapAt(), l.qmapBytes};
    return v;
}

}  // namespace

int main(int argc, char** argv) {
    int layers = 16, mib = 64, slots = 3, reps = 10;
    std::string jsonPath;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
        if (a == "--layers") layers = std::atoi(next().c_str());
        else if (a == "--mib") mib = std::atoi(next().c_str());
        else if (a == "--slots") slots = std::atoi(next().c_str());
        else if (a == "--reps") reps = std::atoi(next().c_str());
        else if (a == "--json") jsonPath = next();
        else {
            std::fprintf(stderr, "usage: cuda_bench [--layers N] [--mib M] [--slots S] [--reps R] [--json PATH]\n");
            return 2;
        }
    }
    if (sli::cuda::deviceCount() == 0) {
        std::fprintf(stderr, "cuda_bench: no CUDA device\n");
        return 77;
    }
    CK(cudaSetDevice(0));
    const std::string dev = sli::cuda::deviceDescription(0);
    std::printf("device            %s\n", dev.c_str());
    Json js;

    // ---- sizes: one layer = one NF4 tensor of n elements (mib MiB of packed codes) --------
    const int64_t n = static_cast<int64_t>(mib) * 2 * 1024 * 1024;
    Nf4Layer layer = makeNf4Info(n, false);
    const size_t outBytes = static_cast<size_t>(n) * 2;  // f16

    // Pinned host regions, registered once (as the engine registers its pool's slabs).
    const size_t regionBytes = layer.bytes;
    std::vector<uint8_t*> regions;
    std::vector<sli::gpu::HostRegistration> regs;
    for (int s = 0; s < slots; ++s) {
        auto* r = static_cast<uint8_t*>(std::aligned_alloc(4096, regionBytes));
        fillNf4(r, layer, static_cast<uint64_t>(s) + 1);
        regs.push_back(ok(sli::gpu::HostRegistration::registerRange(r, regionBytes), "register"));
        regions.push_back(r);
    }
    cudaStream_t s0;
    CK(cudaStreamCreateWithFlags(&s0, cudaStreamNonBlocking));
    Timer t;

    // ---- 1. plain H2D from pinned memory ---------------------------------------------------
    void* dStage = nullptr;
    CK(cudaMalloc(&dStage, regionBytes));
    CK(cudaMemcpyAsync(dStage, regions[0], regionBytes, cudaMemcpyHostToDevice, s0));  // warm
    t.start(s0);
    for (int r = 0; r < reps; ++r) {
        CK(cudaMemcpyAsync(dStage, regions[static_cast<size_t>(r % slots)], regionBytes,
                           cudaMemcpyHostToDevice, s0));
    }
    const double plainMs = t.stopMs(s0);
    const double plainGBps = static_cast<double>(regionBytes) * reps / (plainMs * 1e6);
    std::printf("h2d_plain         %.2f GB/s (%d x %.1f MiB)\n", plainGBps, reps, regionBytes / 1048576.0);
    js.add("h2d_plain_GBps", plainGBps);

    // ---- 2. dequant kernels vs D2D memcpy ----------------------------------------------------
    void* dOut = nullptr;
    CK(cudaMalloc(&dOut, outBytes));
    CK(cudaMemcpy(dStage, regions[0], regionBytes, cudaMemcpyHostToDevice));
    {
        const size_t copyBytes = outBytes / 2;
        CK(cudaMemcpyAsync(dOut, static_cast<uint8_t*>(dOut) + copyBytes, copyBytes, cudaMemcpyDeviceToDevice, s0));
        t.start(s0);
        for (int r = 0; r < reps; ++r) {
            CK(cudaMemcpyAsync(dOut, static_cast<uint8_t*>(dOut) + copyBytes, copyBytes,
                               cudaMemcpyDeviceToDevice, s0));
        }
        const double ms = t.stopMs(s0);
        const double d2dGBps = 2.0 * copyBytes * reps / (ms * 1e6);
        std::printf("d2d_memcpy        %.1f GB/s (read + write)\n", d2dGBps);
        js.add("d2d_memcpy_GBps", d2dGBps);

        const auto v = viewOf(layer, static_cast<const uint8_t*>(dStage));
        ok(sli::cuda::dequantize(v, sli::DType::kF16, dOut, outBytes, s0), "dequant warmup");
        t.start(s0);
        for (int r = 0; r < reps; ++r) ok(sli::cuda::dequantize(v, sli::DType::kF16, dOut, outBytes, s0), "dequant");
        const double kms = t.stopMs(s0);
        const double moved = static_cast<double>(layer.payloadBytes + layer.absmaxBytes + outBytes);
        const double kGBps = moved * reps / (kms * 1e6);
        std::printf("dequant_nf4_f16   %.1f GB/s  ratio_vs_d2d %.3f (target >= 0.75)\n", kGBps, kGBps / d2dGBps);
        js.add("dequant_nf4_f16_GBps", kGBps);
        js.add("dequant_nf4_f16_ratio_vs_d2d", kGBps / d2dGBps);

        // Other modes, for information: NF4 double quant, INT8, Q4_0 (random parts, finite scales).
        struct Other {
            const char* name;
            sli::QuantizationMode mode;
            bool dq;
        } others[] = {{"dequant_nf4dq_f16", sli::QuantizationMode::kNf4, true},
                      {"dequant_int8_f16", sli::QuantizationMode::kInt8, false},
                      {"dequant_q4_0_f16", sli::QuantizationMode::kInt4, false}};
        for (const auto& o : others) {
            sli::QuantizedTensorInfo info;
            info.name = o.name;
            info.shape = {n / 4096 / (o.mode == sli::QuantizationMode::kInt8 ? 2 : 1), 4096};
            info.mode = o.mode;
            info.storedDType = o.mode == sli::QuantizationMode::kInt8 ? sli::DType::kI8 : sli::DType::kU8;
            info.blocksize = o.mode == sli::QuantizationMode::kNf4 ? 64 : (o.mode == sli::QuantizationMode::kInt4 ? 32 : 0);
            info.doubleQuant = o.dq;
            info.nestedBlocksize = o.dq ? 256 : 0;
            sli::QuantizedTensorView ov;
            ov.info = &info;
            std::vector<void*> bufs;
            size_t moved2 = sli::cuda::dequantizedBytes(info, sli::DType::kF16);
            for (int p = 0; p < sli::kQuantPartCount; ++p) {
                const size_t b = info.expectedPartBytes(static_cast<sli::QuantPart>(p));
                if (b == 0) continue;
                void* d = nullptr;
                CK(cudaMalloc(&d, b));
                CK(cudaMemset(d, p == 0 ? 0x37 : 0x3c, b));  // 0x3c3c3c3c is a finite float
                bufs.push_back(d);
                ov.parts[static_cast<size_t>(p)] = {static_cast<const uint8_t*>(d), b};
                moved2 += b;
            }
            const size_t ob = sli::cuda::dequantizedBytes(info, sli::DType::kF16);
            ok(sli::cuda::dequantize(ov, sli::DType::kF16, dOut, ob, s0), o.name);
            t.start(s0);
            for (int r = 0; r < reps; ++r) ok(sli::cuda::dequantize(ov, sli::DType::kF16, dOut, ob, s0), o.name);
            const double oms = t.stopMs(s0);
            const double g = static_cast<double>(moved2) * reps / (oms * 1e6);
            std::printf("%-17s %.1f GB/s  ratio_vs_d2d %.3f\n", o.name, g, g / d2dGBps);
            js.add(std::string(o.name) + "_GBps", g);
            js.add(std::string(o.name) + "_ratio_vs_d2d", g / d2dGBps);
            for (void* d : bufs) cudaFree(d);
        }
    }
    CK(cudaFree(dOut));
    CK(cudaFree(dStage));

    // ---- 3. the pipeline: copy -> dequant -> executor, L layers --------------------------------
    {
        sli::gpu::GpuPipelineOptions opt;
        opt.slots = slots;
        opt.stagingBytes = regionBytes;
        opt.outputBytes = outBytes;
        opt.timing = true;
        auto pipe = ok(sli::gpu::GpuLayerPipeline::create(opt), "pipeline");
        cudaStream_t exec;
        CK(cudaStreamCreateWithFlags(&exec, cudaStreamNonBlocking));
        unsigned long long* sink = nullptr;
        CK(cudaMalloc(&sink, 8));
        cudaEvent_t wallStart, wallEnd;
        CK(cudaEventCreate(&wallStart));
        CK(cudaEventCreate(&wallEnd));
        std::vector<cudaEvent_t> execStart(static_cast<size_t>(layers)), execEnd(static_cast<size_t>(layers));
        for (int i = 0; i < layers; ++i) {
            CK(cudaEventCreate(&execStart[static_cast<size_t>(i)]));
            CK(cudaEventCreate(&execEnd[static_cast<size_t>(i)]));
        }
        double copyMs = 0, dequantMs = 0, execMs = 0;
        std::vector<int> slotOfLayer(static_cast<size_t>(layers));
        std::vector<bool> used(static_cast<size_t>(slots), false);
        CK(cudaEventRecord(wallStart, static_cast<cudaStream_t>(pipe->copyStream())));
        for (int i = 0; i < layers; ++i) {
            int slot = -1;
            for (;;) {  // the executor holds every slot: wait for the oldest release to land
                auto r = pipe->reserve();
                if (r.isOk()) {
                    slot = *r;
                    break;
                }
                CK(cudaStreamSynchronize(exec));
            }
            // Before this slot's stage times are overwritten, collect the previous use's.
            if (used[static_cast<size_t>(slot)]) {
                auto st = ok(pipe->stageTimes(slot), "stageTimes");
                copyMs += st.copyMs;
                dequantMs += st.dequantMs;
                ok(pipe->waitCopied(slot), "waitCopied");  // the pinned region is reused below
            }
            used[static_cast<size_t>(slot)] = true;
            const auto v = viewOf(layer, regions[static_cast<size_t>(slot)]);
            auto outs = ok(pipe->submit(slot, {regions[static_cast<size_t>(slot)], regionBytes}, {&v, 1},
                                        sli::DType::kF16), "submit");
            ok(pipe->acquire(slot, exec), "acquire");
            CK(cudaEventRecord(execStart[static_cast<size_t>(i)], exec));
            readAll<<<1024, 256, 0, exec>>>(static_cast<const uint4*>(outs[0].data), outs[0].bytes / 16, sink);
            CK(cudaEventRecord(execEnd[static_cast<size_t>(i)], exec));
            ok(pipe->release(slot, exec), "release");
            slotOfLayer[static_cast<size_t>(i)] = slot;
        }
        CK(cudaEventRecord(wallEnd, exec));
        CK(cudaEventSynchronize(wallEnd));
        for (int s = 0; s < slots; ++s) {
            if (!used[static_cast<size_t>(s)]) continue;
            auto st = ok(pipe->stageTimes(s), "stageTimes");
            copyMs += st.copyMs;
            dequantMs += st.dequantMs;
        }
        for (int i = 0; i < layers; ++i) {
            float ms = 0;
            CK(cudaEventElapsedTime(&ms, execStart[static_cast<size_t>(i)], execEnd[static_cast<size_t>(i)]));
            execMs += ms;
        }
        float wallMs = 0;
        CK(cudaEventElapsedTime(&wallMs, wallStart, wallEnd));
        const double slowest = std::max({copyMs, dequantMs, execMs});
        const double pipeCopyGBps = static_cast<double>(regionBytes) * layers / (copyMs * 1e6);
        std::printf("h2d_pipeline      %.2f GB/s  ratio_vs_plain %.3f (target >= 0.90)\n", pipeCopyGBps,
                    pipeCopyGBps / plainGBps);
        std::printf("pipeline          wall %.2f ms; stages copy %.2f, dequant %.2f, executor %.2f ms; "
                    "wall/slowest %.3f (target <= 1.10)\n",
                    wallMs, copyMs, dequantMs, execMs, wallMs / slowest);
        js.add("h2d_pipeline_GBps", pipeCopyGBps);
        js.add("h2d_pipeline_ratio_vs_plain", pipeCopyGBps / plainGBps);
        js.add("pipeline_wall_ms", wallMs);
        js.add("pipeline_copy_ms", copyMs);
        js.add("pipeline_dequant_ms", dequantMs);
        js.add("pipeline_executor_ms", execMs);
        js.add("pipeline_wall_over_slowest", wallMs / slowest);
        for (int i = 0; i < layers; ++i) {
            cudaEventDestroy(execStart[static_cast<size_t>(i)]);
            cudaEventDestroy(execEnd[static_cast<size_t>(i)]);
        }
        cudaEventDestroy(wallStart);
        cudaEventDestroy(wallEnd);
        cudaFree(sink);
        pipe.reset();
        cudaStreamDestroy(exec);
    }
    regs.clear();
    for (auto* r : regions) std::free(r);
    cudaStreamDestroy(s0);
    if (!jsonPath.empty()) {
        FILE* f = std::fopen(jsonPath.c_str(), "w");
        if (f) {
            std::fprintf(f, "{\"device\": \"%s\", \"layers\": %d, \"mib_per_layer\": %d, \"slots\": %d, %s}\n",
                         dev.c_str(), layers, mib, slots, js.body.c_str());
            std::fclose(f);
        }
    }
    return 0;
}

// See slibench_stream.h.
#include "slibench_stream.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>

#include "io/aligned_io.h"
#include "io/cache_format.h"
#include "sli/config.h"
#include "sli/engine.h"
#include "sli/kernels.h"

namespace sli::bench {

namespace {

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Total length of the union of [begin, end) intervals (ns), in seconds.
double unionSeconds(std::vector<std::pair<int64_t, int64_t>> v) {
    std::sort(v.begin(), v.end());
    int64_t total = 0, curB = 0, curE = 0;
    bool open = false;
    for (auto [b, e] : v) {
        if (e <= b) continue;
        if (!open || b > curE) {
            if (open) total += curE - curB;
            curB = b;
            curE = e;
            open = true;
        } else {
            curE = std::max(curE, e);
        }
    }
    if (open) total += curE - curB;
    return static_cast<double>(total) / 1e9;
}

// Portable SIMD through GCC/Clang vector extensions (SSE2 on baseline x86-64, NEON on arm64):
// no ISA flags, so the release build stays generic.
typedef float V4f __attribute__((vector_size(16)));
typedef uint32_t V4u __attribute__((vector_size(16)));
typedef uint16_t V4h __attribute__((vector_size(8)));

inline V4f load4(const float* p) {
    V4f v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

float dot(const float* a, const float* b, int64_t n) {
    V4f acc0 = {0, 0, 0, 0}, acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 += load4(a + i) * load4(b + i);
        acc1 += load4(a + i + 4) * load4(b + i + 4);
        acc2 += load4(a + i + 8) * load4(b + i + 8);
        acc3 += load4(a + i + 12) * load4(b + i + 12);
    }
    const V4f acc = (acc0 + acc1) + (acc2 + acc3);
    float s = acc[0] + acc[1] + acc[2] + acc[3];
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

// bf16 -> f32 is a 16-bit shift.
void widenBf16(const uint8_t* src, int64_t n, float* dst) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        V4h h;
        std::memcpy(&h, src + 2 * i, sizeof h);
        const V4u u = __builtin_convertvector(h, V4u) << 16;
        std::memcpy(dst + i, &u, sizeof u);
    }
    for (; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = bf16ToF32(h);
    }
}

Status widenRow(DType dt, const uint8_t* src, int64_t n, float* dst) {
    if (dt == DType::kBF16) {
        widenBf16(src, n, dst);
        return Status();
    }
    if (dt == DType::kF32) {
        std::memcpy(dst, src, static_cast<size_t>(n) * 4);
        return Status();
    }
    return convertToF32(dt, src, n, dst);
}

struct FreeDeleter {
    void operator()(void* p) const { std::free(p); }
};

uint64_t statusField(const char* key) {
    std::ifstream f("/proc/self/status");
    std::string line;
    const size_t klen = std::strlen(key);
    while (std::getline(f, line)) {
        if (line.compare(0, klen, key) == 0) {
            return std::strtoull(line.c_str() + klen + 1, nullptr, 10) * 1024;  // "kB"
        }
    }
    return 0;
}

}  // namespace

double StageTimes::slowest() const { return std::max({read, dequant, h2d, execute}); }

Status Executor::run(const Layer& layer) {
    if (batch_ <= 0) return Status();  // a no-op consumer: acquire and release only
    for (int p = 0; p < passes_; ++p) {
        for (const Tensor& t : layer) {
            if (!dtypeIsFloat(t.dtype())) continue;  // integer buffers (position ids, masks)
            if (t.shape().size() != 2) {
                const int64_t n = t.numel();
                row_.resize(static_cast<size_t>(n));
                SLI_RETURN_IF_ERROR(convertToF32(t.dtype(), t.data(), n, row_.data()));
                double s = 0;
                for (float v : row_) s += v;
                checksum_ += s * 1e-6;
                continue;
            }
            const int64_t out = t.shape()[0], in = t.shape()[1];
            const size_t need = static_cast<size_t>(batch_ * in);
            if (x_.size() < need) {
                x_.resize(need);
                for (size_t i = 0; i < need; ++i) x_[i] = 0.01f * static_cast<float>(int(i % 7) - 3);
            }
            y_.assign(static_cast<size_t>(batch_), 0.0f);
            row_.resize(static_cast<size_t>(in));
            const size_t rowBytes = static_cast<size_t>(in) * dtypeSize(t.dtype());
            for (int64_t o = 0; o < out; ++o) {
                SLI_RETURN_IF_ERROR(widenRow(t.dtype(), t.data() + o * rowBytes, in, row_.data()));
                for (int b = 0; b < batch_; ++b) {
                    y_[static_cast<size_t>(b)] += dot(row_.data(), x_.data() + b * in, in);
                }
            }
            for (float v : y_) checksum_ += v;
            macs_ += static_cast<uint64_t>(out * in) * static_cast<uint64_t>(batch_);
        }
    }
    return Status();
}

Result<StreamResult> streamEngine(const StreamOptions& o) {
    if (o.cold) dropPageCache();
    EngineOptions eo;
    eo.cacheDir = o.cacheDir;
    eo.device = o.device;
    eo.prefetchDepth = o.depth;
    eo.hostBudgetBytes = o.budgetBytes;
    eo.ioBackend = o.backend;
    eo.chunkBytes = o.chunkBytes;
    eo.queueDepth = o.queueDepth;
    eo.workerThreads = o.threads;
    eo.verifyChecksums = o.verify;
    eo.directIo = o.cold;
    eo.recordTrace = true;
    const auto t0 = Clock::now();
    SLI_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::open(eo));
    StreamResult r;
    r.openSeconds = secondsSince(t0);
    Executor exec(o.batch, o.passes);
    const int64_t n = engine->numLayers();
    for (int64_t i = 0; i < n; ++i) {
        SLI_ASSIGN_OR_RETURN(Lease lease, engine->acquire(i));
        SLI_RETURN_IF_ERROR(exec.run(lease.tensors()));
        lease.release();
        if (o.progress) o.progress(i + 1, n);
    }
    const EngineStats st = engine->stats();
    const std::vector<LayerTiming> tl = engine->timings();
    std::vector<std::pair<int64_t, int64_t>> rd, dq, ex, h2d;
    int64_t first = INT64_MAX, last = 0, busyNs = 0;
    for (const auto& t : tl) {
        busyNs += t.dequantBusyNs;
        rd.emplace_back(t.readStartNs, t.readDoneNs);
        // GPU: dequant and H2D come from CUDA events (0 when a layer's times were not read).
        if (t.dequantizedNs > 0) dq.emplace_back(t.dequantStartNs, t.dequantizedNs);
        if (t.copiedNs > 0) h2d.emplace_back(t.copyStartNs, t.copiedNs);
        ex.emplace_back(t.acquiredNs, t.releasedNs);
        first = std::min(first, t.queuedNs);
        // GPU: a layer is done when released and its dequant finished (the host runs ahead).
        last = std::max({last, t.releasedNs, t.dequantizedNs});
    }
    r.wallSeconds = tl.empty() ? 0 : static_cast<double>(last - first) / 1e9;
    r.stages.read = unionSeconds(std::move(rd));
    // CPU: a layer's tensor tasks start as their bytes land, so its dequant window includes
    // waits for the rest of its read; the stage's time is its work spread over its workers.
    r.stages.dequant = st.device == "cpu" && st.workers > 0
                           ? static_cast<double>(busyNs) / 1e9 / st.workers
                           : unionSeconds(std::move(dq));
    r.stages.h2d = unionSeconds(std::move(h2d));
    r.stages.execute = unionSeconds(std::move(ex));
    r.stages.verify = st.verifySeconds;
    r.bytesRead = st.bytesRead;
    r.bytesProduced = st.bytesProduced;
    r.layers = static_cast<int64_t>(st.layersAcquired);
    r.pinnedBytes = st.pinnedBytes;
    r.hostOutputBytes = st.hostOutputBytes;
    r.slots = st.slots;
    r.largeSlots = st.largeSlots;
    r.backendUsed = st.ioBackend;
    r.directIo = st.directIo;
    r.checksum = exec.checksum();
    if (!o.tracePath.empty()) SLI_RETURN_IF_ERROR(engine->writeTrace(o.tracePath));
    return r;
}

Result<StreamResult> streamNaive(const StreamOptions& o, const std::vector<std::string>& files) {
    if (o.cold) dropPageCache();
    StreamResult r;
    r.backendUsed = "pread";
    Executor exec(o.batch, o.passes);
    io::AlignedBuffer buf;  // the same memory kind as the engine's slots (huge pages)
    uint64_t bufBytes = 0;
    AlignedBuffer out, scratch;
    const int threads = o.threads > 0 ? o.threads : 0;
    const auto wall0 = Clock::now();
    int64_t done = 0;
    for (const std::string& path : files) {
        auto t = Clock::now();
        SLI_ASSIGN_OR_RETURN(io::DirectReadFile f, io::openForDirectRead(path, o.cold));
        r.directIo = r.directIo || f.isDirect();
        SLI_ASSIGN_OR_RETURN(io::LayerFileIndex idx, io::readLayerIndex(f.fd(), path));
        const uint64_t n = idx.dataBytes();
        if (n > bufBytes) {
            bufBytes = (n + 4095) / 4096 * 4096;
            buf = io::AlignedBuffer();
            SLI_ASSIGN_OR_RETURN(buf, io::AlignedBuffer::allocate(bufBytes));
        }
        for (uint64_t off = 0; off < n;) {
            const ssize_t k = ::pread(f.fd(), reinterpret_cast<uint8_t*>(buf.data()) + off, n - off,
                                      static_cast<off_t>(idx.dataStart + off));
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) return Status::fromErrno(k < 0 ? errno : EIO, "naive loader: reading " + path);
            off += static_cast<uint64_t>(k);
        }
        r.stages.read += secondsSince(t);
        r.bytesRead += n;

        SLI_ASSIGN_OR_RETURN(QuantizationConfig cfg, QuantizationConfig::fromJsonString(idx.configJson));
        const DType dt = cfg.computeDType;
        std::vector<uint64_t> offs;
        uint64_t outBytes = 0;
        // As the engine: integer / bool tensors (position ids, masks) are handed out as stored.
        const auto outDTypeOf = [&](const io::CacheTensorEntry& e) {
            const bool raw = e.info.mode == QuantizationMode::kNone && !dtypeIsFloat(e.info.storedDType);
            return raw ? e.info.storedDType : dt;
        };
        for (const auto& e : idx.tensors) {
            offs.push_back(outBytes);
            outBytes += (static_cast<uint64_t>(e.info.numel()) * dtypeSize(outDTypeOf(e)) + 63) / 64 * 64;
        }
        if (out.size() < outBytes) {
            SLI_ASSIGN_OR_RETURN(out, AlignedBuffer::allocate(outBytes, false));
        }
        if (scratch.size() < std::max<uint64_t>(idx.maxScratchBytes(), 64)) {
            SLI_ASSIGN_OR_RETURN(scratch, AlignedBuffer::allocate(std::max<uint64_t>(idx.maxScratchBytes(), 64), false));
        }
        Layer layer(idx.layerName);
        for (size_t i = 0; i < idx.tensors.size(); ++i) {
            const auto& e = idx.tensors[i];
            t = Clock::now();
            SLI_ASSIGN_OR_RETURN(QuantizedTensorView v,
                                 io::decodeTensor(idx, i, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(buf.data()), n),
                                                  idx.dataStart, o.verify, scratch.bytes()));
            r.stages.verify += secondsSince(t);
            t = Clock::now();
            const DType et = outDTypeOf(e);
            const uint64_t nb = static_cast<uint64_t>(e.info.numel()) * dtypeSize(et);
            if (et == dt) {
                SLI_RETURN_IF_ERROR(kernels::dequantize(v, dt, std::span<uint8_t>(out.data() + offs[i], nb), threads));
            } else {
                const auto payload = v.part(QuantPart::kPayload);
                if (payload.size() != nb) {
                    return Status::corruption("tensor " + e.info.name + " in " + path + ": payload size");
                }
                std::memcpy(out.data() + offs[i], payload.data(), nb);
            }
            r.stages.dequant += secondsSince(t);
            r.bytesProduced += nb;
            SLI_ASSIGN_OR_RETURN(Tensor tt, Tensor::borrowed(e.info.name, e.info.shape, et, out.data() + offs[i]));
            SLI_RETURN_IF_ERROR(layer.add(std::move(tt)));
        }
        t = Clock::now();
        SLI_RETURN_IF_ERROR(exec.run(layer));
        r.stages.execute += secondsSince(t);
        ++r.layers;
        if (o.progress) o.progress(++done, static_cast<int64_t>(files.size()));
    }
    r.wallSeconds = secondsSince(wall0);
    r.stages.dequant += r.stages.verify;  // same convention as the engine: decode = verify + dequant
    r.checksum = exec.checksum();
    return r;
}

double measureMemcpyGbps(uint64_t bytes, int tries) {
    std::unique_ptr<uint8_t, FreeDeleter> a(static_cast<uint8_t*>(std::aligned_alloc(4096, bytes)));
    std::unique_ptr<uint8_t, FreeDeleter> b(static_cast<uint8_t*>(std::aligned_alloc(4096, bytes)));
    if (!a || !b) return 0;
    std::memset(a.get(), 1, bytes);
    std::memset(b.get(), 2, bytes);
    double best = 0;
    for (int i = 0; i < tries; ++i) {
        const auto t0 = Clock::now();
        std::memcpy(b.get(), a.get(), bytes);
        const double s = secondsSince(t0);
        a.get()[i] = b.get()[bytes - 1 - i];  // keep the copy observable
        if (s > 0) best = std::max(best, bytes / s / 1e9);
    }
    return best;
}

bool dropPageCache() {
    ::sync();
    const int fd = ::open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return false;
    const bool ok = ::write(fd, "1", 1) == 1;
    ::close(fd);
    return ok;
}

bool resetPeakRss() {
    const int fd = ::open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return false;
    const bool ok = ::write(fd, "5", 1) == 1;
    ::close(fd);
    return ok;
}

uint64_t peakRssBytes() {
    const uint64_t v = statusField("VmHWM:");
    if (v) return v;
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return static_cast<uint64_t>(ru.ru_maxrss) * 1024;
}

uint64_t currentRssBytes() { return statusField("VmRSS:"); }

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

}  // namespace sli::bench

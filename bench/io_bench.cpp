// Sequential O_DIRECT read throughput of one large file through each read-scheduler backend,
// at a few chunk sizes and queue depths. Reported as bytes/second (SetBytesProcessed).
//
// The file (SLI_IO_BENCH_FILE, default $TMPDIR/sli_io_bench.bin) is created on first use with
// SLI_IO_BENCH_BYTES bytes (default 1 GiB) and removed at exit unless it was given. O_DIRECT keeps
// the page cache out of the numbers; on a filesystem that refuses O_DIRECT they are memory speed.
//
// Also the extent checksum (io/checksum.h), every implementation this CPU runs, over one 4 MiB
// chunk (a typical read chunk, as the engine's workers hash it) and a 256 MiB buffer, each
// beside `readfloor`: one pass that only loads and XORs the same bytes (the memory read limit
// of one thread, measured in the same run).
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>
#include <filesystem>
#include <string>
#include <vector>

#include "io/checksum.h"
#include "io/read_scheduler.h"
#include "io/uring_scheduler.h"

namespace {

struct BenchFile {
    std::string path;
    uint64_t bytes = 0;
    bool owned = false;
    bool ok = false;

    BenchFile() {
        const char* given = std::getenv("SLI_IO_BENCH_FILE");
        const char* size = std::getenv("SLI_IO_BENCH_BYTES");
        bytes = size ? std::strtoull(size, nullptr, 10) : (1ull << 30);
        if (given && *given) {
            path = given;
            ok = std::filesystem::exists(path);
            if (ok) bytes = std::filesystem::file_size(path);
            return;
        }
        path = (std::filesystem::temp_directory_path() / "sli_io_bench.bin").string();
        owned = true;
        const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) return;
        std::vector<char> block(8 << 20);
        for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>(i * 2654435761u >> 13);
        uint64_t done = 0;
        while (done < bytes) {
            const size_t n = static_cast<size_t>(std::min<uint64_t>(block.size(), bytes - done));
            if (::write(fd, block.data(), n) != static_cast<ssize_t>(n)) break;
            block[done % 4093] ^= 1;  // not all blocks identical
            done += n;
        }
        ::fsync(fd);
        ::close(fd);
        ok = done == bytes;
    }
    ~BenchFile() {
        if (owned) ::unlink(path.c_str());
    }
};

BenchFile& benchFile() {
    static BenchFile f;
    return f;
}

void BM_SequentialRead(benchmark::State& state, sli::io::IoBackend backend) {
    if (backend == sli::io::IoBackend::kIoUring && !sli::io::probeIoUring().usable) {
        state.SkipWithError(("io_uring unusable: " + sli::io::probeIoUring().reason).c_str());
        return;
    }
    BenchFile& f = benchFile();
    if (!f.ok) {
        state.SkipWithError(("cannot create " + f.path).c_str());
        return;
    }
    const std::vector<std::string> paths{f.path};
    const auto chunk = static_cast<uint32_t>(state.range(0));
    const auto depth = static_cast<uint32_t>(state.range(1));
    uint64_t bytes = 0;
    for (auto _ : state) {
        auto r = sli::io::measureRawRead(paths, chunk, depth, backend);
        if (!r.isOk()) {
            state.SkipWithError(r.status().toString().c_str());
            return;
        }
        bytes += r->bytes;
    }
    state.SetBytesProcessed(static_cast<int64_t>(bytes));
    state.SetLabel(sli::io::ioBackendName(backend));
}

void sizes(benchmark::internal::Benchmark* b) {
    for (int64_t chunk : {1 << 20, 2 << 20, 4 << 20}) {
        for (int64_t depth : {32, 64, 128}) b->Args({chunk, depth});
    }
    b->ArgNames({"chunk", "depth"})->Iterations(3)->UseRealTime()->Unit(benchmark::kMillisecond);
}

BENCHMARK_CAPTURE(BM_SequentialRead, io_uring, sli::io::IoBackend::kIoUring)->Apply(sizes);
BENCHMARK_CAPTURE(BM_SequentialRead, pread, sli::io::IoBackend::kPread)->Apply(sizes);

std::vector<uint8_t>& hashInput(size_t bytes) {
    static std::vector<uint8_t> buf;
    if (buf.size() != bytes) {
        buf.resize(bytes);
        std::mt19937_64 rng(88172645463325252ull);
        for (size_t i = 0; i < bytes; i += 8) {
            const uint64_t v = rng();
            std::memcpy(buf.data() + i, &v, std::min<size_t>(8, bytes - i));
        }
    }
    return buf;
}

void BM_Checksum(benchmark::State& state) {
    const auto impls = sli::io::checksumImplementations();
    const auto which = static_cast<size_t>(state.range(1));
    if (which >= impls.size()) {
        state.SkipWithError("this CPU does not run that implementation");
        return;
    }
    const auto& buf = hashInput(static_cast<size_t>(state.range(0)));
    for (auto _ : state) benchmark::DoNotOptimize(impls[which].fn(buf.data(), buf.size()));
    state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
    state.SetLabel(impls[which].name);
}

// The read limit: 32-byte loads XORed together (vectorized by the compiler at the baseline ISA).
void BM_ReadFloor(benchmark::State& state) {
    const auto& buf = hashInput(static_cast<size_t>(state.range(0)));
    for (auto _ : state) {
        const auto* p = reinterpret_cast<const uint64_t*>(buf.data());
        uint64_t a = 0, b = 0, c = 0, d = 0;
        for (size_t i = 0; i + 4 <= buf.size() / 8; i += 4) {
            a ^= p[i];
            b ^= p[i + 1];
            c ^= p[i + 2];
            d ^= p[i + 3];
        }
        benchmark::DoNotOptimize(a ^ b ^ c ^ d);
    }
    state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
    state.SetLabel("readfloor");
}

// Implementations in checksumImplementations() order: 0 = libxxhash, 1 = AVX2, 2 = AVX-512.
BENCHMARK(BM_Checksum)->ArgsProduct({{4 << 20, 256 << 20}, {0, 1, 2}})->ArgNames({"bytes", "impl"});
BENCHMARK(BM_ReadFloor)->Arg(4 << 20)->Arg(256 << 20)->ArgName("bytes");

}  // namespace

BENCHMARK_MAIN();

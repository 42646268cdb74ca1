// Sequential O_DIRECT read throughput of one large file through each read-scheduler backend,
// at a few chunk sizes and queue depths. Reported as bytes/second (SetBytesProcessed).
//
// The file (SLI_IO_BENCH_FILE, default $TMPDIR/sli_io_bench.bin) is created on first use with
// SLI_IO_BENCH_BYTES bytes (default 1 GiB) and removed at exit unless it was given. O_DIRECT keeps
// the page cache out of the numbers; on a filesystem that refuses O_DIRECT they are memory speed.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

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

}  // namespace

BENCHMARK_MAIN();

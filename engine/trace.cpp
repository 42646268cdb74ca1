#include "trace.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "sli/json.h"

namespace sli {

namespace {

// Nanoseconds as microseconds with three decimals, in integer arithmetic: printf's %f follows
// LC_NUMERIC, and a decimal comma (de_DE, fr_FR...) would make the file invalid JSON.
void appendMicros(std::string& out, int64_t ns) {
    char buf[32];
    const uint64_t a = static_cast<uint64_t>(ns < 0 ? -ns : ns);
    std::snprintf(buf, sizeof buf, "%s%llu.%03llu", ns < 0 ? "-" : "",
                  static_cast<unsigned long long>(a / 1000), static_cast<unsigned long long>(a % 1000));
    out += buf;
}

void event(std::string& out, bool& first, const std::string& name, int tid, int64_t startNs,
           int64_t endNs, int64_t layer, uint64_t seq, uint64_t bytes) {
    if (startNs <= 0 || endNs < startNs) return;
    if (!first) out += ",\n";
    first = false;
    char buf[256];
    out += "{\"name\": ";
    appendJsonString(out, name);
    std::snprintf(buf, sizeof buf, ", \"ph\": \"X\", \"pid\": 1, \"tid\": %d, \"ts\": ", tid);
    out += buf;
    appendMicros(out, startNs);
    out += ", \"dur\": ";
    appendMicros(out, endNs - startNs);
    std::snprintf(buf, sizeof buf, ", \"args\": {\"layer\": %lld, \"seq\": %llu, \"bytes\": %llu}}",
                  static_cast<long long>(layer), static_cast<unsigned long long>(seq),
                  static_cast<unsigned long long>(bytes));
    out += buf;
}
}  // namespace

std::string traceJson(const std::vector<LayerTiming>& timings,
                      const std::vector<std::string>& layerNames) {
    std::string out = "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n";
    const char* tracks[] = {"read", "verify", "dequant", "executor", "acquire wait", "h2d copy"};
    bool first = true;
    for (int tid = 0; tid < 6; ++tid) {
        if (!first) out += ",\n";
        first = false;
        out += "{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 1, \"tid\": " +
               std::to_string(tid + 1) + ", \"args\": {\"name\": \"" + tracks[tid] + "\"}}";
    }
    for (const LayerTiming& t : timings) {
        std::string name = t.layer >= 0 && static_cast<size_t>(t.layer) < layerNames.size()
                               ? layerNames[static_cast<size_t>(t.layer)]
                               : "layer " + std::to_string(t.layer);
        const int64_t readStart = t.readStartNs > 0 ? t.readStartNs : t.queuedNs;
        event(out, first, name, 1, readStart, t.readDoneNs, t.layer, t.sequence, t.bytesRead);
        // CPU tasks start as their tensor's bytes land, so verification can begin before the
        // read ends; on the GPU dequantStartNs is the kernels' start, after it.
        const int64_t verifyStart = t.dequantStartNs > 0 && t.dequantStartNs < t.readDoneNs
                                        ? t.dequantStartNs
                                        : t.readDoneNs;
        event(out, first, name, 2, verifyStart, t.verifiedNs, t.layer, t.sequence, t.bytesRead);
        event(out, first, name, 3, t.dequantStartNs, t.dequantizedNs, t.layer, t.sequence,
              t.bytesProduced);
        event(out, first, name, 4, t.acquiredNs, t.releasedNs, t.layer, t.sequence,
              t.bytesProduced);
        if (t.acquiredNs > t.acquireCalledNs) {
            event(out, first, name, 5, t.acquireCalledNs, t.acquiredNs, t.layer, t.sequence, 0);
        }
        event(out, first, name, 6, t.copyStartNs, t.copiedNs, t.layer, t.sequence, t.bytesRead);
    }
    out += "\n]}\n";
    return out;
}

Status writeTraceFile(const std::string& path, const std::vector<LayerTiming>& timings,
                      const std::vector<std::string>& layerNames) {
    const std::string json = traceJson(timings, layerNames);
    FILE* f = std::fopen(path.c_str(), "w");
    if (f == nullptr) return Status::fromErrno(errno, "open trace file " + path);
    const size_t n = std::fwrite(json.data(), 1, json.size(), f);
    const int err = errno;
    if (std::fclose(f) != 0 || n != json.size()) return Status::fromErrno(err, "write trace file " + path);
    return Status();
}

}  // namespace sli

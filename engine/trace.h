// Chrome / Perfetto trace writer for per-layer stage timings.
//
// Produces the JSON Object Format ("traceEvents" with complete "X" events, microseconds) that
// chrome://tracing and ui.perfetto.dev read. Each stage gets its own track (tid) so overlap
// between reading layer i+1 and executing layer i is visible at a glance:
//   read (queued -> read done), verify, dequant, held by executor (acquired -> released),
//   and acquire wait (the executor blocked in acquire()).
// Pure function of its input; thread-safe.
#pragma once

#include <string>
#include <vector>

#include "sli/engine.h"
#include "sli/status.h"

namespace sli {

std::string traceJson(const std::vector<LayerTiming>& timings,
                      const std::vector<std::string>& layerNames);
Status writeTraceFile(const std::string& path, const std::vector<LayerTiming>& timings,
                      const std::vector<std::string>& layerNames);

}  // namespace sli

// Chrome / Perfetto trace writer for per-layer stage timings.
//
// Produces the JSON Object Format ("traceEvents" with complete "X" events, microseconds) that
// chrome://tracing and ui.perfetto.dev read. Each stage gets its own track (tid) so overlap
// between reading layer i+1 and executing layer i is visible at a glance:
//   read (queued -> read done), verify (from the first tensor task, which may start before the
//   read ends, to the last checksum), dequant, held by executor (acquired -> released),
//   acquire wait (the executor blocked in acquire()) and, on the GPU path, the H2D copy.
// A stage with no time recorded (0) has no event.
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

// Test hooks for sli::Engine (not installed, not part of the public API).
//
// setReadSchedulerFactoryForTesting() makes every Engine opened afterwards build its read
// scheduler with `factory` instead of io::makeReadScheduler — e.g. an
// io::FaultInjectingScheduler, so faults reach the engine through the real scheduler interface.
// Pass an empty function to restore the default. Thread-safe.
#pragma once

#include <functional>
#include <memory>

#include "io/read_scheduler.h"
#include "sli/status.h"

namespace sli::testing {

using ReadSchedulerFactory = std::function<Result<std::unique_ptr<io::ReadScheduler>>(
    const io::ReadSchedulerOptions&)>;
void setReadSchedulerFactoryForTesting(ReadSchedulerFactory factory);

}  // namespace sli::testing

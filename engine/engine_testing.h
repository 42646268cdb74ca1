// Test hooks for sli::Engine (not installed, not part of the public API).
//
// setReadSchedulerFactoryForTesting() makes every Engine opened afterwards build its read
// scheduler with `factory` instead of io::makeReadScheduler — e.g. an
// io::FaultInjectingScheduler, so faults reach the engine through the real scheduler interface.
// Pass an empty function to restore the default. Thread-safe.
//
// engineStateForTesting() describes the engine's scheduling state in one line (plan
// positions, each slot's state / layer / position / linked positions, rereads): for test
// diagnostics, e.g. a watchdog's message when an acquire() blocks too long. Callable from any
// thread; says so instead of blocking when the engine's lock is not free within a second.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "io/read_scheduler.h"
#include "sli/status.h"

namespace sli {
class Engine;
}

namespace sli::testing {

using ReadSchedulerFactory = std::function<Result<std::unique_ptr<io::ReadScheduler>>(
    const io::ReadSchedulerOptions&)>;
void setReadSchedulerFactoryForTesting(ReadSchedulerFactory factory);

std::string engineStateForTesting(const Engine& engine);

}  // namespace sli::testing

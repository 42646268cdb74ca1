#include <doctest/doctest.h>

#include "sli/log.h"

using namespace sli;

TEST_CASE("levels come from a spec with per-module overrides") {
    logReconfigure("warn,io=debug,engine=off");
    CHECK(logEnabled("kernels", LogLevel::kWarn));
    CHECK_FALSE(logEnabled("kernels", LogLevel::kInfo));
    CHECK(logEnabled("io", LogLevel::kDebug));
    CHECK_FALSE(logEnabled("io", LogLevel::kTrace));
    CHECK_FALSE(logEnabled("engine", LogLevel::kError));
    logReconfigure("debug");
    CHECK(logEnabled("kernels", LogLevel::kDebug));
    logReconfigure("off");
    CHECK_FALSE(logEnabled("kernels", LogLevel::kError));
    SLI_ERROR("test", "not printed %d", 1);
    logReconfigure("error");
}

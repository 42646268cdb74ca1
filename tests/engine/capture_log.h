// Test helper: runs a callable with sli logging at "warn" and stderr redirected to a temporary
// file, and returns what was written (meson runs the tests with SLI_LOG=error, so warnings a
// test wants to see must be switched on). Logging goes back to SLI_LOG afterwards. Not
// thread-safe: it swaps the process's file descriptor 2.
#pragma once

#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "sli/log.h"

namespace sli::testutil {

template <typename Fn>
std::string captureWarnings(Fn&& fn) {
    logReconfigure("warn");
    std::fflush(stderr);
    std::FILE* capture = std::tmpfile();
    REQUIRE(capture != nullptr);
    const int saved = ::dup(2);
    ::dup2(::fileno(capture), 2);
    fn();
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
    logReconfigure();  // back to SLI_LOG
    std::rewind(capture);
    std::string log;
    for (int c; (c = std::fgetc(capture)) != EOF;) log.push_back(static_cast<char>(c));
    std::fclose(capture);
    return log;
}

}  // namespace sli::testutil

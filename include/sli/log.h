// Leveled, per-module logging to stderr.
//
// The level comes from the environment variable SLI_LOG, read once on first use:
//   SLI_LOG=debug                 everything at debug and above
//   SLI_LOG=warn,io=debug,engine=trace   a default level plus per-module overrides
// Levels: trace, debug, info, warn, error, off. The default is warn, so a library embedded in
// a server stays quiet unless something is wrong. Output lines look like
//   [sli:io warn] O_DIRECT refused by /tmp/cache (tmpfs): using buffered reads
// Thread-safe: each line is written with one write(2).
#pragma once

#include <cstdarg>
#include <string_view>

namespace sli {

enum class LogLevel : int { kTrace = 0, kDebug, kInfo, kWarn, kError, kOff };

// True when a message of `level` from `module` would be printed.
bool logEnabled(std::string_view module, LogLevel level) noexcept;
// printf-style message, printed when enabled. Prefer the SLI_LOG_* macros, which test
// logEnabled() before formatting anything.
void logMessage(std::string_view module, LogLevel level, const char* fmt, ...) noexcept
    __attribute__((format(printf, 3, 4)));
// Re-reads SLI_LOG (tests use it after setenv) or applies `spec` when non-empty.
void logReconfigure(std::string_view spec = {}) noexcept;
const char* logLevelName(LogLevel level) noexcept;

}  // namespace sli

#define SLI_LOG_AT(module, level, ...)                                  \
    do {                                                                \
        if (::sli::logEnabled(module, level)) ::sli::logMessage(module, level, __VA_ARGS__); \
    } while (0)
#define SLI_TRACE(module, ...) SLI_LOG_AT(module, ::sli::LogLevel::kTrace, __VA_ARGS__)
#define SLI_DEBUG(module, ...) SLI_LOG_AT(module, ::sli::LogLevel::kDebug, __VA_ARGS__)
#define SLI_INFO(module, ...) SLI_LOG_AT(module, ::sli::LogLevel::kInfo, __VA_ARGS__)
#define SLI_WARN(module, ...) SLI_LOG_AT(module, ::sli::LogLevel::kWarn, __VA_ARGS__)
#define SLI_ERROR(module, ...) SLI_LOG_AT(module, ::sli::LogLevel::kError, __VA_ARGS__)

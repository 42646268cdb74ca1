#include "sli/log.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace sli {

namespace {

struct LogConfig {
    LogLevel defaultLevel = LogLevel::kWarn;
    std::vector<std::pair<std::string, LogLevel>> modules;
};

std::mutex gMu;
LogConfig gConfig;
std::atomic<bool> gConfigured{false};
// The lowest level any module prints: lets disabled messages return without the lock.
std::atomic<int> gMinLevel{static_cast<int>(LogLevel::kWarn)};

void publish(LogConfig c) {
    int minLevel = static_cast<int>(c.defaultLevel);
    for (const auto& m : c.modules) minLevel = std::min(minLevel, static_cast<int>(m.second));
    gConfig = std::move(c);
    gMinLevel.store(minLevel, std::memory_order_release);
}

bool parseLevel(std::string_view s, LogLevel* out) {
    static constexpr std::pair<std::string_view, LogLevel> kNames[] = {
        {"trace", LogLevel::kTrace}, {"debug", LogLevel::kDebug}, {"info", LogLevel::kInfo},
        {"warn", LogLevel::kWarn},   {"warning", LogLevel::kWarn}, {"error", LogLevel::kError},
        {"off", LogLevel::kOff},     {"none", LogLevel::kOff}};
    for (const auto& [name, level] : kNames) {
        if (s == name) {
            *out = level;
            return true;
        }
    }
    return false;
}

LogConfig parseSpec(std::string_view spec) {
    LogConfig c;
    while (!spec.empty()) {
        const size_t comma = spec.find(',');
        std::string_view item = spec.substr(0, comma);
        spec = comma == std::string_view::npos ? std::string_view{} : spec.substr(comma + 1);
        const size_t eq = item.find('=');
        LogLevel level;
        if (eq == std::string_view::npos) {
            if (parseLevel(item, &level)) c.defaultLevel = level;
        } else if (parseLevel(item.substr(eq + 1), &level)) {
            c.modules.emplace_back(std::string(item.substr(0, eq)), level);
        }
    }
    return c;
}

void ensureConfigured() {
    if (gConfigured.load(std::memory_order_acquire)) return;
    std::lock_guard<std::mutex> lock(gMu);
    if (gConfigured.load(std::memory_order_relaxed)) return;
    const char* env = std::getenv("SLI_LOG");
    publish(parseSpec(env ? env : ""));
    gConfigured.store(true, std::memory_order_release);
}

}  // namespace

const char* logLevelName(LogLevel level) noexcept {
    switch (level) {
        case LogLevel::kTrace: return "trace";
        case LogLevel::kDebug: return "debug";
        case LogLevel::kInfo: return "info";
        case LogLevel::kWarn: return "warn";
        case LogLevel::kError: return "error";
        case LogLevel::kOff: return "off";
    }
    return "?";
}

bool logEnabled(std::string_view module, LogLevel level) noexcept {
    ensureConfigured();
    if (static_cast<int>(level) < gMinLevel.load(std::memory_order_acquire)) return false;
    std::lock_guard<std::mutex> lock(gMu);
    LogLevel threshold = gConfig.defaultLevel;
    for (const auto& [name, l] : gConfig.modules) {
        if (name == module) threshold = l;
    }
    return level != LogLevel::kOff && level >= threshold;
}

void logMessage(std::string_view module, LogLevel level, const char* fmt, ...) noexcept {
    if (!logEnabled(module, level)) return;
    char buf[1024];
    int n = std::snprintf(buf, sizeof buf, "[sli:%.*s %s] ", static_cast<int>(module.size()),
                          module.data(), logLevelName(level));
    if (n < 0) return;
    va_list ap;
    va_start(ap, fmt);
    int m = std::vsnprintf(buf + n, sizeof buf - static_cast<size_t>(n) - 1, fmt, ap);
    va_end(ap);
    if (m < 0) m = 0;
    size_t len = std::min(sizeof buf - 2, static_cast<size_t>(n + m));
    buf[len++] = '\n';
    ssize_t ignored = ::write(STDERR_FILENO, buf, len);
    (void)ignored;
}

void logReconfigure(std::string_view spec) noexcept {
    std::lock_guard<std::mutex> lock(gMu);
    if (spec.empty()) {
        const char* env = std::getenv("SLI_LOG");
        publish(parseSpec(env ? env : ""));
    } else {
        publish(parseSpec(spec));
    }
    gConfigured.store(true, std::memory_order_release);
}

}  // namespace sli

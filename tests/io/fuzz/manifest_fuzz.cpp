// libFuzzer target: the cache manifest and the quantization config it carries, both parsed
// from untrusted JSON (scripts/fuzz.sh builds and runs it). Invariants: whatever parses
// serializes and parses back to the same thing.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "io/cache_manifest.h"
#include "sli/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    auto m = sli::io::CacheManifest::parse(text, "fuzz/MANIFEST.json");
    if (m.isOk()) {
        auto again = sli::io::CacheManifest::parse(m->toJson(), "fuzz/MANIFEST.json");
        if (!again.isOk() || again->toJson() != m->toJson()) __builtin_trap();
        for (size_t i = 1; i < m->layers.size(); ++i) {
            if (m->layers[i - 1].index >= m->layers[i].index) __builtin_trap();  // sorted, unique
        }
        (void)sli::QuantizationConfig::fromJsonString(m->configJson);
    }
    auto c = sli::QuantizationConfig::fromJsonString(text);
    if (c.isOk()) {
        auto back = sli::QuantizationConfig::fromJsonString(c->toJsonString());
        if (!back.isOk() || !(*back == *c)) __builtin_trap();
    }
    return 0;
}

// libFuzzer target: the safetensors header parser (scripts/fuzz.sh builds and runs it).
#include <cstddef>
#include <cstdint>
#include <span>

#include "sli/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::span<const uint8_t> bytes(data, size);
    auto h = sli::parseSafetensorsHeader(bytes, size, "fuzz.safetensors");
    if (h.isOk()) {
        // Invariants a valid header guarantees to every reader.
        uint64_t end = 0;
        for (const auto& t : h->tensors) {
            if (t.begin != end || t.end < t.begin) __builtin_trap();
            end = t.end;
        }
        if (h->dataStart + end != size) __builtin_trap();
    }
    // The same bytes claimed to belong to a larger file (data not all present) must not crash.
    (void)sli::parseSafetensorsHeader(bytes, size + 4096, "fuzz.safetensors");
    return 0;
}

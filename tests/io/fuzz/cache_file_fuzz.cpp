// libFuzzer target: the layer-cache file reader (index parser and tensor decoder).
// Built with FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, which lets a wrong index checksum
// through so the fuzzer can reach the table parser; decodeTensor runs with and without extent
// verification so zstd frames and part bounds are exercised on arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "io/cache_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::span<const uint8_t> bytes(data, size);
    auto idx = sli::io::parseLayerIndex(bytes, size, "fuzz.slc");
    if (!idx.isOk()) return 0;
    if (idx->dataEnd != size || idx->dataStart > idx->dataEnd) __builtin_trap();
    for (size_t t = 0; t < idx->tensors.size(); ++t) {
        std::vector<uint8_t> scratch(idx->tensors[t].scratchBytes());
        for (bool verify : {false, true}) {
            auto v = sli::io::decodeTensor(*idx, t, bytes, 0, verify, scratch);
            if (!v.isOk()) continue;
            // Every part the view hands on has exactly the size the metadata implies.
            for (int p = 0; p < sli::kQuantPartCount; ++p) {
                if (v->parts[p].size() != idx->tensors[t].info.expectedPartBytes(static_cast<sli::QuantPart>(p))) {
                    __builtin_trap();
                }
                volatile uint8_t sink = 0;
                for (uint8_t b : v->parts[p]) sink = static_cast<uint8_t>(sink ^ b);  // touch: ASan checks the bounds
                (void)sink;
            }
        }
    }
    return 0;
}

// XXH3-64 compiled for one instruction set: this file is built once per ISA (io/meson.build)
// with that ISA's flags and SLI_CHECKSUM_ISA_FN naming the function. The header, inlined,
// picks its vector code from the compiler's target macros (__AVX2__, __AVX512F__), so the
// flags alone decide the variant. Only called after cpuid says the CPU runs it.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstddef>
#include <cstdint>

#ifndef SLI_CHECKSUM_ISA_FN
#error "SLI_CHECKSUM_ISA_FN must name the function this build of the file defines"
#endif

namespace sli::io::detail {

uint64_t SLI_CHECKSUM_ISA_FN(const void* data, size_t size) noexcept {
    return XXH3_64bits(data, size);
}

}  // namespace sli::io::detail

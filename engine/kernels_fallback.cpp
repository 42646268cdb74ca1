// TEMPORARY: weak stand-ins for sli::kernels until the kernels branch lands in main; the real
// definitions (kernels/) override these. Delete this file when merging main brings them in.
#include "sli/kernels.h"

namespace sli::kernels {

__attribute__((weak)) Status quantize(std::span<const float>, QuantizedTensor& out, int) {
    return Status::notSupported("tensor " + out.info.name + ": quantization kernels are not "
                                "built into this binary yet");
}
__attribute__((weak)) Status dequantize(const QuantizedTensorView& src, DType, std::span<uint8_t>,
                                        int) {
    return Status::notSupported("tensor " + (src.info ? src.info->name : std::string("?")) +
                                ": dequantization kernels are not built into this binary yet");
}
__attribute__((weak)) const char* activeIsa() noexcept { return "none"; }

}  // namespace sli::kernels

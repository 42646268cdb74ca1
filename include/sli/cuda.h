// CUDA availability probe for embedders and the engine. No CUDA types: safe to include from
// any C++ translation unit, in builds with or without CUDA.
//
// built() says whether this library was compiled with CUDA (meson -Dcuda). deviceCount() asks
// the CUDA runtime (0 when not built with CUDA, when no driver is loaded or when no device is
// visible: a missing GPU is a state, not an error). parseDevice() reads the engine's device
// option ("cpu", "cuda", "cuda:N").
//
// Thread-safe; deviceCount() may initialize the CUDA runtime on first use (tens of ms).
#pragma once

#include <string>
#include <string_view>

#include "sli/status.h"

namespace sli::cuda {

bool built() noexcept;
int deviceCount() noexcept;
bool deviceAvailable(int device = 0) noexcept;
// "NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB, 132 SMs" or an empty string when unavailable.
std::string deviceDescription(int device);
// "cpu" -> -1, "cuda" -> 0, "cuda:N" -> N (N >= 0). InvalidArgument otherwise. Does not check
// that the device exists.
Result<int> parseDevice(std::string_view device);

}  // namespace sli::cuda

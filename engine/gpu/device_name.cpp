// sli::cuda::parseDevice: needs no CUDA, built in every configuration.
#include <charconv>
#include <string>

#include "sli/cuda.h"

namespace sli::cuda {

Result<int> parseDevice(std::string_view device) {
    if (device == "cpu") return -1;
    if (device == "cuda") return 0;
    if (device.starts_with("cuda:")) {
        int n = -1;
        const char* b = device.data() + 5;
        const char* e = device.data() + device.size();
        auto [p, ec] = std::from_chars(b, e, n);
        if (ec == std::errc() && p == e && b != e && n >= 0) return n;
    }
    return Status::invalidArgument("device \"" + std::string(device) +
                                   "\": expected cpu, cuda or cuda:N");
}

}  // namespace sli::cuda

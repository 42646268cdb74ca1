// Entry point of test_cuda: exits 77 (meson: SKIP) when no CUDA device is usable, otherwise
// runs the doctest suites (meson passes --source-file to select one file's tests).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "sli/cuda.h"

int main(int argc, char** argv) {
    const int n = sli::cuda::deviceCount();
    if (n == 0) {
        std::fprintf(stderr, "no CUDA device (%s build): skipping the CUDA tests\n",
                     sli::cuda::built() ? "CUDA" : "non-CUDA");
        return 77;
    }
    std::fprintf(stderr, "cuda:0 = %s\n", sli::cuda::deviceDescription(0).c_str());
    doctest::Context ctx;
    ctx.applyCommandLine(argc, argv);
    return ctx.run();
}

// Shared helpers for the all-MiniLM-L6-v2 tests: where the weights and the reference live, a
// skip (exit 77) when the weights were not fetched, and a temporary cache root.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "retention.h"

namespace sli::minilm::testutil {

inline std::string testDataDir() {
    const char* d = std::getenv("SLI_TEST_DATA");
    return d != nullptr ? d : "tests";
}
inline std::string modelDir() { return testDataDir() + "/data/minilm"; }
inline std::string referenceDir() { return testDataDir() + "/golden/minilm"; }

// Ends the test program with 77 (meson: skipped) when the weights are absent. Each test file
// is its own meson test, so this skips exactly the tests that need the real checkpoint.
inline void requireWeights() {
    if (!std::filesystem::exists(modelDir() + "/model.safetensors")) {
        std::printf(
            "SKIP: %s/model.safetensors is absent; run scripts/fetch_minilm.sh to fetch "
            "the real all-MiniLM-L6-v2 weights\n",
            modelDir().c_str());
        std::fflush(stdout);
        std::exit(77);
    }
}

struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/sli-minilm-XXXXXX";
        path = ::mkdtemp(tmpl);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

}  // namespace sli::minilm::testutil

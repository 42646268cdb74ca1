// Test helper shared by the io, streaming and cuda tests: damages one byte of a file in place
// (XOR with `mask`), as a bit flip on disk would. Returns false when the file cannot be opened
// or is shorter than offset + 1 bytes.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace sli::testing {

inline bool flipByte(const std::string& path, uint64_t offset, uint8_t mask = 0x20) {
    std::FILE* f = std::fopen(path.c_str(), "r+b");
    if (f == nullptr) return false;
    bool ok = std::fseek(f, static_cast<long>(offset), SEEK_SET) == 0;
    const int c = ok ? std::fgetc(f) : EOF;
    ok = c != EOF && std::fseek(f, static_cast<long>(offset), SEEK_SET) == 0 &&
         std::fputc(c ^ mask, f) != EOF;
    return std::fclose(f) == 0 && ok;
}

}  // namespace sli::testing

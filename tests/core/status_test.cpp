#include <doctest/doctest.h>

#include <cerrno>

#include "sli/status.h"

using namespace sli;

namespace {
Result<int> half(int x) {
    if (x % 2) return Status::invalidArgument("odd value " + std::to_string(x));
    return x / 2;
}
Status chain(int x, int* out) {
    SLI_ASSIGN_OR_RETURN(int h, half(x));
    SLI_ASSIGN_OR_RETURN(int q, half(h));
    *out = q;
    return Status();
}
}  // namespace

TEST_CASE("an OK status is cheap and reports OK") {
    Status s;
    CHECK(s.isOk());
    CHECK(s.code() == Status::Code::kOk);
    CHECK(s.toString() == "OK");
    CHECK(s.message().empty());
}

TEST_CASE("errno maps to the right kind and keeps the number") {
    auto s = Status::fromErrno(ENOENT, "open /x/model.safetensors");
    CHECK(s.isNotFound());
    CHECK(s.sysErrno() == ENOENT);
    CHECK(s.message().find("/x/model.safetensors") != std::string::npos);
    CHECK(Status::fromErrno(ENOSPC, "write").isResourceExhausted());
    CHECK(Status::fromErrno(EIO, "read").isIOError());
    CHECK(Status::fromErrno(EAGAIN, "read").retryable());
    CHECK_FALSE(Status::fromErrno(EIO, "read").retryable());
}

TEST_CASE("context prefixes the message and copies are deep") {
    Status s = Status::corruption("checksum mismatch");
    Status t = s.withContext("layer 3");
    CHECK(t.isCorruption());
    CHECK(t.toString() == "Corruption: layer 3: checksum mismatch");
    CHECK(s.message() == "checksum mismatch");
    Status u = t;
    CHECK(u.toString() == t.toString());
    CHECK(Status().withContext("x").isOk());
}

TEST_CASE("Result propagates values and errors through the macros") {
    int out = 0;
    CHECK(chain(8, &out).isOk());
    CHECK(out == 2);
    Status s = chain(6, &out);
    CHECK(s.isInvalidArgument());
    CHECK(s.message() == "odd value 3");
    CHECK(Status::cudaError(2, "cudaMalloc").cudaCode() == 2);
}

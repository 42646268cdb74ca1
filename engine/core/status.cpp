#include "sli/status.h"

#include <cerrno>
#include <cstring>

namespace sli {

namespace {
const std::string kEmpty;
}

const std::string& Status::message() const noexcept { return rep_ ? rep_->msg : kEmpty; }

const char* Status::codeName(Code c) noexcept {
    switch (c) {
        case Code::kOk: return "OK";
        case Code::kInvalidArgument: return "InvalidArgument";
        case Code::kNotFound: return "NotFound";
        case Code::kCorruption: return "Corruption";
        case Code::kIOError: return "IOError";
        case Code::kNotSupported: return "NotSupported";
        case Code::kResourceExhausted: return "ResourceExhausted";
        case Code::kInternal: return "Internal";
    }
    return "Unknown";
}

Status Status::ioError(std::string msg, int err) {
    Status s(Code::kIOError, std::move(msg));
    s.rep_->err = err;
    s.rep_->retryable = (err == EAGAIN || err == EINTR || err == EBUSY);
    return s;
}

Status Status::fromErrno(int err, std::string_view what) {
    std::string msg(what);
    msg += ": ";
    msg += std::strerror(err);
    Code code = Code::kIOError;
    switch (err) {
        case ENOENT: code = Code::kNotFound; break;
        case ENOSPC:
        case EDQUOT:
        case EFBIG:
        case ENOMEM: code = Code::kResourceExhausted; break;
        case EINVAL: code = Code::kInvalidArgument; break;
        default: break;
    }
    Status s(code, std::move(msg));
    s.rep_->err = err;
    s.rep_->retryable = (err == EAGAIN || err == EINTR || err == EBUSY);
    return s;
}

Status Status::cudaError(int code, std::string msg) {
    Status s(Code::kInternal, std::move(msg));
    s.rep_->cuda = code;
    return s;
}

std::string Status::toString() const {
    if (isOk()) return "OK";
    std::string out = codeName(rep_->code);
    out += ": ";
    out += rep_->msg;
    return out;
}

Status Status::withContext(std::string_view prefix) const {
    if (isOk()) return Status();
    Status s(*this);
    std::string msg(prefix);
    msg += ": ";
    msg += s.rep_->msg;
    s.rep_->msg = std::move(msg);
    return s;
}

}  // namespace sli

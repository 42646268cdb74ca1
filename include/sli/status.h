// Status and Result<T>: the error currency of the whole library.
//
// A Status is either OK (a null pointer, so returning and testing it is free) or an error
// carrying a Code, a human-readable message that names the file / layer / tensor concerned,
// an optional OS errno or CUDA error code, and a retryable flag (true for transient
// conditions such as EAGAIN that a caller may simply try again).
//
// Result<T> holds either a value or a non-OK Status (GCC 12 has no std::expected).
//
// No exception crosses a module boundary: functions that can fail return Status or Result<T>.
// Both types are value types; they are not thread-safe to mutate concurrently, but distinct
// objects may be used from distinct threads freely.
#pragma once

#include <cassert>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace sli {

class [[nodiscard]] Status {
public:
    enum class Code : unsigned char {
        kOk = 0,
        kInvalidArgument,
        kNotFound,
        kCorruption,
        kIOError,
        kNotSupported,
        kResourceExhausted,
        kInternal,
    };

    Status() noexcept = default;
    Status(const Status& other) : rep_(other.rep_ ? std::make_unique<Rep>(*other.rep_) : nullptr) {}
    Status& operator=(const Status& other) {
        if (this != &other) rep_ = other.rep_ ? std::make_unique<Rep>(*other.rep_) : nullptr;
        return *this;
    }
    Status(Status&&) noexcept = default;
    Status& operator=(Status&&) noexcept = default;

    static Status ok() { return Status(); }
    static Status invalidArgument(std::string msg) { return Status(Code::kInvalidArgument, std::move(msg)); }
    static Status notFound(std::string msg) { return Status(Code::kNotFound, std::move(msg)); }
    static Status corruption(std::string msg) { return Status(Code::kCorruption, std::move(msg)); }
    static Status notSupported(std::string msg) { return Status(Code::kNotSupported, std::move(msg)); }
    static Status resourceExhausted(std::string msg) { return Status(Code::kResourceExhausted, std::move(msg)); }
    static Status internal(std::string msg) { return Status(Code::kInternal, std::move(msg)); }
    // An I/O error; `err` is the positive errno. EAGAIN / EINTR / EBUSY mark it retryable.
    static Status ioError(std::string msg, int err = 0);
    // An error from errno with the strerror text appended: "open /x/y: No such file or directory".
    // ENOENT maps to NotFound, ENOSPC / EDQUOT / EFBIG / ENOMEM to ResourceExhausted,
    // EINVAL to InvalidArgument, everything else to IOError.
    static Status fromErrno(int err, std::string_view what);
    // An error from the CUDA runtime (code is the cudaError_t value).
    static Status cudaError(int code, std::string msg);

    bool isOk() const noexcept { return rep_ == nullptr; }
    explicit operator bool() const noexcept { return isOk(); }
    Code code() const noexcept { return rep_ ? rep_->code : Code::kOk; }
    const std::string& message() const noexcept;
    int sysErrno() const noexcept { return rep_ ? rep_->err : 0; }
    int cudaCode() const noexcept { return rep_ ? rep_->cuda : 0; }
    bool retryable() const noexcept { return rep_ && rep_->retryable; }

    bool isInvalidArgument() const noexcept { return code() == Code::kInvalidArgument; }
    bool isNotFound() const noexcept { return code() == Code::kNotFound; }
    bool isCorruption() const noexcept { return code() == Code::kCorruption; }
    bool isIOError() const noexcept { return code() == Code::kIOError; }
    bool isNotSupported() const noexcept { return code() == Code::kNotSupported; }
    bool isResourceExhausted() const noexcept { return code() == Code::kResourceExhausted; }

    // "Corruption: layer 3 tensor q_proj.weight: checksum mismatch in /cache/x.slc"
    std::string toString() const;
    // Returns a copy whose message is "<prefix>: <message>" (OK stays OK).
    Status withContext(std::string_view prefix) const;

    static const char* codeName(Code c) noexcept;

private:
    struct Rep {
        Code code;
        std::string msg;
        int err = 0;
        int cuda = 0;
        bool retryable = false;
    };
    Status(Code code, std::string msg) : rep_(std::make_unique<Rep>(Rep{code, std::move(msg)})) {}
    std::unique_ptr<Rep> rep_;
};

template <typename T>
class [[nodiscard]] Result {
public:
    Result(T value) : value_(std::move(value)) {}                     // NOLINT: implicit by design
    Result(Status status) : status_(std::move(status)) { assert(!status_.isOk()); }  // NOLINT

    bool isOk() const noexcept { return value_.has_value(); }
    explicit operator bool() const noexcept { return isOk(); }
    const Status& status() const noexcept { return status_; }

    T& value() & { assert(isOk()); return *value_; }
    const T& value() const& { assert(isOk()); return *value_; }
    T&& value() && { assert(isOk()); return std::move(*value_); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    T& operator*() & { return value(); }
    T&& operator*() && { return std::move(*this).value(); }
    const T& operator*() const& { return value(); }

private:
    std::optional<T> value_;
    Status status_;
};

}  // namespace sli

// Propagate a non-OK Status to the caller.
#define SLI_RETURN_IF_ERROR(expr)                  \
    do {                                           \
        ::sli::Status sli_status_ = (expr);        \
        if (!sli_status_.isOk()) return sli_status_; \
    } while (0)

#define SLI_CONCAT_INNER_(a, b) a##b
#define SLI_CONCAT_(a, b) SLI_CONCAT_INNER_(a, b)
// `SLI_ASSIGN_OR_RETURN(auto x, makeX());` declares x from a Result or returns its Status.
#define SLI_ASSIGN_OR_RETURN(decl, expr) \
    SLI_ASSIGN_OR_RETURN_IMPL_(SLI_CONCAT_(sli_result_, __LINE__), decl, expr)
#define SLI_ASSIGN_OR_RETURN_IMPL_(tmp, decl, expr) \
    auto tmp = (expr);                              \
    if (!tmp.isOk()) return tmp.status();           \
    decl = std::move(tmp).value()

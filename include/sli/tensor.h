// Tensors: owning storage, non-owning views, and layers.
//
// AlignedBuffer owns a 64-byte-aligned byte array (move-only). Tensor owns an AlignedBuffer
// plus its name, shape and dtype. TensorView describes the same thing without owning the bytes
// (the caller keeps them alive). Layer is an ordered set of named tensors: the C++ stand-in for
// an nn.Module's state dict (insertion order is kept; names are unique).
//
// None of these types is internally synchronized: share them across threads read-only.
// Fallible construction goes through factories returning Result (a shape whose element count
// overflows, or an allocation that fails, is an error, not an exception).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "sli/dtype.h"
#include "sli/status.h"

namespace sli {

inline constexpr size_t kTensorAlignment = 64;

class AlignedBuffer {
public:
    AlignedBuffer() noexcept = default;
    ~AlignedBuffer();
    AlignedBuffer(AlignedBuffer&& other) noexcept;
    AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
    AlignedBuffer(const AlignedBuffer&) = delete;
    AlignedBuffer& operator=(const AlignedBuffer&) = delete;

    // Allocates `size` bytes (zero-filled when `zero`). ResourceExhausted when memory is short.
    static Result<AlignedBuffer> allocate(size_t size, bool zero = true);
    // A non-owning buffer over memory the caller keeps alive (pooled engine outputs).
    static AlignedBuffer borrow(void* data, size_t size) noexcept;
    bool owned() const noexcept { return owned_; }
    // Deep copy.
    Result<AlignedBuffer> clone() const;

    uint8_t* data() noexcept { return data_; }
    const uint8_t* data() const noexcept { return data_; }
    size_t size() const noexcept { return size_; }
    bool empty() const noexcept { return size_ == 0; }
    std::span<uint8_t> bytes() noexcept { return {data_, size_}; }
    std::span<const uint8_t> bytes() const noexcept { return {data_, size_}; }
    template <typename T>
    T* as() noexcept { return reinterpret_cast<T*>(data_); }
    template <typename T>
    const T* as() const noexcept { return reinterpret_cast<const T*>(data_); }

private:
    uint8_t* data_ = nullptr;
    size_t size_ = 0;
    bool owned_ = true;
};

// Number of elements of `shape`, or an InvalidArgument naming `what` on a negative dimension
// or on overflow of int64.
Result<int64_t> shapeNumel(std::span<const int64_t> shape, std::string_view what = "tensor");
// "[4096, 11008]"
std::string shapeToString(std::span<const int64_t> shape);

struct TensorView {
    std::string_view name;
    std::span<const int64_t> shape;
    DType dtype = DType::kF32;
    const void* data = nullptr;
    size_t nbytes = 0;

    int64_t numel() const;
};

class Tensor {
public:
    Tensor() = default;
    Tensor(Tensor&&) noexcept = default;
    Tensor& operator=(Tensor&&) noexcept = default;

    // Zero-filled tensor. InvalidArgument on a bad shape, ResourceExhausted on allocation failure.
    static Result<Tensor> zeros(std::string name, std::vector<int64_t> shape, DType dtype);
    // Copies `bytes`, which must be exactly numel * dtypeSize bytes (InvalidArgument otherwise).
    static Result<Tensor> fromBytes(std::string name, std::vector<int64_t> shape, DType dtype,
                                    std::span<const uint8_t> bytes);
    // A tensor over `data` (numel * dtypeSize bytes) that the caller owns and keeps alive
    // longer than the tensor; no copy. InvalidArgument on a bad shape.
    static Result<Tensor> borrowed(std::string name, std::vector<int64_t> shape, DType dtype,
                                   void* data);
    // Copies f32 values, converting to `dtype` (f32 / f16 / bf16) with round-to-nearest-even.
    static Result<Tensor> fromFloats(std::string name, std::vector<int64_t> shape, DType dtype,
                                     std::span<const float> values);
    Result<Tensor> clone() const;

    const std::string& name() const noexcept { return name_; }
    void setName(std::string name) { name_ = std::move(name); }
    const std::vector<int64_t>& shape() const noexcept { return shape_; }
    DType dtype() const noexcept { return dtype_; }
    int64_t numel() const noexcept { return numel_; }
    size_t nbytes() const noexcept { return storage_.size(); }
    uint8_t* data() noexcept { return storage_.data(); }
    const uint8_t* data() const noexcept { return storage_.data(); }
    template <typename T>
    T* as() noexcept { return storage_.as<T>(); }
    template <typename T>
    const T* as() const noexcept { return storage_.as<T>(); }
    TensorView view() const { return {name_, shape_, dtype_, storage_.data(), storage_.size()}; }

    // Element i widened to f32 (f32 / f16 / bf16 / f64 / integer dtypes). For tests and tools.
    float at(int64_t i) const;
    // All elements widened to f32 (InvalidArgument for dtypes that are not numeric).
    Result<std::vector<float>> toFloats() const;

private:
    std::string name_;
    std::vector<int64_t> shape_;
    DType dtype_ = DType::kF32;
    int64_t numel_ = 0;
    AlignedBuffer storage_;
};

// Widens `n` elements of `src` (f32 / f16 / bf16 / f64 / any integer dtype) to f32 exactly
// where f32 can hold them. InvalidArgument for bool / f8 (not numeric here).
Status convertToF32(DType src, const void* in, int64_t n, float* out);
// Narrows f32 to f32 / f16 / bf16 with round-to-nearest-even.
Status convertFromF32(const float* in, int64_t n, DType dst, void* out);

class Layer {
public:
    Layer() = default;
    explicit Layer(std::string name) : name_(std::move(name)) {}
    Layer(Layer&&) noexcept = default;
    Layer& operator=(Layer&&) noexcept = default;

    const std::string& name() const noexcept { return name_; }
    void setName(std::string name) { name_ = std::move(name); }

    // Appends a tensor; InvalidArgument if a tensor of that name is already present.
    Status add(Tensor t);
    size_t size() const noexcept { return tensors_.size(); }
    bool empty() const noexcept { return tensors_.empty(); }
    Tensor& operator[](size_t i) { return tensors_[i]; }
    const Tensor& operator[](size_t i) const { return tensors_[i]; }
    // nullptr when absent.
    const Tensor* find(std::string_view name) const;
    Tensor* find(std::string_view name);
    std::vector<Tensor>::iterator begin() { return tensors_.begin(); }
    std::vector<Tensor>::iterator end() { return tensors_.end(); }
    std::vector<Tensor>::const_iterator begin() const { return tensors_.begin(); }
    std::vector<Tensor>::const_iterator end() const { return tensors_.end(); }
    size_t nbytes() const;

private:
    std::string name_;
    std::vector<Tensor> tensors_;
};

}  // namespace sli

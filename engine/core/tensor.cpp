#include "sli/tensor.h"

#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

namespace sli {

AlignedBuffer::~AlignedBuffer() {
    if (owned_) std::free(data_);
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(other.data_), size_(other.size_), owned_(other.owned_) {
    other.data_ = nullptr;
    other.size_ = 0;
    other.owned_ = true;
}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
    if (this != &other) {
        if (owned_) std::free(data_);
        data_ = other.data_;
        size_ = other.size_;
        owned_ = other.owned_;
        other.data_ = nullptr;
        other.size_ = 0;
        other.owned_ = true;
    }
    return *this;
}

AlignedBuffer AlignedBuffer::borrow(void* data, size_t size) noexcept {
    AlignedBuffer b;
    b.data_ = static_cast<uint8_t*>(data);
    b.size_ = size;
    b.owned_ = false;
    return b;
}

Result<AlignedBuffer> AlignedBuffer::allocate(size_t size, bool zero) {
    AlignedBuffer b;
    if (size == 0) return b;
    if (size > std::numeric_limits<size_t>::max() - kTensorAlignment) {
        return Status::resourceExhausted("allocation of " + std::to_string(size) + " bytes");
    }
    const size_t rounded = (size + kTensorAlignment - 1) / kTensorAlignment * kTensorAlignment;
    void* p = std::aligned_alloc(kTensorAlignment, rounded);
    if (p == nullptr) {
        return Status::resourceExhausted("cannot allocate " + std::to_string(size) + " bytes");
    }
    if (zero) std::memset(p, 0, rounded);
    b.data_ = static_cast<uint8_t*>(p);
    b.size_ = size;
    return b;
}

Result<AlignedBuffer> AlignedBuffer::clone() const {
    SLI_ASSIGN_OR_RETURN(AlignedBuffer b, allocate(size_, false));
    if (size_) std::memcpy(b.data_, data_, size_);
    return b;
}

Result<int64_t> shapeNumel(std::span<const int64_t> shape, std::string_view what) {
    int64_t n = 1;
    for (int64_t d : shape) {
        if (d < 0) {
            return Status::invalidArgument(std::string(what) + ": negative dimension in shape " +
                                           shapeToString(shape));
        }
        if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) {
            return Status::invalidArgument(std::string(what) + ": element count of shape " +
                                           shapeToString(shape) + " overflows");
        }
        n *= d;
    }
    return n;
}

std::string shapeToString(std::span<const int64_t> shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    return s + "]";
}

int64_t TensorView::numel() const {
    auto r = shapeNumel(shape);
    return r.isOk() ? *r : -1;
}

namespace {
// Element count of `shape`, checked so that its byte size fits in size_t.
Result<int64_t> checkedNumel(const std::string& name, const std::vector<int64_t>& shape, DType dtype) {
    SLI_ASSIGN_OR_RETURN(int64_t n, shapeNumel(shape, name));
    if (n != 0 && static_cast<uint64_t>(n) > std::numeric_limits<size_t>::max() / dtypeSize(dtype)) {
        return Status::invalidArgument(name + ": byte size of shape " + shapeToString(shape) +
                                       " overflows");
    }
    return n;
}
}  // namespace

Result<Tensor> Tensor::zeros(std::string name, std::vector<int64_t> shape, DType dtype) {
    SLI_ASSIGN_OR_RETURN(int64_t n, checkedNumel(name, shape, dtype));
    auto buf = AlignedBuffer::allocate(static_cast<size_t>(n) * dtypeSize(dtype), true);
    if (!buf.isOk()) return buf.status().withContext(name);
    Tensor t;
    t.name_ = std::move(name);
    t.shape_ = std::move(shape);
    t.dtype_ = dtype;
    t.numel_ = n;
    t.storage_ = std::move(buf).value();
    return t;
}

Result<Tensor> Tensor::borrowed(std::string name, std::vector<int64_t> shape, DType dtype,
                                void* data) {
    SLI_ASSIGN_OR_RETURN(int64_t n, checkedNumel(name, shape, dtype));
    Tensor t;
    t.name_ = std::move(name);
    t.shape_ = std::move(shape);
    t.dtype_ = dtype;
    t.numel_ = n;
    t.storage_ = AlignedBuffer::borrow(data, static_cast<size_t>(n) * dtypeSize(dtype));
    return t;
}

Result<Tensor> Tensor::fromBytes(std::string name, std::vector<int64_t> shape, DType dtype,
                                 std::span<const uint8_t> bytes) {
    SLI_ASSIGN_OR_RETURN(Tensor t, zeros(std::move(name), std::move(shape), dtype));
    if (bytes.size() != t.nbytes()) {
        return Status::invalidArgument(t.name() + ": " + std::to_string(bytes.size()) +
                                       " bytes do not match shape " + shapeToString(t.shape()) +
                                       " of " + dtypeName(dtype) + " (" +
                                       std::to_string(t.nbytes()) + " bytes)");
    }
    if (!bytes.empty()) std::memcpy(t.data(), bytes.data(), bytes.size());
    return t;
}

Result<Tensor> Tensor::fromFloats(std::string name, std::vector<int64_t> shape, DType dtype,
                                  std::span<const float> values) {
    if (!dtypeIsCompute(dtype)) {
        return Status::invalidArgument(name + ": fromFloats needs f32, f16 or bf16, not " +
                                       dtypeName(dtype));
    }
    SLI_ASSIGN_OR_RETURN(Tensor t, zeros(std::move(name), std::move(shape), dtype));
    if (static_cast<int64_t>(values.size()) != t.numel()) {
        return Status::invalidArgument(t.name() + ": " + std::to_string(values.size()) +
                                       " values do not match shape " + shapeToString(t.shape()));
    }
    SLI_RETURN_IF_ERROR(convertFromF32(values.data(), t.numel(), dtype, t.data()));
    return t;
}

Result<Tensor> Tensor::clone() const {
    return fromBytes(name_, shape_, dtype_, storage_.bytes());
}

float Tensor::at(int64_t i) const {
    float v = 0.0f;
    (void)convertToF32(dtype_, storage_.data() + i * dtypeSize(dtype_), 1, &v);
    return v;
}

Result<std::vector<float>> Tensor::toFloats() const {
    std::vector<float> out(static_cast<size_t>(numel_));
    SLI_RETURN_IF_ERROR(convertToF32(dtype_, storage_.data(), numel_, out.data()).withContext(name_));
    return out;
}

namespace {
template <typename T>
void widen(const void* in, int64_t n, float* out) {
    const T* p = static_cast<const T*>(in);
    for (int64_t i = 0; i < n; ++i) {
        T v;
        std::memcpy(&v, p + i, sizeof(T));  // source may be unaligned (safetensors)
        out[i] = static_cast<float>(v);
    }
}
}  // namespace

Status convertToF32(DType src, const void* in, int64_t n, float* out) {
    const auto* b = static_cast<const uint8_t*>(in);
    switch (src) {
        case DType::kF32:
            // memcpy with a null pointer is undefined even for 0 bytes (empty tensors).
            if (n > 0) std::memcpy(out, in, static_cast<size_t>(n) * 4);
            return Status();
        case DType::kF16:
            for (int64_t i = 0; i < n; ++i) {
                uint16_t h;
                std::memcpy(&h, b + 2 * i, 2);
                out[i] = f16ToF32(h);
            }
            return Status();
        case DType::kBF16:
            for (int64_t i = 0; i < n; ++i) {
                uint16_t h;
                std::memcpy(&h, b + 2 * i, 2);
                out[i] = bf16ToF32(h);
            }
            return Status();
        case DType::kF64: widen<double>(in, n, out); return Status();
        case DType::kU8: widen<uint8_t>(in, n, out); return Status();
        case DType::kI8: widen<int8_t>(in, n, out); return Status();
        case DType::kI16: widen<int16_t>(in, n, out); return Status();
        case DType::kU16: widen<uint16_t>(in, n, out); return Status();
        case DType::kI32: widen<int32_t>(in, n, out); return Status();
        case DType::kU32: widen<uint32_t>(in, n, out); return Status();
        case DType::kI64: widen<int64_t>(in, n, out); return Status();
        case DType::kU64: widen<uint64_t>(in, n, out); return Status();
        default: break;
    }
    return Status::invalidArgument(std::string("cannot convert ") + dtypeName(src) + " to f32");
}

Status convertFromF32(const float* in, int64_t n, DType dst, void* out) {
    auto* b = static_cast<uint8_t*>(out);
    switch (dst) {
        case DType::kF32:
            // memcpy with a null pointer is undefined even for 0 bytes (empty tensors).
            if (n > 0) std::memcpy(out, in, static_cast<size_t>(n) * 4);
            return Status();
        case DType::kF16:
            for (int64_t i = 0; i < n; ++i) {
                const uint16_t h = f32ToF16(in[i]);
                std::memcpy(b + 2 * i, &h, 2);
            }
            return Status();
        case DType::kBF16:
            for (int64_t i = 0; i < n; ++i) {
                const uint16_t h = f32ToBf16(in[i]);
                std::memcpy(b + 2 * i, &h, 2);
            }
            return Status();
        default: break;
    }
    return Status::invalidArgument(std::string("cannot convert f32 to ") + dtypeName(dst));
}

Status Layer::add(Tensor t) {
    if (find(t.name()) != nullptr) {
        return Status::invalidArgument("layer " + name_ + ": duplicate tensor " + t.name());
    }
    tensors_.push_back(std::move(t));
    return Status();
}

const Tensor* Layer::find(std::string_view name) const {
    for (const auto& t : tensors_) {
        if (t.name() == name) return &t;
    }
    return nullptr;
}

Tensor* Layer::find(std::string_view name) {
    for (auto& t : tensors_) {
        if (t.name() == name) return &t;
    }
    return nullptr;
}

size_t Layer::nbytes() const {
    size_t n = 0;
    for (const auto& t : tensors_) n += t.nbytes();
    return n;
}

}  // namespace sli

// RingQueue<T>: a growable FIFO over one power-of-two array, for the read scheduler's internal
// queues. Unlike std::deque it stops allocating once it has grown to its working size, so a
// steady stream of reads allocates nothing. Internal to io/; not thread-safe.
#pragma once

#include <cassert>
#include <cstddef>
#include <utility>
#include <vector>

namespace sli::io {

template <typename T>
class RingQueue {
public:
    explicit RingQueue(size_t capacity = 16) { reserve(capacity); }

    bool empty() const noexcept { return size_ == 0; }
    size_t size() const noexcept { return size_; }
    T& front() noexcept { assert(size_ > 0); return buf_[head_]; }
    T& operator[](size_t i) noexcept { return buf_[(head_ + i) & mask_]; }

    void push_back(T v) {
        if (size_ == buf_.size()) grow();
        buf_[(head_ + size_) & mask_] = std::move(v);
        ++size_;
    }
    void push_front(T v) {
        if (size_ == buf_.size()) grow();
        head_ = (head_ + buf_.size() - 1) & mask_;
        buf_[head_] = std::move(v);
        ++size_;
    }
    T pop_front() {
        assert(size_ > 0);
        T v = std::move(buf_[head_]);
        head_ = (head_ + 1) & mask_;
        --size_;
        return v;
    }
    void clear() {
        while (size_ > 0) (void)pop_front();
        head_ = 0;
    }
    void reserve(size_t capacity) {
        size_t c = 1;
        while (c < capacity) c <<= 1;
        if (c > buf_.size()) regrow(c);
    }

private:
    void grow() { regrow(buf_.empty() ? 16 : buf_.size() * 2); }
    void regrow(size_t c) {
        std::vector<T> next(c);
        for (size_t i = 0; i < size_; ++i) next[i] = std::move(buf_[(head_ + i) & mask_]);
        buf_ = std::move(next);
        head_ = 0;
        mask_ = c - 1;
    }

    std::vector<T> buf_;
    size_t head_ = 0;
    size_t size_ = 0;
    size_t mask_ = 0;
};

}  // namespace sli::io

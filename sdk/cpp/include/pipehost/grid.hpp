// Zero-copy views of shared memory: View<T> (a C++17 stand-in for std::span)
// and GridView<T> (a row-major grid). Views of inputs have a const element
// type: the memory is mapped read-only and sealed, and writing through a
// cast faults the process. Views of outputs are valid until the run function
// returns; the SDK unmaps them then.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace pipehost {

template <class T>
class View {
 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;

  constexpr View() = default;
  constexpr View(T* data, size_t size) : data_(data), size_(size) {}
  template <class U, class = std::enable_if_t<std::is_convertible_v<U (*)[], T (*)[]>>>
  constexpr View(const View<U>& other) : data_(other.data()), size_(other.size()) {}

  constexpr T* data() const { return data_; }
  constexpr size_t size() const { return size_; }
  constexpr bool empty() const { return size_ == 0; }
  constexpr T& operator[](size_t i) const { return data_[i]; }
  constexpr T* begin() const { return data_; }
  constexpr T* end() const { return data_ + size_; }
  constexpr View subview(size_t offset, size_t count) const { return View(data_ + offset, count); }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

template <class T>
class GridView {
 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;

  constexpr GridView() = default;
  constexpr GridView(T* data, size_t width, size_t height, unsigned level = 0)
      : data_(data), width_(width), height_(height), level_(level) {}
  template <class U, class = std::enable_if_t<std::is_convertible_v<U (*)[], T (*)[]>>>
  constexpr GridView(const GridView<U>& other)
      : data_(other.data()), width_(other.width()), height_(other.height()), level_(other.level()) {}

  constexpr T* data() const { return data_; }
  constexpr size_t width() const { return width_; }
  constexpr size_t height() const { return height_; }
  constexpr size_t size() const { return width_ * height_; }
  // level is the pyramid level the grid belongs to (0 = native).
  constexpr unsigned level() const { return level_; }

  // at is the element at column x, row y, bounds-checked.
  T& at(size_t x, size_t y) const {
    if (x >= width_ || y >= height_) {
      throw std::out_of_range("GridView::at(" + std::to_string(x) + ", " + std::to_string(y) +
                              ") outside a " + std::to_string(width_) + "x" + std::to_string(height_) +
                              " grid");
    }
    return data_[y * width_ + x];
  }
  // operator() is at without the check.
  constexpr T& operator()(size_t x, size_t y) const { return data_[y * width_ + x]; }
  // operator[] indexes cells row-major: i = y * width + x.
  constexpr T& operator[](size_t i) const { return data_[i]; }
  constexpr View<T> row(size_t y) const { return View<T>(data_ + y * width_, width_); }
  constexpr View<T> cells() const { return View<T>(data_, size()); }
  constexpr T* begin() const { return data_; }
  constexpr T* end() const { return data_ + size(); }

 private:
  T* data_ = nullptr;
  size_t width_ = 0;
  size_t height_ = 0;
  unsigned level_ = 0;
};

}  // namespace pipehost

#pragma once
/// A value or an error_info (C++20 has no std::expected). Used at library boundaries.
#include <exception>
#include <utility>
#include <variant>

#include "common/errors.hpp"

namespace tokenmill {

template <class T>
class result {
 public:
  result(T value) : v_(std::move(value)) {}
  result(error_info err) : v_(std::move(err)) {}
  bool ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return ok(); }
  T& value() { return std::get<T>(v_); }
  const T& value() const { return std::get<T>(v_); }
  T& operator*() { return value(); }
  const T& operator*() const { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const error_info& error() const { return std::get<error_info>(v_); }

 private:
  std::variant<T, error_info> v_;
};

/// Success without a value, or an error_info: for operations that only can fail (writers,
/// checks). Default-constructed (or `{}`) it is success.
template <>
class result<void> {
 public:
  result() = default;
  result(error_info err) : err_(std::move(err)) {}
  bool ok() const { return !err_; }
  explicit operator bool() const { return ok(); }
  /// The error; only meaningful when !ok().
  const error_info& error() const { return err_; }

 private:
  error_info err_;  ///< errc::ok on success
};

/// Calls `f` (which returns a result) and turns an exception it lets out into an error_info
/// with `code` and the exception's message. For the one place where a library boundary
/// converts what its implementation throws (std::bad_alloc, a CUDA error) into a value.
template <class F>
auto catch_into_result(errc code, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::exception& e) {
    return error_info{code, e.what()};
  } catch (...) {
    return error_info{code, "unknown exception"};
  }
}

}  // namespace tokenmill

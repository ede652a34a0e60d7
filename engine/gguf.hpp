#pragma once
/// GGUF (llama.cpp's model file format, versions 2 and 3): a memory-mapped reader that
/// validates every length, count and offset against the file size (gguf.cpp), and a
/// writer (gguf_writer.cpp).
///
/// Layout (little-endian): "GGUF", u32 version, u64 tensor count, u64 metadata count,
/// metadata (string key, u32 value type, value), tensor infos (string name, u32 n_dims,
/// u64 ne[n_dims], u32 ggml type, u64 offset into the data section), padding to
/// `general.alignment` (default 32), then the tensor data. Strings are a u64 byte length
/// followed by the bytes (no terminator). `ne[0]` is the innermost (column) dimension.
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.hpp"
#include "engine/mapped_file.hpp"
#include "engine/tensor.hpp"

namespace tokenmill {

/// GGUF metadata value types (the u32 stored before each value).
enum class gguf_type : uint32_t {
  u8 = 0,
  i8 = 1,
  u16 = 2,
  i16 = 3,
  u32 = 4,
  i32 = 5,
  f32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  u64 = 10,
  i64 = 11,
  f64 = 12,
};

/// "u8", "i32", "string", "array", ... ("unknown" for values outside the enum).
std::string_view gguf_type_name(gguf_type t);

/// One metadata value. Scalars fill the field matching their type; arrays fill the vector
/// matching their element type (nested arrays fill `items`).
struct gguf_value {
  gguf_type type = gguf_type::u8;
  gguf_type elem_type = gguf_type::u8;  ///< arrays only
  uint64_t u = 0;                       ///< u8, u16, u32, u64, bool (0 or 1)
  int64_t i = 0;                        ///< i8, i16, i32, i64
  double f = 0;                         ///< f32, f64
  std::string str;                      ///< string
  std::vector<int64_t> ints;            ///< arrays of integers or bools (u64 beyond INT64_MAX wrap)
  std::vector<double> floats;           ///< arrays of f32 / f64
  std::vector<std::string> strings;     ///< arrays of strings
  std::vector<gguf_value> items;        ///< arrays of arrays

  bool is_array() const { return type == gguf_type::array; }
  /// The value as an unsigned integer: unsigned types, or signed ones that are >= 0.
  std::optional<uint64_t> as_uint() const;
  /// The value as a signed integer: signed types, or unsigned ones <= INT64_MAX.
  std::optional<int64_t> as_int() const;
  /// f32 and f64 values (integers are not floats).
  std::optional<double> as_float() const;
  std::optional<bool> as_bool() const;
  /// Number of elements of an array (0 for scalars).
  size_t array_size() const;
};

/// One tensor's description from the header.
struct gguf_tensor_info {
  std::string name;
  std::vector<uint64_t> ne;  ///< dimensions, innermost (columns) first; 1 to 4 of them
  uint32_t ggml_type = 0;  ///< as stored: 0 f32, 1 f16, 2 q4_0, 3 q4_1, 6 q5_0, 7 q5_1, 8 q8_0, 12
                           ///< q4_k, 13 q5_k, 14 q6_k, 30 bf16
  dtype type = dtype::f32;
  uint64_t offset = 0;  ///< bytes from the start of the data section
  uint64_t bytes = 0;   ///< size of the data
  const std::byte* data = nullptr;

  /// Rows (product of ne[1..]) and columns (ne[0]), as a tensor_view with this name.
  tensor_view view() const;
};

/// A parsed GGUF file. Tensor data stays in the mapping; `mapping()` keeps it alive.
class gguf_file {
 public:
  /// Maps and parses `path`. Every error (errc::invalid_model) reads "<path>: <what>",
  /// naming the metadata key or tensor at fault. Never throws.
  static result<gguf_file> open(const std::string& path);

  /// The path the file was opened with (used in error messages).
  const std::string& path() const { return path_; }
  /// 2 or 3.
  uint32_t version() const { return version_; }
  /// Data alignment in bytes (`general.alignment`, default 32).
  uint64_t alignment() const { return alignment_; }
  /// File offset of the tensor data section.
  uint64_t data_offset() const { return data_offset_; }

  /// Metadata in file order.
  const std::vector<std::pair<std::string, gguf_value>>& metadata() const { return kv_; }
  /// The value under `key`, or nullptr.
  const gguf_value* find(std::string_view key) const;

  /// Tensors in file order.
  const std::vector<gguf_tensor_info>& tensors() const { return tensors_; }
  /// The tensor named `name`, or nullptr.
  const gguf_tensor_info* find_tensor(std::string_view name) const;

  /// Typed getters for loaders: the value under `key` converted to the wanted type; an
  /// absent key gives `fallback` when there is one, else an error naming the key; a value
  /// of the wrong type (or out of range) gives an error naming the key and its type.
  result<uint32_t> get_u32(std::string_view key, std::optional<uint32_t> fallback = {}) const;
  result<int32_t> get_i32(std::string_view key, std::optional<int32_t> fallback = {}) const;
  /// Accepts f32 and f64 values.
  result<float> get_f32(std::string_view key, std::optional<float> fallback = {}) const;
  result<bool> get_bool(std::string_view key, std::optional<bool> fallback = {}) const;
  result<std::string> get_string(std::string_view key,
                                 std::optional<std::string> fallback = {}) const;
  /// An array of strings (absent: error unless `optional`, then empty).
  result<std::vector<std::string>> get_strings(std::string_view key, bool optional = false) const;
  /// An array of f32/f64 (absent: error unless `optional`, then empty).
  result<std::vector<float>> get_f32s(std::string_view key, bool optional = false) const;
  /// An array of integers (absent: error unless `optional`, then empty).
  result<std::vector<int32_t>> get_i32s(std::string_view key, bool optional = false) const;

  /// The mapping the tensor data points into.
  const std::shared_ptr<const mapped_file>& mapping() const { return map_; }

  /// An error_info{errc::invalid_model, "<path>: <what>"}.
  error_info error(std::string_view what) const;

 private:
  friend class gguf_parser;
  std::string path_;
  std::shared_ptr<const mapped_file> map_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, gguf_value>> kv_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<gguf_tensor_info> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

/// Writes GGUF v3 files: metadata in insertion order (setting a key again replaces its
/// value in place), then tensors, each aligned to 32 bytes.
class gguf_writer {
 public:
  void set_u32(std::string key, uint32_t v);
  void set_i32(std::string key, int32_t v);
  void set_u64(std::string key, uint64_t v);
  void set_f32(std::string key, float v);
  void set_bool(std::string key, bool v);
  void set_string(std::string key, std::string v);
  void set_strings(std::string key, std::vector<std::string> v);
  void set_f32s(std::string key, std::vector<float> v);
  void set_i32s(std::string key, std::vector<int32_t> v);
  /// shape in GGUF order: ne0 (= cols, innermost) first. `data` must hold exactly
  /// row_bytes(type, ne0) * ne1 * ... bytes (checked by write()).
  void add_tensor(std::string name, dtype type, std::vector<uint64_t> shape,
                  std::vector<std::byte> data);
  /// Writes metadata in insertion order, tensors aligned to 32. Errors: errc::invalid_model
  /// naming the tensor that cannot be written (nothing is written then), errc::invalid_request
  /// naming `path` when it cannot be written.
  result<void> write(const std::string& path) const;

 private:
  struct tensor {
    std::string name;
    dtype type;
    std::vector<uint64_t> shape;
    std::vector<std::byte> data;
  };
  void set(std::string key, std::vector<std::byte> encoded);
  /// key -> type tag and value, already encoded.
  std::vector<std::pair<std::string, std::vector<std::byte>>> kv_;
  std::vector<tensor> tensors_;
};

/// GGML type number of `t` (see gguf_tensor_info::ggml_type).
uint32_t ggml_type_of(dtype t);

}  // namespace tokenmill

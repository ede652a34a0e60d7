#pragma once
/// safetensors (Hugging Face's weight format): a memory-mapped reader that validates the
/// JSON header against the file, and a writer.
///
/// Layout: u64 little-endian header length N, N bytes of JSON (an object: tensor name ->
/// {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional "__metadata__"
/// object of strings), then the data; offsets are relative to the end of the header.
/// Shapes are in PyTorch order, outermost first ([out, in] for a linear weight).
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"
#include "engine/mapped_file.hpp"
#include "engine/tensor.hpp"

namespace tokenmill {

/// One tensor of a safetensors file.
struct safetensors_tensor {
  std::string name;
  dtype type = dtype::f32;
  std::vector<uint64_t> shape;  ///< outermost first, as in the file
  uint64_t begin = 0;           ///< data offsets, relative to the end of the header
  uint64_t end = 0;
  const std::byte* data = nullptr;

  /// cols = the last dimension, rows = the product of the others (1 for vectors).
  tensor_view view() const;
};

/// A parsed safetensors file. Tensor data stays in the mapping; `mapping()` keeps it alive.
class safetensors_file {
 public:
  /// Maps and parses `path`. Supported dtypes: F32, F16, BF16; anything else is an error
  /// naming the tensor and the dtype. Errors (errc::invalid_model) read "<path>: <what>".
  /// Never throws.
  static result<safetensors_file> open(const std::string& path);

  /// The path the file was opened with (used in error messages).
  const std::string& path() const { return path_; }
  /// Tensors in the order of the JSON header (sorted by name as the parser gives them).
  const std::vector<safetensors_tensor>& tensors() const { return tensors_; }
  /// The tensor named `name`, or nullptr.
  const safetensors_tensor* find(std::string_view name) const;
  /// The "__metadata__" entries.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// The mapping the tensor data points into.
  const std::shared_ptr<const mapped_file>& mapping() const { return map_; }

 private:
  std::string path_;
  std::shared_ptr<const mapped_file> map_;
  std::vector<safetensors_tensor> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

/// Writes safetensors files: tensors laid out in insertion order, the header padded with
/// spaces to a multiple of 8 bytes so that the data is aligned.
class safetensors_writer {
 public:
  /// shape in HF order: rows first, e.g. [out, in]. q8_0 is not a safetensors dtype.
  void add_tensor(std::string name, dtype type, std::vector<uint64_t> shape,
                  std::vector<std::byte> data);
  /// An entry of "__metadata__".
  void set_metadata(std::string key, std::string value);
  /// Errors: errc::invalid_model naming the tensor that cannot be written (nothing is
  /// written then), errc::invalid_request naming `path` when it cannot be written.
  result<void> write(const std::string& path) const;

 private:
  struct tensor {
    std::string name;
    dtype type;
    std::vector<uint64_t> shape;
    std::vector<std::byte> data;
  };
  std::vector<tensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace tokenmill

#include "engine/gguf.hpp"

#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>

namespace tokenmill {

// ---------------------------------------------------------------------------------------
// values

std::string_view gguf_type_name(gguf_type t) {
  switch (t) {
    case gguf_type::u8:
      return "u8";
    case gguf_type::i8:
      return "i8";
    case gguf_type::u16:
      return "u16";
    case gguf_type::i16:
      return "i16";
    case gguf_type::u32:
      return "u32";
    case gguf_type::i32:
      return "i32";
    case gguf_type::f32:
      return "f32";
    case gguf_type::boolean:
      return "bool";
    case gguf_type::string:
      return "string";
    case gguf_type::array:
      return "array";
    case gguf_type::u64:
      return "u64";
    case gguf_type::i64:
      return "i64";
    case gguf_type::f64:
      return "f64";
  }
  return "unknown";
}

namespace {

bool is_unsigned(gguf_type t) {
  return t == gguf_type::u8 || t == gguf_type::u16 || t == gguf_type::u32 || t == gguf_type::u64;
}
bool is_signed(gguf_type t) {
  return t == gguf_type::i8 || t == gguf_type::i16 || t == gguf_type::i32 || t == gguf_type::i64;
}
bool is_float(gguf_type t) {
  return t == gguf_type::f32 || t == gguf_type::f64;
}

/// Bytes of one scalar of type `t` (0 for strings and arrays, whose size varies).
size_t scalar_size(gguf_type t) {
  switch (t) {
    case gguf_type::u8:
    case gguf_type::i8:
    case gguf_type::boolean:
      return 1;
    case gguf_type::u16:
    case gguf_type::i16:
      return 2;
    case gguf_type::u32:
    case gguf_type::i32:
    case gguf_type::f32:
      return 4;
    case gguf_type::u64:
    case gguf_type::i64:
    case gguf_type::f64:
      return 8;
    case gguf_type::string:
    case gguf_type::array:
      return 0;
  }
  return 0;
}

bool known_type(uint32_t t) {
  return t <= static_cast<uint32_t>(gguf_type::f64);
}

/// "an array of string", "u32", ... for error messages.
std::string describe(const gguf_value& v) {
  if (v.is_array()) return "array of " + std::string(gguf_type_name(v.elem_type));
  return std::string(gguf_type_name(v.type));
}

std::optional<dtype> dtype_of_ggml(uint32_t t) {
  switch (t) {
    case 0:
      return dtype::f32;
    case 1:
      return dtype::f16;
    case 2:
      return dtype::q4_0;
    case 3:
      return dtype::q4_1;
    case 6:
      return dtype::q5_0;
    case 7:
      return dtype::q5_1;
    case 8:
      return dtype::q8_0;
    case 12:
      return dtype::q4_k;
    case 13:
      return dtype::q5_k;
    case 14:
      return dtype::q6_k;
    case 30:
      return dtype::bf16;
    default:
      return std::nullopt;
  }
}

/// "Q4_K" for "q4_k": GGML's spelling, for messages about file contents.
std::string upper(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

/// Thrown inside the parser only; open() turns it into an error value.
struct parse_error {
  std::string what;
};

}  // namespace

std::optional<uint64_t> gguf_value::as_uint() const {
  if (is_unsigned(type)) return u;
  if (is_signed(type) && i >= 0) return static_cast<uint64_t>(i);
  return std::nullopt;
}

std::optional<int64_t> gguf_value::as_int() const {
  if (is_signed(type)) return i;
  if (is_unsigned(type) && u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return static_cast<int64_t>(u);
  return std::nullopt;
}

std::optional<double> gguf_value::as_float() const {
  if (is_float(type)) return f;
  return std::nullopt;
}

std::optional<bool> gguf_value::as_bool() const {
  if (type == gguf_type::boolean) return u != 0;
  return std::nullopt;
}

size_t gguf_value::array_size() const {
  if (!is_array()) return 0;
  return ints.size() + floats.size() + strings.size() + items.size();
}

tensor_view gguf_tensor_info::view() const {
  tensor_view v;
  v.name = name;
  v.type = type;
  v.cols = ne.empty() ? 1 : ne[0];
  v.rows = 1;
  for (size_t d = 1; d < ne.size(); ++d)
    v.rows *= ne[d];
  v.data = data;
  return v;
}

uint32_t ggml_type_of(dtype t) {
  switch (t) {
    case dtype::f32:
      return 0;
    case dtype::f16:
      return 1;
    case dtype::q8_0:
      return 8;
    case dtype::bf16:
      return 30;
    case dtype::q4_0:
      return 2;
    case dtype::q4_1:
      return 3;
    case dtype::q5_0:
      return 6;
    case dtype::q5_1:
      return 7;
    case dtype::q4_k:
      return 12;
    case dtype::q5_k:
      return 13;
    case dtype::q6_k:
      return 14;
  }
  return 0;
}

// ---------------------------------------------------------------------------------------
// parser

class gguf_parser {
 public:
  gguf_parser(gguf_file& file) : f_(file), p_(file.map_->data()), size_(file.map_->size()) {}

  void parse() {
    if (size_ < 4) fail("file too small for a GGUF header (" + std::to_string(size_) + " bytes)");
    if (std::memcmp(p_, "GGUF", 4) != 0) fail("bad magic (not a GGUF file)");
    pos_ = 4;
    f_.version_ = read_u32("version");
    if (f_.version_ != 2 && f_.version_ != 3)
      fail("unsupported GGUF version " + std::to_string(f_.version_) + " (2 and 3 are)");
    uint64_t n_tensors = read_u64("tensor count");
    uint64_t n_kv = read_u64("metadata count");
    // Each metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor
    // info at least 8 + 4 + 8 + 4 + 8. Larger counts cannot fit in the file.
    if (n_kv > remaining() / 13)
      fail("metadata count " + std::to_string(n_kv) + " does not fit in the file");
    if (n_tensors > remaining() / 32)
      fail("tensor count " + std::to_string(n_tensors) + " does not fit in the file");

    f_.kv_.reserve(n_kv);
    for (uint64_t k = 0; k < n_kv; ++k) {
      std::string key = read_string("metadata key #" + std::to_string(k));
      uint32_t t = read_u32("type of metadata key '" + key + "'");
      if (!known_type(t))
        fail("metadata key '" + key + "': unknown value type " + std::to_string(t));
      gguf_value v = read_value(static_cast<gguf_type>(t), key, 0);
      if (f_.kv_index_.count(key)) fail("metadata key '" + key + "' appears twice");
      f_.kv_index_.emplace(key, f_.kv_.size());
      f_.kv_.emplace_back(std::move(key), std::move(v));
    }

    if (const gguf_value* a = f_.find("general.alignment")) {
      auto al = a->as_uint();
      if (a->type != gguf_type::u32 || !al)
        fail("metadata key 'general.alignment' has type " + describe(*a) + ", expected u32");
      if (*al == 0 || (*al & (*al - 1)) != 0)
        fail("metadata key 'general.alignment' is " + std::to_string(*al) + ", not a power of two");
      f_.alignment_ = *al;
    }

    f_.tensors_.reserve(n_tensors);
    for (uint64_t t = 0; t < n_tensors; ++t)
      f_.tensors_.push_back(read_tensor_info(t));

    uint64_t al = f_.alignment_;
    uint64_t data_off = pos_ + (al - pos_ % al) % al;
    f_.data_offset_ = data_off;
    for (auto& ti : f_.tensors_) {
      std::string tn = "tensor '" + ti.name + "'";
      if (ti.offset % al != 0)
        fail(tn + ": data offset " + std::to_string(ti.offset) + " is not aligned to " +
             std::to_string(al));
      if (data_off > size_ || ti.offset > size_ - data_off ||
          ti.bytes > size_ - data_off - ti.offset)
        fail(tn + ": data (" + std::to_string(ti.bytes) + " bytes at offset " +
             std::to_string(ti.offset) + ") extends past the end of the file");
      ti.data = p_ + data_off + ti.offset;
      if (f_.tensor_index_.count(ti.name)) fail(tn + " appears twice");
      f_.tensor_index_.emplace(ti.name, &ti - f_.tensors_.data());
    }
  }

 private:
  [[noreturn]] void fail(std::string what) { throw parse_error{std::move(what)}; }

  size_t remaining() const { return size_ - pos_; }

  void need(size_t n, const std::string& what) {
    if (n > remaining())
      fail("truncated at offset " + std::to_string(pos_) + " reading " + what + " (" +
           std::to_string(n) + " bytes wanted, " + std::to_string(remaining()) + " left)");
  }

  template <class T>
  T read_raw(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));  // the file is little-endian, like our hosts
    pos_ += sizeof(T);
    return v;
  }
  uint32_t read_u32(const std::string& what) { return read_raw<uint32_t>(what); }
  uint64_t read_u64(const std::string& what) { return read_raw<uint64_t>(what); }

  std::string read_string(const std::string& what) {
    uint64_t n = read_u64("length of " + what);
    if (n > remaining())
      fail(what + ": string length " + std::to_string(n) + " extends past the end of the file");
    std::string s(reinterpret_cast<const char*>(p_ + pos_), n);
    pos_ += n;
    return s;
  }

  /// One scalar of type `t` into `v`.
  void read_scalar(gguf_type t, gguf_value& v, const std::string& what) {
    switch (t) {
      case gguf_type::u8:
        v.u = read_raw<uint8_t>(what);
        break;
      case gguf_type::i8:
        v.i = read_raw<int8_t>(what);
        break;
      case gguf_type::u16:
        v.u = read_raw<uint16_t>(what);
        break;
      case gguf_type::i16:
        v.i = read_raw<int16_t>(what);
        break;
      case gguf_type::u32:
        v.u = read_raw<uint32_t>(what);
        break;
      case gguf_type::i32:
        v.i = read_raw<int32_t>(what);
        break;
      case gguf_type::u64:
        v.u = read_raw<uint64_t>(what);
        break;
      case gguf_type::i64:
        v.i = read_raw<int64_t>(what);
        break;
      case gguf_type::f32:
        v.f = read_raw<float>(what);
        break;
      case gguf_type::f64:
        v.f = read_raw<double>(what);
        break;
      case gguf_type::boolean: {
        uint8_t b = read_raw<uint8_t>(what);
        if (b > 1) fail(what + ": bool value " + std::to_string(b) + " is neither 0 nor 1");
        v.u = b;
        break;
      }
      case gguf_type::string:
        v.str = read_string(what);
        break;
      case gguf_type::array:
        break;  // handled by read_value
    }
  }

  gguf_value read_value(gguf_type t, const std::string& key, int depth) {
    std::string what = "metadata key '" + key + "'";
    gguf_value v;
    v.type = t;
    if (t != gguf_type::array) {
      read_scalar(t, v, what);
      return v;
    }
    if (depth >= 4) fail(what + ": arrays nested too deeply");
    uint32_t et = read_u32("element type of " + what);
    if (!known_type(et)) fail(what + ": unknown array element type " + std::to_string(et));
    v.elem_type = static_cast<gguf_type>(et);
    uint64_t n = read_u64("array length of " + what);
    size_t min_elem = v.elem_type == gguf_type::string  ? 8
                      : v.elem_type == gguf_type::array ? 12
                                                        : scalar_size(v.elem_type);
    if (n > remaining() / min_elem)
      fail(what + ": array length " + std::to_string(n) + " extends past the end of the file");
    if (v.elem_type == gguf_type::array) {
      v.items.reserve(n);
      for (uint64_t k = 0; k < n; ++k)
        v.items.push_back(read_value(v.elem_type, key, depth + 1));
    } else if (v.elem_type == gguf_type::string) {
      v.strings.reserve(n);
      for (uint64_t k = 0; k < n; ++k)
        v.strings.push_back(read_string(what));
    } else if (is_float(v.elem_type)) {
      v.floats.reserve(n);
      gguf_value e;
      for (uint64_t k = 0; k < n; ++k) {
        read_scalar(v.elem_type, e, what);
        v.floats.push_back(e.f);
      }
    } else {
      v.ints.reserve(n);
      gguf_value e;
      for (uint64_t k = 0; k < n; ++k) {
        read_scalar(v.elem_type, e, what);
        v.ints.push_back(is_signed(v.elem_type) ? e.i : static_cast<int64_t>(e.u));
      }
    }
    return v;
  }

  gguf_tensor_info read_tensor_info(uint64_t index) {
    gguf_tensor_info ti;
    ti.name = read_string("name of tensor #" + std::to_string(index));
    std::string tn = "tensor '" + ti.name + "'";
    uint32_t n_dims = read_u32("dimension count of " + tn);
    if (n_dims == 0 || n_dims > 4)
      fail(tn + ": " + std::to_string(n_dims) + " dimensions (1 to 4 are allowed)");
    uint64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t n = read_u64("dimensions of " + tn);
      if (n > (uint64_t{1} << 62) || (n != 0 && elements > (uint64_t{1} << 62) / n))
        fail(tn + ": dimension " + std::to_string(n) + " is too large");
      elements *= n;
      ti.ne.push_back(n);
    }
    ti.ggml_type = read_u32("type of " + tn);
    auto dt = dtype_of_ggml(ti.ggml_type);
    if (!dt)
      fail(tn + ": unsupported tensor type " + std::to_string(ti.ggml_type) +
           " (supported: 0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 6 Q5_0, 7 Q5_1, 8 Q8_0, 12 Q4_K, 13 Q5_K, "
           "14 Q6_K, 30 BF16)");
    ti.type = *dt;
    ti.offset = read_u64("data offset of " + tn);
    if (ti.ne[0] % block_elems(ti.type) != 0)
      fail(tn + ": " + upper(dtype_name(ti.type)) + " row of " + std::to_string(ti.ne[0]) +
           " elements is not a multiple of its block size " + std::to_string(block_elems(ti.type)));
    uint64_t cols = ti.ne[0];
    uint64_t rows = cols == 0 ? 0 : elements / cols;
    uint64_t rb = row_bytes(ti.type, cols);
    ti.bytes = rows * rb;  // elements < 2^62 and at most 4 bytes each: no overflow
    return ti;
  }

  gguf_file& f_;
  const std::byte* p_;
  size_t size_;
  size_t pos_ = 0;
};

// ---------------------------------------------------------------------------------------
// gguf_file

result<gguf_file> gguf_file::open(const std::string& path) {
  try {
    auto map = mapped_file::open(path);
    if (!map) return map.error();
    gguf_file f;
    f.path_ = path;
    f.map_ = *map;
    try {
      gguf_parser(f).parse();
    } catch (const parse_error& e) {
      return f.error(e.what);
    }
    return f;
  } catch (const std::bad_alloc&) {
    return error_info{errc::invalid_model, path + ": out of memory while parsing"};
  } catch (const std::exception& e) {
    return error_info{errc::invalid_model, path + ": " + e.what()};
  } catch (...) {
    return error_info{errc::invalid_model, path + ": unexpected error while parsing"};
  }
}

error_info gguf_file::error(std::string_view what) const {
  return error_info{errc::invalid_model, path_ + ": " + std::string(what)};
}

const gguf_value* gguf_file::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const gguf_tensor_info* gguf_file::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

std::string key_missing(std::string_view key) {
  return "metadata key '" + std::string(key) + "' is missing";
}
std::string key_type(std::string_view key, const gguf_value& v, std::string_view expected) {
  return "metadata key '" + std::string(key) + "' has type " + describe(v) + ", expected " +
         std::string(expected);
}

}  // namespace

result<uint32_t> gguf_file::get_u32(std::string_view key, std::optional<uint32_t> fallback) const {
  const gguf_value* v = find(key);
  if (!v) {
    if (fallback) return *fallback;
    return error(key_missing(key));
  }
  auto u = v->as_uint();
  if (!u) {
    if (v->as_int()) return error("metadata key '" + std::string(key) + "' is negative");
    return error(key_type(key, *v, "an unsigned integer"));
  }
  if (*u > std::numeric_limits<uint32_t>::max())
    return error("metadata key '" + std::string(key) + "' is " + std::to_string(*u) +
                 ", out of range");
  return static_cast<uint32_t>(*u);
}

result<int32_t> gguf_file::get_i32(std::string_view key, std::optional<int32_t> fallback) const {
  const gguf_value* v = find(key);
  if (!v) {
    if (fallback) return *fallback;
    return error(key_missing(key));
  }
  auto i = v->as_int();
  if (!i) return error(key_type(key, *v, "an integer"));
  if (*i < std::numeric_limits<int32_t>::min() || *i > std::numeric_limits<int32_t>::max())
    return error("metadata key '" + std::string(key) + "' is " + std::to_string(*i) +
                 ", out of range");
  return static_cast<int32_t>(*i);
}

result<float> gguf_file::get_f32(std::string_view key, std::optional<float> fallback) const {
  const gguf_value* v = find(key);
  if (!v) {
    if (fallback) return *fallback;
    return error(key_missing(key));
  }
  auto f = v->as_float();
  if (!f) return error(key_type(key, *v, "f32"));
  return static_cast<float>(*f);
}

result<bool> gguf_file::get_bool(std::string_view key, std::optional<bool> fallback) const {
  const gguf_value* v = find(key);
  if (!v) {
    if (fallback) return *fallback;
    return error(key_missing(key));
  }
  auto b = v->as_bool();
  if (!b) return error(key_type(key, *v, "bool"));
  return *b;
}

result<std::string> gguf_file::get_string(std::string_view key,
                                          std::optional<std::string> fallback) const {
  const gguf_value* v = find(key);
  if (!v) {
    if (fallback) return std::move(*fallback);
    return error(key_missing(key));
  }
  if (v->type != gguf_type::string) return error(key_type(key, *v, "string"));
  return v->str;
}

result<std::vector<std::string>> gguf_file::get_strings(std::string_view key, bool optional) const {
  const gguf_value* v = find(key);
  if (!v) {
    if (optional) return std::vector<std::string>{};
    return error(key_missing(key));
  }
  if (!v->is_array() || v->elem_type != gguf_type::string)
    return error(key_type(key, *v, "array of string"));
  return v->strings;
}

result<std::vector<float>> gguf_file::get_f32s(std::string_view key, bool optional) const {
  const gguf_value* v = find(key);
  if (!v) {
    if (optional) return std::vector<float>{};
    return error(key_missing(key));
  }
  if (!v->is_array() || !is_float(v->elem_type)) return error(key_type(key, *v, "array of f32"));
  return std::vector<float>(v->floats.begin(), v->floats.end());
}

result<std::vector<int32_t>> gguf_file::get_i32s(std::string_view key, bool optional) const {
  const gguf_value* v = find(key);
  if (!v) {
    if (optional) return std::vector<int32_t>{};
    return error(key_missing(key));
  }
  if (!v->is_array() || !(is_signed(v->elem_type) || is_unsigned(v->elem_type)))
    return error(key_type(key, *v, "array of i32"));
  std::vector<int32_t> out;
  out.reserve(v->ints.size());
  for (int64_t x : v->ints) {
    if (x < std::numeric_limits<int32_t>::min() || x > std::numeric_limits<int32_t>::max())
      return error("metadata key '" + std::string(key) + "': element " + std::to_string(x) +
                   " is out of range");
    out.push_back(static_cast<int32_t>(x));
  }
  return out;
}

}  // namespace tokenmill

#include "engine/safetensors.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>

#include <nlohmann/json.hpp>

namespace tokenmill {

namespace {

using json = nlohmann::json;

/// The safetensors specification caps the header at 100 MB.
constexpr uint64_t max_header_bytes = 100'000'000;

std::optional<dtype> dtype_of_name(std::string_view s) {
  if (s == "F32") return dtype::f32;
  if (s == "F16") return dtype::f16;
  if (s == "BF16") return dtype::bf16;
  return std::nullopt;
}

std::string_view name_of_dtype(dtype t) {
  switch (t) {
    case dtype::f32:
      return "F32";
    case dtype::f16:
      return "F16";
    case dtype::bf16:
      return "BF16";
    default:  // block formats have no safetensors dtype
      break;
  }
  return "";
}

size_t elem_bytes(dtype t) {
  return t == dtype::f32 ? 4 : 2;
}

std::string json_type(const json& j) {
  return j.type_name();
}

/// Thrown inside the parser only; open() turns it into an error value.
struct parse_error {
  std::string what;
};

[[noreturn]] void fail(std::string what) {
  throw parse_error{std::move(what)};
}

}  // namespace

tensor_view safetensors_tensor::view() const {
  tensor_view v;
  v.name = name;
  v.type = type;
  v.cols = shape.empty() ? 1 : shape.back();
  v.rows = 1;
  for (size_t d = 0; d + 1 < shape.size(); ++d)
    v.rows *= shape[d];
  v.data = data;
  return v;
}

result<safetensors_file> safetensors_file::open(const std::string& path) {
  try {
    auto map = mapped_file::open(path);
    if (!map) return map.error();
    safetensors_file f;
    f.path_ = path;
    f.map_ = *map;
    const std::byte* p = f.map_->data();
    const uint64_t size = f.map_->size();
    try {
      if (size < 8)
        fail("file too small for a safetensors header (" + std::to_string(size) + " bytes)");
      uint64_t n = 0;
      std::memcpy(&n, p, 8);
      if (n > max_header_bytes)
        fail("header length " + std::to_string(n) + " is larger than the 100 MB limit");
      if (n > size - 8)
        fail("header length " + std::to_string(n) + " extends past the end of the file");
      const char* hp = reinterpret_cast<const char*>(p + 8);
      json header = json::parse(hp, hp + n, nullptr, /*allow_exceptions=*/false);
      if (header.is_discarded()) fail("header is not valid JSON");
      if (!header.is_object()) fail("header is a JSON " + json_type(header) + ", not an object");
      const uint64_t data_size = size - 8 - n;
      const std::byte* data = p + 8 + n;

      for (auto it = header.begin(); it != header.end(); ++it) {
        const std::string& name = it.key();
        const json& e = it.value();
        if (name == "__metadata__") {
          if (!e.is_object()) fail("'__metadata__' is a JSON " + json_type(e) + ", not an object");
          for (auto m = e.begin(); m != e.end(); ++m) {
            if (!m.value().is_string())
              fail("'__metadata__' key '" + m.key() + "' is a JSON " + json_type(m.value()) +
                   ", not a string");
            f.metadata_.emplace(m.key(), m.value().get<std::string>());
          }
          continue;
        }
        std::string tn = "tensor '" + name + "'";
        if (!e.is_object()) fail(tn + ": entry is a JSON " + json_type(e) + ", not an object");
        auto dt = e.find("dtype");
        if (dt == e.end()) fail(tn + ": key 'dtype' is missing");
        if (!dt->is_string()) fail(tn + ": key 'dtype' is a JSON " + json_type(*dt));
        std::string dts = dt->get<std::string>();
        auto type = dtype_of_name(dts);
        if (!type) fail(tn + ": unsupported dtype '" + dts + "' (supported: F32, F16, BF16)");

        auto sh = e.find("shape");
        if (sh == e.end()) fail(tn + ": key 'shape' is missing");
        if (!sh->is_array()) fail(tn + ": key 'shape' is a JSON " + json_type(*sh));
        safetensors_tensor t;
        t.name = name;
        t.type = *type;
        uint64_t elements = 1;
        for (const auto& d : *sh) {
          if (!d.is_number_unsigned())
            fail(tn + ": key 'shape' holds " + d.dump() + ", not a non-negative integer");
          uint64_t v = d.get<uint64_t>();
          if (v > (uint64_t{1} << 62) || (v != 0 && elements > (uint64_t{1} << 62) / v))
            fail(tn + ": shape dimension " + std::to_string(v) + " is too large");
          elements *= v;
          t.shape.push_back(v);
        }

        auto off = e.find("data_offsets");
        if (off == e.end()) fail(tn + ": key 'data_offsets' is missing");
        if (!off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
            !(*off)[1].is_number_unsigned())
          fail(tn + ": key 'data_offsets' is " + off->dump() + ", not [begin, end]");
        t.begin = (*off)[0].get<uint64_t>();
        t.end = (*off)[1].get<uint64_t>();
        if (t.begin > t.end)
          fail(tn + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
               "] are reversed");
        if (t.end > data_size)
          fail(tn + ": data [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
               ") extends past the end of the file (" + std::to_string(data_size) + " data bytes)");
        // 2^62 F32 elements would be 2^64 bytes, which wraps to 0 and matched empty offsets.
        if (elements > (uint64_t{1} << 62) / elem_bytes(t.type))
          fail(tn + ": shape holds " + std::to_string(elements) +
               " elements, too large for any file");
        uint64_t want = elements * elem_bytes(t.type);
        if (t.end - t.begin != want)
          fail(tn + ": data_offsets span " + std::to_string(t.end - t.begin) +
               " bytes, shape and dtype need " + std::to_string(want));
        t.data = data + t.begin;
        f.index_.emplace(t.name, f.tensors_.size());
        f.tensors_.push_back(std::move(t));
      }
    } catch (const parse_error& e) {
      return error_info{errc::invalid_model, path + ": " + e.what};
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

const safetensors_tensor* safetensors_file::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void safetensors_writer::add_tensor(std::string name, dtype type, std::vector<uint64_t> shape,
                                    std::vector<std::byte> data) {
  tensors_.push_back(tensor{std::move(name), type, std::move(shape), std::move(data)});
}

void safetensors_writer::set_metadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

result<void> safetensors_writer::write(const std::string& path) const {
  auto bad = [](std::string what) { return error_info{errc::invalid_model, std::move(what)}; };
  auto io = [&](const char* what) {
    return error_info{errc::invalid_request, path + ": " + what + ": " + std::strerror(errno)};
  };
  try {
    json header = json::object();
    uint64_t off = 0;
    for (const auto& t : tensors_) {
      if (is_block_dtype(t.type))
        return bad("tensor '" + t.name + "': " + std::string(dtype_name(t.type)) +
                   " is not a safetensors dtype");
      if (t.name == "__metadata__") return bad("tensor name '__metadata__' is reserved");
      if (header.contains(t.name)) return bad("tensor '" + t.name + "' added twice");
      uint64_t elements = 1;
      for (uint64_t d : t.shape)
        elements *= d;
      uint64_t want = elements * elem_bytes(t.type);
      if (t.data.size() != want)
        return bad("tensor '" + t.name + "': " + std::to_string(t.data.size()) +
                   " bytes of data, expected " + std::to_string(want));
      header[t.name] = {{"dtype", std::string(name_of_dtype(t.type))},
                        {"shape", t.shape},
                        {"data_offsets", {off, off + want}}};
      off += want;
    }
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::string text = header.dump();
    text.resize((text.size() + 7) / 8 * 8, ' ');

    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) return io("cannot open for writing");
    uint64_t n = text.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& t : tensors_)
      out.write(reinterpret_cast<const char*>(t.data.data()),
                static_cast<std::streamsize>(t.data.size()));
    out.flush();
    if (!out) return io("write failed");
    return {};
  } catch (const std::exception& e) {
    return error_info{errc::internal, path + ": " + e.what()};
  }
}

}  // namespace tokenmill

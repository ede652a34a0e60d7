/// gguf_writer (declared in engine/gguf.hpp): GGUF v3 files from metadata and tensors.
#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/gguf.hpp"

namespace tokenmill {

namespace {

template <class T>
void put(std::vector<std::byte>& out, T v) {
  size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

void put_string(std::vector<std::byte>& out, std::string_view s) {
  put<uint64_t>(out, s.size());
  const auto* b = reinterpret_cast<const std::byte*>(s.data());
  out.insert(out.end(), b, b + s.size());
}

std::vector<std::byte> tagged(gguf_type t) {
  std::vector<std::byte> out;
  put<uint32_t>(out, static_cast<uint32_t>(t));
  return out;
}

std::vector<std::byte> array_header(gguf_type elem, uint64_t n) {
  auto out = tagged(gguf_type::array);
  put<uint32_t>(out, static_cast<uint32_t>(elem));
  put<uint64_t>(out, n);
  return out;
}

}  // namespace

void gguf_writer::set(std::string key, std::vector<std::byte> encoded) {
  for (auto& [k, v] : kv_) {
    if (k == key) {
      v = std::move(encoded);
      return;
    }
  }
  kv_.emplace_back(std::move(key), std::move(encoded));
}

void gguf_writer::set_u32(std::string key, uint32_t v) {
  auto e = tagged(gguf_type::u32);
  put(e, v);
  set(std::move(key), std::move(e));
}

void gguf_writer::set_i32(std::string key, int32_t v) {
  auto e = tagged(gguf_type::i32);
  put(e, v);
  set(std::move(key), std::move(e));
}

void gguf_writer::set_u64(std::string key, uint64_t v) {
  auto e = tagged(gguf_type::u64);
  put(e, v);
  set(std::move(key), std::move(e));
}

void gguf_writer::set_f32(std::string key, float v) {
  auto e = tagged(gguf_type::f32);
  put(e, v);
  set(std::move(key), std::move(e));
}

void gguf_writer::set_bool(std::string key, bool v) {
  auto e = tagged(gguf_type::boolean);
  put<uint8_t>(e, v ? 1 : 0);
  set(std::move(key), std::move(e));
}

void gguf_writer::set_string(std::string key, std::string v) {
  auto e = tagged(gguf_type::string);
  put_string(e, v);
  set(std::move(key), std::move(e));
}

void gguf_writer::set_strings(std::string key, std::vector<std::string> v) {
  auto e = array_header(gguf_type::string, v.size());
  for (const auto& s : v)
    put_string(e, s);
  set(std::move(key), std::move(e));
}

void gguf_writer::set_f32s(std::string key, std::vector<float> v) {
  auto e = array_header(gguf_type::f32, v.size());
  for (float x : v)
    put(e, x);
  set(std::move(key), std::move(e));
}

void gguf_writer::set_i32s(std::string key, std::vector<int32_t> v) {
  auto e = array_header(gguf_type::i32, v.size());
  for (int32_t x : v)
    put(e, x);
  set(std::move(key), std::move(e));
}

void gguf_writer::add_tensor(std::string name, dtype type, std::vector<uint64_t> shape,
                             std::vector<std::byte> data) {
  tensors_.push_back(tensor{std::move(name), type, std::move(shape), std::move(data)});
}

result<void> gguf_writer::write(const std::string& path) const {
  constexpr uint64_t align = 32;
  auto bad = [](std::string what) { return error_info{errc::invalid_model, std::move(what)}; };
  auto io = [&](const char* what) {
    return error_info{errc::invalid_request, path + ": " + what + ": " + std::strerror(errno)};
  };
  try {
    // Validate and lay out the tensors first, so nothing is written for a bad model.
    std::vector<uint64_t> offsets;
    uint64_t off = 0;
    for (const auto& t : tensors_) {
      if (t.shape.empty() || t.shape.size() > 4)
        return bad("tensor '" + t.name + "': " + std::to_string(t.shape.size()) +
                   " dimensions (1 to 4 are allowed)");
      if (t.shape[0] % block_elems(t.type) != 0)
        return bad("tensor '" + t.name + "': " + std::string(dtype_name(t.type)) +
                   " rows must be a multiple of " + std::to_string(block_elems(t.type)));
      uint64_t rows = 1;
      for (size_t d = 1; d < t.shape.size(); ++d)
        rows *= t.shape[d];
      uint64_t want = rows * row_bytes(t.type, t.shape[0]);
      if (t.data.size() != want)
        return bad("tensor '" + t.name + "': " + std::to_string(t.data.size()) +
                   " bytes of data, expected " + std::to_string(want));
      offsets.push_back(off);
      off += (want + align - 1) / align * align;
    }

    std::vector<std::byte> head;
    head.insert(head.end(), {std::byte{'G'}, std::byte{'G'}, std::byte{'U'}, std::byte{'F'}});
    put<uint32_t>(head, 3);
    put<uint64_t>(head, tensors_.size());
    put<uint64_t>(head, kv_.size());
    for (const auto& [k, v] : kv_) {
      put_string(head, k);
      head.insert(head.end(), v.begin(), v.end());
    }
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const auto& t = tensors_[i];
      put_string(head, t.name);
      put<uint32_t>(head, static_cast<uint32_t>(t.shape.size()));
      for (uint64_t n : t.shape)
        put<uint64_t>(head, n);
      put<uint32_t>(head, ggml_type_of(t.type));
      put<uint64_t>(head, offsets[i]);
    }
    head.resize((head.size() + align - 1) / align * align, std::byte{0});

    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) return io("cannot open for writing");
    out.write(reinterpret_cast<const char*>(head.data()),
              static_cast<std::streamsize>(head.size()));
    static const char zeros[align] = {};
    for (const auto& t : tensors_) {
      out.write(reinterpret_cast<const char*>(t.data.data()),
                static_cast<std::streamsize>(t.data.size()));
      size_t pad = (align - t.data.size() % align) % align;
      out.write(zeros, static_cast<std::streamsize>(pad));
    }
    out.flush();
    if (!out) return io("write failed");
    return {};
  } catch (const std::exception& e) {
    return error_info{errc::internal, path + ": " + e.what()};
  }
}

}  // namespace tokenmill

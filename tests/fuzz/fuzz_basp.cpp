/// libFuzzer target: the control port's frame check (cluster/basp_frame.hpp) on an
/// arbitrary byte stream from a peer. The first byte picks how the stream is cut into
/// feed() calls (chunk size 1..256), so frames split across reads are covered too. Once a
/// feed is rejected, nothing more is fed, as the control gate closes the connection.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "cluster/basp_frame.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tokenmill;
  if (size == 0) return 0;
  const size_t chunk = size_t{data[0]} + 1;
  std::span<const uint8_t> rest(data + 1, size - 1);
  // Small limits so the fuzzer can reach the size checks with small inputs.
  basp_inbound_check check(basp_limits{.max_handshake_payload = 64, .max_payload = 4096});
  std::vector<uint8_t> out;
  while (!rest.empty()) {
    auto n = std::min(chunk, rest.size());
    auto why = check.feed(rest.first(n), out);
    rest = rest.subspan(n);
    if (!why.empty()) break;
  }
  if (size - 1 >= basp_header_size) {
    auto h =
        parse_basp_header(std::span<const uint8_t, basp_header_size>(data + 1, basp_header_size));
    auto bytes = serialize_basp_header(h);
    if (!std::equal(bytes.begin(), bytes.end(), data + 1)) __builtin_trap();
  }
  return 0;
}

#include "actors/router/clock_shift.hpp"

namespace tokenmill {

int64_t clock_shift(const std::vector<int64_t>& offsets, uint32_t from, uint32_t to) {
  auto off = [&](uint32_t n) { return n < offsets.size() ? offsets[n] : int64_t{0}; };
  return off(from) - off(to);
}

trace on_local_clock(const trace& tr, const std::vector<int64_t>& offsets, uint32_t self_node) {
  trace out = tr;
  for (auto& h : out.hops)
    h.t_ns += clock_shift(offsets, h.node, self_node);
  return out;
}

}  // namespace tokenmill

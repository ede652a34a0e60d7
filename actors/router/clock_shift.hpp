#pragma once
/// Clock shifts, free of CAF (STYLE.md §2): the supervisor estimates each node's steady
/// clock offset from its own; the router moves times stamped on other nodes onto its own
/// clock (the frontend beside it stamps on the same one) before it measures with them.
#include <cstdint>
#include <vector>

#include "common/trace.hpp"

namespace tokenmill {

/// What to add to a time stamped on node `from` (ns) to put it on node `to`'s clock:
/// offsets[from] - offsets[to], where a node without an estimate counts as offset 0.
int64_t clock_shift(const std::vector<int64_t>& offsets, uint32_t from, uint32_t to);

/// `tr` with every hop moved onto node `self_node`'s clock.
trace on_local_clock(const trace& tr, const std::vector<int64_t>& offsets, uint32_t self_node);

}  // namespace tokenmill

#pragma once
/// The check every engine makes before it touches a caller's block pool: the pool must have
/// been made for this engine's KV layout.
#include <string_view>

#include "common/result.hpp"
#include "engine/kv_layout.hpp"

namespace tokenmill::detail {

/// Ok when `pool` and `engine` agree in every dimension and the element size; else
/// invalid_request naming `who` ("cpu engine") and both layouts.
result<void> check_layout_match(const kv_layout& pool, const kv_layout& engine,
                                std::string_view who);

}  // namespace tokenmill::detail

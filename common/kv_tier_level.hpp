#pragma once
/// Where a worker holds a KV block (DESIGN.md §4): its pool, which the engine computes on,
/// or a level of its second tier (engine/kv_tier.hpp), from which it is copied back before
/// use. Shared by the tier, the workers' events and the kv-store's index.
#include <cstdint>
#include <string_view>

namespace tokenmill {

enum class kv_tier_level : uint8_t { pool = 0, host = 1, disk = 2 };

/// "pool", "host" or "disk".
inline std::string_view kv_tier_name(kv_tier_level t) {
  switch (t) {
    case kv_tier_level::pool:
      return "pool";
    case kv_tier_level::host:
      return "host";
    case kv_tier_level::disk:
      return "disk";
  }
  return "?";
}

}  // namespace tokenmill

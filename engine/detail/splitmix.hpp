#pragma once
/// SplitMix64, the deterministic generator behind make-model's weights and vocabulary
/// filler and the sim engine's KV contents: one definition, so they cannot drift apart.
#include <cstdint>

namespace tokenmill::detail {

/// Advances `state` and returns the next 64 random bits (Steele, Lea, Flood 2014).
inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace tokenmill::detail

#include "frontend/auth_throttle.hpp"

#include <algorithm>
#include <cmath>

namespace tokenmill {

auth_throttle::auth_throttle(auth_throttle_config cfg) : cfg_(cfg) {
  cfg_.burst = std::max(1.0, cfg_.burst);
  cfg_.refill_per_s = std::max(1e-6, cfg_.refill_per_s);
  cfg_.max_addresses = std::max<size_t>(1, cfg_.max_addresses);
}

double auth_throttle::tokens_at(const bucket& b, clock::time_point now) const {
  const double elapsed = std::chrono::duration<double>(now - b.updated).count();
  return std::min(cfg_.burst, b.tokens + std::max(0.0, elapsed) * cfg_.refill_per_s);
}

uint32_t auth_throttle::blocked_for(std::string_view address, clock::time_point now) const {
  std::lock_guard lock{mutex_};
  auto it = buckets_.find(std::string(address));
  if (it == buckets_.end()) return 0;
  const double tokens = tokens_at(it->second, now);
  if (tokens >= 1) return 0;
  const double wait_s = (1 - tokens) / cfg_.refill_per_s;
  return static_cast<uint32_t>(std::max(1.0, std::ceil(wait_s)));
}

void auth_throttle::failed(std::string_view address, clock::time_point now) {
  std::lock_guard lock{mutex_};
  std::string key(address);
  auto it = buckets_.find(key);
  if (it == buckets_.end()) {
    if (buckets_.size() >= cfg_.max_addresses) evict(now);
    it = buckets_.emplace(std::move(key), bucket{cfg_.burst, now}).first;
  }
  auto& b = it->second;
  b.tokens = std::max(0.0, tokens_at(b, now) - 1);
  b.updated = now;
}

void auth_throttle::evict(clock::time_point now) {
  // Refilled buckets are as good as absent.
  for (auto it = buckets_.begin(); it != buckets_.end();)
    it = tokens_at(it->second, now) >= cfg_.burst ? buckets_.erase(it) : std::next(it);
  if (buckets_.size() < cfg_.max_addresses) return;
  auto oldest = std::min_element(
      buckets_.begin(), buckets_.end(),
      [](const auto& a, const auto& b) { return a.second.updated < b.second.updated; });
  buckets_.erase(oldest);
}

size_t auth_throttle::size() const {
  std::lock_guard lock{mutex_};
  return buckets_.size();
}

}  // namespace tokenmill

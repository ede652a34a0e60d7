#pragma once
/// Slows down guessing API keys (issue 18): failed logins (RPC) and wrong Bearer keys (HTTP)
/// from one peer address drain a token bucket; an address whose bucket is empty is refused
/// before its key is even looked at, until the bucket refills. CAF-free and kj/Asio-free
/// (STYLE.md §2): both frontends ask it, tests call it with their own clock.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace tokenmill {

struct auth_throttle_config {
  /// Failed attempts an address may make in a row before it is refused.
  double burst = 10;
  /// Failed attempts forgiven per second: the sustained rate of guesses an address gets.
  double refill_per_s = 0.5;
  /// Addresses tracked at once. When full, addresses whose bucket has refilled are
  /// forgotten first, then the one whose last failure is oldest.
  size_t max_addresses = 4096;
};

/// A token bucket of failed authentications per peer address. Thread-safe: the HTTP and the
/// RPC server share one.
class auth_throttle {
 public:
  using clock = std::chrono::steady_clock;

  explicit auth_throttle(auth_throttle_config cfg = {});

  /// 0 when `address` may try to authenticate at `now`; else the seconds (rounded up, at
  /// least 1) until it may, during which its attempts are refused unchecked.
  uint32_t blocked_for(std::string_view address, clock::time_point now) const;

  /// `address` failed to authenticate at `now`: one token less.
  void failed(std::string_view address, clock::time_point now);

  /// Addresses tracked now.
  size_t size() const;

 private:
  struct bucket {
    double tokens = 0;
    clock::time_point updated;
  };
  /// `b`'s tokens at `now` (refilled since its last update, at most burst).
  double tokens_at(const bucket& b, clock::time_point now) const;
  /// Makes room for one more address (the caller holds mutex_).
  void evict(clock::time_point now);

  auth_throttle_config cfg_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, bucket> buckets_;
};

}  // namespace tokenmill

#pragma once
/// The router's prefill backlog, free of CAF (STYLE.md §2): prompt tokens sent to prefill
/// workers and not prefilled yet, per worker and in all: the tokens each will compute, not
/// the prefix it reuses from its cache or fetches from a peer (computed_tokens in
/// routing_policy.hpp). Admission bounds the total
/// (admission_limits::max_queued_prompt_tokens) and the choice of prefill worker weighs
/// each worker's share (plan_route). One entry per request whose current attempt waits
/// on a remote prefill.
#include <cstdint>
#include <optional>
#include <unordered_map>

#include "common/ids.hpp"

namespace tokenmill {

class prefill_backlog {
 public:
  /// Request `id` (the client's id) now waits on prefill worker `worker`, which computes
  /// `tokens` tokens of its prompt. A previous entry of `id` is released first.
  void add(request_id id, worker_id worker, uint32_t tokens);

  /// Takes request `id`'s prompt out of the backlog: its first token arrived, it ended or
  /// it moves. A no-op when it has no entry.
  void release(request_id id);

  /// The prefill worker request `id` waits on, if any.
  std::optional<worker_id> worker_of(request_id id) const;

  /// Prompt tokens queued at `worker` (0 for a worker with none or one forgotten).
  uint64_t queued(worker_id worker) const;

  /// Prompt tokens queued at every prefill worker, including ones that left while
  /// requests still waited on them (those count until the requests are released).
  uint64_t total() const { return total_; }

  /// Prefill worker `worker` left: its own count goes (one that comes back starts from
  /// 0); the requests that waited on it keep their entries until released.
  void forget_worker(worker_id worker);

 private:
  struct entry {
    worker_id worker = 0;
    uint32_t tokens = 0;
  };
  std::unordered_map<request_id, entry> requests_;
  std::unordered_map<worker_id, uint64_t> per_worker_;
  uint64_t total_ = 0;
};

}  // namespace tokenmill

#include "actors/router/prefill_backlog.hpp"

#include <algorithm>

namespace tokenmill {

void prefill_backlog::add(request_id id, worker_id worker, uint32_t tokens) {
  release(id);
  requests_[id] = {worker, tokens};
  per_worker_[worker] += tokens;
  total_ += tokens;
}

void prefill_backlog::release(request_id id) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  const uint64_t tokens = it->second.tokens;
  if (auto w = per_worker_.find(it->second.worker); w != per_worker_.end())
    w->second -= std::min(w->second, tokens);
  total_ -= std::min(total_, tokens);
  requests_.erase(it);
}

std::optional<worker_id> prefill_backlog::worker_of(request_id id) const {
  auto it = requests_.find(id);
  if (it == requests_.end()) return std::nullopt;
  return it->second.worker;
}

uint64_t prefill_backlog::queued(worker_id worker) const {
  auto it = per_worker_.find(worker);
  return it == per_worker_.end() ? 0 : it->second;
}

void prefill_backlog::forget_worker(worker_id worker) {
  per_worker_.erase(worker);
}

}  // namespace tokenmill

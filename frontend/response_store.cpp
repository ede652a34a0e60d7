#include "frontend/response_store.hpp"

#include <iterator>
#include <utility>

namespace tokenmill {

namespace {
/// Per-entry and per-message bookkeeping (list and map nodes, string headers), so that
/// max_bytes also bounds a store of many tiny responses.
constexpr size_t entry_overhead = 256;
constexpr size_t message_overhead = 64;
}  // namespace

response_store::response_store() : response_store(limits{}) {}

response_store::response_store(limits l) : limits_(l) {}

size_t response_store::entry_bytes(std::string_view id, const entry& e) {
  size_t n = entry_overhead + id.size() + e.body.size();
  for (const auto& m : e.conversation)
    n += message_overhead + m.role.size() + m.content.size() + m.part_ends.size() * sizeof(size_t);
  return n;
}

void response_store::drop(lru_list::iterator it) {
  bytes_ -= it->bytes;
  by_age_.erase(it->seq);
  index_.erase(std::string_view(it->id));
  lru_.erase(it);
}

void response_store::expire(clock::time_point now) {
  while (!by_age_.empty()) {
    auto it = by_age_.begin()->second;
    if (now - it->stored < limits_.ttl) break;
    drop(it);
  }
}

bool response_store::put(std::string id, entry e, clock::time_point now) {
  const size_t n = entry_bytes(id, e);
  if (n > limits_.max_bytes || limits_.max_entries == 0) return false;
  if (auto old = index_.find(std::string_view(id)); old != index_.end()) drop(old->second);
  expire(now);
  lru_.push_front(
      node{std::move(id), std::make_shared<const entry>(std::move(e)), now, n, next_seq_++});
  auto it = lru_.begin();
  index_.emplace(std::string_view(it->id), it);
  by_age_.emplace(it->seq, it);
  bytes_ += n;
  while (lru_.size() > limits_.max_entries || bytes_ > limits_.max_bytes)
    drop(std::prev(lru_.end()));
  return true;
}

std::shared_ptr<const response_store::entry> response_store::get(std::string_view id,
                                                                 clock::time_point now) {
  expire(now);
  auto it = index_.find(id);
  if (it == index_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second);  // iterators stay valid
  return it->second->value;
}

bool response_store::erase(std::string_view id, clock::time_point now) {
  expire(now);
  auto it = index_.find(id);
  if (it == index_.end()) return false;
  drop(it->second);
  return true;
}

}  // namespace tokenmill

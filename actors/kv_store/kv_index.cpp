#include "actors/kv_store/kv_index.hpp"

#include <algorithm>
#include <bit>
#include <cstring>

namespace tokenmill {
namespace {

constexpr size_t min_capacity = 64;

bool all_zero(const uint64_t* bits, size_t words) {
  for (size_t w = 0; w < words; ++w)
    if (bits[w] != 0) return false;
  return true;
}

}  // namespace

const uint64_t* kv_index::find(uint64_t h) const {
  if (h == 0) return zero_.present ? zero_.bits.data() : nullptr;
  if (capacity_ == 0) return nullptr;
  const size_t st = stride();
  for (size_t i = home(h);; i = (i + 1) & (capacity_ - 1)) {
    const uint64_t* s = &table_[i * st];
    if (s[0] == h) return s + 1;
    if (s[0] == 0) return nullptr;
  }
}

uint64_t* kv_index::find_or_insert(uint64_t h) {
  if (h == 0) {
    if (!zero_.present) {
      zero_.present = true;
      zero_.bits.assign(words_, 0);
    }
    return zero_.bits.data();
  }
  if (auto* b = find(h)) return b;
  // Load factor at most 3/4.
  if (capacity_ == 0 || (blocks_ + 1) * 4 > capacity_ * 3)
    rebuild(std::max(min_capacity, capacity_ * 2), words_);
  const size_t st = stride();
  size_t i = home(h);
  while (table_[i * st] != 0)
    i = (i + 1) & (capacity_ - 1);
  uint64_t* s = &table_[i * st];
  s[0] = h;
  std::fill(s + 1, s + st, 0);
  ++blocks_;
  return s + 1;
}

void kv_index::erase_at(size_t i) {
  const size_t st = stride();
  const size_t mask = capacity_ - 1;
  size_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    if (table_[j * st] == 0) break;
    const size_t k = home(table_[j * st]);
    // Slot j stays when its home lies cyclically in (i, j].
    const bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
    if (stays) continue;
    std::memcpy(&table_[i * st], &table_[j * st], st * sizeof(uint64_t));
    i = j;
  }
  std::fill(&table_[i * st], &table_[i * st] + st, 0);
  --blocks_;
}

void kv_index::rebuild(size_t capacity, size_t words) {
  std::vector<uint64_t> old;
  old.swap(table_);
  const size_t old_stride = stride();
  const size_t old_capacity = capacity_;
  const size_t keep = std::min(words, words_);
  capacity_ = capacity;
  shift_ = 64 - static_cast<unsigned>(std::countr_zero(capacity));
  words_ = words;
  table_.assign(capacity_ * stride(), 0);
  blocks_ = 0;
  const size_t st = stride();
  for (size_t o = 0; o < old_capacity; ++o) {
    const uint64_t* s = &old[o * old_stride];
    if (s[0] == 0 || all_zero(s + 1, keep)) continue;
    size_t i = home(s[0]);
    while (table_[i * st] != 0)
      i = (i + 1) & (capacity_ - 1);
    table_[i * st] = s[0];
    std::copy(s + 1, s + 1 + keep, &table_[i * st + 1]);
    ++blocks_;
  }
  zero_.bits.resize(words_, 0);
}

bool kv_index::holds(worker_id worker, uint64_t h) const {
  auto bit = slot(worker);
  if (!bit) return false;
  const uint64_t* bits = find(h);
  return bits && (bits[*bit / 64] >> (*bit % 64) & 1) != 0;
}

std::optional<uint32_t> kv_index::slot(worker_id worker) const {
  auto it = slot_of_.find(worker);
  if (it == slot_of_.end()) return std::nullopt;
  return it->second;
}

uint32_t kv_index::slot_or_assign(worker_id worker) {
  if (auto s = slot(worker)) return *s;
  uint32_t bit;
  if (!free_.empty()) {
    bit = free_.back();
    free_.pop_back();
    worker_of_[bit] = worker;
    held_[bit] = 0;
  } else {
    bit = static_cast<uint32_t>(worker_of_.size());
    worker_of_.push_back(worker);
    held_.push_back(0);
    if (bit >= words_ * 64) rebuild(std::max(min_capacity, capacity_), words_ + 1);
  }
  slot_of_[worker] = bit;
  return bit;
}

void kv_index::release_slot(worker_id worker) {
  auto it = slot_of_.find(worker);
  if (it == slot_of_.end()) return;
  free_.push_back(it->second);
  held_[it->second] = 0;
  slot_of_.erase(it);
}

void kv_index::count(worker_id worker, uint32_t bit, int64_t delta) {
  held_[bit] = static_cast<uint64_t>(static_cast<int64_t>(held_[bit]) + delta);
  entries_ = static_cast<size_t>(static_cast<int64_t>(entries_) + delta);
  if (held_[bit] == 0) release_slot(worker);
}

void kv_index::stored(worker_id worker, std::span<const uint64_t> hashes) {
  if (hashes.empty()) return;
  const uint32_t bit = slot_or_assign(worker);
  const size_t w = bit / 64;
  const uint64_t m = uint64_t{1} << (bit % 64);
  int64_t added = 0;
  for (auto h : hashes) {
    uint64_t* b = find_or_insert(h);
    if (!(b[w] & m)) {
      b[w] |= m;
      ++added;
    }
  }
  held_[bit] += static_cast<uint64_t>(added);
  entries_ += static_cast<size_t>(added);
}

void kv_index::removed(worker_id worker, std::span<const uint64_t> hashes) {
  auto bit = slot(worker);
  if (!bit) return;
  const size_t w = *bit / 64;
  const uint64_t m = uint64_t{1} << (*bit % 64);
  int64_t gone = 0;
  for (auto h : hashes) {
    if (h == 0) {
      if (zero_.present && (zero_.bits[w] & m)) {
        zero_.bits[w] &= ~m;
        ++gone;
        if (all_zero(zero_.bits.data(), words_)) zero_.present = false;
      }
      continue;
    }
    if (capacity_ == 0) break;
    const size_t st = stride();
    for (size_t i = home(h);; i = (i + 1) & (capacity_ - 1)) {
      uint64_t* s = &table_[i * st];
      if (s[0] == 0) break;
      if (s[0] != h) continue;
      if (s[1 + w] & m) {
        s[1 + w] &= ~m;
        ++gone;
        if (all_zero(s + 1, words_)) erase_at(i);
      }
      break;
    }
  }
  count(worker, *bit, -gone);
}

void kv_index::drop_worker(worker_id worker) {
  auto bit = slot(worker);
  if (!bit) return;
  const size_t w = *bit / 64;
  const uint64_t m = ~(uint64_t{1} << (*bit % 64));
  const size_t st = stride();
  for (size_t i = 0; i < capacity_; ++i)
    table_[i * st + 1 + w] &= m;
  if (zero_.present) {
    zero_.bits[w] &= m;
    if (all_zero(zero_.bits.data(), words_)) zero_.present = false;
  }
  entries_ -= held_[*bit];
  release_slot(worker);
  // Blocks nobody holds any more go; the table keeps its size.
  if (capacity_ > 0) rebuild(capacity_, words_);
}

std::vector<std::pair<worker_id, uint32_t>> kv_index::overlap(
    std::span<const uint64_t> chain) const {
  std::vector<std::pair<worker_id, uint32_t>> out;
  if (chain.empty()) return out;
  const uint64_t* first = find(chain[0]);
  if (!first) return out;
  const size_t words = words_;
  // Workers that hold every block so far.
  uint64_t inline_alive[4];
  std::vector<uint64_t> heap_alive;
  uint64_t* alive = inline_alive;
  if (words > 4) {
    heap_alive.resize(words);
    alive = heap_alive.data();
  }
  std::copy(first, first + words, alive);
  auto emit = [&](size_t w, uint64_t bits, uint32_t n) {
    while (bits) {
      const auto b = static_cast<size_t>(std::countr_zero(bits));
      out.emplace_back(worker_of_[w * 64 + b], n);
      bits &= bits - 1;
    }
  };
  // Prefetch the slots this many blocks ahead: the table is far larger than the caches.
  constexpr size_t ahead = 8;
  const size_t st = stride();
  auto prefetch = [&](size_t i) {
    if (i < chain.size() && chain[i] != 0 && capacity_ > 0)
      __builtin_prefetch(&table_[home(chain[i]) * st]);
  };
  for (size_t i = 1; i <= ahead; ++i)
    prefetch(i);
  size_t n = 1;
  for (; n < chain.size(); ++n) {
    prefetch(n + ahead);
    const uint64_t* b = find(chain[n]);
    bool any = false;
    for (size_t w = 0; w < words; ++w) {
      const uint64_t next = b ? (alive[w] & b[w]) : 0;
      emit(w, alive[w] & ~next, static_cast<uint32_t>(n));
      alive[w] = next;
      any = any || next != 0;
    }
    if (!any) break;
  }
  if (n == chain.size())
    for (size_t w = 0; w < words; ++w)
      emit(w, alive[w], static_cast<uint32_t>(n));
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<worker_id> kv_index::holding_all(std::span<const uint64_t> hashes) const {
  std::vector<worker_id> out;
  if (hashes.empty()) return out;
  const uint64_t* first = find(hashes[0]);
  if (!first) return out;
  std::vector<uint64_t> alive(first, first + words_);
  for (size_t i = 1; i < hashes.size(); ++i) {
    const uint64_t* b = find(hashes[i]);
    if (!b) return out;
    bool any = false;
    for (size_t w = 0; w < words_; ++w) {
      alive[w] &= b[w];
      any = any || alive[w] != 0;
    }
    if (!any) return out;
  }
  for (size_t w = 0; w < words_; ++w)
    for (uint64_t bits = alive[w]; bits; bits &= bits - 1)
      out.push_back(worker_of_[w * 64 + static_cast<size_t>(std::countr_zero(bits))]);
  std::sort(out.begin(), out.end());
  return out;
}

size_t kv_index::memory_bytes() const {
  return table_.capacity() * sizeof(uint64_t) + zero_.bits.capacity() * sizeof(uint64_t) +
         worker_of_.capacity() * sizeof(worker_id) + held_.capacity() * sizeof(uint64_t) +
         free_.capacity() * sizeof(uint32_t) +
         slot_of_.size() * (sizeof(worker_id) + sizeof(uint32_t) + 2 * sizeof(void*)) +
         slot_of_.bucket_count() * sizeof(void*);
}

}  // namespace tokenmill

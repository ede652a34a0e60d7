#include "engine/kv_tier.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <fmt/format.h>

#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace tokenmill {

tier_lru::tier_lru(uint32_t capacity) : capacity_(capacity) {
  free_.reserve(capacity);
  for (uint32_t s = capacity; s > 0; --s)
    free_.push_back(s - 1);
}

std::optional<tier_lru::placed> tier_lru::put(uint64_t hash) {
  if (capacity_ == 0) return std::nullopt;
  if (auto it = where_.find(hash); it != where_.end()) {
    lru_.splice(lru_.end(), lru_, it->second.lru);
    return placed{it->second.slot, std::nullopt};
  }
  placed p;
  if (free_.empty()) {
    const uint64_t victim = lru_.front();
    lru_.pop_front();
    auto v = where_.find(victim);
    p.slot = v->second.slot;
    p.evicted = victim;
    where_.erase(v);
  } else {
    p.slot = free_.back();
    free_.pop_back();
  }
  where_.emplace(hash, entry{p.slot, lru_.insert(lru_.end(), hash)});
  return p;
}

std::optional<uint32_t> tier_lru::find(uint64_t hash) const {
  auto it = where_.find(hash);
  if (it == where_.end()) return std::nullopt;
  return it->second.slot;
}

std::optional<uint32_t> tier_lru::take(uint64_t hash) {
  auto it = where_.find(hash);
  if (it == where_.end()) return std::nullopt;
  const uint32_t slot = it->second.slot;
  lru_.erase(it->second.lru);
  where_.erase(it);
  free_.push_back(slot);
  return slot;
}

namespace {

/// Records a stored/removed event with kv_cache's rule: a hash removed in the same batch
/// it was stored in is reported removed only, so removed-then-stored replays correctly.
void note(std::vector<uint64_t>& stored, std::vector<uint64_t>& removed, uint64_t h, bool add) {
  if (add) {
    stored.push_back(h);
    return;
  }
  stored.erase(std::remove(stored.begin(), stored.end(), h), stored.end());
  removed.push_back(h);
}

}  // namespace

kv_tier::kv_tier(size_t block_bytes, uint32_t host_blocks, uint32_t disk_blocks)
    : block_bytes_(block_bytes), host_(host_blocks), disk_(disk_blocks) {
  host_sum_.assign(host_blocks, 0);
  disk_sum_.assign(disk_blocks, 0);
  host_stats_.capacity = host_blocks;
  disk_stats_.capacity = disk_blocks;
}

kv_tier::~kv_tier() {
  if (disk_map_) ::munmap(disk_map_, disk_map_bytes_);
  if (disk_fd_ >= 0) ::close(disk_fd_);
}

result<std::unique_ptr<kv_tier>> kv_tier::make(const block_pool& pool, const kv_tier_config& cfg,
                                               std::string_view owner) {
  auto bad = [](std::string what) { return error_info{errc::invalid_request, std::move(what)}; };
  if (cfg.host_blocks == 0 && cfg.disk_blocks > 0)
    return bad(
        fmt::format("kv_disk_blocks {} needs kv_host_blocks > 0 (blocks reach the disk "
                    "tier through the host tier)",
                    cfg.disk_blocks));
  if (cfg.host_blocks == 0) return bad("kv_host_blocks is 0: no tier to make");
  const size_t bb = pool.block_bytes();
  std::unique_ptr<kv_tier> t(new kv_tier(bb, cfg.host_blocks, cfg.disk_blocks));
  try {
    t->host_mem_ = pool.storage().make_host_staging(bb * cfg.host_blocks);
  } catch (const std::bad_alloc&) {
    return bad(fmt::format("kv_host_blocks {}: cannot allocate {} bytes of host memory",
                           cfg.host_blocks, bb * cfg.host_blocks));
  }
  if (cfg.disk_blocks == 0) return t;
  std::string dir = cfg.disk_dir;
  if (dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    dir = tmp && *tmp ? tmp : "/tmp";
  }
  std::string path = fmt::format("{}/tokenmill-kv-{}-{}.tier", dir, owner, ::getpid());
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0)
    return bad(
        fmt::format("kv_disk_dir '{}': cannot create {}: {}", dir, path, std::strerror(errno)));
  ::unlink(path.c_str());  // the mapping keeps it; nothing stays behind after the process
  t->disk_fd_ = fd;
  t->disk_map_bytes_ = bb * cfg.disk_blocks;
  if (::ftruncate(fd, static_cast<off_t>(t->disk_map_bytes_)) != 0)
    return bad(fmt::format("kv_disk_blocks {}: cannot size {} to {} bytes: {}", cfg.disk_blocks,
                           path, t->disk_map_bytes_, std::strerror(errno)));
  void* m = ::mmap(nullptr, t->disk_map_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED)
    return bad(fmt::format("kv_disk_blocks {}: cannot map {}: {}", cfg.disk_blocks, path,
                           std::strerror(errno)));
  t->disk_map_ = static_cast<std::byte*>(m);
  return t;
}

std::optional<uint32_t> kv_tier::place_host(uint64_t hash) {
  auto p = host_.put(hash);
  if (!p) return std::nullopt;
  if (p->evicted) {
    const uint64_t v = *p->evicted;
    ++host_stats_.evictions;
    note(events_.host_stored, events_.host_removed, v, false);
    // The victim's bytes are still in the slot: move them to disk before they are overwritten.
    if (auto d = disk_.put(v)) {
      if (d->evicted) {
        ++disk_stats_.evictions;
        note(events_.disk_stored, events_.disk_removed, *d->evicted, false);
      }
      std::memcpy(disk_slot(d->slot), host_slot(p->slot), block_bytes_);
      disk_sum_[d->slot] = host_sum_[p->slot];
      disk_stats_.bytes_in += block_bytes_;
      note(events_.disk_stored, events_.disk_removed, v, true);
    }
  }
  return p->slot;
}

void kv_tier::demote(const block_pool& pool, block_id b, uint64_t hash) {
  if (b >= pool.total() || pool.block_bytes() != block_bytes_) return;
  // A hash on disk comes back to the host level (the newer copy wins).
  if (auto d = disk_.take(hash)) note(events_.disk_stored, events_.disk_removed, hash, false);
  const bool had = host_.find(hash).has_value();
  auto slot = place_host(hash);
  if (!slot) return;
  pool.storage().copy_out(size_t{b} * block_bytes_, host_slot(*slot), block_bytes_);
  host_sum_[*slot] = XXH3_64bits(host_slot(*slot), block_bytes_);
  host_stats_.bytes_in += block_bytes_;
  if (!had) note(events_.host_stored, events_.host_removed, hash, true);
}

std::optional<kv_tier_level> kv_tier::where(uint64_t hash) const {
  if (host_.find(hash)) return kv_tier_level::host;
  if (disk_.find(hash)) return kv_tier_level::disk;
  return std::nullopt;
}

bool kv_tier::onboard(uint64_t hash, block_pool& pool, block_id b) {
  if (b >= pool.total() || pool.block_bytes() != block_bytes_) return false;
  const std::byte* src = nullptr;
  uint64_t sum = 0;
  kv_tier_stats* st = nullptr;
  std::vector<uint64_t>*stored = nullptr, *removed = nullptr;
  std::optional<uint32_t> slot;
  if ((slot = host_.find(hash))) {
    src = host_slot(*slot);
    sum = host_sum_[*slot];
    st = &host_stats_;
    stored = &events_.host_stored;
    removed = &events_.host_removed;
    host_.take(hash);
  } else if ((slot = disk_.find(hash))) {
    src = disk_slot(*slot);
    sum = disk_sum_[*slot];
    st = &disk_stats_;
    stored = &events_.disk_stored;
    removed = &events_.disk_removed;
    disk_.take(hash);
  } else {
    return false;
  }
  // The slot is free now but nothing writes it before this returns.
  note(*stored, *removed, hash, false);
  if (XXH3_64bits(src, block_bytes_) != sum) {
    ++st->bad_checksum;
    return false;
  }
  pool.storage().copy_in(size_t{b} * block_bytes_, src, block_bytes_);
  ++st->hits;
  st->bytes_out += block_bytes_;
  return true;
}

kv_tier::events kv_tier::take_events() {
  return std::exchange(events_, {});
}

kv_tier_stats kv_tier::stats(kv_tier_level t) const {
  kv_tier_stats s = t == kv_tier_level::disk ? disk_stats_ : host_stats_;
  s.used = t == kv_tier_level::disk ? disk_.size() : host_.size();
  return s;
}

}  // namespace tokenmill

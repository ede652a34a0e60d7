#include <cstring>

#include <fmt/format.h>

#include "transport/kv_transport.hpp"

namespace tokenmill {

pool_descriptor inline_transport::register_pool(worker_id owner, pool_memory& memory,
                                                size_t block_bytes) {
  pool_descriptor d;
  d.owner = owner;
  d.block_bytes = block_bytes;
  d.num_blocks = block_bytes == 0 ? 0 : static_cast<uint32_t>(memory.bytes().size() / block_bytes);
  return d;
}

void inline_transport::write(const pool_memory& local, size_t block_bytes,
                             std::span<const block_id> src, const pool_descriptor& peer,
                             std::span<const block_id> dst, completion user_done) {
  // Counts the outcome, then hands it on (inline writes complete before write() returns).
  auto done = [this, &user_done](error_info err, kv_payload p) {
    if (err) {
      writes_failed_.fetch_add(1, std::memory_order_relaxed);
      if (err.code == errc::timeout) timeouts_.fetch_add(1, std::memory_order_relaxed);
    } else {
      writes_completed_.fetch_add(1, std::memory_order_relaxed);
      bytes_written_.fetch_add(p.bytes.size(), std::memory_order_relaxed);
    }
    user_done(std::move(err), std::move(p));
  };
  kv_payload p;
  if (src.size() != dst.size()) {
    done(error_info{errc::internal, fmt::format("kv write: {} source blocks for {} destinations",
                                                src.size(), dst.size())},
         {});
    return;
  }
  if (peer.block_bytes != block_bytes) {
    done(error_info{errc::internal,
                    fmt::format("kv write: block size {} B does not match the peer's {} B",
                                block_bytes, peer.block_bytes)},
         {});
    return;
  }
  size_t local_blocks = block_bytes == 0 ? 0 : local.bytes().size() / block_bytes;
  for (size_t i = 0; i < src.size(); ++i) {
    if (src[i] >= local_blocks || dst[i] >= peer.num_blocks) {
      done(error_info{errc::internal,
                      fmt::format("kv write: block {}->{} out of range ({} local, {} peer)", src[i],
                                  dst[i], local_blocks, peer.num_blocks)},
           {});
      return;
    }
  }
  p.dst_blocks.assign(dst.begin(), dst.end());
  p.bytes.resize(src.size() * block_bytes);
  for (size_t i = 0; i < src.size(); ++i)
    local.copy_out(size_t{src[i]} * block_bytes,
                   reinterpret_cast<std::byte*>(p.bytes.data()) + i * block_bytes, block_bytes);
  done(error_info{}, std::move(p));
}

error_info inline_transport::deliver(const kv_payload& payload, pool_memory& local,
                                     size_t block_bytes) {
  size_t local_blocks = block_bytes == 0 ? 0 : local.bytes().size() / block_bytes;
  if (payload.bytes.size() != payload.dst_blocks.size() * block_bytes)
    return {errc::kv_corrupt,
            fmt::format("kv payload holds {} B for {} blocks of {} B", payload.bytes.size(),
                        payload.dst_blocks.size(), block_bytes)};
  for (auto b : payload.dst_blocks)
    if (b >= local_blocks)
      return {errc::kv_corrupt,
              fmt::format("kv payload names block {} of a {}-block pool", b, local_blocks)};
  for (size_t i = 0; i < payload.dst_blocks.size(); ++i)
    local.copy_in(size_t{payload.dst_blocks[i]} * block_bytes,
                  reinterpret_cast<const std::byte*>(payload.bytes.data()) + i * block_bytes,
                  block_bytes);
  return {};
}

kv_transport_stats inline_transport::stats() const {
  kv_transport_stats s;
  s.bytes_written = bytes_written_.load(std::memory_order_relaxed);
  s.writes_completed = writes_completed_.load(std::memory_order_relaxed);
  s.writes_failed = writes_failed_.load(std::memory_order_relaxed);
  s.timeouts = timeouts_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace tokenmill

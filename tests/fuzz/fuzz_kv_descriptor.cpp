/// libFuzzer target: what the KV data plane takes from peers, read as the middleman reads
/// it (CAF's binary deserializer) and then used as the workers use it:
/// - prefill side: a peer's pool_descriptor and the destination blocks of a prefill_job go
///   into inline_transport::write (validation, then the payload) and coalesce_blocks (the
///   one-sided transport's put ranges, from the remote key's base address);
/// - decode side: a kv_transfer is checked (check_kv_transfer: reserved blocks, one checksum
///   each) and delivered into a pool (inline_transport::deliver).
/// Checked: a refused write or delivery changes nothing; an accepted write's payload lands
/// the source blocks in the named destination blocks; put ranges cover the write exactly.
/// The UCX transport's unpacking of the worker address and packed rkey (UCX's own code) is
/// not driven here.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include <caf/binary_deserializer.hpp>

#include "actors/decode/decode_policy.hpp"
#include "actors/protocol.hpp"
#include "transport/kv_transport.hpp"
#include "transport/transfer_window.hpp"

namespace {

using namespace tokenmill;

constexpr size_t local_blocks = 8;
constexpr uint64_t max_pool_bytes = 1 << 20;  // peer pools larger than this are not built

std::vector<std::byte> pattern(size_t n, uint8_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = static_cast<std::byte>(seed + i * 31);
  return v;
}

/// Prefill side: write local blocks to `peer`'s blocks `dst`, then deliver the payload there.
void prefill_side(const pool_descriptor& peer, const std::vector<block_id>& dst) {
  if (peer.block_bytes == 0 || peer.block_bytes > 4096) return;
  const size_t bb = peer.block_bytes;
  auto local = pattern(local_blocks * bb, 7);
  std::vector<block_id> src(dst.size());
  for (size_t i = 0; i < src.size(); ++i)
    src[i] = static_cast<block_id>((i * 5) % (local_blocks + 1));  // id 8 is out of range

  inline_transport t;
  bool called = false;
  kv_payload payload;
  error_info err;
  t.write(std::span<const std::byte>(local), bb, src, peer, dst, [&](error_info e, kv_payload p) {
    if (called) __builtin_trap();  // done runs exactly once
    called = true;
    err = std::move(e);
    payload = std::move(p);
  });
  if (!called) __builtin_trap();
  if (err) {
    if (!payload.bytes.empty() || !payload.dst_blocks.empty() || err.message.empty())
      __builtin_trap();
    return;
  }
  if (payload.dst_blocks != dst || payload.bytes.size() != dst.size() * bb) __builtin_trap();

  // The put ranges of a one-sided write of the same blocks: they cover it exactly.
  uint64_t base = 0;
  if (peer.remote_key.size() >= 8)
    for (int i = 7; i >= 0; --i)
      base = (base << 8) | peer.remote_key[static_cast<size_t>(i)];
  size_t covered = 0;
  for (const auto& s : coalesce_blocks(src, dst, bb, base)) {
    if (s.bytes == 0 || s.bytes % bb != 0 || s.offset % bb != 0) __builtin_trap();
    covered += s.bytes;
  }
  if (covered != dst.size() * bb) __builtin_trap();

  // Deliver into the peer's pool, when it is small enough to build here.
  if (uint64_t{peer.num_blocks} * bb > max_pool_bytes) return;
  std::vector<std::byte> pool(uint64_t{peer.num_blocks} * bb);
  if (auto e = t.deliver(payload, std::span<std::byte>(pool), bb)) __builtin_trap();
  for (size_t i = 0; i < dst.size(); ++i) {
    // The last write of a block wins.
    if (std::find(dst.begin() + static_cast<std::ptrdiff_t>(i) + 1, dst.end(), dst[i]) != dst.end())
      continue;
    if (std::memcmp(pool.data() + size_t{dst[i]} * bb, local.data() + size_t{src[i]} * bb, bb) != 0)
      __builtin_trap();
  }
}

/// Decode side: an arriving kv_transfer into a 16-block pool whose blocks 4..11 are
/// reserved for it.
void decode_side(const kv_transfer& tr) {
  constexpr size_t bb = 32, blocks = 16;
  const std::vector<block_id> reserved = {4, 5, 6, 7, 8, 9, 10, 11};
  auto pool = pattern(blocks * bb, 3);
  const auto before = pool;
  const auto& p = tr.payload;
  if (auto err = check_kv_transfer(reserved, p.dst_blocks, tr.checksums.size())) {
    if (err->code != errc::kv_corrupt || err->message.empty()) __builtin_trap();
    return;
  }
  for (auto b : p.dst_blocks)
    if (std::find(reserved.begin(), reserved.end(), b) == reserved.end()) __builtin_trap();
  inline_transport t;
  if (auto err = t.deliver(p, std::span<std::byte>(pool), bb)) {
    if (pool != before) __builtin_trap();  // a refused delivery writes nothing
    return;
  }
  if (p.bytes.size() != p.dst_blocks.size() * bb) __builtin_trap();
  for (size_t b = 0; b < blocks; ++b) {
    const bool named = std::find(p.dst_blocks.begin(), p.dst_blocks.end(), b) != p.dst_blocks.end();
    if (!named && std::memcmp(pool.data() + b * bb, before.data() + b * bb, bb) != 0)
      __builtin_trap();  // only named blocks change
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  caf::binary_deserializer src(static_cast<caf::execution_unit*>(nullptr),
                               reinterpret_cast<const char*>(data), size);
  pool_descriptor peer;
  std::vector<block_id> dst;
  if (!src(peer, dst)) prefill_side(peer, dst);
  kv_transfer tr;
  if (!src(tr)) decode_side(tr);
  return 0;
}

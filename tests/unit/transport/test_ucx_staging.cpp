// Device pools through a transport that cannot reach device memory (Debian's UCX has no
// CUDA transports): the ucx transport stages them through a host mirror, the inline
// transport copies through copy_out/copy_in. No GPU needed: the "device" pool is a
// PROT_NONE mapping that faults on any direct touch, with its contents in a host shadow
// buffer that only copy_out/copy_in reach.
#include <catch2/catch.hpp>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <new>
#include <stdexcept>
#include <thread>
#include <vector>

#include "tests/skip.hpp"
#include "transport/ucx_transport.hpp"

using namespace tokenmill;
using namespace std::chrono_literals;

namespace {

constexpr int kNoTransportExit = 77;  ///< the tcp child could not start UCX

/// A CUDA pool stand-in. bytes() is an inaccessible mapping, so a transport that
/// dereferences it crashes the test; the contents live in `shadow`, reached through
/// copy_out/copy_in, which count the bytes they move.
class fake_device_pool final : public pool_memory {
 public:
  explicit fake_device_pool(size_t bytes) : size_(bytes), shadow_(bytes) {
    void* m = ::mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    addr_ = static_cast<std::byte*>(m);
  }
  ~fake_device_pool() override { ::munmap(addr_, size_); }
  fake_device_pool(const fake_device_pool&) = delete;
  fake_device_pool& operator=(const fake_device_pool&) = delete;

  memory_kind kind() const override { return memory_kind::cuda; }
  std::span<std::byte> bytes() override { return {addr_, size_}; }
  std::span<const std::byte> bytes() const override { return {addr_, size_}; }
  int device() const override { return 0; }
  void copy_out(size_t offset, std::byte* dst, size_t n) const override {
    if (offset + n > size_) throw std::out_of_range("fake_device_pool::copy_out");
    std::memcpy(dst, shadow_.data() + offset, n);
    copied_out_.fetch_add(n);
  }
  void copy_in(size_t offset, const std::byte* src, size_t n) override {
    if (offset + n > size_) throw std::out_of_range("fake_device_pool::copy_in");
    std::memcpy(shadow_.data() + offset, src, n);
    copied_in_.fetch_add(n);
  }

  /// The "device" contents, for the test to fill and check.
  std::vector<std::byte>& shadow() { return shadow_; }
  uint64_t copied_out() const { return copied_out_.load(); }
  uint64_t copied_in() const { return copied_in_.load(); }

 private:
  std::byte* addr_ = nullptr;
  size_t size_;
  std::vector<std::byte> shadow_;
  mutable std::atomic<uint64_t> copied_out_{0};
  std::atomic<uint64_t> copied_in_{0};
};

/// Fills block b of `buf` with bytes (seed + b) ^ offset.
void fill(std::vector<std::byte>& buf, size_t block, uint8_t seed) {
  for (size_t i = 0; i < buf.size(); ++i)
    buf[i] = static_cast<std::byte>(static_cast<uint8_t>(seed + i / block) ^ (i % block));
}

bool block_equals(const std::vector<std::byte>& a, block_id ab, const std::vector<std::byte>& b,
                  block_id bb, size_t block) {
  return std::memcmp(a.data() + size_t{ab} * block, b.data() + size_t{bb} * block, block) == 0;
}

std::shared_ptr<ucx_transport> make_transport(ucx_config cfg = {}) {
  auto t = ucx_transport::create(cfg);
  if (!t) {
    ::tokenmill::testing::announce_skip("UCX cannot create a context here: " + t.error().message);
    return nullptr;
  }
  return *t;
}

/// Writes and waits (bounded); counts how often `done` ran.
struct waited {
  int calls = 0;
  error_info err;
  kv_payload payload;
};
waited write_and_wait(kv_transport& t, const pool_memory& local, size_t block,
                      const std::vector<block_id>& src, const pool_descriptor& peer,
                      const std::vector<block_id>& dst) {
  auto calls = std::make_shared<std::atomic<int>>(0);
  auto promise = std::make_shared<std::promise<std::pair<error_info, kv_payload>>>();
  auto future = promise->get_future();
  t.write(local, block, src, peer, dst, [calls, promise](error_info e, kv_payload p) {
    if (calls->fetch_add(1) == 0) promise->set_value({std::move(e), std::move(p)});
  });
  waited w;
  if (future.wait_for(10s) != std::future_status::ready) {
    w.err = {errc::timeout, "test: completion never ran"};
    return w;
  }
  auto [e, p] = future.get();
  std::this_thread::sleep_for(20ms);  // a second call would show up here
  w.calls = calls->load();
  w.err = std::move(e);
  w.payload = std::move(p);
  return w;
}

/// One side of a transfer: a fake device pool or host memory.
struct side {
  std::unique_ptr<fake_device_pool> device;
  std::vector<std::byte> host;
  std::unique_ptr<host_memory_view> host_view;
  side(bool is_device, size_t bytes, size_t block, uint8_t seed) {
    if (is_device) {
      device = std::make_unique<fake_device_pool>(bytes);
      fill(device->shadow(), block, seed);
    } else {
      host.resize(bytes);
      fill(host, block, seed);
      host_view = std::make_unique<host_memory_view>(host);
    }
  }
  pool_memory& pool() { return device ? static_cast<pool_memory&>(*device) : *host_view; }
  std::vector<std::byte>& contents() { return device ? device->shadow() : host; }
};

/// Two ucx transports in this process: a write of scattered blocks (runs and single blocks,
/// several staging pieces when the blocks are large), deliver, content and copy-count
/// checks. False when UCX is unavailable (after a WARN).
bool staged_copy_body(size_t block, size_t blocks, bool src_device, bool dst_device) {
  auto a = make_transport();
  auto b = make_transport();
  if (!a || !b) return false;
  CHECK_FALSE(a->cuda_memory_supported());  // Debian's UCX; a CUDA build would map directly
  side sa(src_device, block * blocks, block, 1);
  side sb(dst_device, block * blocks, block, 100);
  const auto orig_b = sb.contents();
  auto da = a->register_pool(1, sa.pool(), block);
  auto db = b->register_pool(2, sb.pool(), block);
  REQUIRE(da.num_blocks == blocks);
  REQUIRE(db.num_blocks == blocks);
  // The mirror, not the inaccessible device range, is what peers put into.
  uint64_t base = 0;
  for (int i = 7; i >= 0; --i)
    base = (base << 8) | db.remote_key[static_cast<size_t>(i)];
  if (dst_device) CHECK(base != reinterpret_cast<uint64_t>(sb.pool().bytes().data()));

  // Blocks 0..n-1 (one run), then scattered singles; destinations reversed halves.
  const auto n = static_cast<block_id>(blocks);
  std::vector<block_id> src, dst;
  for (block_id i = 0; i < n / 2; ++i) {
    src.push_back(i);
    dst.push_back(n / 2 + i);
  }
  src.push_back(n - 1);
  dst.push_back(0);
  src.push_back(n / 2 + 1);
  dst.push_back(1);
  auto w = write_and_wait(*a, sa.pool(), block, src, db, dst);
  INFO(w.err.message);
  REQUIRE_FALSE(w.err);
  CHECK(w.calls == 1);
  CHECK(w.payload.dst_blocks == dst);
  CHECK(w.payload.bytes.empty());
  if (src_device) CHECK(sa.device->copied_out() == src.size() * block);
  REQUIRE_FALSE(b->deliver(w.payload, sb.pool(), block));
  if (dst_device) CHECK(sb.device->copied_in() == dst.size() * block);
  for (size_t i = 0; i < src.size(); ++i)
    CHECK(block_equals(sb.contents(), dst[i], sa.contents(), src[i], block));
  for (block_id blk = 0; blk < n; ++blk)
    if (std::find(dst.begin(), dst.end(), blk) == dst.end())
      CHECK(block_equals(sb.contents(), blk, orig_b, blk, block));
  auto st = a->stats();
  CHECK(st.writes_completed == 1);
  CHECK(st.bytes_written == src.size() * block);
  CHECK(st.writes_in_flight == 0);
  CHECK(st.bytes_in_flight == 0);
  return true;
}

}  // namespace

TEST_CASE("ucx transport stages device pools through host memory",
          "[transport][ucx][ucx-staging]") {
  SECTION("small blocks, one piece") {
    staged_copy_body(4096, 64, true, true);
  }
  SECTION("256 KiB blocks, several 1 MiB pieces") {
    staged_copy_body(256 << 10, 16, true, true);
  }
  SECTION("3 MiB blocks, one block per piece") {
    staged_copy_body(3 << 20, 4, true, true);
  }
  SECTION("device to host") {
    staged_copy_body(64 << 10, 16, true, false);
  }
  SECTION("host to device") {
    staged_copy_body(64 << 10, 16, false, true);
  }
}

/// Run by the tcp test below in a child process with UCX_TLS=tcp (hidden otherwise).
TEST_CASE("ucx staging tcp child body", "[.][ucx_staging_tcp_child]") {
  if (!staged_copy_body(4096, 64, true, true)) std::_Exit(kNoTransportExit);
  staged_copy_body(256 << 10, 16, true, true);
  staged_copy_body(64 << 10, 16, false, true);
}

TEST_CASE("ucx transport stages device pools over tcp", "[transport][ucx][ucx-staging]") {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::setenv("UCX_TLS", "tcp", 1);
    char exe[] = "/proc/self/exe";
    char filter[] = "[ucx_staging_tcp_child]";
    char* argv[] = {exe, filter, nullptr};
    ::execv(exe, argv);
    std::_Exit(127);
  }
  int status = 0;
  auto deadline = std::chrono::steady_clock::now() + 30s;
  pid_t r = 0;
  while ((r = ::waitpid(pid, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  if (r == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    FAIL("the tcp child did not finish within 30 s");
  }
  REQUIRE(WIFEXITED(status));
  if (WEXITSTATUS(status) == kNoTransportExit) {
    TM_SKIP("UCX with UCX_TLS=tcp cannot create a context here");
  }
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("staged writes and deliveries copy exactly the blocks written",
          "[transport][ucx][ucx-staging]") {
  constexpr size_t block = 8192;
  auto a = make_transport();
  auto b = make_transport();
  if (!a || !b) return;
  fake_device_pool pa(64 * block), pb(64 * block);
  fill(pa.shadow(), block, 3);
  fill(pb.shadow(), block, 200);
  const auto orig_b = pb.shadow();
  a->register_pool(1, pa, block);
  auto db = b->register_pool(2, pb, block);
  REQUIRE(db.num_blocks == 64);
  CHECK(pa.copied_out() == 0);  // registration copies nothing
  CHECK(pb.copied_in() == 0);

  std::vector<block_id> src{9, 10, 11, 40, 2};
  std::vector<block_id> dst{20, 21, 22, 5, 63};
  auto w = write_and_wait(*a, pa, block, src, db, dst);
  REQUIRE_FALSE(w.err);
  CHECK(pa.copied_out() == 5 * block);
  CHECK(pb.copied_in() == 0);  // the bytes wait in the mirror until deliver

  // Bad payloads copy nothing.
  CHECK(b->deliver(kv_payload{{20, 64}, {}}, pb, block).code == errc::kv_corrupt);
  CHECK(b->deliver(kv_payload{{20}, std::vector<uint8_t>(block)}, pb, block).code ==
        errc::kv_corrupt);
  CHECK(pb.copied_in() == 0);
  CHECK(pb.shadow() == orig_b);

  REQUIRE_FALSE(b->deliver(w.payload, pb, block));
  CHECK(pb.copied_in() == 5 * block);
  for (size_t i = 0; i < src.size(); ++i)
    CHECK(block_equals(pb.shadow(), dst[i], pa.shadow(), src[i], block));

  // A second write of one block copies one more block each way.
  std::vector<block_id> one{7};
  auto w2 = write_and_wait(*a, pa, block, one, db, one);
  REQUIRE_FALSE(w2.err);
  REQUIRE_FALSE(b->deliver(w2.payload, pb, block));
  CHECK(pa.copied_out() == 6 * block);
  CHECK(pb.copied_in() == 6 * block);
  CHECK(block_equals(pb.shadow(), 7, pa.shadow(), 7, block));

  // An unregistered device pool cannot take a delivery: its bytes are nowhere.
  fake_device_pool stray(4 * block);
  CHECK(b->deliver(kv_payload{{0}, {}}, stray, block).code == errc::internal);
  CHECK(stray.copied_in() == 0);
  std::vector<block_id> zero{0};
  auto w3 = write_and_wait(*a, stray, block, zero, db, zero);
  CHECK(w3.err.code == errc::invalid_request);
  CHECK(stray.copied_out() == 0);
}

TEST_CASE("inline transport moves device pool blocks through copy_out/copy_in",
          "[transport][inline][ucx-staging]") {
  constexpr size_t block = 64;
  inline_transport t;
  fake_device_pool pa(8 * block), pb(8 * block);
  fill(pa.shadow(), block, 1);
  fill(pb.shadow(), block, 50);
  const auto orig_b = pb.shadow();
  t.register_pool(1, pa, block);
  auto db = t.register_pool(2, pb, block);
  REQUIRE(db.num_blocks == 8);
  std::vector<block_id> src{0, 1, 6};
  std::vector<block_id> dst{3, 4, 0};
  int calls = 0;
  kv_payload payload;
  t.write(pa, block, src, db, dst, [&](error_info e, kv_payload p) {
    ++calls;
    REQUIRE_FALSE(e);
    payload = std::move(p);
  });
  CHECK(calls == 1);
  CHECK(pa.copied_out() == 3 * block);
  CHECK(payload.bytes.size() == 3 * block);
  REQUIRE_FALSE(t.deliver(payload, pb, block));
  CHECK(pb.copied_in() == 3 * block);
  for (size_t i = 0; i < src.size(); ++i)
    CHECK(block_equals(pb.shadow(), dst[i], pa.shadow(), src[i], block));
  for (block_id blk : {1u, 2u, 5u, 6u, 7u})
    CHECK(block_equals(pb.shadow(), blk, orig_b, blk, block));
  auto st = t.stats();
  CHECK(st.writes_completed == 1);
  CHECK(st.bytes_written == 3 * block);
  CHECK(st.writes_failed == 0);
}

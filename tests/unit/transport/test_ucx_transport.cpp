#include <catch2/catch.hpp>

#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "tests/skip.hpp"
#include "transport/ucx_transport.hpp"

using namespace tokenmill;
using namespace std::chrono_literals;

namespace {

constexpr size_t kBlock = 4096;
constexpr int kNoTransportExit = 77;  ///< the tcp child could not start UCX

/// A pool-like buffer of `blocks` blocks, block b filled with bytes (seed + b) ^ offset.
std::vector<std::byte> make_buffer(size_t blocks, uint8_t seed) {
  std::vector<std::byte> buf(blocks * kBlock);
  for (size_t b = 0; b < blocks; ++b)
    for (size_t i = 0; i < kBlock; ++i)
      buf[b * kBlock + i] = static_cast<std::byte>(static_cast<uint8_t>(seed + b) ^ i);
  return buf;
}

bool block_equals(const std::vector<std::byte>& a, block_id ab, const std::vector<std::byte>& b,
                  block_id bb) {
  return std::memcmp(a.data() + size_t{ab} * kBlock, b.data() + size_t{bb} * kBlock, kBlock) == 0;
}

/// A transport, or nullptr after a WARN when UCX cannot start here (the test then skips).
std::shared_ptr<ucx_transport> make_transport(ucx_config cfg = {}) {
  auto t = ucx_transport::create(cfg);
  if (!t) {
    ::tokenmill::testing::announce_skip("UCX cannot create a context here: " + t.error().message);
    return nullptr;
  }
  return *t;
}

/// The result of one write, waited for with a bound.
struct waited {
  int calls = 0;
  error_info err;
  kv_payload payload;
};

/// Writes and waits up to `limit` for the completion; counts calls.
waited write_and_wait(kv_transport& t, std::span<const std::byte> local,
                      std::span<const block_id> src, const pool_descriptor& peer,
                      std::span<const block_id> dst, std::chrono::milliseconds limit = 3000ms) {
  auto calls = std::make_shared<std::atomic<int>>(0);
  auto promise = std::make_shared<std::promise<std::pair<error_info, kv_payload>>>();
  auto future = promise->get_future();
  t.write(local, kBlock, src, peer, dst, [calls, promise](error_info e, kv_payload p) {
    if (calls->fetch_add(1) == 0) promise->set_value({std::move(e), std::move(p)});
  });
  waited w;
  if (future.wait_for(limit) != std::future_status::ready) {
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

/// Two transports in this process: coalesced write, deliver, then concurrent writes.
/// Returns false when UCX is unavailable (after a WARN).
bool copy_body() {
  auto a = make_transport();
  auto b = make_transport();
  if (!a || !b) return false;
  auto mem_a = make_buffer(64, 1);
  auto mem_b = make_buffer(64, 100);
  const auto orig_b = mem_b;
  auto da = a->register_pool(1, mem_a, kBlock);
  auto db = b->register_pool(2, mem_b, kBlock);
  REQUIRE(da.num_blocks == 64);
  REQUIRE(db.num_blocks == 64);
  CHECK(db.remote_key.size() > 8);
  CHECK(!db.worker_address.empty());

  std::vector<block_id> src{0, 1, 2, 5};
  std::vector<block_id> dst{7, 8, 9, 3};
  auto w = write_and_wait(*a, mem_a, src, db, dst);
  INFO(w.err.message);
  REQUIRE(!w.err);
  CHECK(w.calls == 1);
  CHECK(w.payload.dst_blocks == dst);
  CHECK(w.payload.bytes.empty());
  for (size_t i = 0; i < src.size(); ++i)
    CHECK(block_equals(mem_b, dst[i], mem_a, src[i]));
  for (block_id blk = 0; blk < 64; ++blk)
    if (blk != 3 && (blk < 7 || blk > 9)) CHECK(block_equals(mem_b, blk, orig_b, blk));
  CHECK(!b->deliver(w.payload, mem_b, kBlock));

  // 64 writes in flight from two threads: thread t copies A's block i to B's block i for
  // i in its half (blocks 10..63 of B after the first write).
  std::atomic<int> completed{0};
  std::atomic<int> failed{0};
  std::promise<void> all_done;
  auto all_future = all_done.get_future();
  constexpr int kWrites = 64;
  auto submit = [&](int first, int count) {
    for (int i = first; i < first + count; ++i) {
      std::vector<block_id> s{static_cast<block_id>(i)};
      std::vector<block_id> d{static_cast<block_id>(i)};
      a->write(mem_a, kBlock, s, db, d, [&](error_info e, kv_payload) {
        if (e) failed.fetch_add(1);
        if (completed.fetch_add(1) + 1 == kWrites) all_done.set_value();
      });
    }
  };
  std::thread t1(submit, 0, kWrites / 2);
  std::thread t2(submit, kWrites / 2, kWrites / 2);
  t1.join();
  t2.join();
  REQUIRE(all_future.wait_for(5s) == std::future_status::ready);
  CHECK(failed.load() == 0);
  for (block_id blk = 0; blk < 64; ++blk)
    CHECK(block_equals(mem_b, blk, mem_a, blk));
  auto st = a->stats();
  CHECK(st.writes_completed == 1 + kWrites);
  CHECK(st.bytes_written == (src.size() + kWrites) * kBlock);
  CHECK(st.writes_failed == 0);
  CHECK(st.timeouts == 0);
  CHECK(st.stalls == 0);
  CHECK(st.writes_in_flight == 0);
  CHECK(st.writes_queued == 0);
  CHECK(st.bytes_in_flight == 0);
  CHECK(b->stats().writes_completed == 0);  // the receiver wrote nothing
  return true;
}

}  // namespace

TEST_CASE("ucx transport copies blocks between two workers", "[transport][ucx]") {
  copy_body();
}

TEST_CASE("ucx transport copies blocks in busy-poll mode", "[transport][ucx]") {
  auto a = make_transport({.busy_poll = true});
  auto b = make_transport({.busy_poll = true});
  if (!a || !b) return;
  auto mem_a = make_buffer(8, 1);
  auto mem_b = make_buffer(8, 100);
  auto db = b->register_pool(2, mem_b, kBlock);
  a->register_pool(1, mem_a, kBlock);
  std::vector<block_id> src{3, 4};
  std::vector<block_id> dst{0, 1};
  auto w = write_and_wait(*a, mem_a, src, db, dst);
  INFO(w.err.message);
  REQUIRE(!w.err);
  CHECK(block_equals(mem_b, 0, mem_a, 3));
  CHECK(block_equals(mem_b, 1, mem_a, 4));
}

/// Run by the tcp test below in a child process with UCX_TLS=tcp (hidden otherwise).
TEST_CASE("ucx transport tcp child body", "[.][ucx_tcp_child]") {
  if (!copy_body()) std::_Exit(kNoTransportExit);
}

TEST_CASE("ucx transport copies blocks over tcp", "[transport][ucx]") {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::setenv("UCX_TLS", "tcp", 1);
    char exe[] = "/proc/self/exe";
    char filter[] = "[ucx_tcp_child]";
    char* argv[] = {exe, filter, nullptr};
    ::execv(exe, argv);
    std::_Exit(127);
  }
  int status = 0;
  auto deadline = std::chrono::steady_clock::now() + 15s;
  pid_t r = 0;
  while ((r = ::waitpid(pid, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  if (r == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    FAIL("the tcp child did not finish within 15 s");
  }
  REQUIRE(WIFEXITED(status));
  if (WEXITSTATUS(status) == kNoTransportExit) {
    TM_SKIP("UCX with UCX_TLS=tcp cannot create a context here");
  }
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("ucx transport rejects bad input", "[transport][ucx]") {
  auto a = make_transport();
  auto b = make_transport();
  if (!a || !b) return;
  auto mem_a = make_buffer(8, 1);
  auto mem_b = make_buffer(8, 100);
  const auto orig_b = mem_b;
  a->register_pool(1, mem_a, kBlock);
  auto db = b->register_pool(2, mem_b, kBlock);
  REQUIRE(db.num_blocks == 8);

  auto expect_invalid = [&](std::span<const std::byte> local, size_t block_bytes,
                            std::vector<block_id> src, const pool_descriptor& peer,
                            std::vector<block_id> dst) {
    int calls = 0;
    error_info err;
    a->write(local, block_bytes, src, peer, dst, [&](error_info e, kv_payload) {
      ++calls;
      err = std::move(e);
    });
    CHECK(calls == 1);  // invalid input completes on the caller's thread
    CHECK(err.code == errc::invalid_request);
  };
  expect_invalid(mem_a, kBlock, {0, 1}, db, {0});  // mismatched sizes
  expect_invalid(mem_a, kBlock, {8}, db, {0});     // source out of range
  expect_invalid(mem_a, kBlock, {0}, db, {8});     // destination out of range
  auto short_key = db;
  short_key.remote_key.resize(8);
  expect_invalid(mem_a, kBlock, {0}, short_key, {0});
  expect_invalid(mem_a, kBlock / 2, {0}, db, {0});  // wrong block size
  auto unregistered = make_buffer(8, 7);
  expect_invalid(unregistered, kBlock, {0}, db, {0});
  std::this_thread::sleep_for(50ms);
  CHECK(mem_b == orig_b);

  CHECK(b->deliver(kv_payload{{0, 1}, {}}, mem_b, kBlock).code == errc::ok);
  CHECK(b->deliver(kv_payload{{0}, std::vector<uint8_t>(kBlock)}, mem_b, kBlock).code ==
        errc::kv_corrupt);
  CHECK(b->deliver(kv_payload{{8}, {}}, mem_b, kBlock).code == errc::kv_corrupt);
  CHECK(mem_b == orig_b);

  CHECK(a->stats().writes_failed == 6);  // invalid input counts as failed writes
  CHECK(a->stats().writes_completed == 0);

  std::vector<std::byte> empty;
  CHECK(a->register_pool(3, empty, kBlock).num_blocks == 0);
  std::vector<std::byte> ragged(kBlock + 1);
  CHECK(a->register_pool(3, ragged, kBlock).num_blocks == 0);
}

TEST_CASE("ucx transport opens endpoints only to announced pools", "[transport][ucx]") {
  auto a = make_transport({.announced_only = true});
  auto b = make_transport();
  if (!a || !b) return;
  auto mem_a = make_buffer(8, 1);
  auto mem_b = make_buffer(8, 100);
  const auto orig_b = mem_b;
  auto da = a->register_pool(1, mem_a, kBlock);
  auto db = b->register_pool(2, mem_b, kBlock);
  REQUIRE(db.num_blocks == 8);

  // Refused on the caller's thread, before write() returns: no task reached the progress
  // thread, so no endpoint was created and no remote key unpacked for it.
  auto expect_refused = [&](const pool_descriptor& peer, const char* why) {
    int calls = 0;
    error_info err;
    std::vector<block_id> src{0};
    std::vector<block_id> dst{1};
    a->write(mem_a, kBlock, src, peer, dst, [&](error_info e, kv_payload) {
      ++calls;
      err = std::move(e);
    });
    CHECK(calls == 1);
    CHECK(err.code == errc::unauthenticated);
    CHECK_THAT(err.message, Catch::Contains(why));
  };
  expect_refused(db, "no membership");  // nothing announced yet
  a->connect(db);                       // refused too (a warning, nothing queued)
  std::vector<pool_descriptor> only_a{da};
  a->announce_pools(only_a);
  expect_refused(db, "not a member");
  auto forged = db;  // B's pool under the id of an announced worker
  forged.owner = da.owner;
  expect_refused(forged, "worker address");
  std::this_thread::sleep_for(50ms);
  CHECK(mem_b == orig_b);
  auto st = a->stats();
  CHECK(st.peers_refused == 4);
  CHECK(st.writes_failed == 3);
  CHECK(st.writes_completed == 0);

  // Announced: the same write goes through.
  std::vector<pool_descriptor> both{da, db};
  a->announce_pools(both);
  std::vector<block_id> src{0};
  std::vector<block_id> dst{1};
  auto w = write_and_wait(*a, mem_a, src, db, dst);
  INFO(w.err.message);
  REQUIRE(!w.err);
  CHECK(block_equals(mem_b, 1, mem_a, 0));
  CHECK(a->stats().peers_refused == 4);
}

TEST_CASE("ucx transport fails writes to a peer that is gone", "[transport][ucx]") {
  // Peer error handling on, for this peer too: UCX itself reports the gone peer. Without it
  // (the default) a gone peer is noticed by op_timeout, tested with the stall test.
  auto a = make_transport(
      {.peer_error_handling = true, .same_host_shared_memory = false, .op_timeout = 500ms});
  auto b = make_transport();
  if (!a || !b) return;
  auto mem_a = make_buffer(8, 1);
  auto mem_b = make_buffer(8, 100);  // outlives b: a stray write must not hit freed memory
  a->register_pool(1, mem_a, kBlock);
  auto db = b->register_pool(2, mem_b, kBlock);
  b.reset();
  std::vector<block_id> src{0};
  std::vector<block_id> dst{0};
  auto start = std::chrono::steady_clock::now();
  auto w = write_and_wait(*a, mem_a, src, db, dst, 2000ms);
  auto took = std::chrono::steady_clock::now() - start;
  INFO(w.err.message);
  CHECK(w.err.code != errc::ok);
  CHECK(w.calls == 1);
  CHECK(took < 1500ms);
}

TEST_CASE("ucx transport fails pending writes when destroyed", "[transport][ucx]") {
  auto a = make_transport();
  auto b = make_transport();
  if (!a || !b) return;
  auto mem_a = make_buffer(8, 1);
  auto mem_b = make_buffer(8, 100);
  a->register_pool(1, mem_a, kBlock);
  auto db = b->register_pool(2, mem_b, kBlock);
  constexpr int kWrites = 32;
  std::vector<int> calls(kWrites, 0);
  std::vector<errc> codes(kWrites, errc::ok);
  for (int i = 0; i < kWrites; ++i) {
    std::vector<block_id> s{static_cast<block_id>(i % 8)};
    a->write(mem_a, kBlock, s, db, s, [&calls, &codes, i](error_info e, kv_payload) {
      ++calls[static_cast<size_t>(i)];
      codes[static_cast<size_t>(i)] = e.code;
    });
  }
  a.reset();  // joins the progress thread: every completion has run by now
  // Each write completes exactly once: ok if it finished in time, unavailable if it was
  // still pending when the transport went (how many is up to the machine's timing).
  for (int i = 0; i < kWrites; ++i) {
    CHECK(calls[static_cast<size_t>(i)] == 1);
    auto c = codes[static_cast<size_t>(i)];
    CHECK((c == errc::ok || c == errc::unavailable));
  }
}

TEST_CASE("ucx transport fails writes after a connected peer goes, and reconnects",
          "[transport][ucx]") {
  // Each round: connect to a fresh peer, let it go, fail a write on the failed endpoint (which
  // the transport then closes and frees), and start over with a new peer.
  auto a = make_transport(
      {.peer_error_handling = true, .same_host_shared_memory = false, .op_timeout = 1000ms});
  if (!a) return;
  auto mem_a = make_buffer(8, 1);
  a->register_pool(1, mem_a, kBlock);
  std::vector<block_id> ids{0, 1};
  for (int round = 0; round < 3; ++round) {
    auto b = make_transport();
    REQUIRE(b);
    auto mem_b = make_buffer(8, 100);  // outlives b
    auto db = b->register_pool(2, mem_b, kBlock);
    auto ok = write_and_wait(*a, mem_a, ids, db, ids);
    INFO(ok.err.message);
    REQUIRE_FALSE(ok.err);
    CHECK(block_equals(mem_b, 1, mem_a, 1));
    b.reset();
    auto gone = write_and_wait(*a, mem_a, ids, db, ids, 3000ms);
    INFO(gone.err.message);
    CHECK(gone.err.code != errc::ok);
    CHECK(gone.calls == 1);
  }
  auto st = a->stats();
  CHECK(st.writes_completed == 3);
  CHECK(st.writes_failed == 3);
  CHECK(st.writes_in_flight == 0);
}

TEST_CASE("ucx transport keeps writes within its window", "[transport][ucx][ucx-window]") {
  constexpr uint64_t kWindow = 4 * kBlock;
  auto a = make_transport({.max_inflight_bytes = kWindow});
  auto b = make_transport();
  if (!a || !b) return;
  auto mem_a = make_buffer(64, 1);
  auto mem_b = make_buffer(64, 100);
  a->register_pool(1, mem_a, kBlock);
  auto db = b->register_pool(2, mem_b, kBlock);

  // Sample the gauges while the writes run.
  std::atomic<bool> sampling{true};
  uint64_t max_bytes = 0;
  uint32_t max_queued = 0, max_writes = 0;
  std::thread sampler([&] {
    while (sampling.load()) {
      auto s = a->stats();
      max_bytes = std::max(max_bytes, s.bytes_in_flight);
      max_queued = std::max(max_queued, s.writes_queued);
      max_writes = std::max(max_writes, s.writes_in_flight);
      std::this_thread::sleep_for(20us);
    }
  });

  constexpr int kWrites = 300;
  std::vector<std::atomic<int>> calls(kWrites);
  std::atomic<int> completed{0}, failed{0};
  std::promise<void> all_done;
  auto all_future = all_done.get_future();
  uint64_t bytes = 0;
  for (int i = 0; i < kWrites; ++i) {
    // Mostly single blocks, every third write two (block i and i + 1: src == dst).
    auto first = static_cast<block_id>(i % 63);
    std::vector<block_id> ids{first};
    if (i % 3 == 0) ids.push_back(first + 1);
    bytes += ids.size() * kBlock;
    a->write(mem_a, kBlock, ids, db, ids, [&, i](error_info e, kv_payload) {
      calls[static_cast<size_t>(i)].fetch_add(1);
      if (e) failed.fetch_add(1);
      if (completed.fetch_add(1) + 1 == kWrites) all_done.set_value();
    });
  }
  bool finished = all_future.wait_for(20s) == std::future_status::ready;
  std::this_thread::sleep_for(20ms);  // a second completion would show up here
  sampling.store(false);
  sampler.join();
  REQUIRE(finished);
  CHECK(failed.load() == 0);
  for (int i = 0; i < kWrites; ++i)
    CHECK(calls[static_cast<size_t>(i)].load() == 1);
  INFO("max in flight " << max_bytes << " B in " << max_writes << " writes; max queued "
                        << max_queued);
  CHECK(max_bytes <= kWindow);
  CHECK(max_bytes > 0);
  CHECK(max_queued > 0);
  auto st = a->stats();
  CHECK(st.writes_completed == kWrites);
  CHECK(st.bytes_written == bytes);
  CHECK(st.writes_in_flight == 0);
  CHECK(st.writes_queued == 0);
  CHECK(st.bytes_in_flight == 0);
  for (block_id blk = 0; blk < 63; ++blk)  // every block but the last was written
    CHECK(block_equals(mem_b, blk, mem_a, blk));
}

namespace {

bool send_all(int fd, const void* data, size_t n) {
  auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool recv_all(int fd, void* data, size_t n) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool send_vec(int fd, const std::vector<uint8_t>& v) {
  uint32_t n = static_cast<uint32_t>(v.size());
  return send_all(fd, &n, sizeof(n)) && send_all(fd, v.data(), v.size());
}

bool recv_vec(int fd, std::vector<uint8_t>& v) {
  uint32_t n = 0;
  if (!recv_all(fd, &n, sizeof(n)) || n > (1u << 20)) return false;
  v.resize(n);
  return recv_all(fd, v.data(), n);
}

/// The stall test's receiver (a forked process): registers a pool, sends its descriptor
/// ('D' ...) or 'E' when UCX cannot start, then waits for 'Q' or the socket to close.
int run_receiver(int fd, size_t blocks) {
  int rc = 0;
  {
    // Declared before the transport so that it is destroyed after it: puts of a write the
    // sender gave up on may still land while the transport shuts down.
    auto mem = make_buffer(blocks, 100);
    auto t = ucx_transport::create();
    if (!t) {
      char e = 'E';
      send_all(fd, &e, 1);
      return kNoTransportExit;
    }
    auto d = (*t)->register_pool(2, mem, kBlock);
    char tag = 'D';
    if (!send_all(fd, &tag, 1) || !send_all(fd, &d.owner, sizeof(d.owner)) ||
        !send_all(fd, &d.block_bytes, sizeof(d.block_bytes)) ||
        !send_all(fd, &d.num_blocks, sizeof(d.num_blocks)) || !send_vec(fd, d.remote_key) ||
        !send_vec(fd, d.worker_address))
      return 2;
    char c = 0;
    while (recv_all(fd, &c, 1) && c != 'Q') {
    }
    rc = c == 'Q' ? 0 : 3;
  }  // the transport goes before the pool
  return rc;
}

/// Stops, continues and reaps the receiver on every path out of the test.
struct receiver_guard {
  pid_t pid = -1;
  int fd = -1;
  ~receiver_guard() {
    if (pid > 0) {
      ::kill(pid, SIGCONT);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    if (fd >= 0) ::close(fd);
  }
  /// Asks the receiver to quit; its exit status, or -1 when it had to be killed.
  int quit(std::chrono::milliseconds limit) {
    char q = 'Q';
    send_all(fd, &q, 1);
    int status = 0;
    auto deadline = std::chrono::steady_clock::now() + limit;
    pid_t r = 0;
    while ((r = ::waitpid(pid, &status, WNOHANG)) == 0 &&
           std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(5ms);
    if (r != pid) return -1;  // the destructor kills it
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
};

}  // namespace

/// Run by the stall test below in a child process with UCX_TLS=tcp (hidden otherwise): a
/// receiver process that is SIGSTOPped after registering, so its endpoint stays connected
/// but it never answers.
TEST_CASE("ucx transport stall child body", "[.][ucx_stall_child]") {
  constexpr size_t kBlocks = 2048;  // 8 MiB
  constexpr auto kStall = 200ms;
  constexpr auto kOp = 1000ms;
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  pid_t pid = ::fork();  // before any UCX object in this process
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(sv[0]);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    std::_Exit(run_receiver(sv[1], kBlocks));
  }
  ::close(sv[1]);
  receiver_guard child{pid, sv[0]};
  char tag = 0;
  REQUIRE(recv_all(sv[0], &tag, 1));
  if (tag == 'E') std::_Exit(kNoTransportExit);
  REQUIRE(tag == 'D');
  pool_descriptor db;
  REQUIRE(recv_all(sv[0], &db.owner, sizeof(db.owner)));
  REQUIRE(recv_all(sv[0], &db.block_bytes, sizeof(db.block_bytes)));
  REQUIRE(recv_all(sv[0], &db.num_blocks, sizeof(db.num_blocks)));
  REQUIRE(recv_vec(sv[0], db.remote_key));
  REQUIRE(recv_vec(sv[0], db.worker_address));
  REQUIRE(db.num_blocks == kBlocks);

  auto a = make_transport({.op_timeout = kOp, .stall_timeout = kStall});
  REQUIRE(a);
  auto mem_a = make_buffer(kBlocks, 1);
  a->register_pool(1, mem_a, kBlock);
  // One write completes first: the endpoint is wired up before the receiver stops.
  std::vector<block_id> first{0};
  auto w0 = write_and_wait(*a, mem_a, first, db, first);
  INFO(w0.err.message);
  REQUIRE_FALSE(w0.err);

  REQUIRE(::kill(pid, SIGSTOP) == 0);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, WUNTRACED) == pid);
  REQUIRE(WIFSTOPPED(status));

  std::vector<block_id> all(kBlocks);
  for (size_t i = 0; i < kBlocks; ++i)
    all[i] = static_cast<block_id>(i);
  auto calls = std::make_shared<std::atomic<int>>(0);
  auto promise = std::make_shared<std::promise<error_info>>();
  auto future = promise->get_future();
  const auto start = std::chrono::steady_clock::now();
  a->write(mem_a, kBlock, all, db, all, [calls, promise](error_info e, kv_payload) {
    if (calls->fetch_add(1) == 0) promise->set_value(std::move(e));
  });
  std::optional<std::chrono::steady_clock::duration> stalled_after;
  while (future.wait_for(5ms) != std::future_status::ready &&
         std::chrono::steady_clock::now() - start < 5s)
    if (!stalled_after && a->stats().stalls >= 1)
      stalled_after = std::chrono::steady_clock::now() - start;
  REQUIRE(future.wait_for(0ms) == std::future_status::ready);
  const auto took = std::chrono::steady_clock::now() - start;
  error_info err = future.get();
  std::this_thread::sleep_for(50ms);  // a second completion would show up here
  INFO(err.message);
  CHECK(err.code == errc::timeout);
  CHECK(calls->load() == 1);
  INFO("done after " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                     << " ms");
  CHECK(took >= kOp - 5ms);
  CHECK(took < kOp + 700ms);           // slack: the progress thread's wake-up on a busy 2-vCPU VM
  REQUIRE(stalled_after.has_value());  // reported while the write was still pending
  CHECK(*stalled_after >= kStall - 5ms);
  CHECK(*stalled_after < kOp);
  auto st = a->stats();
  CHECK(st.stalls == 1);  // once per write
  CHECK(st.timeouts == 1);
  CHECK(st.writes_failed == 1);
  CHECK(st.writes_completed == 1);
  CHECK(st.writes_in_flight == 0);
  CHECK(st.bytes_in_flight == 0);

  // Let the receiver run again, close our side while it can answer, then let it quit.
  REQUIRE(::kill(pid, SIGCONT) == 0);
  std::this_thread::sleep_for(100ms);
  a.reset();
  CHECK(child.quit(5s) == 0);
}

TEST_CASE("ucx transport reports a stalled write, then times it out",
          "[transport][ucx][ucx-stall]") {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::setenv("UCX_TLS", "tcp", 1);
    char exe[] = "/proc/self/exe";
    char filter[] = "[ucx_stall_child]";
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
    FAIL("the stall child did not finish within 30 s");
  }
  REQUIRE(WIFEXITED(status));
  if (WEXITSTATUS(status) == kNoTransportExit) {
    TM_SKIP("UCX with UCX_TLS=tcp cannot create a context here");
  }
  CHECK(WEXITSTATUS(status) == 0);
}

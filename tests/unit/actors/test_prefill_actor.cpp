// Prefill worker tests: the scoped actor plays supervisor, decode worker and router. The
// destination is a pool the test owns, registered with the inline transport, so the
// test delivers every kv_transfer itself and checks checksums and contents.
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <variant>

#include "tests/unit/actors/actor_test_util.hpp"
#include "transport/kv_transport.hpp"
#include "transport/peer_policy.hpp"

using namespace tokenmill;
using namespace tokenmill::test;

namespace {

constexpr worker_id prefill_wid = 3;
constexpr worker_id decode_wid = 2;

prefill_config small_prefill(uint32_t num_blocks = 64, uint32_t token_budget = 512) {
  prefill_config c;
  c.num_blocks = num_blocks;
  c.token_budget = token_budget;
  c.max_seqs = 16;
  return c;
}

/// What the worker sent for one job, in arrival order.
struct job_output {
  std::vector<kv_transfer> transfers;
  std::optional<first_token> first;
  std::optional<kv_ready> ready;
};

struct prefill_harness {
  test_system ts;
  caf::scoped_actor self{ts.sys};
  actor_reaper reaper;
  sim_config scfg = fast_sim();
  sim_engine eng{scfg};             ///< the test's own engine, to check results
  block_pool dst{scfg.layout, 16};  ///< the "decode" pool the worker writes into
  inline_transport tp;
  pool_descriptor dst_desc = tp.register_pool(decode_wid, dst.memory(), dst.block_bytes());
  std::shared_ptr<engine_gate> gate;
  caf::actor prefill;

  explicit prefill_harness(prefill_config pc = small_prefill(), bool gated = false,
                           std::shared_ptr<kv_transport> transport = nullptr) {
    if (gated) gate = std::make_shared<engine_gate>();
    std::unique_ptr<engine> e;
    if (gated)
      e = std::make_unique<gated_engine>(scfg, gate, gated_engine::gated_call::prefill);
    else
      e = std::make_unique<sim_engine>(scfg);
    prefill = reaper.add(spawn_prefill(
        ts.sys, make_info(prefill_wid, role::prefill, "prefill-0"), pc, std::move(e),
        transport ? transport : std::make_shared<inline_transport>(), handle_of(self)));
    auto reg = answer_registration(self);
    REQUIRE(reg.info.id == prefill_wid);
    REQUIRE(reg.info.kind == role::prefill);
    REQUIRE(reg.handle == prefill);
    REQUIRE(reg.info.pool.block_bytes == scfg.layout.block_bytes());
  }

  ~prefill_harness() {
    if (gate) gate->open();
  }

  prefill_job job(request_id id, size_t prompt_len, std::vector<block_id> dst_blocks) {
    prefill_job j;
    j.id = id;
    j.prompt = prompt_of(prompt_len, static_cast<token_id>(300 + id));
    j.dst = dst_desc;
    j.dst_blocks = std::move(dst_blocks);
    j.decode = handle_of(self);
    j.router = handle_of(self);
    j.tr.id = id;
    return j;
  }

  void wait_until_engine_busy() {
    REQUIRE(gate);
    gate->wait_until_entered();
  }
  void open_gate() { gate->open(); }

  /// Receives everything the worker sends for request `id` up to kv_ready: kv_transfers,
  /// then first_token (router), then kv_ready (decode). Fails on any other order.
  job_output collect(request_id id) {
    job_output out;
    while (!out.ready) {
      std::variant<std::monostate, kv_transfer, first_token, kv_ready> got;
      std::string problem;
      self->receive([&](kv_transfer& t) { got = std::move(t); },
                    [&](first_token& f) { got = std::move(f); },
                    [&](kv_ready& r) { got = std::move(r); },
                    caf::others >> [&](caf::message_view& x) -> caf::result<caf::message> {
                      problem = "unexpected message " + describe(x);
                      return caf::sec::unexpected_message;
                    },
                    caf::after(receive_timeout) >> [&] { problem = "timed out"; });
      if (auto* t = std::get_if<kv_transfer>(&got)) {
        CHECK(t->id == id);
        CHECK_FALSE(out.first);  // data first, control after
        out.transfers.push_back(std::move(*t));
      } else if (auto* f = std::get_if<first_token>(&got)) {
        CHECK(f->id == id);
        CHECK_FALSE(out.first);
        out.first = std::move(*f);
      } else if (auto* r = std::get_if<kv_ready>(&got)) {
        CHECK(r->id == id);
        CHECK(out.first);  // the router hears first, then the decode worker
        out.ready = std::move(*r);
      } else {
        FAIL("waiting for kv_transfer, first_token or kv_ready: " << problem);
      }
    }
    return out;
  }

  /// Delivers the transfers into the test's pool, checks their checksums and returns the
  /// destination blocks in the order they arrived.
  std::vector<block_id> deliver(const job_output& out) {
    std::vector<block_id> blocks;
    for (const auto& t : out.transfers) {
      REQUIRE(t.checksums.size() == t.payload.dst_blocks.size());
      REQUIRE_FALSE(tp.deliver(t.payload, dst.memory(), dst.block_bytes()));
      for (size_t i = 0; i < t.payload.dst_blocks.size(); ++i) {
        CHECK(block_checksum(dst, t.payload.dst_blocks[i]) == t.checksums[i]);
        blocks.push_back(t.payload.dst_blocks[i]);
      }
    }
    return blocks;
  }

  /// Checks a completed job end to end: blocks, contents, first token.
  void check_job(const prefill_job& j, const job_output& out) {
    auto blocks = deliver(out);
    CHECK(blocks == j.dst_blocks);
    CHECK(
        eng.check_kv(dst, j.prompt, j.dst_blocks, 0, static_cast<uint32_t>(j.prompt.size())).ok());
    auto expected_first = eng.next_token(j.prompt, j.sampling);
    REQUIRE(out.first);
    REQUIRE(out.ready);
    CHECK(out.first->token == expected_first);
    CHECK(out.ready->first_token == expected_first);
    CHECK(out.ready->blocks == j.dst_blocks.size());
  }

  worker_status status_and_quiet(const char* context) {
    auto ws = query_status(self, prefill);
    expect_no_message(self, context);
    return ws;
  }
};

}  // namespace

TEST_CASE("prefill: chunks are written as they complete, control never overtakes data",
          "[prefill_actor]") {
  prefill_harness h{small_prefill(64, 5)};  // 5-token chunks
  auto j = h.job(1, 13, {7, 3, 12, 0});     // 13 tokens: four blocks, the last partial
  h.self->send(h.prefill, j);
  auto out = h.collect(j.id);
  // Chunks [0,5) [5,10) [10,13) complete blocks 1, 1 and 2: one transfer per chunk.
  CHECK(out.transfers.size() >= 2);
  REQUIRE(out.transfers.size() == 3);
  CHECK(out.transfers[0].payload.dst_blocks == std::vector<block_id>{7});
  CHECK(out.transfers[1].payload.dst_blocks == std::vector<block_id>{3});
  CHECK(out.transfers[2].payload.dst_blocks == std::vector<block_id>{12, 0});
  h.check_job(j, out);
  CHECK(out.first->tr.time_of(stage::prefill_done));
  CHECK(out.first->tr.time_of(stage::kv_pushed));
  // Nothing follows kv_ready: no late kv_transfer.
  auto ws = h.status_and_quiet("after kv_ready");
  CHECK(ws.kv_used == 0);
  CHECK(ws.completed == 1);
  CHECK(ws.tokens_out == 13);
  CHECK(ws.queued == 0);
  CHECK(ws.running == 0);
}

TEST_CASE("prefill: a job that holds its first token sends it to the decode worker only",
          "[prefill_actor]") {
  // First-token release `decode`: no first_token to the router; kv_ready carries the token
  // and its log-probabilities, for the decode worker to release.
  prefill_harness h;
  auto j = h.job(3, 13, {7, 3, 12, 0});
  j.hold_first_token = true;
  j.sampling.top_logprobs = 2;
  h.self->send(h.prefill, j);
  std::vector<kv_transfer> transfers;
  std::optional<kv_ready> ready;
  while (!ready) {
    std::string problem;
    h.self->receive([&](kv_transfer& t) { transfers.push_back(std::move(t)); },
                    [&](kv_ready& r) { ready = std::move(r); },
                    caf::others >> [&](caf::message_view& x) -> caf::result<caf::message> {
                      problem = "unexpected message " + describe(x);
                      return caf::sec::unexpected_message;
                    },
                    caf::after(receive_timeout) >> [&] { problem = "timed out"; });
    if (!problem.empty()) FAIL("waiting for kv_transfer or kv_ready: " << problem);
  }
  job_output out{std::move(transfers), std::nullopt, std::move(ready)};
  auto blocks = h.deliver(out);
  CHECK(blocks == j.dst_blocks);
  CHECK(out.ready->first_token == h.eng.next_token(j.prompt, j.sampling));
  CHECK(out.ready->first_logprobs.top.size() == 2);
  CHECK(out.ready->first_logprobs.top[0].token == out.ready->first_token);
  CHECK(out.ready->tr.time_of(stage::kv_pushed));
  CHECK(h.status_and_quiet("after kv_ready").kv_used == 0);
}

TEST_CASE("prefill: malformed jobs fail with invalid_request", "[prefill_actor]") {
  prefill_harness h;
  SECTION("wrong number of destination blocks") {
    h.self->send(h.prefill, h.job(2, 13, {1, 2, 3}));
  }
  SECTION("destination blocks of the wrong size") {
    auto j = h.job(2, 13, {1, 2, 3, 4});
    j.dst.block_bytes /= 2;
    h.self->send(h.prefill, j);
  }
  SECTION("empty prompt") {
    auto j = h.job(2, 0, {});
    h.self->send(h.prefill, j);
  }
  auto f = expect<prefill_failed>(h.self, "prefill_failed");
  CHECK(f.id == 2);
  CHECK(f.error.code == errc::invalid_request);
  CHECK(expect<kv_drained>(h.self, "kv_drained").id == 2);  // nothing was written
  auto ws = h.status_and_quiet("after a malformed job");
  CHECK(ws.kv_used == 0);
  CHECK(ws.tokens_out == 0);
}

TEST_CASE("prefill: a prompt larger than the pool fails with out_of_blocks", "[prefill_actor]") {
  prefill_harness h{small_prefill(2)};
  h.self->send(h.prefill, h.job(3, 13, {0, 1, 2, 3}));
  auto f = expect<prefill_failed>(h.self, "prefill_failed");
  CHECK(f.id == 3);
  CHECK(f.error.code == errc::out_of_blocks);
  CHECK(expect<kv_drained>(h.self, "kv_drained").id == 3);
  CHECK(h.status_and_quiet("after out_of_blocks").kv_used == 0);
}

TEST_CASE("prefill: cancelling a queued job frees its blocks and it is never computed",
          "[prefill_actor]") {
  prefill_harness h{small_prefill(), true};
  auto a = h.job(10, 8, {0, 1});
  auto b = h.job(11, 12, {4, 5, 6});
  h.self->send(h.prefill, a);
  h.wait_until_engine_busy();  // A is on the engine; B queues behind it
  h.self->send(h.prefill, b);
  h.self->send(h.prefill, cancel_request{b.id});
  // B had no write in flight: the decode side may reuse its blocks at once.
  CHECK(expect<kv_drained>(h.self, "kv_drained for the cancelled B").id == b.id);
  h.open_gate();
  auto out = h.collect(a.id);
  h.check_job(a, out);
  auto ws = h.status_and_quiet("after A (nothing for the cancelled B)");
  CHECK(ws.kv_used == 0);
  CHECK(ws.completed == 1);
  CHECK(ws.tokens_out == 8);  // B's 12 tokens were never computed
  CHECK(ws.queued == 0);
  CHECK(ws.running == 0);
}

TEST_CASE("prefill: a job waiting for blocks runs when they free, or goes when cancelled",
          "[prefill_actor]") {
  prefill_harness h{small_prefill(4), true};  // A takes the whole pool
  auto a = h.job(20, 16, {0, 1, 2, 3});
  auto b = h.job(21, 8, {8, 9});
  h.self->send(h.prefill, a);
  h.wait_until_engine_busy();
  h.self->send(h.prefill, b);
  bool cancel_b = GENERATE(false, true);
  if (cancel_b) {
    h.self->send(h.prefill, cancel_request{b.id});
    CHECK(expect<kv_drained>(h.self, "kv_drained for the cancelled B").id == b.id);
  }
  auto ws = query_status(h.self, h.prefill);
  CHECK(ws.kv_used == 4);
  CHECK(ws.queued == (cancel_b ? 0u : 1u));
  h.open_gate();
  h.check_job(a, h.collect(a.id));
  if (!cancel_b) h.check_job(b, h.collect(b.id));
  ws = h.status_and_quiet("after the jobs");
  CHECK(ws.kv_used == 0);
  CHECK(ws.completed == (cancel_b ? 1u : 2u));
  CHECK(ws.tokens_out == (cancel_b ? 16u : 24u));
}

TEST_CASE("prefill: a job delivered twice is ignored and computed once", "[prefill_actor]") {
  prefill_harness h{small_prefill(), true};
  auto a = h.job(30, 10, {0, 1, 2});
  h.self->send(h.prefill, a);
  h.wait_until_engine_busy();
  h.self->send(h.prefill, a);  // the repeat must not fail the live job
  h.open_gate();
  h.check_job(a, h.collect(a.id));
  auto ws = h.status_and_quiet("after the job");
  CHECK(ws.kv_used == 0);
  CHECK(ws.tokens_out == 10);
}

TEST_CASE("prefill: destination blocks outside the peer's pool fail the job", "[prefill_actor]") {
  prefill_harness h;
  h.self->send(h.prefill, h.job(40, 8, {0, 99}));  // the test's pool has 16 blocks
  auto f = expect<prefill_failed>(h.self, "prefill_failed");
  CHECK(f.id == 40);
  CHECK(f.error.code != errc::ok);
  CHECK(expect<kv_drained>(h.self, "kv_drained").id == 40);
  auto ws = h.status_and_quiet("after the failed write");
  CHECK(ws.kv_used == 0);
  CHECK(ws.completed == 0);
}

TEST_CASE("prefill: a failed write frees blocks for the job waiting behind it", "[prefill_actor]") {
  // Regression (actors/prefill/prefill_actor.cpp): fail_job() -> drop_job() freed the
  // job's blocks but nothing called launch(), so a job waiting for blocks stayed waiting
  // until an unrelated message arrived. Here A's write fails (a destination block outside
  // the peer's pool) after A was computed; B waits for A's blocks and must be admitted.
  // The cancel_request handler had the same gap (drop_job without launch); with the
  // inline transport it only delayed B until the engine's current step returned, but with
  // a one-sided transport (writes pending, engine idle) B would have waited indefinitely.
  prefill_harness h{small_prefill(4), true};
  auto a = h.job(50, 16, {0, 1, 2, 99});  // the test's pool has 16 blocks: 99 fails
  auto b = h.job(51, 8, {8, 9});
  h.self->send(h.prefill, a);
  h.wait_until_engine_busy();
  h.self->send(h.prefill, b);  // waits: A holds the whole pool
  h.open_gate();
  auto f = expect<prefill_failed>(h.self, "prefill_failed for A");
  CHECK(f.id == a.id);
  CHECK(f.error.code != errc::ok);
  CHECK(expect<kv_drained>(h.self, "kv_drained for A").id == a.id);
  // The failure was handled before this status query: B must have left the wait queue.
  auto ws = query_status(h.self, h.prefill);
  CHECK(ws.queued == 0);
  REQUIRE(ws.queued == 0);
  h.check_job(b, h.collect(b.id));
  ws = h.status_and_quiet("after B");
  CHECK(ws.kv_used == 0);
  CHECK(ws.completed == 1);
}

namespace {
/// A one-sided transport whose writes complete only when the test says so: what UCX looks
/// like while a put is on its way. Bytes go through the inline transport underneath.
class held_transport final : public kv_transport {
 public:
  std::string_view name() const override { return "held"; }
  bool one_sided() const override { return true; }
  kv_transport_stats stats() const override { return {}; }
  pool_descriptor register_pool(worker_id owner, pool_memory& memory, size_t block_bytes) override {
    return inner.register_pool(owner, memory, block_bytes);
  }
  void write(const pool_memory& local, size_t block_bytes, std::span<const block_id> src,
             const pool_descriptor& peer, std::span<const block_id> dst, completion done) override {
    inner.write(local, block_bytes, src, peer, dst, [this, done](error_info e, kv_payload p) {
      {
        std::lock_guard lock{mutex};
        held.push_back([done, e, p]() mutable { done(std::move(e), std::move(p)); });
      }
      held_cv.notify_all();
    });
  }
  error_info deliver(const kv_payload& payload, pool_memory& local, size_t block_bytes) override {
    return inner.deliver(payload, local, block_bytes);
  }
  size_t pending() {
    std::lock_guard lock{mutex};
    return held.size();
  }
  /// Waits (at most `receive_timeout`) until the worker has handed a write over: the
  /// transport is called on the worker's thread, after no message the test could await.
  bool wait_until_held() {
    std::unique_lock lock{mutex};
    return held_cv.wait_for(lock, receive_timeout, [this] { return !held.empty(); });
  }
  void complete_all() {
    std::vector<std::function<void()>> now;
    {
      std::lock_guard lock{mutex};
      now.swap(held);
    }
    for (auto& f : now)
      f();
  }

  inline_transport inner;
  std::mutex mutex;
  std::condition_variable held_cv;
  std::vector<std::function<void()>> held;
};
}  // namespace

TEST_CASE("prefill: a cancelled job keeps its blocks until its writes complete",
          "[prefill_actor]") {
  // With a one-sided transport a write reads the job's blocks, and puts into the decode
  // worker's, until it completes: neither side may reuse them before.
  auto tp = std::make_shared<held_transport>();
  prefill_harness h{small_prefill(), false, tp};
  auto a = h.job(52, 8, {0, 1});
  h.self->send(h.prefill, a);
  // The whole prompt is computed and its write handed to the transport, which holds it.
  REQUIRE(tp->wait_until_held());
  REQUIRE(tp->pending() > 0);
  h.self->send(h.prefill, cancel_request{a.id});
  auto ws = query_status(h.self, h.prefill);
  CHECK(ws.kv_used == 2);  // held: the write still reads them
  expect_no_message(h.self, "no kv_drained while a write is in flight");
  tp->complete_all();
  CHECK(expect<kv_drained>(h.self, "kv_drained once the write completed").id == a.id);
  ws = h.status_and_quiet("after the drain");
  CHECK(ws.kv_used == 0);
  CHECK(ws.completed == 0);
}

namespace {
/// A transport that, like UCX with announced_only, writes only to pools the supervisor
/// announced (transport/peer_policy.hpp decides); bytes go through the inline transport.
class announcing_transport final : public kv_transport {
 public:
  std::string_view name() const override { return "announcing"; }
  kv_transport_stats stats() const override { return {}; }
  pool_descriptor register_pool(worker_id owner, pool_memory& memory, size_t block_bytes) override {
    return inner.register_pool(owner, memory, block_bytes);
  }
  void write(const pool_memory& local, size_t block_bytes, std::span<const block_id> src,
             const pool_descriptor& peer, std::span<const block_id> dst, completion done) override {
    std::string why;
    {
      std::lock_guard lock{mutex};
      why = peers.check(peer);
      if (!why.empty()) ++refused;
    }
    if (!why.empty()) return done(error_info{errc::unauthenticated, why}, {});
    inner.write(local, block_bytes, src, peer, dst, std::move(done));
  }
  error_info deliver(const kv_payload& payload, pool_memory& local, size_t block_bytes) override {
    return inner.deliver(payload, local, block_bytes);
  }
  void announce_pools(std::span<const pool_descriptor> pools) override {
    std::lock_guard lock{mutex};
    peers.replace(pools);
  }
  bool accepts_peer(const pool_descriptor& peer) const override {
    std::lock_guard lock{mutex};
    return peers.check(peer).empty();
  }
  uint64_t refused_writes() {
    std::lock_guard lock{mutex};
    return refused;
  }

  inline_transport inner;
  mutable std::mutex mutex;
  announced_pools peers{true};
  uint64_t refused = 0;
};

/// The membership a supervisor would send: the decode worker that owns `pool`, up.
membership decode_member(const pool_descriptor& pool, caf::actor handle) {
  member m;
  m.info = make_info(pool.owner, role::decode, "decode-0");
  m.info.pool = pool;
  m.handle = std::move(handle);
  return membership{{m}};
}
}  // namespace

TEST_CASE("prefill: a job that overtakes its pool's announcement waits for it", "[prefill_actor]") {
  auto tp = std::make_shared<announcing_transport>();
  auto pc = small_prefill();
  pc.announce_wait = std::chrono::milliseconds(200);
  prefill_harness h{pc, false, tp};
  // A UCX descriptor has a worker address; the inline one has none, so give it one.
  h.dst_desc.worker_address = {1, 2, 3};
  SECTION("the membership arrives after the job: the job runs, nothing is refused") {
    auto j = h.job(60, 8, {0, 1});
    h.self->send(h.prefill, j);
    // It waits without taking local blocks, and nothing is sent for it.
    CHECK(h.status_and_quiet("before the announcement").kv_used == 0);
    h.self->send(h.prefill, decode_member(h.dst_desc, handle_of(h.self)));
    h.check_job(j, h.collect(j.id));
    CHECK(tp->refused_writes() == 0);
  }
  SECTION("a pool never announced: the job fails as unauthenticated, nothing is written") {
    auto other = h.dst_desc;
    other.remote_key = {9};  // what a forged or stale descriptor looks like
    h.self->send(h.prefill, decode_member(other, handle_of(h.self)));
    auto j = h.job(61, 8, {0, 1});
    h.self->send(h.prefill, j);
    auto f = expect<prefill_failed>(h.self, "prefill_failed");
    CHECK(f.id == j.id);
    CHECK(f.error.code == errc::unauthenticated);
    CHECK_THAT(f.error.message, Catch::Contains("not announced"));
    CHECK(expect<kv_drained>(h.self, "kv_drained").id == j.id);
    CHECK(tp->refused_writes() == 0);  // refused before any write was tried
    auto ws = h.status_and_quiet("after the refusal");
    CHECK(ws.kv_used == 0);
    CHECK(ws.tokens_out == 0);
  }
  SECTION("a waiting job that is cancelled goes without a trace") {
    auto j = h.job(62, 8, {0, 1});
    h.self->send(h.prefill, j);
    h.self->send(h.prefill, cancel_request{j.id});
    CHECK(expect<kv_drained>(h.self, "kv_drained").id == j.id);  // nothing was written
    // The wait's timer fires later and finds nothing to fail.
    std::this_thread::sleep_for(pc.announce_wait + std::chrono::milliseconds(100));
    CHECK(h.status_and_quiet("after the cancel").kv_used == 0);
  }
}

// Fetch instead of recompute (issue 16 item 3): a decode worker assigned a local prefill
// with a fetch plan — or the prefill worker of a remote prefill, the plan passed on with its
// job — pulls the prompt's prefix blocks from a peer's prefix cache, checks them and
// prefills only the rest; whatever goes wrong (blocks evicted at the source, the source lost
// or silent, a corrupted block) it computes those tokens itself. Real decode and prefill
// workers (sim engine, inline transport); the scoped actor is their supervisor and router.
// Each worker's engine counts the prompt tokens it prefilled, so a test sees what was
// fetched and what computed; the greedy tokens must equal the sim's own continuation.
#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "tests/unit/actors/actor_test_util.hpp"
#include "transport/kv_transport.hpp"

using namespace tokenmill;
using namespace tokenmill::test;

namespace {

/// The sim engine, counting the prompt tokens it prefills.
class counting_engine final : public engine {
 public:
  counting_engine(sim_config cfg, std::shared_ptr<std::atomic<uint64_t>> prefilled)
      : sim_(cfg), prefilled_(std::move(prefilled)) {}
  const model_info& info() const override { return sim_.info(); }
  result<std::vector<token_id>> prefill(block_pool& pool,
                                        std::span<const prefill_chunk> batch) override {
    for (const auto& c : batch)
      *prefilled_ += c.end - c.begin;
    return sim_.prefill(pool, batch);
  }
  result<std::vector<token_id>> decode(block_pool& pool,
                                       std::span<const decode_seq> batch) override {
    return sim_.decode(pool, batch);
  }
  result<void> check_kv(const block_pool& pool, std::span<const token_id> tokens,
                        std::span<const block_id> blocks, uint32_t begin,
                        uint32_t end) const override {
    return sim_.check_kv(pool, tokens, blocks, begin, end);
  }

 private:
  sim_engine sim_;
  std::shared_ptr<std::atomic<uint64_t>> prefilled_;
};

/// The inline transport, flipping one byte of every payload it carries when told to (a
/// block damaged on the way: its checksum no longer matches).
class flaky_transport final : public kv_transport {
 public:
  using kv_transport::deliver;
  using kv_transport::register_pool;
  using kv_transport::write;
  std::atomic<bool> corrupt{false};
  std::atomic<int> corrupt_next{0};  ///< damage only the next this many payloads
  /// Keep every completion until release(): a write still in flight, as long as a test
  /// needs (e.g. while the source is told to change role).
  std::atomic<bool> hold{false};
  void release() {
    std::vector<std::function<void()>> ready;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ready.swap(held_);
    }
    for (auto& f : ready)
      f();
  }
  size_t held() const {
    std::lock_guard<std::mutex> lock(mu_);
    return held_.size();
  }
  /// Claim puts straight into the peer's memory (as UCX does): a receiver must then hold
  /// blocks a write may still land in.
  bool claim_one_sided = false;
  bool one_sided() const override { return claim_one_sided; }
  std::string_view name() const override { return "flaky-inline"; }
  pool_descriptor register_pool(worker_id owner, pool_memory& memory, size_t bytes) override {
    return inner_.register_pool(owner, memory, bytes);
  }
  void write(const pool_memory& local, size_t bytes, std::span<const block_id> src,
             const pool_descriptor& peer, std::span<const block_id> dst, completion done) override {
    inner_.write(local, bytes, src, peer, dst,
                 [this, done = std::move(done)](error_info err, kv_payload p) {
                   if ((corrupt || corrupt_next-- > 0) && !p.bytes.empty())
                     p.bytes[p.bytes.size() / 2] ^= 1;
                   if (hold) {
                     std::lock_guard<std::mutex> lock(mu_);
                     held_.push_back([done, err = std::move(err), p = std::move(p)]() mutable {
                       done(std::move(err), std::move(p));
                     });
                     return;
                   }
                   done(std::move(err), std::move(p));
                 });
  }
  error_info deliver(const kv_payload& payload, pool_memory& local, size_t bytes) override {
    return inner_.deliver(payload, local, bytes);
  }
  kv_transport_stats stats() const override { return inner_.stats(); }

 private:
  inline_transport inner_;
  mutable std::mutex mu_;
  std::vector<std::function<void()>> held_;
};

struct worker {
  caf::actor handle;
  worker_id id = 0;
  std::string name;
  std::shared_ptr<std::atomic<uint64_t>> prefilled = std::make_shared<std::atomic<uint64_t>>(0);
};

struct fetch_harness {
  test_system ts;
  caf::scoped_actor self{ts.sys};
  actor_reaper reaper;
  sim_config scfg = fast_sim();  // 4-token blocks
  sim_engine eng{scfg};
  std::shared_ptr<flaky_transport> transport = std::make_shared<flaky_transport>();
  std::vector<worker> workers;

  fetch_harness() { workers.reserve(12); }

  worker& add_worker(uint32_t num_blocks = 64,
                     std::chrono::milliseconds fetch_timeout = std::chrono::milliseconds(2000),
                     std::chrono::milliseconds drain_timeout = std::chrono::milliseconds(6000)) {
    worker w;
    w.id = static_cast<worker_id>(2 + workers.size());
    w.name = "decode-" + std::to_string(workers.size());
    decode_config c;
    c.num_blocks = num_blocks;
    c.fetch_timeout = fetch_timeout;
    c.kv_drain_timeout = drain_timeout;
    auto e = std::make_unique<counting_engine>(scfg, w.prefilled);
    w.handle = reaper.add(spawn_decode(ts.sys, make_info(w.id, role::decode, w.name), c,
                                       std::move(e), transport, handle_of(self), caf::actor{}));
    auto reg = answer_registration(self);
    REQUIRE(reg.info.id == w.id);
    return workers.emplace_back(std::move(w));
  }

  /// A prefill worker, named "prefill-<n>" (n: its index among all workers).
  worker& add_prefill(uint32_t num_blocks = 64,
                      std::chrono::milliseconds fetch_timeout = std::chrono::milliseconds(2000),
                      std::chrono::milliseconds drain_timeout = std::chrono::milliseconds(6000)) {
    worker w;
    w.id = static_cast<worker_id>(2 + workers.size());
    w.name = "prefill-" + std::to_string(workers.size());
    prefill_config c;
    c.num_blocks = num_blocks;
    c.fetch_timeout = fetch_timeout;
    c.kv_drain_timeout = drain_timeout;
    auto e = std::make_unique<counting_engine>(scfg, w.prefilled);
    w.handle = reaper.add(spawn_prefill(ts.sys, make_info(w.id, role::prefill, w.name), c,
                                        std::move(e), transport, handle_of(self)));
    auto reg = answer_registration(self);
    REQUIRE(reg.info.id == w.id);
    return workers.emplace_back(std::move(w));
  }

  /// Serves `req` on decode worker `w` with a remote prefill on `p`, which fetches blocks up
  /// to `fetch_end` from `source` when given; returns the tokens once request_done arrived.
  std::vector<token_id> serve_remote(const worker& w, const worker& p, generate_request req,
                                     caf::actor source = {}, std::string source_name = {},
                                     uint32_t fetch_end = 0) {
    const auto id = req.id;
    const auto n = req.options.max_tokens;
    self->send(w.handle,
               decode_assignment{std::move(req), p.handle, handle_of(self),
                                 fetch_hint{std::move(source), std::move(source_name), fetch_end}});
    return collect(id, n);
  }

  /// Serves `req` on `w` with local prefill, fetching blocks up to `fetch_end` from
  /// `source` when given; returns the tokens, in order, once request_done arrived.
  std::vector<token_id> serve(const worker& w, generate_request req, caf::actor source = {},
                              std::string source_name = {}, uint32_t fetch_end = 0) {
    const auto id = req.id;
    const auto n = req.options.max_tokens;
    self->send(w.handle,
               decode_assignment{std::move(req), caf::actor{}, handle_of(self),
                                 fetch_hint{std::move(source), std::move(source_name), fetch_end}});
    return collect(id, n);
  }

  std::vector<token_id> collect(request_id id, uint32_t n) { return collect_on(self, id, n); }

  /// As collect, for a request whose router is `rt`.
  std::vector<token_id> collect_on(caf::scoped_actor& rt, request_id id, uint32_t n) {
    std::map<uint32_t, token_id> got;
    std::optional<request_done> done;
    std::string problem;
    while (!done && problem.empty())
      rt->receive(
          [&](first_token& ft) {
            if (ft.id == id) got[0] = ft.token;
          },
          [&](token_batch& b) {
            for (const auto& t : b.tokens)
              if (t.id == id) got[t.index] = t.token;
          },
          [&](request_done& d) {
            if (d.id == id) done = std::move(d);
          },
          caf::others >> [&](caf::message_view& x) -> caf::result<caf::message> {
            problem = "unexpected message " + describe(x);
            return caf::sec::unexpected_message;
          },
          caf::after(receive_timeout) >> [&] { problem = "timed out"; });
    if (!done) FAIL("request " << id << ": " << problem);
    INFO("request " << id << ": " << done->error.message);
    CHECK(done->reason != finish_reason::error);
    std::vector<token_id> out;
    for (uint32_t i = 0; i < n && got.count(i); ++i)
      out.push_back(got.at(i));
    return out;
  }

  generate_request request(request_id id, size_t prompt_len, uint32_t max_tokens,
                           token_id start = 300) {
    return make_request(id, prompt_len, max_tokens, handle_of(self), start);
  }

  /// No worker holds a referenced KV block (nothing pinned, nothing leaked).
  void expect_idle(const char* context) {
    for (auto& w : workers) {
      auto ws = query_status(self, w.handle);
      INFO(context << ": worker " << w.name << ": " << ws.detail);
      CHECK(ws.kv_used == 0);
      CHECK(ws.queued == 0);
      CHECK(ws.running == 0);
    }
  }

  std::string detail(const worker& w) { return query_status(self, w.handle).detail; }
  kv_fetch_status fetch_status(const worker& w) { return query_status(self, w.handle).fetch; }
};

/// A source that takes fetch requests and never answers (it keeps the promises); counts them.
caf::actor silent_source(fetch_harness& h, std::shared_ptr<std::atomic<int>> got_request) {
  return h.reaper.add(h.ts.sys.spawn([got_request](caf::event_based_actor* self) {
    auto kept = std::make_shared<std::vector<caf::response_promise>>();
    return caf::behavior{[self, got_request, kept](kv_fetch_request&) {
      ++*got_request;
      kept->push_back(self->make_response_promise());
      return kept->back();
    }};
  }));
}

/// The worker holds no referenced block within a few seconds.
bool eventually_idle(fetch_harness& h, const worker& w) {
  for (int i = 0; i < 200; ++i) {
    if (query_status(h.self, w.handle).kv_used == 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

}  // namespace

// A 20-token prompt of 4-token blocks: 4 reusable blocks (16 tokens), the 5th holds the
// last token and is always computed.

TEST_CASE("fetch: a prompt's prefix comes from a peer's cache, only the rest is computed",
          "[decode_actor][kv_fetch]") {
  fetch_harness h;
  auto& a = h.add_worker();
  auto& b = h.add_worker();
  auto req = h.request(1, 20, 6);
  const auto expected = sim_continuation(h.eng, req.prompt, 6);
  CHECK(h.serve(a, req) == expected);  // A computes the prompt and caches its blocks
  CHECK(*a.prefilled == 20);
  auto again = req;
  again.id = 2;
  CHECK(h.serve(b, again, a.handle, a.name, 4) == expected);
  CHECK(*b.prefilled == 4);  // blocks 0-3 arrived from A (content- and checksum-checked)
  CHECK_THAT(h.detail(b), Catch::Contains("fetched 4 blocks (4096 bytes) in 1 fetches, 0 "
                                          "missing, 0 failed"));
  CHECK_THAT(h.detail(a), Catch::Contains("served 4 blocks (4096 bytes) to fetches, 0 failed"));
  // The same counts in the status fields the metrics (tokenmill_kv_fetch_*) are made of.
  const auto fb = h.fetch_status(b);
  CHECK(fb.started == 1);
  CHECK(fb.completed == 1);
  CHECK(fb.failed == 0);
  CHECK(fb.blocks == 4);
  CHECK(fb.bytes == 4096);
  CHECK(fb.missing == 0);
  CHECK(fb.time_ns > 0);
  CHECK(fb.served == 0);
  const auto fa = h.fetch_status(a);
  CHECK(fa.started == 0);
  CHECK(fa.served == 1);
  CHECK(fa.served_blocks == 4);
  CHECK(fa.served_bytes == 4096);
  CHECK(fa.serve_failures == 0);
  // The fetched blocks are B's own cached prefix now: a third request reuses them locally.
  auto third = req;
  third.id = 3;
  CHECK(h.serve(b, third) == expected);
  CHECK(*b.prefilled == 8);
  h.expect_idle("after the fetch");
}

TEST_CASE("fetch: blocks evicted at the source meanwhile are computed",
          "[decode_actor][kv_fetch]") {
  fetch_harness h;
  auto& a = h.add_worker(8);  // 8 blocks: a second prompt evicts part of the first
  auto& b = h.add_worker();
  auto req = h.request(1, 20, 2);
  const auto expected = sim_continuation(h.eng, req.prompt, 2);
  CHECK(h.serve(a, req) == expected);
  // A holds the first prompt's 5 blocks and 3 free ones; a prompt of other tokens needs 6,
  // so A evicts 3 of them, the prefix's tail first (blocks 4, 3, 2), keeping blocks 0 and 1.
  auto other = h.request(2, 20, 2, 5000);
  CHECK(h.serve(a, other) == sim_continuation(h.eng, other.prompt, 2));
  auto again = req;
  again.id = 3;
  CHECK(h.serve(b, again, a.handle, a.name, 4) == expected);
  CHECK(*b.prefilled == 12);  // blocks 0 and 1 fetched, tokens 8..19 computed
  CHECK_THAT(h.detail(b), Catch::Contains("fetched 2 blocks (2048 bytes) in 1 fetches, 2 "
                                          "missing, 0 failed"));
  // A source that holds none of them writes nothing: everything is computed.
  auto& c = h.add_worker();
  auto fourth = req;
  fourth.id = 4;
  CHECK(h.serve(c, fourth, h.workers[0].handle, "decode-0", 4) == expected);
  CHECK(*c.prefilled == 12);  // blocks 0 and 1 again (A still holds them)
  auto fifth = h.request(5, 20, 2, 9000);
  CHECK(h.serve(c, fifth, b.handle, b.name, 4) == sim_continuation(h.eng, fifth.prompt, 2));
  CHECK(*c.prefilled == 32);
  CHECK_THAT(h.detail(c), Catch::Contains("fetched 2 blocks (2048 bytes) in 2 fetches, 6 "
                                          "missing, 0 failed"));
  h.expect_idle("after the evicted fetch");
}

TEST_CASE("fetch: a block damaged on the way fails its checksum and is computed",
          "[decode_actor][kv_fetch]") {
  fetch_harness h;
  auto& a = h.add_worker();
  auto& b = h.add_worker();
  auto req = h.request(1, 20, 4);
  const auto expected = sim_continuation(h.eng, req.prompt, 4);
  CHECK(h.serve(a, req) == expected);
  h.transport->corrupt = true;
  auto again = req;
  again.id = 2;
  CHECK(h.serve(b, again, a.handle, a.name, 4) == expected);
  CHECK(*b.prefilled == 20);
  CHECK_THAT(h.detail(b), Catch::Contains("fetched 0 blocks (0 bytes) in 1 fetches, 0 "
                                          "missing, 1 failed"));
  const auto fb = h.fetch_status(b);
  CHECK(fb.started == 1);
  CHECK(fb.completed == 0);
  CHECK(fb.failed == 1);
  CHECK(fb.blocks == 0);
  CHECK(fb.time_ns > 0);
  h.expect_idle("after the damaged fetch");
}

TEST_CASE("fetch: a source lost mid-fetch or silent leaves the tokens to be computed",
          "[decode_actor][kv_fetch]") {
  fetch_harness h;
  auto& b = h.add_worker(64, std::chrono::milliseconds(300));
  // A source that takes the request and never answers (it keeps the promise).
  auto got_request = std::make_shared<std::atomic<int>>(0);
  auto silent = h.reaper.add(h.ts.sys.spawn([got_request](caf::event_based_actor* self) {
    auto kept = std::make_shared<std::vector<caf::response_promise>>();
    return caf::behavior{[self, got_request, kept](kv_fetch_request&) {
      ++*got_request;
      kept->push_back(self->make_response_promise());
      return kept->back();
    }};
  }));
  auto req = h.request(1, 20, 3);
  const auto expected = sim_continuation(h.eng, req.prompt, 3);
  SECTION("the source leaves the membership") {
    const auto id = req.id;
    h.self->send(b.handle, decode_assignment{req, caf::actor{}, handle_of(h.self),
                                             fetch_hint{silent, "silent", 4}});
    // Once B asked (a status round trip orders it), the source is reported down.
    for (int i = 0; i < 100 && *got_request == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    REQUIRE(*got_request == 1);
    membership m;
    member gone;
    gone.info = make_info(99, role::decode, "silent");
    gone.handle = silent;
    gone.up = false;
    m.members.push_back(gone);
    h.self->send(b.handle, m);
    CHECK(h.collect(id, 3) == expected);
    CHECK(*b.prefilled == 20);
    CHECK_THAT(h.detail(b), Catch::Contains("1 failed"));
  }
  SECTION("the source does not answer in time") {
    CHECK(h.serve(b, req, silent, "silent", 4) == expected);
    CHECK(*b.prefilled == 20);
    CHECK_THAT(h.detail(b), Catch::Contains("1 failed"));
  }
  SECTION("the source is gone before the fetch") {
    auto dead = h.ts.sys.spawn([]() -> caf::behavior { return {[](int) {}}; });
    caf::anon_send_exit(dead, caf::exit_reason::kill);
    h.self->wait_for(dead);
    CHECK(h.serve(b, req, dead, "dead", 4) == expected);
    CHECK(*b.prefilled == 20);
  }
  h.expect_idle("after the lost fetch");
}

TEST_CASE("fetch: with a one-sided transport a silent source's blocks are held, not reused",
          "[decode_actor][kv_fetch]") {
  fetch_harness h;
  h.transport->claim_one_sided = true;
  auto& b = h.add_worker(16, std::chrono::milliseconds(200), std::chrono::milliseconds(1500));
  auto got_request = std::make_shared<std::atomic<int>>(0);
  auto silent = h.reaper.add(h.ts.sys.spawn([got_request](caf::event_based_actor* self) {
    auto kept = std::make_shared<std::vector<caf::response_promise>>();
    return caf::behavior{[self, got_request, kept](kv_fetch_request&) {
      ++*got_request;
      kept->push_back(self->make_response_promise());
      return kept->back();
    }};
  }));
  auto req = h.request(1, 20, 3);
  CHECK(h.serve(b, req, silent, "silent", 4) == sim_continuation(h.eng, req.prompt, 3));
  CHECK(*got_request == 1);
  CHECK(*b.prefilled == 20);
  // The sequence computed into fresh blocks; the 4 it asked the source to fill stay held
  // until the drain timeout (a late put could still land in them), then are free.
  auto held = query_status(h.self, b.handle);
  CHECK(held.kv_used == 4);
  CHECK(eventually_idle(h, b));
}

// ---------------------------------------------------------------- prefill workers fetch too
// A remote prefill: the decode worker passes the router's fetch plan on with the job; the
// prefill worker pulls the blocks into its own pool, computes the rest, and writes the
// prompt's blocks (fetched ones included, less those the decode worker holds) as usual.

TEST_CASE("fetch: a prefill worker pulls the prefix from a decode worker's cache",
          "[prefill_actor][kv_fetch]") {
  fetch_harness h;
  auto& a = h.add_worker();
  auto& b = h.add_worker();
  auto& p = h.add_prefill();
  auto req = h.request(1, 20, 6);
  const auto expected = sim_continuation(h.eng, req.prompt, 6);
  CHECK(h.serve(a, req) == expected);  // A computes the prompt and caches its blocks
  auto again = req;
  again.id = 2;
  CHECK(h.serve_remote(b, p, again, a.handle, a.name, 4) == expected);
  CHECK(*p.prefilled == 4);  // blocks 0-3 arrived from A, the last block was computed
  CHECK(*b.prefilled == 0);  // and B received all five from P
  CHECK_THAT(h.detail(p), Catch::Contains("fetched 4 blocks (4096 bytes) in 1 fetches, 0 "
                                          "missing, 0 failed"));
  CHECK_THAT(h.detail(a), Catch::Contains("served 4 blocks (4096 bytes) to fetches, 0 failed"));
  const auto fp = h.fetch_status(p);
  CHECK(fp.started == 1);
  CHECK(fp.completed == 1);
  CHECK(fp.blocks == 4);
  CHECK(fp.bytes == 4096);
  CHECK(h.fetch_status(a).served_blocks == 4);
  // The fetched blocks are P's own cached prefix now: a later job reuses them locally.
  auto& c = h.add_worker();
  auto third = req;
  third.id = 3;
  CHECK(h.serve_remote(c, p, third) == expected);
  CHECK(*p.prefilled == 8);
  h.expect_idle("after the prefill worker's fetch");
}

TEST_CASE("fetch: a prefill worker pulls the prefix from another prefill worker",
          "[prefill_actor][kv_fetch]") {
  fetch_harness h;
  auto& a = h.add_worker();
  auto& b = h.add_worker();
  auto& p1 = h.add_prefill();
  auto& p2 = h.add_prefill();
  auto req = h.request(1, 28, 4);  // 7 blocks: 6 reusable
  const auto expected = sim_continuation(h.eng, req.prompt, 4);
  CHECK(h.serve_remote(a, p1, req) == expected);
  CHECK(*p1.prefilled == 28);
  // A longer prompt with the same 24 leading tokens: P2 pulls 6 blocks and computes 12.
  auto longer = req;
  longer.id = 2;
  auto tail = prompt_of(8, 7000);
  longer.prompt.insert(longer.prompt.end(), tail.begin(), tail.end());
  CHECK(h.serve_remote(b, p2, longer, p1.handle, p1.name, 6) ==
        sim_continuation(h.eng, longer.prompt, 4));
  CHECK(*p2.prefilled == 36 - 24);
  CHECK_THAT(h.detail(p2), Catch::Contains("fetched 6 blocks (6144 bytes) in 1 fetches"));
  CHECK_THAT(h.detail(p1), Catch::Contains("served 6 blocks"));
  h.expect_idle("after a fetch between prefill workers");
}

TEST_CASE("fetch: a prefill worker computes what a failed fetch did not bring",
          "[prefill_actor][kv_fetch]") {
  fetch_harness h;
  auto& a = h.add_worker();
  auto& b = h.add_worker();
  auto& p = h.add_prefill(64, std::chrono::milliseconds(300));
  auto req = h.request(1, 20, 3);
  const auto expected = sim_continuation(h.eng, req.prompt, 3);
  CHECK(h.serve(a, req) == expected);
  auto got_request = std::make_shared<std::atomic<int>>(0);
  auto silent = silent_source(h, got_request);
  auto again = req;
  again.id = 2;
  SECTION("a block damaged on the way") {
    h.transport->corrupt_next = 1;  // the fetch's write (P's own writes to B arrive intact)
    CHECK(h.serve_remote(b, p, again, a.handle, a.name, 4) == expected);
    CHECK_THAT(h.detail(p), Catch::Contains("fetched 0 blocks (0 bytes) in 1 fetches, 0 "
                                            "missing, 1 failed"));
  }
  SECTION("blocks evicted at the source: it holds none of another prompt") {
    auto other = h.request(2, 20, 3, 9000);
    CHECK(h.serve_remote(b, p, other, a.handle, a.name, 4) ==
          sim_continuation(h.eng, other.prompt, 3));
    CHECK_THAT(h.detail(p), Catch::Contains("fetched 0 blocks (0 bytes) in 1 fetches, 4 "
                                            "missing, 0 failed"));
  }
  SECTION("the source does not answer in time") {
    CHECK(h.serve_remote(b, p, again, silent, "silent", 4) == expected);
    CHECK(*got_request == 1);
    CHECK_THAT(h.detail(p), Catch::Contains("1 failed"));
  }
  SECTION("the source leaves the membership mid-fetch") {
    h.self->send(b.handle, decode_assignment{again, p.handle, handle_of(h.self),
                                             fetch_hint{silent, "silent", 4}});
    for (int i = 0; i < 200 && *got_request == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    REQUIRE(*got_request == 1);
    membership m;
    member gone;
    gone.info = make_info(99, role::decode, "silent");
    gone.handle = silent;
    gone.up = false;
    m.members.push_back(gone);
    h.self->send(p.handle, m);
    CHECK(h.collect(again.id, 3) == expected);
    CHECK_THAT(h.detail(p), Catch::Contains("1 failed"));
  }
  CHECK(*p.prefilled == 20);  // every token computed
  h.expect_idle("after the prefill worker's failed fetch");
}

TEST_CASE("fetch: a job cancelled while its prefill worker fetches is freed",
          "[prefill_actor][kv_fetch]") {
  fetch_harness h;
  auto& b = h.add_worker();
  auto& p = h.add_prefill(64, std::chrono::milliseconds(200));
  auto got_request = std::make_shared<std::atomic<int>>(0);
  auto silent = silent_source(h, got_request);
  auto req = h.request(1, 20, 3);
  h.self->send(b.handle, decode_assignment{req, p.handle, handle_of(h.self),
                                           fetch_hint{silent, "silent", 4}});
  for (int i = 0; i < 200 && *got_request == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  REQUIRE(*got_request == 1);
  // A job whose prefix is being fetched counts as running (load signals see it).
  auto during = query_status(h.self, p.handle);
  CHECK(during.running == 1);
  CHECK(during.queued == 0);
  h.self->send(b.handle, cancel_request{req.id});
  bool done = false;
  h.self->receive(
      [&](request_done& d) {
        CHECK(d.id == req.id);
        CHECK(d.reason == finish_reason::cancelled);
        done = true;
      },
      caf::after(receive_timeout) >> [] {});
  REQUIRE(done);
  // P holds the job's blocks until the source can no longer write: its fetch timeout.
  CHECK(eventually_idle(h, p));
  CHECK(*p.prefilled == 0);  // nothing computed for a cancelled job
  h.expect_idle("after the cancel mid-fetch");
}

TEST_CASE("fetch: with a one-sided transport a prefill worker holds a silent source's blocks",
          "[prefill_actor][kv_fetch]") {
  fetch_harness h;
  h.transport->claim_one_sided = true;
  auto& b = h.add_worker();
  auto& p = h.add_prefill(16, std::chrono::milliseconds(200), std::chrono::milliseconds(1500));
  auto got_request = std::make_shared<std::atomic<int>>(0);
  auto silent = silent_source(h, got_request);
  auto req = h.request(1, 20, 3);
  CHECK(h.serve_remote(b, p, req, silent, "silent", 4) == sim_continuation(h.eng, req.prompt, 3));
  CHECK(*p.prefilled == 20);
  // The job computed into fresh blocks; the 4 it asked the source to fill stay held until
  // the drain timeout (a late put could still land in them), then are free.
  auto held = query_status(h.self, p.handle);
  CHECK(held.kv_used == 4);
  CHECK_THAT(held.detail, Catch::Contains("1 given-up fetches' blocks held"));
  CHECK(eventually_idle(h, p));
}

// ---------------------------------------------------------------- a source changing role

TEST_CASE("fetch: a source told to change role mid-fetch answers it, then flips",
          "[decode_actor][kv_fetch][role_flip]") {
  fetch_harness h;
  auto& a = h.add_worker();
  auto& b = h.add_worker();
  auto req = h.request(1, 20, 4);
  const auto expected = sim_continuation(h.eng, req.prompt, 4);
  CHECK(h.serve(a, req) == expected);  // A caches the prompt's blocks
  // B fetches from A; A's write stays in flight until the test releases it.
  h.transport->hold = true;
  caf::scoped_actor rt{h.ts.sys};  // B's router (the harness's actor is A's supervisor)
  auto again = req;
  again.id = 2;
  h.self->send(b.handle, decode_assignment{again, caf::actor{}, handle_of(rt),
                                           fetch_hint{a.handle, a.name, 4}});
  for (int i = 0; i < 400 && h.transport->held() == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  REQUIRE(h.transport->held() == 1);
  h.transport->hold = false;
  change_role to_prefill;
  to_prefill.to = role::prefill;
  to_prefill.reason = "test";
  h.self->send(a.handle, to_prefill);
  // A waits for the fetch it serves (its pinned blocks, the reply it owes) before it hands
  // its pool over; a new fetch meanwhile is refused at once (the requester computes).
  std::optional<kv_fetch_reply> refused;
  h.self->request(a.handle, receive_timeout, kv_fetch_request{99, {0x1234}, {}, {0}})
      .receive([&](kv_fetch_reply& r) { refused = std::move(r); }, [&](caf::error&) {});
  REQUIRE(refused);
  CHECK(refused->error.code == errc::unavailable);
  CHECK_THAT(refused->error.message, Catch::Contains("draining"));
  auto during = query_status(h.self, a.handle);
  CHECK(during.kv_used == 4);  // the fetched blocks stay pinned until the write is flushed
  CHECK_THAT(during.detail, Catch::Contains("draining"));
  expect_no_message(h.self, "no role change while a fetch is served");
  // The write completes: A replies, B takes the blocks, and A becomes a prefill worker.
  h.transport->release();
  auto reg = answer_registration(h.self);
  CHECK(reg.info.id == a.id);
  CHECK(reg.info.kind == role::prefill);
  auto changed = expect<role_changed>(h.self, "role_changed");
  CHECK(changed.to == role::prefill);
  CHECK_FALSE(changed.error);
  CHECK(h.collect_on(rt, again.id, 4) == expected);
  CHECK(*b.prefilled == 4);
  CHECK_THAT(h.detail(b), Catch::Contains("fetched 4 blocks (4096 bytes) in 1 fetches, 0 "
                                          "missing, 0 failed"));
  // At the same address, the prefill worker A now is still serves fetches from its cache.
  auto& c = h.add_worker();
  auto third = req;
  third.id = 3;
  CHECK(h.serve(c, third, a.handle, a.name, 4) == expected);
  CHECK(*c.prefilled == 4);
  h.expect_idle("after the source's role change");
}

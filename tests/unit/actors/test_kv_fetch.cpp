// Fetch instead of recompute (issue 16 item 3): a decode worker assigned a local prefill
// with a fetch plan pulls the prompt's prefix blocks from a peer's prefix cache, checks
// them and prefills only the rest; whatever goes wrong (blocks evicted at the source, the
// source lost or silent, a corrupted block) it computes those tokens itself. Real decode
// workers (sim engine, inline transport); the scoped actor is their supervisor and router.
// Each worker's engine counts the prompt tokens it prefilled, so a test sees what was
// fetched and what computed; the greedy tokens must equal the sim's own continuation.
#include <atomic>
#include <map>
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
                   if (corrupt && !p.bytes.empty()) p.bytes[p.bytes.size() / 2] ^= 1;
                   done(std::move(err), std::move(p));
                 });
  }
  error_info deliver(const kv_payload& payload, pool_memory& local, size_t bytes) override {
    return inner_.deliver(payload, local, bytes);
  }
  kv_transport_stats stats() const override { return inner_.stats(); }

 private:
  inline_transport inner_;
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

  fetch_harness() { workers.reserve(8); }

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

  std::vector<token_id> collect(request_id id, uint32_t n) {
    std::map<uint32_t, token_id> got;
    std::optional<request_done> done;
    std::string problem;
    while (!done && problem.empty())
      self->receive(
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
};

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

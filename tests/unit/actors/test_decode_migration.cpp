// Live migration between decode workers: two or three real decode workers (sim engine,
// inline transport); the scoped actor plays supervisor and router and collects every token
// (first_token, token_batch), attempt_moved, migrate_result and request_done, telling the
// workers apart by the sender. The workers' decode steps are paced by credits the test
// grants, so that a move happens at a known token: deterministic without sleeps.
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>

#include <regex>

#include "engine/tokenizer.hpp"
#include "grammar/grammar.hpp"
#include "tests/unit/actors/actor_test_util.hpp"
#include "transport/kv_transport.hpp"

using namespace tokenmill;
using namespace tokenmill::test;

namespace {

/// Decode steps a worker may take: each engine decode call takes one (waiting at most
/// receive_timeout, so a failed test cannot leave a worker stuck).
class step_credits {
 public:
  void grant(int64_t n) {
    std::lock_guard l(m_);
    n_ += n;
    cv_.notify_all();
  }
  void take() {
    std::unique_lock l(m_);
    cv_.wait_for(l, receive_timeout, [&] { return n_ > 0; });
    if (n_ > 0) --n_;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int64_t n_ = 0;
};

/// The sim engine, its decode calls paced by step credits.
class paced_engine final : public engine {
 public:
  paced_engine(sim_config cfg, std::shared_ptr<step_credits> credits)
      : sim_(cfg), credits_(std::move(credits)) {}
  const model_info& info() const override { return sim_.info(); }
  result<std::vector<token_id>> prefill(block_pool& pool,
                                        std::span<const prefill_chunk> batch) override {
    return sim_.prefill(pool, batch);
  }
  result<std::vector<token_id>> decode(block_pool& pool,
                                       std::span<const decode_seq> batch) override {
    credits_->take();
    return sim_.decode(pool, batch);
  }
  result<void> check_kv(const block_pool& pool, std::span<const token_id> tokens,
                        std::span<const block_id> blocks, uint32_t begin,
                        uint32_t end) const override {
    return sim_.check_kv(pool, tokens, blocks, begin, end);
  }

 private:
  sim_engine sim_;
  std::shared_ptr<step_credits> credits_;
};

constexpr int64_t plenty = 1'000'000;

struct worker {
  caf::actor handle;
  worker_id id = 0;
  std::string name;
  std::shared_ptr<step_credits> credits = std::make_shared<step_credits>();
};

/// What the router stand-in saw of one request.
struct stream {
  std::map<uint32_t, std::pair<token_id, worker_id>> tokens;  ///< by index: token, producer
  uint32_t duplicates = 0;
  std::vector<attempt_moved> moves;
  std::vector<migrate_result> results;
  std::optional<request_done> done;
  worker_id done_by = 0;
  /// Tokens a worker produced before its attempt_moved reached the router (must be none).
  uint32_t tokens_before_move = 0;
};

struct migration_harness {
  test_system ts;
  caf::scoped_actor self{ts.sys};
  actor_reaper reaper;
  sim_config scfg = fast_sim();
  sim_engine eng{scfg};
  std::vector<worker> workers;
  /// Given to the workers added after it is set (constrained decoding).
  std::shared_ptr<grammar::grammar_cache> grammars;

  migration_harness() { workers.reserve(8); }  // tests hold references to workers
  ~migration_harness() {
    for (auto& w : workers)
      w.credits->grant(plenty);
  }

  decode_config config(uint32_t num_blocks = 64) {
    decode_config c;
    c.num_blocks = num_blocks;
    c.max_batch = 8;
    c.migration_timeout = std::chrono::milliseconds(2000);
    c.grammars = grammars;
    return c;
  }

  worker& add_worker(uint32_t num_blocks = 64) {
    worker w;
    w.id = static_cast<worker_id>(2 + workers.size());
    w.name = "decode-" + std::to_string(workers.size());
    auto e = std::make_unique<paced_engine>(scfg, w.credits);
    w.handle = reaper.add(spawn_decode(
        ts.sys, make_info(w.id, role::decode, w.name), config(num_blocks), std::move(e),
        std::make_shared<inline_transport>(), handle_of(self), caf::actor{}));
    auto reg = answer_registration(self);
    REQUIRE(reg.info.id == w.id);
    return workers.emplace_back(std::move(w));
  }

  worker_id id_of(const caf::strong_actor_ptr& a) const {
    for (const auto& w : workers)
      if (caf::actor_cast<caf::actor>(a) == w.handle) return w.id;
    return 0;
  }

  generate_request request(request_id id, size_t prompt_len, uint32_t max_tokens) {
    return make_request(id, prompt_len, max_tokens, handle_of(self));
  }

  /// Assigns `req` to `w` with local prefill (the scoped actor is its router).
  void assign(const worker& w, generate_request req) {
    self->send(w.handle, decode_assignment{std::move(req), caf::actor{}, handle_of(self), {}});
  }

  /// Receives one message of the request's stream into `s`; false once it timed out.
  void receive_one(stream& s) {
    std::string problem;
    bool got = false;
    auto from = [&] { return id_of(self->current_sender()); };
    auto add_token = [&](uint32_t index, token_id tok) {
      auto by = from();
      if (!s.tokens.emplace(index, std::make_pair(tok, by)).second) ++s.duplicates;
      // A worker's tokens after a move reach the router only after its attempt_moved.
      bool announced = s.moves.empty() ? by == workers.front().id : s.moves.back().worker == by;
      if (!announced) ++s.tokens_before_move;
    };
    self->receive(
        [&](first_token& ft) {
          got = true;
          add_token(0, ft.token);
        },
        [&](token_batch& b) {
          got = true;
          for (const auto& t : b.tokens)
            add_token(t.index, t.token);
        },
        [&](attempt_moved& m) {
          got = true;
          s.moves.push_back(std::move(m));
        },
        [&](migrate_result& r) {
          got = true;
          s.results.push_back(std::move(r));
        },
        [&](request_done& d) {
          got = true;
          s.done_by = from();
          s.done = std::move(d);
        },
        caf::others >> [&](caf::message_view& x) -> caf::result<caf::message> {
          problem = "unexpected message " + describe(x);
          return caf::sec::unexpected_message;
        },
        caf::after(receive_timeout) >> [&] { problem = "timed out"; });
    if (!got) FAIL("collecting the stream: " << problem);
  }

  /// Receives until the stream holds token `index`.
  void until_token(stream& s, uint32_t index) {
    while (!s.tokens.count(index))
      receive_one(s);
  }
  /// Receives until `n` migrate_results arrived.
  void until_results(stream& s, size_t n) {
    while (s.results.size() < n)
      receive_one(s);
  }
  void until_done(stream& s) {
    while (!s.done)
      receive_one(s);
  }

  /// Tokens 0..n-1 in order; fails on a gap.
  std::vector<token_id> ordered(const stream& s, uint32_t n) {
    std::vector<token_id> out;
    for (uint32_t i = 0; i < n; ++i) {
      auto it = s.tokens.find(i);
      if (it == s.tokens.end()) FAIL("token " << i << " never arrived");
      out.push_back(it->second.first);
    }
    return out;
  }

  uint32_t produced_by(const stream& s, worker_id w) {
    uint32_t n = 0;
    for (const auto& [i, t] : s.tokens)
      n += t.second == w;
    return n;
  }

  /// Every worker holds no referenced block and nothing is left in the mailbox.
  void expect_all_free(const char* context) {
    for (auto& w : workers) {
      auto ws = query_status(self, w.handle);
      INFO(context << ": worker " << w.name << ": " << ws.detail);
      CHECK(ws.kv_used == 0);
      CHECK(ws.running == 0);
      CHECK(ws.queued == 0);
    }
    expect_no_message(self, context);
  }
};

}  // namespace

TEST_CASE("live migration: a sequence moved mid-stream gives the undisturbed stream",
          "[decode_actor][live_migration]") {
  migration_harness h;
  auto& a = h.add_worker();
  auto& b = h.add_worker();
  auto req = h.request(1, 10, 24);
  auto expected = sim_continuation(h.eng, req.prompt, 24);
  h.assign(a, req);
  stream s;
  // A prefills (token 0) and takes four steps (tokens 1..4); its fifth step waits for a
  // credit, so the move is asked for while the sequence is in the engine's step.
  a.credits->grant(4);
  h.until_token(s, 4);
  h.self->send(a.handle, migrate_request{req.id, b.handle, true, handle_of(h.self)});
  a.credits->grant(1);  // the step ends (token 5), then the sequence moves
  b.credits->grant(plenty);
  h.until_results(s, 1);
  h.until_done(s);

  CHECK(h.ordered(s, 24) == expected);
  CHECK(s.tokens.size() == 24);
  CHECK(s.duplicates == 0);
  CHECK(s.tokens_before_move == 0);
  for (uint32_t i = 0; i <= 5; ++i)
    CHECK(s.tokens.at(i).second == a.id);
  for (uint32_t i = 6; i < 24; ++i)
    CHECK(s.tokens.at(i).second == b.id);
  REQUIRE(s.moves.size() == 1);
  CHECK(s.moves[0].id == req.id);
  CHECK(s.moves[0].epoch == 1);
  CHECK(s.moves[0].worker == b.id);
  CHECK(s.moves[0].name == b.name);
  CHECK(s.moves[0].handle == b.handle);
  auto& r = s.results.at(0);
  CHECK(r.moved);
  CHECK(r.error.code == errc::ok);
  // 10 prompt + 6 generated tokens; the KV of 15 positions: 4 blocks of 4 tokens.
  CHECK(r.blocks == 4);
  CHECK(r.bytes == 4 * h.scfg.layout.block_bytes());
  CHECK(r.elapsed_ns > 0);
  REQUIRE(s.done);
  CHECK(s.done_by == b.id);
  CHECK(s.done->reason == finish_reason::length);
  CHECK(s.done->completion_tokens == 24);
  CHECK(s.done->prompt_tokens == 10);
  auto wa = query_status(h.self, a.handle);
  CHECK(wa.completed == 0);
  CHECK_THAT(wa.detail, Catch::Contains("live migration: 1 out"));
  auto wb = query_status(h.self, b.handle);
  CHECK(wb.completed == 1);
  CHECK_THAT(wb.detail, Catch::Contains("1 in"));
  h.expect_all_free("after the moved request finished");
}

TEST_CASE("live migration: a sequence moved twice, there and back",
          "[decode_actor][live_migration]") {
  migration_harness h;
  auto& a = h.add_worker();
  auto& b = h.add_worker();
  auto& c = h.add_worker();
  auto req = h.request(2, 13, 30);
  auto expected = sim_continuation(h.eng, req.prompt, 30);
  h.assign(a, req);
  stream s;
  a.credits->grant(3);
  h.until_token(s, 3);
  h.self->send(a.handle, migrate_request{req.id, b.handle, true, handle_of(h.self)});
  a.credits->grant(1);  // token 4 on A, then the move to B
  h.until_results(s, 1);
  REQUIRE(s.results[0].moved);
  b.credits->grant(5);  // tokens 5..9 on B; its sixth step waits
  h.until_token(s, 9);
  h.self->send(b.handle, migrate_request{req.id, c.handle, true, handle_of(h.self)});
  b.credits->grant(1);  // token 10 on B, then the move to C
  c.credits->grant(plenty);
  h.until_results(s, 2);
  REQUIRE(s.results[1].moved);
  h.until_done(s);

  CHECK(h.ordered(s, 30) == expected);
  CHECK(s.duplicates == 0);
  CHECK(s.tokens_before_move == 0);
  CHECK(h.produced_by(s, a.id) == 5);
  CHECK(h.produced_by(s, b.id) == 6);
  CHECK(h.produced_by(s, c.id) == 19);
  REQUIRE(s.moves.size() == 2);
  CHECK(s.moves[0].worker == b.id);
  CHECK(s.moves[0].epoch == 1);
  CHECK(s.moves[1].worker == c.id);
  CHECK(s.moves[1].epoch == 2);
  CHECK(s.done_by == c.id);
  CHECK(s.done->reason == finish_reason::length);
  CHECK(s.done->completion_tokens == 30);
  h.expect_all_free("after two moves");

  // And back to the worker it came from: A -> B -> A (A and B have no credits left).
  auto again = h.request(3, 9, 20);
  auto expected2 = sim_continuation(h.eng, again.prompt, 20);
  stream s2;
  h.assign(a, again);
  a.credits->grant(2);
  h.until_token(s2, 2);
  h.self->send(a.handle, migrate_request{again.id, b.handle, true, handle_of(h.self)});
  a.credits->grant(1);  // token 3 on A, then the move to B, whose first step waits
  h.until_results(s2, 1);
  REQUIRE(s2.results[0].moved);
  h.self->send(b.handle, migrate_request{again.id, a.handle, true, handle_of(h.self)});
  b.credits->grant(1);  // token 4 on B, then the move back to A
  a.credits->grant(plenty);
  h.until_results(s2, 2);
  h.until_done(s2);
  CHECK(s2.results[1].moved);
  CHECK(h.ordered(s2, 20) == expected2);
  CHECK(s2.duplicates == 0);
  CHECK(s2.tokens_before_move == 0);
  CHECK(h.produced_by(s2, a.id) == 19);
  CHECK(h.produced_by(s2, b.id) == 1);
  REQUIRE(s2.moves.size() == 2);
  CHECK(s2.moves[1].worker == a.id);
  CHECK(s2.moves[1].epoch == 2);
  CHECK(s2.done_by == a.id);
  h.expect_all_free("after A -> B -> A");
}

TEST_CASE("live migration: a target without capacity refuses and the source decodes on",
          "[decode_actor][live_migration]") {
  migration_harness h;
  auto& a = h.add_worker();
  auto& b = h.add_worker(16);
  // B's pool fits the sequence (13 blocks) but another assignment holds 6 of its 16 blocks
  // (waiting for KV from the scoped actor, which never sends it).
  auto other = h.request(50, 12, 12);
  h.self->send(b.handle, decode_assignment{other, handle_of(h.self), handle_of(h.self), {}});
  auto job = expect<prefill_job>(h.self, "prefill_job of the blocking request");
  CHECK(job.id == other.id);
  auto req = h.request(4, 10, 40);
  auto expected = sim_continuation(h.eng, req.prompt, 40);
  h.assign(a, req);
  stream s;
  a.credits->grant(2);
  h.until_token(s, 2);
  h.self->send(a.handle, migrate_request{req.id, b.handle, true, handle_of(h.self)});
  a.credits->grant(1);
  h.until_results(s, 1);
  auto& r = s.results[0];
  CHECK_FALSE(r.moved);
  CHECK(r.error.code == errc::out_of_blocks);
  CHECK_THAT(r.error.message, Catch::Contains("no capacity") && Catch::Contains(b.name));
  a.credits->grant(plenty);
  h.until_done(s);
  CHECK(h.ordered(s, 40) == expected);
  CHECK(s.duplicates == 0);
  CHECK(s.moves.empty());
  CHECK(h.produced_by(s, a.id) == 40);
  CHECK(s.done_by == a.id);
  CHECK(s.done->reason == finish_reason::length);
  auto wb = query_status(h.self, b.handle);
  CHECK(wb.kv_used == 6);  // only the blocking request's reservation

  // A pool too small for the sequence at all is refused the same way (D is paced: A has
  // credits without end now).
  auto& c = h.add_worker(8);
  auto& d = h.add_worker();
  auto req2 = h.request(5, 10, 40);
  stream s2;
  h.assign(d, req2);
  d.credits->grant(1);
  h.until_token(s2, 1);
  h.self->send(d.handle, migrate_request{req2.id, c.handle, true, handle_of(h.self)});
  d.credits->grant(1);
  h.until_results(s2, 1);
  CHECK_FALSE(s2.results[0].moved);
  CHECK(s2.results[0].error.code == errc::out_of_blocks);
  CHECK_THAT(s2.results[0].error.message, Catch::Contains("pool has 8"));
  d.credits->grant(plenty);
  h.until_done(s2);
  CHECK(h.ordered(s2, 40) == sim_continuation(h.eng, req2.prompt, 40));
  CHECK(s2.duplicates == 0);

  h.self->send(b.handle, cancel_request{other.id});
  (void)expect<cancel_request>(h.self, "cancel_request to the prefill stand-in");
  (void)expect<request_done>(h.self, "request_done of the blocking request");
  h.expect_all_free("after the refusals");
}

namespace {

/// A target that accepts the offer (blocks 0.. of a pool like the source's) and dies before
/// the commit arrives.
caf::behavior dying_target(caf::event_based_actor* self, uint32_t block_tokens,
                           uint64_t block_bytes) {
  return {
      [=](migrate_offer& o) -> migrate_accept {
        migrate_accept a;
        a.id = o.req.id;
        a.dst.owner = 99;
        a.dst.block_bytes = block_bytes;
        a.dst.num_blocks = 64;
        for (uint32_t b = 0; b < (o.kv_tokens + block_tokens - 1) / block_tokens; ++b)
          a.dst_blocks.push_back(b);
        self->quit();
        return a;
      },
  };
}

}  // namespace

TEST_CASE("live migration: a target that dies mid-move leaves the sequence on the source",
          "[decode_actor][live_migration]") {
  migration_harness h;
  auto& a = h.add_worker();
  auto target = h.reaper.add(
      h.ts.sys.spawn(dying_target, h.scfg.layout.block_tokens, h.scfg.layout.block_bytes()));
  auto req = h.request(6, 10, 20);
  auto expected = sim_continuation(h.eng, req.prompt, 20);
  h.assign(a, req);
  stream s;
  a.credits->grant(3);
  h.until_token(s, 3);

  SECTION("the source keeps decoding it") {
    h.self->send(a.handle, migrate_request{req.id, target, true, handle_of(h.self)});
    a.credits->grant(1);
    h.until_results(s, 1);
    CHECK_FALSE(s.results[0].moved);
    CHECK(s.results[0].error.code == errc::unavailable);
    CHECK_THAT(s.results[0].error.message, Catch::Contains("did not confirm the commit"));
    a.credits->grant(plenty);
    h.until_done(s);
    CHECK(h.ordered(s, 20) == expected);
    CHECK(s.duplicates == 0);
    CHECK(h.produced_by(s, a.id) == 20);
    // The commit had gone out: the source points the router back at itself, superseding
    // whatever the target may have said (epoch 1).
    REQUIRE(s.moves.size() == 1);
    CHECK(s.moves[0].worker == a.id);
    CHECK(s.moves[0].epoch == 2);
    CHECK(s.done_by == a.id);
    CHECK(s.done->reason == finish_reason::length);
  }
  SECTION("a source that may not keep it ends the attempt for the router to re-submit") {
    h.self->send(a.handle, migrate_request{req.id, target, false, handle_of(h.self)});
    a.credits->grant(1);
    h.until_results(s, 1);
    CHECK_FALSE(s.results[0].moved);
    h.until_done(s);
    CHECK(s.done_by == a.id);
    CHECK(s.done->reason == finish_reason::error);
    // errc::unavailable: the router's recompute migration takes over (transfer_failed).
    CHECK(s.done->error.code == errc::unavailable);
    CHECK_THAT(s.done->error.message,
               Catch::Contains("live migration failed") && Catch::Contains("elsewhere"));
    CHECK(s.done->completion_tokens == 5);
    CHECK(h.ordered(s, 5) == std::vector<token_id>(expected.begin(), expected.begin() + 5));
  }
  h.expect_all_free("after the failed move");
}

TEST_CASE("live migration: sequences that are not decoding, or unknown, do not move",
          "[decode_actor][live_migration]") {
  migration_harness h;
  auto& a = h.add_worker();
  auto& b = h.add_worker();
  // Waiting for its prompt's KV from a prefill worker (the scoped actor, which never
  // sends it).
  auto req = h.request(7, 10, 8);
  h.self->send(a.handle, decode_assignment{req, handle_of(h.self), handle_of(h.self), {}});
  (void)expect<prefill_job>(h.self, "prefill_job");
  h.self->send(a.handle, migrate_request{req.id, b.handle, true, handle_of(h.self)});
  auto r = expect<migrate_result>(h.self, "migrate_result");
  CHECK_FALSE(r.moved);
  CHECK(r.error.code == errc::invalid_request);
  CHECK_THAT(r.error.message, Catch::Contains("not decoding yet"));
  h.self->send(a.handle, migrate_request{12345, b.handle, true, handle_of(h.self)});
  r = expect<migrate_result>(h.self, "migrate_result");
  CHECK_THAT(r.error.message, Catch::Contains("not on this"));
  h.self->send(a.handle, cancel_request{req.id});
  (void)expect<cancel_request>(h.self, "cancel_request to the prefill stand-in");
  (void)expect<request_done>(h.self, "request_done");
  h.expect_all_free("after the refused requests");
}

TEST_CASE("live migration: without a target the worker picks one from its membership",
          "[decode_actor][live_migration]") {
  migration_harness h;
  auto& a = h.add_worker();
  auto& b = h.add_worker();
  auto& c = h.add_worker();
  auto members = [&](bool with_c) {
    membership m;
    for (auto* w : {&a, &b, &c})
      if (w != &c || with_c)
        m.members.push_back({make_info(w->id, role::decode, w->name), w->handle});
    m.members[1].draining = true;  // B is being drained too
    return m;
  };
  h.self->send(a.handle, members(true));
  auto req = h.request(8, 10, 16);
  auto expected = sim_continuation(h.eng, req.prompt, 16);
  h.assign(a, req);
  stream s;
  a.credits->grant(2);
  h.until_token(s, 2);
  h.self->send(a.handle, migrate_request{req.id, caf::actor{}, false, handle_of(h.self)});
  a.credits->grant(1);
  c.credits->grant(plenty);
  h.until_results(s, 1);
  CHECK(s.results[0].moved);
  h.until_done(s);
  REQUIRE(s.moves.size() == 1);
  CHECK(s.moves[0].worker == c.id);  // not A itself, not the draining B
  CHECK(h.ordered(s, 16) == expected);
  CHECK(s.duplicates == 0);
  CHECK(s.done_by == c.id);

  // With no other decode worker to take it, the request says so and the sequence stays.
  h.self->send(a.handle, members(false));
  auto req2 = h.request(9, 10, 16);
  stream s2;
  h.assign(a, req2);
  h.until_token(s2, 0);
  h.self->send(a.handle, migrate_request{req2.id, caf::actor{}, false, handle_of(h.self)});
  a.credits->grant(plenty);
  h.until_results(s2, 1);
  CHECK_FALSE(s2.results[0].moved);
  CHECK(s2.results[0].error.code == errc::no_workers);
  h.until_done(s2);
  CHECK(s2.done->reason == finish_reason::length);
  CHECK(h.ordered(s2, 16) == sim_continuation(h.eng, req2.prompt, 16));
  h.expect_all_free("after the moves without a target");
}

TEST_CASE("live migration: a cancel before the move starts ends the request where it is",
          "[decode_actor][live_migration]") {
  migration_harness h;
  auto& a = h.add_worker();
  auto& b = h.add_worker();
  auto req = h.request(10, 10, 16);
  h.assign(a, req);
  stream s;
  a.credits->grant(2);
  h.until_token(s, 2);
  // Both wait behind the step in flight: the cancel ends the sequence, so it never moves.
  h.self->send(a.handle, migrate_request{req.id, b.handle, true, handle_of(h.self)});
  h.self->send(a.handle, cancel_request{req.id});
  a.credits->grant(plenty);
  h.until_results(s, 1);
  CHECK_FALSE(s.results[0].moved);
  CHECK_THAT(s.results[0].error.message, Catch::Contains("before it could move"));
  h.until_done(s);
  CHECK(s.done->reason == finish_reason::cancelled);
  CHECK(s.done_by == a.id);
  CHECK(s.moves.empty());
  h.expect_all_free("after the cancel");
}

TEST_CASE(
    "live migration: through a real router the client sees one stream and the summary "
    "names the new worker",
    "[decode_actor][live_migration][router_actor]") {
  migration_harness h;
  auto& a = h.add_worker();
  auto& b = h.add_worker();
  router_config rc;
  rc.block_tokens = h.scfg.layout.block_tokens;
  auto router = h.reaper.add(
      spawn_router(h.ts.sys, make_info(1, role::router, "router-0"), rc, handle_of(h.self)));
  (void)answer_registration(h.self);
  membership m;
  m.members.push_back({make_info(1, role::router, "router-0"), router});
  m.members.push_back({make_info(a.id, role::decode, a.name), a.handle});
  m.members.push_back({make_info(b.id, role::decode, b.name), b.handle});
  h.self->send(router, m);
  auto req = h.request(77, 10, 24);
  auto expected = sim_continuation(h.eng, req.prompt, 24);
  h.self->send(router, req);  // both idle: the router picks A (the lower id)

  std::vector<token_id> got;
  std::optional<request_summary> summary;
  std::optional<migrate_result> result;
  auto receive = [&] {
    std::string problem;
    h.self->receive(
        [&](token_chunk& c) {
          CHECK(c.id == req.id);
          CHECK(c.first_index == got.size());  // in order, no gap, no duplicate
          got.insert(got.end(), c.tokens.begin(), c.tokens.end());
        },
        [&](migrate_result& r) { result = std::move(r); },
        [&](request_summary& s) { summary = std::move(s); },
        caf::others >> [&](caf::message_view& x) -> caf::result<caf::message> {
          problem = "unexpected message " + describe(x);
          return caf::sec::unexpected_message;
        },
        caf::after(receive_timeout) >> [&] { problem = "timed out"; });
    if (!problem.empty()) FAIL("through the router: " << problem);
  };
  a.credits->grant(3);
  while (got.size() < 4)
    receive();
  h.self->send(a.handle, migrate_request{req.id, b.handle, true, handle_of(h.self)});
  a.credits->grant(1);
  b.credits->grant(plenty);
  while (!summary || !result)  // A's result and B's end race: both come
    receive();
  CHECK(result->moved);
  CHECK(got == expected);
  CHECK(summary->reason == finish_reason::length);
  CHECK(summary->completion_tokens == 24);
  CHECK(summary->decode_worker == b.name);
  CHECK(summary->migrations == 1);
  CHECK(summary->migration_reasons == std::vector<std::string>{"live_migration"});
  h.expect_all_free("after the request moved through the router");
}

TEST_CASE("live migration: a constrained sequence keeps its grammar across the move",
          "[decode_actor][live_migration][grammar]") {
  migration_harness h;
  byte_word_tokenizer tok(h.scfg.vocab_size);
  std::vector<std::string> pieces(h.scfg.vocab_size);
  for (uint32_t i = 0; i < h.scfg.vocab_size; ++i)
    pieces[i] = tok.piece(static_cast<token_id>(i));
  h.grammars = std::make_shared<grammar::grammar_cache>(
      std::make_shared<const grammar::vocabulary>(std::move(pieces), token_id{2}));
  auto& a = h.add_worker();
  auto& b = h.add_worker();
  const std::string pattern = "(?:[a-c]x){12}";
  auto constrained = [&](request_id id) {
    auto r = h.request(id, 10, 40);
    r.options.sampling.grammar = grammar_kind::regex;
    r.options.sampling.grammar_source = pattern;
    return r;
  };
  auto text_of = [&](const std::vector<token_id>& ids) {
    std::string t;
    for (auto id : ids)
      t += tok.piece(id);
    return t;
  };
  // Undisturbed on A: the reference.
  stream ref;
  a.credits->grant(plenty);
  h.assign(a, constrained(1));
  h.until_done(ref);
  REQUIRE(ref.done);
  CHECK(ref.done->reason == finish_reason::stop);  // the grammar is complete: 24 tokens
  CHECK(ref.done->completion_tokens == 24);
  auto expected = h.ordered(ref, 24);
  CHECK(std::regex_match(text_of(expected), std::regex(pattern)));
  // The same request moved mid-stream: B rebuilds the grammar state from the tokens (the
  // unconstrained sim would pick pseudo-words there, which the pattern refuses).
  stream s;
  h.assign(b, constrained(2));
  b.credits->grant(4);
  h.until_token(s, 4);
  h.self->send(b.handle, migrate_request{2, a.handle, true, handle_of(h.self)});
  b.credits->grant(1);
  h.until_results(s, 1);
  h.until_done(s);
  REQUIRE(s.results.at(0).moved);
  REQUIRE(s.done);
  CHECK(s.done_by == a.id);
  CHECK(s.done->reason == finish_reason::stop);
  CHECK(h.ordered(s, 24) == expected);
  CHECK(s.tokens.size() == 24);
  h.expect_all_free("after the constrained requests");
}

TEST_CASE("live migration: a rebalance moves the sequences with the most tokens left",
          "[decode_actor][live_migration]") {
  migration_harness h;
  auto& a = h.add_worker();
  auto& b = h.add_worker();
  // Three sequences on A with 20, 40 and 30 tokens to generate.
  std::map<request_id, uint32_t> max_tokens = {{11, 20}, {12, 40}, {13, 30}};
  std::map<request_id, std::vector<token_id>> expected;
  std::map<request_id, stream> streams;
  for (auto [id, n] : max_tokens) {
    auto req = h.request(id, 10, n);
    expected[id] = sim_continuation(h.eng, req.prompt, n);
    h.assign(a, req);
  }
  // Every message of the three streams, by request.
  std::map<request_id, worker_id> done_by;
  auto receive_any = [&] {
    std::string problem;
    bool got = false;
    auto from = [&] { return h.id_of(h.self->current_sender()); };
    h.self->receive(
        [&](first_token& ft) {
          got = true;
          streams[ft.id].tokens.emplace(0, std::make_pair(ft.token, from()));
        },
        [&](token_batch& tb) {
          got = true;
          for (const auto& t : tb.tokens)
            if (!streams[t.id].tokens.emplace(t.index, std::make_pair(t.token, from())).second)
              ++streams[t.id].duplicates;
        },
        [&](attempt_moved& m) {
          got = true;
          streams[m.id].moves.push_back(std::move(m));
        },
        [&](request_done& d) {
          got = true;
          done_by[d.id] = from();
          streams[d.id].done = std::move(d);
        },
        caf::others >> [&](caf::message_view& x) -> caf::result<caf::message> {
          problem = "unexpected message " + describe(x);
          return caf::sec::unexpected_message;
        },
        caf::after(receive_timeout) >> [&] { problem = "timed out"; });
    if (!got) FAIL("collecting the streams: " << problem);
  };
  // Prefilled (first token out), so that every sequence is decoding when asked.
  a.credits->grant(3);
  while (streams[11].tokens.empty() || streams[12].tokens.empty() || streams[13].tokens.empty())
    receive_any();
  std::optional<uint32_t> started;
  h.self->request(a.handle, receive_timeout, rebalance_request{b.handle, 2})
      .receive([&](uint32_t n) { started = n; },
               [&](caf::error& e) { FAIL("rebalance_request: " << caf::to_string(e)); });
  REQUIRE(started);
  CHECK(*started == 2);
  a.credits->grant(plenty);
  b.credits->grant(plenty);
  while (done_by.size() < 3)
    receive_any();
  for (auto [id, n] : max_tokens) {
    INFO("request " << id);
    auto& s = streams[id];
    CHECK(h.ordered(s, n) == expected[id]);
    CHECK(s.tokens.size() == n);
    CHECK(s.duplicates == 0);
    CHECK(s.done->reason == finish_reason::length);
  }
  // 12 (40 tokens) and 13 (30) moved; 11 (20) stayed.
  CHECK(streams[11].moves.empty());
  CHECK(done_by[11] == a.id);
  for (request_id id : {12, 13}) {
    INFO("request " << id);
    REQUIRE(streams[id].moves.size() == 1);
    CHECK(streams[id].moves[0].worker == b.id);
    CHECK(done_by[id] == b.id);
  }
  // A worker asked to rebalance toward itself, or with nothing decoding, starts nothing.
  h.self->request(a.handle, receive_timeout, rebalance_request{a.handle, 4})
      .receive([&](uint32_t n) { CHECK(n == 0); },
               [&](caf::error& e) { FAIL("rebalance_request: " << caf::to_string(e)); });
  h.self->request(b.handle, receive_timeout, rebalance_request{a.handle, 4})
      .receive([&](uint32_t n) { CHECK(n == 0); },
               [&](caf::error& e) { FAIL("rebalance_request: " << caf::to_string(e)); });
  h.expect_all_free("after the rebalance");
}

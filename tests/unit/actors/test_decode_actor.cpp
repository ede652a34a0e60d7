// Decode worker tests: the scoped actor plays supervisor, router and prefill worker. It
// computes the prompt's KV with its own sim engine (same configuration as the worker's)
// and sends it as inline kv_transfer messages, so every byte the worker checks is known.
#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <thread>
#include <variant>

#include "engine/block_hash.hpp"
#include "engine/scheduler.hpp"
#include "tests/unit/actors/actor_test_util.hpp"
#include "transport/kv_transport.hpp"

using namespace tokenmill;
using namespace tokenmill::test;

namespace {

constexpr worker_id decode_wid = 2;

decode_config small_decode(uint32_t num_blocks = 64) {
  decode_config c;
  c.num_blocks = num_blocks;
  c.max_batch = 8;
  c.local_prefill_budget = 512;
  return c;
}

/// A decode worker under test, with the scoped actor around it.
struct decode_harness {
  test_system ts;
  caf::scoped_actor self{ts.sys};
  actor_reaper reaper;
  sim_config scfg = fast_sim();
  sim_engine eng{scfg};              ///< the test's own engine: same config as the worker's
  block_pool pool{scfg.layout, 64};  ///< the test's "prefill" pool
  inline_transport tp;
  std::shared_ptr<engine_gate> gate;  ///< set when the worker's engine is gated
  caf::actor decode;
  pool_descriptor decode_pool;

  explicit decode_harness(decode_config dc = small_decode(), bool self_is_kv_store = false,
                          std::optional<gated_engine::gated_call> gated = std::nullopt,
                          std::shared_ptr<kv_transport> transport = nullptr) {
    std::unique_ptr<engine> e;
    if (gated) {
      gate = std::make_shared<engine_gate>();
      e = std::make_unique<gated_engine>(scfg, gate, *gated);
    } else {
      e = std::make_unique<sim_engine>(scfg);
    }
    decode = reaper.add(
        spawn_decode(ts.sys, make_info(decode_wid, role::decode, "decode-0"), dc, std::move(e),
                     transport ? transport : std::make_shared<inline_transport>(), handle_of(self),
                     self_is_kv_store ? handle_of(self) : caf::actor{}));
    auto reg = answer_registration(self);
    REQUIRE(reg.info.id == decode_wid);
    REQUIRE(reg.info.kind == role::decode);
    REQUIRE(reg.handle == decode);
    decode_pool = reg.info.pool;
    REQUIRE(decode_pool.block_bytes == scfg.layout.block_bytes());
    REQUIRE(decode_pool.num_blocks == dc.num_blocks);
  }

  ~decode_harness() {
    if (gate) gate->open();
  }

  generate_request request(request_id id, size_t prompt_len, uint32_t max_tokens,
                           token_id prompt_start = 300) {
    return make_request(id, prompt_len, max_tokens, handle_of(self), prompt_start);
  }

  /// Assigns `req`, with the scoped actor as prefill worker (remote) or none (local).
  void assign(generate_request req, bool remote) {
    self->send(decode,
               decode_assignment{
                   std::move(req), remote ? handle_of(self) : caf::actor{}, handle_of(self), {}});
  }

  /// Receives the prefill job of `req` and checks that it describes the prompt.
  prefill_job expect_job(const generate_request& req) {
    auto job = expect<prefill_job>(self, "prefill_job");
    CHECK(job.id == req.id);
    CHECK(job.prompt == req.prompt);
    // Blocks the decode worker holds in its prefix cache are skipped, never the last one.
    CHECK(job.skip_blocks + job.dst_blocks.size() ==
          scfg.layout.blocks_for(static_cast<uint32_t>(req.prompt.size())));
    CHECK(job.dst_blocks.size() >= 1);
    CHECK(job.dst.block_bytes == scfg.layout.block_bytes());
    CHECK(job.dst.num_blocks == decode_pool.num_blocks);
    CHECK(job.dst.owner == decode_wid);
    CHECK(job.decode == decode);
    CHECK(job.router == handle_of(self));
    for (auto b : job.dst_blocks)
      CHECK(b < decode_pool.num_blocks);
    return job;
  }

  /// Computes the job's prompt into the test's pool; returns the local blocks and the
  /// first token.
  std::pair<std::vector<block_id>, token_id> compute(const prefill_job& job) {
    auto blocks = pool.allocate(job.skip_blocks + static_cast<uint32_t>(job.dst_blocks.size()));
    REQUIRE(blocks);
    prefill_chunk c;
    c.tokens = job.prompt;
    c.begin = 0;
    c.end = static_cast<uint32_t>(job.prompt.size());
    c.blocks = *blocks;
    c.sampling = job.sampling;
    auto next = eng.prefill(pool, std::span<const prefill_chunk>(&c, 1));
    REQUIRE(next);
    REQUIRE(next->size() == 1);
    return {std::move(*blocks), (*next)[0]};
  }

  /// An inline transfer of local blocks `src` into the job's destination blocks `dst`,
  /// with the xxh3 checksums of the source blocks.
  kv_transfer transfer(const prefill_job& job, std::span<const block_id> src,
                       std::span<const block_id> dst) {
    kv_transfer t;
    t.id = job.id;
    bool done = false;
    tp.write(pool.memory(), pool.block_bytes(), src, job.dst, dst,
             [&](error_info err, kv_payload p) {
               REQUIRE_FALSE(err);
               t.payload = std::move(p);
               done = true;
             });
    REQUIRE(done);
    for (auto b : src)
      t.checksums.push_back(block_checksum(pool, b));
    return t;
  }

  /// Plays a well-behaved prefill worker for `job`: computes it, sends the KV of the blocks
  /// it does not skip in two transfers (the last block separately) and kv_ready. Returns
  /// the first token.
  token_id serve_prefill(const prefill_job& job) {
    auto [all, first] = compute(job);
    std::vector<block_id> src(all.begin() + job.skip_blocks, all.end());
    auto n = src.size();
    auto split = n > 1 ? n - 1 : n;
    std::span<const block_id> s(src), d(job.dst_blocks);
    self->send(decode, transfer(job, s.subspan(0, split), d.subspan(0, split)));
    if (split < n) self->send(decode, transfer(job, s.subspan(split), d.subspan(split)));
    self->send(decode, kv_ready{job.id, first, static_cast<uint32_t>(n), job.tr});
    return first;
  }

  /// Receives the decode steps of request `id` (one token per step: it runs alone) and
  /// the request_done that ends it; returns the tokens with indices first_index, … .
  std::vector<token_id> collect(request_id id, uint32_t first_index, request_done& done) {
    std::vector<token_id> out;
    for (;;) {
      std::variant<std::monostate, token_batch, request_done> got;
      std::string problem;
      bool cache_event = false;  // prefix cache events have their own tests
      self->receive([&](token_batch& b) { got = std::move(b); },
                    [&](request_done& d) { got = std::move(d); },
                    [&](kv_event&) { cache_event = true; },
                    caf::others >> [&](caf::message_view& x) -> caf::result<caf::message> {
                      problem = "unexpected message " + describe(x);
                      return caf::sec::unexpected_message;
                    },
                    caf::after(receive_timeout) >> [&] { problem = "timed out"; });
      if (cache_event) continue;
      if (auto* b = std::get_if<token_batch>(&got)) {
        REQUIRE(b->tokens.size() == 1);
        CHECK(b->batch_size == 1);
        CHECK(b->tokens[0].id == id);
        CHECK(b->tokens[0].index == first_index + out.size());
        out.push_back(b->tokens[0].token);
      } else if (auto* d = std::get_if<request_done>(&got)) {
        done = std::move(*d);
        CHECK(done.id == id);
        return out;
      } else {
        FAIL("waiting for token_batch or request_done: " << problem);
      }
    }
  }

  /// The worker's status, after which nothing else may be waiting in the mailbox.
  worker_status status_and_quiet(const char* context) {
    auto ws = query_status(self, decode);
    expect_no_message(self, context);
    return ws;
  }
};

}  // namespace

TEST_CASE("decode: remote prefill, then the sim's continuation until max_tokens",
          "[decode_actor]") {
  decode_harness h;
  auto req = h.request(1, 10, 6);
  auto expected = sim_continuation(h.eng, req.prompt, 6);
  h.assign(req, true);
  auto job = h.expect_job(req);
  CHECK(job.dst_blocks.size() == 3);
  // The reservation covers the prompt and every token it may generate.
  auto ws = query_status(h.self, h.decode);
  CHECK(ws.kv_used == blocks_to_reserve(10, 6, h.scfg.layout.block_tokens));
  CHECK(ws.kv_total == 64);

  auto first = h.serve_prefill(job);
  CHECK(first == expected[0]);
  request_done done;
  auto rest = h.collect(req.id, 1, done);
  rest.insert(rest.begin(), first);
  CHECK(rest == expected);
  CHECK(done.reason == finish_reason::length);
  CHECK(done.error.code == errc::ok);
  CHECK(done.prompt_tokens == 10);
  CHECK(done.completion_tokens == 6);
  CHECK(done.tr.time_of(stage::kv_ready));
  CHECK(done.tr.time_of(stage::finished));

  ws = h.status_and_quiet("after request_done");
  CHECK(ws.kv_used == 0);
  CHECK(ws.running == 0);
  CHECK(ws.queued == 0);
  CHECK(ws.completed == 1);
}

TEST_CASE("decode: a flipped byte fails the checksum with kv_corrupt", "[decode_actor]") {
  decode_harness h;
  auto req = h.request(7, 10, 4);
  h.assign(req, true);
  auto job = h.expect_job(req);
  auto [src, first] = h.compute(job);
  auto t = h.transfer(job, src, job.dst_blocks);
  REQUIRE(!t.payload.bytes.empty());
  t.payload.bytes[t.payload.bytes.size() / 2 + 3] ^= 0x01;  // checksums stay the originals
  h.self->send(h.decode, t);
  h.self->send(h.decode, kv_ready{job.id, first, static_cast<uint32_t>(src.size()), job.tr});
  // The prefill worker (this test) is told to stop, then the router hears the error.
  auto c = expect<cancel_request>(h.self, "cancel_request to the prefill worker");
  CHECK(c.id == req.id);
  auto done = expect<request_done>(h.self, "request_done");
  CHECK(done.id == req.id);
  CHECK(done.reason == finish_reason::error);
  CHECK(done.error.code == errc::kv_corrupt);
  CHECK_THAT(done.error.message, Catch::Contains("checksum"));
  CHECK(done.completion_tokens == 0);
  auto ws = h.status_and_quiet("after kv_corrupt");
  CHECK(ws.kv_used == 0);
  CHECK(ws.completed == 0);
}

TEST_CASE("decode: swapped blocks with matching checksums fail the content check",
          "[decode_actor]") {
  decode_harness h;
  auto req = h.request(8, 12, 4);  // three full blocks
  h.assign(req, true);
  auto job = h.expect_job(req);
  auto [src, first] = h.compute(job);
  REQUIRE(src.size() == 3);
  auto t = h.transfer(job, src, job.dst_blocks);
  // Swap the bytes of blocks 0 and 1 and their checksums: each block is intact, but in
  // the wrong place.
  auto bb = h.pool.block_bytes();
  std::vector<uint8_t> tmp(t.payload.bytes.begin(), t.payload.bytes.begin() + bb);
  std::memcpy(t.payload.bytes.data(), t.payload.bytes.data() + bb, bb);
  std::memcpy(t.payload.bytes.data() + bb, tmp.data(), bb);
  std::swap(t.checksums[0], t.checksums[1]);
  h.self->send(h.decode, t);
  h.self->send(h.decode, kv_ready{job.id, first, 3, job.tr});
  auto c = expect<cancel_request>(h.self, "cancel_request to the prefill worker");
  CHECK(c.id == req.id);
  auto done = expect<request_done>(h.self, "request_done");
  CHECK(done.reason == finish_reason::error);
  CHECK(done.error.code == errc::kv_corrupt);
  CHECK_THAT(done.error.message, Catch::Contains("wrong contents"));
  auto ws = h.status_and_quiet("after the content check");
  CHECK(ws.kv_used == 0);
}

TEST_CASE("decode: local prefill gives the same tokens as remote prefill", "[decode_actor]") {
  decode_harness h;
  auto req = h.request(3, 10, 6);
  auto expected = sim_continuation(h.eng, req.prompt, 6);
  h.assign(req, false);
  // No prefill job: the worker prefills itself and sends the first token to the router.
  auto ft = expect<first_token>(h.self, "first_token from the local prefill");
  CHECK(ft.id == req.id);
  CHECK(ft.token == expected[0]);
  CHECK(ft.tr.time_of(stage::prefill_done));
  request_done done;
  auto rest = h.collect(req.id, 1, done);
  rest.insert(rest.begin(), ft.token);
  CHECK(rest == expected);
  CHECK(done.reason == finish_reason::length);
  CHECK(done.completion_tokens == 6);
  auto ws = h.status_and_quiet("after request_done");
  CHECK(ws.kv_used == 0);
  CHECK(ws.completed == 1);
}

TEST_CASE("decode: penalties and logprobs follow the sequence's own history",
          "[decode_actor][logprobs]") {
  decode_harness h;
  auto req = h.request(4, 10, 6);
  auto& s = req.options.sampling;
  s.temperature = 0.7f;
  s.seed = 5;
  s.presence_penalty = 1.5f;
  s.frequency_penalty = 0.5f;
  s.repetition_penalty = 1.2f;
  s.top_logprobs = 2;
  // The reference: the sim's sampler over the same history, one token at a time.
  std::vector<token_id> ctx = req.prompt;
  std::vector<token_id> want;
  std::vector<token_logprobs> want_lp;
  for (int i = 0; i < 6; ++i) {
    token_logprobs lp;
    want.push_back(h.eng.sample(ctx, req.prompt.size(), s, &lp));
    want_lp.push_back(lp);
    ctx.push_back(want.back());
  }
  h.assign(req, false);
  auto ft = expect<first_token>(h.self, "first_token from the local prefill");
  std::vector<token_id> got{ft.token};
  std::vector<token_logprobs> got_lp{ft.logprobs};
  for (;;) {
    std::optional<request_done> done;
    h.self->receive(
        [&](token_batch& b) {
          for (auto& t : b.tokens) {
            got.push_back(t.token);
            got_lp.push_back(t.logprobs);
          }
        },
        [&](request_done& d) { done = d; }, [&](kv_event&) {},
        caf::after(receive_timeout) >> [&] { FAIL("timed out"); });
    if (done) break;
  }
  CHECK(got == want);
  REQUIRE(got_lp.size() == want_lp.size());
  for (size_t i = 0; i < got_lp.size(); ++i) {
    INFO("token " << i);
    CHECK(got_lp[i].logprob == want_lp[i].logprob);
    REQUIRE(got_lp[i].top.size() == 2);
    CHECK(got_lp[i].top[0].token == want_lp[i].top[0].token);
  }
  // The penalties changed something: the plain sampler gives another continuation.
  auto plain = s;
  plain.presence_penalty = plain.frequency_penalty = 0;
  plain.repetition_penalty = 1;
  std::vector<token_id> ctx2 = req.prompt, other;
  for (int i = 0; i < 6; ++i) {
    other.push_back(h.eng.sample(ctx2, req.prompt.size(), plain, nullptr));
    ctx2.push_back(other.back());
  }
  CHECK(other != want);
}

TEST_CASE("decode: cancel while waiting for KV frees the blocks and cancels the prefill",
          "[decode_actor]") {
  decode_harness h;
  auto req = h.request(4, 10, 8);
  h.assign(req, true);
  auto job = h.expect_job(req);
  CHECK(query_status(h.self, h.decode).kv_used == blocks_to_reserve(10, 8, 4));
  h.self->send(h.decode, cancel_request{req.id});
  auto c = expect<cancel_request>(h.self, "cancel_request to the prefill worker");
  CHECK(c.id == req.id);
  auto done = expect<request_done>(h.self, "request_done");
  CHECK(done.id == req.id);
  CHECK(done.reason == finish_reason::cancelled);
  CHECK(done.completion_tokens == 0);
  CHECK(query_status(h.self, h.decode).kv_used == 0);

  // KV that was already on its way arrives after the cancel: ignored.
  h.serve_prefill(job);
  auto ws = h.status_and_quiet("after late KV of a cancelled request");
  CHECK(ws.kv_used == 0);
  CHECK(ws.running == 0);
  CHECK(ws.completed == 0);
}

TEST_CASE("decode: a stop id ends the request with finish_reason stop", "[decode_actor]") {
  decode_harness h;
  auto req = h.request(5, 9, 10);
  auto expected = sim_continuation(h.eng, req.prompt, 3);
  // The third generated token must not appear earlier, or generation would stop there.
  REQUIRE(expected[2] != expected[0]);
  REQUIRE(expected[2] != expected[1]);
  req.options.stop_ids = {expected[2]};
  h.assign(req, true);
  auto job = h.expect_job(req);
  auto first = h.serve_prefill(job);
  request_done done;
  auto rest = h.collect(req.id, 1, done);
  rest.insert(rest.begin(), first);
  CHECK(rest == expected);
  CHECK(done.reason == finish_reason::stop);
  CHECK(done.completion_tokens == 3);
  CHECK(h.status_and_quiet("after stop").kv_used == 0);
}

TEST_CASE("decode: a first token that is a stop id ends the request before any step",
          "[decode_actor]") {
  // Regression (actors/decode/decode_actor.cpp, finish()): the request ended inside the
  // kv_ready handler while its phase was still waiting_kv, so finish() sent cancel_request
  // to the prefill worker, which had already finished the job (only reason `length` was
  // exempted, not `stop` or `eos`): harmless, but a stray protocol message.
  decode_harness h;
  auto req = h.request(6, 9, 10);
  auto expected = sim_continuation(h.eng, req.prompt, 1);
  req.options.stop_ids = {expected[0]};
  h.assign(req, true);
  auto job = h.expect_job(req);
  h.serve_prefill(job);
  auto done = expect<request_done>(h.self, "request_done (no cancel_request before it)");
  CHECK(done.reason == finish_reason::stop);
  CHECK(done.completion_tokens == 1);
  CHECK(h.status_and_quiet("after stop on the first token").kv_used == 0);
}

namespace {

decode_config held_first_token() {
  auto c = small_decode();
  c.first_token = first_token_release::decode;
  return c;
}

}  // namespace

TEST_CASE("decode: first-token release decode sends the held first token before its first step",
          "[decode_actor]") {
  decode_harness h{held_first_token()};
  auto req = h.request(21, 10, 4);
  auto expected = sim_continuation(h.eng, req.prompt, 4);
  h.assign(req, true);
  auto job = h.expect_job(req);
  CHECK(job.hold_first_token);  // the prefill worker must not stream it
  auto [all, first] = h.compute(job);
  std::vector<block_id> src(all.begin() + job.skip_blocks, all.end());
  h.self->send(h.decode, h.transfer(job, src, job.dst_blocks));
  h.self->send(h.decode, kv_ready{job.id, first, static_cast<uint32_t>(src.size()), job.tr,
                                  token_logprobs{-0.25f, {{first, -0.25f}}}});
  // The first token comes from the decode worker, before any token of the first step.
  auto ft = expect<first_token>(h.self, "the held first token");
  CHECK(ft.id == req.id);
  CHECK(ft.token == expected[0]);
  CHECK(ft.logprobs.logprob == -0.25f);  // passed on with it
  const auto released = ft.tr.time_of(stage::first_token_released);
  REQUIRE(released);
  REQUIRE(ft.tr.time_of(stage::kv_ready));
  CHECK(*released >= *ft.tr.time_of(stage::kv_ready));
  request_done done;
  auto rest = h.collect(req.id, 1, done);
  rest.insert(rest.begin(), ft.token);
  CHECK(rest == expected);
  CHECK(done.reason == finish_reason::length);
  CHECK(done.completion_tokens == 4);
  CHECK(h.status_and_quiet("after request_done").kv_used == 0);
}

TEST_CASE("decode: a held first token that ends the request still reaches the router",
          "[decode_actor]") {
  decode_harness h{held_first_token()};
  auto req = h.request(22, 9, 10);
  auto expected = sim_continuation(h.eng, req.prompt, 1);
  req.options.stop_ids = {expected[0]};
  h.assign(req, true);
  auto job = h.expect_job(req);
  h.serve_prefill(job);
  auto ft = expect<first_token>(h.self, "the held first token, released as the request ends");
  CHECK(ft.token == expected[0]);
  CHECK(ft.tr.time_of(stage::first_token_released));
  auto done = expect<request_done>(h.self, "request_done after it");
  CHECK(done.reason == finish_reason::stop);
  CHECK(done.completion_tokens == 1);
  CHECK(h.status_and_quiet("after stop on the held first token").kv_used == 0);
}

TEST_CASE("decode: a cancelled request drops its held first token and frees its blocks",
          "[decode_actor]") {
  // Cancelled while its KV is on the way: nothing is ever sent to the router but
  // request_done, and the late kv_ready is ignored.
  decode_harness h{held_first_token()};
  auto req = h.request(23, 10, 8);
  h.assign(req, true);
  auto job = h.expect_job(req);
  h.self->send(h.decode, cancel_request{req.id});
  auto c = expect<cancel_request>(h.self, "cancel_request to the prefill worker");
  CHECK(c.id == req.id);
  auto done = expect<request_done>(h.self, "request_done, no first_token");
  CHECK(done.reason == finish_reason::cancelled);
  h.serve_prefill(job);
  auto ws = h.status_and_quiet("after late KV of a cancelled request");
  CHECK(ws.kv_used == 0);
  CHECK(ws.running == 0);
}

TEST_CASE("decode: first-token release decode leaves a local prefill's first token as it was",
          "[decode_actor]") {
  decode_harness h{held_first_token()};
  auto req = h.request(24, 10, 3);
  auto expected = sim_continuation(h.eng, req.prompt, 3);
  h.assign(req, false);
  auto ft = expect<first_token>(h.self, "first_token from the local prefill");
  CHECK(ft.token == expected[0]);
  CHECK_FALSE(ft.tr.time_of(stage::first_token_released));  // nothing was held
  request_done done;
  auto rest = h.collect(req.id, 1, done);
  rest.insert(rest.begin(), ft.token);
  CHECK(rest == expected);
  CHECK(h.status_and_quiet("after request_done").kv_used == 0);
}

TEST_CASE("decode: a request larger than the pool fails with out_of_blocks", "[decode_actor]") {
  decode_harness h{small_decode(16)};
  auto req = h.request(9, 10, 1000);
  h.assign(req, true);
  auto done = expect<request_done>(h.self, "request_done");
  CHECK(done.id == req.id);
  CHECK(done.reason == finish_reason::error);
  CHECK(done.error.code == errc::out_of_blocks);
  auto ws = h.status_and_quiet("after out_of_blocks (no prefill job)");
  CHECK(ws.kv_used == 0);
  CHECK(ws.queued == 0);
}

TEST_CASE("decode: KV and kv_ready delivered twice are harmless", "[decode_actor]") {
  decode_harness h;
  auto req = h.request(10, 10, 4);
  auto expected = sim_continuation(h.eng, req.prompt, 4);
  h.assign(req, true);
  auto job = h.expect_job(req);
  auto [src, first] = h.compute(job);
  auto t = h.transfer(job, src, job.dst_blocks);
  kv_ready ready{job.id, first, static_cast<uint32_t>(src.size()), job.tr};
  h.self->send(h.decode, t);
  h.self->send(h.decode, t);
  h.self->send(h.decode, ready);
  h.self->send(h.decode, ready);
  request_done done;
  auto rest = h.collect(req.id, 1, done);
  rest.insert(rest.begin(), first);
  CHECK(rest == expected);
  CHECK(done.reason == finish_reason::length);
  CHECK(done.completion_tokens == 4);
  CHECK(h.status_and_quiet("after duplicates").kv_used == 0);
}

TEST_CASE("decode: prefill_failed fails the request without cancelling the prefill",
          "[decode_actor]") {
  decode_harness h;
  auto req = h.request(11, 10, 4);
  h.assign(req, true);
  auto job = h.expect_job(req);
  h.self->send(h.decode, prefill_failed{job.id, {errc::out_of_blocks, "prefill pool too small"}});
  auto done = expect<request_done>(h.self, "request_done");
  CHECK(done.reason == finish_reason::error);
  CHECK(done.error.code == errc::out_of_blocks);
  CHECK_THAT(done.error.message, Catch::Contains("prefill pool too small"));
  CHECK(h.status_and_quiet("after prefill_failed").kv_used == 0);
}

TEST_CASE("decode: assignments wait for free blocks, in arrival order", "[decode_actor]") {
  decode_harness h{small_decode(8)};
  auto a = h.request(20, 12, 12);  // 6 blocks each: the second waits for the first
  auto b = h.request(21, 12, 12);
  h.assign(a, true);
  h.assign(b, true);
  auto job_a = h.expect_job(a);
  auto ws = h.status_and_quiet("while the second assignment waits");
  CHECK(ws.kv_used == 6);
  CHECK(ws.queued == 1);

  h.serve_prefill(job_a);
  request_done done;
  auto tokens = h.collect(a.id, 1, done);
  CHECK(tokens.size() == 11);
  CHECK(done.reason == finish_reason::length);
  // Finishing the first frees its blocks; the second is reserved and sent to prefill.
  auto job_b = h.expect_job(b);
  auto expected = sim_continuation(h.eng, b.prompt, 12);
  auto first = h.serve_prefill(job_b);
  auto rest = h.collect(b.id, 1, done);
  rest.insert(rest.begin(), first);
  CHECK(rest == expected);
  CHECK(h.status_and_quiet("after both").kv_used == 0);
}

TEST_CASE("decode: the kv-store hears blocks enter the prefix cache, and leave on eviction",
          "[decode_actor]") {
  decode_harness h{small_decode(6), true};  // 6 blocks of 4 tokens
  auto req = h.request(30, 10, 3);          // two full prompt blocks
  h.assign(req, true);
  auto job = h.expect_job(req);
  CHECK(job.skip_blocks == 0);
  h.serve_prefill(job);
  auto stored = expect<kv_event>(h.self, "kv_event stored");
  CHECK(stored.worker == decode_wid);
  CHECK(stored.stored);
  CHECK(stored.hashes == block_hashes(req.prompt, h.scfg.layout.block_tokens));
  CHECK(stored.hashes.size() == 2);
  // Step 1 writes position 10, step 2 position 11: the third block (prompt tail and two
  // generated tokens) is full after step 2 and enters the cache too.
  auto b1 = expect<token_batch>(h.self, "token_batch 1");
  CHECK(b1.tokens.at(0).index == 1);
  auto b2 = expect<token_batch>(h.self, "token_batch 2");
  CHECK(b2.tokens.at(0).index == 2);
  auto third = expect<kv_event>(h.self, "kv_event stored (generated block)");
  CHECK(third.stored);
  REQUIRE(third.hashes.size() == 1);
  auto done = expect<request_done>(h.self, "request_done");
  CHECK(done.reason == finish_reason::length);
  auto ws = h.status_and_quiet("after request_done");
  CHECK(ws.kv_used == 0);  // nothing referenced; the three blocks stay cached
  CHECK_THAT(ws.detail, Catch::Contains("prefix cache 3 blocks"));

  // A request with another prompt that needs all 6 blocks evicts the cached ones.
  auto big = h.request(31, 8, 16, 900);
  h.assign(big, true);
  auto removed = expect<kv_event>(h.self, "kv_event removed");
  CHECK_FALSE(removed.stored);
  CHECK(removed.hashes.size() == 3);
  auto big_job = h.expect_job(big);
  CHECK(big_job.skip_blocks == 0);
}

TEST_CASE("decode: a request sharing a cached prefix skips those blocks' prefill",
          "[decode_actor]") {
  decode_harness h{small_decode(), true};
  auto a = h.request(40, 13, 2);  // three full prompt blocks and one token
  h.assign(a, true);
  auto job_a = h.expect_job(a);
  CHECK(job_a.skip_blocks == 0);
  h.serve_prefill(job_a);
  request_done done;
  (void)expect<kv_event>(h.self, "kv_event stored");
  auto rest = h.collect(a.id, 1, done);
  CHECK(done.reason == finish_reason::length);

  // Same 12 leading tokens, another tail: the three full blocks come from the cache.
  auto b = h.request(41, 14, 4);
  b.prompt[12] = 777;
  b.prompt[13] = 778;
  h.assign(b, true);
  auto job_b = h.expect_job(b);
  CHECK(job_b.skip_blocks == 3);
  CHECK(job_b.dst_blocks.size() == 1);
  auto expected = sim_continuation(h.eng, b.prompt, 4);
  auto first = h.serve_prefill(job_b);
  auto tokens = h.collect(b.id, 1, done);
  tokens.insert(tokens.begin(), first);
  CHECK(tokens == expected);  // the reused KV is right: the sim engine checks every block
  CHECK(done.reason == finish_reason::length);

  // An identical prompt whose length is a whole number of blocks still computes its last
  // block (the first token comes from the last position's logits).
  auto c = h.request(42, 12, 2);
  h.assign(c, true);
  auto job_c = h.expect_job(c);
  CHECK(job_c.skip_blocks == 2);
  h.serve_prefill(job_c);
  (void)h.collect(c.id, 1, done);
  CHECK(done.reason == finish_reason::length);
  CHECK_THAT(h.status_and_quiet("after three").detail, Catch::Contains("reused"));
}

TEST_CASE("decode: local prefill starts after the cached prefix", "[decode_actor]") {
  decode_harness h{small_decode()};
  auto a = h.request(50, 9, 2);
  h.assign(a, false);
  request_done done;
  auto first_a = expect<first_token>(h.self, "first_token a");
  (void)first_a;
  (void)h.collect(a.id, 1, done);
  auto b = h.request(51, 9, 3);
  b.prompt[8] = 4242;
  h.assign(b, false);
  auto expected = sim_continuation(h.eng, b.prompt, 3);
  auto ft = expect<first_token>(h.self, "first_token b");
  auto tokens = h.collect(b.id, 1, done);
  tokens.insert(tokens.begin(), ft.token);
  CHECK(tokens == expected);
  CHECK_THAT(h.status_and_quiet("after both").detail, Catch::Contains("(2 reused)"));
}

TEST_CASE("decode: cancel while the engine computes the sequence's step", "[decode_actor]") {
  decode_harness h{small_decode(), false, gated_engine::gated_call::decode};
  auto req = h.request(40, 10, 100);
  auto expected = sim_continuation(h.eng, req.prompt, 100);
  h.assign(req, false);
  auto ft = expect<first_token>(h.self, "first_token");
  CHECK(ft.token == expected[0]);
  h.gate->wait_until_entered();  // the first decode step of the request is on the engine
  h.self->send(h.decode, cancel_request{req.id});
  h.gate->open();
  // The step on the engine may or may not be reported; either way the request ends
  // cancelled, its count matches what the router saw, and its blocks are free.
  request_done done;
  auto rest = h.collect(req.id, 1, done);
  CHECK(done.reason == finish_reason::cancelled);
  CHECK(done.completion_tokens == 1 + rest.size());
  CHECK(rest.size() <= 1);
  rest.insert(rest.begin(), ft.token);
  CHECK(std::equal(rest.begin(), rest.end(), expected.begin()));
  auto ws = h.status_and_quiet("after the cancel");
  CHECK(ws.kv_used == 0);
  CHECK(ws.running == 0);
}

TEST_CASE("decode: a sequence joins a running batch and both follow the sim", "[decode_actor]") {
  // A's local prefill is held on the engine while B arrives, so B is prefilled
  // (piggy-backed) while A decodes, then both decode in the same steps.
  decode_harness h{small_decode(), false, gated_engine::gated_call::prefill};
  auto a = h.request(50, 10, 8);
  auto b = h.request(51, 7, 4, 400);
  std::map<request_id, std::vector<token_id>> expected{
      {a.id, sim_continuation(h.eng, a.prompt, 8)}, {b.id, sim_continuation(h.eng, b.prompt, 4)}};
  h.assign(a, false);
  h.gate->wait_until_entered();
  h.assign(b, false);
  h.gate->open();

  std::map<request_id, std::vector<token_id>> got;
  std::map<request_id, request_done> done;
  bool shared_step = false;
  while (done.size() < 2) {
    std::variant<std::monostate, first_token, token_batch, request_done> msg;
    std::string problem;
    h.self->receive([&](first_token& f) { msg = std::move(f); },
                    [&](token_batch& t) { msg = std::move(t); },
                    [&](request_done& d) { msg = std::move(d); },
                    caf::others >> [&](caf::message_view& x) -> caf::result<caf::message> {
                      problem = "unexpected message " + describe(x);
                      return caf::sec::unexpected_message;
                    },
                    caf::after(receive_timeout) >> [&] { problem = "timed out"; });
    if (auto* f = std::get_if<first_token>(&msg)) {
      CHECK(got[f->id].empty());
      got[f->id].push_back(f->token);
    } else if (auto* t = std::get_if<token_batch>(&msg)) {
      CHECK(t->batch_size >= t->tokens.size());
      if (t->tokens.size() == 2) {
        shared_step = true;
        CHECK(t->tokens[0].id != t->tokens[1].id);
      }
      for (const auto& e : t->tokens) {
        REQUIRE(expected.count(e.id) == 1);
        CHECK(e.index == got[e.id].size());  // in order, after the first token
        got[e.id].push_back(e.token);
      }
    } else if (auto* d = std::get_if<request_done>(&msg)) {
      CHECK(done.count(d->id) == 0);
      done[d->id] = std::move(*d);
    } else {
      FAIL("waiting for the two requests' tokens: " << problem);
    }
  }
  CHECK(shared_step);
  CHECK(got[a.id] == expected[a.id]);
  CHECK(got[b.id] == expected[b.id]);
  CHECK(done[a.id].reason == finish_reason::length);
  CHECK(done[b.id].reason == finish_reason::length);
  CHECK(done[a.id].completion_tokens == 8);
  CHECK(done[b.id].completion_tokens == 4);
  auto ws = h.status_and_quiet("after both requests");
  CHECK(ws.kv_used == 0);
  CHECK(ws.completed == 2);
}

TEST_CASE("decode: after a KV failure frees blocks, the waiting assignment starts",
          "[decode_actor]") {
  // Regression (actors/decode/decode_actor.cpp): two failure paths called fail() without
  // launch(): the kv_transfer handler when a transfer named a block not reserved for the
  // prompt, and the kv_ready handler when fewer blocks arrived than the prompt has. fail()
  // freed the blocks and reserve_waiting() reserved the next assignment; a local prefill
  // was queued but nothing launched the engine, so it waited until some unrelated message
  // arrived (here: forever).
  decode_harness h{small_decode(8)};
  auto a = h.request(60, 12, 12);  // 6 of 8 blocks
  auto b = h.request(61, 12, 4, 400);
  h.assign(a, true);
  h.assign(b, false);  // local prefill, waits for blocks
  auto job = h.expect_job(a);
  CHECK(h.status_and_quiet("while B waits").queued == 1);
  SECTION("a transfer names a block that is not reserved for the prompt") {
    auto [src, first] = h.compute(job);
    std::vector<block_id> unreserved{7};
    REQUIRE(std::find(job.dst_blocks.begin(), job.dst_blocks.end(), 7) == job.dst_blocks.end());
    h.self->send(h.decode, h.transfer(job, std::span(src).subspan(0, 1), unreserved));
  }
  SECTION("kv_ready before the prompt's blocks arrived") {
    h.self->send(h.decode, kv_ready{job.id, 500, 3, job.tr});
  }
  CHECK(expect<cancel_request>(h.self, "cancel_request to the prefill worker").id == a.id);
  auto done = expect<request_done>(h.self, "request_done");
  CHECK(done.id == a.id);
  CHECK(done.error.code == errc::kv_corrupt);
  // With a zero-cost engine the first token follows within milliseconds; 1 s (not 5)
  // bounds how long this test takes should the regression return.
  auto ft = expect<first_token>(h.self, "first_token of the waiting local assignment",
                                std::chrono::seconds(1));
  CHECK(ft.id == b.id);
  auto rest = h.collect(b.id, 1, done);
  rest.insert(rest.begin(), ft.token);
  CHECK(rest == sim_continuation(h.eng, b.prompt, 4));
  CHECK(done.reason == finish_reason::length);
  CHECK(h.status_and_quiet("after B").kv_used == 0);
}

namespace {
/// The inline transport, claiming to be one-sided (as UCX is): the decode worker must then
/// hold the blocks of a sequence that ends while its KV is being written.
class one_sided_inline final : public kv_transport {
 public:
  std::string_view name() const override { return "one-sided"; }
  bool one_sided() const override { return true; }
  kv_transport_stats stats() const override { return inner.stats(); }
  pool_descriptor register_pool(worker_id owner, pool_memory& memory, size_t block_bytes) override {
    return inner.register_pool(owner, memory, block_bytes);
  }
  void write(const pool_memory& local, size_t block_bytes, std::span<const block_id> src,
             const pool_descriptor& peer, std::span<const block_id> dst, completion done) override {
    inner.write(local, block_bytes, src, peer, dst, std::move(done));
  }
  error_info deliver(const kv_payload& payload, pool_memory& local, size_t block_bytes) override {
    return inner.deliver(payload, local, block_bytes);
  }
  inline_transport inner;
};
}  // namespace

TEST_CASE("decode: with a one-sided transport, a cancelled request's blocks wait for the drain",
          "[decode_actor]") {
  auto dc = small_decode();
  const bool expire = GENERATE(false, true);
  dc.kv_drain_timeout = expire ? std::chrono::milliseconds(50) : std::chrono::milliseconds(60000);
  decode_harness h(dc, false, std::nullopt, std::make_shared<one_sided_inline>());
  auto req = h.request(7, 10, 8);
  h.assign(req, true);
  auto job = h.expect_job(req);
  const uint32_t reserved = blocks_to_reserve(10, 8, 4);
  CHECK(query_status(h.self, h.decode).kv_used == reserved);
  h.self->send(h.decode, cancel_request{req.id});
  CHECK(expect<cancel_request>(h.self, "cancel_request to the prefill worker").id == req.id);
  CHECK(expect<request_done>(h.self, "request_done").reason == finish_reason::cancelled);
  if (!expire) {
    // A put may still be on its way: the blocks stay reserved until the prefill says so.
    auto ws = query_status(h.self, h.decode);
    CHECK(ws.kv_used == reserved);
    CHECK_THAT(ws.detail, Catch::Contains("held until their writes drain"));
    h.self->send(h.decode, kv_drained{req.id});
  }
  if (!expire) {
    // The prefill's word frees them: kv_drained is handled before the status query that
    // follows it from the same sender.
    CHECK(query_status(h.self, h.decode).kv_used == 0);
  } else {
    // The timeout frees them. It is a delayed_send on CAF's clock, the behaviour under
    // test, and no message tells the test that it fired: this one waits in wall time.
    bool freed = false;
    for (int i = 0; i < 200 && !freed; ++i) {
      freed = query_status(h.self, h.decode).kv_used == 0;
      if (!freed) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    CHECK(freed);
  }
  h.self->send(h.decode, kv_drained{req.id});  // a late or repeated word is harmless
  auto ws = h.status_and_quiet("after the drain");
  CHECK(ws.kv_used == 0);
  CHECK(ws.detail.find("held") == std::string::npos);
}

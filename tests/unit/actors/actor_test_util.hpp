#pragma once
/// Helpers for actor tests (STYLE.md §10). A `caf::scoped_actor` plays every counterpart
/// of the actor under test (router, prefill, decode, client, supervisor) and drives it
/// with explicit messages. Messages between one sender and one receiver arrive in the
/// order sent, so as long as the scoped actor is the only peer, every exchange is
/// deterministic. No sleeps: every receive has a finite timeout that fails the test, and
/// `expect<T>` fails on any message other than the one the test expects next.
#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include <catch2/catch.hpp>

#include "actors/actors.hpp"
#include "actors/protocol.hpp"
#include "actors/type_ids.hpp"
#include "engine/block_pool.hpp"
#include "engine/sim_engine.hpp"

namespace tokenmill::test {

/// Longest a test waits for any one message before it fails.
inline constexpr auto receive_timeout = std::chrono::seconds(5);

/// The actor system configuration of every actor test: protocol types registered, the
/// CAF console logger off.
class test_config : public caf::actor_system_config {
 public:
  test_config() {
    register_types(*this);
    set("logger.console", caf::atom("none"));
  }
};

/// One actor system per test case.
struct test_system {
  test_config cfg;
  caf::actor_system sys{cfg};
};

/// Kills the actors it holds when the test ends, pass or fail, so that the actor system
/// (destroyed after it) does not wait for actors that still have work queued.
class actor_reaper {
 public:
  actor_reaper() = default;
  actor_reaper(const actor_reaper&) = delete;
  actor_reaper& operator=(const actor_reaper&) = delete;
  ~actor_reaper() {
    for (auto& a : actors_)
      caf::anon_send_exit(a, caf::exit_reason::kill);
  }
  caf::actor add(caf::actor a) { return actors_.emplace_back(std::move(a)); }

 private:
  std::vector<caf::actor> actors_;
};

/// The scoped actor as an actor handle (to put into messages as router, prefill, client…).
inline caf::actor handle_of(const caf::scoped_actor& self) {
  return caf::actor_cast<caf::actor>(self);
}

/// First characters of a message, for failure output (KV payloads are large).
inline std::string describe(const caf::message_view& x) {
  auto s = caf::to_string(x.copy_content_to_message());
  if (s.size() > 300) s = s.substr(0, 300) + "…";
  return s;
}

/// Receives the next message, which must be a `T`; anything else, or nothing within
/// `timeout`, fails the test. `what` names the expectation in failure output. A zero
/// timeout means "already in the mailbox" (after a round trip to its sender). CAF drops
/// the timeout message of an answered request silently but restarts the wait, so a
/// failing expect may take up to twice its timeout.
template <class T>
T expect(caf::scoped_actor& self, const char* what,
         std::chrono::milliseconds timeout = receive_timeout) {
  std::optional<T> got;
  std::string problem;
  self->receive([&](T& x) { got = std::move(x); },
                caf::others >> [&](caf::message_view& x) -> caf::result<caf::message> {
                  problem = "unexpected message " + describe(x);
                  return caf::sec::unexpected_message;
                },
                caf::after(timeout) >> [&] { problem = "timed out"; });
  if (!got) FAIL("waiting for " << what << ": " << problem);
  return std::move(*got);
}

/// Nothing is waiting in the mailbox. Meaningful after a round trip (a status request)
/// to the only actor that could have sent something: its earlier messages precede the
/// reply.
inline void expect_no_message(caf::scoped_actor& self, const char* context) {
  std::string problem;
  self->receive(
      caf::others >> [&](caf::message_view& x) -> caf::result<caf::message> {
        problem = "unexpected message " + describe(x);
        return caf::sec::unexpected_message;
      },
      caf::after(std::chrono::seconds(0)) >> [] {});
  if (!problem.empty()) FAIL(context << ": " << problem);
}

/// Answers the registration request a worker sends to its supervisor on start (the
/// scoped actor plays the supervisor); returns what the worker registered.
inline register_worker answer_registration(caf::scoped_actor& self, bool accept = true) {
  std::optional<register_worker> got;
  std::string problem;
  self->receive(
      [&](register_worker& r) {
        got = r;
        return accept;
      },
      caf::others >> [&](caf::message_view& x) -> caf::result<caf::message> {
        problem = "unexpected message " + describe(x);
        return caf::sec::unexpected_message;
      },
      caf::after(receive_timeout) >> [&] { problem = "timed out"; });
  if (!got) FAIL("waiting for register_worker: " << problem);
  return std::move(*got);
}

/// Asks `who` for its worker_status (request with a 5 s timeout).
inline worker_status query_status(caf::scoped_actor& self, const caf::actor& who) {
  std::optional<worker_status> got;
  std::string problem;
  self->request(who, receive_timeout, status_atom::value)
      .receive([&](worker_status& ws) { got = std::move(ws); },
               [&](caf::error& e) { problem = caf::to_string(e); });
  if (!got) FAIL("status query failed: " << problem);
  return std::move(*got);
}

/// Sim engine with zero modelled cost and a tiny layout (1 KiB blocks of 4 tokens), so
/// that actor tests run as fast as the CPU allows.
inline sim_config fast_sim() {
  sim_config c;
  c.prefill_ns_per_token = 0;
  c.prefill_base_ns = 0;
  c.decode_base_ns = 0;
  c.decode_per_seq_ns = 0;
  c.decode_per_ctx_token_ns = 0;
  c.layout.layers = 2;
  c.layout.kv_heads = 2;
  c.layout.head_dim = 16;
  c.layout.block_tokens = 4;
  c.layout.dtype_bytes = 2;
  return c;
}

/// Holds a worker's engine inside one engine call, so that messages the test sends
/// meanwhile queue up behind a busy engine: deterministic interleavings without sleeps.
class engine_gate {
 public:
  /// Waits (at most `receive_timeout`) until the engine is inside the gated call.
  void wait_until_entered() {
    REQUIRE(entered_future_.wait_for(receive_timeout) == std::future_status::ready);
  }
  /// Lets the engine go on. Idempotent; called from the test thread only.
  void open() {
    if (is_open_) return;
    is_open_ = true;
    open_.set_value();
  }

 private:
  friend class gated_engine;
  std::promise<void> entered_;
  std::future<void> entered_future_ = entered_.get_future();
  std::promise<void> open_;
  std::shared_future<void> opened_ = open_.get_future().share();
  bool is_open_ = false;
};

/// The sim engine, except that its first call of one kind waits at the gate: at most
/// `receive_timeout`, so a failed test cannot leave a worker stuck.
class gated_engine final : public engine {
 public:
  enum class gated_call { prefill, decode };
  gated_engine(sim_config cfg, std::shared_ptr<engine_gate> gate, gated_call which)
      : sim_(cfg), gate_(std::move(gate)), which_(which) {}
  const model_info& info() const override { return sim_.info(); }
  result<std::vector<token_id>> prefill(block_pool& pool,
                                        std::span<const prefill_chunk> batch) override {
    if (which_ == gated_call::prefill) pass_gate();
    return sim_.prefill(pool, batch);
  }
  result<std::vector<token_id>> decode(block_pool& pool,
                                       std::span<const decode_seq> batch) override {
    if (which_ == gated_call::decode) pass_gate();
    return sim_.decode(pool, batch);
  }
  result<void> check_kv(const block_pool& pool, std::span<const token_id> tokens,
                        std::span<const block_id> blocks, uint32_t begin,
                        uint32_t end) const override {
    return sim_.check_kv(pool, tokens, blocks, begin, end);
  }

 private:
  void pass_gate() {
    if (!gate_) return;
    auto g = std::move(gate_);
    g->entered_.set_value();
    g->opened_.wait_for(receive_timeout);
  }
  sim_engine sim_;
  std::shared_ptr<engine_gate> gate_;
  gated_call which_;
};

/// A prompt of `n` word tokens (above the sim's special ids).
inline std::vector<token_id> prompt_of(size_t n, token_id start = 300) {
  std::vector<token_id> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = start + static_cast<token_id>((i * 13) % 200);
  return v;
}

/// A request of a `prompt_len`-token prompt (prompt_of from `start`) for `max_tokens`
/// tokens, whose tokens and summary go to `client`.
inline generate_request make_request(request_id id, size_t prompt_len, uint32_t max_tokens,
                                     caf::actor client, token_id start = 300) {
  generate_request r;
  r.id = id;
  r.prompt = prompt_of(prompt_len, start);
  r.options.max_tokens = max_tokens;
  r.tr.id = id;
  r.client = std::move(client);
  return r;
}

/// The `n` tokens the sim generates after `prompt` (greedy): the first token, then each
/// next_token over the prompt and everything generated so far.
inline std::vector<token_id> sim_continuation(const sim_engine& eng, std::vector<token_id> context,
                                              size_t n, const sampling_params& s = {}) {
  std::vector<token_id> out;
  while (out.size() < n) {
    auto t = eng.next_token(context, s);
    out.push_back(t);
    context.push_back(t);
  }
  return out;
}

inline worker_info make_info(worker_id id, role kind, std::string name) {
  worker_info w;
  w.id = id;
  w.kind = kind;
  w.name = std::move(name);
  w.node = "test";
  return w;
}

}  // namespace tokenmill::test

#pragma once
/// Token order, free of CAF (STYLE.md §2): the router receives a request's tokens from its
/// decode worker in batches, possibly out of order, twice, or from an attempt the request
/// has moved away from, and releases them to the client in order, each client index
/// exactly once (DESIGN.md §2). router_actor.cpp wires it.
#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "common/api_types.hpp"
#include "common/ids.hpp"

namespace tokenmill {

/// The decode step behind a token that waits for its turn, on the router's clock (ns).
/// All zero for the first token, which prefill makes.
struct pending_step {
  int64_t start_ns = 0, end_ns = 0;
  uint32_t batch = 0;           ///< sequences in the step
  uint32_t prefill_tokens = 0;  ///< prompt tokens piggy-backed on the step
};

/// A token released to the client.
struct released_token {
  uint32_t index = 0;  ///< client index
  token_id token = 0;
  pending_step step;
  token_logprobs logprobs;  ///< as the worker sent them (empty when not asked for)
};

/// One request's token stream as the client sees it, across attempts. An attempt counts
/// its tokens from 0; its index 0 is client index offset().
class token_order {
 public:
  /// Token `index` of the current attempt arrived. False when it is dropped: its client
  /// index was already released (a token delivered twice, or one of an earlier attempt).
  /// A token already waiting for its turn keeps its first value; `step`, when given,
  /// replaces the step recorded for it. `logprobs` travel with the token.
  bool accept(uint32_t index, token_id token, std::optional<pending_step> step = std::nullopt,
              token_logprobs logprobs = {});

  /// Takes every token that is next in line, in client order, and records it delivered.
  std::vector<released_token> take_ready();

  /// A new attempt starts, its index 0 at client index `offset`: tokens of the old one
  /// still waiting are dropped (the new attempt produces them again).
  void restart(uint32_t offset);

  /// Client index of the current attempt's index 0.
  uint32_t offset() const { return offset_; }
  /// The next client index to release; also the number released so far.
  uint32_t next_index() const { return next_index_; }
  /// Every token released to the client, in order (a moved request resends them).
  const std::vector<token_id>& delivered() const { return delivered_; }

 private:
  struct waiting {
    token_id token = 0;
    pending_step step;
    token_logprobs logprobs;
  };
  uint32_t offset_ = 0;
  uint32_t next_index_ = 0;
  std::map<uint32_t, waiting> pending_;  ///< by client index: arrived ahead of their turn
  std::vector<token_id> delivered_;
};

}  // namespace tokenmill

#pragma once
/// The stored responses of the `/v1/responses` API (`store`, `previous_response_id`,
/// GET and DELETE /v1/responses/{id}), in memory and bounded three ways: a number of
/// entries, a total of bytes and an age. Past either size bound the least recently used
/// entries go; past the age (from creation, as OpenAI counts it) an entry is gone even if
/// used a moment ago. CAF- and Asio-free: the HTTP server owns one per port and calls it
/// from its one Asio thread, so it has no lock; the clock is a parameter so that tests
/// drive time.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "frontend/openai.hpp"

namespace tokenmill {

class response_store {
 public:
  using clock = std::chrono::steady_clock;

  struct limits {
    size_t max_entries = 1024;       ///< responses kept at most
    size_t max_bytes = 64u << 20;    ///< bytes kept at most (entry_bytes summed)
    std::chrono::seconds ttl{3600};  ///< a response is forgotten this long after it was stored
  };

  /// One stored response.
  struct entry {
    /// The response object as GET /v1/responses/{id} returns it (one line of JSON).
    std::string body;
    /// The whole conversation up to and including this response's output, without
    /// `instructions` (OpenAI does not carry those over to a follow-up): the previous
    /// response's conversation, this request's input items, the assistant's output.
    std::vector<openai::chat_message> conversation;
    /// How many of `conversation`'s first messages came from the previous response; the
    /// rest are this request's input and then the output (GET
    /// /v1/responses/{id}/input_items lists that input).
    size_t inherited = 0;
  };

  /// The default limits (1024 entries, 64 MiB, 1 h).
  response_store();
  explicit response_store(limits l);

  /// Bytes `id` and `e` count for: the body, every message's role and content, and a
  /// fixed overhead per message and per entry (bookkeeping, so that many tiny entries are
  /// bounded too).
  static size_t entry_bytes(std::string_view id, const entry& e);

  /// Stores `e` as `id` (replacing an entry of that id), then evicts expired and least
  /// recently used entries until the limits hold. Returns false, storing nothing, when
  /// the entry alone is larger than max_bytes.
  bool put(std::string id, entry e, clock::time_point now);

  /// The entry `id`, or null when it was never stored, was deleted, evicted or is older
  /// than the TTL at `now`. A hit makes the entry the most recently used.
  std::shared_ptr<const entry> get(std::string_view id, clock::time_point now);

  /// Deletes `id`; false when there was no live entry of that id.
  bool erase(std::string_view id, clock::time_point now);

  size_t size() const { return lru_.size(); }
  size_t bytes() const { return bytes_; }
  const limits& bounds() const { return limits_; }

 private:
  struct node {
    std::string id;
    std::shared_ptr<const entry> value;
    clock::time_point stored;
    size_t bytes = 0;
    uint64_t seq = 0;  ///< key in by_age_
  };
  using lru_list = std::list<node>;  ///< most recently used first

  void drop(lru_list::iterator it);
  void expire(clock::time_point now);

  limits limits_;
  lru_list lru_;
  std::unordered_map<std::string_view, lru_list::iterator> index_;  ///< views into node::id
  /// Insertion order (the same as age order: the TTL is one for all): the oldest first.
  std::map<uint64_t, lru_list::iterator> by_age_;
  uint64_t next_seq_ = 0;
  size_t bytes_ = 0;
};

}  // namespace tokenmill

#include "actors/router/token_order.hpp"

#include "actors/router/migration.hpp"

namespace tokenmill {

bool token_order::accept(uint32_t index, token_id token, std::optional<pending_step> step,
                         token_logprobs logprobs) {
  auto i = client_index(offset_, index, next_index_);
  if (!i) return false;
  auto it = pending_.try_emplace(*i, waiting{token, {}, std::move(logprobs)}).first;
  if (step) it->second.step = *step;
  return true;
}

std::vector<released_token> token_order::take_ready() {
  std::vector<released_token> out;
  for (auto it = pending_.begin(); it != pending_.end() && it->first == next_index_;
       it = pending_.erase(it)) {
    out.push_back({it->first, it->second.token, it->second.step, std::move(it->second.logprobs)});
    delivered_.push_back(it->second.token);
    ++next_index_;
  }
  return out;
}

void token_order::restart(uint32_t offset) {
  pending_.clear();
  offset_ = offset;
}

}  // namespace tokenmill

#include "actors/decode/decode_policy.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace tokenmill {

finish_reason stop_reason(const request_options& opts, uint32_t generated, token_id tok,
                          token_id eos) {
  if (!opts.ignore_eos && tok == eos) return finish_reason::eos;
  if (std::find(opts.stop_ids.begin(), opts.stop_ids.end(), tok) != opts.stop_ids.end())
    return finish_reason::stop;
  if (generated >= opts.max_tokens) return finish_reason::length;
  return finish_reason::none;
}

std::optional<error_info> check_capacity(uint32_t need_blocks, uint32_t prompt_tokens,
                                         uint32_t max_tokens, uint32_t pool_blocks) {
  if (need_blocks <= pool_blocks) return std::nullopt;
  return error_info{errc::out_of_blocks,
                    fmt::format("request needs {} KV blocks (prompt {} + max_tokens {} tokens); "
                                "the decode pool has {}",
                                need_blocks, prompt_tokens, max_tokens, pool_blocks)};
}

std::optional<error_info> check_kv_transfer(std::span<const block_id> transfer_blocks,
                                            std::span<const block_id> dst_blocks,
                                            size_t checksums) {
  for (auto b : dst_blocks)
    if (std::find(transfer_blocks.begin(), transfer_blocks.end(), b) == transfer_blocks.end())
      return error_info{
          errc::kv_corrupt,
          fmt::format("KV transfer names block {}, which is not reserved for the prompt", b)};
  if (checksums != dst_blocks.size())
    return error_info{errc::kv_corrupt,
                      fmt::format("KV transfer carries {} checksums for {} blocks", checksums,
                                  dst_blocks.size())};
  return std::nullopt;
}

std::optional<error_info> check_block_checksum(block_id block, uint64_t actual, uint64_t expected) {
  if (actual == expected) return std::nullopt;
  return error_info{errc::kv_corrupt,
                    fmt::format("KV block {} failed its checksum after transfer ({:016x} != "
                                "{:016x})",
                                block, actual, expected)};
}

std::optional<error_info> check_kv_ready(size_t received, uint32_t reported, uint32_t expected) {
  if (received == expected && reported == expected) return std::nullopt;
  return error_info{errc::kv_corrupt,
                    fmt::format("prefill reported {} blocks; {} of {} prompt blocks arrived",
                                reported, received, expected)};
}

bool hold_until_drained(bool waiting_for_kv, bool one_sided_transport) {
  return waiting_for_kv && one_sided_transport;
}

drain_action on_drain(held_sequence s, bool live_migration) {
  switch (s) {
    case held_sequence::unreserved:
    case held_sequence::awaiting_kv:
      return drain_action::hand_back;
    case held_sequence::prefilling:
      return drain_action::finish_in_place;
    case held_sequence::decoding:
      return live_migration ? drain_action::migrate : drain_action::finish_in_place;
  }
  return drain_action::finish_in_place;
}

std::string_view first_token_release_name(first_token_release r) {
  return r == first_token_release::decode ? "decode" : "prefill";
}

result<first_token_release> parse_first_token_release(std::string_view name) {
  if (name == "prefill") return first_token_release::prefill;
  if (name == "decode") return first_token_release::decode;
  return error_info{
      errc::invalid_request,
      fmt::format("first-token release: unknown value '{}' (prefill or decode)", name)};
}

bool hold_first_token(first_token_release r, bool remote_prefill) {
  return r == first_token_release::decode && remote_prefill;
}

bool release_held_token(held_token_moment m, finish_reason reason, bool handed_back) {
  if (m != held_token_moment::ends) return true;
  if (handed_back) return false;
  return reason == finish_reason::stop || reason == finish_reason::eos ||
         reason == finish_reason::length;
}

}  // namespace tokenmill

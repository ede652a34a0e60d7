#include "cluster/basp_frame.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace tokenmill {
namespace {

uint64_t read_be(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i)
    v = (v << 8) | p[i];
  return v;
}

void write_be(std::vector<uint8_t>& out, uint64_t v, size_t n) {
  for (size_t i = n; i-- > 0;)
    out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

}  // namespace

basp_header parse_basp_header(std::span<const uint8_t, basp_header_size> b) {
  basp_header h;
  h.operation = b[0];
  h.padding1 = b[1];
  h.padding2 = b[2];
  h.flags = b[3];
  h.payload_len = static_cast<uint32_t>(read_be(&b[4], 4));
  h.operation_data = read_be(&b[8], 8);
  h.source_actor = read_be(&b[16], 8);
  h.dest_actor = read_be(&b[24], 8);
  return h;
}

std::vector<uint8_t> serialize_basp_header(const basp_header& h) {
  std::vector<uint8_t> out{h.operation, h.padding1, h.padding2, h.flags};
  write_be(out, h.payload_len, 4);
  write_be(out, h.operation_data, 8);
  write_be(out, h.source_actor, 8);
  write_be(out, h.dest_actor, 8);
  return out;
}

std::string basp_inbound_check::check(const basp_header& h) const {
  if (h.operation > static_cast<uint8_t>(basp_op::heartbeat))
    return fmt::format("unknown BASP operation {}", h.operation);
  if (h.padding1 != 0 || h.padding2 != 0) return "non-zero padding in a BASP header";
  // CAF defines two flags (named receiver, select connection).
  if ((h.flags & ~uint8_t{0x03}) != 0) return fmt::format("unknown BASP flags {:#x}", h.flags);
  auto op = static_cast<basp_op>(h.operation);
  if (!handshaken_) {
    if (op != basp_op::client_handshake)
      return fmt::format("expected a client handshake first, got operation {}", h.operation);
  }
  switch (op) {
    case basp_op::server_handshake:
      return "a connecting peer sent a server handshake";
    case basp_op::client_handshake:
      // Not refused when repeated: CAF may send more than one on a connection (and drops
      // repeats itself). Each distinct payload is recorded with this link's certificate.
      if (h.payload_len == 0 || h.payload_len > limits_.max_handshake_payload)
        return fmt::format("client handshake of {} bytes (expected 1 to {})", h.payload_len,
                           limits_.max_handshake_payload);
      return "";
    case basp_op::heartbeat:
      if (h.payload_len != 0) return fmt::format("heartbeat with a {}-byte payload", h.payload_len);
      return "";
    case basp_op::direct_message:
    case basp_op::routed_message:
    case basp_op::monitor_message:
    case basp_op::down_message:
      if (h.payload_len == 0) return fmt::format("operation {} without payload", h.operation);
      if (h.payload_len > limits_.max_payload)
        return fmt::format("frame of {} bytes (at most {})", h.payload_len, limits_.max_payload);
      return "";
  }
  return "unreachable";
}

std::string basp_inbound_check::feed(std::span<const uint8_t> bytes, std::vector<uint8_t>& out) {
  if (!rejected_.empty()) return rejected_;
  pending_.insert(pending_.end(), bytes.begin(), bytes.end());
  size_t at = 0;
  while (pending_.size() - at >= basp_header_size) {
    auto h = parse_basp_header(
        std::span<const uint8_t, basp_header_size>(pending_.data() + at, basp_header_size));
    if (auto why = check(h); !why.empty()) {
      rejected_ = std::move(why);
      pending_.clear();
      return rejected_;
    }
    size_t frame = basp_header_size + h.payload_len;
    if (pending_.size() - at < frame) break;  // wait for the rest of the payload
    out.insert(out.end(), pending_.begin() + static_cast<std::ptrdiff_t>(at),
               pending_.begin() + static_cast<std::ptrdiff_t>(at + frame));
    if (static_cast<basp_op>(h.operation) == basp_op::client_handshake) {
      handshaken_ = true;
      std::vector<uint8_t> payload(
          pending_.begin() + static_cast<std::ptrdiff_t>(at + basp_header_size),
          pending_.begin() + static_cast<std::ptrdiff_t>(at + frame));
      if (std::find(handshake_payloads_.begin(), handshake_payloads_.end(), payload) ==
          handshake_payloads_.end()) {
        // One process is one node: a connection naming many is not a CAF peer.
        if (handshake_payloads_.size() >= limits_.max_handshake_ids) {
          rejected_ =
              fmt::format("client handshakes naming more than {} node ids on one connection",
                          limits_.max_handshake_ids);
          pending_.clear();
          out.resize(out.size() - frame);
          return rejected_;
        }
        handshake_payloads_.push_back(std::move(payload));
      }
    }
    at += frame;
  }
  pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(at));
  return "";
}

}  // namespace tokenmill

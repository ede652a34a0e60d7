#pragma once
/// What the control gate (cluster/control_gate.hpp) lets through to CAF's middleman: a
/// check of the BASP frames a connecting peer sends, before CAF sees a byte of them.
///
/// CAF 0.17.6 trusts a frame header's payload length and sizes (and zero-fills) its
/// receive buffer to it as soon as the header arrives; it also accepts actor messages on
/// a connection that never sent a handshake. Twenty connections of random bytes to a
/// node's control port therefore took the node down (issue 14). This unit decides, frame
/// by frame, whether the bytes a peer sent can be BASP from a tokenmill node; a frame is
/// forwarded only once all of it has arrived, so what CAF allocates is bounded by what a
/// peer actually sent. No CAF include: the wire format is written out below and tested.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tokenmill {

/// A BASP header as CAF 0.17.6 writes it: 32 bytes, integers in network byte order.
///   [0] operation  [1..2] padding (0)  [3] flags  [4..7] payload length
///   [8..15] operation data  [16..23] source actor  [24..31] destination actor
constexpr size_t basp_header_size = 32;

/// BASP operations (caf::io::basp::message_type).
enum class basp_op : uint8_t {
  server_handshake = 0,
  client_handshake = 1,
  direct_message = 2,
  routed_message = 3,
  monitor_message = 4,
  down_message = 5,
  heartbeat = 6,
};

struct basp_header {
  uint8_t operation = 0;
  uint8_t padding1 = 0, padding2 = 0;
  uint8_t flags = 0;
  uint32_t payload_len = 0;
  uint64_t operation_data = 0;
  uint64_t source_actor = 0;
  uint64_t dest_actor = 0;
};

/// Reads a header from its first basp_header_size bytes.
basp_header parse_basp_header(std::span<const uint8_t, basp_header_size> bytes);
/// The bytes of `h` as CAF writes them (tests build frames with it).
std::vector<uint8_t> serialize_basp_header(const basp_header& h);

struct basp_limits {
  /// A client handshake carries the peer's node id and nothing else: tens of bytes.
  uint32_t max_handshake_payload = 4096;
  /// Distinct client handshake payloads (node ids) one connection may carry. CAF repeats its
  /// own; a connection that names more node ids than this is refused.
  uint32_t max_handshake_ids = 4;
  /// Any other frame: the largest actor message a node sends (KV blocks inside messages
  /// with the inline transport are the big ones).
  uint32_t max_payload = 512u << 20;
};

/// The inbound half of one connection to a node's control port: bytes from the peer go
/// in, whole frames CAF may see come out, or a rejection that says what was wrong.
class basp_inbound_check {
 public:
  explicit basp_inbound_check(basp_limits limits = {}) : limits_(limits) {}

  /// Appends bytes from the peer and moves every complete, valid frame into `out`.
  /// Returns "" while the stream is acceptable, else why it is not (then the connection
  /// must be closed and nothing more forwarded).
  std::string feed(std::span<const uint8_t> bytes, std::vector<uint8_t>& out);

  /// True once the peer's client handshake went through.
  bool handshaken() const { return handshaken_; }
  /// The distinct payloads of the peer's client handshakes, in arrival order (CAF 0.17.6:
  /// the peer's node id, as CAF serializes it; one, however often CAF repeats it); empty
  /// before the first. Each is bound to this connection's certificate
  /// (node_certificates.hpp).
  const std::vector<std::vector<uint8_t>>& handshake_payloads() const {
    return handshake_payloads_;
  }
  /// Bytes held back: a frame not yet complete.
  size_t buffered() const { return pending_.size(); }

 private:
  /// Checks a header; "" when acceptable.
  std::string check(const basp_header& h) const;

  basp_limits limits_;
  std::vector<uint8_t> pending_;
  bool handshaken_ = false;
  std::vector<std::vector<uint8_t>> handshake_payloads_;
  std::string rejected_;
};

}  // namespace tokenmill

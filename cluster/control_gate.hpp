#pragma once
/// The node's control port: a TCP relay in front of CAF's middleman, which listens on
/// loopback only. Each connection a peer opens is relayed to the middleman once its bytes
/// pass basp_inbound_check (cluster/basp_frame.hpp): a client handshake first, frames
/// checked and forwarded whole. Bytes that cannot be BASP from a tokenmill node cost only
/// their own connection; before, twenty connections of random bytes took the node (and,
/// at the supervisor's node, the cluster) down. One thread, Boost.Asio.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "cluster/basp_frame.hpp"
#include "common/result.hpp"

namespace tokenmill {

struct control_gate_config {
  std::string host;            ///< the address to listen on (the node's address)
  uint16_t port = 0;           ///< 0: any free port
  uint16_t upstream_port = 0;  ///< the middleman's loopback port
  basp_limits limits;          ///< what a frame may be
  std::chrono::milliseconds handshake_timeout{5000};  ///< from accept to a client handshake
  uint32_t max_unauthenticated = 64;  ///< connections without a handshake yet; more are refused
};

struct control_gate_stats {
  uint64_t accepted = 0;   ///< connections accepted
  uint64_t rejected = 0;   ///< closed for bytes that are not acceptable BASP
  uint64_t timed_out = 0;  ///< closed for sending no handshake in time
  uint64_t refused = 0;    ///< closed at once: too many connections without a handshake
};

class control_gate {
 public:
  explicit control_gate(control_gate_config cfg);
  ~control_gate();
  control_gate(const control_gate&) = delete;
  control_gate& operator=(const control_gate&) = delete;

  /// Binds and starts relaying; returns the bound port.
  result<uint16_t> start();
  void stop();
  control_gate_stats stats() const;

 private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace tokenmill

#pragma once
/// A node's own HTTP endpoint when it is not the frontend's node: GET /metrics (Prometheus
/// text from a collector the node supplies) and GET /health, nothing else. One thread,
/// one request per connection; scrapes are rare and small.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/result.hpp"

namespace tokenmill {

class metrics_server {
 public:
  /// `collect` returns the exposition text; it runs on the server's thread per scrape.
  metrics_server(std::string host, uint16_t port, std::function<std::string()> collect);
  ~metrics_server();
  metrics_server(const metrics_server&) = delete;
  metrics_server& operator=(const metrics_server&) = delete;

  /// Binds and starts serving; returns the bound port (0 asks for any free one).
  result<uint16_t> start();
  void stop();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace tokenmill

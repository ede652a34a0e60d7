#pragma once
/// The composition root of `tokenmill node` (DESIGN.md §1): one node of a manifest in one
/// process. It publishes one agent actor on the node's control port (other handles travel
/// inside messages; see NOTES.md on CAF's TLS bug), joins the supervisor — refused when it
/// runs another manifest or model — and spawns the actors the manifest assigns to it, plus
/// the RPC frontend when the frontend lives here.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "cluster/manifest.hpp"
#include "common/result.hpp"

namespace tokenmill {

struct node_options {
  double join_timeout_s = 30;  ///< how long to keep trying to reach the supervisor's node
  /// Polled while waiting for the supervisor's node: true gives up at once (a stop signal).
  std::function<bool()> cancelled;
};

class cluster_node {
 public:
  static result<std::unique_ptr<cluster_node>> start(const manifest& m, const std::string& name,
                                                     node_options opts = {});
  ~cluster_node();

  /// One line: the node, its actors and endpoints.
  const std::string& summary() const;
  /// True once the supervisor this node joined went down (the node is then useless).
  bool supervisor_lost() const;
  /// SIGHUP: reads the frontend's API key file again (frontend.api_key_file). Returns what
  /// happened, for the log: the new count, or why the old keys stay (an error).
  result<std::string> reload_api_keys();
  void stop();

  struct impl;

 private:
  explicit cluster_node(std::unique_ptr<impl> i);
  std::unique_ptr<impl> impl_;
};

}  // namespace tokenmill

// `tokenmill drain`: empties a node's prefill and decode workers for maintenance without
// failing a request. The node's gateway passes the order to the supervisor, which marks
// the workers draining (routers send them nothing new) and tells each to drain; every
// worker finishes or hands off what it holds and reports. Prints what each one did.
// `--resume` ends the maintenance: the node's drained workers register again under their
// role and take work.
#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/client_options.hpp"
#include "apps/commands.hpp"
#include "frontend/client.hpp"

namespace tokenmill::app {
namespace {

int fail(const error_info& e) {
  std::fprintf(stderr, "tokenmill drain: %s: %s\n", std::string(to_string(e.code)).c_str(),
               e.message.c_str());
  return 1;
}

}  // namespace

command add_drain(CLI::App& app) {
  struct opts {
    std::string connect = "127.0.0.1:7700";
    std::string node;
    double timeout_s = 600;
    bool json = false;
    bool resume = false;
    client_options security;
  };
  auto o = std::make_shared<opts>();
  app.add_option("--connect", o->connect, "Gateway address HOST:PORT")->capture_default_str();
  add_client_options(app, o->security);
  app.add_option("node", o->node, "The node to drain (its name in the manifest)")->required();
  app.add_option("--timeout", o->timeout_s, "Longest wait for the workers to empty (s)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag("--json", o->json, "Print one JSON object");
  app.add_flag("--resume", o->resume,
               "Bring the node's drained workers back into service instead of draining");
  return [o]() -> int {
    auto ep = parse_endpoint(o->connect);
    if (!ep) return fail(ep.error());
    resolve_client_options(o->security);
    auto c = client::connect(ep->first, ep->second, 10, o->security);
    if (!c) return fail(c.error());
    // Names and a check of the node against the cluster as it is now.
    auto st = (*c)->status(10);
    if (!st) return fail(st.error());
    std::set<std::string> nodes;
    std::map<worker_id, std::string> names;
    size_t workers_there = 0;
    for (const auto& n : st->nodes)
      nodes.insert(n.name);
    for (const auto& w : st->workers) {
      nodes.insert(w.node);
      names[w.id] = w.name;
      workers_there += w.node == o->node && (w.kind == role::prefill || w.kind == role::decode);
    }
    if (!nodes.count(o->node))
      return fail(
          {errc::invalid_request, fmt::format("no node named '{}' in cluster {} (nodes: {})",
                                              o->node, st->cluster, fmt::join(nodes, ", "))});
    if (workers_there == 0) {
      std::printf("node %s runs no prefill or decode worker: nothing to %s\n", o->node.c_str(),
                  o->resume ? "resume" : "drain");
      return 0;
    }
    auto r = (*c)->drain(o->node, o->timeout_s, o->resume);
    if (!r) return fail(r.error());
    if (r->error) return fail(r->error);
    int64_t longest = 0;
    uint32_t finished = 0, migrated = 0;
    bool failed = false;
    for (const auto& w : r->workers) {
      longest = std::max(longest, w.total_ns);
      finished += w.finished;
      migrated += w.migrated;
      failed = failed || static_cast<bool>(w.error);
    }
    if (o->json) {
      nlohmann::ordered_json j;
      j["node"] = r->node;
      j["action"] = o->resume ? "resume" : "drain";
      j["seconds"] = longest / 1e9;
      j["finished"] = finished;
      j["migrated"] = migrated;
      auto ws = nlohmann::ordered_json::array();
      for (const auto& w : r->workers)
        ws.push_back({{"id", w.id},
                      {"name", names.count(w.id) ? names[w.id] : ""},
                      {"role", std::string(to_string(w.from))},
                      {"drain_ms", w.drain_ns / 1e6},
                      {"total_ms", w.total_ns / 1e6},
                      {"finished", w.finished},
                      {"migrated", w.migrated},
                      {"error", w.error ? w.error.message : ""}});
      j["workers"] = ws;
      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else if (o->resume) {
      std::printf("node %s resumed: %zu worker%s back in service in %.3f s\n", r->node.c_str(),
                  r->workers.size(), r->workers.size() == 1 ? "" : "s", longest / 1e9);
      for (const auto& w : r->workers)
        std::printf("%-4u %-16s %-8s %s\n", w.id, names.count(w.id) ? names[w.id].c_str() : "?",
                    std::string(to_string(w.to)).c_str(), w.error ? w.error.message.c_str() : "");
    } else {
      std::printf(
          "node %s drained: %zu worker%s in %.3f s; %u sequences or jobs finished, %u "
          "migrated live\n",
          r->node.c_str(), r->workers.size(), r->workers.size() == 1 ? "" : "s", longest / 1e9,
          finished, migrated);
      std::printf("%-4s %-16s %-8s %10s %10s %9s %9s  %s\n", "id", "name", "role", "drain ms",
                  "total ms", "finished", "migrated", "error");
      for (const auto& w : r->workers)
        std::printf("%-4u %-16s %-8s %10.1f %10.1f %9u %9u  %s\n", w.id,
                    names.count(w.id) ? names[w.id].c_str() : "?",
                    std::string(to_string(w.from)).c_str(), w.drain_ns / 1e6, w.total_ns / 1e6,
                    w.finished, w.migrated, w.error ? w.error.message.c_str() : "");
    }
    return failed ? 1 : 0;
  };
}

}  // namespace tokenmill::app

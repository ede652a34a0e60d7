// Over 600 lines: one class reads one document; cross-section checks share its site records.
#include "cluster/detail/manifest_parser.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "cluster/detail/address.hpp"
#include "cluster/serving_defaults.hpp"

namespace tokenmill::detail {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view top_keys[] = {"cluster",  "model",   "defaults", "kv_layout",
                                         "frontend", "router",  "failure",  "ucx",
                                         "restart",  "planner", "security", "nodes"};
constexpr std::string_view model_keys[] = {"path", "sim"};
constexpr std::string_view sim_keys[] = {"vocab",
                                         "max_context",
                                         "prefill_us_per_token",
                                         "prefill_base_us",
                                         "decode_step_ms",
                                         "decode_per_seq_us",
                                         "decode_per_ctx_ns",
                                         "slowdown",
                                         "seed"};
constexpr std::string_view defaults_keys[] = {"engine", "block_tokens", "kv_transport", "kv_memory",
                                              "weights_hugepages"};
constexpr std::string_view layout_keys[] = {"layers", "kv_heads", "head_dim", "dtype_bytes"};
constexpr std::string_view bool_words[] = {"true", "false"};
constexpr std::string_view frontend_keys[] = {"node",      "host",         "rpc_port",
                                              "http_port", "api_key_file", "protect_metrics",
                                              "tls_cert",  "tls_key"};
constexpr std::string_view router_keys[] = {"local_prefill_threshold",
                                            "max_inflight",
                                            "max_queued_prompt_tokens",
                                            "migration_limit",
                                            "request_timeout_s",
                                            "stall_timeout_s",
                                            "prefill_weight",
                                            "queue_weight",
                                            "transfer_weight",
                                            "load_weight",
                                            "prefill_tokens_per_s",
                                            "kv_transfer_gbps",
                                            "load_ms_per_request",
                                            "profile",
                                            "max_queue_ms",
                                            "ttft_slo_ms",
                                            "admission_window_ms",
                                            "admission_min_waiting",
                                            "kv_host_onboard_gbps",
                                            "kv_disk_onboard_gbps",
                                            "fetch",
                                            "fetch_overhead_ms"};
constexpr std::string_view failure_keys[] = {"heartbeat_ms", "connection_timeout_ms"};
constexpr std::string_view ucx_keys[] = {"op_timeout_ms", "stall_timeout_ms", "window_mib"};
constexpr std::string_view restart_keys[] = {"max", "backoff_ms"};
constexpr std::string_view planner_keys[] = {"ttft_ms",
                                             "itl_ms",
                                             "percentile",
                                             "interval_ms",
                                             "min_prefill",
                                             "min_decode",
                                             "cooldown_ms",
                                             "intervals",
                                             "high",
                                             "band",
                                             "prefill_jobs_per_worker",
                                             "change_timeout_ms",
                                             "rebalance_moves"};
constexpr std::string_view security_keys[] = {"tls", "secret_file", "insecure"};
constexpr std::string_view tls_keys[] = {"ca", "cert", "key"};
constexpr std::string_view node_keys[] = {"name", "address", "ssh", "port", "http_port", "actors"};
constexpr std::string_view prefill_keys[] = {"engine",      "threads",         "device",
                                             "kv_blocks",   "chunk",           "max_seqs",
                                             "slowdown",    "kv_host_blocks",  "kv_disk_blocks",
                                             "kv_disk_dir", "recompute_ratio", "blend_policy"};
constexpr std::string_view decode_keys[] = {
    "engine",      "threads",         "device",
    "kv_blocks",   "max_batch",       "local_prefill_budget",
    "slowdown",    "kv_host_blocks",  "kv_disk_blocks",
    "kv_disk_dir", "recompute_ratio", "blend_policy",
    "first_token"};
constexpr std::string_view engines[] = {"sim", "cpu", "cuda"};
constexpr std::string_view blend_policies[] = {"deviation", "leading"};
constexpr std::string_view first_token_releases[] = {"prefill", "decode"};
constexpr std::string_view transports[] = {"inline", "ucx"};
constexpr std::string_view hugepage_modes[] = {"on", "off", "auto"};
constexpr std::string_view role_names[] = {"router", "supervisor", "kv_store", "prefill", "decode"};

constexpr uint16_t first_control_port = 7800;

bool is_name(std::string_view s, bool allow_dot) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [&](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' ||
           (allow_dot && c == '.');
  });
}

constexpr std::string_view port_text = "a port number from 1 to 65535";

/// Where things were, for checks that span several sections.
struct actor_site {
  position at;
  std::string path;
  bool engine_given = false;  ///< the actor sets its own engine, at engine_at
  position engine_at;
};

struct node_site {
  position at;
  position name_at;
  position port_at;
  position http_at;
  bool http_given = false;
  std::string path;
  bool address_ok = false;
  bool port_ok = false;
  std::vector<actor_site> actors;
  position address_at;
};

class parser {
 public:
  parser(problems& p, std::string base_dir, const manifest_options& opts)
      : p_(p), base_dir_(std::move(base_dir)), opts_(opts) {}

  void run(const YAML::Node& root) {
    map_reader r(p_, root, pos_of(root), "", top_keys);
    if (!r.valid()) return;
    if (auto* e = r.find("cluster")) {
      if (auto s = read_string(p_, *e, "cluster", "a cluster name ([A-Za-z0-9_.-]+)")) {
        if (is_name(*s, true))
          m_.cluster = *s;
        else
          p_.add(e->at(), "cluster", fmt::format("'{}' has characters outside [A-Za-z0-9_.-]", *s),
                 "a cluster name ([A-Za-z0-9_.-]+)");
      }
    } else {
      r.missing("cluster", "a cluster name ([A-Za-z0-9_.-]+)");
    }
    if (auto* e = r.find("model"))
      model(*e);
    else
      r.missing("model", "a map with exactly one of path (a model file) or sim (a sim model)");
    defaults(r.find("defaults"));
    if (auto* e = r.find("kv_layout")) layout(*e);
    m_.model.sim_cfg.layout.block_tokens = m_.defaults.block_tokens;
    if (auto* e = r.find("router")) router(*e);
    if (auto* e = r.find("failure")) failure(*e);
    if (auto* e = r.find("ucx")) ucx(*e);
    if (auto* e = r.find("restart")) restart(*e);
    if (auto* e = r.find("planner")) planner(*e);
    security(r.find("security"));
    if (auto* e = r.find("nodes")) {
      nodes(*e);
    } else {
      r.missing("nodes", "a list of nodes, each with name, address and actors");
      nodes_ok_ = false;
    }
    if (auto* e = r.find("frontend"))
      frontend(*e);
    else
      r.missing("frontend", "a map with node (the node that runs the router)");
    if (nodes_ok_) check_roles();
    if (m_.planner) planner_batch();
    engines_vs_model();
    hosts_vs_security();
    http_ports();
    endpoints();
  }

  manifest take() { return std::move(m_); }

 private:
  void model(const entry& e) {
    map_reader r(p_, e.value, e.at(), "model", model_keys);
    if (!r.valid()) return;
    auto* path = r.find("path");
    auto* sim = r.find("sim");
    if (path && sim) {
      p_.add(pos_of(sim->key), "model", "both path and sim are given",
             "exactly one of path (a model file) or sim (a sim model)");
      return;
    }
    if (!path && !sim) {
      p_.add(r.at(), "model", "neither path nor sim is given",
             "exactly one of path (a model file) or sim (a sim model)");
      return;
    }
    if (path) {
      model_file(*path);
      return;
    }
    m_.model.sim = true;
    map_reader s(p_, sim->value, sim->at(), "model.sim", sim_keys);
    auto& c = m_.model.sim_cfg;
    opt_uint(p_, s, "vocab", c.vocab_size, sim_engine::first_word_id + 1, u32_max);
    opt_uint(p_, s, "max_context", c.max_context, 1, u32_max);
    opt_time(p_, s, "prefill_us_per_token", c.prefill_ns_per_token, 1e3);
    opt_time(p_, s, "prefill_base_us", c.prefill_base_ns, 1e3);
    opt_time(p_, s, "decode_step_ms", c.decode_base_ns, 1e6);
    opt_time(p_, s, "decode_per_seq_us", c.decode_per_seq_ns, 1e3);
    opt_time(p_, s, "decode_per_ctx_ns", c.decode_per_ctx_token_ns, 1);
    opt_number(p_, s, "slowdown", c.slowdown, 0, true);
    opt_uint(p_, s, "seed", c.seed, 0, u64_max, "a whole number >= 0 (64 bits)");
  }

  void model_file(const entry& e) {
    auto s = read_string(p_, e, "model.path", "the path of a model file");
    if (!s) return;
    fs::path declared(*s);
    m_.model.declared_path = declared.lexically_normal().string();
    fs::path resolved =
        declared.is_absolute() || base_dir_.empty() ? declared : fs::path(base_dir_) / declared;
    m_.model.path = resolved.lexically_normal().string();
    auto expected = declared.is_absolute()
                        ? std::string("a readable model file")
                        : fmt::format(
                              "a readable model file (relative paths resolve against "
                              "the manifest's directory '{}')",
                              base_dir_.empty() ? "." : base_dir_);
    std::error_code ec;
    auto st = fs::status(resolved, ec);
    if (!fs::exists(st)) {
      p_.add(e.at(), "model.path", fmt::format("the model file '{}' does not exist", m_.model.path),
             expected);
    } else if (fs::is_directory(st) && !fs::exists(resolved / "config.json", ec)) {
      p_.add(e.at(), "model.path",
             fmt::format("'{}' is a directory without config.json (a Hugging Face model "
                         "directory holds config.json, *.safetensors and tokenizer.json)",
                         m_.model.path),
             expected);
    } else if (fs::is_directory(st)) {
      // A Hugging Face directory: the loader checks its files when the node starts.
    } else if (std::ifstream f(resolved, std::ios::binary); !f) {  // a GGUF file
      p_.add(e.at(), "model.path",
             fmt::format("the model file '{}' cannot be read ({})", m_.model.path,
                         std::strerror(errno)),
             expected);
    }
  }

  void defaults(const entry* e) {
    auto& d = m_.defaults;
    d.engine = m_.model.sim ? "sim" : "cpu";
    if (!e) return;
    map_reader r(p_, e->value, e->at(), "defaults", defaults_keys);
    if (auto* x = r.find("engine")) {
      if (auto s = read_choice(p_, *x, "defaults.engine", engines)) {
        d.engine = *s;
        defaults_engine_at_ = x->at();
        defaults_engine_given_ = true;
      }
    }
    opt_uint(p_, r, "block_tokens", d.block_tokens, 1, 65536);
    if (auto* x = r.find("kv_transport"))
      if (auto s = read_choice(p_, *x, "defaults.kv_transport", transports)) d.kv_transport = *s;
    if (auto* x = r.find("weights_hugepages"))
      if (auto s = read_choice(p_, *x, "defaults.weights_hugepages", hugepage_modes))
        d.weights_hugepages = *s;
    if (auto* x = r.find("kv_memory")) {
      if (auto s = read_string(p_, *x, "defaults.kv_memory", memory_size_expected)) {
        if (auto bytes = parse_memory_size(*s))
          d.kv_memory = *bytes;
        else
          p_.add(x->at(), "defaults.kv_memory", fmt::format("got '{}'", *s), memory_size_expected);
      }
    }
  }

  void layout(const entry& e) {
    map_reader r(p_, e.value, e.at(), "kv_layout", layout_keys);
    if (!r.valid()) return;
    if (!m_.model.sim && !m_.model.path.empty()) {
      p_.add(pos_of(e.key), "kv_layout", "given for a model file, which defines its own layout",
             "kv_layout only with model: {sim: ...}");
      return;
    }
    auto& l = m_.model.sim_cfg.layout;
    opt_uint(p_, r, "layers", l.layers, 1, 4096);
    opt_uint(p_, r, "kv_heads", l.kv_heads, 1, 4096);
    opt_uint(p_, r, "head_dim", l.head_dim, 1, 65536);
    opt_uint(p_, r, "dtype_bytes", l.dtype_bytes, 2, 4, "2 (f16/bf16) or 4 (f32)");
    if (l.dtype_bytes == 3) {
      p_.add(r.find("dtype_bytes")->at(), "kv_layout.dtype_bytes", "got 3",
             "2 (f16/bf16) or 4 (f32)");
      l.dtype_bytes = 2;
    }
  }

  void router(const entry& e) {
    map_reader r(p_, e.value, e.at(), "router", router_keys);
    auto& x = m_.router;
    opt_uint(p_, r, "local_prefill_threshold", x.local_prefill_threshold, 0, u32_max);
    opt_uint(p_, r, "max_inflight", x.max_inflight, 1, u32_max);
    opt_uint(p_, r, "max_queued_prompt_tokens", x.max_queued_prompt_tokens, 1, u64_max);
    opt_uint(p_, r, "migration_limit", x.migration_limit, 0, 100);
    opt_uint(p_, r, "request_timeout_s", x.request_timeout_s, 0, u32_max);
    opt_uint(p_, r, "stall_timeout_s", x.stall_timeout_s, 0, u32_max);
    opt_uint(p_, r, "max_queue_ms", x.max_queue_ms, 0, 3'600'000);
    opt_uint(p_, r, "ttft_slo_ms", x.ttft_slo_ms, 0, 3'600'000);
    opt_uint(p_, r, "admission_window_ms", x.admission_window_ms, 100, 3'600'000);
    opt_uint(p_, r, "admission_min_waiting", x.admission_min_waiting, 0, 1u << 20);
    opt_number(p_, r, "prefill_weight", x.prefill_weight, 0, false);
    opt_number(p_, r, "queue_weight", x.queue_weight, 0, false);
    opt_number(p_, r, "transfer_weight", x.transfer_weight, 0, false);
    opt_number(p_, r, "load_weight", x.load_weight, 0, false);
    opt_number(p_, r, "prefill_tokens_per_s", x.prefill_tokens_per_s, 0, true);
    opt_number(p_, r, "kv_transfer_gbps", x.kv_transfer_gbps, 0, true);
    opt_number(p_, r, "load_ms_per_request", x.load_ms_per_request, 0, false);
    opt_number(p_, r, "kv_host_onboard_gbps", x.kv_host_onboard_gbps, 0, true);
    opt_number(p_, r, "kv_disk_onboard_gbps", x.kv_disk_onboard_gbps, 0, true);
    opt_number(p_, r, "fetch_overhead_ms", x.fetch_overhead_ms, 0, false);
    if (auto* e = r.find("fetch"))
      if (auto s = read_choice(p_, *e, r.field("fetch"), bool_words)) x.fetch = *s == "true";
    if (auto* e = r.find("profile")) profile_file(*e);
  }

  /// `router.profile`: an engine profile (`tokenmill profile`), read and checked now so
  /// that a bad file is reported with the manifest's other problems.
  void profile_file(const entry& e) {
    auto s = read_string(p_, e, "router.profile", "the path of a `tokenmill profile` JSON file");
    if (!s) return;
    fs::path declared(*s);
    auto& x = m_.router;
    x.profile_declared = declared.lexically_normal().string();
    fs::path resolved =
        declared.is_absolute() || base_dir_.empty() ? declared : fs::path(base_dir_) / declared;
    x.profile = resolved.lexically_normal().string();
    const std::string expected =
        "a readable engine profile written by `tokenmill profile` (relative paths resolve "
        "against the manifest's directory)";
    std::ifstream f(resolved, std::ios::binary);
    std::error_code ec;
    if (!f || fs::is_directory(resolved, ec)) {
      p_.add(e.at(), "router.profile",
             fmt::format("the profile '{}' cannot be read ({})", x.profile,
                         f ? "a directory" : std::strerror(errno)),
             expected);
      return;
    }
    std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto prof = parse_profile(text, x.profile);
    if (!prof) {
      // One problem line per manifest problem: the profile's own lines joined.
      std::string what = prof.error().message;
      for (size_t i = what.find('\n'); i != std::string::npos; i = what.find('\n', i))
        what.replace(i, 1, "; ");
      p_.add(e.at(), "router.profile", what, expected);
      return;
    }
    x.profile_data = std::move(*prof);
  }

  void failure(const entry& e) {
    map_reader r(p_, e.value, e.at(), "failure", failure_keys);
    auto& f = m_.failure;
    opt_uint(p_, r, "heartbeat_ms", f.heartbeat_ms, 1, u32_max);
    opt_uint(p_, r, "connection_timeout_ms", f.connection_timeout_ms, 1, u32_max);
    if (f.connection_timeout_ms <= f.heartbeat_ms) {
      auto* t = r.find("connection_timeout_ms");
      p_.add(t ? t->at() : r.at(), "failure.connection_timeout_ms",
             fmt::format("{} ms is not longer than failure.heartbeat_ms ({} ms), so every peer "
                         "would time out between two heartbeats",
                         f.connection_timeout_ms, f.heartbeat_ms),
             "a timeout longer than the heartbeat period (a few heartbeats)");
    }
  }

  void ucx(const entry& e) {
    map_reader r(p_, e.value, e.at(), "ucx", ucx_keys);
    auto& u = m_.ucx;
    opt_uint(p_, r, "op_timeout_ms", u.op_timeout_ms, 10, 3'600'000);
    opt_uint(p_, r, "stall_timeout_ms", u.stall_timeout_ms, 10, 3'600'000);
    opt_uint(p_, r, "window_mib", u.window_mib, 1, 1 << 20);
    if (u.stall_timeout_ms >= u.op_timeout_ms) {
      auto* t = r.find("stall_timeout_ms");
      p_.add(t ? t->at() : r.at(), "ucx.stall_timeout_ms",
             fmt::format("{} ms is not shorter than ucx.op_timeout_ms ({} ms), so a stalled "
                         "write would fail before it is reported",
                         u.stall_timeout_ms, u.op_timeout_ms),
             "a stall timeout shorter than the op timeout");
    }
  }

  /// `restart: {max, backoff_ms}`. The first wait may be at most the cap the policy's
  /// doubling stops at (30 s).
  void restart(const entry& e) {
    map_reader r(p_, e.value, e.at(), "restart", restart_keys);
    auto& x = m_.restart;
    opt_uint(p_, r, "max", x.max, 0, 1000, "a whole number from 0 (never restart) to 1000");
    opt_uint(p_, r, "backoff_ms", x.backoff_ms, 1, restart_backoff_cap_ms);
  }

  /// `planner: {ttft_ms, itl_ms, ...}`: at least one objective; every other key has a
  /// default (planner_config).
  void planner(const entry& e) {
    map_reader r(p_, e.value, e.at(), "planner", planner_keys);
    if (!r.valid()) return;
    planner_config c;
    opt_uint(p_, r, "ttft_ms", c.ttft_ms, 1, 3'600'000);
    opt_uint(p_, r, "itl_ms", c.itl_ms, 1, 3'600'000);
    opt_uint(p_, r, "percentile", c.percentile, 1, 100);
    opt_uint(p_, r, "interval_ms", c.interval_ms, 10, 3'600'000);
    opt_uint(p_, r, "min_prefill", c.min_prefill, 0, 1024);
    opt_uint(p_, r, "min_decode", c.min_decode, 1, 1024);
    opt_uint(p_, r, "cooldown_ms", c.cooldown_ms, 0, 86'400'000);
    opt_uint(p_, r, "intervals", c.intervals, 1, 1000);
    opt_number(p_, r, "high", c.high, 0, true);
    opt_number(p_, r, "band", c.band, 1, false);
    opt_uint(p_, r, "prefill_jobs_per_worker", c.prefill_jobs_per_worker, 1, 65536);
    opt_uint(p_, r, "change_timeout_ms", c.change_timeout_ms, 100, 3'600'000);
    opt_uint(p_, r, "rebalance_moves", c.rebalance_moves, 0, 4096);
    if (!r.find("ttft_ms") && !r.find("itl_ms"))
      p_.add(r.at(), "planner", "neither ttft_ms nor itl_ms is given",
             "at least one objective: ttft_ms (TTFT at the percentile, ms) or itl_ms");
    m_.planner = c;
  }

  /// A path of the security section, resolved against the manifest's directory.
  std::string resolve(const std::string& declared) const {
    fs::path d(declared);
    return (d.is_absolute() || base_dir_.empty() ? d : fs::path(base_dir_) / d)
        .lexically_normal()
        .string();
  }

  /// `security: {tls: auto | {ca, cert, key}, secret_file, insecure}`.
  void security(const entry* e) {
    if (!e) return;
    map_reader r(p_, e->value, e->at(), "security", security_keys);
    if (!r.valid()) return;
    auto& sec = m_.security;
    constexpr std::string_view tls_text =
        "auto (certificates from tokenmill certs init in certs/ beside the manifest) or a map "
        "{ca, cert, key} of PEM files ({node} in cert and key stands for the node's name)";
    if (auto* x = r.find("tls")) {
      if (x->value.IsScalar() && x->value.Scalar() == "auto") {
        manifest_tls t;
        t.generated = true;
        sec.certs_dir = resolve("certs");
        t.ca = sec.certs_dir + "/ca.crt";
        t.cert = sec.certs_dir + "/{node}.crt";
        t.key = sec.certs_dir + "/{node}.key";
        sec.tls = t;
      } else if (x->value.IsMap()) {
        map_reader t(p_, x->value, x->at(), "security.tls", tls_keys);
        manifest_tls out;
        bool ok = true;
        for (auto [key, field] :
             {std::pair{"ca", &manifest_tls::ca}, std::pair{"cert", &manifest_tls::cert},
              std::pair{"key", &manifest_tls::key}}) {
          auto* f = t.find(key);
          if (!f) {
            t.missing(key, std::string_view(key) == "ca"
                               ? "the cluster CA's certificate (PEM file)"
                               : "a PEM file ({node} stands for the node's name)");
            ok = false;
            continue;
          }
          auto s = read_string(p_, *f, t.field(key), "the path of a PEM file");
          if (!s) {
            ok = false;
            continue;
          }
          out.*field = resolve(*s);
        }
        if (ok) sec.tls = out;
      } else {
        p_.add(x->at(), "security.tls", "got " + shown(x->value), tls_text);
      }
    }
    if (auto* x = r.find("secret_file"))
      if (auto s = read_string(p_, *x, "security.secret_file",
                               "the path of a file holding the cluster secret"))
        sec.secret_file = resolve(*s);
    if (auto* x = r.find("insecure")) {
      if (x->value.IsScalar() && (x->value.Scalar() == "true" || x->value.Scalar() == "false")) {
        sec.insecure = x->value.Scalar() == "true";
        if (sec.insecure && r.find("tls"))
          p_.add(x->at(), "security.insecure",
                 "insecure: true together with tls (the links are encrypted)",
                 "either tls or insecure: true, not both");
      } else {
        p_.add(x->at(), "security.insecure", "got " + shown(x->value),
               "true (plaintext between hosts, on purpose) or false");
      }
    }
  }

  /// Nodes on more than one host talk over networks: TLS, or `insecure: true` on purpose.
  void hosts_vs_security() {
    if (m_.security.tls || m_.security.insecure) return;
    for (size_t i = 0; i < m_.nodes.size() && i < sites_.size(); ++i) {
      auto& n = m_.nodes[i];
      if (!sites_[i].address_ok || (n.local && n.ssh.empty())) continue;
      p_.add(sites_[i].address_at, sites_[i].path + ".address",
             n.ssh.empty()
                 ? fmt::format("'{}' is not loopback, so the cluster spans hosts, and nodes "
                               "would join and talk in plaintext without authentication",
                               n.address)
                 : fmt::format("node '{}' is launched over ssh on another host, and nodes "
                               "would join and talk in plaintext without authentication",
                               n.name),
             "security: {tls: auto} (or tls: {ca, cert, key}; see tokenmill certs init) for a "
             "cluster across hosts, or security: {insecure: true} to run it in plaintext on "
             "purpose");
      return;
    }
  }

  /// The planner sizes decode batches by the decode workers' max_batch (the first one's).
  void planner_batch() {
    for (const auto& n : m_.nodes)
      for (const auto& a : n.actors)
        if (auto* d = a.decode()) {
          m_.planner->decode_max_batch = d->max_batch;
          return;
        }
  }

  void nodes(const entry& e) {
    nodes_at_ = pos_of(e.key);
    if (!e.value.IsSequence() || e.value.size() == 0) {
      p_.add(e.at(), "nodes",
             e.value.IsSequence() ? std::string("an empty list") : "got " + shown(e.value),
             "a non-empty list of nodes, each with name, address and actors");
      nodes_ok_ = false;
      return;
    }
    for (size_t i = 0; i < e.value.size(); ++i)
      node(e.value[i], i);
  }

  void node(const YAML::Node& n, size_t index) {
    auto path = fmt::format("nodes[{}]", index);
    node_site site{pos_of(n), pos_of(n), pos_of(n), pos_of(n), false,
                   path,      false,     false,     {},        pos_of(n)};
    map_reader r(p_, n, pos_of(n), path, node_keys);
    if (!r.valid()) {
      nodes_ok_ = false;
      return;
    }
    manifest_node out;
    constexpr std::string_view name_text = "a node name ([A-Za-z0-9_-]+)";
    if (auto* x = r.find("name")) {
      site.name_at = x->at();
      if (auto s = read_string(p_, *x, r.field("name"), name_text)) {
        if (is_name(*s, false))
          out.name = *s;
        else
          p_.add(x->at(), r.field("name"),
                 fmt::format("'{}' has characters outside [A-Za-z0-9_-]", *s), name_text);
      }
    } else {
      r.missing("name", name_text);
    }
    constexpr std::string_view address_text = "an IP address or a host name";
    if (auto* x = r.find("address")) {
      site.address_at = x->at();
      if (auto s = read_string(p_, *x, r.field("address"), address_text)) {
        if (is_address(*s)) {
          out.address = *s;
          out.local = is_local_address(*s);
          site.address_ok = true;
        } else {
          auto colon = s->rfind(':');
          bool has_port = colon != std::string::npos && is_address(s->substr(0, colon));
          p_.add(x->at(), r.field("address"),
                 has_port ? fmt::format("'{}' includes a port", *s)
                          : fmt::format("'{}' is not a valid IP address or host name", *s),
                 has_port ? fmt::format("{} alone; give the port as port: {}", address_text,
                                        s->substr(colon + 1))
                          : std::string(address_text));
        }
      }
    } else {
      r.missing("address", address_text);
    }
    if (auto* x = r.find("ssh")) {
      if (auto s = read_string(p_, *x, r.field("ssh"), "user@host or host")) {
        if (s->find_first_of(" \t\r\n") != std::string::npos)
          p_.add(x->at(), r.field("ssh"), fmt::format("'{}' contains white space", *s),
                 "user@host or host");
        else
          out.ssh = *s;
      }
    }
    out.port = static_cast<uint16_t>(std::min<size_t>(first_control_port + index, 65535));
    site.port_ok = true;
    if (auto* x = r.find("port")) {
      site.port_at = x->at();
      site.port_ok = false;
      if (auto v = read_uint(p_, *x, r.field("port"), 1, 65535, std::string(port_text))) {
        out.port = static_cast<uint16_t>(*v);
        site.port_ok = true;
      }
    }
    if (auto* x = r.find("http_port")) {
      site.http_at = x->at();
      if (auto v = read_uint(p_, *x, r.field("http_port"), 1, 65535, std::string(port_text))) {
        out.http_port = static_cast<uint16_t>(*v);
        site.http_given = true;
      }
    }
    if (auto* x = r.find("actors")) {
      actors(*x, r.field("actors"), out, site);
    } else {
      r.missing("actors", "a list of actors: router, supervisor, kv_store, prefill, decode");
      nodes_ok_ = false;
    }
    m_.nodes.push_back(std::move(out));
    sites_.push_back(std::move(site));
  }

  void actors(const entry& e, const std::string& path, manifest_node& node, node_site& site) {
    constexpr std::string_view expected =
        "a list of actors, each a role (router, supervisor, kv_store, prefill, decode) or a "
        "one-key map {role: {options}}";
    if (!e.value.IsSequence() || e.value.size() == 0) {
      p_.add(e.at(), path,
             e.value.IsSequence() || e.value.IsNull() ? std::string("the node runs no actors")
                                                      : "got " + shown(e.value),
             expected);
      nodes_ok_ = false;
      return;
    }
    for (size_t j = 0; j < e.value.size(); ++j) {
      auto a = e.value[j];
      actor_site as{pos_of(a), fmt::format("{}[{}]", path, j), false, {}};
      std::string role_name;
      YAML::Node options;
      position options_at = as.at;
      if (a.IsScalar()) {
        role_name = a.Scalar();
      } else if (a.IsMap() && a.size() == 1) {
        auto it = a.begin();
        if (!it->first.IsScalar()) {
          p_.add(as.at, as.path, fmt::format("a role that is {}", shown(it->first)), expected);
          nodes_ok_ = false;
          continue;
        }
        role_name = it->first.Scalar();
        options = it->second;
        options_at = entry{it->first, it->second}.at();
      } else {
        p_.add(as.at, as.path,
               a.IsMap() ? fmt::format("a map with {} keys", a.size())
                         : fmt::format("got {}", shown(a)),
               a.IsMap() ? std::string(expected) +
                               " (indent a worker's options under its role: "
                               "{prefill: {threads: 1}})"
                         : std::string(expected));
        nodes_ok_ = false;
        continue;
      }
      auto r = role_from_string(role_name);
      if (!r || *r == role::frontend) {
        p_.add(as.at, as.path,
               r ? std::string("'frontend' is not an actor role; the frontend is configured "
                               "in the top-level frontend section")
                 : fmt::format("unknown actor role '{}'{}", role_name,
                               suggestion(role_name, role_names)),
               fmt::format("one of {}", join(role_names)));
        nodes_ok_ = false;
        continue;
      }
      manifest_actor out;
      out.kind = *r;
      out.name = fmt::format("{}.{}{}", node.name, role_name, node.count(*r));
      auto opath = fmt::format("{}.{}", as.path, role_name);
      if (*r == role::prefill) {
        prefill_options o;
        o.engine = m_.defaults.engine;
        map_reader m(p_, options, options_at, opath, prefill_keys);
        worker(m, o, as);
        opt_uint(p_, m, "kv_blocks", o.kv_blocks, 1, u32_max);
        o.kv_blocks_given = m.find("kv_blocks") != nullptr;
        opt_uint(p_, m, "chunk", o.chunk, 1, u32_max);
        opt_uint(p_, m, "max_seqs", o.max_seqs, 1, u32_max);
        out.options = o;
      } else if (*r == role::decode) {
        decode_options o;
        o.engine = m_.defaults.engine;
        map_reader m(p_, options, options_at, opath, decode_keys);
        worker(m, o, as);
        opt_uint(p_, m, "kv_blocks", o.kv_blocks, 1, u32_max);
        o.kv_blocks_given = m.find("kv_blocks") != nullptr;
        opt_uint(p_, m, "max_batch", o.max_batch, 1, u32_max);
        opt_uint(p_, m, "local_prefill_budget", o.local_prefill_budget, 1, u32_max);
        if (auto* x = m.find("first_token"))
          if (auto s = read_choice(p_, *x, m.field("first_token"), first_token_releases))
            o.first_token = *s;
        out.options = o;
      } else if (!options.IsNull() && !(options.IsMap() && options.size() == 0)) {
        p_.add(options_at, opath,
               fmt::format("{} takes no options, got {}", role_name, shown(options)),
               fmt::format("the bare role name '{}'", role_name));
      }
      node.actors.push_back(std::move(out));
      site.actors.push_back(std::move(as));
    }
  }

  void worker(const map_reader& m, worker_options& o, actor_site& as) {
    if (auto* x = m.find("engine")) {
      if (auto s = read_choice(p_, *x, m.field("engine"), engines)) {
        o.engine = *s;
        as.engine_given = true;
        as.engine_at = x->at();
      }
    }
    opt_uint(p_, m, "threads", o.threads, 1, 4096);
    opt_uint(p_, m, "device", o.device, 0, u32_max);
    opt_number(p_, m, "slowdown", o.slowdown, 0, true);
    opt_number(p_, m, "recompute_ratio", o.recompute_ratio, 0, false);
    if (auto* x = m.find("recompute_ratio"); x && o.recompute_ratio > 1)
      p_.add(x->at(), m.field("recompute_ratio"),
             fmt::format("recompute_ratio must be in [0, 1], got {}", o.recompute_ratio),
             "a number in [0, 1]");
    if (auto* x = m.find("blend_policy"))
      if (auto s = read_choice(p_, *x, m.field("blend_policy"), blend_policies))
        o.blend_policy = *s;
    opt_uint(p_, m, "kv_host_blocks", o.kv_host_blocks, 0, u32_max);
    opt_uint(p_, m, "kv_disk_blocks", o.kv_disk_blocks, 0, u32_max);
    if (auto* x = m.find("kv_disk_dir"))
      if (auto s = read_string(p_, *x, m.field("kv_disk_dir"), "a directory path")) {
        fs::path declared(*s);
        o.kv_disk_dir =
            (declared.is_absolute() || base_dir_.empty() ? declared
                                                         : fs::path(base_dir_) / declared)
                .lexically_normal()
                .string();
      }
    if (auto* x = m.find("kv_disk_blocks"); x && o.kv_disk_blocks > 0 && o.kv_host_blocks == 0)
      p_.add(x->at(), m.field("kv_disk_blocks"),
             fmt::format("got {} with no kv_host_blocks; blocks reach the disk tier through the "
                         "host tier",
                         o.kv_disk_blocks),
             "kv_host_blocks > 0 beside it, or kv_disk_blocks 0");
  }

  void frontend(const entry& e) {
    map_reader r(p_, e.value, e.at(), "frontend", frontend_keys);
    if (!r.valid()) return;
    auto& f = m_.frontend;
    auto* node = r.find("node");
    position fallback = node ? node->at() : r.at();
    auto* rpc = r.find("rpc_port");
    auto* http = r.find("http_port");
    rpc_at_ = rpc ? rpc->at() : fallback;
    http_at_ = http ? http->at() : fallback;
    opt_uint(p_, r, "rpc_port", f.rpc_port, 1, 65535, std::string(port_text));
    opt_uint(p_, r, "http_port", f.http_port, 1, 65535, std::string(port_text));
    bool host_ok = true;
    if (auto* x = r.find("host")) {
      host_ok = false;
      if (auto s = read_string(p_, *x, "frontend.host", "an IP address or a host name")) {
        if (is_address(*s)) {
          f.host = *s;
          host_ok = true;
        } else {
          p_.add(x->at(), "frontend.host",
                 fmt::format("'{}' is not a valid IP address or host name", *s),
                 "an IP address or a host name");
        }
      }
    }
    for (auto [key, out] : {std::pair{"api_key_file", &f.api_key_file},
                            std::pair{"tls_cert", &f.tls_cert}, std::pair{"tls_key", &f.tls_key}})
      if (auto* x = r.find(key))
        if (auto s = read_string(p_, *x, r.field(key), "a file path")) {
          fs::path declared(*s);
          *out = (declared.is_absolute() || base_dir_.empty() ? declared
                                                              : fs::path(base_dir_) / declared)
                     .lexically_normal()
                     .string();
        }
    if (auto* x = r.find("protect_metrics"))
      if (auto s = read_choice(p_, *x, r.field("protect_metrics"), bool_words))
        f.protect_metrics = *s == "true";
    if (f.tls_cert.empty() != f.tls_key.empty())
      p_.add(r.at(), "frontend", "only one of tls_cert and tls_key is given",
             "both (TLS on the RPC and HTTP ports) or neither");
    if (!node) {
      r.missing("node", "the name of the node that runs the router");
      return;
    }
    auto s = read_string(p_, *node, "frontend.node", "the name of the node that runs the router");
    if (!s) return;
    f.node = *s;
    std::string router_node;
    std::string names;
    for (auto& n : m_.nodes) {
      if (n.count(role::router) > 0 && router_node.empty()) router_node = n.name;
      names += names.empty() ? n.name : ", " + n.name;
    }
    auto* n = m_.find_node(*s);
    if (!n) {
      if (!m_.nodes.empty())
        p_.add(node->at(), "frontend.node", fmt::format("no node is named '{}'", *s),
               fmt::format("one of the nodes: {}", names));
      return;
    }
    if (n->count(role::router) == 0)
      p_.add(node->at(), "frontend.node", fmt::format("node '{}' runs no router", *s),
             router_node.empty()
                 ? std::string("the node that runs the router")
                 : fmt::format("the node that runs the router ('{}')", router_node));
    if (f.host.empty()) f.host = n->address;
    frontend_ok_ = host_ok && !f.host.empty();
  }

  /// Names, role counts and a prefill path across the whole cluster.
  void check_roles() {
    std::vector<std::pair<role, std::pair<size_t, size_t>>> seen;  // first of each role
    auto first = [&](role r) -> const std::pair<size_t, size_t>* {
      for (auto& [k, v] : seen)
        if (k == r) return &v;
      return nullptr;
    };
    size_t prefills = 0;
    for (size_t i = 0; i < m_.nodes.size(); ++i) {
      auto& n = m_.nodes[i];
      for (size_t k = 0; k < i; ++k) {
        if (!n.name.empty() && m_.nodes[k].name == n.name) {
          p_.add(sites_[i].name_at, sites_[i].path + ".name",
                 fmt::format("duplicate node name '{}' (also {}, line {})", n.name, sites_[k].path,
                             sites_[k].name_at.line),
                 "a unique name for every node");
          break;
        }
      }
      for (size_t j = 0; j < n.actors.size(); ++j) {
        auto r = n.actors[j].kind;
        prefills += r == role::prefill;
        auto* f = first(r);
        if (!f) {
          seen.push_back({r, {i, j}});
          continue;
        }
        if (r == role::router || r == role::supervisor || r == role::kv_store) {
          auto& first_site = sites_[f->first].actors[f->second];
          auto& here = sites_[i].actors[j];
          p_.add(here.at, here.path,
                 fmt::format("a second {} (the first is {}, line {})", to_string(r),
                             first_site.path, first_site.at.line),
                 r == role::kv_store ? "at most one kv_store in the cluster"
                                     : fmt::format("exactly one {} in the cluster", to_string(r)));
        }
      }
    }
    if (!first(role::router))
      p_.add(nodes_at_, "nodes", "no node runs a router",
             "exactly one router in the cluster (add router to the actors of the frontend node)");
    if (!first(role::supervisor))
      p_.add(nodes_at_, "nodes", "no node runs a supervisor",
             "exactly one supervisor in the cluster (usually beside the router)");
    auto* d = first(role::decode);
    if (!d) {
      p_.add(nodes_at_, "nodes", "no node runs a decode worker",
             "at least one decode worker ({decode: {...}} in a node's actors)");
    } else if (prefills == 0 && m_.router.local_prefill_threshold == 0) {
      auto& ds = sites_[d->first].actors[d->second];
      p_.add(ds.at, ds.path,
             "the cluster has no prefill worker and router.local_prefill_threshold is 0, so no "
             "prompt could be prefilled",
             "a prefill worker ({prefill: {...}} in a node's actors), or "
             "router.local_prefill_threshold > 0 to prefill prompts on the decode workers");
    }
  }

  /// Non-sim engines need a model file.
  void engines_vs_model() {
    if (!m_.model.sim) return;
    if (defaults_engine_given_ && m_.defaults.engine != "sim")
      p_.add(
          defaults_engine_at_, "defaults.engine",
          fmt::format("engine '{}' needs a model file, but the model is sim", m_.defaults.engine),
          "engine sim, or model: {path: FILE}");
    for (size_t i = 0; i < m_.nodes.size() && i < sites_.size(); ++i)
      for (size_t j = 0; j < m_.nodes[i].actors.size(); ++j) {
        auto* w = m_.nodes[i].actors[j].worker();
        auto& s = sites_[i].actors[j];
        if (w && s.engine_given && w->engine != "sim")
          p_.add(s.engine_at,
                 fmt::format("{}.{}.engine", s.path, to_string(m_.nodes[i].actors[j].kind)),
                 fmt::format("engine '{}' needs a model file, but the model is sim", w->engine),
                 "engine sim, or model: {path: FILE}");
      }
  }

  struct endpoint {
    std::string host;
    uint16_t port;
    position at;
    std::string field;
    std::string what;
  };

  /// Each node's metrics port: the frontend's HTTP port on the frontend's node, else as given
  /// or frontend.http_port + 1 + index.
  void http_ports() {
    for (size_t i = 0; i < m_.nodes.size() && i < sites_.size(); ++i) {
      auto& n = m_.nodes[i];
      if (n.name == m_.frontend.node)
        n.http_port = m_.frontend.http_port;
      else if (!sites_[i].http_given)
        n.http_port =
            static_cast<uint16_t>(std::min<size_t>(size_t{m_.frontend.http_port} + 1 + i, 65535));
    }
  }

  /// Distinct address:port for every listener, and (optionally) free local ports.
  void endpoints() {
    std::vector<endpoint> eps;
    for (size_t i = 0; i < m_.nodes.size() && i < sites_.size(); ++i) {
      auto& n = m_.nodes[i];
      auto& s = sites_[i];
      if (!s.address_ok || !s.port_ok) continue;
      eps.push_back({n.address, n.port, s.port_at, s.path + ".port",
                     fmt::format("the control port of node '{}'", n.name)});
      if (n.name != m_.frontend.node && n.http_port != 0)
        eps.push_back({n.address, n.http_port, s.http_given ? s.http_at : s.at,
                       s.path + ".http_port", fmt::format("the HTTP port of node '{}'", n.name)});
    }
    if (frontend_ok_) {
      auto& f = m_.frontend;
      eps.push_back({f.host, f.rpc_port, rpc_at_, "frontend.rpc_port", "the frontend RPC port"});
      eps.push_back(
          {f.host, f.http_port, http_at_, "frontend.http_port", "the frontend HTTP port"});
    }
    for (size_t i = 0; i < eps.size(); ++i) {
      auto& a = eps[i];
      for (size_t k = 0; k < i; ++k) {
        auto& b = eps[k];
        bool same_host = normal_host(a.host) == normal_host(b.host) || is_wildcard(a.host) ||
                         is_wildcard(b.host);
        if (same_host && a.port == b.port) {
          p_.add(a.at, a.field,
                 fmt::format("{}:{} is already {} ({}, line {})", a.host, a.port, b.what, b.field,
                             b.at.line),
                 "a distinct address:port for every node and frontend listener");
          break;
        }
      }
    }
    if (!opts_.check_ports) return;
    std::vector<std::pair<std::string, uint16_t>> probed;
    for (auto& ep : eps) {
      if (!is_local_address(ep.host) && !is_wildcard(ep.host)) continue;
      auto key = std::make_pair(normal_host(ep.host), ep.port);
      if (std::find(probed.begin(), probed.end(), key) != probed.end()) continue;
      probed.push_back(key);
      if (auto why = try_bind(ep.host, ep.port); !why.empty())
        p_.add(ep.at, ep.field,
               fmt::format("{}:{} ({}) cannot be bound now: {}", ep.host, ep.port, ep.what, why),
               "a free port (stop what is listening there, or pick another port)");
    }
  }

  problems& p_;
  std::string base_dir_;
  manifest_options opts_;
  manifest m_;
  std::vector<node_site> sites_;
  bool nodes_ok_ = true;  ///< every node and actor entry parsed (role checks are meaningful)
  bool frontend_ok_ = false;
  bool defaults_engine_given_ = false;
  position defaults_engine_at_;
  position nodes_at_{0, 0};
  position rpc_at_;
  position http_at_;
};

}  // namespace

manifest read_manifest_document(problems& p, const YAML::Node& root, const std::string& base_dir,
                                const manifest_options& opts) {
  parser ps(p, base_dir, opts);
  try {
    ps.run(root);
  } catch (const YAML::Exception& e) {
    // Every access above checks its node first; this is a bug, but still a value.
    p.add(pos_of(e.mark), "(yaml)", fmt::format("internal error: {}", e.what()),
          "no exception from the manifest parser");
  }
  return ps.take();
}

}  // namespace tokenmill::detail

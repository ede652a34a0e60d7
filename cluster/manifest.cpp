#include "cluster/manifest.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <span>
#include <sstream>

#include <fmt/format.h>
#include <xxhash.h>
#include <yaml-cpp/yaml.h>

#include "actors/actors.hpp"

namespace tokenmill {

// The option structs repeat the actor configs' defaults so that the header stays CAF-free;
// these keep the two in step.
static_assert(prefill_options{}.kv_blocks == prefill_config{}.num_blocks);
static_assert(prefill_options{}.chunk == prefill_config{}.token_budget);
static_assert(prefill_options{}.max_seqs == prefill_config{}.max_seqs);
static_assert(decode_options{}.kv_blocks == decode_config{}.num_blocks);
static_assert(decode_options{}.max_batch == decode_config{}.max_batch);
static_assert(decode_options{}.local_prefill_budget == decode_config{}.local_prefill_budget);
static_assert(manifest_router{}.max_inflight == admission_limits{}.max_inflight);
static_assert(manifest_router{}.max_queued_prompt_tokens ==
              admission_limits{}.max_queued_prompt_tokens);
static_assert(manifest_router{}.migration_limit == default_migration_limit);
static_assert(std::chrono::seconds(manifest_router{}.request_timeout_s) ==
              router_config{}.request_timeout);
static_assert(std::chrono::seconds(manifest_router{}.stall_timeout_s) ==
              router_config{}.stall_timeout);

namespace {

namespace fs = std::filesystem;
using keys = std::span<const std::string_view>;

constexpr std::string_view top_keys[] = {"cluster", "model",   "defaults", "kv_layout", "frontend",
                                         "router",  "failure", "ucx",      "restart",   "nodes"};
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
constexpr std::string_view defaults_keys[] = {"engine", "block_tokens", "kv_transport"};
constexpr std::string_view layout_keys[] = {"layers", "kv_heads", "head_dim", "dtype_bytes"};
constexpr std::string_view frontend_keys[] = {"node", "host", "rpc_port", "http_port"};
constexpr std::string_view router_keys[] = {"local_prefill_threshold",  "max_inflight",
                                            "max_queued_prompt_tokens", "migration_limit",
                                            "request_timeout_s",        "stall_timeout_s"};
constexpr std::string_view failure_keys[] = {"heartbeat_ms", "connection_timeout_ms"};
constexpr std::string_view ucx_keys[] = {"op_timeout_ms", "stall_timeout_ms", "window_mib"};
constexpr std::string_view restart_keys[] = {"max", "backoff_ms"};
constexpr std::string_view node_keys[] = {"name", "address", "ssh", "port", "http_port", "actors"};
constexpr std::string_view prefill_keys[] = {"engine", "threads",  "device",  "kv_blocks",
                                             "chunk",  "max_seqs", "slowdown"};
constexpr std::string_view decode_keys[] = {
    "engine", "threads", "device", "kv_blocks", "max_batch", "local_prefill_budget", "slowdown"};
constexpr std::string_view engines[] = {"sim", "cpu", "cuda"};
constexpr std::string_view transports[] = {"inline", "ucx"};
constexpr std::string_view role_names[] = {"router", "supervisor", "kv_store", "prefill", "decode"};

constexpr uint16_t first_control_port = 7800;
constexpr uint64_t u32_max = std::numeric_limits<uint32_t>::max();
constexpr uint64_t u64_max = std::numeric_limits<uint64_t>::max();

std::string join(keys ks) {
  std::string out;
  for (auto k : ks) {
    if (!out.empty()) out += ", ";
    out += k;
  }
  return out;
}

bool contains(keys ks, std::string_view k) {
  return std::find(ks.begin(), ks.end(), k) != ks.end();
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

/// " (did you mean 'x'?)" when one allowed word is a near miss, else "".
std::string suggestion(std::string_view got, keys allowed) {
  std::string_view best;
  size_t best_d = 3;
  for (auto k : allowed) {
    size_t d = edit_distance(got, k);
    // Only near misses of longer words: "tpu" is not a typo of "cpu".
    if (d < best_d && d * 4 <= k.size()) best = k, best_d = d;
  }
  return best.empty() ? std::string{} : fmt::format(" (did you mean '{}'?)", best);
}

bool is_name(std::string_view s, bool allow_dot) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [&](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' ||
           (allow_dot && c == '.');
  });
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool is_ipv4(const std::string& s) {
  in_addr a{};
  return inet_pton(AF_INET, s.c_str(), &a) == 1;
}

bool is_ipv6(const std::string& s) {
  in6_addr a{};
  return inet_pton(AF_INET6, s.c_str(), &a) == 1;
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
bool is_host_name(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  // All digits and dots is an attempt at an IPv4 address, which is_ipv4 already refused.
  if (std::all_of(s.begin(), s.end(),
                  [](char c) { return std::isdigit(static_cast<unsigned char>(c)) || c == '.'; }))
    return false;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find('.', start);
    if (end == std::string_view::npos) end = s.size();
    auto label = s.substr(start, end - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-')
      return false;
    if (!std::all_of(label.begin(), label.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) || c == '-';
        }))
      return false;
    start = end + 1;
  }
  return true;
}

bool is_address(const std::string& s) {
  return is_ipv4(s) || is_ipv6(s) || is_host_name(s);
}

/// Loopback or "localhost": an address of this host whose ports we can probe.
bool is_local_address(const std::string& s) {
  if (lower(s) == "localhost") return true;
  in_addr a{};
  if (inet_pton(AF_INET, s.c_str(), &a) == 1) return (ntohl(a.s_addr) >> 24) == 127;
  return s == "::1";
}

bool is_wildcard(const std::string& s) {
  return s == "0.0.0.0" || s == "::";
}

/// The form two endpoints are compared in: "localhost" and 127.0.0.1 are one address.
std::string normal_host(const std::string& s) {
  auto l = lower(s);
  return l == "localhost" ? std::string("127.0.0.1") : l;
}

/// An owned socket (STYLE.md §5).
class socket_fd {
 public:
  explicit socket_fd(int fd) : fd_(fd) {}
  socket_fd(const socket_fd&) = delete;
  socket_fd& operator=(const socket_fd&) = delete;
  ~socket_fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

/// Empty when `host:port` can be bound right now, else why not.
std::string try_bind(const std::string& host, uint16_t port) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  auto h = lower(host) == "localhost" ? std::string("127.0.0.1") : host;
  if (is_ipv6(h)) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    inet_pton(AF_INET6, h.c_str(), &a->sin6_addr);
    len = sizeof(*a);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    if (inet_pton(AF_INET, h.c_str(), &a->sin_addr) != 1) return "not a local IP address";
    len = sizeof(*a);
  }
  socket_fd s(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (s.get() < 0) return std::strerror(errno);
  int one = 1;
  ::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) return std::strerror(errno);
  return {};
}

// ------------------------------------------------------------------ problem collection

/// 1-based line and column.
struct position {
  int line = 1;
  int column = 1;
};

position pos_of(const YAML::Mark& m) {
  if (m.is_null()) return {};
  return {m.line + 1, m.column + 1};
}

position pos_of(const YAML::Node& n) {
  return pos_of(n.Mark());
}

class problems {
 public:
  explicit problems(std::string file) : file_(std::move(file)) {}

  void add(position at, std::string_view field, std::string_view what, std::string_view expected) {
    list_.push_back({at, fmt::format("{}:{}:{}: {}: {}; expected {}", file_, at.line, at.column,
                                     field, what, expected)});
  }
  bool empty() const { return list_.empty(); }
  size_t size() const { return list_.size(); }

  /// One line per problem, in file order.
  error_info to_error() {
    std::stable_sort(list_.begin(), list_.end(), [](const item& a, const item& b) {
      return std::tie(a.at.line, a.at.column) < std::tie(b.at.line, b.at.column);
    });
    std::string msg;
    for (auto& p : list_) {
      if (!msg.empty()) msg += '\n';
      msg += p.text;
    }
    return error_info{errc::invalid_request, std::move(msg)};
  }

 private:
  struct item {
    position at;
    std::string text;
  };
  std::string file_;
  std::vector<item> list_;
};

/// A key and its value as they appear in a map.
struct entry {
  YAML::Node key;
  YAML::Node value;
  /// Where to point at the value: a missing value's own mark is the next token, so
  /// point at its key instead.
  position at() const { return value.IsNull() ? pos_of(key) : pos_of(value); }
};

/// How a value looks, for "got ..." in messages.
std::string shown(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return "no value";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Scalar:
      if (n.Tag() == "!") return fmt::format("the string \"{}\"", n.Scalar());
      return fmt::format("'{}'", n.Scalar());
  }
  return "?";
}

/// The keys of one YAML map, checked against the allowed set: unknown and duplicate
/// keys are reported once, here. A missing value (`router:`) reads as an empty map.
class map_reader {
 public:
  map_reader(problems& p, const YAML::Node& node, position at, std::string path, keys allowed)
      : p_(p), at_(at), path_(std::move(path)) {
    if (node.IsNull()) return;
    if (!node.IsMap()) {
      p_.add(at, path_.empty() ? "(document)" : path_, fmt::format("got {}", shown(node)),
             fmt::format("a map with keys {}", join(allowed)));
      valid_ = false;
      return;
    }
    for (auto it = node.begin(); it != node.end(); ++it) {
      entry e{it->first, it->second};
      if (!e.key.IsScalar()) {
        p_.add(pos_of(e.key), field(""), fmt::format("a key that is {}", shown(e.key)),
               fmt::format("one of {}", join(allowed)));
        continue;
      }
      const auto& k = e.key.Scalar();
      if (!contains(allowed, k)) {
        p_.add(pos_of(e.key), field(k),
               fmt::format("unknown key '{}'{}", k, suggestion(k, allowed)),
               fmt::format("one of {}", join(allowed)));
        continue;
      }
      if (auto* first = find(k)) {
        p_.add(pos_of(e.key), field(k),
               fmt::format("duplicate key (first given on line {})", pos_of(first->key).line),
               "each key once");
        continue;
      }
      entries_.push_back(std::move(e));
    }
  }

  /// False when the node was not a map (already reported).
  bool valid() const { return valid_; }
  position at() const { return at_; }
  const std::string& path() const { return path_; }
  /// The full path of key `k` of this map.
  std::string field(std::string_view k) const {
    if (path_.empty()) return std::string(k);
    if (k.empty()) return path_;
    return fmt::format("{}.{}", path_, k);
  }
  const entry* find(std::string_view k) const {
    for (auto& e : entries_)
      if (e.key.Scalar() == k) return &e;
    return nullptr;
  }
  const std::vector<entry>& entries() const { return entries_; }

  /// Reports a missing required key `k`, pointing at the map.
  void missing(std::string_view k, std::string_view expected) const {
    p_.add(at_, field(k), "missing required field", expected);
  }

 private:
  problems& p_;
  position at_;
  std::string path_;
  std::vector<entry> entries_;
  bool valid_ = true;
};

// ------------------------------------------------------------------ value readers

std::string range_text(uint64_t min, uint64_t max) {
  if (max == u32_max || max == u64_max) return fmt::format("a whole number >= {}", min);
  return fmt::format("a whole number from {} to {}", min, max);
}

std::optional<uint64_t> read_uint(problems& p, const entry& e, const std::string& path,
                                  uint64_t min, uint64_t max, std::string expected = {}) {
  if (expected.empty()) expected = range_text(min, max);
  const auto& v = e.value;
  if (!v.IsScalar() || v.Tag() == "!") {
    p.add(e.at(), path, fmt::format("got {}", shown(v)), expected);
    return std::nullopt;
  }
  const auto& s = v.Scalar();
  const char* b = s.data();
  const char* end = s.data() + s.size();
  if (b != end && *b == '+') ++b;
  int64_t sv = 0;
  auto [ptr, ec] = std::from_chars(b, end, sv);
  if (ec == std::errc() && ptr == end && sv < 0) {
    p.add(e.at(), path, fmt::format("got {}, a negative number", s), expected);
    return std::nullopt;
  }
  uint64_t uv = 0;
  auto [uptr, uec] = std::from_chars(b, end, uv);
  if (uec == std::errc::result_out_of_range) {
    p.add(e.at(), path, fmt::format("got {}, too large", s), expected);
    return std::nullopt;
  }
  if (uec != std::errc() || uptr != end) {
    char* dend = nullptr;
    std::strtod(s.c_str(), &dend);
    bool numeric = !s.empty() && dend == s.c_str() + s.size();
    p.add(e.at(), path,
          numeric ? fmt::format("got {}, not a whole number", s) : fmt::format("got {}", shown(v)),
          expected);
    return std::nullopt;
  }
  if (uv < min || uv > max) {
    p.add(e.at(), path, fmt::format("got {}, out of range", s), expected);
    return std::nullopt;
  }
  return uv;
}

/// A finite number >= min (> min when `exclusive`).
std::optional<double> read_number(problems& p, const entry& e, const std::string& path, double min,
                                  bool exclusive, double max = 1e15) {
  auto expected =
      exclusive ? fmt::format("a number > {}", min) : fmt::format("a number >= {}", min);
  const auto& v = e.value;
  if (!v.IsScalar() || v.Tag() == "!") {
    p.add(e.at(), path, fmt::format("got {}", shown(v)), expected);
    return std::nullopt;
  }
  const auto& s = v.Scalar();
  char* dend = nullptr;
  errno = 0;
  double d = s.empty() ? 0 : std::strtod(s.c_str(), &dend);
  if (s.empty() || dend != s.c_str() + s.size() || !std::isfinite(d)) {
    p.add(e.at(), path, fmt::format("got {}", shown(v)), expected);
    return std::nullopt;
  }
  if (d < min || (exclusive && d == min) || d > max) {
    p.add(e.at(), path, fmt::format("got {}, out of range", s),
          d > max ? fmt::format("{} and <= {}", expected, max) : expected);
    return std::nullopt;
  }
  return d;
}

std::optional<std::string> read_string(problems& p, const entry& e, const std::string& path,
                                       std::string_view expected) {
  if (!e.value.IsScalar() || e.value.Scalar().empty()) {
    p.add(e.at(), path, fmt::format("got {}", shown(e.value)), expected);
    return std::nullopt;
  }
  return e.value.Scalar();
}

/// A string from the allowed set.
std::optional<std::string> read_choice(problems& p, const entry& e, const std::string& path,
                                       keys allowed) {
  auto expected = fmt::format("one of {}", join(allowed));
  auto s = read_string(p, e, path, expected);
  if (!s) return std::nullopt;
  if (!contains(allowed, *s)) {
    p.add(e.at(), path, fmt::format("unknown value '{}'{}", *s, suggestion(*s, allowed)), expected);
    return std::nullopt;
  }
  return s;
}

template <class T>
void opt_uint(problems& p, const map_reader& r, std::string_view key, T& out, uint64_t min,
              uint64_t max, std::string expected = {}) {
  if (auto* e = r.find(key))
    if (auto v = read_uint(p, *e, r.field(key), min, max, std::move(expected)))
      out = static_cast<T>(*v);
}

void opt_number(problems& p, const map_reader& r, std::string_view key, double& out, double min,
                bool exclusive) {
  if (auto* e = r.find(key))
    if (auto v = read_number(p, *e, r.field(key), min, exclusive)) out = *v;
}

/// A time given in `unit_ns` units, stored in ns.
void opt_time(problems& p, const map_reader& r, std::string_view key, uint64_t& out_ns,
              double unit_ns) {
  if (auto* e = r.find(key))
    if (auto v = read_number(p, *e, r.field(key), 0, false, 1e15 / unit_ns))
      out_ns = static_cast<uint64_t>(std::llround(*v * unit_ns));
}

constexpr std::string_view port_text = "a port number from 1 to 65535";

// ------------------------------------------------------------------ the parser

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
    engines_vs_model();
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
    node_site site{pos_of(n), pos_of(n), pos_of(n), pos_of(n), false, path, false, false, {}};
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
        opt_uint(p_, m, "chunk", o.chunk, 1, u32_max);
        opt_uint(p_, m, "max_seqs", o.max_seqs, 1, u32_max);
        out.options = o;
      } else if (*r == role::decode) {
        decode_options o;
        o.engine = m_.defaults.engine;
        map_reader m(p_, options, options_at, opath, decode_keys);
        worker(m, o, as);
        opt_uint(p_, m, "kv_blocks", o.kv_blocks, 1, u32_max);
        opt_uint(p_, m, "max_batch", o.max_batch, 1, u32_max);
        opt_uint(p_, m, "local_prefill_budget", o.local_prefill_budget, 1, u32_max);
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

error_info file_error(const std::string& file, std::string_view what) {
  return error_info{errc::invalid_request,
                    fmt::format("{}: {}; expected a YAML host manifest file", file, what)};
}

// ------------------------------------------------------------------ rendering

std::string sim_text(const sim_config& c) {
  return fmt::format(
      "vocab {}, max_context {}, prefill {} us/token + {} us/call, decode {} ms/step + {} "
      "us/seq + {} ns/context token, slowdown {}, seed {}",
      c.vocab_size, c.max_context, c.prefill_ns_per_token / 1e3, c.prefill_base_ns / 1e3,
      c.decode_base_ns / 1e6, c.decode_per_seq_ns / 1e3, c.decode_per_ctx_token_ns, c.slowdown,
      c.seed);
}

}  // namespace

// ------------------------------------------------------------------ public API

const worker_options* manifest_actor::worker() const {
  if (auto* p = prefill()) return p;
  if (auto* d = decode()) return d;
  return nullptr;
}

size_t manifest_node::count(role r) const {
  return static_cast<size_t>(std::count_if(actors.begin(), actors.end(),
                                           [r](const manifest_actor& a) { return a.kind == r; }));
}

const manifest_node* manifest::find_node(std::string_view name) const {
  for (auto& n : nodes)
    if (n.name == name) return &n;
  return nullptr;
}

result<manifest> parse_manifest(const std::string& yaml_text,
                                const std::string& file_name_for_errors,
                                const std::string& base_dir, const manifest_options& opts) {
  problems p(file_name_for_errors);
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(yaml_text);
  } catch (const YAML::ParserException& e) {
    p.add(pos_of(e.mark), "(yaml)", fmt::format("syntax error: {}", e.msg), "well-formed YAML");
    return p.to_error();
  } catch (const YAML::Exception& e) {
    p.add(pos_of(e.mark), "(yaml)", fmt::format("cannot parse: {}", e.msg), "well-formed YAML");
    return p.to_error();
  }
  constexpr std::string_view top_text =
      "a map with keys cluster, model, frontend, nodes (and optionally defaults, kv_layout, "
      "router, failure, ucx, restart)";
  if (docs.empty() || (docs.size() == 1 && docs[0].IsNull())) {
    p.add({}, "(document)", "the manifest is empty", top_text);
    return p.to_error();
  }
  if (docs.size() > 1) {
    p.add(pos_of(docs[1]), "(document)",
          fmt::format("the file holds {} YAML documents (a '---' separator, or a line indented "
                      "less than the first)",
                      docs.size()),
          "one document");
    return p.to_error();
  }
  if (!docs[0].IsMap()) {
    p.add(pos_of(docs[0]), "(document)", fmt::format("the top level is {}", shown(docs[0])),
          top_text);
    return p.to_error();
  }
  parser ps(p, base_dir, opts);
  try {
    ps.run(docs[0]);
  } catch (const YAML::Exception& e) {
    // Every access above checks its node first; this is a bug, but still a value.
    p.add(pos_of(e.mark), "(yaml)", fmt::format("internal error: {}", e.what()),
          "no exception from the manifest parser");
  }
  if (!p.empty()) return p.to_error();
  auto m = ps.take();
  m.path = file_name_for_errors;
  return m;
}

result<manifest> load_manifest(const std::string& file, const manifest_options& opts) {
  std::error_code ec;
  auto st = fs::status(file, ec);
  if (ec && ec != std::errc::no_such_file_or_directory)
    return file_error(file, fmt::format("cannot read the manifest: {}", ec.message()));
  if (!fs::exists(st)) return file_error(file, "no such file");
  if (fs::is_directory(st)) return file_error(file, "is a directory, not a file");
  std::ifstream in(file, std::ios::binary);
  if (!in) return file_error(file, fmt::format("cannot open it: {}", std::strerror(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return file_error(file, "cannot read it");
  auto base = fs::path(file).parent_path().string();
  return parse_manifest(text.str(), file, base.empty() ? "." : base, opts);
}

std::string canonical_form(const manifest& m) {
  std::string out;
  // Strings are length-prefixed so that no value can forge a line.
  auto str = [&](std::string_view key, std::string_view v) {
    out += fmt::format("{}={}:{}\n", key, v.size(), v);
  };
  auto num = [&](std::string_view key, auto v) { out += fmt::format("{}={}\n", key, v); };
  str("cluster", m.cluster);
  num("model.sim", m.model.sim);
  if (m.model.sim) {
    auto& c = m.model.sim_cfg;
    num("model.sim.prefill_ns_per_token", c.prefill_ns_per_token);
    num("model.sim.prefill_base_ns", c.prefill_base_ns);
    num("model.sim.decode_base_ns", c.decode_base_ns);
    num("model.sim.decode_per_seq_ns", c.decode_per_seq_ns);
    num("model.sim.decode_per_ctx_token_ns", c.decode_per_ctx_token_ns);
    num("model.sim.slowdown", c.slowdown);
    num("model.sim.vocab_size", c.vocab_size);
    num("model.sim.max_context", c.max_context);
    num("model.sim.seed", c.seed);
    num("model.sim.layout.layers", c.layout.layers);
    num("model.sim.layout.kv_heads", c.layout.kv_heads);
    num("model.sim.layout.head_dim", c.layout.head_dim);
    num("model.sim.layout.dtype_bytes", c.layout.dtype_bytes);
  } else {
    str("model.path", m.model.declared_path);
  }
  str("defaults.engine", m.defaults.engine);
  num("defaults.block_tokens", m.defaults.block_tokens);
  str("defaults.kv_transport", m.defaults.kv_transport);
  str("frontend.node", m.frontend.node);
  str("frontend.host", m.frontend.host);
  num("frontend.rpc_port", m.frontend.rpc_port);
  num("frontend.http_port", m.frontend.http_port);
  num("router.local_prefill_threshold", m.router.local_prefill_threshold);
  num("router.max_inflight", m.router.max_inflight);
  num("router.max_queued_prompt_tokens", m.router.max_queued_prompt_tokens);
  num("router.migration_limit", m.router.migration_limit);
  num("router.request_timeout_s", m.router.request_timeout_s);
  num("router.stall_timeout_s", m.router.stall_timeout_s);
  num("failure.heartbeat_ms", m.failure.heartbeat_ms);
  num("failure.connection_timeout_ms", m.failure.connection_timeout_ms);
  num("ucx.op_timeout_ms", m.ucx.op_timeout_ms);
  num("ucx.stall_timeout_ms", m.ucx.stall_timeout_ms);
  num("ucx.window_mib", m.ucx.window_mib);
  num("nodes", m.nodes.size());
  for (size_t i = 0; i < m.nodes.size(); ++i) {
    auto& n = m.nodes[i];
    auto k = [&](std::string_view f) { return fmt::format("nodes[{}].{}", i, f); };
    str(k("name"), n.name);
    str(k("address"), n.address);
    str(k("ssh"), n.ssh);
    num(k("port"), n.port);
    num(k("http_port"), n.http_port);
    num(k("actors"), n.actors.size());
    for (size_t j = 0; j < n.actors.size(); ++j) {
      auto& a = n.actors[j];
      auto ak = [&](std::string_view f) { return fmt::format("nodes[{}].actors[{}].{}", i, j, f); };
      str(ak("role"), to_string(a.kind));
      str(ak("name"), a.name);
      if (auto* w = a.worker()) {
        str(ak("engine"), w->engine);
        num(ak("threads"), w->threads);
        num(ak("device"), w->device);
        num(ak("slowdown"), w->slowdown);
      }
      if (auto* p = a.prefill()) {
        num(ak("kv_blocks"), p->kv_blocks);
        num(ak("chunk"), p->chunk);
        num(ak("max_seqs"), p->max_seqs);
      }
      if (auto* d = a.decode()) {
        num(ak("kv_blocks"), d->kv_blocks);
        num(ak("max_batch"), d->max_batch);
        num(ak("local_prefill_budget"), d->local_prefill_budget);
      }
    }
  }
  return out;
}

uint64_t manifest_hash(const manifest& m) {
  auto c = canonical_form(m);
  return XXH3_64bits(c.data(), c.size());
}

std::string describe(const manifest& m) {
  std::string out;
  auto line = [&](std::string s) {
    out += s;
    out += '\n';
  };
  line(fmt::format("cluster {} ({}, hash {:016x})", m.cluster,
                   m.path.empty() ? std::string("no file") : m.path, manifest_hash(m)));
  if (m.model.sim) {
    auto& l = m.model.sim_cfg.layout;
    line(fmt::format("model: sim ({})", sim_text(m.model.sim_cfg)));
    line(fmt::format(
        "kv layout: {} layers x {} kv heads x {} head_dim x {} bytes, {} "
        "tokens/block = {} bytes/block",
        l.layers, l.kv_heads, l.head_dim, l.dtype_bytes, l.block_tokens, l.block_bytes()));
  } else {
    line(fmt::format("model: {} (written as {})", m.model.path, m.model.declared_path));
  }
  line(fmt::format("defaults: engine {}, block_tokens {}, kv_transport {}", m.defaults.engine,
                   m.defaults.block_tokens, m.defaults.kv_transport));
  line(fmt::format("frontend: node {}, rpc {}:{}, http {}:{}", m.frontend.node, m.frontend.host,
                   m.frontend.rpc_port, m.frontend.host, m.frontend.http_port));
  line(fmt::format(
      "router: local_prefill_threshold {} tokens, max_inflight {}, "
      "max_queued_prompt_tokens {}, migration_limit {}, request_timeout {} s, "
      "stall_timeout {} s",
      m.router.local_prefill_threshold, m.router.max_inflight, m.router.max_queued_prompt_tokens,
      m.router.migration_limit, m.router.request_timeout_s, m.router.stall_timeout_s));
  line(fmt::format("failure: heartbeat {} ms, connection timeout {} ms", m.failure.heartbeat_ms,
                   m.failure.connection_timeout_ms));
  if (m.defaults.kv_transport == "ucx")
    line(fmt::format("ucx: op timeout {} ms, stall timeout {} ms, window {} MiB",
                     m.ucx.op_timeout_ms, m.ucx.stall_timeout_ms, m.ucx.window_mib));
  if (m.restart.max == 0)
    line("restart: off (a node that dies stays down)");
  else
    line(fmt::format("restart: up to {} in a row, the first after {} ms, doubling (at most {} s)",
                     m.restart.max, m.restart.backoff_ms,
                     std::max<int64_t>(restart_backoff_cap_ms, m.restart.backoff_ms) / 1000));
  line(fmt::format("nodes ({}):", m.nodes.size()));
  for (auto& n : m.nodes) {
    auto launch = !n.ssh.empty() ? "ssh " + n.ssh
                  : n.local      ? std::string("local")
                                 : std::string("remote, no ssh (started by hand)");
    line(fmt::format("  {}  {}:{} (http {})  {}", n.name, n.address, n.port, n.http_port, launch));
    for (auto& a : n.actors) {
      std::string opts;
      if (auto* p = a.prefill())
        opts = fmt::format(
            ": engine {}, threads {}, device {}, kv_blocks {}, chunk {}, "
            "max_seqs {}, slowdown {}",
            p->engine, p->threads, p->device, p->kv_blocks, p->chunk, p->max_seqs, p->slowdown);
      if (auto* d = a.decode())
        opts = fmt::format(
            ": engine {}, threads {}, device {}, kv_blocks {}, max_batch {}, "
            "local_prefill_budget {}, slowdown {}",
            d->engine, d->threads, d->device, d->kv_blocks, d->max_batch, d->local_prefill_budget,
            d->slowdown);
      line(fmt::format("    {} ({}){}", to_string(a.kind), a.name, opts));
    }
  }
  return out;
}

router_config to_router_config(const manifest& m) {
  router_config c;
  c.limits.max_inflight = m.router.max_inflight;
  c.limits.max_queued_prompt_tokens = m.router.max_queued_prompt_tokens;
  c.local_prefill_threshold = m.router.local_prefill_threshold;
  c.migration_limit = m.router.migration_limit;
  c.request_timeout = std::chrono::seconds(m.router.request_timeout_s);
  c.stall_timeout = std::chrono::seconds(m.router.stall_timeout_s);
  c.block_tokens = m.defaults.block_tokens;
  return c;
}

prefill_config to_prefill_config(const prefill_options& o) {
  prefill_config c;
  c.num_blocks = o.kv_blocks;
  c.token_budget = o.chunk;
  c.max_seqs = o.max_seqs;
  return c;
}

decode_config to_decode_config(const decode_options& o) {
  decode_config c;
  c.num_blocks = o.kv_blocks;
  c.max_batch = o.max_batch;
  c.local_prefill_budget = o.local_prefill_budget;
  return c;
}

engine_spec to_engine_spec(const manifest& m, const worker_options& o) {
  engine_spec s;
  s.kind = o.engine;
  if (m.model.sim) s.sim = m.model.sim_cfg;
  s.sim.layout.block_tokens = m.defaults.block_tokens;
  s.sim.slowdown *= o.slowdown;
  s.model_path = m.model.path;
  s.cpu.threads = o.threads;
  s.cpu.block_tokens = m.defaults.block_tokens;
  s.cuda.device = static_cast<int>(o.device);
  s.cuda.block_tokens = m.defaults.block_tokens;
  return s;
}

}  // namespace tokenmill

#include "cluster/manifest.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include <fmt/format.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include "actors/actors.hpp"
#include "cluster/detail/manifest_parser.hpp"
#include "cluster/detail/yaml_reader.hpp"
#include "cluster/serving_defaults.hpp"

namespace tokenmill {

// The option structs repeat the actor configs' defaults so that the header stays CAF-free;
// these keep the two in step. Clang before 16 cannot evaluate libstdc++ 12's constexpr
// std::string constructor (the configs hold strings), so only gcc and newer clang check
// them; the fuzz build (clang 14) still compiles this file. The prefill and decode configs
// hold the node's grammar cache (a shared_ptr, not a literal type): test_manifest.cpp checks
// their defaults at run time.
#if !defined(__clang__) || __clang_major__ >= 16
static_assert(manifest_router{}.max_inflight == admission_limits{}.max_inflight);
static_assert(int64_t{manifest_router{}.max_queue_ms} * 1'000'000 ==
              adaptive_admission_config{}.max_queue_ns);
static_assert(int64_t{manifest_router{}.ttft_slo_ms} * 1'000'000 ==
              adaptive_admission_config{}.ttft_slo_ns);
static_assert(int64_t{manifest_router{}.admission_window_ms} * 1'000'000 ==
              adaptive_admission_config{}.window_ns);
static_assert(manifest_router{}.admission_min_waiting == adaptive_admission_config{}.min_waiting);
static_assert(manifest_router{}.max_queued_prompt_tokens ==
              admission_limits{}.max_queued_prompt_tokens);
static_assert(manifest_router{}.migration_limit == default_migration_limit);
// router_config holds maps and strings now (not a literal type): the timeouts' defaults
// are compared in tests/unit/cluster/test_manifest.cpp instead.
#endif

namespace {

namespace fs = std::filesystem;
using detail::pos_of;
using detail::problems;
using detail::shown;

/// Where each document of a YAML stream starts, nothing more: lets parse_manifest see a
/// stream yaml-cpp cannot get past before handing the text to YAML::LoadAll.
class document_starts final : public YAML::EventHandler {
 public:
  std::vector<YAML::Mark> marks;
  void OnDocumentStart(const YAML::Mark& m) override { marks.push_back(m); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

/// yaml-cpp 0.7 never gets past a ',' where a document should start (",", "---\n, x"):
/// each HandleNextDocument yields an empty document at the same mark without consuming
/// it, so YAML::LoadAll loops, allocating, until memory runs out (found by fuzz_manifest).
/// Returns that mark, or nullopt when every document moves the parser on. May throw
/// YAML::Exception, as LoadAll does.
std::optional<YAML::Mark> stuck_document(const std::string& yaml_text) {
  std::istringstream in(yaml_text);
  YAML::Parser parser(in);
  document_starts starts;
  while (parser.HandleNextDocument(starts)) {
    const auto& m = starts.marks;
    if (m.size() >= 2 && m[m.size() - 1].pos == m[m.size() - 2].pos) return m.back();
  }
  return std::nullopt;
}

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

const worker_options* manifest_actor::worker() const {
  if (auto* p = prefill()) return p;
  if (auto* d = decode()) return d;
  return nullptr;
}

size_t manifest_node::count(role r) const {
  return static_cast<size_t>(std::count_if(actors.begin(), actors.end(),
                                           [r](const manifest_actor& a) { return a.kind == r; }));
}

namespace {
std::string with_node(std::string path, std::string_view node) {
  constexpr std::string_view mark = "{node}";
  for (auto at = path.find(mark); at != std::string::npos; at = path.find(mark, at + node.size()))
    path.replace(at, mark.size(), node);
  return path;
}
}  // namespace

std::string manifest_tls::cert_for(std::string_view node) const {
  return with_node(cert, node);
}
std::string manifest_tls::key_for(std::string_view node) const {
  return with_node(key, node);
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
    if (auto at = stuck_document(yaml_text)) {
      p.add(pos_of(*at), "(yaml)", "syntax error: a ',' outside a flow collection",
            "well-formed YAML");
      return p.to_error();
    }
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
      "router, failure, ucx, restart, planner, security)";
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
  auto m = detail::read_manifest_document(p, docs[0], base_dir, opts);
  if (!p.empty()) return p.to_error();
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
  line(fmt::format("defaults: engine {}, block_tokens {}, kv_transport {}{}", m.defaults.engine,
                   m.defaults.block_tokens, m.defaults.kv_transport,
                   m.defaults.kv_memory ? ", kv_memory " + format_memory_size(*m.defaults.kv_memory)
                                        : std::string()));
  line(fmt::format("frontend: node {}, rpc {}:{}, http {}:{}", m.frontend.node, m.frontend.host,
                   m.frontend.rpc_port, m.frontend.host, m.frontend.http_port));
  line(fmt::format("router: local_prefill_threshold {} tokens, max_inflight {}, "
                   "max_queued_prompt_tokens {}, migration_limit {}, request_timeout {} s, "
                   "stall_timeout {} s, max_queue {} ms (window {} ms, min_waiting {})",
                   m.router.local_prefill_threshold, m.router.max_inflight,
                   m.router.max_queued_prompt_tokens, m.router.migration_limit,
                   m.router.request_timeout_s, m.router.stall_timeout_s, m.router.max_queue_ms,
                   m.router.admission_window_ms, m.router.admission_min_waiting) +
       (m.router.ttft_slo_ms ? fmt::format(", ttft_slo {} ms", m.router.ttft_slo_ms) : ""));
  {
    auto& sec = m.security;
    std::string tls = !sec.tls ? std::string(sec.insecure ? "off (insecure: true)" : "off")
                      : sec.tls->generated ? fmt::format("auto (certificates in {})", sec.certs_dir)
                                           : fmt::format("ca {}, cert {}, key {}", sec.tls->ca,
                                                         sec.tls->cert, sec.tls->key);
    line(fmt::format("security: tls {}, cluster secret {}", tls,
                     sec.secret_file.empty() ? std::string("none") : sec.secret_file));
  }
  line(
      fmt::format("router cost model: weights prefill {:g}, queue {:g}, transfer {:g}, load {:g}; "
                  "prefill {:g} tokens/s without profile, KV {:g} GB/s, load {:g} ms per request; "
                  "profile {}",
                  m.router.prefill_weight, m.router.queue_weight, m.router.transfer_weight,
                  m.router.load_weight, m.router.prefill_tokens_per_s, m.router.kv_transfer_gbps,
                  m.router.load_ms_per_request,
                  m.router.profile_data
                      ? fmt::format("{} ({} engine, {} threads)", m.router.profile,
                                    m.router.profile_data->engine, m.router.profile_data->threads)
                      : std::string("none")));
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
  if (!m.planner) {
    line("planner: off (roles stay as the nodes say)");
  } else {
    auto& p = *m.planner;
    auto slo = [](uint32_t ms) { return ms == 0 ? std::string("none") : fmt::format("{} ms", ms); };
    line(fmt::format(
        "planner: TTFT p{} {}, ITL p{} {}; every {} ms, flip after {} intervals past {:g} and "
        "{:g}x the other role, cooldown {} ms, at least {} prefill and {} decode; "
        "{} prefill jobs or {} decode sequences per worker saturate it; a role change is "
        "abandoned after {} ms; after a flip to decode up to {} sequences move to it",
        p.percentile, slo(p.ttft_ms), p.percentile, slo(p.itl_ms), p.interval_ms, p.intervals,
        p.high, p.band, p.cooldown_ms, p.min_prefill, p.min_decode, p.prefill_jobs_per_worker,
        p.decode_max_batch, p.change_timeout_ms, p.rebalance_moves));
  }
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
      if (auto* w = a.worker(); w && w->kv_host_blocks > 0)
        opts += fmt::format(", kv_host_blocks {}, kv_disk_blocks {}{}", w->kv_host_blocks,
                            w->kv_disk_blocks,
                            w->kv_disk_dir.empty() ? "" : ", kv_disk_dir " + w->kv_disk_dir);
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
  c.admission.max_queue_ns = int64_t{m.router.max_queue_ms} * 1'000'000;
  c.admission.ttft_slo_ns = int64_t{m.router.ttft_slo_ms} * 1'000'000;
  c.admission.window_ns = int64_t{m.router.admission_window_ms} * 1'000'000;
  c.admission.min_waiting = m.router.admission_min_waiting;
  c.cost.weights = {m.router.prefill_weight, m.router.queue_weight, m.router.transfer_weight,
                    m.router.load_weight};
  c.cost.kv_bytes_per_s = m.router.kv_transfer_gbps * 1e9;
  c.cost.load_s_per_request = m.router.load_ms_per_request / 1e3;
  c.cost.host_onboard_bytes_per_s = m.router.kv_host_onboard_gbps * 1e9;
  c.cost.disk_onboard_bytes_per_s = m.router.kv_disk_onboard_gbps * 1e9;
  c.fetch.enabled = m.router.fetch;
  c.fetch.overhead_s = m.router.fetch_overhead_ms / 1e3;
  c.default_speed.tokens_per_s = m.router.prefill_tokens_per_s;
  c.default_speed.source = "rate";
  // The decode worker resolves a request's recompute ratio (for its remote prefill too):
  // with several, the largest, so the cost model never credits a chunk hit more than a
  // worker will save.
  bool any_decode = false;
  for (const auto& n : m.nodes)
    for (const auto& a : n.actors)
      if (const auto* d = a.decode()) {
        const auto r = static_cast<float>(d->recompute_ratio);
        c.recompute_ratio = any_decode ? std::max(c.recompute_ratio, r) : r;
        any_decode = true;
      }
  if (const auto& prof = m.router.profile_data) {
    for (const auto& n : m.nodes)
      for (const auto& a : n.actors) {
        const auto* w = a.worker();
        if (!w) continue;
        const std::string engine = w->engine.empty() ? m.defaults.engine : w->engine;
        if (engine != prof->engine) continue;
        // The chunk the worker prefills with: a prefill worker's chunk, a decode worker's
        // local prefill budget.
        const uint32_t chunk = a.prefill() ? a.prefill()->chunk : a.decode()->local_prefill_budget;
        c.speeds[a.name] = profile_speed(*prof, chunk, m.router.profile);
      }
  }
  c.block_tokens = m.defaults.block_tokens;
  return c;
}

prefill_config to_prefill_config(const prefill_options& o) {
  prefill_config c;
  c.num_blocks = o.kv_blocks;
  c.token_budget = o.chunk;
  c.max_seqs = o.max_seqs;
  c.tier = kv_tier_config{o.kv_host_blocks, o.kv_disk_blocks, o.kv_disk_dir};
  c.recompute_ratio = static_cast<float>(o.recompute_ratio);
  if (auto b = parse_blend_policy(o.blend_policy)) c.blend = *b;  // the parser checked it
  return c;
}

decode_config to_decode_config(const decode_options& o) {
  decode_config c;
  c.num_blocks = o.kv_blocks;
  c.max_batch = o.max_batch;
  c.local_prefill_budget = o.local_prefill_budget;
  c.tier = kv_tier_config{o.kv_host_blocks, o.kv_disk_blocks, o.kv_disk_dir};
  c.recompute_ratio = static_cast<float>(o.recompute_ratio);
  if (auto b = parse_blend_policy(o.blend_policy)) c.blend = *b;  // the parser checked it
  if (auto f = parse_first_token_release(o.first_token)) c.first_token = *f;  // checked too
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
  if (auto h = parse_weights_hugepages(m.defaults.weights_hugepages, "weights_hugepages"))
    s.hugepages = *h;  // the parser checked it
  s.cpu.block_tokens = m.defaults.block_tokens;
  s.cuda.device = static_cast<int>(o.device);
  s.cuda.block_tokens = m.defaults.block_tokens;
  return s;
}

}  // namespace tokenmill

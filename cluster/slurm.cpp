#include "cluster/slurm.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <numeric>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "cluster/detail/yaml_emit.hpp"
#include "cluster/manifest.hpp"

namespace tokenmill {
namespace {

namespace fs = std::filesystem;
using detail::yaml_str;

error_info bad(std::string what) {
  return {errc::invalid_request, std::move(what)};
}

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isdigit(static_cast<unsigned char>(c));
  });
}

/// One host entry's expansion: its parts are literal text or a bracketed list of numbers.
result<std::vector<std::string>> expand_entry(std::string_view list, size_t begin, size_t end,
                                              size_t max_hosts) {
  std::vector<std::string> hosts{""};
  size_t i = begin;
  while (i < end) {
    if (list[i] == ']')
      return bad(fmt::format("hostlist '{}': character {}: ']' without '['", list, i + 1));
    if (list[i] != '[') {
      size_t j = i;
      while (j < end && list[j] != '[' && list[j] != ']')
        ++j;
      for (auto& h : hosts)
        h += list.substr(i, j - i);
      i = j;
      continue;
    }
    size_t close = list.find(']', i);
    if (close == std::string_view::npos || close > end)
      return bad(fmt::format("hostlist '{}': character {}: '[' is not closed", list, i + 1));
    auto inner = list.substr(i + 1, close - i - 1);
    if (inner.find('[') != std::string_view::npos)
      return bad(fmt::format("hostlist '{}': character {}: brackets inside brackets", list, i + 1));
    std::vector<std::string> numbers;
    size_t at = i + 1;
    for (size_t pos = 0; pos <= inner.size();) {
      size_t comma = std::min(inner.find(',', pos), inner.size());
      auto item = inner.substr(pos, comma - pos);
      auto dash = item.find('-');
      auto lo = item.substr(0, dash);
      auto hi = dash == std::string_view::npos ? lo : item.substr(dash + 1);
      if (!all_digits(lo) || !all_digits(hi) || lo.size() > 9 || hi.size() > 9)
        return bad(
            fmt::format("hostlist '{}': character {}: '{}' is not a number or a range "
                        "N-M",
                        list, at + pos + 1, item));
      unsigned long a = std::stoul(std::string(lo)), b = std::stoul(std::string(hi));
      if (b < a)
        return bad(fmt::format("hostlist '{}': character {}: range '{}' runs backwards", list,
                               at + pos + 1, item));
      if (b - a >= max_hosts)
        return bad(
            fmt::format("hostlist '{}': range '{}' has more than {} hosts", list, item, max_hosts));
      for (unsigned long v = a; v <= b; ++v)
        numbers.push_back(fmt::format("{:0{}}", v, lo.size()));
      pos = comma + 1;
    }
    if (hosts.size() * numbers.size() > max_hosts)
      return bad(fmt::format("hostlist '{}': more than {} hosts", list, max_hosts));
    std::vector<std::string> next;
    next.reserve(hosts.size() * numbers.size());
    for (const auto& h : hosts)
      for (const auto& n : numbers)
        next.push_back(h + n);
    hosts = std::move(next);
    i = close + 1;
  }
  for (const auto& h : hosts)
    if (h.empty() || !std::all_of(h.begin(), h.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
        }))
      return bad(fmt::format("hostlist '{}': '{}' is not a host name", list, h));
  return hosts;
}

/// "FILE:LINE:COLUMN: FIELD: what; expected what" at a node of the template.
error_info at(const std::string& file, const YAML::Node& n, const std::string& field,
              const std::string& what, const std::string& expected) {
  auto m = n.Mark();
  return bad(fmt::format("{}:{}:{}: {}: {}; expected {}", file, m.line + 1, m.column + 1, field,
                         what, expected));
}

/// A whole number >= lo at `field`.
result<uint32_t> read_count(const std::string& file, const YAML::Node& n, const std::string& field,
                            uint32_t lo) {
  if (!n.IsScalar() || !all_digits(n.Scalar()) || n.Scalar().size() > 6 ||
      std::stoul(n.Scalar()) < lo)
    return at(file, n, field, fmt::format("'{}'", n.IsScalar() ? n.Scalar() : "not a number"),
              fmt::format("a whole number >= {}", lo));
  return static_cast<uint32_t>(std::stoul(n.Scalar()));
}

/// The default name of a role's nodes: what its actors are.
std::string default_name(const YAML::Node& actors) {
  bool prefill = false, decode = false, other = false;
  for (const auto& a : actors) {
    if (a.IsMap() && a["prefill"])
      prefill = true;
    else if (a.IsMap() && a["decode"])
      decode = true;
    else
      other = true;
  }
  if (prefill && !decode && !other) return "p";
  if (decode && !prefill && !other) return "d";
  return "w";
}

}  // namespace

result<std::vector<std::string>> expand_hostlist(std::string_view list, size_t max_hosts) {
  if (list.empty()) return bad("hostlist: empty; expected host names such as node[01-03],gpu5");
  std::vector<std::string> hosts;
  size_t begin = 0;
  int depth = 0;
  for (size_t i = 0; i <= list.size(); ++i) {
    if (i < list.size() && list[i] == '[') ++depth;
    if (i < list.size() && list[i] == ']') --depth;
    if (i < list.size() && (list[i] != ',' || depth > 0)) continue;
    if (i == begin)
      return bad(fmt::format("hostlist '{}': character {}: an empty host name", list, i + 1));
    auto part = expand_entry(list, begin, i, max_hosts);
    if (!part) return part.error();
    hosts.insert(hosts.end(), part->begin(), part->end());
    if (hosts.size() > max_hosts)
      return bad(fmt::format("hostlist '{}': more than {} hosts", list, max_hosts));
    begin = i + 1;
  }
  return hosts;
}

result<std::vector<uint32_t>> expand_tasks_per_node(std::string_view spec) {
  std::vector<uint32_t> out;
  const auto expected = "counts such as 2(x3),1";
  if (spec.empty()) return bad(fmt::format("tasks per node: empty; expected {}", expected));
  for (size_t pos = 0; pos <= spec.size();) {
    size_t comma = std::min(spec.find(',', pos), spec.size());
    auto item = spec.substr(pos, comma - pos);
    auto paren = item.find("(x");
    auto count = item.substr(0, paren);
    std::string_view times = "1";
    if (paren != std::string_view::npos) {
      if (item.back() != ')')
        return bad(fmt::format("tasks per node '{}': '{}' is not N or N(xM); expected {}", spec,
                               item, expected));
      times = item.substr(paren + 2, item.size() - paren - 3);
    }
    if (!all_digits(count) || !all_digits(times) || count.size() > 6 || times.size() > 6 ||
        std::stoul(std::string(count)) == 0 || std::stoul(std::string(times)) == 0)
      return bad(
          fmt::format("tasks per node '{}': '{}' is not N or N(xM) with N, M >= 1; "
                      "expected {}",
                      spec, item, expected));
    out.insert(out.end(), std::stoul(std::string(times)),
               static_cast<uint32_t>(std::stoul(std::string(count))));
    if (out.size() > 65536) return bad(fmt::format("tasks per node '{}': too many hosts", spec));
    pos = comma + 1;
  }
  return out;
}

result<slurm_allocation> slurm_allocation_from(std::string_view nodelist,
                                               std::string_view tasks_per_node) {
  auto hosts = expand_hostlist(nodelist);
  if (!hosts) return bad("SLURM_JOB_NODELIST: " + hosts.error().message);
  slurm_allocation a;
  a.hosts = std::move(*hosts);
  if (tasks_per_node.empty()) {
    a.tasks.assign(a.hosts.size(), 1);
    return a;
  }
  auto tasks = expand_tasks_per_node(tasks_per_node);
  if (!tasks) return bad("SLURM_TASKS_PER_NODE: " + tasks.error().message);
  if (tasks->size() != a.hosts.size())
    return bad(
        fmt::format("SLURM_TASKS_PER_NODE '{}' describes {} hosts, SLURM_JOB_NODELIST "
                    "'{}' has {}",
                    tasks_per_node, tasks->size(), nodelist, a.hosts.size()));
  a.tasks = std::move(*tasks);
  return a;
}

result<slurm_manifest> manifest_from_slurm(const std::string& template_text,
                                           const std::string& template_file,
                                           const slurm_allocation& alloc) {
  const auto& file = template_file;
  YAML::Node root;
  try {
    root = YAML::Load(template_text);
  } catch (const YAML::Exception& e) {
    return bad(fmt::format("{}:{}:{}: {}", file, e.mark.line + 1, e.mark.column + 1, e.msg));
  }
  if (!root.IsMap())
    return bad(
        fmt::format("{}: not a mapping; expected a host manifest with a slurm section", file));
  if (root["nodes"])
    return at(file, root["nodes"], "nodes", "given",
              "none: the allocation decides the nodes (slurm.head, slurm.roles)");
  if (root["frontend"] && root["frontend"].IsMap() && root["frontend"]["node"])
    return at(file, root["frontend"]["node"], "frontend.node", "given",
              "none: the frontend runs on the head node");
  auto slurm = root["slurm"];
  if (!slurm || !slurm.IsMap())
    return bad(fmt::format("{}: slurm: {}; expected a mapping with head and roles", file,
                           slurm ? "not a mapping" : "missing"));
  for (auto it = slurm.begin(); it != slurm.end(); ++it) {
    auto k = it->first.as<std::string>();
    if (k != "head" && k != "roles" && k != "first_port" && k != "first_http_port")
      return at(file, it->first, "slurm." + k, "unknown key",
                "head, roles, first_port, first_http_port");
  }
  // Ports by slot: node k listens on first_port + k (and first_http_port + k); without
  // them the manifest's defaults apply (7800 + k; frontend.http_port + 1 + k).
  uint32_t first_port = 0, first_http_port = 0;
  for (auto [key, value] :
       {std::pair{"first_port", &first_port}, std::pair{"first_http_port", &first_http_port}}) {
    if (!slurm[key]) continue;
    auto v = read_count(file, slurm[key], std::string("slurm.") + key, 1);
    if (!v) return v.error();
    if (*v > 65535)
      return at(file, slurm[key], std::string("slurm.") + key, "above 65535", "a port");
    *value = *v;
  }
  auto head = slurm["head"];
  if (!head || !head.IsSequence())
    return bad(
        fmt::format("{}: slurm.head: {}; expected the head node's actors, e.g. [router, "
                    "supervisor, kv_store]",
                    file, head ? "not a list" : "missing"));
  struct role_spec {
    std::string name;
    YAML::Node actors;
    uint32_t count = 0;
    uint32_t share = 0;
    uint32_t nodes = 0;
  };
  std::vector<role_spec> roles;
  auto rs = slurm["roles"];
  if (rs && !rs.IsSequence())
    return at(file, rs, "slurm.roles", "not a list", "a list of {name, count or share, actors}");
  for (size_t i = 0; rs && i < rs.size(); ++i) {
    auto r = rs[i];
    auto field = fmt::format("slurm.roles[{}]", i);
    if (!r.IsMap()) return at(file, r, field, "not a mapping", "{name, count or share, actors}");
    for (auto it = r.begin(); it != r.end(); ++it) {
      auto k = it->first.as<std::string>();
      if (k != "name" && k != "count" && k != "share" && k != "actors")
        return at(file, it->first, field + "." + k, "unknown key", "name, count, share, actors");
    }
    role_spec s;
    s.actors = r["actors"];
    if (!s.actors || !s.actors.IsSequence() || s.actors.size() == 0)
      return at(file, s.actors ? s.actors : r, field + ".actors",
                s.actors ? "not a non-empty list" : "missing", "the actors of each node");
    if (r["count"].IsDefined() == r["share"].IsDefined())
      return at(file, r, field, "count and share both given or both missing",
                "exactly one of count: N (nodes) and share: N (a part of the rest)");
    if (r["count"]) {
      auto c = read_count(file, r["count"], field + ".count", 1);
      if (!c) return c.error();
      s.count = *c;
    } else {
      auto c = read_count(file, r["share"], field + ".share", 1);
      if (!c) return c.error();
      s.share = *c;
    }
    s.name = r["name"] ? r["name"].as<std::string>() : default_name(s.actors);
    if (s.name.empty() || !std::all_of(s.name.begin(), s.name.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
        }))
      return at(file, r["name"], field + ".name", fmt::format("'{}'", s.name),
                "a name of [A-Za-z0-9_-]+");
    for (const auto& o : roles)
      if (o.name == s.name)
        return at(file, r, field + ".name", fmt::format("'{}' is used by another role", s.name),
                  "distinct names (name: ...)");
    roles.push_back(std::move(s));
  }

  // Task slots, host by host; the first is the head's.
  std::vector<std::string> slots;
  for (size_t h = 0; h < alloc.hosts.size(); ++h)
    for (uint32_t t = 0; t < (h < alloc.tasks.size() ? alloc.tasks[h] : 1); ++t)
      slots.push_back(alloc.hosts[h]);
  if (slots.empty()) return bad("the allocation has no hosts");
  size_t rest = slots.size() - 1;
  size_t counted = 0, shares = 0, share_roles = 0;
  for (const auto& r : roles) {
    counted += r.count;
    shares += r.share;
    share_roles += r.share ? 1 : 0;
  }
  auto alloc_text = fmt::format("{} task slots on {} hosts", slots.size(), alloc.hosts.size());
  if (counted + share_roles > rest)
    return bad(
        fmt::format("{}: the template needs {} nodes (the head, {} by count and at least "
                    "one per share role), the allocation has {}",
                    file, 1 + counted + share_roles, counted, alloc_text));
  size_t left = rest - counted;
  if (left > 0 && share_roles == 0)
    return bad(
        fmt::format("{}: the template places {} nodes, the allocation has {}: add a role "
                    "with share: to take the rest, or ask Slurm for fewer tasks",
                    file, 1 + counted, alloc_text));
  // At least one slot per share role, the rest in proportion (largest remainder first).
  if (share_roles > 0) {
    size_t extra = left - share_roles;
    std::vector<std::pair<double, size_t>> remainders;
    size_t given = 0;
    for (size_t i = 0; i < roles.size(); ++i) {
      if (!roles[i].share) continue;
      double exact = static_cast<double>(extra) * roles[i].share / static_cast<double>(shares);
      auto whole = static_cast<uint32_t>(exact);
      roles[i].nodes = 1 + whole;
      given += whole;
      remainders.push_back({exact - whole, i});
    }
    std::stable_sort(remainders.begin(), remainders.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    for (size_t k = 0; given < extra; ++k, ++given)
      ++roles[remainders[k % remainders.size()].second].nodes;
  }
  for (auto& r : roles)
    if (r.count) r.nodes = r.count;

  slurm_manifest out;
  YAML::Node nodes(YAML::NodeType::Sequence);
  auto add_node = [&](const std::string& name, const std::string& host, const YAML::Node& actors) {
    YAML::Node n;
    n["name"] = yaml_str(name);
    n["address"] = yaml_str(host);
    auto k = static_cast<uint32_t>(nodes.size());
    if (first_port) n["port"] = first_port + k;
    if (first_http_port) n["http_port"] = first_http_port + k;
    n["actors"] = actors;
    nodes.push_back(n);
    out.nodes.push_back({name, host});
  };
  size_t slot = 0;
  add_node("head", slots[slot++], head);
  for (const auto& r : roles)
    for (uint32_t k = 0; k < r.nodes; ++k)
      add_node(fmt::format("{}{}", r.name, k), slots[slot++], r.actors);
  root.remove("slurm");
  root["nodes"] = nodes;
  root["frontend"]["node"] = yaml_str("head");
  // The manifest is written elsewhere (the launch's log folder): a relative model path
  // becomes absolute against the template's folder.
  fs::path base = fs::absolute(fs::path(file).parent_path());
  if (auto model = root["model"]; model.IsMap() && model["path"] && model["path"].IsScalar()) {
    fs::path p(model["path"].Scalar());
    if (p.is_relative()) model["path"] = yaml_str((base / p).lexically_normal().string());
  }
  std::string hosts_text;
  for (size_t h = 0; h < alloc.hosts.size(); ++h)
    hosts_text += fmt::format("{}{}x{}", h ? " " : "", alloc.hosts[h],
                              h < alloc.tasks.size() ? alloc.tasks[h] : 1);
  out.text = detail::yaml_text(
      {root}, fmt::format("# Made by tokenmill from the Slurm template {} for {} ({}).\n", file,
                          alloc_text, hosts_text));
  auto check = parse_manifest(out.text, file + " (as made for this allocation)", base.string(),
                              manifest_options{false});
  if (!check) return check.error();
  return out;
}

}  // namespace tokenmill

// `tokenmill node`, `tokenmill manifest check` and `tokenmill launch`: clusters from a host
// manifest (DESIGN.md §8).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include <spdlog/spdlog.h>

#include "apps/commands.hpp"
#include "apps/signals.hpp"
#include "cluster/node.hpp"
#include "cluster/restart_policy.hpp"
#include "cluster/security.hpp"
#include "cluster/slurm.hpp"
#include "common/clock.hpp"
#include "common/heap_release.hpp"
#include "frontend/api_keys.hpp"
#include "frontend/client.hpp"

extern char** environ;

namespace tokenmill::app {
namespace {

/// The last `lines` lines of a file.
std::string tail_of(const std::string& path, size_t lines) {
  std::ifstream in(path);
  std::vector<std::string> all;
  for (std::string l; std::getline(in, l);)
    all.push_back(l);
  std::string out;
  for (size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i)
    out += "    | " + all[i] + "\n";
  return out;
}

bool file_contains(const std::string& path, const std::string& needle) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str().find(needle) != std::string::npos;
}

/// A node process started by launch, and its restarts.
struct child {
  std::string node;
  std::string log;  ///< the current process's log
  pid_t pid = -1;
  bool joined = false;
  bool exited = false;
  int status = 0;
  // What a restart needs: the same command, the same stdin.
  std::vector<std::string> argv;
  std::string stdin_file;
  bool supervisor = false;  ///< runs the supervisor: cannot be restarted alone
  /// Every process of the node, the current one last (launcher's steady clock, ms).
  std::vector<node_life> lives;
  int64_t restart_at_ms = -1;  ///< a restart is due then (-1: none pending)
  uint32_t streak = 0;         ///< the pending or last restart's number in its streak
  uint32_t restarts = 0;       ///< processes started after the first
  bool rejoining = false;      ///< restarted, not yet ready
};

int64_t now_ms() {
  return now_ns() / 1'000'000;
}

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("was killed by signal {}", WTERMSIG(status));
  return "stopped";
}

/// Starts argv with stdout+stderr appended to `log` and stdin from `stdin_file` (or
/// /dev/null). Returns the pid or -1.
pid_t spawn_logged(const std::vector<std::string>& argv, const std::string& log,
                   const std::string& stdin_file) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, stdin_file.empty() ? "/dev/null" : stdin_file.c_str(),
                                   O_RDONLY, 0);
  // Truncate: a log folder reused from an earlier run must not show an old "ready" line.
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);  // children must not inherit our blocked signals
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  std::vector<char*> args;
  for (const auto& a : argv)
    args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &fa, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  return rc == 0 ? pid : -1;
}

/// Sends SIGTERM to every running child, waits up to `grace_s`, then SIGKILLs the rest.
void stop_children(std::vector<child>& kids, double grace_s) {
  for (auto& k : kids)
    if (!k.exited && k.pid > 0) kill(k.pid, SIGTERM);
  auto deadline = now_ns() + static_cast<int64_t>(grace_s * 1e9);
  for (;;) {
    bool running = false;
    for (auto& k : kids) {
      if (k.exited || k.pid <= 0) continue;
      if (waitpid(k.pid, &k.status, WNOHANG) == k.pid)
        k.exited = true;
      else
        running = true;
    }
    if (!running) return;
    if (now_ns() > deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (auto& k : kids)
    if (!k.exited && k.pid > 0) {
      std::fprintf(stderr, "launch: node %s did not stop within %.0f s; killing it\n",
                   k.node.c_str(), grace_s);
      kill(k.pid, SIGKILL);
      waitpid(k.pid, &k.status, 0);
      k.exited = true;
    }
}

/// One look at every node of a ready cluster: reaps the dead, restarts those whose backoff
/// has passed, reports the restarted that are ready again. Returns launch's exit code when
/// the cluster is over (no node left, or the supervisor's node died; every node stopped).
///
/// Only deaths that look like failures are restarted: a signal or a non-zero exit code. A
/// node that exits 0 was stopped on purpose (SIGTERM/SIGINT to it) and stays down. The
/// supervisor's node is never restarted: every other node leaves when it loses the
/// supervisor (cluster_node::supervisor_lost), so restarting it alone would bring back an
/// empty cluster; launch stops every node and exits 1 instead.
std::optional<int> serve_tick(std::vector<child>& kids, const restart_config& policy,
                              const std::string& log_dir) {
  size_t alive = 0;
  for (auto& k : kids) {
    if (!k.exited && waitpid(k.pid, &k.status, WNOHANG) == k.pid) {
      k.exited = true;
      k.rejoining = false;
      k.lives.back().died_ms = now_ms();
      std::printf("launch: node %s %s; last lines of %s:\n%s", k.node.c_str(),
                  describe_exit(k.status).c_str(), k.log.c_str(), tail_of(k.log, 5).c_str());
      if (k.supervisor) {
        std::printf(
            "launch: node %s ran the supervisor, without which no node stays (a restart of it "
            "alone would bring back an empty cluster); stopping every node\n",
            k.node.c_str());
        std::fflush(stdout);
        stop_children(kids, 10);
        std::printf("launch: the cluster is down\n");
        return 1;
      }
      if (WIFEXITED(k.status) && WEXITSTATUS(k.status) == 0) {
        std::printf("launch: node %s stopped cleanly (someone stopped it); not restarting it\n",
                    k.node.c_str());
      } else {
        auto d = decide_restart(k.lives, policy, now_ms());
        k.streak = d.streak;
        if (d.what != restart_decision::action::give_up) {
          k.restart_at_ms = d.at_ms;
          std::printf("launch: node %s restarts in %lld ms (restart %u of %u)\n", k.node.c_str(),
                      static_cast<long long>(d.delay_ms), d.streak, policy.max);
        } else if (policy.max == 0) {
          std::printf("launch: node %s stays down: restarts are off (restart: {max: 0})\n",
                      k.node.c_str());
        } else {
          std::printf("launch: node %s died %u times in a row; giving up on it (restart.max %u)\n",
                      k.node.c_str(), d.streak, policy.max);
        }
      }
      std::fflush(stdout);
    }
    if (k.exited && k.restart_at_ms >= 0 && now_ms() >= k.restart_at_ms) {
      k.restart_at_ms = -1;
      ++k.restarts;
      k.log = fmt::format("{}/{}.restart{}.log", log_dir, k.node, k.restarts);
      k.pid = spawn_logged(k.argv, k.log, k.stdin_file);
      k.lives.push_back({now_ms(), 0});
      if (k.pid < 0) {
        // As if it died at once: the policy decides about the next try.
        std::printf("launch: cannot restart node %s (%s)\n", k.node.c_str(), k.argv[0].c_str());
        k.lives.back().died_ms = now_ms();
        auto d = decide_restart(k.lives, policy, now_ms());
        k.streak = d.streak;
        if (d.what != restart_decision::action::give_up)
          k.restart_at_ms = d.at_ms;
        else
          std::printf("launch: giving up on node %s\n", k.node.c_str());
      } else {
        k.exited = false;
        k.rejoining = true;
        std::printf("launch: node %s restarting (pid %d, restart %u of %u), log %s\n",
                    k.node.c_str(), k.pid, k.streak, policy.max, k.log.c_str());
      }
      std::fflush(stdout);
    }
    if (k.rejoining && file_contains(k.log, "tokenmill node ready")) {
      k.rejoining = false;
      std::printf("launch: node %s rejoined %.2f s after it died (restart %u of %u)\n",
                  k.node.c_str(), (now_ms() - k.lives[k.lives.size() - 2].died_ms) / 1e3, k.streak,
                  policy.max);
      std::fflush(stdout);
    }
    if (!k.exited || k.restart_at_ms >= 0) ++alive;
  }
  if (alive == 0) {
    std::printf("launch: every node has exited\n");
    return 1;
  }
  return std::nullopt;
}

/// A tar archive (in `log_dir`, mode 0600) of the manifest and the security files node
/// `name` needs, at their paths relative to the manifest's folder, for an ssh node. A file
/// outside that folder is not sent (it must exist at its path on the host); launch says so.
result<std::string> ssh_bundle(const manifest& m, const std::string& manifest_abs,
                               const std::string& name, const std::string& log_dir) {
  namespace fs = std::filesystem;
  auto dir = fs::path(manifest_abs).parent_path();
  std::vector<std::string> files{fs::path(manifest_abs).filename().string()};
  std::vector<std::string> wanted;
  if (m.security.tls)
    wanted = {m.security.tls->ca, m.security.tls->cert_for(name), m.security.tls->key_for(name)};
  if (!m.security.secret_file.empty()) wanted.push_back(m.security.secret_file);
  for (const auto& f : wanted) {
    auto rel = fs::absolute(f).lexically_normal().lexically_relative(dir);
    if (rel.empty() || rel.is_absolute() || *rel.begin() == "..") {
      std::printf(
          "launch: node %s (ssh): %s is outside the manifest's folder and is not sent; "
          "it must exist on that host\n",
          name.c_str(), f.c_str());
      continue;
    }
    std::error_code ec;
    if (!fs::exists(f, ec))
      return error_info{errc::invalid_request, fmt::format("the security file {} is missing", f)};
    files.push_back(rel.string());
  }
  auto bundle = fmt::format("{}/{}.ssh-bundle.tar", log_dir, name);
  int fd = ::open(bundle.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0)
    return error_info{errc::unavailable,
                      fmt::format("cannot create {}: {}", bundle, std::strerror(errno))};
  ::fchmod(fd, 0600);
  ::close(fd);
  std::vector<std::string> argv{"tar", "-c", "-f", bundle, "-C", dir.string(), "--"};
  argv.insert(argv.end(), files.begin(), files.end());
  auto log = bundle + ".log";
  pid_t pid = spawn_logged(argv, log, "");
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return error_info{errc::unavailable,
                      fmt::format("tar could not pack the node's files (see {})", log)};
  return bundle;
}

std::string self_exe() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? "tokenmill" : p.string();
}

/// The manifest a Slurm template makes of an allocation (cluster/slurm.hpp).
result<slurm_manifest> slurm_manifest_for(const std::string& tmpl, const std::string& nodelist,
                                          const std::string& tasks) {
  if (nodelist.empty())
    return error_info{errc::invalid_request,
                      "no hosts: SLURM_JOB_NODELIST is not set (run inside a Slurm allocation: "
                      "sbatch, salloc) and --nodelist was not given"};
  auto alloc = slurm_allocation_from(nodelist, tasks);
  if (!alloc) return alloc.error();
  std::ifstream in(tmpl);
  if (!in)
    return error_info{errc::invalid_request,
                      fmt::format("{}: cannot read the template: {}", tmpl, std::strerror(errno))};
  std::stringstream text;
  text << in.rdbuf();
  return manifest_from_slurm(text.str(), tmpl, *alloc);
}

result<void> write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  if (!out)
    return error_info{errc::invalid_request,
                      fmt::format("cannot write {}: {}", path, std::strerror(errno))};
  return {};
}

}  // namespace

command add_node(CLI::App& app) {
  struct opts {
    std::string manifest;
    std::string name;
    double join_timeout_s = 30;
  };
  auto o = std::make_shared<opts>();
  app.add_option("--manifest", o->manifest, "Host manifest (YAML)")->required();
  app.add_option("--name", o->name, "This node's name in the manifest")->required();
  app.add_option("--join-timeout", o->join_timeout_s,
                 "Seconds to keep trying to reach the supervisor's node")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  return [o]() -> int {
    // The node binds its own ports below; checking them here would trip over ourselves.
    auto m = load_manifest(o->manifest, manifest_options{false});
    if (!m) {
      std::fprintf(stderr, "tokenmill node: invalid manifest:\n%s\n", m.error().message.c_str());
      return 2;
    }
    auto sigs = block_stop_signals();
    sigaddset(&sigs, SIGHUP);  // reloads the frontend's API keys
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    node_options nopts;
    nopts.join_timeout_s = o->join_timeout_s;
    // A stop signal while we are still looking for the supervisor ends the wait at once.
    nopts.cancelled = [] {
      sigset_t pending;
      sigpending(&pending);
      return sigismember(&pending, SIGINT) == 1 || sigismember(&pending, SIGTERM) == 1;
    };
    auto node = cluster_node::start(*m, o->name, nopts);
    if (!node) {
      std::fprintf(stderr, "tokenmill node %s: %s\n", o->name.c_str(),
                   node.error().message.c_str());
      return 1;
    }
    std::printf("tokenmill node ready: %s\n", (*node)->summary().c_str());
    std::fflush(stdout);
    int code = 0;
    // Free heap memory goes back to the OS every few seconds (common/heap_release.hpp):
    // without it glibc's arenas keep what traffic freed and RSS creeps up.
    heap_release_schedule release(static_cast<int64_t>(heap_release_interval_s * 1e9));
    for (;;) {
      timespec tick{0, 100'000'000};
      int sig = sigtimedwait(&sigs, nullptr, &tick);
      if (release.due(now_ns())) {
        auto r = release_free_heap();
        spdlog::debug("node {}: released free heap: RSS {:.1f} -> {:.1f} MiB in {} us", o->name,
                      static_cast<double>(r.rss_before_bytes) / (1 << 20),
                      static_cast<double>(r.rss_after_bytes) / (1 << 20), r.took_ns / 1000);
      }
      if (sig == SIGHUP) {
        auto r = (*node)->reload_api_keys();
        if (r)
          std::printf("tokenmill node %s: SIGHUP: %s\n", o->name.c_str(), r->c_str());
        else
          spdlog::warn("node {}: SIGHUP: {}", o->name, r.error().message);
        std::fflush(stdout);
        continue;
      }
      if (sig == SIGINT || sig == SIGTERM) {
        std::printf("tokenmill node %s: %s received, shutting down\n", o->name.c_str(),
                    sig == SIGINT ? "SIGINT" : "SIGTERM");
        break;
      }
      if ((*node)->supervisor_lost()) {
        std::printf("tokenmill node %s: the supervisor is gone, shutting down\n", o->name.c_str());
        code = 1;
        break;
      }
    }
    std::fflush(stdout);
    // Shutdown is bounded: in about 1 of 200 runs CAF 0.17's actor system did not finish
    // tearing down (a detached middleman thread waiting to be destroyed). Do not let a
    // stopping node hang its launcher: give it 3 s, then exit anyway.
    std::thread([code] {
      std::this_thread::sleep_for(std::chrono::seconds(3));
      std::fprintf(stderr, "tokenmill node: shutdown did not finish within 3 s; exiting\n");
      std::_Exit(code);
    }).detach();
    (*node)->stop();
    node->reset();
    return code;
  };
}

command add_manifest(CLI::App& app) {
  auto* check = app.add_subcommand("check", "Validate a manifest and print the resolved cluster");
  auto* slurm = app.add_subcommand(
      "from-slurm",
      "Inside a Slurm allocation: the host manifest a template makes of its hosts and tasks");
  app.require_subcommand(1);
  auto file = std::make_shared<std::string>();
  auto ports = std::make_shared<bool>(true);
  check->add_option("FILE", *file, "Host manifest (YAML)")->required();
  check->add_flag("!--no-port-check", *ports, "Do not check that local ports are free");
  struct slurm_opts {
    std::string tmpl;
    std::string out;
    std::string nodelist;
    std::string tasks;
  };
  auto so = std::make_shared<slurm_opts>();
  if (const char* v = std::getenv("SLURM_JOB_NODELIST")) so->nodelist = v;
  if (const char* v = std::getenv("SLURM_TASKS_PER_NODE")) so->tasks = v;
  slurm->add_option("TEMPLATE", so->tmpl, "Slurm template: a manifest with a slurm section")
      ->required();
  slurm->add_option("-o,--output", so->out, "Write the manifest here (default: stdout)");
  slurm->add_option("--nodelist", so->nodelist,
                    "Hosts in hostlist syntax (default: $SLURM_JOB_NODELIST)");
  slurm->add_option("--tasks-per-node", so->tasks,
                    "Tasks per host, e.g. 2(x3),1 (default: $SLURM_TASKS_PER_NODE, else 1 each)");
  return [check, file, ports, so]() -> int {
    if (check->parsed()) {
      auto m = load_manifest(*file, manifest_options{*ports});
      if (!m) {
        std::fprintf(stderr, "%s\n", m.error().message.c_str());
        return 1;
      }
      std::printf("%s", describe(*m).c_str());
      std::printf("manifest hash %016llx\n", static_cast<unsigned long long>(manifest_hash(*m)));
      return 0;
    }
    auto made = slurm_manifest_for(so->tmpl, so->nodelist, so->tasks);
    if (!made) {
      std::fprintf(stderr, "tokenmill manifest from-slurm: %s\n", made.error().message.c_str());
      return 2;
    }
    if (so->out.empty()) {
      std::printf("%s", made->text.c_str());
      return 0;
    }
    if (auto w = write_file(so->out, made->text); !w) {
      std::fprintf(stderr, "tokenmill manifest from-slurm: %s\n", w.error().message.c_str());
      return 1;
    }
    std::printf("from-slurm: %zu nodes written to %s\n", made->nodes.size(), so->out.c_str());
    return 0;
  };
}

command add_launch(CLI::App& app) {
  struct opts {
    std::string manifest;
    std::string slurm;
    std::string log_dir;
    double ready_timeout_s = 60;
  };
  auto o = std::make_shared<opts>();
  auto* manifest_opt = app.add_option("MANIFEST", o->manifest, "Host manifest (YAML)");
  app.add_option("--slurm", o->slurm,
                 "Inside a Slurm job: make the manifest from this template and the job's hosts "
                 "and tasks (see `manifest from-slurm`), start every node with srun")
      ->excludes(manifest_opt);
  app.add_option("--log-dir", o->log_dir, "Where node logs go (default: a new temporary folder)");
  app.add_option("--ready-timeout", o->ready_timeout_s, "Seconds until every node must be ready")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  return [o]() -> int {
    if (o->manifest.empty() == o->slurm.empty()) {
      std::fprintf(stderr, "tokenmill launch: give a MANIFEST or --slurm TEMPLATE\n");
      return 2;
    }
    if (o->log_dir.empty()) {
      char tmpl[] = "/tmp/tokenmill-launch-XXXXXX";
      if (!mkdtemp(tmpl)) {
        std::perror("launch: mkdtemp");
        return 1;
      }
      o->log_dir = tmpl;
    }
    std::filesystem::create_directories(o->log_dir);
    bool slurm = !o->slurm.empty();
    if (slurm) {
      // The manifest this allocation makes, written beside the logs; every node gets it on
      // its stdin through srun, so the hosts need not share a file system.
      const char* nodelist = std::getenv("SLURM_JOB_NODELIST");
      const char* tasks = std::getenv("SLURM_TASKS_PER_NODE");
      auto made = slurm_manifest_for(o->slurm, nodelist ? nodelist : "", tasks ? tasks : "");
      if (!made) {
        std::fprintf(stderr, "tokenmill launch: %s\n", made.error().message.c_str());
        return 2;
      }
      o->manifest = o->log_dir + "/manifest.yaml";
      if (auto w = write_file(o->manifest, made->text); !w) {
        std::fprintf(stderr, "tokenmill launch: %s\n", w.error().message.c_str());
        return 1;
      }
      std::printf("launch: %zu nodes from Slurm job %s (%s), manifest %s\n", made->nodes.size(),
                  std::getenv("SLURM_JOB_ID") ? std::getenv("SLURM_JOB_ID") : "?", nodelist,
                  o->manifest.c_str());
    }
    auto m = load_manifest(o->manifest);
    if (!m) {
      std::fprintf(stderr, "tokenmill launch: invalid manifest:\n%s\n", m.error().message.c_str());
      return 2;
    }
    if (m->security.tls && m->security.tls->generated) {
      // tls: auto: the cluster's CA and a certificate per node, created once, beside the
      // manifest; later launches keep them.
      std::vector<std::string> names;
      for (const auto& n : m->nodes)
        names.push_back(n.name);
      auto made = create_cluster_certs(m->security.certs_dir, names);
      if (!made) {
        std::fprintf(stderr, "tokenmill launch: security.tls auto: %s\n",
                     made.error().message.c_str());
        return 2;
      }
      if (!made->created.empty())
        std::printf("launch: created %zu certificate, key and secret files in %s\n",
                    made->created.size(), m->security.certs_dir.c_str());
    }
    std::string manifest_abs = std::filesystem::absolute(o->manifest).string();
    auto sigs = block_stop_signals();
    auto t0 = now_ns();
    std::vector<child> kids;
    // The supervisor's node first: the others connect to it (and retry until it is up).
    std::vector<const manifest_node*> order;
    for (const auto& n : m->nodes)
      if (n.count(role::supervisor)) order.push_back(&n);
    for (const auto& n : m->nodes)
      if (!n.count(role::supervisor)) order.push_back(&n);
    std::string exe = self_exe();
    for (const auto* n : order) {
      child k;
      k.node = n->name;
      k.log = fmt::format("{}/{}.log", o->log_dir, n->name);
      std::vector<std::string> argv;
      std::string stdin_file;
      if (slurm) {
        // One job step per node, on its host; --overlap lets the steps share the job's CPUs
        // and memory (they run side by side for the whole job). srun forwards SIGTERM to the
        // node, and Slurm ends every step when the job ends or is cancelled.
        std::string remote =
            fmt::format("/tmp/tokenmill-{}-{}-{}.yaml", m->cluster, n->name,
                        std::getenv("SLURM_JOB_ID") ? std::getenv("SLURM_JOB_ID") : "0");
        argv = {"srun",
                "--nodes=1",
                "--ntasks=1",
                "--overlap",
                "--kill-on-bad-exit=0",
                "--job-name=tokenmill-" + n->name,
                "--nodelist=" + n->address,
                "/bin/sh",
                "-c",
                fmt::format("cat > '{0}' && exec '{1}' node --manifest '{0}' --name '{2}'", remote,
                            exe, n->name)};
        stdin_file = manifest_abs;
      } else if (!n->ssh.empty() && (m->security.tls || !m->security.secret_file.empty())) {
        // Remote with TLS files or a secret: the manifest and this node's files travel on
        // stdin as a tar archive, unpacked into a fresh private folder on the host.
        auto bundle = ssh_bundle(*m, manifest_abs, n->name, o->log_dir);
        if (!bundle) {
          std::fprintf(stderr, "launch: node %s: %s\n", n->name.c_str(),
                       bundle.error().message.c_str());
          stop_children(kids, 5);
          return 1;
        }
        argv = {"ssh", "-o", "BatchMode=yes", n->ssh,
                fmt::format("umask 077 && d=$(mktemp -d /tmp/tokenmill-{0}-XXXXXX) && tar -x -C "
                            "\"$d\" && exec tokenmill node --manifest \"$d/{1}\" --name {0}",
                            n->name, std::filesystem::path(manifest_abs).filename().string())};
        stdin_file = *bundle;
      } else if (!n->ssh.empty()) {
        // Remote: the manifest travels on stdin, tokenmill must be on the remote PATH.
        std::string remote = fmt::format("/tmp/tokenmill-{}.yaml", m->cluster);
        argv = {"ssh", "-o", "BatchMode=yes", n->ssh,
                fmt::format("cat > {0} && exec tokenmill node --manifest {0} --name {1}", remote,
                            n->name)};
        stdin_file = manifest_abs;
      } else {
        argv = {exe, "node", "--manifest", manifest_abs, "--name", n->name};
      }
      k.argv = argv;
      k.stdin_file = stdin_file;
      k.supervisor = n->count(role::supervisor) > 0;
      k.lives.push_back({now_ms(), 0});
      k.pid = spawn_logged(argv, k.log, stdin_file);
      if (k.pid < 0) {
        std::fprintf(stderr, "launch: cannot start node %s (%s)\n", n->name.c_str(),
                     argv[0].c_str());
        stop_children(kids, 5);
        return 1;
      }
      std::string via = slurm            ? ", via srun on " + n->address
                        : n->ssh.empty() ? std::string()
                                         : ", via ssh " + n->ssh;
      std::printf("launch: node %-10s starting (pid %d%s), log %s\n", n->name.c_str(), k.pid,
                  via.c_str(), k.log.c_str());
      kids.push_back(std::move(k));
    }
    std::fflush(stdout);
    auto deadline = t0 + static_cast<int64_t>(o->ready_timeout_s * 1e9);
    auto fail_start = [&](const std::string& why) {
      std::fprintf(stderr, "launch: %s\n", why.c_str());
      stop_children(kids, 5);
      return 1;
    };
    // Phase 1: every node process reports ready (it joined the supervisor).
    size_t joined = 0;
    while (joined < kids.size()) {
      for (auto& k : kids) {
        if (k.joined) continue;
        if (waitpid(k.pid, &k.status, WNOHANG) == k.pid) {
          k.exited = true;
          return fail_start(fmt::format("node {} {} before it was ready; last lines of {}:\n{}",
                                        k.node, describe_exit(k.status), k.log,
                                        tail_of(k.log, 20)));
        }
        if (file_contains(k.log, "tokenmill node ready")) {
          k.joined = true;
          ++joined;
          std::printf("launch: node %-10s joined (%zu/%zu) after %.2f s\n", k.node.c_str(), joined,
                      kids.size(), (now_ns() - t0) / 1e9);
          std::fflush(stdout);
        }
      }
      timespec tick{0, 20'000'000};
      if (int sig = sigtimedwait(&sigs, nullptr, &tick); sig == SIGINT || sig == SIGTERM)
        return fail_start("interrupted while starting; stopping every node");
      if (now_ns() > deadline) {
        std::string pending;
        for (auto& k : kids)
          if (!k.joined)
            pending += fmt::format("\n  {} (log {}):\n{}", k.node, k.log, tail_of(k.log, 10));
        return fail_start(
            fmt::format("not every node was ready within {} s:{}", o->ready_timeout_s, pending));
      }
    }
    // Phase 2: the cluster reports ready (every actor registered) through the frontend.
    std::string host = m->frontend.host;
    if (host == "0.0.0.0") host = "127.0.0.1";
    bool ready = false;
    std::string last;
    // With API keys on the frontend, launch asks with the first key of its file (or
    // $TOKENMILL_API_KEY); with TLS it trusts the frontend's own certificate.
    client_options copts;
    copts.api_key = api_key_or_env("");
    if (!m->frontend.api_key_file.empty()) {
      auto keys = read_api_key_file(m->frontend.api_key_file);
      if (!keys) return fail_start("frontend.api_key_file: " + keys.error().message);
      copts.api_key = keys->front();
    }
    copts.tls_ca = m->frontend.tls_cert;
    while (!ready && now_ns() < deadline) {
      auto c = client::connect(host, m->frontend.rpc_port, 2, copts);
      if (c) {
        auto st = (*c)->status(2);
        if (st && st->ready) ready = true;
        if (!st) last = st.error().message;
      } else {
        last = c.error().message;
      }
      if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!ready) return fail_start("the cluster did not report ready: " + last);
    std::printf("tokenmill cluster %s ready after %.2f s: rpc=%s:%u nodes=%zu logs=%s\n",
                m->cluster.c_str(), (now_ns() - t0) / 1e9, host.c_str(), m->frontend.rpc_port,
                kids.size(), o->log_dir.c_str());
    std::fflush(stdout);
    // Serve until told to stop. A node that dies from now on is restarted as the manifest's
    // restart policy says (the cluster serves on without it meanwhile); see serve_tick.
    for (;;) {
      timespec tick{0, 20'000'000};
      int sig = sigtimedwait(&sigs, nullptr, &tick);
      if (sig == SIGINT || sig == SIGTERM) {
        std::printf("launch: %s received, stopping %zu nodes\n",
                    sig == SIGINT ? "SIGINT" : "SIGTERM", kids.size());
        std::fflush(stdout);
        break;
      }
      if (auto code = serve_tick(kids, m->restart, o->log_dir)) return *code;
    }
    stop_children(kids, 10);
    std::printf("launch: stopped\n");
    return 0;
  };
}

}  // namespace tokenmill::app

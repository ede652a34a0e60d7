// Over 600 lines: the parent, its forked receiver and their control channel are one protocol.
// `tokenmill bench-transfer`: the UCX KV transport between two processes on this host. The
// command forks a receiver child (its own ucx_transport and registered pool) and writes
// blocks into it from the parent, `window` writes in flight, for a list of block sizes.
// Baselines on the same sizes: single-thread memcpy (shm) or ucx_perftest put bandwidth
// over loopback tcp.
#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <spdlog/spdlog.h>

#include "apps/commands.hpp"
#include "apps/perftest_baseline.hpp"
#include "common/clock.hpp"
#include "common/stats.hpp"
#include "transport/ucx_transport.hpp"

namespace tokenmill::app {
namespace {

constexpr uint64_t kib = 1024, mib = 1024 * 1024;
/// Each side's registered pool is at most this big; larger sizes × window use fewer slots.
constexpr uint64_t max_pool_bytes = 256 * mib;

struct bench_transfer_opts {
  std::string transport = "shm";
  uint32_t window = 16;
  double seconds = 1.0;
  std::vector<std::string> sizes;  ///< e.g. 16K, 1M, 65536
  bool json = false;
  bool peer_errors = false;  ///< endpoints with UCP_ERR_HANDLING_MODE_PEER, even on one host
  bool busy_poll = false;    ///< both sides spin on their UCP worker, as ucx_perftest does
};

double loadavg_1min() {
  std::ifstream in("/proc/loadavg");
  double l = -1;
  in >> l;
  return in ? l : -1;
}

uint32_t usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return std::thread::hardware_concurrency();
  return static_cast<uint32_t>(CPU_COUNT(&set));
}

/// "16K", "4M", "1G" or plain bytes; 0 when unparsable.
uint64_t parse_size(const std::string& s) {
  if (s.empty()) return 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  std::string suffix(end);
  if (suffix.empty() || suffix == "B") return v;
  if (suffix == "K" || suffix == "k" || suffix == "KiB") return v * kib;
  if (suffix == "M" || suffix == "m" || suffix == "MiB") return v * mib;
  if (suffix == "G" || suffix == "g" || suffix == "GiB") return v * 1024 * mib;
  return 0;
}

std::string size_name(uint64_t b) {
  if (b % mib == 0) return fmt::format("{} MiB", b / mib);
  if (b % kib == 0) return fmt::format("{} KiB", b / kib);
  return fmt::format("{} B", b);
}

/// 64-bit FNV-1a over 8-byte words (the tail byte by byte).
uint64_t fnv1a64(const std::byte* p, size_t n) {
  uint64_t h = 14695981039346656037ull;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 1099511628211ull;
  }
  for (; i < n; ++i)
    h = (h ^ static_cast<uint8_t>(p[i])) * 1099511628211ull;
  return h;
}

/// Fills `n` bytes with a pattern that depends on `seed` (a new one for every block size, so
/// that stale data from the previous size cannot pass the check).
void fill_pattern(std::byte* p, size_t n, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(p + i, &x, 8);
  }
  for (; i < n; ++i)
    p[i] = static_cast<std::byte>(i);
}

/// Page-aligned anonymous memory, touched so that page faults are not timed.
struct mapped {
  std::byte* p = nullptr;
  size_t n = 0;
  explicit mapped(size_t bytes) : n(bytes) {
    void* m = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      n = 0;
      return;
    }
    p = static_cast<std::byte*>(m);
    std::memset(p, 0, n);
  }
  ~mapped() {
    if (p) munmap(p, n);
  }
  mapped(const mapped&) = delete;
  mapped& operator=(const mapped&) = delete;
  std::span<std::byte> span() const { return {p, n}; }
};

// --- control channel (a socketpair between parent and child) -----------------------------

bool send_all(int fd, const void* data, size_t n) {
  auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool recv_all(int fd, void* data, size_t n) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

template <class T>
bool send_pod(int fd, T v) {
  return send_all(fd, &v, sizeof(v));
}
template <class T>
bool recv_pod(int fd, T& v) {
  return recv_all(fd, &v, sizeof(v));
}

bool send_bytes(int fd, const std::vector<uint8_t>& b) {
  return send_pod(fd, static_cast<uint32_t>(b.size())) && send_all(fd, b.data(), b.size());
}
bool recv_bytes(int fd, std::vector<uint8_t>& b) {
  uint32_t n = 0;
  if (!recv_pod(fd, n) || n > (64u << 20)) return false;
  b.resize(n);
  return recv_all(fd, b.data(), n);
}

/// Child → parent hello: status byte ('D' descriptor follows, 'E' error text follows).
bool send_descriptor(int fd, const pool_descriptor& d, const std::string& tls) {
  std::vector<uint8_t> t(tls.begin(), tls.end());
  std::vector<uint8_t> host(d.host.begin(), d.host.end());
  return send_pod(fd, 'D') && send_pod(fd, d.owner) && send_pod(fd, d.block_bytes) &&
         send_pod(fd, d.num_blocks) && send_bytes(fd, d.remote_key) &&
         send_bytes(fd, d.worker_address) && send_bytes(fd, host) && send_bytes(fd, t);
}

void send_error(int fd, const std::string& msg) {
  std::vector<uint8_t> t(msg.begin(), msg.end());
  (void)(send_pod(fd, 'E') && send_bytes(fd, t));
}

/// Parent → child requests.
enum : char { req_hash = 'H', req_quit = 'Q' };

/// Creates a ucx_transport; for shm, when the configured UCX_TLS fails, retries with UCX's
/// default transport selection. `tls` is what ended up in effect.
result<std::shared_ptr<ucx_transport>> create_transport(bool shm, std::string& tls) {
  const char* env = std::getenv("UCX_TLS");
  tls = env ? env : "default";
  ucx_config cfg;
  // TOKENMILL_BENCH_PEER_ERRORS (set by --peer-errors before the fork): endpoints report a
  // dead peer, which keeps UCX 1.13 off its shared-memory transports.
  // TOKENMILL_BENCH_BUSY_POLL (set by --busy-poll before the fork): both progress threads
  // spin instead of sleeping on the worker's event fd.
  cfg.busy_poll = std::getenv("TOKENMILL_BENCH_BUSY_POLL") != nullptr;
  if (std::getenv("TOKENMILL_BENCH_PEER_ERRORS") != nullptr) {
    cfg.peer_error_handling = true;
    cfg.same_host_shared_memory = false;
  }
  auto t = ucx_transport::create(cfg);
  if (!t && shm && env) {
    unsetenv("UCX_TLS");
    tls = "default";
    t = ucx_transport::create(cfg);
  }
  return t;
}

/// The receiver: registers `pool_bytes`, sends its descriptor, answers hash requests until
/// told to quit. Never returns.
[[noreturn]] void run_child(int fd, bool shm, uint64_t pool_bytes, uint64_t block_bytes) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) _exit(3);
  int rc = 0;
  {
    mapped pool(pool_bytes);
    std::string tls;
    auto t = pool.p ? create_transport(shm, tls)
                    : result<std::shared_ptr<ucx_transport>>(
                          error_info{errc::unavailable, "cannot allocate the receive pool"});
    if (!t) {
      send_error(fd, t.error().message);
      _exit(2);
    }
    auto d = (*t)->register_pool(2, pool.span(), block_bytes);
    if (d.num_blocks == 0) {
      send_error(fd, "register_pool failed (ucp_mem_map)");
      _exit(2);
    }
    if (!send_descriptor(fd, d, tls)) _exit(2);
    for (;;) {
      char req = 0;
      if (!recv_pod(fd, req)) {
        rc = 1;  // parent gone
        break;
      }
      if (req == req_quit) break;
      if (req != req_hash) {
        rc = 1;
        break;
      }
      uint64_t off = 0, len = 0;
      if (!recv_pod(fd, off) || !recv_pod(fd, len)) {
        rc = 1;
        break;
      }
      uint64_t h = off + len <= pool.n ? fnv1a64(pool.p + off, len) : 0;
      if (!send_pod(fd, h)) {
        rc = 1;
        break;
      }
    }
  }
  _exit(rc);
}

/// Kills and reaps the child on every exit path.
struct child_guard {
  pid_t pid = -1;
  int fd = -1;
  ~child_guard() { stop(false); }
  /// Asks the child to quit (graceful), waits up to 2 s, then kills it.
  void stop(bool graceful) {
    if (pid <= 0) return;
    if (graceful && fd >= 0) send_pod(fd, req_quit);
    int64_t deadline = now_ns() + (graceful ? 2'000'000'000 : 0);
    int status = 0;
    for (;;) {
      pid_t r = waitpid(pid, &status, WNOHANG);
      if (r == pid || (r < 0 && errno != EINTR)) break;
      if (now_ns() >= deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        break;
      }
      usleep(2000);
    }
    pid = -1;
    if (fd >= 0) close(fd);
    fd = -1;
  }
};

struct size_result {
  uint64_t block_bytes = 0;
  uint32_t slots = 0;  ///< distinct blocks rotated through (window, capped by the pool)
  double gbps = 0;
  double latency_us_p50 = 0;
  uint64_t blocks = 0;
  bool verified = false;
  std::optional<double> baseline_gbps;
  std::string baseline_error;
};

/// Keeps `window` single-block writes in flight for `seconds` (and at least 32 blocks).
/// Fills `r` or returns an error message.
std::string measure(ucx_transport& t, const mapped& src, pool_descriptor peer, uint64_t size,
                    uint32_t window, double seconds, size_result& r) {
  const uint32_t slots =
      static_cast<uint32_t>(std::min<uint64_t>(window, std::min(src.n, max_pool_bytes) / size));
  const uint64_t peer_bytes = peer.block_bytes * peer.num_blocks;
  peer.block_bytes = size;
  peer.num_blocks = static_cast<uint32_t>(peer_bytes / size);
  std::span<const std::byte> local(src.p, static_cast<size_t>(slots) * size);
  r.block_bytes = size;
  r.slots = slots;

  std::mutex mu;
  std::condition_variable cv;
  std::vector<bool> busy(slots, false);
  uint32_t in_flight = 0;
  std::string error;
  std::vector<double> lat;

  auto submit = [&](uint64_t i, bool timed) {
    block_id b = static_cast<block_id>(i % slots);
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return !busy[b] || !error.empty(); });
      if (!error.empty()) return false;
      busy[b] = true;
      ++in_flight;
    }
    int64_t t0 = now_ns();
    t.write(local, size, std::span<const block_id>(&b, 1), peer, std::span<const block_id>(&b, 1),
            [&, b, t0, timed](error_info e, kv_payload) {
              double us = (now_ns() - t0) / 1e3;
              std::lock_guard lock(mu);
              if (e && error.empty()) error = e.message;
              if (timed) lat.push_back(us);
              busy[b] = false;
              --in_flight;
              cv.notify_all();
            });
    return true;
  };
  auto drain = [&] {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return in_flight == 0; });
  };

  // Warm-up: connects the endpoint (one write alone first), touches the peer's pages.
  submit(0, false);
  drain();
  if (!error.empty()) return error;
  for (uint64_t i = 1; i < 2 * slots; ++i)
    if (!submit(i, false)) break;
  drain();
  if (!error.empty()) return error;

  const int64_t t0 = now_ns();
  const int64_t until = t0 + static_cast<int64_t>(seconds * 1e9);
  uint64_t n = 0;
  while (n < 32 || now_ns() < until) {
    if (!submit(n, true)) break;
    ++n;
  }
  drain();
  const double wall = (now_ns() - t0) / 1e9;
  if (!error.empty()) return error;
  r.blocks = n;
  r.gbps = static_cast<double>(n * size) / wall / 1e9;
  r.latency_us_p50 = median(lat);
  return {};
}

/// Single-thread memcpy between two buffers of `region` bytes, rotating through their
/// blocks (fresh lines, far beyond the caches when the region allows it).
double memcpy_gbps(std::byte* dst, const std::byte* src, uint64_t region, uint64_t size,
                   double seconds) {
  const uint64_t slots = std::max<uint64_t>(1, region / size);
  for (uint64_t i = 0; i < std::min<uint64_t>(slots, 4); ++i)
    std::memcpy(dst + i * size, src + i * size, size);  // warm-up
  const int64_t t0 = now_ns();
  const int64_t until = t0 + static_cast<int64_t>(seconds * 1e9);
  uint64_t n = 0;
  while (n < 32 || now_ns() < until) {
    for (int k = 0; k < 8; ++k, ++n) {
      uint64_t s = n % slots;
      std::memcpy(dst + s * size, src + s * size, size);
    }
    asm volatile("" : : "r"(dst) : "memory");
  }
  return static_cast<double>(n * size) / ((now_ns() - t0) / 1e9) / 1e9;
}

std::string fmt_opt(const std::optional<double>& v, const char* f) {
  return v ? fmt::format(fmt::runtime(f), *v) : std::string("-");
}

int fail(const std::string& msg) {
  std::fprintf(stderr, "tokenmill bench-transfer: %s\n", msg.c_str());
  return 1;
}

/// Forks the receiver with UCX_TLS=`tls_env` (unset when empty), writes every size into it,
/// reaps it. An error message, or empty; `unreachable` when the first connection failed.
std::string run_transfers(const bench_transfer_opts& o, const std::vector<uint64_t>& sizes,
                          uint64_t pool_bytes, uint64_t largest, const std::string& tls_env,
                          std::vector<size_result>& results, std::string& tls, bool& unreachable,
                          kv_transport_stats& sender) {
  const bool shm = o.transport == "shm";
  // UCX_TLS before any UCX context, in both processes; fork before any UCX object.
  if (tls_env.empty())
    unsetenv("UCX_TLS");
  else
    setenv("UCX_TLS", tls_env.c_str(), 1);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return std::string("socketpair failed");
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) return std::string("fork failed");
  if (pid == 0) {
    close(sv[0]);
    run_child(sv[1], shm, pool_bytes, largest);
  }
  close(sv[1]);
  child_guard child{pid, sv[0]};
  const int fd = sv[0];

  // The child's descriptor.
  char tag = 0;
  if (!recv_pod(fd, tag)) return std::string("the receiver process died before it was ready");
  if (tag == 'E') {
    std::vector<uint8_t> m;
    recv_bytes(fd, m);
    return std::string("receiver: " + std::string(m.begin(), m.end()));
  }
  pool_descriptor peer;
  std::vector<uint8_t> child_tls, host;
  if (tag != 'D' || !recv_pod(fd, peer.owner) || !recv_pod(fd, peer.block_bytes) ||
      !recv_pod(fd, peer.num_blocks) || !recv_bytes(fd, peer.remote_key) ||
      !recv_bytes(fd, peer.worker_address) || !recv_bytes(fd, host) || !recv_bytes(fd, child_tls))
    return std::string("the receiver process died while sending its pool descriptor");
  peer.host.assign(host.begin(), host.end());

  {
    mapped src(pool_bytes);
    if (!src.p) return std::string("cannot allocate the source pool");
    auto t = create_transport(shm, tls);
    if (!t) return std::string("UCX cannot start: " + t.error().message);
    if ((*t)->register_pool(1, src.span(), largest).num_blocks == 0)
      return std::string("register_pool failed for the source pool (ucp_mem_map)");
    for (uint64_t size : sizes) {
      size_result r;
      const uint64_t region = std::min<uint64_t>(o.window, pool_bytes / size) * size;
      fill_pattern(src.p, region, size);
      std::string err = measure(**t, src, peer, size, o.window, o.seconds, r);
      if (!err.empty()) {
        unreachable = results.empty() && err.find("unreachable") != std::string::npos;
        return fmt::format("{} blocks: {} (is the receiver alive?)", size_name(size), err);
      }
      uint64_t h = 0;
      if (!send_pod(fd, req_hash) || !send_pod(fd, uint64_t{0}) || !send_pod(fd, region) ||
          !recv_pod(fd, h))
        return std::string("the receiver process died");
      r.verified = h == fnv1a64(src.p, region);
      if (!o.json)
        std::fprintf(stderr, "%s: %.2f GB/s%s\n", size_name(size).c_str(), r.gbps,
                     r.verified ? "" : " (content MISMATCH)");
      results.push_back(r);
    }
    sender = (*t)->stats();
  }  // the sender's transport goes before the receiver
  child.stop(true);
  return {};
}

}  // namespace

command add_bench_transfer(CLI::App& app) {
  auto o = std::make_shared<bench_transfer_opts>();
  app.add_option("--transport", o->transport,
                 "shm: UCX shared memory/cma (UCX_TLS=sm,cma); tcp: UCX_TLS=tcp over loopback")
      ->check(CLI::IsMember({"shm", "tcp"}))
      ->capture_default_str();
  app.add_option("--window", o->window, "Single-block writes kept in flight")
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
  app.add_option("--seconds", o->seconds, "Time per block size (at least 32 blocks)")
      ->check(CLI::Range(0.0, 600.0))
      ->capture_default_str();
  app.add_option("--sizes", o->sizes,
                 "Block sizes, e.g. 16K,64K,1M (default 16K,64K,256K,1M,4M,16M)")
      ->delimiter(',');
  app.add_flag("--json", o->json, "Print one JSON object");
  app.add_flag("--busy-poll", o->busy_poll,
               "Both processes spin on their UCP worker (as ucx_perftest does) instead of the "
               "runtime's wake-up mode");
  app.add_flag("--peer-errors", o->peer_errors,
               "Endpoints with peer failure reporting, as between hosts with it turned on "
               "(UCX 1.13 then uses no shared memory/CMA)");
  return [o]() -> int {
    if (o->peer_errors) setenv("TOKENMILL_BENCH_PEER_ERRORS", "1", 1);
    if (o->busy_poll) setenv("TOKENMILL_BENCH_BUSY_POLL", "1", 1);
    const bool shm = o->transport == "shm";
    std::vector<uint64_t> sizes;
    if (o->sizes.empty()) sizes = {16 * kib, 64 * kib, 256 * kib, 1 * mib, 4 * mib, 16 * mib};
    for (const auto& s : o->sizes) {
      uint64_t b = parse_size(s);
      if (b == 0 || b % 8 != 0 || b > max_pool_bytes)
        return fail(fmt::format("bad block size '{}' (a multiple of 8 B, at most {})", s,
                                size_name(max_pool_bytes)));
      sizes.push_back(b);
    }
    const uint64_t largest = *std::max_element(sizes.begin(), sizes.end());
    const uint64_t pool_bytes = std::min<uint64_t>(largest * o->window, max_pool_bytes);
    const double load_before = loadavg_1min();

    std::vector<size_result> results;
    std::string tls;
    bool unreachable = false;
    kv_transport_stats sender;  ///< the sending transport's counters over the whole run
    std::string err;
    if (shm) {
      // sm,cma alone may not connect (the transport asks for peer-failure handling, which
      // sysv/posix/cma lack): then UCX's default selection.
      auto level = spdlog::get_level();
      spdlog::set_level(spdlog::level::err);
      err = run_transfers(*o, sizes, pool_bytes, largest, "sm,cma", results, tls, unreachable,
                          sender);
      spdlog::set_level(level);
      if (!err.empty() && unreachable) {
        results.clear();
        err = run_transfers(*o, sizes, pool_bytes, largest, "", results, tls, unreachable, sender);
        tls += " (sm,cma could not connect)";
      }
    } else {
      err = run_transfers(*o, sizes, pool_bytes, largest, "tcp", results, tls, unreachable, sender);
    }
    if (!err.empty()) return fail(err);

    // Baselines, with the receiver gone.
    if (shm) {
      mapped a(pool_bytes), b(pool_bytes);
      for (auto& r : results) {
        if (!a.p || !b.p) {
          r.baseline_error = "cannot allocate the memcpy buffers";
          continue;
        }
        fill_pattern(a.p, a.n, 1);
        r.baseline_gbps =
            memcpy_gbps(b.p, a.p, pool_bytes, r.block_bytes, std::min(o->seconds, 0.5));
      }
    } else {
      for (auto& r : results) {
        // About as long as our own run took, within bounds.
        double want = r.gbps * 1e9 * std::min(o->seconds, 2.0) / static_cast<double>(r.block_bytes);
        uint64_t iters = std::clamp<uint64_t>(static_cast<uint64_t>(want), 200, 1'000'000);
        r.baseline_gbps = perftest_gbps(r.block_bytes, iters, o->window, r.baseline_error);
      }
    }
    const double load_after = loadavg_1min();

    nlohmann::ordered_json j;
    j["transport"] = o->transport;
    j["ucx_tls"] = tls;
    j["window"] = o->window;
    j["busy_poll"] = o->busy_poll;
    j["peer_errors"] = o->peer_errors;
    j["seconds"] = o->seconds;
    j["pool_bytes"] = pool_bytes;
    j["machine"] = {{"nproc", usable_cpus()},
                    {"loadavg_1min", load_before},
                    {"loadavg_1min_after", load_after}};
    const char* base_key = shm ? "memcpy_gbps" : "perftest_gbps";
    nlohmann::ordered_json arr = nlohmann::ordered_json::array();
    for (const auto& r : results) {
      nlohmann::ordered_json e;
      e["block_bytes"] = r.block_bytes;
      e["slots"] = r.slots;
      e["gbps"] = r.gbps;
      e["latency_us_p50"] = r.latency_us_p50;
      e["blocks"] = r.blocks;
      e["verified"] = r.verified;
      if (r.baseline_gbps) {
        e[base_key] = *r.baseline_gbps;
        e["ratio"] = *r.baseline_gbps > 0 ? r.gbps / *r.baseline_gbps : 0.0;
      } else {
        e[base_key] = nullptr;
        e["ratio"] = nullptr;
        e[shm ? "memcpy_error" : "perftest_error"] = r.baseline_error;
      }
      arr.push_back(e);
    }
    j["sizes"] = arr;
    j["sender"] = {{"writes_completed", sender.writes_completed},
                   {"writes_failed", sender.writes_failed},
                   {"bytes_written", sender.bytes_written},
                   {"stalls", sender.stalls},
                   {"timeouts", sender.timeouts}};
    if (o->json) {
      std::printf("%s\n", j.dump().c_str());
      return 0;
    }
    std::printf("transport %s (UCX_TLS=%s), window %u, %.1f s per size, pools of %s\n",
                o->transport.c_str(), tls.c_str(), o->window, o->seconds,
                size_name(pool_bytes).c_str());
    std::printf("machine   nproc %u, load %.2f before / %.2f after\n\n", usable_cpus(), load_before,
                load_after);
    std::printf("%10s %6s %9s %12s %9s %9s %14s %7s\n", "block", "slots", "GB/s", "p50 lat us",
                "blocks", "verified", shm ? "memcpy GB/s" : "perftest GB/s", "ratio");
    for (const auto& r : results)
      std::printf("%10s %6u %9.2f %12.1f %9llu %9s %14s %7s\n", size_name(r.block_bytes).c_str(),
                  r.slots, r.gbps, r.latency_us_p50, static_cast<unsigned long long>(r.blocks),
                  r.verified ? "yes" : "NO", fmt_opt(r.baseline_gbps, "{:.2f}").c_str(),
                  r.baseline_gbps && *r.baseline_gbps > 0
                      ? fmt::format("{:.2f}", r.gbps / *r.baseline_gbps).c_str()
                      : "-");
    for (const auto& r : results)
      if (!r.baseline_gbps)
        std::printf("%s: no baseline: %s\n", size_name(r.block_bytes).c_str(),
                    r.baseline_error.c_str());
    std::printf("\nsender: %llu writes completed, %llu failed, %llu stalls, %llu timeouts\n",
                static_cast<unsigned long long>(sender.writes_completed),
                static_cast<unsigned long long>(sender.writes_failed),
                static_cast<unsigned long long>(sender.stalls),
                static_cast<unsigned long long>(sender.timeouts));
    if (shm)
      std::printf("\nmemcpy: one thread, rotating over two %s buffers (GB/s = 1e9 B/s)\n",
                  size_name(pool_bytes).c_str());
    else
      std::printf("\nperftest: ucx_perftest -t ucp_put_bw -O %u over loopback, UCX_TLS=tcp\n",
                  o->window);
    return 0;
  };
}

}  // namespace tokenmill::app

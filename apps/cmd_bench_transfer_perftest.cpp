// The ucx_perftest baseline of `tokenmill bench-transfer`: the put bandwidth UCX's own
// tool reaches over loopback tcp, run as a server/client pair of child processes.
#include "apps/perftest_baseline.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <sstream>
#include <vector>

#include <fmt/format.h>

#include "common/clock.hpp"

namespace tokenmill::app {
namespace {

constexpr uint64_t mib = 1024 * 1024;  ///< ucx_perftest's MB/s are of 2^20 B

bool in_path(const std::string& exe) {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  struct stat st {};
  while (std::getline(ss, dir, ':'))
    if (!dir.empty() && stat((dir + "/" + exe).c_str(), &st) == 0 && (st.st_mode & S_IXUSR))
      return true;
  return false;
}

/// A TCP port that was free a moment ago.
int free_port() {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int port = 0;
  if (bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  close(s);
  return port;
}

/// Starts `args` with UCX_TLS=tcp; stdout (and stderr) go to `out_fd`, or /dev/null at -1.
pid_t spawn(const std::vector<std::string>& args, int out_fd) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  setenv("UCX_TLS", "tcp", 1);
  int fd = out_fd >= 0 ? out_fd : open("/dev/null", O_WRONLY);
  dup2(fd, 1);
  dup2(fd, 2);
  std::vector<char*> argv;
  for (const auto& a : args)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  _exit(127);
}

/// Waits for `pid` until `deadline_ns`, killing it after; its exit status or -1.
int wait_until(pid_t pid, int64_t deadline_ns) {
  int status = 0;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (r < 0 && errno != EINTR) return -1;
    if (now_ns() >= deadline_ns) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    usleep(5000);
  }
}

}  // namespace

std::optional<double> perftest_gbps(uint64_t size, uint64_t iters, uint32_t window,
                                    std::string& err) {
  if (!in_path("ucx_perftest")) {
    err = "ucx_perftest not found in PATH (package ucx-utils)";
    return std::nullopt;
  }
  for (int attempt = 0; attempt < 3; ++attempt) {
    int port = free_port();
    if (port == 0) {
      err = "no free tcp port";
      return std::nullopt;
    }
    std::vector<std::string> common{"-t", "ucp_put_bw",           "-s", std::to_string(size),
                                    "-n", std::to_string(iters),  "-w", "3",
                                    "-O", std::to_string(window), "-p", std::to_string(port)};
    std::vector<std::string> server{"ucx_perftest"};
    server.insert(server.end(), common.begin(), common.end());
    pid_t srv = spawn(server, -1);
    if (srv < 0) {
      err = "fork failed";
      return std::nullopt;
    }
    usleep(300'000);  // lets the server listen
    int pfd[2];
    if (pipe(pfd) != 0) {
      kill(srv, SIGKILL);
      waitpid(srv, nullptr, 0);
      err = "pipe failed";
      return std::nullopt;
    }
    std::vector<std::string> client{"ucx_perftest", "127.0.0.1"};
    client.insert(client.end(), common.begin(), common.end());
    pid_t cli = spawn(client, pfd[1]);
    close(pfd[1]);
    std::string out;
    char buf[4096];
    ssize_t r;
    const int64_t deadline = now_ns() + 60'000'000'000;
    while ((r = read(pfd[0], buf, sizeof(buf))) > 0 || (r < 0 && errno == EINTR))
      if (r > 0) out.append(buf, static_cast<size_t>(r));
    close(pfd[0]);
    int crc = cli > 0 ? wait_until(cli, deadline) : -1;
    wait_until(srv, now_ns() + 2'000'000'000);
    // "Final: iters p50 avg overall bw_avg bw_overall rate_avg rate_overall", MB/s of 2^20 B.
    std::istringstream lines(out);
    std::string line;
    while (std::getline(lines, line)) {
      if (line.rfind("Final:", 0) != 0) continue;
      std::istringstream f(line.substr(6));
      double v[6];
      bool ok = true;
      for (double& x : v)
        ok = ok && static_cast<bool>(f >> x);
      if (ok) return v[5] * double(mib) / 1e9;
    }
    err = fmt::format("ucx_perftest client exited with {} and printed no 'Final:' line{}", crc,
                      crc == 127 ? " (exec failed)" : "");
  }
  return std::nullopt;
}

}  // namespace tokenmill::app

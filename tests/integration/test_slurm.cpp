// Slurm (issue 24, item 2) with a real Slurm: Debian's munged, slurmctld and slurmd started
// in a temporary folder (tests/integration/slurm-local.sh), a batch job that runs
// `tokenmill launch --slurm` with three tasks, so three tokenmill nodes as three job steps
// (srun) on this host; one request served through the cluster; the job cancelled, and
// every node gone. Skipped with the reason where the daemons cannot run (not root, the
// packages missing).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include "harness.hpp"
#include "skip.hpp"

using namespace tokenmill::testing;
namespace fs = std::filesystem;

namespace {

std::string slurp(const std::string& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool can_bind(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  // A closed connection's TIME_WAIT does not count: only a listener still there does.
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

/// A port P with P, P+1 and P+2 free.
uint16_t three_free(std::set<uint16_t>& taken) {
  for (int tries = 0; tries < 50; ++tries) {
    uint16_t p = free_listen_port(taken);
    if (p < 65000 && can_bind(p + 1) && can_bind(p + 2) && !taken.count(p + 1) &&
        !taken.count(p + 2)) {
      taken.insert(p + 1);
      taken.insert(p + 2);
      return p;
    }
  }
  FAIL("no three free ports in a row");
  return 0;
}

/// Stops the daemons slurm-local.sh started, whatever happens to the test.
struct slurm_daemons {
  std::string dir;
  ~slurm_daemons() {
    run({TOKENMILL_SOURCE_DIR "/tests/integration/slurm-local.sh", "stop", dir},
        milliseconds(30000));
  }
};

}  // namespace

TEST_CASE("slurm: a job serves a 3-node cluster as three srun steps and is cancelled cleanly",
          "[slurm]") {
  temp_dir tmp("tokenmill-slurm");
  auto dir = tmp.path();
  auto started =
      run({TOKENMILL_SOURCE_DIR "/tests/integration/slurm-local.sh", "start", dir + "/slurm", "8"},
          milliseconds(60000));
  slurm_daemons guard{dir + "/slurm"};
  if (started.exit_code == 3) TM_SKIP("Slurm cannot run here: " << started.out);
  INFO(started.out << started.err);
  REQUIRE(started.exit_code == 0);
  std::string env = "SLURM_CONF='" + dir + "/slurm/slurm.conf' ";

  std::set<uint16_t> taken;
  uint16_t rpc = free_listen_port(taken), http = free_listen_port(taken);
  uint16_t control = three_free(taken), metrics = three_free(taken);
  std::ofstream(dir + "/template.yaml")
      << "cluster: slurm-it\n"
         "model: {sim: {decode_step_ms: 2, prefill_us_per_token: 20}}\n"
         "defaults: {engine: sim, kv_transport: ucx}\n"
         "security: {insecure: true}\n"
      << "frontend: {rpc_port: " << rpc << ", http_port: " << http
      << "}\nslurm:\n  first_port: " << control << "\n  first_http_port: " << metrics << R"(
  head: [router, supervisor, kv_store]
  roles:
    - {count: 1, actors: [{prefill: {threads: 1}}]}
    - {share: 1, actors: [{decode: {threads: 1, max_batch: 8}}]}
)";
  std::ofstream(dir + "/job.sh") << "#!/bin/bash\nexec '" TOKENMILL_BIN "' launch --slurm '" << dir
                                 << "/template.yaml' --log-dir '" << dir
                                 << "/logs' --ready-timeout 120\n";
  auto t0 = std::chrono::steady_clock::now();
  auto submitted = run({"/bin/sh", "-c",
                        env + "sbatch --ntasks=3 --job-name=tokenmill-it --output='" + dir +
                            "/job.out' --chdir='" + dir + "' '" + dir + "/job.sh'"},
                       milliseconds(30000));
  INFO(submitted.out << submitted.err);
  REQUIRE(submitted.exit_code == 0);
  std::smatch id;
  REQUIRE(std::regex_search(submitted.out, id, std::regex("Submitted batch job ([0-9]+)")));
  std::string job = id[1];
  auto job_out = [&] { return slurp(dir + "/job.out"); };
  bool ready = eventually(
      [&] { return job_out().find("tokenmill cluster slurm-it ready") != std::string::npos; },
      milliseconds(150000), milliseconds(200));
  double ready_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO("job output:\n" << job_out() << "\nslurmd log:\n" << slurp(dir + "/slurm/slurmd.log"));
  REQUIRE(ready);
  WARN("sbatch to cluster ready: " << ready_s << " s");
  auto out = job_out();
  CHECK_THAT(out, Catch::Contains("launch: 3 nodes from Slurm job " + job));
  for (const char* node : {"head", "p0", "d0"}) {
    INFO(node);
    CHECK(std::regex_search(out, std::regex(std::string("node ") + node +
                                            " +starting \\(pid [0-9]+, via srun on localhost\\)")));
  }
  // Three job steps besides the batch step: one srun per node.
  auto steps =
      run({"/bin/sh", "-c", env + "squeue -h -s -j " + job + " -o '%i %j'"}, milliseconds(30000));
  INFO(steps.out << steps.err);
  for (const char* node : {"tokenmill-head", "tokenmill-p0", "tokenmill-d0"})
    CHECK_THAT(steps.out, Catch::Contains(node));

  auto gen = run_tokenmill({"generate", "--connect", "127.0.0.1:" + std::to_string(rpc),
                            "--max-tokens", "8", "--json", "--token-ids", id_prompt(300, 20)},
                           milliseconds(60000));
  INFO(gen.out << gen.err);
  CHECK(gen.exit_code == 0);
  auto summary = last_json_line(gen.out);
  CHECK(summary.is_object());

  // Nothing of the cluster is left: no node process (each runs with its manifest copy
  // /tmp/tokenmill-CLUSTER-NODE-JOB.yaml on its command line), no port still listening.
  // The nodes' own "SIGTERM received" lines are not checked: srun, stopped by the same
  // cancel, does not always pass a step's last output on.
  auto leftovers = [&] {
    std::string found;
    for (const auto& e : fs::directory_iterator("/proc")) {
      auto cmd = slurp(e.path() / "cmdline");
      std::replace(cmd.begin(), cmd.end(), '\0', ' ');
      if (cmd.find("/tmp/tokenmill-slurm-it-") != std::string::npos &&
          cmd.find("-" + job + ".yaml") != std::string::npos &&
          cmd.rfind(TOKENMILL_BIN " node ", 0) == 0)
        found += e.path().filename().string() + ": " + cmd + "\n";
    }
    return found;
  };
  // The probe sees the three running nodes, so its empty answer below means something.
  auto running = leftovers();
  INFO("node processes:\n" << running);
  CHECK(std::count(running.begin(), running.end(), '\n') == 3);

  auto cancel = run({"/bin/sh", "-c", env + "scancel " + job}, milliseconds(30000));
  CHECK(cancel.exit_code == 0);
  bool gone = eventually(
      [&] {
        auto q = run({"/bin/sh", "-c", env + "squeue -h -j " + job}, milliseconds(10000));
        return q.exit_code == 0 && q.out.find(job) == std::string::npos;
      },
      milliseconds(60000), milliseconds(250));
  CHECK(gone);
  CHECK(eventually([&] { return leftovers().empty(); }, milliseconds(15000)));
  INFO("still running:\n" << leftovers());
  CHECK(leftovers().empty());
  CHECK(eventually(
      [&] {
        return can_bind(rpc) && can_bind(http) && can_bind(control) && can_bind(control + 1) &&
               can_bind(control + 2) && can_bind(metrics + 1) && can_bind(metrics + 2);
      },
      milliseconds(10000)));
  CHECK_THAT(job_out(), Catch::Contains("launch: SIGTERM received, stopping 3 nodes"));
  for (const char* node : {"head", "p0", "d0"})
    fs::remove(fmt::format("/tmp/tokenmill-slurm-it-{}-{}.yaml", node, job));
}

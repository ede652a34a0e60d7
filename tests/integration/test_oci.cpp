// The OCI image without a registry (issue 24, item 4): scripts/oci-image.sh assembles it
// from the built executable; its layout must be consistent (every descriptor's digest and
// size match its blob), and its one layer must be a root file system tokenmill runs from
// on its own: chrooted into the unpacked layer, `serve` answers a request from outside.
// No container runtime runs it here (podman is not installed; see the README).
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include <fmt/format.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "harness.hpp"
#include "skip.hpp"

using namespace tokenmill::testing;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string sha256(const fs::path& p) {
  auto r = run({"/usr/bin/sha256sum", p.string()}, milliseconds(60000));
  REQUIRE(r.exit_code == 0);
  return r.out.substr(0, 64);
}

/// The blob a descriptor names, checked against its digest and size.
fs::path check_blob(const fs::path& layout, const json& descriptor) {
  std::string digest = descriptor.at("digest");
  REQUIRE(digest.rfind("sha256:", 0) == 0);
  fs::path blob = layout / "blobs" / "sha256" / digest.substr(7);
  REQUIRE(fs::exists(blob));
  CHECK(fs::file_size(blob) == descriptor.at("size").get<uint64_t>());
  CHECK(sha256(blob) == digest.substr(7));
  return blob;
}

}  // namespace

TEST_CASE("oci: the image layout is consistent and its root file system serves a request",
          "[oci]") {
  temp_dir tmp("tokenmill-oci");
  auto made = run(
      {TOKENMILL_SOURCE_DIR "/scripts/oci-image.sh", TOKENMILL_BIN, tmp.path(), "tokenmill:test"},
      milliseconds(240000));
  INFO(made.out << made.err);
  REQUIRE(made.exit_code == 0);
  WARN(made.out);
  fs::path layout = fs::path(tmp.path()) / "layout";
  CHECK(fs::exists(fs::path(tmp.path()) / "tokenmill-oci.tar"));
  CHECK(json::parse(slurp(layout / "oci-layout"))["imageLayoutVersion"] == "1.0.0");
  auto index = json::parse(slurp(layout / "index.json"));
  REQUIRE(index["manifests"].size() == 1);
  CHECK(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] ==
        "tokenmill:test");
  auto manifest = json::parse(slurp(check_blob(layout, index["manifests"][0])));
  CHECK(manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json");
  auto config = json::parse(slurp(check_blob(layout, manifest["config"])));
  CHECK(config["architecture"] == "amd64");
  CHECK(config["config"]["Entrypoint"] == json::array({"/usr/bin/tokenmill"}));
  CHECK(config["config"]["Labels"]["org.opencontainers.image.revision"] == TOKENMILL_COMMIT);
  REQUIRE(manifest["layers"].size() == 1);
  auto layer = check_blob(layout, manifest["layers"][0]);
  // The config's diff_id is the digest of the uncompressed layer.
  fs::path root = fs::path(tmp.path()) / "root";
  fs::create_directories(root);
  REQUIRE(run({"/bin/sh", "-c",
               "gzip -dc '" + layer.string() + "' > '" + tmp.path() + "/layer.tar' && tar -xf '" +
                   tmp.path() + "/layer.tar' -C '" + root.string() + "'"},
              milliseconds(120000))
              .exit_code == 0);
  CHECK("sha256:" + sha256(fs::path(tmp.path()) / "layer.tar") ==
        config["rootfs"]["diff_ids"][0].get<std::string>());
  CHECK(fs::exists(root / "usr/bin/tokenmill"));
  CHECK(!fs::exists(root / "usr/bin/sh"));                   // nothing but what tokenmill needs
  CHECK(fs::exists(root / "usr/lib/x86_64-linux-gnu/ucx"));  // UCX's dlopen'd transports
  // A CUDA build: the cuda engine opens cuBLAS with dlopen (not in ldd's list); it and
  // cuBLASLt must be next to the runtime.
  for (const auto& f : fs::recursive_directory_iterator(root)) {
    const std::string name = f.path().filename().string();
    if (name.rfind("libcudart.so.", 0) != 0) continue;
    const std::string major = name.substr(13, name.find('.', 13) - 13);
    INFO(f.path());
    CHECK(fs::exists(f.path().parent_path() / ("libcublas.so." + major)));
    CHECK(fs::exists(f.path().parent_path() / ("libcublasLt.so." + major)));
  }

  if (geteuid() != 0) TM_SKIP("not root: cannot chroot into the image's file system");
  // What a container runtime gives at least: its own mount and process namespaces, /proc,
  // and the image as its root.
  auto in_image = [&](std::vector<std::string> args) {
    std::vector<std::string> argv{
        "/usr/bin/unshare", "--mount",      "--pid",
        "--fork",           "--kill-child", "--mount-proc=" + (root / "proc").string(),
        "/usr/sbin/chroot", root.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  };
  if (run(in_image({"/usr/bin/tokenmill", "--help"}), milliseconds(30000)).exit_code != 0)
    TM_SKIP("unshare --mount --pid --mount-proc cannot run here");
  auto v = run(in_image({"/usr/bin/tokenmill", "--version"}), milliseconds(30000));
  INFO(v.out << v.err);
  REQUIRE(v.exit_code == 0);
  CHECK(v.out == "tokenmill " TOKENMILL_VERSION " (commit " TOKENMILL_COMMIT ")\n");
  // Serving from inside: only the image's libraries are there to load.
  std::set<uint16_t> taken;
  auto rpc = free_listen_port(taken);
  process srv(in_image({"/usr/bin/tokenmill", "serve", "--engine", "sim", "--rpc-port",
                        std::to_string(rpc), "--no-http", "--sim-decode-step-ms", "1"}));
  auto ready = srv.wait_for_line("tokenmill ready", milliseconds(60000));
  INFO(srv.out() << srv.err());
  REQUIRE(ready);
  auto gen = run_tokenmill({"generate", "--connect", "127.0.0.1:" + std::to_string(rpc),
                            "--max-tokens", "4", "--token-ids", id_prompt(300, 8)});
  INFO(gen.out << gen.err);
  CHECK(gen.exit_code == 0);
  // Stopped as a container runtime stops it: SIGTERM to the image's PID 1, tokenmill itself
  // (unshare, the parent, ignores it). PID 1 only gets signals it has a handler for.
  std::string children = slurp(fmt::format("/proc/{0}/task/{0}/children", srv.pid()));
  INFO("unshare's children: " << children);
  int pid1 = std::atoi(children.c_str());
  REQUIRE(pid1 > 0);
  ::kill(pid1, SIGTERM);
  auto code = srv.wait(milliseconds(15000));
  INFO(srv.out() << srv.err());
  CHECK(code.has_value());
  CHECK_THAT(srv.out(), Catch::Contains("SIGTERM received, shutting down"));
}

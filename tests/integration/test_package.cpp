// Installing and packaging (issue 24, item 1): the Debian package CPack builds from this
// build folder (no rebuild: cpack installs what is built), its file list and Depends, the
// executable run from a throwaway root, the systemd unit in it; and the commit --version
// reports when configured from a checkout, from a tree without .git, and when given.
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "harness.hpp"
#include "skip.hpp"

using namespace tokenmill::testing;
namespace fs = std::filesystem;

namespace {

bool have(const std::string& tool) {
  return run({"/bin/sh", "-c", "command -v " + tool}, milliseconds(5000)).exit_code == 0;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// Package names of a Depends field ("a (>= 1), b | c" -> a, b, c).
std::vector<std::string> dependency_names(const std::string& depends) {
  std::vector<std::string> out;
  std::regex name(R"((^|[,|])\s*([a-z0-9][a-z0-9+.-]+))");
  for (std::sregex_iterator it(depends.begin(), depends.end(), name), end; it != end; ++it)
    out.push_back((*it)[2]);
  return out;
}

}  // namespace

TEST_CASE("package: cpack builds a .deb with the executable, examples, docs and unit",
          "[package]") {
  for (const char* tool : {"cpack", "dpkg-deb", "dpkg-shlibdeps"})
    if (!have(tool)) TM_SKIP(tool << " is not installed (dpkg-dev, cmake)");
  temp_dir tmp("tokenmill-deb");
  auto made =
      run({"/bin/sh", "-c",
           "cd '" + tmp.path() +
               "' && cpack -G DEB --config '" TOKENMILL_BUILD_DIR "/CPackConfig.cmake' -B '" +
               tmp.path() + "/out'"},
          milliseconds(240000));
  INFO(made.out << made.err);
  REQUIRE(made.exit_code == 0);
  fs::path deb = fs::path(tmp.path()) / "out" / ("tokenmill_" TOKENMILL_VERSION "_amd64.deb");
  REQUIRE(fs::exists(deb));
  auto size = fs::file_size(deb);
  WARN("package " << deb.filename().string() << ": " << size / 1024 << " KiB");

  // The file list: what `cmake --install` puts under /usr, nothing from the build's tests.
  auto list = run({"/usr/bin/dpkg-deb", "-c", deb.string()}, milliseconds(30000));
  REQUIRE(list.exit_code == 0);
  std::set<std::string> files;
  std::istringstream lines(list.out);
  for (std::string l; std::getline(lines, l);) {
    auto at = l.find(" ./");
    if (at != std::string::npos && l.substr(at + 1) != "./") files.insert(l.substr(at + 1));
  }
  for (const char* f :
       {"./usr/bin/tokenmill", "./usr/lib/systemd/system/tokenmill-node@.service",
        "./usr/share/doc/tokenmill/README.md", "./usr/share/doc/tokenmill/DESIGN.md",
        "./usr/share/doc/tokenmill/examples/local-3node.yaml",
        "./usr/share/doc/tokenmill/examples/slurm/tokenmill.sbatch",
        "./usr/share/doc/tokenmill/examples/slurm/template.yaml"}) {
    INFO(f);
    CHECK(files.count(f) == 1);
  }
  for (const auto& f : files) {
    INFO(f);
    CHECK(f.rfind("./usr/", 0) == 0);
    CHECK(f.find("/usr/local") == std::string::npos);
    CHECK(f.find("_tests") == std::string::npos);
    CHECK(f.find(".a") != f.size() - 2);
  }

  // Control fields; Depends from dpkg-shlibdeps, every name a package of the archive.
  auto field = [&](const std::string& name) {
    auto r = run({"/usr/bin/dpkg-deb", "-f", deb.string(), name}, milliseconds(10000));
    REQUIRE(r.exit_code == 0);
    auto v = r.out;
    while (!v.empty() && (v.back() == '\n' || v.back() == ' '))
      v.pop_back();
    return v;
  };
  CHECK(field("Package") == "tokenmill");
  CHECK(field("Version") == TOKENMILL_VERSION);
  CHECK(field("Architecture") == "amd64");
  auto depends = field("Depends");
  INFO("Depends: " << depends);
  auto names = dependency_names(depends);
  std::set<std::string> got(names.begin(), names.end());
  for (const char* prefix : {"libc6", "libstdc++6", "libcaf-core", "libcaf-io", "libucx0",
                             "libcapnp-", "libyaml-cpp", "libfmt", "libspdlog", "libxxhash"}) {
    INFO("a dependency starting with " << prefix);
    CHECK(std::any_of(got.begin(), got.end(),
                      [&](const std::string& n) { return n.rfind(prefix, 0) == 0; }));
  }
  for (const auto& n : got) {
    INFO(n << " must be a package apt knows (Debian 12's archive)");
    CHECK(run({"/bin/sh", "-c", "apt-cache show '" + n + "' >/dev/null 2>&1"}, milliseconds(30000))
              .exit_code == 0);
  }

  // Unpacked into a throwaway root, the executable runs and says what it is.
  fs::path root = fs::path(tmp.path()) / "root";
  REQUIRE(run({"/usr/bin/dpkg-deb", "-x", deb.string(), root.string()}, milliseconds(60000))
              .exit_code == 0);
  auto v = run({(root / "usr/bin/tokenmill").string(), "--version"}, milliseconds(10000));
  INFO(v.out << v.err);
  CHECK(v.exit_code == 0);
  CHECK(v.out == "tokenmill " TOKENMILL_VERSION " (commit " TOKENMILL_COMMIT ")\n");
  auto unit = slurp(root / "usr/lib/systemd/system/tokenmill-node@.service");
  CHECK_THAT(unit, Catch::Contains("ExecStart=tokenmill node --manifest ${TOKENMILL_MANIFEST} "
                                   "--name %i"));
  CHECK_THAT(unit, Catch::Contains("Restart=on-failure"));
  CHECK_THAT(unit, Catch::Contains("TOKENMILL_MANIFEST=/etc/tokenmill/cluster.yaml"));
  if (have("systemd-analyze")) {
    // A template verifies as one of its instances; ExecStart's bare name is looked up in
    // /usr/bin, where this root's executable is not, so only syntax errors count.
    auto unit_dir = fs::path(tmp.path()) / "units";
    fs::create_directories(unit_dir);
    fs::copy_file(root / "usr/lib/systemd/system/tokenmill-node@.service",
                  unit_dir / "tokenmill-node@head.service");
    auto check = run({"/bin/sh", "-c",
                      "systemd-analyze verify '" +
                          (unit_dir / "tokenmill-node@head.service").string() + "' 2>&1"},
                     milliseconds(30000));
    INFO(check.out);
    CHECK(check.out.find("Unknown key") == std::string::npos);
    CHECK(check.out.find("Unknown section") == std::string::npos);
    CHECK(check.out.find("Invalid") == std::string::npos);
  } else {
    WARN("systemd-analyze is not installed: the unit's syntax was not verified by systemd");
  }
}

TEST_CASE("package: the commit --version reports comes from git, or is given, or unknown",
          "[package]") {
  if (!have("git")) TM_SKIP("git is not installed");
  // A project of its own around cmake/Version.cmake: configuring it is quick (no compiler).
  temp_dir tmp("tokenmill-version");
  auto configure = [&](const std::string& src, const std::string& extra) {
    fs::create_directories(src + "/cmake");
    fs::copy_file(TOKENMILL_SOURCE_DIR "/cmake/Version.cmake", src + "/cmake/Version.cmake",
                  fs::copy_options::overwrite_existing);
    std::ofstream(src + "/CMakeLists.txt")
        << "cmake_minimum_required(VERSION 3.25)\nproject(v VERSION 4.5.6 LANGUAGES NONE)\n"
           "list(APPEND CMAKE_MODULE_PATH ${CMAKE_CURRENT_SOURCE_DIR}/cmake)\ninclude(Version)\n"
           "file(WRITE ${CMAKE_BINARY_DIR}/commit.txt \"${TOKENMILL_COMMIT}\")\n";
    fs::remove_all(src + "/b");
    auto r = run({"/bin/sh", "-c", "cmake -S '" + src + "' -B '" + src + "/b' " + extra},
                 milliseconds(60000));
    INFO(r.out << r.err);
    REQUIRE(r.exit_code == 0);
    return slurp(src + "/b/commit.txt");
  };
  std::string plain = tmp.file("plain");  // /tmp: in no checkout
  CHECK(configure(plain, "") == "unknown");
  CHECK(configure(plain, "-DTOKENMILL_GIT_COMMIT=0123abcd") == "0123abcd");

  std::string repo = tmp.file("repo");
  fs::create_directories(repo);
  auto git =
      run({"/bin/sh", "-c",
           "cd '" + repo +
               "' && git init -q && "
               "echo x > f && git add f && git -c user.email=t@t -c user.name=t commit -qm x && "
               "git rev-parse --short=12 HEAD"},
          milliseconds(30000));
  INFO(git.err);
  REQUIRE(git.exit_code == 0);
  auto sha = git.out.substr(0, 12);
  CHECK(configure(repo, "") == sha);
  // A tree without .git inside someone else's checkout does not borrow its commit.
  std::string nested = repo + "/vendor/tokenmill";
  CHECK(configure(nested, "") == "unknown");
}

TEST_CASE("package: tokenmill --version says the version and the commit", "[package]") {
  auto r = run_tokenmill({"--version"});
  CHECK(r.exit_code == 0);
  CHECK(r.out == "tokenmill " TOKENMILL_VERSION " (commit " TOKENMILL_COMMIT ")\n");
  CHECK(std::regex_match(std::string(TOKENMILL_COMMIT), std::regex("[0-9a-f]{12}|unknown")));
}

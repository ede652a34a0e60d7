#!/usr/bin/env bash
# Installs tokenmill's build and test dependencies on Debian 12 (bookworm).
# Idempotent: when every package is already installed it does nothing, not even
# `apt-get update`. Runs as root; otherwise uses sudo when it exists.
#   scripts/setup.sh           the build and test dependencies
#   scripts/setup.sh --bench   also what the benchmark plots need (python3-matplotlib,
#                              python3-yaml; scripts/bench-multinode.sh, scripts/bench_plot.py)
# munge, slurmctld, slurmd and slurm-client are for the Slurm integration test, which
# starts its own daemons in a temporary folder (tests/integration/slurm-local.sh).
# Besides the packages: node and npm (the openai client test) from Debian unless some
# node is already on PATH, and promtool (the metrics format check) taken out of Debian's
# prometheus package into $TOKENMILL_TOOLS_DIR (default ~/.cache/tokenmill/tools), which
# scripts/test.sh puts on PATH; installing that package would start a Prometheus server.
set -euo pipefail

bench=0
for arg in "$@"; do
  case "$arg" in
    --bench) bench=1 ;;
    -h | --help) sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown argument '$arg' (expected --bench)" >&2; exit 2 ;;
  esac
done

packages=(
  build-essential cmake ninja-build pkg-config ccache git
  libcaf-dev libssl-dev libucx-dev ucx-utils libcapnp-dev capnproto
  libboost-dev catch2 libyaml-cpp-dev nlohmann-json3-dev libfmt-dev
  libspdlog-dev libxxhash-dev libcli11-dev libpcre2-dev clang-format python3 procps
  curl iproute2 clang libclang-rt-14-dev
  munge slurmctld slurmd slurm-client
)
if [[ "$bench" == 1 ]]; then
  packages+=(python3-matplotlib python3-yaml)
fi
# Debian's npm conflicts with a nodejs that bundles npm (NodeSource's): ask for the packages
# only when the commands are missing.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  packages+=(nodejs npm)
fi

tools="${TOKENMILL_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenmill/tools}"
# promtool, one binary out of Debian's prometheus package (apt-get download: no root, no
# server started). A failure only warns: the two promtool checks then report as skipped.
install_promtool() {
  if command -v promtool >/dev/null 2>&1 || [[ -x "$tools/promtool" ]]; then
    return 0
  fi
  local tmp
  tmp="$(mktemp -d)"
  if (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) &&
    dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool &&
    mkdir -p "$tools" && install -m 755 "$tmp/usr/bin/promtool" "$tools/promtool"; then
    echo "setup: promtool installed in $tools"
  else
    echo "setup: warning: could not take promtool out of Debian's prometheus package;" \
      "the promtool checks will report as skipped" >&2
  fi
  rm -rf "$tmp"
}

missing=()
for pkg in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null || true)"
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup: all ${#packages[@]} packages are installed"
  install_promtool
  exit 0
fi

echo "setup: missing packages: ${missing[*]}"

sudo_cmd=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
  else
    echo "setup: not root and sudo is not available; install as root:" >&2
    echo "  apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi

echo "setup: apt-get update"
"${sudo_cmd[@]}" apt-get update
echo "setup: apt-get install ${packages[*]}"
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y --no-install-recommends "${packages[@]}"
install_promtool
echo "setup: done"

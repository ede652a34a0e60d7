#!/usr/bin/env bash
# Installs tokenmill's build and test dependencies on Debian 12 (bookworm).
# Idempotent: when every package is already installed it does nothing, not even
# `apt-get update`. Runs as root; otherwise uses sudo when it exists.
#   scripts/setup.sh           the build and test dependencies
#   scripts/setup.sh --bench   also what the benchmark plots need (python3-matplotlib,
#                              python3-yaml; scripts/bench-multinode.sh, scripts/bench_plot.py)
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
  curl iproute2
)
if [[ "$bench" == 1 ]]; then
  packages+=(python3-matplotlib python3-yaml)
fi

missing=()
for pkg in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null || true)"
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup: all ${#packages[@]} packages are installed; nothing to do"
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
echo "setup: done"

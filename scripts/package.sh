#!/usr/bin/env bash
# Builds the Debian package from the build folder (scripts/build.sh makes it) and prints
# its path and size: build/tokenmill_<version>_amd64.deb.
#   scripts/package.sh [BUILD_DIR]
# Install it with `apt install ./build/tokenmill_<version>_amd64.deb` (pulls the Debian 12
# libraries it needs), then see `systemctl cat tokenmill-node@.service`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$repo/build}"
if [[ ! -f "$build/CPackConfig.cmake" ]]; then
  echo "package: $build is not a configured build folder (run scripts/build.sh first)" >&2
  exit 2
fi
ninja -C "$build" -j"${TOKENMILL_JOBS:-2}" tokenmill
(cd "$build" && cpack -G DEB)
deb="$(ls -t "$build"/tokenmill_*_amd64.deb | head -1)"
echo "package: $deb ($(du -h "$deb" | cut -f1))"
dpkg-deb -f "$deb" Depends | sed 's/^/package: Depends: /'

#!/usr/bin/env bash
# Configures and builds tokenmill in <repo>/build.
#   TOKENMILL_SKIP_SETUP=1   skip scripts/setup.sh
#   TOKENMILL_CMAKE_ARGS     extra arguments for the cmake configure step (word-split)
#   TOKENMILL_JOBS           parallel build jobs (default 2)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$repo/build"

if [[ "${TOKENMILL_SKIP_SETUP:-0}" != "1" ]]; then
  "$repo/scripts/setup.sh"
else
  echo "build: TOKENMILL_SKIP_SETUP=1, skipping setup"
fi

# shellcheck disable=SC2206  # word splitting of the extra arguments is intended
extra_args=(${TOKENMILL_CMAKE_ARGS:-})
echo "build: cmake -S $repo -B $build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ${extra_args[*]}"
cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "${extra_args[@]}"

jobs="${TOKENMILL_JOBS:-2}"
echo "build: ninja -C $build -j$jobs"
ninja -C "$build" "-j$jobs"

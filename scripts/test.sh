#!/usr/bin/env bash
# Builds tokenmill (scripts/build.sh) and runs its tests with ctest, then (a full run only)
# each fuzz target for 10 s with a fixed seed (scripts/fuzz.sh), so the harness cannot rot.
# Extra arguments go to ctest, for example `scripts/test.sh -R unit` (and skip the fuzzing).
#   TOKENMILL_TEST_JOBS      parallel test jobs (default 2)
#   TOKENMILL_SKIP_FUZZ=1    skip the fuzz targets
# Exits non-zero when ctest or a fuzz target failed.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

"$repo/scripts/build.sh"

# promtool as scripts/setup.sh installs it (out of Debian's prometheus package).
export PATH="$PATH:${TOKENMILL_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenmill/tools}"

jobs="${TOKENMILL_TEST_JOBS:-2}"
echo "test: ctest --test-dir $repo/build --output-on-failure --no-tests=error -j$jobs --timeout 300 $*"
status=0
ctest --test-dir "$repo/build" --output-on-failure --no-tests=error "-j$jobs" --timeout 300 "$@" || status=$?

if [[ $# -eq 0 && "${TOKENMILL_SKIP_FUZZ:-0}" != "1" ]]; then
  echo "test: scripts/fuzz.sh 10 (TOKENMILL_FUZZ_SEED=1)"
  TOKENMILL_FUZZ_SEED=1 "$repo/scripts/fuzz.sh" 10 || status=1
fi
exit "$status"

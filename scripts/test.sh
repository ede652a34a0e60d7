#!/usr/bin/env bash
# Builds tokenmill (scripts/build.sh) and runs its tests with ctest.
# Extra arguments go to ctest, for example `scripts/test.sh -R unit`.
#   TOKENMILL_TEST_JOBS      parallel test jobs (default 2)
# Exits with ctest's status.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

"$repo/scripts/build.sh"

# promtool as scripts/setup.sh installs it (out of Debian's prometheus package).
export PATH="$PATH:${TOKENMILL_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenmill/tools}"

jobs="${TOKENMILL_TEST_JOBS:-2}"
echo "test: ctest --test-dir $repo/build --output-on-failure --no-tests=error -j$jobs --timeout 300 $*"
status=0
ctest --test-dir "$repo/build" --output-on-failure --no-tests=error "-j$jobs" --timeout 300 "$@" || status=$?
exit "$status"

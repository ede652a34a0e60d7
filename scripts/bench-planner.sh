#!/usr/bin/env bash
# The planner benchmark: a phase-shifting workload (prompt-heavy -> decode-heavy ->
# prompt-heavy) at a steady rate on N sim-engine workers, once per static prefill/decode
# split and once with the planner flipping roles in place. `--help` lists the options;
# the work is done by scripts/bench_planner.py.
set -euo pipefail
exec /usr/bin/python3 "$(dirname "${BASH_SOURCE[0]}")/bench_planner.py" "$@"

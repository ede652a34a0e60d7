#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang, ASan + UBSan) in build-fuzz/ and runs each
# for SECONDS (default 10) over a copy of its seed corpus, so runs never write into the tree.
#   scripts/fuzz.sh [SECONDS]
#   TOKENMILL_FUZZ_TARGETS   targets to run (default: every offline target, e.g. "fuzz_manifest fuzz_basp";
#                            fuzz_control_port needs a running node: scripts/fuzz-control-port.sh)
#   TOKENMILL_FUZZ_RUNS      stop a target after this many inputs (default: only SECONDS)
#   TOKENMILL_FUZZ_SEED      libFuzzer's random seed (default: a new one each run); a fixed
#                            seed makes a run repeat the same inputs (scripts/test.sh uses 1)
# Prints `fuzz: TARGET execs=N findings=K` per target and `N passed, M failed`. A crash,
# leak, timeout (5 s per input) or out-of-memory (2 GiB) fails its target; the inputs that
# did are kept in build-fuzz/findings/TARGET/. Exits non-zero when any target failed.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-10}"
build="$repo/build-fuzz"
all_targets="fuzz_manifest fuzz_gguf fuzz_safetensors fuzz_hf_config fuzz_tokenizer
  fuzz_tokenizer_json fuzz_openai fuzz_http_request fuzz_sse fuzz_chat_template fuzz_codec
  fuzz_kv_descriptor fuzz_basp"
targets="$(echo ${TOKENMILL_FUZZ_TARGETS:-$all_targets})"

if [[ ! -f "$build/build.ninja" ]]; then
  CC="${CC:-clang}" CXX="${CXX:-clang++}" cmake -S "$repo" -B "$build" -G Ninja \
    -DTOKENMILL_ENABLE_FUZZ=ON -DTOKENMILL_ENABLE_CUDA=OFF -DTOKENMILL_ENABLE_TESTS=OFF \
    -DTOKENMILL_ENABLE_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
# shellcheck disable=SC2086  # targets is a list
ninja -C "$build" -j2 $targets

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
for t in $targets; do
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
  cp -r "$repo/tests/fuzz/corpus/$t/." "$work/$t/corpus/"
  opts=()
  [[ -f "$repo/tests/fuzz/$t.dict" ]] && opts=("-dict=$repo/tests/fuzz/$t.dict")
  [[ -n "${TOKENMILL_FUZZ_SEED:-}" ]] && opts+=("-seed=$TOKENMILL_FUZZ_SEED")
  [[ -n "${TOKENMILL_FUZZ_RUNS:-}" ]] && opts+=("-runs=$TOKENMILL_FUZZ_RUNS")
  status=0
  "$build/tests/fuzz/$t" "$work/$t/corpus" "${opts[@]}" -max_total_time="$seconds" -timeout=5 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$work/$t/artifacts/" \
    >"$work/$t/log" 2>&1 || status=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t/log" | tail -1)"
  findings="$(find "$work/$t/artifacts" -type f | wc -l)"
  echo "fuzz: $t execs=${execs:-0} findings=$findings"
  if [[ "$status" -ne 0 || "$findings" -ne 0 ]]; then
    failed=$((failed + 1))
    mkdir -p "$build/findings/$t"
    cp "$work/$t/log" "$build/findings/$t/log"
    cp -r "$work/$t/artifacts/." "$build/findings/$t/"
    echo "fuzz: $t failed (exit $status); its log and inputs are in $build/findings/$t/"
    grep -m3 -E 'ERROR|SUMMARY' "$work/$t/log" || true
  else
    passed=$((passed + 1))
  fi
done
echo "$passed passed, $failed failed"
[[ "$failed" -eq 0 ]]

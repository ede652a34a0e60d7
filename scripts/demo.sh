#!/usr/bin/env bash
# The tokenmill demo, from a fresh Debian 12 machine: installs the dependencies, builds,
# writes a random-weight Llama-shaped model with `tokenmill make-model` (nothing is
# downloaded), launches the three-node cluster of examples/local-3node-model.yaml (head:
# router, supervisor, kv-store; a prefill node; a decode node; CPU engine; all on
# 127.0.0.1, RPC port 7700, control ports 7800-7802), sends requests through the Cap'n
# Proto client showing the streamed tokens and where the time to first token went, then
# serves until Ctrl-C.
#   ./scripts/demo.sh          serve until Ctrl-C
#   ./scripts/demo.sh --once   exit after the demo requests
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
once=0
for arg in "$@"; do
  case "$arg" in
    --once) once=1 ;;
    -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "demo: unknown argument '$arg' (expected --once)" >&2; exit 2 ;;
  esac
done

"$repo/scripts/build.sh"

bin="$repo/build/apps/tokenmill"
port=7700
manifest="$repo/examples/local-3node-model.yaml"
model="$repo/build/models/demo-small.gguf"
if [[ ! -f "$model" ]]; then
  echo
  echo "demo: tokenmill make-model --preset small --dtype f16 -o build/models/demo-small.gguf"
  mkdir -p "$(dirname "$model")"
  "$bin" make-model --preset small --dtype f16 -o "$model"
fi
log="$(mktemp -t tokenmill-demo.XXXXXX)"
echo
echo "demo: tokenmill launch examples/local-3node-model.yaml (3 node processes, CPU engine, model $(basename "$model"))"
"$bin" launch "$manifest" >"$log" 2>&1 &
pid=$!
cleanup() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -f "$log"
}
trap cleanup EXIT
trap 'echo; echo "demo: stopping"; exit 0' INT TERM

for _ in $(seq 1 300); do
  grep -q "cluster .* ready" "$log" && break
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "demo: the cluster exited before it was ready:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.1
done
grep -q "cluster .* ready" "$log" || { echo "demo: cluster not ready after 30 s" >&2; cat "$log" >&2; exit 1; }
cat "$log"

echo
echo "demo: cluster nodes and actors (tokenmill status)"
"$bin" status --connect "127.0.0.1:$port"
echo
echo "demo: tokenmill generate --max-tokens 24 'The quick brown fox'   (greedy; the weights are random,"
echo "      so the words are too: prompt prefilled on node p0, its KV blocks written to node d0, tokens streamed via head)"
"$bin" generate --connect "127.0.0.1:$port" --max-tokens 24 "The quick brown fox"
echo
echo "demo: the same prompt sampled (--temperature 0.8 --top-k 40 --seed 7): reproducible wherever it runs"
"$bin" generate --connect "127.0.0.1:$port" --max-tokens 24 --temperature 0.8 --top-k 40 --seed 7 \
  "The quick brown fox"
echo
long="$(printf 'All work and no play makes a dull model. %.0s' $(seq 1 40))"
echo "demo: a long prompt (prefilled in chunks of 512 tokens), then the same prompt again:"
echo "      the second time its full KV blocks come from the prefix caches (watch prefill_compute)"
"$bin" generate --connect "127.0.0.1:$port" --max-tokens 8 "$long"
echo
"$bin" generate --connect "127.0.0.1:$port" --max-tokens 8 "$long"
echo
"$bin" status --connect "127.0.0.1:$port"
if command -v curl >/dev/null 2>&1; then
  echo
  echo "demo: the OpenAI-compatible HTTP API (curl, a streamed chat completion on port 8000):"
  curl -sS -N --max-time 60 http://127.0.0.1:8000/v1/chat/completions \
    -H 'Content-Type: application/json' \
    -d '{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "stream": true}' |
    cut -c1-160
fi

if [[ "$once" == 1 ]]; then
  echo
  echo "demo: done (--once)"
  exit 0
fi
echo
echo "demo: serving on 127.0.0.1:$port until Ctrl-C. Try in another terminal:"
echo "  $bin generate --connect 127.0.0.1:$port --max-tokens 32 --json 'hello'"
echo "  $bin status --connect 127.0.0.1:$port"
echo "  $bin bench --connect 127.0.0.1:$port --rate 2 --requests 32 --input-len 256 --output-len 32"
echo "  curl localhost:8000/v1/completions -H 'Content-Type: application/json' -d '{\"prompt\": \"Hi\", \"max_tokens\": 8}'"
echo "  curl localhost:8000/metrics"
wait "$pid"

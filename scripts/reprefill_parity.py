#!/usr/bin/env python3
"""How often does re-prefilling prompt + generated tokens (what a migration does) continue
differently from the decode steps it replaces? The cpu engine on a `small` random-weight
model: for each random 64-token prompt, one server generates 64 tokens undisturbed; a
second server (the migration target) is then given prompt + the first k of them, for k =
63, 48, 32, 16, 8, 1 (decreasing, so every generated position below k was computed there
by a prefill, never by a decode step), and its continuation is compared with the rest.

  scripts/reprefill_parity.py TOKENMILL_BIN KV_DTYPE(f16|f32) PROMPTS [TEMPERATURE]

Prints one JSON line: cases, identical, and each divergence as (prompt, k, first index)."""
import json, random, re, subprocess, sys, time
B = sys.argv[1]
TEMP = sys.argv[4] if len(sys.argv) > 4 else "0"
model = "/tmp/reprefill-small.gguf"
subprocess.run([B, "make-model", "--preset", "small", "-o", model], check=True, capture_output=True)

def start():
    p = subprocess.Popen([B, "serve", "--model", model, "--rpc-port", "0", "--no-http",
                          "--prefill-workers", "0", "--kv-dtype", sys.argv[2]],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        m = re.search(r"rpc=([\d.]+:\d+)", line)
        if m: return p, m.group(1)
    raise SystemExit("no ready line")

def gen(ep, ids, n):
    r = subprocess.run([B, "generate", "--connect", ep, "--json", "--token-ids", "--max-tokens", str(n),
                        "--ignore-eos", "--temperature", TEMP, "--seed", "5", " ".join(map(str, ids))], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["token_ids"]

random.seed(1)
N, K = 64, [63, 48, 32, 16, 8, 1]
cases = same = 0
first_div = []
for t in range(int(sys.argv[3])):
    prompt = [random.randrange(10, 4000) for _ in range(64)]
    a, ea = start(); ref = gen(ea, prompt, N); a.terminate(); a.wait()
    b, eb = start()  # another worker, as a migration target: k decreasing, so every
    for k in K:      # generated position below k was computed by a prefill there
        cont = gen(eb, prompt + ref[:k], N - k)
        cases += 1
        if cont == ref[k:]: same += 1
        else: first_div.append((t, k, next(i for i, (x, y) in enumerate(zip(cont, ref[k:])) if x != y)))
    b.terminate(); b.wait()
print(json.dumps({"kv_dtype": sys.argv[2], "temperature": TEMP, "prompts": int(sys.argv[3]), "resume_points": K,
                  "cases": cases, "identical": same, "diverged": first_div}))

#!/usr/bin/env python3
"""Where the inter-token latency tail comes from (issue 20 item 4).

Starts `tokenmill serve` with the sim engine (a fixed decode step, so every gap above it is
runtime overhead), runs closed-loop `tokenmill generate --json` streams, and splits each
client-side token gap into
  step     the decode step that produced the token (engine time),
  between  the decode worker's time between the previous step's end and this step's start,
  held     the change in how long the router held the token after its step ended,
  deliver  the change in router -> client time (frontend, RPC, client),
which add up to the client gap (all on one host's steady clock). Prints, per concurrency,
the p50/p99 gap over the step and the mean of each part over the gaps above the threshold,
and writes JSON.

  scripts/itl_tail.py [--concurrency 1 4 16] [--requests-per-stream 8] [--step-ms 10]
                      [--threshold 1.10] [--bin build/apps/tokenmill] [--out FILE]
"""
import argparse, concurrent.futures as cf, json, os, re, signal, statistics, subprocess, sys, tempfile, time

repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--bin", default=os.environ.get("TOKENMILL_BIN", os.path.join(repo, "build/apps/tokenmill")))
ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
ap.add_argument("--requests-per-stream", type=int, default=8)
ap.add_argument("--step-ms", type=float, default=10.0)
ap.add_argument("--output-len", type=int, default=64)
ap.add_argument("--threshold", type=float, default=1.10, help="a gap above threshold x step is in the tail")
ap.add_argument("--out", default=os.path.join(repo, "bench-results/itl-tail.json"))
a = ap.parse_args()
if not os.access(a.bin, os.X_OK):
    sys.exit(f"itl_tail: no tokenmill binary at {a.bin} (build first, or pass --bin)")


def cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[7]  # total, steal


results = []
for conc in a.concurrency:
    log = tempfile.NamedTemporaryFile("w+", prefix="tokenmill-itl-", delete=False)
    srv = subprocess.Popen([a.bin, "serve", "--engine", "sim", "--rpc-port", "0", "--sim-decode-step-ms",
                            str(a.step_ms), "--sim-prefill-us-per-token", "200", "--prefill-workers", "1",
                            "--decode-workers", "1", "--max-batch", str(max(conc, 1))],
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        ep = None
        for _ in range(300):
            m = re.search(r"ready.*rpc=(\S+)", open(log.name).read())
            if m:
                ep = m.group(1)
                break
            time.sleep(0.1)
        if not ep:
            sys.exit("itl_tail: the server did not start:\n" + open(log.name).read())
        prompt = " ".join(["7"] * 128)

        def one(_):
            out = subprocess.run([a.bin, "generate", "--connect", ep, "--json", "--token-ids", "--ignore-eos",
                                  "--max-tokens", str(a.output_len), prompt], capture_output=True, text=True)
            lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
            if out.returncode != 0 or not lines:
                raise RuntimeError(f"generate failed ({out.returncode}): {out.stderr.strip()}")
            return json.loads(lines[-1])

        t0, s0 = cpu_times()
        rows = []
        with cf.ThreadPoolExecutor(conc) as ex:
            for j in ex.map(one, range(conc * a.requests_per_stream)):
                st = j["server"]["steps"]
                for k in range(2, len(st)):  # from the second decode step on
                    _, rgap, step, batch, _, cause, cgap, held = st[k]
                    if cgap == 0:
                        continue  # inside a chunk: its gap is counted on the chunk's first token
                    dheld = held - st[k - 1][7]
                    rows.append({"gap": cgap, "step": step, "between": rgap - step - dheld, "held": dheld,
                                 "deliver": cgap - rgap, "cause": cause, "batch": batch})
        t1, s1 = cpu_times()
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait()
        os.unlink(log.name)
    rows.sort(key=lambda r: r["gap"])
    n = len(rows)
    tail = [r for r in rows if r["gap"] > a.threshold * a.step_ms]
    parts = {k: (statistics.mean(r[k] for r in tail) if tail else 0.0) for k in ("step", "between", "held", "deliver")}
    causes = {}
    for r in tail:
        causes[r["cause"]] = causes.get(r["cause"], 0) + 1
    res = {"concurrency": conc, "gaps": n, "p50_over_step": rows[n // 2]["gap"] / a.step_ms,
           "p99_over_step": rows[min(n - 1, int(n * 0.99))]["gap"] / a.step_ms, "tail_gaps": len(tail),
           "tail_mean_ms": parts, "tail_router_causes": causes,
           "cpu_steal_percent": 100.0 * (s1 - s0) / max(1, t1 - t0)}
    results.append(res)
    print(f"concurrency {conc}: {n} gaps, p50 {res['p50_over_step']:.3f}x p99 {res['p99_over_step']:.3f}x step; "
          f"{len(tail)} above {a.threshold}x, their mean ms: " +
          ", ".join(f"{k} {v:.3f}" for k, v in parts.items()) + f"; steal {res['cpu_steal_percent']:.1f}%")
with open("/proc/cpuinfo") as f:
    cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "unknown")
os.makedirs(os.path.dirname(a.out), exist_ok=True)
json.dump({"cpu": cpu, "cores": os.cpu_count(), "step_ms": a.step_ms, "results": results}, open(a.out, "w"), indent=1)
print(f"cpu: {cpu}, {os.cpu_count()} cores; JSON: {a.out}")

#!/usr/bin/python3
"""The planner benchmark (scripts/bench-planner.sh): a workload whose shape shifts at a
steady request rate — prompt-heavy, then decode-heavy, then prompt-heavy — served by the
same N sim-engine workers once per static prefill/decode split and once with the planner
(manifest `planner:` section) flipping roles in place. Reports goodput (requests meeting
both SLOs) per phase and overall, the split over time, the role flips and how long each
took, and the tokens recomputed by migrations (0 with live migration).

  bench-planner.sh [options]          run everything, write DIR (see --out)
  bench-planner.sh --plots-only DIR   redraw the plots of a results folder

Options (defaults in brackets):
  --workers N             prefill + decode workers [4]
  --rate R                requests/s, Poisson arrivals, the same in every phase [2]
  --phase-s S             seconds per phase [40]
  --phases LIST           input:output lengths per phase ["2048:64,128:1024,2048:64"]
  --slo-ttft-ms MS        TTFT objective [1000]
  --slo-itl-ms MS         objective for each request's p90 inter-token latency [25]
  --splits LIST           static prefill counts to compare ["1..N-1" = every split]
  --start-prefill K       the planner's starting prefill count [N/2]
  --sim "k=v,..."         the sim model (manifest `model: {sim: ...}` keys)
                          ["prefill_us_per_token=300,decode_step_ms=10,decode_per_seq_us=500"]
  --max-batch B           decode max_batch [32]
  --planner "k=v,..."     extra planner keys (interval_ms, cooldown_ms, ...)
  --configs LIST          run only these (e.g. "static-1,planner")
  --out DIR               results folder [bench-results/planner-YYYYmmdd-HHMMSS]
  --no-plots              skip the PNGs (they need python3-matplotlib)
  --resume                with --out DIR of an earlier run: keep the configurations it
                          completed, run the rest
  TOKENMILL_BIN           the tokenmill binary [build/apps/tokenmill]

Results: DIR/<config>/manifest.yaml, launch logs, phase<i>.json and .jsonl (tokenmill bench
--record), status.jsonl (the split every 0.25 s), metrics.txt (the frontend's /metrics at
the end); DIR/summary.json, DIR/README.md (the table), DIR/goodput.png, DIR/split.png.
"""
import argparse
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def die(msg):
    print(f"bench-planner: error: {msg}", file=sys.stderr)
    sys.exit(1)


def say(msg):
    print(f"bench-planner: {msg}", flush=True)


def kv_list(text, what):
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            die(f"{what}: '{item}' is not key=value")
        try:
            out[k.strip()] = float(v) if "." in v else int(v)
        except ValueError:
            die(f"{what}: '{item}': the value is not a number")
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_stat():
    """(total, busy, steal) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    total = sum(v)
    return total, total - v[3] - v[4] - v[7], v[7]


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def manifest_text(name, n_prefill, n_decode, sim, max_batch, planner, ports):
    """One node holding every actor: the workers share nothing but the node, so a flip
    moves a worker between roles exactly as on separate nodes."""
    actors = ["router", "supervisor", "kv_store"]
    actors += ["{prefill: {engine: sim}}"] * n_prefill
    actors += [f"{{decode: {{engine: sim, max_batch: {max_batch}}}}}"] * n_decode
    sim_txt = ", ".join(f"{k}: {v}" for k, v in sim.items())
    lines = [
        f"cluster: {name}",
        f"model: {{sim: {{{sim_txt}}}}}",
        "defaults: {engine: sim, block_tokens: 16}",
        f"frontend: {{node: head, rpc_port: {ports['rpc']}, http_port: {ports['http']}}}",
    ]
    if planner is not None:
        lines.append("planner: {" + ", ".join(f"{k}: {v}" for k, v in planner.items()) + "}")
    lines += [
        "nodes:",
        "  - name: head",
        "    address: 127.0.0.1",
        f"    port: {ports['control']}",
        "    actors: [" + ", ".join(actors) + "]",
    ]
    return "\n".join(lines) + "\n"


class Cluster:
    def __init__(self, binary, manifest, logdir):
        self.binary, self.manifest, self.logdir = binary, manifest, logdir
        self.proc = None
        self.endpoint = None
        self.http = None

    def start(self, timeout=60):
        out = open(os.path.join(self.logdir, "launch.out"), "w")
        self.proc = subprocess.Popen(
            [self.binary, "launch", self.manifest, "--log-dir", self.logdir],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.time() + timeout
        path = os.path.join(self.logdir, "launch.out")
        while time.time() < deadline:
            text = open(path).read()
            m = re.search(r"^tokenmill cluster .* ready.*rpc=(\S+)(?:.*http=(\S+))?", text, re.M)
            if m:
                self.endpoint, self.http = m.group(1), m.group(2)
                return True
            if self.proc.poll() is not None:
                print(text[-3000:], file=sys.stderr)
                return False
            time.sleep(0.2)
        print(open(path).read()[-3000:], file=sys.stderr)
        return False

    def stop(self):
        if not self.proc or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(25)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def poll_status(binary, endpoint, path, stop):
    """Every 0.25 s: the roles of the workers (kind, draining) with the time."""
    with open(path, "w") as f:
        while not stop.is_set():
            t = time.time()
            r = subprocess.run([binary, "status", "--connect", endpoint, "--json", "--timeout", "2"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                try:
                    s = json.loads(r.stdout)
                    ws = [{"name": w.get("name"), "kind": w.get("role"),
                           "draining": (w.get("detail") or "").startswith("draining")}
                          for w in s.get("workers", []) if w.get("role") in ("prefill", "decode")]
                    f.write(json.dumps({"t": t, "workers": ws, "planner": s.get("planner")}) + "\n")
                    f.flush()
                except ValueError:
                    pass
            stop.wait(max(0.0, 0.25 - (time.time() - t)))


def fetch_metrics(http):
    if not http:
        return ""
    host, _, port = http.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(f"GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.decode(errors="replace").split("\r\n\r\n", 1)[-1]
    except OSError as e:
        return f"# fetching /metrics failed: {e}\n"


def p90(xs):
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, math.ceil(0.9 * len(s)) - 1)]


def judge(rec, slo_ttft, slo_itl):
    """(completed, met_ttft, met_itl) of one --record line."""
    if rec.get("outcome") not in ("length", "stop", "eos"):
        return False, False, False
    sent, first = rec["sent_unix_us"], rec.get("first_token_unix_us")
    if first is None:
        return False, False, False
    ttft = (first - sent) / 1000.0
    times = sorted(t[2] for t in rec.get("tokens", []))
    gaps = [(b - a) / 1000.0 for a, b in zip(times, times[1:])]
    return True, ttft <= slo_ttft, p90(gaps) <= slo_itl


def run_config(args, name, n_prefill, planner, out):
    os.makedirs(out, exist_ok=True)
    ports = {"rpc": free_port(), "http": free_port(), "control": free_port()}
    n_decode = args.workers - n_prefill
    manifest = os.path.join(out, "manifest.yaml")
    with open(manifest, "w") as f:
        f.write(manifest_text(f"bench-planner-{name}", n_prefill, n_decode, args.sim_kv,
                              args.max_batch, planner, ports))
    chk = subprocess.run([args.bin, "manifest", "check", manifest], capture_output=True, text=True)
    if chk.returncode != 0:
        die(f"{name}: the manifest is refused:\n{chk.stdout}{chk.stderr}")
    cluster = Cluster(args.bin, manifest, out)
    say(f"{name}: {n_prefill} prefill + {n_decode} decode{' + planner' if planner else ''}")
    if not cluster.start():
        die(f"{name}: the cluster did not become ready (logs in {out})")
    stop = threading.Event()
    poller = threading.Thread(target=poll_status,
                              args=(args.bin, cluster.endpoint, os.path.join(out, "status.jsonl"), stop))
    poller.start()
    t0 = time.time() + 1.0
    benches = []
    try:
        for i, (inp, outp) in enumerate(args.phase_list):
            start = t0 + i * args.phase_s
            time.sleep(max(0.0, start - time.time()))
            n = max(1, round(args.rate * args.phase_s))
            cmd = [args.bin, "bench", "--connect", cluster.endpoint, "--rate", str(args.rate),
                   "--requests", str(n), "--input-len", str(inp), "--output-len", str(outp),
                   "--seed", str(1000 + i), "--max-concurrency", "1024", "--timeout", "300",
                   "--json", "--no-progress", "--output", os.path.join(out, f"phase{i}.json"),
                   "--record", os.path.join(out, f"phase{i}.jsonl")]
            log = open(os.path.join(out, f"phase{i}.log"), "w")
            benches.append((time.time(), subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        for _, b in benches:
            b.wait()
        with open(os.path.join(out, "metrics.txt"), "w") as f:
            f.write(fetch_metrics(cluster.http))
    finally:
        stop.set()
        poller.join()
        cluster.stop()
    starts = [s for s, _ in benches]
    json.dump(starts, open(os.path.join(out, "starts.json"), "w"))
    return summarize_config(args, name, n_prefill, planner is not None, out, starts)


def finished_config(args, name, n_prefill, planned, out):
    """--resume: the summary of a configuration a previous run of DIR completed, or None."""
    if not os.path.exists(os.path.join(out, f"phase{len(args.phase_list) - 1}.json")):
        return None
    sp = os.path.join(out, "starts.json")
    starts = json.load(open(sp)) if os.path.exists(sp) else []
    say(f"{name}: already measured in {out} (--resume)")
    return summarize_config(args, name, n_prefill, planned, out, starts)


def summarize_config(args, name, n_prefill, planned, out, starts):
    phases = []
    tot = {"requests": 0, "completed": 0, "good": 0, "recomputed_tokens": 0, "migrations": 0}
    for i, (inp, outp) in enumerate(args.phase_list):
        recs = []
        path = os.path.join(out, f"phase{i}.jsonl")
        if os.path.exists(path):
            recs = [json.loads(l) for l in open(path) if l.strip()]
        done = good = ttft_ok = itl_ok = recompute = migr = 0
        for r in recs:
            c, a, b = judge(r, args.slo_ttft_ms, args.slo_itl_ms)
            done += c
            ttft_ok += c and a
            itl_ok += c and b
            good += c and a and b
            reasons = r.get("migration_reasons") or []
            migr += len(reasons)
            # A recompute migration re-prefills the prompt plus what was delivered.
            if any(x != "live_migration" and x != "drained" for x in reasons):
                recompute += r.get("prompt_len", 0)
        phases.append({"input_len": inp, "output_len": outp, "requests": len(recs),
                       "completed": done, "met_ttft": ttft_ok, "met_itl": itl_ok, "good": good,
                       "goodput_rps": good / args.phase_s, "migrations": migr,
                       "recomputed_prompt_tokens": recompute,
                       "started_unix": starts[i] if i < len(starts) else None})
        tot["requests"] += len(recs)
        tot["completed"] += done
        tot["good"] += good
        tot["recomputed_tokens"] += recompute
        tot["migrations"] += migr
    timeline = []
    spath = os.path.join(out, "status.jsonl")
    if os.path.exists(spath):
        for line in open(spath):
            s = json.loads(line)
            p = sum(1 for w in s["workers"] if w["kind"] == "prefill")
            d = sum(1 for w in s["workers"] if w["kind"] == "decode")
            if not timeline or timeline[-1][1:] != (p, d):
                timeline.append((s["t"], p, d))
    # Time from each phase shift until the split last changed within that phase.
    react = []
    for i in range(1, len(starts)):
        end = starts[i + 1] if i + 1 < len(starts) else float("inf")
        changes = [t for t, _, _ in timeline if starts[i] <= t < end]
        react.append(round(changes[-1] - starts[i], 2) if changes else None)
    flips = []
    mpath = os.path.join(out, "metrics.txt")
    if os.path.exists(mpath):
        flips = [l.strip() for l in open(mpath) if l.startswith("tokenmill_role_flips_total")]
    # Completed role changes with their time (change_role until serving under the new
    # role), from the supervisor's planner events in the last status.
    changes = {}
    if os.path.exists(spath):
        for line in open(spath):
            for e in (json.loads(line).get("planner") or {}).get("events", []):
                if e.get("kind") == "changed":
                    changes[(e["t_ns"], e["worker"])] = e["took_ms"]
    took = sorted(changes.values())
    return {"config": name, "prefill": n_prefill, "decode": args.workers - n_prefill,
            "planner": planned, "phases": phases, "total": tot,
            "goodput_rps": tot["good"] / (args.phase_s * len(args.phase_list)),
            "split_timeline": [{"t": t - starts[0] if starts else t, "prefill": p, "decode": d}
                               for t, p, d in timeline],
            "reaction_s": react, "flip_metrics": flips, "flips": len(took),
            "flip_ms": {"median": took[len(took) // 2], "max": took[-1]} if took else None}


def write_report(args, results, out, meta):
    best_static = max((r for r in results if not r["planner"]), key=lambda r: r["goodput_rps"],
                      default=None)
    planner = next((r for r in results if r["planner"]), None)
    ratio = (planner["goodput_rps"] / best_static["goodput_rps"]
             if planner and best_static and best_static["goodput_rps"] > 0 else None)
    summary = {"meta": meta, "results": results,
               "best_static": best_static["config"] if best_static else None,
               "planner_vs_best_static": ratio}
    json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
    lines = ["# Planner benchmark", "",
             f"`{meta['command']}` on {meta['cpu_model']} ({meta['nproc']} CPUs), "
             f"CPU steal {meta['cpu_steal_pct']:.1f} %, busy {meta['cpu_busy_pct']:.1f} %.", "",
             "Goodput = requests/s meeting TTFT <= {} ms and p90 ITL <= {} ms.".format(
                 args.slo_ttft_ms, args.slo_itl_ms), ""]
    head = "| config | " + " | ".join(f"phase {i} ({p[0]}/{p[1]})" for i, p in
                                       enumerate(args.phase_list)) + " | overall | migrations | recomputed prompt tokens |"
    lines += [head, "|" + "---|" * (len(args.phase_list) + 4)]
    for r in results:
        cells = [f"{p['goodput_rps']:.2f} ({p['good']}/{p['requests']})" for p in r["phases"]]
        lines.append(f"| {r['config']} | " + " | ".join(cells) +
                     f" | {r['goodput_rps']:.2f} | {r['total']['migrations']} | {r['total']['recomputed_tokens']} |")
    lines.append("")
    if ratio is not None:
        lines.append(f"Planner / best static split ({best_static['config']}): **{ratio:.2f}x**.")
    if planner:
        lines.append(f"Planner split after each shift settled in: {planner['reaction_s']} s; "
                     f"{planner['flips']} flips, time per flip (ms): {planner['flip_ms']}.")
    open(os.path.join(out, "README.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


def plots(out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("no matplotlib: skipping the plots (scripts/setup.sh --bench installs it)")
        return
    s = json.load(open(os.path.join(out, "summary.json")))
    res = s["results"]
    fig, ax = plt.subplots(figsize=(8, 4))
    nph = len(res[0]["phases"]) if res else 0
    width = 0.8 / max(1, len(res))
    for k, r in enumerate(res):
        xs = [i + k * width for i in range(nph)] + [nph + k * width]
        ys = [p["goodput_rps"] for p in r["phases"]] + [r["goodput_rps"]]
        ax.bar(xs, ys, width, label=r["config"])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(nph + 1)])
    ax.set_xticklabels([f"phase {i}\n{p['input_len']}/{p['output_len']}"
                        for i, p in enumerate(res[0]["phases"])] + ["overall"] if res else [])
    ax.set_ylabel("goodput (requests/s meeting both SLOs)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "goodput.png"), dpi=110)
    planner = next((r for r in res if r["planner"]), None)
    if planner and planner["split_timeline"]:
        fig, ax = plt.subplots(figsize=(8, 3))
        tl = planner["split_timeline"]
        ts = [p["t"] for p in tl] + [s["meta"]["phase_s"] * nph]
        ax.step(ts, [p["prefill"] for p in tl] + [tl[-1]["prefill"]], where="post", label="prefill")
        ax.step(ts, [p["decode"] for p in tl] + [tl[-1]["decode"]], where="post", label="decode")
        for i in range(1, nph):
            ax.axvline(i * s["meta"]["phase_s"], color="grey", linestyle=":")
        ax.set_xlabel("s since the first phase started")
        ax.set_ylabel("workers")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "split.png"), dpi=110)


def main():
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("-h", "--help", action="store_true")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--phase-s", type=float, default=40.0)
    ap.add_argument("--phases", default="2048:64,128:1024,2048:64")
    ap.add_argument("--slo-ttft-ms", type=float, default=1000.0)
    ap.add_argument("--slo-itl-ms", type=float, default=25.0)
    ap.add_argument("--splits", default="")
    ap.add_argument("--start-prefill", type=int, default=0)
    ap.add_argument("--sim", default="prefill_us_per_token=300,decode_step_ms=10,decode_per_seq_us=500")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--planner", default="")
    ap.add_argument("--configs", default="")
    ap.add_argument("--out", default="")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--plots-only", default="")
    args = ap.parse_args()
    if args.help:
        print(__doc__)
        return 0
    if args.plots_only:
        plots(args.plots_only)
        return 0
    if args.workers < 2:
        die("--workers must be at least 2 (one prefill and one decode)")
    if args.rate <= 0 or args.phase_s <= 0:
        die("--rate and --phase-s must be positive")
    try:
        args.phase_list = [tuple(int(x) for x in p.split(":")) for p in args.phases.split(",")]
        assert all(len(p) == 2 and p[0] > 0 and p[1] > 0 for p in args.phase_list)
    except (ValueError, AssertionError):
        die(f"--phases: '{args.phases}' is not a list of INPUT:OUTPUT lengths")
    args.sim_kv = kv_list(args.sim, "--sim")
    splits = ([int(x) for x in args.splits.split()] if args.splits
              else list(range(1, args.workers)))
    if any(k < 1 or k >= args.workers for k in splits):
        die(f"--splits: each prefill count must be in 1..{args.workers - 1}")
    start = args.start_prefill or args.workers // 2
    planner = {"ttft_ms": round(args.slo_ttft_ms), "itl_ms": round(args.slo_itl_ms),
               "min_prefill": 1, "min_decode": 1}
    planner.update(kv_list(args.planner, "--planner"))
    args.bin = os.environ.get("TOKENMILL_BIN", os.path.join(REPO, "build/apps/tokenmill"))
    if not os.access(args.bin, os.X_OK):
        die(f"no tokenmill binary at {args.bin} (scripts/build.sh builds it)")
    out = args.out or os.path.join(REPO, "bench-results",
                                   "planner-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    if args.resume and not args.out:
        die("--resume needs --out DIR (the earlier run's folder)")
    configs = [(f"static-{k}", k, None) for k in splits] + [("planner", start, planner)]
    if args.configs:
        want = set(args.configs.replace(",", " ").split())
        configs = [c for c in configs if c[0] in want]
        if not configs:
            die(f"--configs: none of '{args.configs}' is a configuration")
    c0, t0 = cpu_stat(), time.time()
    results = []
    for name, k, pl in configs:
        d = os.path.join(out, name)
        r = finished_config(args, name, k, pl is not None, d) if args.resume else None
        results.append(r or run_config(args, name, k, pl, d))
    c1 = cpu_stat()
    dt = max(1, c1[0] - c0[0])
    meta = {"command": " ".join(["scripts/bench-planner.sh"] + sys.argv[1:]),
            "cpu_model": cpu_model(), "nproc": os.cpu_count(),
            "cpu_busy_pct": 100.0 * (c1[1] - c0[1]) / dt, "cpu_steal_pct": 100.0 * (c1[2] - c0[2]) / dt,
            "duration_s": round(time.time() - t0), "phase_s": args.phase_s, "rate": args.rate,
            "workers": args.workers, "phases": args.phase_list, "sim": args.sim_kv,
            "slo": {"ttft_ms": args.slo_ttft_ms, "itl_p90_ms": args.slo_itl_ms}, "planner": planner,
            "git": subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                                  text=True).stdout.strip()}
    write_report(args, results, out, meta)
    if not args.no_plots:
        plots(out)
    say(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The cpu engine's bench-engine table for each weight dtype, optionally against a second
binary (before/after a change), run interleaved so both see the same machine load.

For each dtype: `tokenmill make-model --preset P --dtype D` (cached in --dir), then
`tokenmill bench-engine --model F --json` with each binary in turn, --reps times. Prints
one table per dtype (median over the repetitions) with prefill tok/s at each prompt
length, decode tok/s at each batch and context, and batch-1 weight bytes/s as a share of
the measured read bandwidth; with --baseline, the ratio new / baseline per figure. The
machine's CPU steal and load average during the runs come from bench-engine's own JSON
and from `vmstat`, sampled while the benchmarks run. Writes everything to --out as JSON.

Usage: scripts/cpu_engine_bench.py [--tokenmill BIN] [--baseline BIN] [--dtypes f16 q4_k]
       [--preset 125m] [--threads 2] [--reps 3] [--dir DIR] [--out FILE] [-- bench args]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vmstat_sampler(samples, stop):
    """Appends (steal %, run queue) once a second until `stop` is set."""
    proc = subprocess.Popen(["vmstat", "1"], stdout=subprocess.PIPE, text=True)
    header = None
    for line in proc.stdout:
        if stop.is_set():
            break
        cols = line.split()
        if "st" in cols:
            header = cols
            continue
        if header and len(cols) == len(header) and cols[0].isdigit():
            samples.append((int(cols[header.index("st")]), int(cols[header.index("r")])))
    proc.terminate()
    proc.wait()


def run_bench(binary, model, threads, extra):
    cmd = [binary, "bench-engine", "--model", model, "--threads", str(threads), "--json"] + extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def figures(j):
    """name -> value of one bench-engine run."""
    f = {}
    for p in j["prefill"]:
        f[f"prefill {p['prompt_tokens']} tok/s"] = p["tokens_per_s"]
    for d in j["decode"]:
        f[f"decode b{d['batch']} ctx{d['context_tokens']} tok/s"] = d["tokens_per_s"]
        if d["batch"] == 1:
            f[f"decode b1 ctx{d['context_tokens']} roofline %"] = (
                100 * d.get("weight_bandwidth_fraction",
                            d["weight_bytes_per_s"] / j["memory_bandwidth"]["bytes_per_s"]))
    return f


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenmill", default=os.path.join(REPO, "build/apps/tokenmill"))
    ap.add_argument("--baseline", help="a second tokenmill binary to compare against")
    ap.add_argument("--dtypes", nargs="+", default=["f16", "bf16", "f32", "q8_0", "q4_0", "q4_k",
                                                    "q6_k"])
    ap.add_argument("--preset", default="125m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/tokenmill-cpu-bench")
    ap.add_argument("--out", default="cpu-engine-bench.json")
    ap.add_argument("extra", nargs="*", help="more bench-engine arguments (after --)")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    bins = {"new": a.tokenmill}
    if a.baseline:
        bins["baseline"] = a.baseline
    samples, stop = [], threading.Event()
    sampler = threading.Thread(target=vmstat_sampler, args=(samples, stop), daemon=True)
    sampler.start()
    results = {}
    for dt in a.dtypes:
        model = os.path.join(a.dir, f"{a.preset}-{dt}.gguf")
        if not os.path.exists(model):
            subprocess.run([a.tokenmill, "make-model", "--preset", a.preset, "--dtype", dt, "-o",
                            model], check=True, capture_output=True)
        runs = {k: [] for k in bins}
        for rep in range(a.reps):
            for name, binary in bins.items():  # interleaved: same load for both
                j = run_bench(binary, model, a.threads, a.extra)
                runs[name].append(j)
                print(f"{dt} rep {rep + 1} {name}: steal "
                      f"{100 * j['machine']['cpu_steal_share']:.1f}%, load "
                      f"{j['machine']['loadavg_1min_before']:.1f}", file=sys.stderr)
        results[dt] = runs
        med = {k: {} for k in bins}
        for name, js in runs.items():
            per = [figures(j) for j in js]
            for key in per[0]:
                med[name][key] = statistics.median(p[key] for p in per)
        print(f"\n== {dt} ({a.preset}, {a.threads} threads, median of {a.reps}; CPU "
              f"{runs['new'][0]['machine']['cpu']})")
        head = f"{'figure':32} {'new':>10}"
        if a.baseline:
            head += f" {'baseline':>10} {'ratio':>7}"
        print(head)
        for key, v in med["new"].items():
            line = f"{key:32} {v:10.1f}"
            if a.baseline:
                b = med["baseline"].get(key)
                line += f" {b:10.1f} {v / b:7.2f}" if b else f" {'-':>10} {'-':>7}"
            print(line)
    stop.set()
    steal = [s for s, _ in samples]
    runq = [r for _, r in samples]
    if steal:
        print(f"\nvmstat over the runs: steal mean {statistics.mean(steal):.1f}% (max "
              f"{max(steal)}%), run queue mean {statistics.mean(runq):.1f} (max {max(runq)})")
    with open(a.out, "w") as f:
        json.dump({"results": results, "vmstat_steal": steal, "vmstat_runq": runq}, f)
    print(f"raw runs: {a.out}")


if __name__ == "__main__":
    main()

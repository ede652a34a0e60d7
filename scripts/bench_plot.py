#!/usr/bin/python3
"""Summary and plots of a scripts/bench-multinode.sh results folder.

  bench_plot.py --summary DIR   reads DIR/meta.json, DIR/runs.tsv and every
                                DIR/<config>-rate<R>.json; writes DIR/summary.json and
                                prints one table row per configuration and rate
  bench_plot.py DIR             reads DIR/summary.json and writes the plots:
      ttft.png         TTFT p50 (solid) and p99 (dashed) against the offered rate
      itl.png          inter-token latency p50 and p99 against the offered rate
      throughput.png   output tokens/s, and achieved against offered requests/s
      goodput.png      requests/s meeting the SLOs, and their fraction
      ttft_stages.png  mean TTFT split into its stages, one stacked bar per config and rate

The plots need matplotlib (Agg backend; no display). Without it they are skipped with a
message saying how to install it (scripts/setup.sh --bench), and the exit code is 0.
"""
import json
import os
import sys

#: TTFT stages in path order (README, "Where the time to first token went").
STAGE_ORDER = ["client_to_frontend", "frontend_to_router", "routing", "decode_reserve",
               "to_prefill", "prefill_queue", "prefill_compute", "kv_transfer", "to_router",
               "router_to_frontend", "frontend_to_client"]


def rate_key(r):
    """'2', '0.5', '10': sorted by value."""
    try:
        return float(r)
    except ValueError:
        return float("inf")


def get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------

def summarize(out_dir):
    meta_path = os.path.join(out_dir, "meta.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    runs = {}
    tsv = os.path.join(out_dir, "runs.tsv")
    rows = []
    if os.path.exists(tsv):
        for line in open(tsv):
            f = line.rstrip("\n").split("\t")
            if len(f) < 7 or f[0] == "config":
                continue
            rows.append(f)
    for config, rate, rc, fname, wall_s, busy_pct, steal_pct in (r[:7] for r in rows):
        entry = {"rc": int(rc), "file": fname, "wall_s": float(wall_s),
                 "cpu_busy_pct": float(busy_pct), "cpu_steal_pct": float(steal_pct)}
        path = os.path.join(out_dir, fname)
        try:
            entry["result"] = json.load(open(path))
        except (OSError, ValueError) as e:
            entry["result"] = None
            entry["error"] = f"no result: {e}"
        entry["ok"] = entry["rc"] == 0 and entry["result"] is not None
        runs.setdefault(config, {})[rate] = entry
    configs = meta.get("configs") or sorted(runs)
    summary = {
        "manifest": meta.get("manifest"),
        "cluster": meta.get("cluster"),
        "command": meta.get("command"),
        "configs": configs,
        "rates": meta.get("rates") or sorted({r for c in runs.values() for r in c}, key=rate_key),
        "requests": meta.get("requests"),
        "input_len": meta.get("input_len"),
        "output_len": meta.get("output_len"),
        "workload": meta.get("workload"),
        "slo": meta.get("slo"),
        "machine": meta.get("machine"),
        "git": meta.get("git"),
        "runs": runs,
    }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    print_table(summary)
    return summary


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(s):
    hdr = (f"{'config':<8} {'rate':>6} {'req/s':>7} {'ttft_p50':>9} {'ttft_p99':>9} "
           f"{'itl_p50':>8} {'itl_p99':>8} {'out_tok/s':>9} {'goodput':>8} {'good%':>6} "
           f"{'failed':>6} {'steal%':>6}")
    print(hdr)
    for config in s["configs"]:
        for rate in sorted(s["runs"].get(config, {}), key=rate_key):
            e = s["runs"][config][rate]
            j = e.get("result") or {}
            frac = get(j, "goodput", "fraction")
            print(f"{config:<8} {rate:>6} {fmt(j.get('requests_per_s'), '7.2f')} "
                  f"{fmt(get(j, 'ttft_ms', 'p50'), '9.1f')} {fmt(get(j, 'ttft_ms', 'p99'), '9.1f')} "
                  f"{fmt(get(j, 'itl_ms', 'p50'), '8.2f')} {fmt(get(j, 'itl_ms', 'p99'), '8.2f')} "
                  f"{fmt(j.get('output_tokens_per_s'), '9.1f')} "
                  f"{fmt(get(j, 'goodput', 'requests_per_s'), '8.2f')} "
                  f"{fmt(None if frac is None else 100 * frac, '6.1f')} "
                  f"{fmt(j.get('failed'), '6d')} {e.get('cpu_steal_pct', 0):6.1f}"
                  + ("" if e.get("ok") else f"  FAILED (rc {e.get('rc')})"))
    print("(times in ms; rate = offered req/s; req/s = achieved; goodput = req/s meeting the "
          "SLOs; steal% = CPU time the hypervisor took during the run)")


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------

def series(s, config, *path):
    """(offered rates, values) of one metric for one config; failed runs left out."""
    xs, ys = [], []
    for rate in sorted(s["runs"].get(config, {}), key=rate_key):
        e = s["runs"][config][rate]
        v = get(e.get("result") or {}, *path)
        if v is not None:
            xs.append(float(rate))
            ys.append(v)
    return xs, ys


def title_of(s, what):
    name = s.get("cluster") or "?"
    man = os.path.basename(s.get("manifest") or "")
    wl = (f"{s.get('workload') or '?'} workload, {s.get('input_len')} in / "
          f"{s.get('output_len')} out tokens, {s.get('requests')} requests per rate")
    return f"{what}: {name} ({man})\n{wl}"


def plot(out_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench_plot: matplotlib is not installed; skipping the plots. Install it with "
              "`scripts/setup.sh --bench` (apt-get install python3-matplotlib), then run "
              f"`/usr/bin/python3 scripts/bench_plot.py {out_dir}`")
        return 0
    s = json.load(open(os.path.join(out_dir, "summary.json")))
    configs = s["configs"]
    colors = {c: plt.get_cmap("tab10")(i) for i, c in enumerate(configs)}
    written = []

    def finish(fig, name):
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    def latency(metric, name, what):
        fig, ax = plt.subplots(figsize=(8, 5))
        for c in configs:
            for q, style in (("p50", "-"), ("p99", "--")):
                xs, ys = series(s, c, metric, q)
                if xs:
                    ax.plot(xs, ys, style, marker="o", color=colors[c], label=f"{c} {q}")
        ax.set_xlabel("offered load (requests/s)")
        ax.set_ylabel(f"{what} (ms)")
        ax.set_title(title_of(s, what))
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
        finish(fig, name)

    latency("ttft_ms", "ttft.png", "time to first token")
    latency("itl_ms", "itl.png", "inter-token latency")

    all_rates = [float(r) for r in s.get("rates") or []]
    # Throughput: output tokens/s, and achieved against offered requests/s.
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5))
    for c in configs:
        xs, ys = series(s, c, "output_tokens_per_s")
        if xs:
            a1.plot(xs, ys, marker="o", color=colors[c], label=c)
        xs, ys = series(s, c, "requests_per_s")
        if xs:
            a2.plot(xs, ys, marker="o", color=colors[c], label=c)
    if all_rates:
        top = max(all_rates)
        a2.plot([0, top], [0, top], ":", color="gray", label="achieved = offered")
    a1.set_xlabel("offered load (requests/s)")
    a1.set_ylabel("output tokens/s")
    a1.set_title("output token throughput")
    a2.set_xlabel("offered load (requests/s)")
    a2.set_ylabel("achieved requests/s")
    a2.set_title("achieved request rate")
    for a in (a1, a2):
        a.set_xlim(left=0)
        a.set_ylim(bottom=0)
        a.grid(True, alpha=0.3)
        a.legend()
    fig.suptitle(title_of(s, "throughput"))
    finish(fig, "throughput.png")

    # Goodput.
    slo = {k: v for k, v in (s.get("slo") or {}).items() if v not in (None, "", 0)}
    if not slo:  # none given: what the bench applied
        slo = next((get(e.get("result") or {}, "goodput", "slo") for c in s["runs"].values()
                    for e in c.values() if isinstance(get(e.get("result") or {}, "goodput", "slo"),
                                                      dict)), None) or {}
    slo_txt = ", ".join(f"{k.replace('_ms', '')} <= {v} ms" for k, v in slo.items()
                        if v not in (None, "", 0)) or "no SLO given"
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5))
    for c in configs:
        xs, ys = series(s, c, "goodput", "requests_per_s")
        if xs:
            a1.plot(xs, ys, marker="o", color=colors[c], label=c)
        xs, ys = series(s, c, "goodput", "fraction")
        if xs:
            a2.plot(xs, [100 * y for y in ys], marker="o", color=colors[c], label=c)
    if all_rates:
        top = max(all_rates)
        a1.plot([0, top], [0, top], ":", color="gray", label="every request in SLO")
    a1.set_xlabel("offered load (requests/s)")
    a1.set_ylabel("goodput (requests/s within SLO)")
    a1.set_title("goodput")
    a1.set_ylim(bottom=0)
    a2.set_xlabel("offered load (requests/s)")
    a2.set_ylabel("requests within SLO (%)")
    a2.set_title("fraction of requests within SLO")
    a2.set_ylim(0, 105)
    for a in (a1, a2):
        a.set_xlim(left=0)
        a.grid(True, alpha=0.3)
        a.legend()
    fig.suptitle(title_of(s, f"goodput ({slo_txt})"))
    finish(fig, "goodput.png")

    # TTFT stages: one stacked bar per (rate, config).
    bars = []  # (label, {stage: ms}, measured ttft mean)
    for rate in sorted({r for c in configs for r in s["runs"].get(c, {})}, key=rate_key):
        for c in configs:
            e = s["runs"].get(c, {}).get(rate)
            st = get((e or {}).get("result") or {}, "ttft_stages_mean_ms")
            if isinstance(st, dict) and st:
                bars.append((f"{c}\n{rate}/s", st, get(e["result"], "ttft_ms", "mean")))
    stages = [x for x in STAGE_ORDER if any(x in b[1] for b in bars)]
    stages += sorted({k for b in bars for k in b[1]} - set(stages))
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(bars) + 4), 6))
    cmap = plt.get_cmap("tab20")
    bottoms = [0.0] * len(bars)
    xs = list(range(len(bars)))
    for i, stage in enumerate(stages):
        vals = [float(b[1].get(stage) or 0) for b in bars]
        ax.bar(xs, vals, 0.7, bottom=bottoms, color=cmap(i % 20), label=stage)
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    means = [b[2] for b in bars]
    if any(m is not None for m in means):
        ax.plot([x for x, m in zip(xs, means) if m is not None], [m for m in means if m is not None],
                "k_", markersize=22, markeredgewidth=2, label="measured TTFT mean")
    ax.set_xticks(xs)
    ax.set_xticklabels([b[0] for b in bars])
    ax.set_xlabel("configuration and offered load (requests/s)")
    ax.set_ylabel("mean time (ms)")
    ax.set_title(title_of(s, "where the time to first token goes"))
    ax.grid(True, axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()  # top of the legend = top of the stack
    ax.legend(handles[::-1], labels[::-1], fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if not bars:
        ax.text(0.5, 0.5, "no run reported ttft_stages_mean_ms", ha="center",
                transform=ax.transAxes)
    finish(fig, "ttft_stages.png")
    for p in written:
        print(f"bench_plot: wrote {p}")
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "--summary":
        summarize(argv[2])
        return 0
    if len(argv) == 2 and not argv[1].startswith("-"):
        return plot(argv[1])
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

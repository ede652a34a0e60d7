#!/usr/bin/python3
"""The analysis half of scripts/bench-chaos.sh: reads `tokenmill bench --record` files
(one JSON line per request) and what the script wrote about its faults, prints a table per
fault, the totals, and as the last line one JSON object. Standard library only.

  chaos_report.py chaos --ref REF.jsonl --run RUN.jsonl --faults FAULTS.json
                        --workers WORKERS.json --leak LEAK.json --meta META.json
      FAULTS.json: [{"fault": "kill-decode", "node": "d0", "signal": "KILL", "at_us": epoch us,
                     "until_us": epoch us (SIGSTOP: the SIGCONT), "restart": how the node came
                     back, "skipped": reason (optional)}, ...]
      WORKERS.json: `tokenmill status --json` taken before the load (worker id/name -> node)
      LEAK.json: {"final": status --json after the load settled, "settle_s": ..., ...}
      META.json: {"cpu": ..., "steal_pct": ..., ...}: copied into the JSON line
  chaos_report.py migration --ref REF.jsonl --run RUN.jsonl --kill-us EPOCH_US --node NAME
                            --meta META.json
      One request, its decode node killed at KILL_US: the gap and the total time against
      the undisturbed run.

Definitions (the script's header says the same):
  sent       requests in the run's record
  completed  ended with a finish reason (length, stop, eos)
  failed     did not complete: an error code, or no end within bench's --timeout (a hang)
  lost       failed requests that a fault explains: hung (outcome "timeout" after at least
             0.99 x the timeout with no error from the server) or ended with worker_failed,
             no_workers, unavailable, timeout, kv_corrupt or internal. invalid_request,
             overloaded, cancelled and out_of_blocks are failed but not lost.
  migrated   requests whose record says migrations > 0; null when the records carry no
             migration count (the router does not report one yet)
  differing  requests with a token, at an index both runs delivered, different from the
             reference run's, or completed with another length; requests whose reference
             failed are "unverified" instead
  duplicated / missing  requests that received a token index twice / never received an
             index below their end (bench's own check, summed here)
"""
import argparse
import json
import math
import re
import sys

FAULT_CODES = {"worker_failed", "no_workers", "unavailable", "timeout", "kv_corrupt", "internal"}
FINISHED = {"length", "stop", "eos"}
#: Width of the window after a fault whose TTFT and ITL are compared with before the faults.
WINDOW_US = 5_000_000


def read_jsonl(path):
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"chaos_report: {path}:{n}: not JSON: {e}")
            out[r["i"]] = r
    return out


def load(path):
    with open(path) as f:
        return json.load(f)


def pct(values, p):
    """The p-th percentile (nearest rank, as common/stats does not matter here: both sides
    of every comparison use this one)."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, math.ceil(p / 100 * len(v)) - 1))
    return v[k]


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def completed(r):
    return r.get("outcome") in FINISHED


def hung(r, timeout_s):
    # bench's bounded wait expired: the client's own timeout, not a server error
    if r.get("outcome") != "timeout":
        return False
    return (r["end_unix_us"] - r["sent_unix_us"]) >= 0.99 * timeout_s * 1e6


def lost(r, timeout_s):
    if completed(r):
        return False
    return hung(r, timeout_s) or r.get("outcome") in FAULT_CODES


def token_times(r):
    """[(index, id, epoch us)] in arrival order."""
    return [(t[0], t[1], r["sent_unix_us"] + t[2]) for t in r.get("tokens", [])]


def itl_gaps(r):
    """[(epoch us of the later token, gap ms)] between consecutive arrivals; tokens of one
    chunk arrive together (gap 0), as bench counts them."""
    tt = token_times(r)
    return [(tt[k][2], (tt[k][2] - tt[k - 1][2]) / 1e3) for k in range(1, len(tt))]


def first_ids(r):
    ids = {}
    for idx, tid, _ in token_times(r):
        ids.setdefault(idx, tid)
    return ids


def differs(r, ref):
    """True/False, or None when the reference did not complete (cannot tell)."""
    if ref is None or not completed(ref):
        return None
    a, b = first_ids(r), first_ids(ref)
    if any(idx in b and b[idx] != tid for idx, tid in a.items()):
        return True
    if any(idx not in b for idx in a):  # past the reference's end
        return True
    if completed(r) and r.get("completion_tokens") != ref.get("completion_tokens"):
        return True
    return False


def worker_maps(status):
    by_id, by_name = {}, {}
    for w in status.get("workers", []):
        by_id[w["id"]] = w["node"]
        by_name[w["name"]] = w["node"]
    return by_id, by_name


ERR_WORKER = re.compile(r"(decode|prefill) worker (\d+) failed")


def uses(r, by_id, by_name):
    """{(node, "prefill"|"decode")} a request was known to use: from its summary (completed)
    or its error message ("decode worker 5 failed")."""
    out = set()
    for role in ("prefill", "decode"):
        if r.get(f"{role}_worker"):
            w = r[f"{role}_worker"]
            out.add((by_name.get(w, w), role))
    m = ERR_WORKER.search(r.get("error") or "")
    if m:
        out.add((by_id.get(int(m.group(2)), f"worker {m.group(2)}"), m.group(1)))
    return out


def on_node(r, node, at, by_id, by_name):
    """Whether `r` was on `node` at time `at`: decoding there, or waiting for its prefill
    there (no first token yet; a finished prefill no longer needs the prefill node)."""
    for n, role in uses(r, by_id, by_name):
        if n != node:
            continue
        if role == "decode":
            return True
        first = r.get("first_token_unix_us")
        if first is None or first > at:
            return True
    return False


def migrations(r):
    v = r.get("migrations")
    return v if isinstance(v, int) else None


def chaos(a):
    ref, run = read_jsonl(a.ref), read_jsonl(a.run)
    faults = load(a.faults)
    by_id, by_name = worker_maps(load(a.workers))
    leak = load(a.leak)
    meta = load(a.meta)
    timeout_s = float(meta.get("timeout_s", 600))
    recs = [run[i] for i in sorted(run)]
    if not recs:
        sys.exit("chaos_report: the run recorded no request")
    t0 = min(r["sent_unix_us"] for r in recs)
    have_migr = any(migrations(r) is not None for r in recs)
    injected = [f for f in faults if not f.get("skipped")]
    first_fault = min((f["at_us"] for f in injected), default=None)

    def fate_us(r):
        # when the request's outcome was decided: its end; for a hang, its last token
        if hung(r, timeout_s):
            tt = token_times(r)
            return tt[-1][2] if tt else r["sent_unix_us"]
        return r["end_unix_us"]

    def window_stats(lo, hi, among=recs):
        ttft = [(r["first_token_unix_us"] - r["sent_unix_us"]) / 1e3 for r in among
                if lo <= r["sent_unix_us"] < hi and r.get("first_token_unix_us")]
        itl = [g for r in among for (t, g) in itl_gaps(r) if lo <= t < hi]
        return {"ttft_p99_ms": pct(ttft, 99), "itl_p99_ms": pct(itl, 99),
                "ttft_n": len(ttft), "itl_n": len(itl)}

    end_us = max(r["end_unix_us"] for r in recs)
    before = window_stats(t0, first_fault if first_fault else end_us + 1)
    ref_recs = [ref[i] for i in sorted(ref)]
    ref_t0 = min((r["sent_unix_us"] for r in ref_recs), default=0)
    ref_stats = window_stats(ref_t0, 1 << 62, ref_recs) if ref_recs else {}

    # Each request belongs to the window of the last fault at or before its fate.
    starts = sorted(f["at_us"] for f in injected)

    def window_of(r):
        t = fate_us(r)
        k = None
        for n, s in enumerate(starts):
            if s <= t:
                k = n
        return k

    per_fault = []
    for f in faults:
        d = {"fault": f["fault"], "node": f.get("node"), "signal": f.get("signal")}
        if f.get("skipped"):
            d["skipped"] = f["skipped"]
            per_fault.append(d)
            continue
        at = f["at_us"]
        k = starts.index(at)
        nxt = starts[k + 1] if k + 1 < len(starts) else None
        inflight = [r for r in recs if r["sent_unix_us"] <= at < r["end_unix_us"]]
        on = [r for r in inflight if on_node(r, f.get("node"), at, by_id, by_name)]
        unattributed = [r for r in inflight if not uses(r, by_id, by_name)]
        mine = [r for r in recs if window_of(r) == k]
        # the first token after the fault to a request that was on the faulted node
        # (with migration counts: only migrated ones count)
        # (with migration counts: any in-flight request that migrated, as its summary names
        # the worker it ended on, not the faulted one)
        cands = []
        for r in (inflight if have_migr else on):
            if have_migr and not migrations(r):
                continue
            cands += [t for (_, _, t) in token_times(r) if t > at]
        recover = (min(cands) - at) / 1e3 if cands else None
        new_tok = [token_times(r)[0][2] for r in recs
                   if r["sent_unix_us"] >= at and r.get("tokens")]
        win_hi = min(at + WINDOW_US, nxt) if nxt else at + WINDOW_US
        d.update({
            "at_s": (at - t0) / 1e6,
            "resumed_at_s": (f["until_us"] - t0) / 1e6 if f.get("until_us") else None,
            "restart": f.get("restart"),
            "in_flight": len(inflight),
            "in_flight_on_node": len(on),
            "in_flight_unattributed": len(unattributed),
            "window_requests": len(mine),
            "completed": sum(completed(r) for r in mine),
            "migrated": sum(bool(migrations(r)) for r in mine) if have_migr else None,
            "failed": sum(not completed(r) for r in mine),
            "lost": sum(lost(r, timeout_s) for r in mine),
            "hung": sum(hung(r, timeout_s) for r in mine),
            "in_flight_completed": sum(completed(r) for r in inflight),
            "in_flight_failed": sum(not completed(r) for r in inflight),
            "recover_ms": recover,
            "first_new_request_token_ms": (min(new_tok) - at) / 1e3 if new_tok else None,
            "window_s": (win_hi - at) / 1e6,
            "window": window_stats(at, win_hi),
            "errors": sorted({r.get("outcome") for r in mine if not completed(r)}),
        })
        per_fault.append(d)

    # Totals.
    diff = [differs(r, ref.get(i)) for i, r in run.items()]
    totals = {
        "sent": len(recs),
        "completed": sum(completed(r) for r in recs),
        "migrated": sum(bool(migrations(r)) for r in recs) if have_migr else None,
        "failed": sum(not completed(r) for r in recs),
        "lost": sum(lost(r, timeout_s) for r in recs),
        "hung": sum(hung(r, timeout_s) for r in recs),
        "differing": sum(x is True for x in diff),
        "unverified": sum(x is None for x in diff),
        "duplicated": sum(r.get("duplicated", 0) > 0 for r in recs),
        "missing": sum(r.get("missing", 0) > 0 for r in recs),
        "leaked_blocks": leak.get("leaked_blocks"),
    }
    before_fails = sum(not completed(r) for r in recs if window_of(r) is None)
    ref_summary = {"sent": len(ref_recs), "completed": sum(completed(r) for r in ref_recs),
                   "failed": sum(not completed(r) for r in ref_recs),
                   "duplicated": sum(r.get("duplicated", 0) > 0 for r in ref_recs),
                   "missing": sum(r.get("missing", 0) > 0 for r in ref_recs)}
    outcomes = {}
    for r in recs:
        outcomes[r.get("outcome") or "none"] = outcomes.get(r.get("outcome") or "none", 0) + 1

    # The table.
    print(f"bench-chaos: {len(recs)} requests, rate {meta.get('rate')}/s, "
          f"{meta.get('input_len')} prompt + {meta.get('output_len')} output tokens, "
          f"temperature {meta.get('temperature')}, timeout {timeout_s:g} s; "
          f"CPU {meta.get('cpu')} x{meta.get('cpus')}, steal {fmt(meta.get('steal_pct'))}%, "
          f"busy {fmt(meta.get('busy_pct'))}%")
    print(f"before the first fault: TTFT p99 {fmt(before['ttft_p99_ms'])} ms, "
          f"ITL p99 {fmt(before['itl_p99_ms'])} ms; reference run (no faults, "
          f"{meta.get('reference_load', '?')}): "
          f"TTFT p99 {fmt(ref_stats.get('ttft_p99_ms'))} ms, "
          f"ITL p99 {fmt(ref_stats.get('itl_p99_ms'))} ms, "
          f"{ref_summary['completed']}/{ref_summary['sent']} completed")
    hdr = (f"{'fault':<13}{'node':<6}{'at s':>6}{'inflt':>6}{'onnode':>7}{'win':>5}{'done':>5}"
           f"{'migr':>5}{'fail':>5}{'lost':>5}{'recov ms':>9}{'TTFTp99':>9}{'ITLp99':>8}"
           f"  errors; how the node came back")
    print(hdr)
    print("-" * len(hdr))
    for d in per_fault:
        if d.get("skipped"):
            print(f"{d['fault']:<13}{d.get('node') or '-':<6}  skipped: {d['skipped']}")
            continue
        w = d["window"]
        print(f"{d['fault']:<13}{d['node']:<6}{d['at_s']:>6.1f}{d['in_flight']:>6}"
              f"{d['in_flight_on_node']:>7}{d['window_requests']:>5}{d['completed']:>5}"
              f"{fmt(d['migrated']):>5}{d['failed']:>5}{d['lost']:>5}{fmt(d['recover_ms']):>9}"
              f"{fmt(w['ttft_p99_ms']):>9}{fmt(w['itl_p99_ms']):>8}"
              f"  {','.join(d['errors']) or 'no errors'}; {d.get('restart') or '-'}")
    print("-" * len(hdr))
    print(f"{'totals':<19}{'':>6}{'':>6}{'':>7}{totals['sent']:>5}{totals['completed']:>5}"
          f"{fmt(totals['migrated']):>5}{totals['failed']:>5}{totals['lost']:>5}")
    print("at s: injected, s after the run's first request. inflt: requests in flight then;"
          " onnode: of those, known (summary\nor error) to be decoding on the faulted node or"
          " waiting for their prefill on it. win: requests decided (ended; a hang: its\nlast"
          " token) between this fault and the next; done/migr/fail/lost of those. recov ms:"
          " fault -> first token after it to an\nin-flight request of the faulted node (with"
          " migration counts: of a migrated request). TTFT/ITL p99: requests sent / gaps\n"
          f"ending in the {WINDOW_US / 1e6:g} s after the fault (at most until the next).")
    print(f"totals: sent {totals['sent']}, completed {totals['completed']}, migrated "
          f"{fmt(totals['migrated'])}, failed {totals['failed']} (before any fault: "
          f"{before_fails}), lost {totals['lost']} (hung {totals['hung']}), differing "
          f"{totals['differing']} (unverified {totals['unverified']}), duplicated "
          f"{totals['duplicated']}, missing {totals['missing']}, leaked blocks "
          f"{fmt(totals['leaked_blocks'])} ({leak.get('what', '')})")
    print(f"outcomes: {json.dumps(outcomes, sort_keys=True)}")
    out = dict(totals)
    out.update({
        "benchmark": "chaos",
        "cpu": meta.get("cpu"),
        "cpus": meta.get("cpus"),
        "steal": meta.get("steal_pct"),
        "busy": meta.get("busy_pct"),
        "migration_counts": have_migr,
        "outcomes": outcomes,
        "failed_before_first_fault": before_fails,
        "before": before,
        "reference": dict(ref_summary, **ref_stats),
        "leak": {k: v for k, v in leak.items() if k != "final"},
        "faults": per_fault,
        "config": {k: meta.get(k) for k in ("rate", "requests", "input_len", "output_len",
                                            "temperature", "seed", "seed_base", "timeout_s",
                                            "quick", "reference_load", "manifest",
                                            "launcher_restart",
                                            "script_relaunch", "commit")},
        "out": meta.get("out"),
    })
    print(json.dumps(out, separators=(",", ":")))


def migration(a):
    ref, run = read_jsonl(a.ref), read_jsonl(a.run)
    meta = load(a.meta)
    r0, r1 = ref.get(0), run.get(0)
    if r0 is None or r1 is None:
        sys.exit("chaos_report: a record of the one request is missing")
    kill = a.kill_us
    tt0, tt1 = token_times(r0), token_times(r1)
    before = [t for t in tt1 if t[2] <= kill]
    after = [t for t in tt1 if t[2] > kill]
    # The resume gap: the longest wait for a token after the kill (tokens already on their
    # way arrive first). Only a request that went on to complete resumed at all.
    gap_ms = None
    if after and completed(r1):
        times = [before[-1][2] if before else r1["sent_unix_us"]] + [t[2] for t in after]
        gap_ms = max(times[k] - times[k - 1] for k in range(1, len(times))) / 1e3
    ref_itl = [g for (_, g) in itl_gaps(r0) if g > 0]
    e2e = lambda r: (r["end_unix_us"] - r["sent_unix_us"]) / 1e3
    ttft = lambda r: ((r["first_token_unix_us"] - r["sent_unix_us"]) / 1e3
                      if r.get("first_token_unix_us") else None)
    d = differs(r1, r0)
    out = {
        "benchmark": "migration-cost",
        "prompt_len": r1.get("prompt_len"),
        "max_tokens": r1.get("max_tokens"),
        "killed_node": a.node,
        "tokens_before_kill": len(before),
        "tokens_after_kill": len(after),
        "outcome": r1.get("outcome"),
        "error": r1.get("error"),
        "migrations": migrations(r1),
        "tokens_delivered": len(tt1),
        "reference_tokens": len(tt0),
        "ttft_ms": ttft(r1),
        "reference_ttft_ms": ttft(r0),
        "gap_ms": gap_ms,
        "reference_itl_p50_ms": pct(ref_itl, 50),
        "reference_itl_max_ms": max(ref_itl) if ref_itl else None,
        "e2e_ms": e2e(r1) if completed(r1) else None,
        "reference_e2e_ms": e2e(r0) if completed(r0) else None,
        "extra_ms": (e2e(r1) - e2e(r0)) if completed(r1) and completed(r0) else None,
        "differing": d,
        "duplicated": r1.get("duplicated"),
        "missing": r1.get("missing"),
        "cpu": meta.get("cpu"),
        "cpus": meta.get("cpus"),
        "steal": meta.get("steal_pct"),
    }
    print(f"migration cost: {out['prompt_len']}-token prompt, decode node {a.node} killed after "
          f"{out['tokens_before_kill']} delivered tokens (of {out['max_tokens']})")
    print(f"  outcome        {out['error'] or out['outcome']}")
    note = " (the records carry no count)" if out["migrations"] is None else ""
    print(f"  migrations     {fmt(out['migrations'])}{note}")
    print(f"  tokens         {out['tokens_delivered']} delivered, reference {out['reference_tokens']}"
          f"; differing {out['differing']}, duplicated {out['duplicated']}, missing "
          f"{out['missing']}")
    print(f"  resume gap     {fmt(out['gap_ms'])} ms (the longest ITL after the kill; '-': the"
          f" request did not complete), {out['tokens_after_kill']} tokens after the kill;"
          f" reference ITL p50 {fmt(out['reference_itl_p50_ms'], 2)} ms,"
          f" max {fmt(out['reference_itl_max_ms'], 2)} ms")
    print(f"  total time     {fmt(out['e2e_ms'])} ms vs {fmt(out['reference_e2e_ms'])} ms "
          f"undisturbed: {fmt(out['extra_ms'])} ms more")
    print(json.dumps(out, separators=(",", ":")))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("chaos")
    for k in ("ref", "run", "faults", "workers", "leak", "meta"):
        c.add_argument(f"--{k}", required=True)
    c.set_defaults(fn=chaos)
    m = sub.add_parser("migration")
    for k in ("ref", "run", "node", "meta"):
        m.add_argument(f"--{k}", required=True)
    m.add_argument("--kill-us", type=int, required=True)
    m.set_defaults(fn=migration)
    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()

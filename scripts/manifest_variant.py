#!/usr/bin/python3
"""Manifest variants for scripts/bench-multinode.sh (needs python3-yaml).

  manifest_variant.py write MANIFEST OUT --config disagg|agg [--free-ports]
      Writes the manifest for one benchmark configuration to OUT:
        disagg  the manifest as written (its prefill workers prefill remotely)
        agg     the same nodes and number of workers, every prefill worker turned into a
                decode worker, and router.local_prefill_threshold at 4294967295, so every
                prompt is prefilled by the decode worker that serves it
      In both, a relative model path becomes absolute (OUT lives in another folder), and
      --free-ports gives every loopback node, and the frontend when its node is on
      loopback, ports that are free right now.
  manifest_variant.py info MANIFEST
      Prints one JSON object: cluster, frontend {node, host, rpc_port}, nodes [{name,
      address, port, ssh, local, roles}], workers {prefill, decode}.

Comments of the original are not kept: the variant is YAML written by PyYAML. The
original is copied beside it by the benchmark script.
"""
import argparse
import copy
import ipaddress
import json
import os
import socket
import sys

try:
    import yaml
except ImportError:
    sys.exit("manifest_variant: python3-yaml is missing (scripts/setup.sh --bench installs it)")

#: router.local_prefill_threshold for agg: prompts shorter than this are prefilled locally.
LOCAL_ALWAYS = 4294967295
#: Options a decode worker takes (cluster/manifest.cpp decode_keys).
DECODE_KEYS = ("engine", "threads", "device", "kv_blocks", "max_batch", "local_prefill_budget",
               "slowdown")
#: What a prefill worker keeps when it becomes a decode worker: how it computes.
WORKER_KEYS = ("engine", "threads", "device", "slowdown")


def die(msg):
    sys.exit(f"manifest_variant: {msg}")


def load(path):
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        die(f"cannot read {path}: {e}")
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        die(f"{path}: not a manifest (a map with a list of nodes); "
            f"`tokenmill manifest check {path}` says what is wrong")
    return doc


def actor_role(a):
    """(role, options dict or None) of one actor entry: 'decode' or {decode: {...}}."""
    if isinstance(a, str):
        return a, None
    if isinstance(a, dict) and len(a) == 1:
        (role, opts), = a.items()
        return role, opts if isinstance(opts, dict) else None
    return None, None


def is_local(address):
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def make_agg(doc):
    """Every prefill worker becomes a decode worker with the decode-side options (kv_blocks,
    max_batch, local_prefill_budget) of the cluster's first decode worker, or the defaults
    when that one gives none; engine, threads, device and slowdown stay the prefill
    worker's own. A prefill worker's pool is a staging area for prompts in flight, so its
    kv_blocks would be too small for a decode worker that keeps sequences to the end."""
    first_decode = None
    for n in doc["nodes"]:
        for a in n.get("actors") or []:
            role, opts = actor_role(a)
            if role == "decode" and first_decode is None:
                first_decode = opts or {}
    if first_decode is None:
        die("the manifest has no decode worker")
    converted = 0
    for n in doc["nodes"]:
        acts = n.get("actors") or []
        for i, a in enumerate(acts):
            role, opts = actor_role(a)
            if role != "prefill":
                continue
            new = {k: v for k, v in (opts or {}).items() if k in WORKER_KEYS}
            for k in ("kv_blocks", "max_batch", "local_prefill_budget"):
                if k in first_decode:
                    new[k] = first_decode[k]
            acts[i] = {"decode": new} if new else "decode"
            converted += 1
    router = doc.get("router") or {}
    router["local_prefill_threshold"] = LOCAL_ALWAYS
    doc["router"] = router
    return converted


def write(args):
    doc = load(args.manifest)
    base = os.path.dirname(os.path.abspath(args.manifest))
    model = doc.get("model")
    if isinstance(model, dict) and isinstance(model.get("path"), str):
        p = model["path"]
        if not os.path.isabs(p):
            model["path"] = os.path.normpath(os.path.join(base, p))
    if args.config == "agg":
        n = make_agg(doc)
        print(f"manifest_variant: agg: {n} prefill worker(s) became decode workers; "
              f"router.local_prefill_threshold={LOCAL_ALWAYS}")
    elif args.config != "disagg":
        die(f"unknown config '{args.config}' (expected disagg or agg)")
    if args.free_ports:
        local_nodes = [n for n in doc["nodes"] if is_local(str(n.get("address", "")))]
        fe = doc.get("frontend") or {}
        fe_node = next((n for n in doc["nodes"] if n.get("name") == fe.get("node")), None)
        fe_local = fe_node is not None and fe_node in local_nodes
        ports = free_ports(len(local_nodes) + (2 if fe_local else 0))
        for n in local_nodes:
            n["port"] = ports.pop()
        if fe_local:
            fe["rpc_port"], fe["http_port"] = ports.pop(), ports.pop()
            doc["frontend"] = fe
    with open(args.out, "w") as f:
        f.write(f"# {args.config} variant of {os.path.abspath(args.manifest)}, "
                "written by scripts/manifest_variant.py\n")
        yaml.safe_dump(doc, f, sort_keys=False, default_flow_style=None, width=100)


def info(args):
    doc = load(args.manifest)
    nodes, workers = [], {"prefill": 0, "decode": 0}
    for idx, n in enumerate(doc["nodes"]):
        roles = []
        for a in n.get("actors") or []:
            role, _ = actor_role(a)
            roles.append(role)
            if role in workers:
                workers[role] += 1
        addr = str(n.get("address", ""))
        nodes.append({"name": n.get("name"), "address": addr, "port": n.get("port", 7800 + idx),
                      "ssh": n.get("ssh", ""), "local": is_local(addr), "roles": roles})
    fe = doc.get("frontend") or {}
    fe_node = next((n for n in nodes if n["name"] == fe.get("node")), None)
    host = fe.get("host") or (fe_node["address"] if fe_node else "")
    if host == "0.0.0.0":
        host = "127.0.0.1" if fe_node is None or fe_node["local"] else fe_node["address"]
    json.dump({"cluster": doc.get("cluster", ""),
               "frontend": {"node": fe.get("node"), "host": host,
                            "rpc_port": fe.get("rpc_port", 7700)},
               "nodes": nodes, "workers": workers}, sys.stdout)
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write the manifest of one configuration")
    w.add_argument("manifest")
    w.add_argument("out")
    w.add_argument("--config", required=True, choices=["disagg", "agg"])
    w.add_argument("--free-ports", action="store_true")
    w.set_defaults(fn=write)
    i = sub.add_parser("info", help="print the cluster's layout as JSON")
    i.add_argument("manifest")
    i.set_defaults(fn=info)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()

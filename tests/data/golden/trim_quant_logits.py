#!/usr/bin/env python3
"""Writes the trimmed copies of the quantized golden logits kept in this folder.

The full files (../shared/golden/tiny-q4_0-logits.json, tiny-q4_k_m-logits.json, 7 MB
each) hold every logit of every row twice (llama.cpp's and a float64 reference on the
dequantized weights). The tests need less: for both cases, llama.cpp's greedy ids, gaps,
top-10 per prompt position and greedy step, and its full last-prompt row; and of the
reference, the top-10 (ids, logits) of each of its rows plus its full last-prompt row.

Usage: trim_quant_logits.py SRC_DIR DST_DIR   (standard library only)
"""
import base64
import json
import struct
import sys


def f32(x):
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def trim(src, dst):
    j = json.load(open(src))
    out = {k: j[k] for k in ("model_file", "model_sha256", "producer", "conventions", "hparams")}
    out["trimmed_by"] = "tests/data/golden/trim_quant_logits.py from " + src.split("/")[-1]
    out["cases"] = {}
    for name, c in j["cases"].items():
        l = c["llamacpp_kv_f32"]
        r = c["numpy_reference"]
        rows, vocab = r["logits_shape"]
        raw = base64.b64decode(r["logits_b64"])
        assert len(raw) == rows * vocab * 4
        ref_top = []
        for i in range(rows):
            row = struct.unpack_from("<%df" % vocab, raw, i * vocab * 4)
            ids = sorted(range(vocab), key=lambda v: -row[v])[:10]
            ref_top.append({"ids": ids, "logits": [row[v] for v in ids]})
        n = len(c["prompt_ids"])
        last = list(struct.unpack_from("<%df" % vocab, raw, (n - 1) * vocab * 4))
        out["cases"][name] = {
            "prompt_ids": c["prompt_ids"],
            "llamacpp_kv_f32": {k: l[k] for k in ("greedy_ids", "greedy_top1_minus_top2",
                                                  "greedy_step_top10", "last_prompt_logits",
                                                  "prompt_argmax", "prompt_top10")},
            "numpy_reference": {
                "rows": rows,
                "row_note": "row p < n_prompt: prompt position p; row n_prompt - 1 + s: greedy "
                            "step s (after decoding llama.cpp's greedy ids 0..s-1)",
                "greedy_ids_consistent": r["greedy_ids_consistent"],
                "max_abs_diff_prompt_logits_vs_llamacpp_kv_f32":
                    r["max_abs_diff_prompt_logits_vs_llamacpp_kv_f32"],
                "max_abs_diff_step_logits_vs_llamacpp_kv_f32":
                    r["max_abs_diff_step_logits_vs_llamacpp_kv_f32"],
                "row_top10": ref_top,
                "last_prompt_logits": last,
            },
        }
    with open(dst, "w") as f:
        json.dump(out, f, separators=(",", ":"))


if __name__ == "__main__":
    src_dir, dst_dir = sys.argv[1], sys.argv[2]
    for name in ("tiny-q4_0", "tiny-q4_k_m"):
        trim(f"{src_dir}/{name}-logits.json", f"{dst_dir}/{name}-logits.json")

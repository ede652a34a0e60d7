#!/usr/bin/env bash
# The CUDA engine's figures on a GPU machine, next to its rooflines and to PyTorch:
#   1. a Llama-3.2-1B-shaped model with random BF16 weights (make-model, HF format);
#   2. tokenmill bench-engine --engine cuda: prefill of 2048-token prompts against the cuBLAS
#      GEMM bound, decode steps at batch 1, 16 and 64 against the HBM roofline (bytes a step
#      reads / measured device copy bandwidth);
#   3. scripts/torch_generate_bench.py: transformers generate() on the same weights at batch
#      1 and 16, and the ratios.
# Usage: scripts/gpu-bench.sh [--tokenmill BIN] [--out DIR] [--context N] [--keep-model]
# BIN defaults to build/apps/tokenmill. On a machine without our Debian libraries, first
# carry the binary and the libraries from scripts/collect-libs.sh, and set LD_LIBRARY_PATH.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$repo/build/apps/tokenmill"
out="$repo/bench-results/gpu-$(date +%Y%m%d-%H%M%S)"
context=128
keep=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tokenmill) bin="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --context) context="$2"; shift 2 ;;
    --keep-model) keep=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "gpu-bench: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$bin" ]] || { echo "gpu-bench: no tokenmill binary at $bin" >&2; exit 2; }
mkdir -p "$out"
model="$out/model"

echo "gpu-bench: writing the llama3.2-1b model (bf16, hf) to $model"
"$bin" make-model --preset llama3.2-1b --dtype bf16 --format hf -o "$model"

echo "gpu-bench: tokenmill bench-engine --engine cuda"
"$bin" bench-engine --engine cuda --dtype bf16 --model "$model" --prefill-lens 2048 \
  --batches 1 16 64 --context "$context" --decode-steps 32 --bw-mib 2048 --json \
  > "$out/tokenmill.json"
"$bin" bench-engine --engine cuda --dtype bf16 --model "$model" --prefill-lens 2048 \
  --batches 1 16 64 --context "$context" --decode-steps 32 --bw-mib 2048 --no-cuda-graphs \
  --json > "$out/tokenmill-no-graphs.json"

torch_ok=1
echo "gpu-bench: PyTorch + transformers generate()"
if ! python3 "$repo/scripts/torch_generate_bench.py" "$model" --batches 1,16 \
    --context "$context" --new-tokens 64 > "$out/torch.json"; then
  torch_ok=0
  echo "gpu-bench: the PyTorch baseline did not run; tokenmill's figures stand alone" >&2
fi

python3 - "$out" "$torch_ok" <<'PY'
import json, sys
out, torch_ok = sys.argv[1], sys.argv[2] == "1"
tm = json.load(open(f"{out}/tokenmill.json"))
ng = json.load(open(f"{out}/tokenmill-no-graphs.json"))
dev = tm["device"]
print(f"device  {dev['name']}: copy {dev['copy_bytes_per_s']/1e9:.0f} GB/s, "
      f"GEMM {dev['gemm_flops_per_s']/1e12:.1f} TFLOP/s (bf16)")
for p in tm["prefill"]:
    print(f"prefill {p['prompt_tokens']} tokens: {p['tokens_per_s']:.0f} tokens/s, "
          f"{100*p['gemm_fraction']:.0f}% of the GEMM bound")
torch = {}
if torch_ok:
    for r in json.load(open(f"{out}/torch.json"))["results"]:
        torch[r["batch"]] = r["decode_tokens_per_s"]
summary = {"device": dev, "prefill": tm["prefill"], "decode": []}
for d, n in zip(tm["decode"], ng["decode"]):
    b = d["batch"]
    row = {"batch": b, "step_ms": d["median_step_s"] * 1e3,
           "step_ms_no_graphs": n["median_step_s"] * 1e3,
           "roofline_fraction": d["roofline_fraction"], "tokens_per_s": d["tokens_per_s"]}
    line = (f"decode batch {b:3d}: {row['step_ms']:.3f} ms/step ({row['step_ms_no_graphs']:.3f} "
            f"without graphs), {100*d['roofline_fraction']:.0f}% of the HBM roofline, "
            f"{d['tokens_per_s']:.0f} tokens/s")
    if b in torch:
        row["torch_tokens_per_s"] = torch[b]
        row["speedup_vs_torch"] = d["tokens_per_s"] / torch[b]
        line += f", {row['speedup_vs_torch']:.1f}x PyTorch ({torch[b]:.0f} tokens/s)"
    summary["decode"].append(row)
    print(line)
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(f"results: {out}")
PY
[[ $keep == 1 ]] || rm -rf "$model"

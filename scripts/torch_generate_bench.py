#!/usr/bin/env python3
"""PyTorch + transformers generate() on a make-model Hugging Face directory: the baseline
that scripts/gpu-bench.sh compares `tokenmill bench-engine --engine cuda` with, on the same
random weights. Greedy, fixed prompt and output lengths; prints one JSON object.

Decode time per step = (time of generate(N new tokens) - time of generate(1 new token)) /
(N - 1), so the prompt's prefill is not counted twice.
"""
import argparse
import json
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model_dir", help="a make-model --format hf directory")
    ap.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    ap.add_argument("--context", type=int, default=128, help="prompt tokens per sequence")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sequence")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs (the fastest is kept)")
    args = ap.parse_args()
    if args.new_tokens < 2:
        print("torch_generate_bench: --new-tokens must be at least 2", file=sys.stderr)
        return 2
    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"torch_generate_bench: {e} (needs PyTorch and transformers)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("torch_generate_bench: no CUDA device visible to PyTorch", file=sys.stderr)
        return 2

    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[args.dtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model_dir, torch_dtype=dtype)
    model = model.cuda().eval()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(7)

    results = []
    for b in [int(x) for x in args.batches.split(",") if x]:
        ids = torch.randint(3, vocab, (b, args.context), generator=gen).cuda()
        mask = torch.ones_like(ids)

        def run(n: int) -> float:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.no_grad():
                model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=0)
            torch.cuda.synchronize()
            return time.perf_counter() - t0

        run(2)  # warm-up: kernels, allocator
        first = min(run(1) for _ in range(args.repeat))
        total = min(run(args.new_tokens) for _ in range(args.repeat))
        step = (total - first) / (args.new_tokens - 1)
        results.append({
            "batch": b,
            "context_tokens": args.context,
            "new_tokens": args.new_tokens,
            "prefill_and_first_token_s": first,
            "decode_step_s": step,
            "decode_tokens_per_s": b / step,
            "generate_tokens_per_s": b * args.new_tokens / total,
        })

    print(json.dumps({
        "model_dir": args.model_dir,
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "results": results,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

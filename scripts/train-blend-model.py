#!/usr/bin/env python3
"""Train the small model whose attention bench-blend's quality figures need (issue 17).

Every other model here has random weights, so its attention is near uniform and blending's
fidelity (top-1 agreement with a full prefill) says nothing. This script trains a tiny
Llama-architecture model on the task bench-blend's `--question quote` prompts pose: a
system prompt, k documents of random tokens, then a question that quotes a span of one
document; the answer is what followed that span (an induction / retrieval circuit, whose
attention depends on content).

Steps:
  1. `tokenmill make-model --preset rag-tiny` writes a template GGUF (f16 matrices, f32
     norms); a small GGUF v3 reader here finds its metadata and tensors.
  2. The same forward pass as the cpu engine, in torch: RMSNorm (eps from the file), RoPE
     on adjacent pairs (2i, 2i+1) as llama GGUF files store Q/K, GQA (query head h reads KV
     head h / (heads / kv_heads)), SwiGLU, the output head (`output.weight`, or the
     embedding when the file has none). It starts from a hand-set induction circuit
     (set_circuit; --init random for random weights) and is trained in f32 with AdamW for
     --steps steps, seeded.
  3. The trained tensors overwrite the template's tensor data in place (converted to each
     tensor's stored type), so metadata and tokenizer stay identical.
  4. --reference writes torch's logits for a bench-shaped quote prompt, evaluated with the
     weights as stored (f16-rounded); the Catch2 test `trained blend model: the cpu
     engine reproduces torch's logits`
     (tests/unit/engine/test_trained_blend.cpp) checks the cpu engine against them.

Needs python3 with PyTorch (tested with Debian 12's python3-torch, torch 1.13, run as
/usr/bin/python3) and numpy. Not run by CI or setup: its output is committed under
tests/data/blend/ (see the README there for the command that made it).
"""

import argparse
import base64
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover - environment check
    sys.exit(
        f"train-blend-model.py: {e}. It needs PyTorch and numpy: on Debian 12 "
        "`apt install python3-torch`, then run it with /usr/bin/python3."
    )

# ---- GGUF v3 --------------------------------------------------------------------------------

GGUF_MAGIC = b"GGUF"
# Metadata value types (gguf.md): fixed-size scalars as struct formats; 8 string, 9 array.
SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
                  10: "Q", 11: "q", 12: "d"}
GGML_F32, GGML_F16 = 0, 1
DEFAULT_ALIGNMENT = 32


class GGUFReader:
    """Header, metadata and tensor infos of a GGUF v3 file (data left in place)."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.data = f.read()
        self.path = path
        self.pos = 0
        if self.data[:4] != GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file (magic {self.data[:4]!r})")
        self.pos = 4
        version = self._scalar("I")
        if version != 3:
            raise ValueError(f"{path}: GGUF version {version}, this reader knows 3")
        n_tensors, n_kv = self._scalar("Q"), self._scalar("Q")
        self.metadata = {}
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(self._scalar("I"), key)
        self.tensors = {}  # name -> (shape as [rows][cols] numpy order, ggml type, offset)
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._scalar("I")
            dims = [self._scalar("Q") for _ in range(n_dims)]
            ggml_type, offset = self._scalar("I"), self._scalar("Q")
            if ggml_type not in (GGML_F32, GGML_F16):
                raise ValueError(f"{path}: tensor {name} has ggml type {ggml_type}; "
                                 "write the template as f16 or f32")
            self.tensors[name] = (tuple(reversed(dims)), ggml_type, offset)
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        self.data_start = (self.pos + alignment - 1) // alignment * alignment

    def _scalar(self, fmt):
        (v,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def _string(self):
        n = self._scalar("Q")
        s = self.data[self.pos:self.pos + n].decode("utf-8")
        self.pos += n
        return s

    def _value(self, vtype, key):
        if vtype in SCALAR_FORMATS:
            return self._scalar(SCALAR_FORMATS[vtype])
        if vtype == 8:
            return self._string()
        if vtype == 9:
            elem, n = self._scalar("I"), self._scalar("Q")
            return [self._value(elem, key) for _ in range(n)]
        raise ValueError(f"{self.path}: metadata key {key} has unknown value type {vtype}")

    def array(self, name):
        """The tensor's values as float32, [rows][cols]."""
        shape, ggml_type, offset = self.tensors[name]
        dt = np.float32 if ggml_type == GGML_F32 else np.float16
        n = int(np.prod(shape))
        start = self.data_start + offset
        return np.frombuffer(self.data, dt, n, start).reshape(shape).astype(np.float32)


def write_tensors(template, out_path, arrays):
    """A copy of `template` with each tensor's data replaced by arrays[name], converted to
    the tensor's stored type; header, metadata and tokenizer stay byte for byte the same."""
    shutil.copyfile(template.path, out_path)
    with open(out_path, "r+b") as f:
        for name, (shape, ggml_type, offset) in template.tensors.items():
            a = arrays[name]
            if tuple(a.shape) != shape:
                raise ValueError(f"{name}: trained shape {a.shape}, file has {shape}")
            dt = np.float32 if ggml_type == GGML_F32 else np.float16
            f.seek(template.data_start + offset)
            f.write(np.ascontiguousarray(a, dtype=dt).tobytes())


# ---- the model ------------------------------------------------------------------------------


class Config:
    def __init__(self, meta):
        arch = meta["general.architecture"]
        if arch != "llama":
            raise ValueError(f"architecture {arch}: this script builds llama's forward pass")
        g = lambda k: meta[f"{arch}.{k}"]
        self.dim = g("embedding_length")
        self.layers = g("block_count")
        self.heads = g("attention.head_count")
        self.kv_heads = g("attention.head_count_kv")
        self.head_dim = meta.get(f"{arch}.attention.key_length", self.dim // self.heads)
        self.ffn = g("feed_forward_length")
        self.vocab = g("vocab_size")
        self.eps = g("attention.layer_norm_rms_epsilon")
        self.theta = meta.get(f"{arch}.rope.freq_base", 10000.0)
        self.bos = meta["tokenizer.ggml.bos_token_id"]
        if any(k.startswith(f"{arch}.rope.scaling") for k in meta):
            raise ValueError("RoPE scaling: not implemented here; use a preset without it")


def linear_names(l):
    b = f"blk.{l}."
    return [b + n for n in ("attn_q.weight", "attn_k.weight", "attn_v.weight",
                            "attn_output.weight", "ffn_gate.weight", "ffn_up.weight",
                            "ffn_down.weight")]


class Llama(torch.nn.Module):
    """The cpu engine's llama forward pass (engine/cpu_engine.cpp forward_impl), with the
    parameters named as in the GGUF file."""

    def __init__(self, cfg, shapes, seed):
        super().__init__()
        self.cfg = cfg
        self.tied = "output.weight" not in shapes
        if "rope_freqs.weight" in shapes:
            raise ValueError("rope_freqs.weight: frequency divisors are not implemented here")
        gen = torch.Generator().manual_seed(seed)
        self.params = torch.nn.ParameterDict()
        for name, (shape, _, _) in shapes.items():
            if name.endswith("norm.weight"):
                t = torch.ones(shape)
            else:
                std = 0.02
                if name.endswith(("attn_output.weight", "ffn_down.weight")):
                    std /= math.sqrt(2 * cfg.layers)  # GPT-2's residual scaling
                t = torch.randn(shape, generator=gen) * std
            self.params[name.replace(".", "/")] = torch.nn.Parameter(t)
        hd = cfg.head_dim
        i = torch.arange(hd // 2, dtype=torch.float64)
        self.register_buffer("inv_freq", cfg.theta ** (-2.0 * i / hd), persistent=False)

    def p(self, name):
        return self.params[name.replace(".", "/")]

    def arrays(self):
        return {k.replace("/", "."): v.detach().numpy() for k, v in self.params.items()}

    def load_arrays(self, arrays):
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(torch.from_numpy(arrays[k.replace("/", ".")]))

    def rms_norm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.eps) * w

    def rope(self, x, cos, sin):
        # x [B, H, T, hd]: rotate adjacent pairs (2i, 2i+1) by position * inv_freq[i].
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2)

    def forward(self, tokens):
        c = self.cfg
        B, T = tokens.shape
        ang = torch.arange(T, dtype=torch.float64)[:, None] * self.inv_freq[None, :]
        cos, sin = ang.cos().float(), ang.sin().float()
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        x = F.embedding(tokens, self.p("token_embd.weight"))
        group = c.heads // c.kv_heads
        for l in range(c.layers):
            wq, wk, wv, wo, wg, wu, wd = (self.p(n) for n in linear_names(l))
            h = self.rms_norm(x, self.p(f"blk.{l}.attn_norm.weight"))
            q = (h @ wq.T).view(B, T, c.heads, c.head_dim).transpose(1, 2)
            k = (h @ wk.T).view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
            v = (h @ wv.T).view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
            q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(c.head_dim)
            a = s.masked_fill(mask, float("-inf")).softmax(-1) @ v
            x = x + a.transpose(1, 2).reshape(B, T, c.heads * c.head_dim) @ wo.T
            h = self.rms_norm(x, self.p(f"blk.{l}.ffn_norm.weight"))
            x = x + (F.silu(h @ wg.T) * (h @ wu.T)) @ wd.T
        x = self.rms_norm(x, self.p("output_norm.weight"))
        head = self.p("token_embd.weight" if self.tied else "output.weight")
        return x @ head.T


# ---- the starting point ---------------------------------------------------------------------


def set_circuit(model, cfg, gen):
    """Sets an induction circuit by hand (Olsson et al., "In-context Learning and Induction
    Heads", 2022), the starting point of training: from scratch, two cores do not reach the
    steps the circuit takes to form (the loss stays at chance for hundreds of steps).

    Residual stream: token code c_t (unit, random) in [0, C), a constant in C, the previous
    token's code in [C + 1, 2C + 1) and the one before it in [2C + 1, 3C + 1). Layer 0: two
    position heads (content-free query and key on the constant, phased on the fast RoPE
    pairs so that the score peaks at distance 1 and 2) copying the code into those slots.
    Layer 1, head 0: an induction head matching the current and previous codes against a
    position's previous and pre-previous slots (a bigram: a token that recurs elsewhere in
    the prompt alone does not mislead it) on the slow RoPE pairs (nearly position-free over
    the prompt), copying the matched position's code onto the current one; the output head
    reads codes. MLPs start silent (down projection 0) and every weight is then trained."""
    assert cfg.layers >= 2 and cfg.heads >= 2 and cfg.head_dim >= 32, \
        "the circuit needs 2 layers, 2 query heads and head_dim >= 32"
    D, hd = cfg.dim, cfg.head_dim
    C = (D - 1) // 3  # code dims; then the constant, the previous and pre-previous codes
    const, prev, prev2 = C, C + 1, 2 * C + 1
    theta = model.inv_freq.numpy()
    fast = range(8)  # the fastest pairs: >= 0.057 rad per position at base 500000
    slow = [f for f in range(hd // 2) if theta[f] * 1024 <= 0.7]  # <= 0.7 rad over 1024
    M = len(slow)  # code dims each half of the bigram is matched on
    # Unit codes whose first M dims (the part matched) carry exactly M / C of the norm: a
    # match then always scores the same, and only the noise of M-dim dot products varies.
    codes = torch.randn(cfg.vocab, C, generator=gen)
    for part, share in ((slice(0, M), M / C), (slice(M, C), 1 - M / C)):
        codes[:, part] *= math.sqrt(share) / codes[:, part].norm(dim=1, keepdim=True)
    # RMSNorm scales: |embedding|^2 = 2 (code + constant) -> x_norm = x * sqrt(D / 2); after
    # layer 0 the two copied codes add 2 -> sqrt(D / 4).
    s0, s1 = math.sqrt(D / 2), math.sqrt(D / 4)
    with torch.no_grad():
        for name, p in model.params.items():
            if name.endswith("ffn_down/weight"):
                p.zero_()
            elif "/attn_" in name and "norm" not in name:
                p.zero_()
        emb = torch.zeros(cfg.vocab, D)
        emb[:, :C], emb[:, const] = codes, 1.0
        model.p("token_embd.weight").copy_(emb)
        # Layer 0, head h: score(i, j) = 8 * sum_fast cos(theta_f (i - j - (h + 1))): the
        # key is the constant on pair f, the query the same turned back by h + 1 positions.
        q0, k0 = model.p("blk.0.attn_q.weight"), model.p("blk.0.attn_k.weight")
        v0, o0 = model.p("blk.0.attn_v.weight"), model.p("blk.0.attn_output.weight")
        for f in fast:
            k0[2 * f, const] = 8 / s0
            for h in range(2):
                phase = -(h + 1) * theta[f]
                q0[h * hd + 2 * f, const] = math.cos(phase) * 8 / s0
                q0[h * hd + 2 * f + 1, const] = math.sin(phase) * 8 / s0
        for m in range(C):
            v0[m, m] = 1 / s0
            o0[prev + m, m] = 1.0  # head 0: the previous token's code
            o0[prev2 + m, hd + m] = 1.0  # head 1: the one before
        # Layer 1, head 0: on the slow pairs' first M dims the current code against the
        # previous slot, on the next M the previous slot against the pre-previous one; a
        # bigram match scores 40 (each unit code's M of C dims carry M / C of its norm).
        q1, k1 = model.p("blk.1.attn_q.weight"), model.p("blk.1.attn_k.weight")
        beta = 40 * math.sqrt(hd) / (s1 * s1 * 2 * M / C)
        dims = [2 * f + r for f in slow for r in range(2)]
        for i in range(M):
            q1[dims[i], i] = beta
            k1[dims[i], prev + i] = 1.0
            q1[dims[M + i], prev + i] = beta
            k1[dims[M + i], prev2 + i] = 1.0
        v1, o1 = model.p("blk.1.attn_v.weight"), model.p("blk.1.attn_output.weight")
        for m in range(C):
            v1[m, m] = 1 / s1
            o1[m, m] = 3.0  # head 0's value (the matched code) onto the current code
        # The output head reads codes: logit_t = 2 * x_norm . c_t.
        head = model.p("token_embd.weight" if model.tied else "output.weight")
        if not model.tied:
            head.zero_()
            head[:, :C] = 2 * codes


# ---- the task -------------------------------------------------------------------------------


def rag_prompt(gen, cfg, system, docs, doc_tokens, quote, answer, questions=1, pool=None):
    """One bench-blend-shaped sequence: BOS + system, `docs` documents, then `questions`
    times a quote of `quote` tokens copied from one document followed by `answer` tokens:
    what followed the quote in the prompt. Returns the tokens and a mask of the positions
    whose next token the prompt determines (inside a quote after its first token, and the
    answers).

    `pool` (a list of documents) draws documents from it, as bench-blend does; otherwise
    each document is fresh random tokens."""
    rand = lambda n: torch.randint(3, cfg.vocab, (n,), generator=gen)  # past unk/BOS/EOS
    head = torch.cat((torch.tensor([cfg.bos]), rand(system - 1)))
    if pool is None:
        body = [rand(doc_tokens) for _ in range(docs)]
    else:
        order = torch.randperm(len(pool), generator=gen)[:docs]
        body = [pool[i] for i in order]
    prompt = torch.cat([head] + body)
    parts, scored = [prompt], [torch.zeros(len(prompt), dtype=torch.bool)]
    for _ in range(questions):
        # The quote lies in one document, which has a token left after it, and `answer`
        # tokens of the prompt follow it.
        starts = [p for p in range(system, len(prompt) - quote - answer + 1)
                  if (p - system) % doc_tokens < doc_tokens - quote]
        start = starts[int(torch.randint(0, len(starts), (1,), generator=gen))]
        follow = prompt[start + quote:start + quote + answer]
        parts += [prompt[start:start + quote], follow]
        determined = torch.ones(quote + answer, dtype=torch.bool)
        determined[0] = False  # the quote's first token: which one is free
        scored.append(determined)
    seq, determined = torch.cat(parts), torch.cat(scored)
    return seq, determined[1:]  # [i]: the token after position i is determined


def batch(gen, cfg, tokens_per_batch, long_share):
    """A batch of one random shape; long ones (bench-blend's size) `long_share` of the time.
    Returns tokens [B, T] and the mask of scored positions [B, T - 1]."""
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))
    if float(torch.rand(1, generator=gen)) < long_share:
        system, docs, doc_tokens, questions = r(16, 32), r(4, 8), r(64, 96), r(1, 2)
    else:
        system, docs, doc_tokens, questions = r(4, 32), r(1, 3), r(16, 48), r(2, 6)
    quote = r(2, min(16, doc_tokens - 1))
    answer = r(1, min(32, docs * doc_tokens - quote))
    n = system + docs * doc_tokens + questions * (quote + answer)
    rows = [rag_prompt(gen, cfg, system, docs, doc_tokens, quote, answer, questions)
            for _ in range(max(1, tokens_per_batch // n))]
    return torch.stack([t for t, _ in rows]), torch.stack([m for _, m in rows])


def scored_loss(logits, tokens, mask):
    """Cross-entropy and accuracy of the next-token predictions the prompt determines."""
    pred, want = logits[:, :-1][mask], tokens[:, 1:][mask]
    loss = F.cross_entropy(pred, want)
    return loss, (pred.argmax(-1) == want).float().mean().item()


def bench_eval(model, cfg, seed, trials, greedy=32):
    """bench-blend's default prompt shape (system 32, 6 of 10 documents of 96 tokens, a
    16-token quote): share of first answer tokens right, of 32-token answers whose every
    token is right given the ones before (teacher-forced), and the answers' mean loss."""
    gen = torch.Generator().manual_seed(seed)
    pool = [torch.randint(3, cfg.vocab, (96,), generator=gen) for _ in range(10)]
    first = whole = loss = 0
    with torch.no_grad():
        for _ in range(trials):
            seq, _ = rag_prompt(gen, cfg, 32, 6, 96, 16, greedy, pool=pool)
            logits = model(seq[None, :-1])[0, -greedy:]
            pred, want = logits.argmax(-1), seq[-greedy:]
            first += int(pred[0] == want[0])
            whole += int(bool((pred == want).all()))
            loss += F.cross_entropy(logits, want).item()
    return first / trials, whole / trials, loss / trials


def reference(model, cfg, seed):
    """Torch's logits for one bench-shaped quote prompt (the weights as stored), for the
    cpu engine test: the prompt, the last row's logits (base64 float32 little-endian),
    and the greedy continuation."""
    gen = torch.Generator().manual_seed(seed)
    pool = [torch.randint(3, cfg.vocab, (96,), generator=gen) for _ in range(10)]
    seq, _ = rag_prompt(gen, cfg, 32, 6, 96, 16, 0, pool=pool)
    with torch.no_grad():
        last = model(seq[None])[0, -1]
        ctx = seq.clone()
        for _ in range(16):
            ctx = torch.cat((ctx, model(ctx[None])[0, -1].argmax().view(1)))
    top2 = last.topk(2).values
    return {
        "prompt": seq.tolist(),
        "last_logits_b64": base64.b64encode(last.numpy().astype("<f4").tobytes()).decode(),
        "top1_top2_gap": float(top2[0] - top2[1]),
        "greedy": ctx[len(seq):].tolist(),
    }


# ---- main -----------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenmill", default="build/apps/tokenmill", help="tokenmill binary")
    ap.add_argument("--preset", default="rag-tiny", help="make-model preset of the template")
    ap.add_argument("--output", required=True, help="trained GGUF file to write")
    ap.add_argument("--reference", help="JSON file for torch's logits on a quote prompt")
    ap.add_argument("--steps", type=int, default=120,
                    help="training steps (about 2-5 s each on two loaded cores)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--init", choices=("circuit", "random"), default="circuit",
                    help="starting point: a hand-set induction circuit, or random weights")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--tokens-per-batch", type=int, default=4096)
    ap.add_argument("--long-share", type=float, default=0.3,
                    help="share of batches of bench-blend's prompt size")
    ap.add_argument("--eval-every", type=int, default=50, help="steps between evaluations")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        template_path = os.path.join(tmp, "template.gguf")
        cmd = [args.tokenmill, "make-model", "--preset", args.preset, "--dtype", "f16",
               "--output", template_path]
        if subprocess.run(cmd).returncode != 0:
            sys.exit(f"train-blend-model.py: {' '.join(cmd)} failed")
        template = GGUFReader(template_path)
        cfg = Config(template.metadata)
        print(f"template {args.preset}: dim {cfg.dim}, {cfg.layers} layers, heads "
              f"{cfg.heads}/{cfg.kv_heads}, head_dim {cfg.head_dim}, vocab {cfg.vocab}, "
              f"rope base {cfg.theta:g}, eps {cfg.eps:g}", flush=True)
        model = Llama(cfg, template.tensors, args.seed)
        if args.init == "circuit":
            set_circuit(model, cfg, torch.Generator().manual_seed(args.seed + 1))
        first, whole, loss = bench_eval(model, cfg, 7, 32)
        print(f"start ({args.init}): bench-shaped quote prompts: first answer token "
              f"{first:.2f}, whole 32-token answer {whole:.2f}, answer loss {loss:.4f}",
              flush=True)

        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0,
                                betas=(0.9, 0.98))
        gen = torch.Generator().manual_seed(args.seed)
        t0 = time.time()
        for step in range(args.steps):
            # Linear warm-up over 20 steps, then a cosine down to a tenth.
            progress = step / args.steps
            cosine = 0.1 + 0.45 * (1 + math.cos(math.pi * progress))
            lr = args.lr * min(1.0, (step + 1) / 20) * cosine
            for g in opt.param_groups:
                g["lr"] = lr
            tokens, mask = batch(gen, cfg, args.tokens_per_batch, args.long_share)
            loss, acc = scored_loss(model(tokens), tokens, mask)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            done = step + 1
            if done % 10 == 0:
                print(f"step {done} {time.time() - t0:.0f}s lr {lr:.2g} "
                      f"shape {tuple(tokens.shape)} loss {loss.item():.3f} acc {acc:.3f}",
                      flush=True)
            if done % args.eval_every == 0:
                first, whole, loss = bench_eval(model, cfg, 1000 + done, 8)
                print(f"eval step {done}: bench-shaped quote prompts: first answer token "
                      f"{first:.2f}, whole 32-token answer {whole:.2f}, answer loss "
                      f"{loss:.4f}", flush=True)

        # The weights as stored (f16 matrices), then the same figures on them.
        arrays = model.arrays()
        stored = {}
        for name, (shape, ggml_type, _) in template.tensors.items():
            a = arrays[name]
            stored[name] = a.astype(np.float16).astype(np.float32) if ggml_type == GGML_F16 else a
        model.load_arrays(stored)
        first, whole, loss = bench_eval(model, cfg, 7, 32)
        print(f"final ({args.steps} steps, {time.time() - t0:.0f} s; weights as stored): "
              f"bench-shaped quote prompts: first answer token {first:.2f}, whole 32-token "
              f"answer {whole:.2f}, answer loss {loss:.4f}")
        write_tensors(template, args.output, stored)
        print(f"wrote {args.output} ({os.path.getsize(args.output)} bytes)")
        if args.reference:
            ref = reference(model, cfg, args.seed)
            ref["model_file"] = os.path.basename(args.output)
            with open(args.reference, "w") as f:
                json.dump(ref, f)
            print(f"wrote {args.reference}: torch's logits for a {len(ref['prompt'])}-token "
                  f"quote prompt (top-1/top-2 gap {ref['top1_top2_gap']:.3f})")


if __name__ == "__main__":
    main()

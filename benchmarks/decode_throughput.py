"""Decode throughput: ours vs transformers ``generate`` on the same weights, and vs roofline.

    pip install -e ".[test]"          # torch + transformers
    python benchmarks/decode_throughput.py

For each model (``sokoban-small`` ~2M, ``sokoban-100m`` ~85M params, random weights, and the
embedded pretrained SmolLM2-135M-Instruct, all float32) and batch size: a prompt of ``--prompt`` tokens, ``--new`` greedy tokens; tokens/s = B * new / time
(median of ``--repeats`` after a warm-up that compiles). The same weights go to
transformers (exported with ``save_hf``, loaded with ``LlamaForCausalLM``; torch uses the
same 2 threads). Roofline of the whole call = prefill + every decode step, each
max(FLOPs / peak, bytes / bandwidth), where peak is a large float32 ``jnp.dot`` and
bandwidth a large reduction, both measured in this run; bytes = weights + the KV cache
at the actual context; FLOPs = 2 x matmul params x tokens + attention. Writes JSON and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.policy.config import get_config
from leafe_jax.policy.gguf import load_gguf
from leafe_jax.policy.hf import save_hf
from leafe_jax.policy.model import create_model
from leafe_jax.policy.pretrained import EMBEDDED, resolve
from leafe_jax.policy.sampler import generate
from leafe_jax.policy.sampling import Greedy


def median_time(fn, repeats):
    """Median wall time of ``repeats`` calls after one warm-up call (that compiles)."""
    return timings(fn, repeats)[0]


def timings(fn, repeats):
    """``(median, all times)`` of ``repeats`` calls after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), [float(t) for t in ts]


def machine_limits(repeats=5):
    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    dot = jax.jit(lambda x, y: x @ y)
    t = median_time(lambda: dot(a, a).block_until_ready(), repeats)
    peak = 2 * n ** 3 / t
    x = jnp.ones((64 * 1024 * 1024,), jnp.float32)          # 256 MiB
    red = jax.jit(lambda v: v.sum())
    t = median_time(lambda: red(x).block_until_ready(), repeats)
    return peak, x.nbytes / t


def step_cost(cfg, B, ctx, tokens=1):
    """(FLOPs, bytes) of a forward over ``tokens`` new tokens per row at context ``ctx``.

    Matmul params: every weight except the input embedding table (a gather) - with tied
    embeddings the table is still multiplied once as the LM head.
    """
    P = cfg.num_params()
    emb = cfg.vocab_size * cfg.hidden_size
    matmul_params = P - (0 if cfg.tie_embeddings else emb)
    attn = 2 * 2 * cfg.num_layers * cfg.num_heads * cfg.hd * ctx
    flops = B * tokens * (2 * matmul_params + attn)
    kv = 2 * cfg.num_layers * B * (ctx + tokens) * cfg.num_kv_heads * cfg.hd * 4
    return flops, P * 4 + kv


def call_roofline(cfg, B, prompt, new, peak, bw):
    """Seconds a perfect implementation needs for prefill + ``new`` decode steps."""
    parts = [step_cost(cfg, B, prompt / 2, tokens=prompt)]
    parts += [step_cost(cfg, B, prompt + i) for i in range(new)]
    total = sum(max(f / peak, b / bw) for f, b in parts)
    by_compute = sum(f / peak for f, b in parts if f / peak >= b / bw)
    return total, ("compute" if by_compute > total / 2 else "memory")


def load_pair(name, torch, transformers):
    """Our model and transformers' on the same float32 weights: random ones exported with
    ``save_hf`` for our presets, the packaged GGUF (dequantized by both) for SmolLM2."""
    if name in EMBEDDED:
        import os
        path = resolve(name)
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
        return load_gguf(path), hf
    model = create_model(get_config(name), seed=0)
    d = tempfile.mkdtemp()
    save_hf(model, d, model_type="llama")
    return model, transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--small-batches", default="1,64,256")
    ap.add_argument("--big-batches", default="1,64")
    ap.add_argument("--llm-batches", default="1,16,64",
                    help="batches for the embedded SmolLM2-135M-Instruct (GGUF -> float32, both sides)")
    ap.add_argument("--only", default=None, help="comma-separated subset: sokoban-small, "
                                                 "sokoban-100m, smollm2-135m-instruct")
    ap.add_argument("--out", default="benchmarks/results/decode_throughput.json")
    args = ap.parse_args()

    import torch
    import transformers
    torch.set_num_threads(2)
    peak, bw = machine_limits()
    res = {"device": jax.devices()[0].device_kind, "matmul_peak_flops": peak,
           "memory_bw_bytes_per_s": bw, "prompt": args.prompt, "new_tokens": args.new, "rows": []}
    print(f"measured: matmul peak {peak / 1e9:.1f} GFLOP/s, bandwidth {bw / 1e9:.1f} GB/s", flush=True)
    runs = (("sokoban-small", args.small_batches), ("sokoban-100m", args.big_batches),
            ("smollm2-135m-instruct", args.llm_batches))
    for name, batches in runs:
        if args.only and name not in args.only.split(","):
            continue
        model, hf = load_pair(name, torch, transformers)
        cfg = model.cfg
        for B in [int(b) for b in batches.split(",")]:
            rng = np.random.default_rng(B)
            prompts = rng.integers(1, cfg.vocab_size, (B, args.prompt)).astype(np.int32)
            lengths = np.full((B,), args.prompt, np.int32)

            def ours():
                out = generate(model, prompts, lengths, jax.random.key(0), max_new_tokens=args.new,
                               strategy=Greedy())
                out.tokens.block_until_ready()

            ids = torch.tensor(prompts, dtype=torch.long)

            def theirs():
                with torch.no_grad():
                    hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new,
                                min_new_tokens=args.new, do_sample=False, pad_token_id=0)

            t_ours = median_time(ours, args.repeats)
            t_hf = median_time(theirs, args.repeats)
            roof, bound = call_roofline(cfg, B, args.prompt, args.new, peak, bw)
            row = {"model": name, "params": cfg.num_params(), "batch": B,
                   "ours_tokens_per_s": B * args.new / t_ours, "hf_tokens_per_s": B * args.new / t_hf,
                   "ratio_vs_hf": t_hf / t_ours, "ours_s": t_ours, "hf_s": t_hf,
                   "roofline_s": roof, "roofline_fraction": roof / t_ours, "bound": bound}
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)
    print("\n| model | params | batch | ours tok/s | transformers tok/s | ours / transformers | "
          "% of roofline (bound) |\n|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['model']} | {r['params'] / 1e6:.1f} M | {r['batch']} | {r['ours_tokens_per_s']:.0f} | "
              f"{r['hf_tokens_per_s']:.0f} | {r['ratio_vs_hf']:.1f}x | "
              f"{100 * r['roofline_fraction']:.0f} % ({r['bound']}) |")


if __name__ == "__main__":
    main()

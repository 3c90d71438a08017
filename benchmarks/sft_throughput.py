"""SFT step throughput and model FLOPs utilisation (MFU) against this machine's measured peak.

    python benchmarks/sft_throughput.py [--model sokoban-100m --batch 8 --seq 512]

The step is the shared trainer's ``train_step`` (forward, backward, AdamW update) on random
tokens with a loss mask, in the training dtype of the platform (``with_dtype_policy``:
float32 on CPU, bf16-mixed on TPU/GPU). Peak = a large ``jnp.dot`` in the same dtype, measured
in the same run. Model FLOPs per step = B x T x (6 x matmul params + 12 x L x H x hd x T)
(PaLM's accounting: causal masking not discounted; rematerialisation not counted).
Median of ``--repeats`` timed steps after a compiling warm-up. Writes JSON.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from decode_throughput import median_time, timings


def measured_peak(dtype, repeats, n=None):
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    a = jnp.ones((n, n), dtype)
    dot = jax.jit(lambda x, y: x @ y)
    t = median_time(lambda: dot(a, a).block_until_ready(), repeats)
    return 2 * n ** 3 / t


def model_flops_per_step(cfg, B, T):
    emb = cfg.vocab_size * cfg.hidden_size
    matmul_params = cfg.num_params() - (0 if cfg.tie_embeddings else emb)
    attn = 12 * cfg.num_layers * cfg.num_heads * cfg.hd * T
    return B * T * (6 * matmul_params + attn)


def run(model="sokoban-100m", batch=8, seq=512, accum=1, repeats=5, remat=False, policy=None):
    from leafe_jax.policy.config import get_config, with_dtype_policy
    from leafe_jax.policy.model import create_model
    from leafe_jax.sharding import make_mesh
    from leafe_jax.sharding import place_batch
    from leafe_jax.train.optim import OptimConfig, create_optimizer
    from leafe_jax.train.step import train_step

    cfg = with_dtype_policy(get_config(model), policy).replace(remat=remat)
    mesh = make_mesh((1, -1, 1))
    m = create_model(cfg, seed=0, mesh=mesh)
    opt = create_optimizer(m, OptimConfig(learning_rate=1e-4, warmup_steps=1, total_steps=10 ** 6), mesh)
    rng = np.random.default_rng(0)
    b = place_batch({"tokens": rng.integers(3, cfg.vocab_size, (batch, seq + 1)).astype(np.int32),
                     "loss_mask": rng.random((batch, seq + 1)) < 0.5,
                     "weight": np.ones(batch, np.float32)}, mesh)
    with jax.set_mesh(mesh):
        step_t, all_t = timings(
            lambda: jax.block_until_ready(train_step(m, opt, b, accum=accum)["loss"]), repeats)
    peak = measured_peak(jnp.dtype(cfg.dtype), repeats)
    flops = model_flops_per_step(cfg, batch, seq)
    return {"model": model, "params": cfg.num_params(), "batch": batch, "seq": seq, "accum": accum,
            "remat": remat, "param_dtype": cfg.param_dtype, "dtype": cfg.dtype,
            "devices": jax.device_count(), "device": jax.devices()[0].device_kind,
            "step_s": step_t, "step_s_all": all_t, "tokens_per_s": batch * seq / step_t,
            "model_tflops_per_step": flops / 1e12, "achieved_gflops": flops / step_t / 1e9,
            "peak_gflops": peak / 1e9, "mfu": flops / step_t / peak}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sokoban-100m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--remat", action="store_true")
    ap.add_argument("--policy", default=None, help="dtype policy (default: by platform)")
    ap.add_argument("--out", default="benchmarks/results/sft_throughput.json")
    a = ap.parse_args()
    r = run(a.model, a.batch, a.seq, a.accum, a.repeats, a.remat, a.policy)
    print(json.dumps(r, indent=1))
    with open(a.out, "w") as fh:
        json.dump(r, fh, indent=1)


if __name__ == "__main__":
    main()

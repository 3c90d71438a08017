"""The one supervised fine-tuning recipe: SFT records on disk -> batches -> the shared loop.

Behaviour cloning of the base policy, every Stage-2 variant, the BC control and both Early
Experience phases call ``finetune``; GRPO runs its own step function on the same loop.
Warm-up is ``min(50, steps // 10)`` unless given; the data order depends only on ``seed``
(grain's per-epoch shuffle), so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import functools
import json
import os

from leafe_jax.configs import config, field
from leafe_jax.data.loader import round_up, sft_batches
from leafe_jax.data.store import sft_source
from leafe_jax.train.loop import LoopConfig, train_loop
from leafe_jax.train.optim import OptimConfig, create_optimizer
from leafe_jax.train.step import train_step


@config
class SFTConfig:
    steps: int = field(50, lo=1, doc="optimizer steps")
    batch_size: int = field(16, lo=1)
    learning_rate: float = field(3e-4, lo=0, lo_open=True)
    warmup_steps: int | None = field(None, lo=0, doc="default min(50, steps // 10)")
    accum: int = field(1, lo=1, doc="micro-batches per step (gradient accumulation: the same "
                                    "update, 1 / accum of the activation memory)")

    def __post_init__(self):
        if self.warmup_steps is not None and self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} > steps {self.steps}")
        if self.batch_size % self.accum:
            raise ValueError(f"batch_size {self.batch_size} does not split into accum = "
                             f"{self.accum} micro-batches")

    @property
    def warmup(self) -> int:
        return min(50, self.steps // 10) if self.warmup_steps is None else self.warmup_steps


def data_max_len(data_dir) -> int:
    """Longest example of a dataset written with its ``stats.json`` (rounded for buckets)."""
    f = os.path.join(data_dir, "stats.json")
    try:
        with open(f) as fh:
            return round_up(json.load(fh)["max_len"])
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{f}: unreadable dataset stats ({type(e).__name__}: {e})") from None


def finetune(model, data_dir, cfg: SFTConfig, workdir, *, seed: int, max_len: int | None = None,
             meta: dict | None = None, progress: bool = True, mesh=None, ckpt_every: int | None = None,
             log_every: int | None = None, source_coefs: dict[str, float] | None = None,
             max_targets: int | None = None) -> dict:
    """Train ``model`` in place on the SFT dataset in ``data_dir`` (resumes from ``workdir``);
    returns the final metrics. ``source_coefs`` ({source: c}) trains the per-dataset loss
    sum_source c * mean over that source's action tokens (the stored example weights are
    then not used); default: the pooled mean with the stored weights. ``max_targets``: no
    example has more masked tokens than that - logits are then computed only at masked
    positions (``train_step``'s ``targets``; chat data: a short response after a long
    prompt)."""
    max_len = data_max_len(data_dir) if max_len is None else max_len
    groups = None if source_coefs is None else {s: i for i, s in enumerate(sorted(source_coefs))}
    data = sft_batches(sft_source(data_dir), batch_size=cfg.batch_size, max_len=max_len, seed=seed,
                       groups=groups)
    step_fn = train_step if groups is None else functools.partial(
        train_step, group_weights=tuple(float(source_coefs[s]) for s in sorted(source_coefs)))
    if max_targets is not None:
        step_fn = functools.partial(step_fn, targets=round_up(max_targets, 8))
    opt = create_optimizer(model, OptimConfig(learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup,
                                              total_steps=cfg.steps), mesh)
    loop = LoopConfig(num_steps=cfg.steps, accum=cfg.accum, log_every=log_every or max(1, min(25, cfg.steps)),
                      ckpt_every=ckpt_every or max(1, cfg.steps // 4), progress=progress)
    return train_loop(model, opt, data, loop, workdir, mesh=mesh, meta=meta, step_fn=step_fn)

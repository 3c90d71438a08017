"""Optimiser config -> optax transformation (AdamW, warm-up + cosine, global-norm clipping)."""

from __future__ import annotations

import dataclasses

import jax
import optax
from flax import nnx

from leafe_jax.sharding import single_device_mesh


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    learning_rate: float = 3e-4
    warmup_steps: int = 100
    total_steps: int = 1000
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    b1: float = 0.9
    b2: float = 0.95

    def __post_init__(self):
        if self.learning_rate <= 0 or self.total_steps < 1 or self.warmup_steps < 0:
            raise ValueError(f"invalid optimiser config {self}")
        if self.warmup_steps > self.total_steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} > total_steps {self.total_steps}")


def make_schedule(cfg: OptimConfig):
    """Linear warm-up to the peak, cosine decay to ``final_lr_fraction`` x peak at
    ``total_steps`` (the learning rate of update i is ``schedule(i)``)."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.total_steps, end_value=cfg.learning_rate * cfg.final_lr_fraction)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    schedule = make_schedule(cfg)
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                       optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))


def create_optimizer(model, cfg: OptimConfig, mesh=None):
    """``nnx.Optimizer`` over the model's params, built under a mesh: its moment buffers
    inherit the params' sharding annotations, which need one (1-device mesh by default)."""
    with jax.set_mesh(mesh or single_device_mesh()):
        return nnx.Optimizer(model, make_optimizer(cfg), wrt=nnx.Param)

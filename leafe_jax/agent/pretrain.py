"""Base policy: behaviour cloning from scratch on demonstrations (+ experience variants)."""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
from etils import epath

from leafe_jax.agent import encoding as E
from leafe_jax.agent.demos import bc_examples, build_demos
from leafe_jax.agent.pools import level_pool
from leafe_jax.data.loader import round_up, sft_batches
from leafe_jax.data.store import SftRecords, sft_source, write_sft
from leafe_jax.envs.sokoban.presets import Preset
from leafe_jax.policy.config import ModelConfig
from leafe_jax.policy.model import create_model
from leafe_jax.train.loop import LoopConfig, train_loop
from leafe_jax.train.optim import OptimConfig, create_optimizer


def pack(examples, length: int | None = None):
    """``[(tokens, mask, source)]`` -> right-padded ``tokens`` [M, L], ``loss_mask`` [M, L]."""
    if not examples:
        raise ValueError("no examples to pack")
    L = length or max(len(t) for t, _, _ in examples)
    if any(len(t) > L for t, _, _ in examples):
        raise ValueError(f"an example is longer than {L} tokens")
    toks = np.full((len(examples), L), E.PAD, np.int32)
    mask = np.zeros((len(examples), L), bool)
    for i, (t, m, _) in enumerate(examples):
        toks[i, : len(t)], mask[i, : len(m)] = t, m
    return toks, mask


def step_batches(tokens, mask, batch_size: int, seed: int, weights=None):
    """``batches(step)``: a batch drawn with ``rng(seed, step)`` - the data order depends only
    on the step index, so resumed runs see the same batches."""
    weights = np.ones(len(tokens), np.float32) if weights is None else np.asarray(weights, np.float32)

    def batches(step: int) -> dict:
        idx = np.random.default_rng([seed, step]).integers(0, len(tokens), batch_size)
        return {"tokens": jnp.asarray(tokens[idx]), "loss_mask": jnp.asarray(mask[idx]),
                "weight": jnp.asarray(weights[idx])}

    return batches


@dataclasses.dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    num_demo_levels: int = 2000
    exp_per_episode: int = 2
    steps: int = 500
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        if self.num_demo_levels < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"invalid pretraining config {self}")


def bc_dataset(preset: Preset, cfg: PretrainConfig, data_dir) -> dict:
    """Write the demo pool's BC examples as an ``sft_examples`` dataset (kept if present:
    a resumed run reuses it); returns its stats (examples per source, longest example)."""
    data_dir = epath.Path(data_dir)
    stats_file = data_dir / "stats.json"
    if stats_file.exists():
        return json.loads(stats_file.read_text())
    env = preset.make_env()
    demos = level_pool("demo", cfg.num_demo_levels, preset.generator, cfg.seed)
    d = build_demos(env, env.default_params, demos)
    ex = bc_examples(d, preset.width, np.random.default_rng(cfg.seed), exp_per_episode=cfg.exp_per_episode)
    write_sft(SftRecords.from_tuples(ex), data_dir, overwrite=True)
    stats = {"examples": len(ex), "demo": sum(s == "demo" for _, _, s in ex),
             "demo+exp": sum(s == "demo+exp" for _, _, s in ex),
             "max_len": max(len(t) for t, _, _ in ex)}
    stats_file.write_text(json.dumps(stats))
    return stats


def pretrain_base_policy(preset: Preset, model_cfg: ModelConfig, cfg: PretrainConfig, workdir: str,
                         *, progress: bool = True, mesh=None):
    """Behaviour cloning on the demo pool; returns ``(model, final metrics, data stats)``."""
    if model_cfg.vocab_size < E.VOCAB_SIZE:
        raise ValueError(f"model vocabulary {model_cfg.vocab_size} < interaction vocabulary "
                         f"{E.VOCAB_SIZE}")
    stats = bc_dataset(preset, cfg, epath.Path(workdir) / "data")
    max_len = round_up(stats["max_len"])
    if stats["max_len"] > model_cfg.max_seq_len:
        raise ValueError(f"demonstrations need {stats['max_len']} tokens; the model allows "
                         f"{model_cfg.max_seq_len}")
    data = sft_batches(sft_source(epath.Path(workdir) / "data"), batch_size=cfg.batch_size,
                       max_len=max_len, seed=cfg.seed)
    model = create_model(model_cfg, seed=cfg.seed, mesh=mesh)
    opt = create_optimizer(model, OptimConfig(
        learning_rate=cfg.learning_rate, warmup_steps=min(50, cfg.steps // 10), total_steps=cfg.steps),
        mesh)
    metrics = train_loop(model, opt, data,
                         LoopConfig(num_steps=cfg.steps, log_every=max(1, min(50, cfg.steps)),
                                    ckpt_every=max(1, cfg.steps // 4), progress=progress),
                         workdir, mesh=mesh, meta={"model": model_cfg.to_dict(), "preset": preset.name,
                                                   "pretrain": dataclasses.asdict(cfg)})
    return model, metrics, stats

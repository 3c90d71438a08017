"""Base policy: behaviour cloning from scratch on demonstrations (+ experience variants)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from etils import epath

from leafe_jax.configs import config, field
from leafe_jax.envs.sokoban.pools import level_pool
from leafe_jax.envs.sokoban.presets import Preset
from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.interfaces.symbolic.demos import bc_examples, build_demos
from leafe_jax.data.store import SftRecords, write_sft
from leafe_jax.policy.config import ModelConfig
from leafe_jax.policy.model import create_model
from leafe_jax.train.sft import SFTConfig, data_max_len, finetune


@config
class PretrainConfig:
    """Behaviour cloning of the base policy (``leafe pretrain``, the pipeline's ``[base]``)."""
    demo_levels: int = field(2000, lo=1, doc="demonstration levels (the demo pool)")
    exp_per_episode: int = field(2, lo=0, doc="experience-conditioned variants per demo")
    sft: SFTConfig = SFTConfig(steps=150, batch_size=16, learning_rate=1e-3)


def bc_dataset(preset: Preset, cfg: PretrainConfig, data_dir, seed: int) -> dict:
    """Write the demo pool's BC examples as an ``sft_examples`` dataset (kept if present:
    a resumed run reuses it); returns its stats (examples per source, longest example)."""
    data_dir = epath.Path(data_dir)
    stats_file = data_dir / "stats.json"
    if stats_file.exists():
        return json.loads(stats_file.read_text())
    env = preset.make_env()
    demos = level_pool("demo", cfg.demo_levels, preset.generator, seed)
    d = build_demos(env, env.default_params, demos)
    ex = bc_examples(d, preset.width, np.random.default_rng(seed), exp_per_episode=cfg.exp_per_episode)
    write_sft(SftRecords.from_tuples(ex), data_dir, overwrite=True)
    stats = {"examples": len(ex), "demo": sum(s == "demo" for _, _, s in ex),
             "demo+exp": sum(s == "demo+exp" for _, _, s in ex),
             "max_len": max(len(t) for t, _, _ in ex)}
    stats_file.write_text(json.dumps(stats))
    return stats


def pretrain_base_policy(preset: Preset, model_cfg: ModelConfig, cfg: PretrainConfig, workdir: str,
                         *, seed: int = 0, progress: bool = True, mesh=None):
    """Behaviour cloning on the demo pool; returns ``(model, final metrics, data stats)``."""
    if model_cfg.vocab_size < E.VOCAB_SIZE:
        raise ValueError(f"model vocabulary {model_cfg.vocab_size} < interaction vocabulary "
                         f"{E.VOCAB_SIZE}")
    data_dir = epath.Path(workdir) / "data"
    stats = bc_dataset(preset, cfg, data_dir, seed)
    if stats["max_len"] > model_cfg.max_seq_len:
        raise ValueError(f"demonstrations need {stats['max_len']} tokens; the model allows "
                         f"{model_cfg.max_seq_len}")
    model = create_model(model_cfg, seed=seed, mesh=mesh)
    metrics = finetune(model, data_dir, cfg.sft, workdir, seed=seed, max_len=data_max_len(data_dir),
                       progress=progress, mesh=mesh,
                       meta={"model": model_cfg.to_dict(), "preset": preset.name,
                             "pretrain": dataclasses.asdict(cfg), "seed": seed})
    return model, metrics, stats

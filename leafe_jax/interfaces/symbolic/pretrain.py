"""Base policy: behaviour cloning from scratch on demonstrations (+ experience variants),
optionally followed by rounds of on-policy data that teach following experience
(``following_rounds``; ``interfaces.symbolic.following``)."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
from etils import epath

from leafe_jax.configs import ConfigError, config, field
from leafe_jax.envs.sokoban.pools import level_pool
from leafe_jax.envs.sokoban.presets import Preset
from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.interfaces.symbolic.demos import bc_examples, build_demos
from leafe_jax.interfaces.symbolic.following import following_examples
from leafe_jax.interfaces.symbolic.interface import SymbolicSokoban
from leafe_jax.interfaces.symbolic.self_reflect import reflection_examples, reflection_quality
from leafe_jax.data.store import SftRecords, write_sft
from leafe_jax.policy.config import ModelConfig
from leafe_jax.policy.model import create_model
from leafe_jax.train.checkpoint import Checkpointer
from leafe_jax.train.sft import SFTConfig, data_max_len, finetune

FOLLOW_KEY = 500      # each following round's rollouts: key(seed + FOLLOW_KEY + round)
REFLECT_KEY = 700     # each round's self-reflection rollouts: key(seed + REFLECT_KEY + round)


@config
class PretrainConfig:
    """Behaviour cloning of the base policy (``leafe pretrain``, the pipeline's ``[base]``)."""
    demo_levels: int = field(2000, lo=1, doc="demonstration levels (the demo pool)")
    exp_per_episode: int = field(2, lo=0, doc="experience-conditioned variants per demo")
    sft: SFTConfig = SFTConfig(steps=150, batch_size=16, learning_rate=1e-3)
    following_rounds: int = field(0, lo=0, doc="rounds of on-policy data teaching the base to "
                                               "follow experience (0: plain BC)")
    following_levels: int = field(256, lo=1, doc="demo-pool levels rolled out per round")
    following_steps: int = field(50, lo=1, doc="fine-tuning steps per round (demos + following data)")
    self_reflection: bool = field(False, doc="the rounds also teach the policy to write its own "
                                             "reflections (labels: the feedback reflector, demo "
                                             "pool only); needs following_rounds >= 1")

    def __post_init__(self):
        if self.self_reflection and not self.following_rounds:
            raise ConfigError("self_reflection", "needs following_rounds >= 1 (its rounds carry "
                                                 "the reflection data)")


def _bc_tuples(preset: Preset, cfg: PretrainConfig, seed: int) -> list:
    env = preset.make_env()
    demos = level_pool("demo", cfg.demo_levels, preset.generator, seed)
    d = build_demos(env, env.default_params, demos)
    return bc_examples(d, preset.width, np.random.default_rng(seed), exp_per_episode=cfg.exp_per_episode)


def bc_dataset(preset: Preset, cfg: PretrainConfig, data_dir, seed: int) -> dict:
    """Write the demo pool's BC examples as an ``sft_examples`` dataset (kept if present:
    a resumed run reuses it); returns its stats (examples per source, longest example)."""
    data_dir = epath.Path(data_dir)
    stats_file = data_dir / "stats.json"
    if stats_file.exists():
        return json.loads(stats_file.read_text())
    ex = _bc_tuples(preset, cfg, seed)
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
    meta = {"model": model_cfg.to_dict(), "preset": preset.name,
            "pretrain": dataclasses.asdict(cfg), "seed": seed}
    ckdir = epath.Path(workdir) / "checkpoints"
    final_step = cfg.sft.steps + cfg.following_rounds * cfg.following_steps
    if cfg.following_rounds and ckdir.exists():      # finished before a crash: nothing to redo
        ck = Checkpointer(ckdir)
        done = ck.latest_step() == final_step
        if done:
            ck.restore(model)
        ck.close()
        if done:
            return model, {}, stats
    metrics = finetune(model, data_dir, cfg.sft, workdir, seed=seed, max_len=data_max_len(data_dir),
                       progress=progress, mesh=mesh, meta=meta)
    if cfg.following_rounds:
        metrics = teach_following(preset, model, cfg, workdir, seed=seed, progress=progress,
                                  mesh=mesh, meta=meta)
        ck = Checkpointer(ckdir)                         # the base policy is the followed one
        ck.save(final_step, model, meta=meta, force=True)
        ck.wait()
        ck.close()
    return model, metrics, stats


def teach_following(preset: Preset, model, cfg: PretrainConfig, workdir, *, seed: int,
                    progress: bool, mesh, meta: dict) -> dict:
    """``cfg.following_rounds`` rounds: following examples on demo-pool levels, then
    fine-tuning on the demonstrations plus them (each round resumes from its directory);
    writes ``following.json`` (compliance per round before its training, and after)."""
    env = preset.make_env()
    agent = SymbolicSokoban(env, env.default_params)
    n = min(cfg.following_levels, cfg.demo_levels)
    levels = jax.tree.map(lambda x: x[:n], level_pool("demo", cfg.demo_levels, preset.generator, seed).level)
    bc = SftRecords.from_tuples(_bc_tuples(preset, cfg, seed))
    rounds, metrics = [], {}
    for r in range(cfg.following_rounds):
        d = epath.Path(workdir) / f"following_{r}"
        stats_file = d / "data" / "stats.json"
        if stats_file.exists():
            st = json.loads(stats_file.read_text())
        else:
            rec, st = following_examples(env, env.default_params, model, levels,
                                         jax.random.key(seed + FOLLOW_KEY + r))
            data = bc if rec is None else bc.concat(rec)
            if cfg.self_reflection:             # (its quality measured before the round)
                st["reflection_quality"] = reflection_quality(
                    agent, model, levels, jax.random.key(seed + REFLECT_KEY))
                rrec, st["reflection"] = reflection_examples(
                    agent, model, levels, jax.random.key(seed + REFLECT_KEY + 1 + r))
                data = data if rrec is None else data.concat(rrec)
            write_sft(data, d / "data", overwrite=True)
            st["max_len"] = int(max(len(t) for t in data.tokens))
            stats_file.write_text(json.dumps(st))
        rounds.append(st)
        metrics = finetune(model, d / "data", SFTConfig(steps=cfg.following_steps, batch_size=cfg.sft.batch_size,
                                                        learning_rate=cfg.sft.learning_rate,
                                                        accum=cfg.sft.accum),
                           d, seed=seed + r, max_len=data_max_len(d / "data"), progress=progress,
                           mesh=mesh, meta=meta)
    _, after = following_examples(env, env.default_params, model, levels,
                                  jax.random.key(seed + FOLLOW_KEY))     # round 0's rollouts' keys
    if cfg.self_reflection:
        after["reflection_quality"] = reflection_quality(agent, model, levels,
                                                         jax.random.key(seed + REFLECT_KEY))
    (epath.Path(workdir) / "following.json").write_text(json.dumps({"rounds": rounds, "after": after}))
    return metrics

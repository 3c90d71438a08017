"""Evaluate checkpoints: Pass@1..n on held-out levels (JSON, Markdown table, PNG curves)."""

from __future__ import annotations

import argparse
import os


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("workdirs", nargs="+", help="work directories holding checkpoints/ (name=dir to label)")
    p.add_argument("--preset", default=None, help="Sokoban preset (default: the checkpoint's)")
    p.add_argument("--levels", type=int, default=100, help="held-out levels")
    p.add_argument("--n", type=int, default=128, help="samples per level")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="level-pool seed (same as pretraining)")
    p.add_argument("--demo-levels", type=int, default=2000, help="demo pool to exclude")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)


def load_policy(workdir: str):
    """Model rebuilt from a checkpoint's metadata; returns ``(model, meta)``."""
    from leafe_jax.policy.config import ModelConfig
    from leafe_jax.policy.model import create_model
    from leafe_jax.train.checkpoint import Checkpointer

    ckdir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckdir):
        raise FileNotFoundError(f"{workdir}: no checkpoints/ directory (run `leafe pretrain` first?)")
    ck = Checkpointer(ckdir)
    meta = ck.metadata()
    if "model" not in meta:
        raise ValueError(f"{ckdir}: checkpoint metadata lacks the model config")
    model = create_model(ModelConfig.from_dict(meta["model"]))
    ck.restore(model)
    ck.close()
    return model, meta


def run(args) -> int:
    import jax

    from leafe_jax.agent import encoding as E
    from leafe_jax.agent.pools import held_out_pool
    from leafe_jax.envs.sokoban import get_preset
    from leafe_jax.eval.sweep import sample_success, write_sweep

    if args.n < 1 or args.levels < 1:
        raise ValueError("--n and --levels must be >= 1")
    results, preset_name, held = {}, args.preset, None
    for spec in args.workdirs:
        name, _, wd = spec.rpartition("=")
        name = name or os.path.basename(os.path.normpath(wd))
        model, meta = load_policy(wd)
        preset_name = preset_name or meta.get("preset")
        if meta.get("preset") and meta["preset"] != preset_name:
            raise ValueError(f"{wd} was trained on preset {meta['preset']!r}, evaluating on {preset_name!r}")
        if model.cfg.vocab_size < E.VOCAB_SIZE:
            raise ValueError(f"{wd}: model vocabulary {model.cfg.vocab_size} does not cover the "
                             f"interaction vocabulary ({E.VOCAB_SIZE})")
        if held is None:          # one preset for all runs (checked above): pools once
            preset = get_preset(preset_name)
            held = held_out_pool(args.levels, preset.generator, args.seed, args.demo_levels)
            env = preset.make_env()
        results[name] = sample_success(model, env, env.default_params, held.level, args.n,
                                       jax.random.key(args.seed), temperature=args.temperature)
    tables = write_sweep(results, args.out, title=f"{preset_name}, {args.levels} held-out levels, "
                                                   f"n = {args.n}, T = {args.temperature}")
    print(open(os.path.join(args.out, "passk.md")).read())
    return 0 if tables else 1

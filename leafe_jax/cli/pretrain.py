"""Pretrain the base policy by behaviour cloning on generated demonstrations."""

from __future__ import annotations

import argparse
import json


def register(p: argparse.ArgumentParser) -> None:
    from leafe_jax.configs import add_flags
    from leafe_jax.interfaces.symbolic.pretrain import PretrainConfig
    from leafe_jax.pipeline.config import ExperimentConfig

    add_flags(p, ExperimentConfig)
    add_flags(p, PretrainConfig)
    p.add_argument("--workdir", required=True, help="checkpoints and metrics go here (resumed)")
    p.set_defaults(func=run)


def run(args) -> int:
    from leafe_jax.configs import from_flags
    from leafe_jax.envs.sokoban import get_preset
    from leafe_jax.interfaces.symbolic.pretrain import PretrainConfig, pretrain_base_policy
    from leafe_jax.pipeline.config import ExperimentConfig

    ex, cfg = from_flags(ExperimentConfig, args), from_flags(PretrainConfig, args)
    _, metrics, stats = pretrain_base_policy(get_preset(ex.preset), ex.policy_config(), cfg,
                                             args.workdir, seed=ex.seed)
    print(json.dumps({"workdir": args.workdir, "data": stats, "final": metrics}, indent=1))
    return 0

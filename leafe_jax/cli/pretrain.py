"""Pretrain the base policy by behaviour cloning on generated demonstrations."""

from __future__ import annotations

import argparse
import json


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="6x6_2box", help="Sokoban preset")
    p.add_argument("--model", default="sokoban-small", help="model preset")
    p.add_argument("--workdir", required=True, help="checkpoints and metrics go here (resumed)")
    p.add_argument("--demo-levels", type=int, default=2000)
    p.add_argument("--exp-per-episode", type=int, default=2)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from leafe_jax.agent.pretrain import PretrainConfig, pretrain_base_policy
    from leafe_jax.envs.sokoban import get_preset
    from leafe_jax.policy.config import get_config

    cfg = PretrainConfig(num_demo_levels=args.demo_levels, exp_per_episode=args.exp_per_episode,
                         steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                         seed=args.seed)
    _, metrics, stats = pretrain_base_policy(get_preset(args.preset), get_config(args.model), cfg,
                                             args.workdir)
    print(json.dumps({"workdir": args.workdir, "data": stats, "final": metrics}, indent=1))
    return 0

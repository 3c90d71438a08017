"""Evaluate checkpoints: Pass@1..n on held-out levels (JSON, Markdown table, PNG curves)."""

from __future__ import annotations

import argparse
import os


def register(p: argparse.ArgumentParser) -> None:
    from leafe_jax.configs import add_flags
    from leafe_jax.eval.sweep import EvalConfig
    from leafe_jax.interfaces.symbolic.pretrain import PretrainConfig
    from leafe_jax.pipeline.config import ExperimentConfig, Stage1Config

    p.add_argument("workdirs", nargs="+", help="policy work directories holding checkpoints/ "
                                               "(name=dir to label)")
    p.add_argument("--preset", default=None, help="Sokoban preset (default: the checkpoint's)")
    add_flags(p, EvalConfig)
    p.add_argument("--seed", type=int, default=ExperimentConfig().seed,
                   help="experiment seed: the level pools and sampling keys of that seed")
    p.add_argument("--demo-levels", type=int, default=PretrainConfig().demo_levels,
                   help="demo pool size to exclude (the run's base.demo_levels)")
    p.add_argument("--train-levels", type=int, default=Stage1Config().train_levels,
                   help="training pool size to exclude (the run's stage1.train_levels)")
    p.add_argument("--levels-file", default=None,
                   help="evaluate on the levels of this Boxoban-format file (or directory) instead")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)


def run(args) -> int:
    from leafe_jax.configs import from_flags
    from leafe_jax.eval.checkpoints import evaluate_checkpoints
    from leafe_jax.eval.sweep import EvalConfig

    tables = evaluate_checkpoints(args.workdirs, args.out, from_flags(EvalConfig, args), seed=args.seed,
                                  demo_levels=args.demo_levels, train_levels=args.train_levels,
                                  preset=args.preset, levels_file=args.levels_file)
    with open(os.path.join(args.out, "passk.md")) as fh:
        print(fh.read())
    return 0 if tables else 1

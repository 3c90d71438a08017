"""Export a trained policy: params only (orbax), or Hugging Face safetensors + config.json."""

from __future__ import annotations

import argparse
import json


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("workdir", help="a work directory holding checkpoints/")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.add_argument("--format", choices=("params", "hf"), default="params")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.set_defaults(func=run)


def run(args) -> int:
    from leafe_jax.train.checkpoint import export_policy

    step = export_policy(args.workdir, args.out, fmt=args.format, step=args.step)
    print(json.dumps({"exported": args.out, "format": args.format, "step": step}))
    return 0

"""Export a trained policy: params only (orbax), or Hugging Face safetensors + config.json."""

from __future__ import annotations

import argparse
import json
import os


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("workdir", help="a work directory holding checkpoints/")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.add_argument("--format", choices=("params", "hf"), default="params")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.set_defaults(func=run)


def run(args) -> int:
    from leafe_jax.policy.hf import save_hf
    from leafe_jax.train.checkpoint import Checkpointer, load_policy

    if os.path.exists(args.out):
        raise FileExistsError(f"{args.out} exists; refusing to overwrite")
    model, meta = load_policy(args.workdir)
    ck = Checkpointer(os.path.join(args.workdir, "checkpoints"))
    if args.format == "params":
        ck.export_params(args.out, step=args.step, model=model)
    else:
        if args.step is not None:
            ck.restore(model, step=args.step)
        save_hf(model, args.out, model_type="llama")
    ck.close()
    print(json.dumps({"exported": args.out, "format": args.format, "step": args.step or meta["step"]}))
    return 0

"""Play one episode of a trained policy on a held-out level and render it (text / GIF)."""

from __future__ import annotations

import argparse


def register(p: argparse.ArgumentParser) -> None:
    from leafe_jax.interfaces.symbolic.pretrain import PretrainConfig
    from leafe_jax.pipeline.config import Stage1Config

    p.add_argument("workdir", help="work directory holding checkpoints/")
    p.add_argument("--index", type=int, default=0, help="held-out level index")
    p.add_argument("--seed", type=int, default=0, help="experiment seed (its level pools)")
    p.add_argument("--demo-levels", type=int, default=PretrainConfig().demo_levels,
                   help="demo pool size to exclude (the run's base.demo_levels)")
    p.add_argument("--train-levels", type=int, default=Stage1Config().train_levels,
                   help="training pool size to exclude (the run's stage1.train_levels)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--gif", default=None, help="write the episode as an animated GIF")
    p.add_argument("--tokens", action="store_true", help="also print the policy's context")
    p.set_defaults(func=run)


def run(args) -> int:
    import jax

    from leafe_jax.envs.sokoban import get_preset, save_gif
    from leafe_jax.envs.sokoban.pools import held_out_pool
    from leafe_jax.interfaces.symbolic.play import play_episode
    from leafe_jax.train.checkpoint import load_policy

    if args.index < 0:
        raise ValueError(f"--index must be >= 0, got {args.index}")
    if args.temperature <= 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    model, meta = load_policy(args.workdir)
    preset = get_preset(meta["preset"])
    held = held_out_pool(args.index + 1, preset.generator, args.seed, demo_levels=args.demo_levels,
                         train_levels=args.train_levels)
    level = jax.tree.map(lambda x: x[args.index], held.level)
    text, frames = play_episode(model, preset.make_env(), level, jax.random.key(args.sample_seed),
                                temperature=args.temperature, tokens=args.tokens)
    print(f"level {args.index} of the eval pool ({preset.name}), temperature {args.temperature}")
    print(text)
    if args.gif:
        save_gif(frames, args.gif)
        print(f"wrote {args.gif}")
    return 0

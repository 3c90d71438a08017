"""Play one episode of a trained policy on a held-out level and render it (text / GIF)."""

from __future__ import annotations

import argparse


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("workdir", help="work directory holding checkpoints/")
    p.add_argument("--index", type=int, default=0, help="held-out level index")
    p.add_argument("--seed", type=int, default=0, help="level-pool seed (same as pretraining)")
    p.add_argument("--demo-levels", type=int, default=2000, help="demo pool to exclude")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--gif", default=None, help="write the episode as an animated GIF")
    p.add_argument("--tokens", action="store_true", help="also print the policy's context")
    p.set_defaults(func=run)


def run(args) -> int:
    import jax
    import numpy as np

    from leafe_jax.agent import encoding as E
    from leafe_jax.agent.pools import held_out_pool
    from leafe_jax.agent.rollout import rollout
    from leafe_jax.cli.evaluate import load_policy
    from leafe_jax.envs.sokoban import get_preset, render_text, save_gif

    model, meta = load_policy(args.workdir)
    preset = get_preset(meta["preset"])
    if args.index < 0:
        raise ValueError(f"--index must be >= 0, got {args.index}")
    held = held_out_pool(args.index + 1, preset.generator, args.seed, args.demo_levels)
    env = preset.make_env()
    params = env.default_params
    lvl = jax.tree.map(lambda x: x[args.index: args.index + 1], held.level)
    _, start = jax.vmap(env.reset_to_level, in_axes=(0, None))(lvl, params)
    traj = rollout(model, env, params, start, jax.random.split(jax.random.key(args.sample_seed), 1),
                   num_steps=preset.max_steps, temperature=args.temperature)
    n = int(traj.num_steps[0])
    frames = np.asarray(jax.vmap(env.get_obs)(jax.tree.map(lambda x: x[: n + 1, 0], traj.states)))
    print(f"level {args.index} of the eval pool ({preset.name}), temperature {args.temperature}")
    print(render_text(frames[0]))
    for t in range(n):
        a = int(traj.actions[t, 0])
        print(f"\nstep {t + 1}: {'UDLR'[a]}  {E.FEEDBACK_NAMES[int(traj.feedback[t, 0]) - E.FB0]}"
              f"  p={float(np.exp(traj.logprobs[t, 0])):.2f}")
        print(render_text(frames[t + 1]))
    print(f"\n{'SOLVED' if bool(traj.solved[0]) else 'not solved'} in {n} steps")
    if args.tokens:
        print(E.describe(traj.tokens[0, : int(traj.token_len[0])]))
    if args.gif:
        save_gif(frames, args.gif)
        print(f"wrote {args.gif}")
    return 0

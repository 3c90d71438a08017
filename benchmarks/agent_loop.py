"""Agent-loop throughput (policy + env on device) and the time of a Pass@128 sweep.

    python benchmarks/agent_loop.py

Small Sokoban policy (``sokoban-small``, untrained: episodes run to the step limit, the
worst case), preset ``6x6_2box`` (30 steps, 18 tokens per turn). Reports episodes/s and
env steps/s of ``rollout`` at batch 1024 (median of 3), the share of that time spent in
the environment (the same 1024 x 30 steps of ``step_env`` alone, in a scan), and the wall
time of a Pass@128 evaluation over 100 held-out levels (12 800 episodes, chunks of
``--sweep-batch``).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from leafe_jax.interfaces.symbolic.rollout import rollout
from leafe_jax.envs.sokoban import generate_levels, get_preset
from leafe_jax.eval.sweep import sample_success
from leafe_jax.policy.config import get_config
from leafe_jax.policy.model import create_model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="6x6_2box")
    ap.add_argument("--model", default="sokoban-small")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--levels", type=int, default=100)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--sweep-batch", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/results/agent_loop.json")
    args = ap.parse_args()
    p = get_preset(args.preset)
    env = p.make_env()
    params = env.default_params
    T = p.max_steps
    model = create_model(get_config(args.model), seed=0)
    g = generate_levels(jax.random.key(0), args.batch, p.generator)
    _, states = jax.jit(jax.vmap(env.reset_to_level, in_axes=(0, None)))(g.level, params)
    keys = jax.random.split(jax.random.key(1), args.batch)

    def run():
        tr = rollout(model, env, params, states, keys, num_steps=T)
        tr.solved.block_until_ready()
        return tr

    run()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        tr = run()
        times.append(time.perf_counter() - t0)
    t_loop = float(np.median(times))
    steps = int(np.asarray(tr.num_steps).sum())

    acts = jax.random.randint(jax.random.key(2), (T, args.batch), 0, 4)

    @jax.jit
    def env_only(s, acts):
        def body(s, a):
            _, s, r, d, info = jax.vmap(env.step_env, in_axes=(None, 0, 0, None))(None, s, a, params)
            return s, (r, d, info)
        return jax.lax.scan(body, s, acts)

    jax.block_until_ready(env_only(states, acts))
    et = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(env_only(states, acts))
        et.append(time.perf_counter() - t0)
    t_env = float(np.median(et))

    held = generate_levels(jax.random.key(10_000), args.levels, p.generator)
    t0 = time.perf_counter()
    success = sample_success(model, env, params, held.level, args.n, jax.random.key(3),
                             batch_size=args.sweep_batch)
    t_sweep = time.perf_counter() - t0
    res = {"preset": p.name, "model": args.model, "params": model.cfg.num_params(),
           "batch": args.batch, "turns": T, "rollout_s": t_loop,
           "episodes_per_s": args.batch / t_loop, "env_steps_per_s": steps / t_loop,
           "env_only_s": t_env, "env_share": t_env / t_loop,
           "passk_levels": args.levels, "passk_n": args.n, "passk_sweep_s": t_sweep,
           "passk_sweep_batch": args.sweep_batch,
           "passk_success_rate": float(success.mean())}
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

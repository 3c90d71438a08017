"""Episodes/s of the agent loop with the whole history vs a history window, side by side.

    python benchmarks/history_window.py            # writes benchmarks/results/history_window.json

Same weights (``sokoban-small`` shape, random init: episodes run to the step limit, the
worst case), same levels, same keys and batch; only ``window_segments`` differs
(``interfaces.symbolic.rollout.windowed``: the current turn, ``h`` turns before it and the
first observation). Per preset and history length: the median of ``--repeats`` timed
rollouts after one compile, and the ratio to the full history measured in the same run.
The context of 7x7 / 8x8 episodes exceeds the preset model's 1024 slots, so the benchmark
raises ``max_seq_len`` (RoPE has no learned positions; the weights are the same shape).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leafe_jax.envs.sokoban import generate_levels, get_preset
from leafe_jax.interfaces.symbolic.encoding import turn_length
from leafe_jax.interfaces.symbolic.rollout import cache_size_for, rollout, windowed
from leafe_jax.policy.config import get_config
from leafe_jax.policy.model import create_model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="6x6_2box,7x7_2box,8x8_3box")
    ap.add_argument("--histories", default="0,1,2,4")
    ap.add_argument("--model", default="sokoban-small")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/history_window.json")
    args = ap.parse_args()
    rows = []
    for name in args.presets.split(","):
        p = get_preset(name)
        env = p.make_env()
        params = env.default_params
        T = p.max_steps
        size = cache_size_for(env, 1, T)
        g = generate_levels(jax.random.key(0), args.batch, p.generator)
        _, states = jax.jit(jax.vmap(env.reset_to_level, in_axes=(0, None)))(g.level, params)
        keys = jax.random.split(jax.random.key(1), args.batch)
        base_cfg = get_config(args.model)
        base_cfg = base_cfg.replace(max_seq_len=max(base_cfg.max_seq_len, size))
        full = None
        # the floor: each turn's chunk through the same network with (almost) no context -
        # a full forward of one turn's tokens per row, times the number of turns
        floor_model = create_model(base_cfg, seed=0)
        gdef, st = nnx.split(floor_model)
        fwd = jax.jit(lambda st, t: nnx.merge(gdef, st)(t)[0])
        chunk = jnp.ones((args.batch, turn_length(p.height, p.width)), jnp.int32)
        fwd(st, chunk).block_until_ready()
        ft = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(T):
                fwd(st, chunk).block_until_ready()
            ft.append(time.perf_counter() - t0)
        floor = float(np.median(ft))
        print(json.dumps({"preset": name, "floor_s": floor}), flush=True)
        for h in (int(x) for x in args.histories.split(",")):
            model = create_model(windowed(base_cfg, h), seed=0)

            def run():
                tr = rollout(model, env, params, states, keys, num_steps=T)
                tr.solved.block_until_ready()
                return tr

            run()
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                tr = run()
                times.append(time.perf_counter() - t0)
            t = float(np.median(times))
            eps = args.batch / t
            full = eps if h == 0 else full
            row = {"preset": name, "turns": T, "context_slots": size, "history_length": h,
                   "batch": args.batch, "rollout_s": t, "times_s": times, "episodes_per_s": eps,
                   "env_steps_per_s": float(np.asarray(tr.num_steps).sum()) / t,
                   "speedup_vs_full": eps / full if full else None,
                   "floor_s": floor, "floor_share": floor / t}
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(args.out, "w") as fh:
        json.dump({"model": args.model, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()

"""Random-action throughput harness shared by the demo and ``benchmarks/``.

Any environment plugs in through a per-env ``step(state, action, key) -> (state, out)``
where ``out`` is a pytree of per-step outputs. The harness vmaps it over the batch,
scans ``T`` steps with pre-drawn actions, and folds every output leaf into an
accumulator that it returns, so XLA cannot drop work the caller would use (rewards, done
flags, feedback) - an unused ``info`` would otherwise be dead code.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def make_rollout(step: Callable, batch: int, steps: int, *, split_keys: bool = True):
    """Jitted ``run(states_B, actions_TxB, key) -> (states_B, checksum_B)``."""
    vstep = jax.vmap(step)

    def run(states, actions, key):
        def body(carry, x):
            s, acc = carry
            t, a = x
            if split_keys:   # one fresh key per env and step, as gymnax users do
                keys = jax.random.split(jax.random.fold_in(key, t), batch)
            else:
                keys = jnp.broadcast_to(key, (batch,))
            s, out = vstep(s, a, keys)
            for leaf in jax.tree.leaves(out):
                acc = acc + leaf.reshape(batch, -1).astype(jnp.float32).sum(-1)
            return (s, acc), None

        (s, acc), _ = jax.lax.scan(body, (states, jnp.zeros(batch)), (jnp.arange(steps), actions))
        return s, acc

    return jax.jit(run)


def time_rollout(run, states, actions, key, repeats: int = 5) -> dict:
    """Compile once, then time ``repeats`` runs; returns median steps/s and all times."""
    jax.block_until_ready(run(states, actions, key))
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(states, actions, jax.random.fold_in(key, r + 1)))
        times.append(time.perf_counter() - t0)
    steps = actions.shape[0] * actions.shape[1]
    med = float(np.median(times))
    return {"steps_per_s": steps / med, "median_s": med, "times_s": times}


def sokoban_step_fn(env, params, *, auto_reset: bool):
    """Per-env step for ``make_rollout`` that consumes reward, done and the feedback."""

    def step(state, action, key):
        if auto_reset:
            _, state, reward, term, trunc, info = env.step(key, state, action, params)
            info = {k: v for k, v in info.items()
                    if k not in ("final_observation", "terminated", "truncated")}
            done = term | trunc
        else:
            _, state, reward, done, info = env.step_env(key, state, action, params)
        return state, (reward, done, info)

    return step

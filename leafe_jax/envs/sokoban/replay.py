"""Replay an action sequence from a level (jitted ``lax.scan``; time-major outputs)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from leafe_jax.envs.sokoban.env import EnvParams, EnvState, Sokoban
from leafe_jax.envs.sokoban.level import Level


class Replay(NamedTuple):
    states: EnvState       # [T+1] states[t] is the state before action t
    obs: jax.Array         # [T+1, H, W]
    rewards: jax.Array     # [T]
    solved: jax.Array      # [T] solved after action t
    info: dict             # [T] feedback per step


def replay(env: Sokoban, level: Level, actions_T, params: EnvParams | None = None) -> Replay:
    """Step ``actions_T`` (ints; -1 = padding, skipped) from ``level`` without auto-reset.

    Padding steps leave the state unchanged, so a padded solution replays like the
    unpadded one; finished episodes are frozen too.
    """
    if params is None:
        params = env.default_params
    actions_T = jnp.asarray(actions_T, jnp.int32)
    if actions_T.ndim != 1:
        raise ValueError(f"actions must be a 1-D sequence, got shape {actions_T.shape}")
    return _replay(env, level, actions_T, params)


def _replay_impl(env: Sokoban, level: Level, actions_T, params: EnvParams) -> Replay:
    obs0, s0 = env.reset_to_level(level, params)

    def body(s, a):
        _, s2, r, term, info = env.step_env(None, s, jnp.maximum(a, 0), params)
        live = (a >= 0) & ~env.is_terminated(s, params)
        s2 = jax.tree.map(lambda x, y: jnp.where(live, x, y), s2, s)
        r = jnp.where(live, r, 0.0)
        info = jax.tree.map(lambda v: jnp.where(live, v, jnp.zeros_like(v)), info)
        return s2, (s2, env.get_obs(s2), r, env.is_terminated(s2, params), info)

    _, (states, obs, rewards, solved, info) = jax.lax.scan(body, s0, actions_T)
    cat = lambda a, b: jnp.concatenate([a[None], b])
    return Replay(states=jax.tree.map(cat, s0, states), obs=cat(obs0, obs), rewards=rewards,
                  solved=solved, info=info)


_replay = jax.jit(_replay_impl, static_argnames=("env",))

"""Whole-episode records: a rollout seen from step 0, whatever step it started from.

A rollback branch starts at step tau of its parent: its ``Trajectory`` covers steps
tau, tau+1, ... and its token buffer already holds the parent's context before turn tau
(the re-prefilled prefix). ``stitch`` joins the parent's steps ``< tau`` and the branch's
steps into one ``Episode`` indexed by absolute step, so reflection, datasets and trees never
deal with offsets. Everything is batch-major (``[..., T]``) and built with gathers.

Shapes: T = max steps, S = token slots.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.envs.sokoban.replay import replay
from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.interfaces.symbolic.rollout import INFO_KEYS, Trajectory
from leafe_jax.envs.sokoban.env import EnvState


class Episode(NamedTuple):
    states: EnvState      # [..., T+1]  states[t] before action t (frozen after the end)
    actions: jax.Array    # int32 [..., T]  -1 after the end
    feedback: jax.Array   # int32 [..., T]  feedback token produced by action t
    info: dict            # bool [..., T] per feedback flag
    active: jax.Array     # bool [..., T]
    action_pos: jax.Array  # int32 [..., T]  position of action t's token in ``tokens``
    tokens: jax.Array     # int32 [..., S]  the context as the policy saw it (experiences included)
    token_len: jax.Array  # int32 [...]
    solved: jax.Array     # bool [...]
    num_steps: jax.Array  # int32 [...]  absolute steps taken (the episode's length)
    start: jax.Array      # int32 [...]  first step this rollout sampled itself (tau; 0 for roots)


def _pad_tokens(x, size):
    return jnp.pad(x, ((0, 0), (0, size - x.shape[1]))) if x.shape[1] < size else x[:, :size]


def from_trajectory(traj: Trajectory, token_slots: int) -> Episode:
    """A root rollout (started at step 0) as an ``Episode`` batch."""
    tm = lambda x: jnp.moveaxis(x, 0, 1)
    return Episode(states=jax.tree.map(tm, traj.states), actions=tm(traj.actions),
                   feedback=tm(traj.feedback), info=jax.tree.map(tm, traj.info),
                   active=tm(traj.active), action_pos=tm(traj.action_pos),
                   tokens=_pad_tokens(traj.tokens, token_slots), token_len=traj.token_len,
                   solved=traj.solved, num_steps=traj.num_steps,
                   start=jnp.zeros_like(traj.num_steps))


@jax.jit
def _stitch(parent: Episode, branch: Trajectory, tau, branch_tokens):
    T = parent.actions.shape[-1]
    t = jnp.arange(T)[None, :]                           # absolute step
    rel = jnp.clip(t - tau[:, None], 0, T - 1)           # the branch's own step index
    own = t >= tau[:, None]
    tm = lambda x: jnp.moveaxis(x, 0, 1)

    def pick(p, b):                                      # p [B, T, ...], b [T', B, ...] time-major
        b = tm(b)
        if b.shape[1] < T:
            b = jnp.pad(b, ((0, 0), (0, T - b.shape[1])) + ((0, 0),) * (b.ndim - 2),
                        constant_values=jnp.zeros((), b.dtype))
        g = jax.vmap(lambda bb, r: bb[r])(b, rel)
        return jnp.where(own.reshape(own.shape + (1,) * (b.ndim - 2)), g, p)

    T1 = T + 1
    t1 = jnp.arange(T1)[None, :]
    rel1 = jnp.clip(t1 - tau[:, None], 0, T1 - 1)
    own1 = t1 >= tau[:, None]

    def pick_state(p, b):
        b = tm(b)
        if b.shape[1] < T1:     # pad with the last state (episodes are frozen after the end)
            b = jnp.concatenate([b, jnp.repeat(b[:, -1:], T1 - b.shape[1], 1)], 1)
        g = jax.vmap(lambda bb, r: bb[r])(b, rel1)
        return jnp.where(own1.reshape(own1.shape + (1,) * (b.ndim - 2)), g, p)

    active = pick(parent.active, branch.active)
    return Episode(
        states=jax.tree.map(pick_state, parent.states, branch.states),
        actions=pick(parent.actions, branch.actions), feedback=pick(parent.feedback, branch.feedback),
        info=jax.tree.map(pick, parent.info, branch.info), active=active,
        action_pos=pick(parent.action_pos, branch.action_pos), tokens=branch_tokens,
        token_len=branch.token_len, solved=branch.solved,
        num_steps=tau + branch.num_steps, start=tau)


def stitch(parent: Episode, branch: Trajectory, tau) -> Episode:
    """Parent steps ``< tau`` + the branch's steps (which started at ``tau``)."""
    tau = jnp.asarray(tau, jnp.int32)
    return _stitch(parent, branch, tau, _pad_tokens(branch.tokens, parent.tokens.shape[-1]))


@jax.jit
def truncate(ep: Episode, at) -> Episode:
    """Each episode cut after its first ``at[r]`` steps (``at >= num_steps``: unchanged), as
    if the rollout had stopped there: later actions -1 and inactive, states frozen at
    ``states[at]``, the context ends at action ``at - 1``, not solved (per-step fields of
    inactive steps are not read by anyone, as after any episode's end)."""
    T = ep.actions.shape[-1]
    at = jnp.minimum(jnp.asarray(at, jnp.int32), ep.num_steps)
    cut = at < ep.num_steps
    t = jnp.arange(T)[None]
    live = t < at[:, None]
    t1 = jnp.minimum(jnp.arange(T + 1)[None], at[:, None])
    states = jax.tree.map(lambda x: jax.vmap(lambda xx, i: xx[i])(x, t1), ep.states)
    last = jnp.take_along_axis(ep.action_pos, jnp.maximum(at - 1, 0)[:, None], 1)[:, 0]
    token_len = jnp.where(cut, last + 1, ep.token_len)
    S = ep.tokens.shape[-1]
    return ep._replace(
        states=states, actions=jnp.where(live, ep.actions, -1),
        info=jax.tree.map(lambda v: v & live, ep.info), active=ep.active & live,
        tokens=jnp.where(jnp.arange(S)[None] < token_len[:, None], ep.tokens, E.PAD),
        token_len=token_len, solved=ep.solved & ~cut, num_steps=jnp.where(cut, at, ep.num_steps))


def turn_start(ep: Episode, t, cells: int) -> jax.Array:
    """Position in ``tokens`` where turn t begins (its first cell): turn t is
    ``cells fb [experience] a_t``, the experience only where one sits right before a_t."""
    pos = jnp.take_along_axis(ep.action_pos, jnp.asarray(t, jnp.int32)[..., None], -1)[..., 0]
    before = jnp.take_along_axis(ep.tokens, jnp.maximum(pos - 1, 0)[..., None], -1)[..., 0]
    return pos - (cells + 1) - jnp.where(before == E.EXP_END, E.EXP_LEN, 0)


@partial(jax.jit, static_argnames=("cells",))
def branch_inputs(ep: Episode, tau, cells: int):
    """What a branch at step ``tau`` starts from: the env state there (a gather), the token
    prefix before turn tau (PAD after it), its length, and the feedback token of turn tau."""
    tau = jnp.asarray(tau, jnp.int32)
    start = turn_start(ep, tau, cells)
    S = ep.tokens.shape[-1]
    prefix = jnp.where(jnp.arange(S)[None] < start[:, None], ep.tokens, E.PAD)
    fb = jnp.take_along_axis(ep.tokens, (start + cells)[:, None], 1)[:, 0]
    state = jax.tree.map(lambda x: jax.vmap(lambda xx, t: xx[t])(x, tau), ep.states)
    return state, prefix, start, fb


def strip_experience(tokens, length: int):
    """Host-side: ``tokens[:length]`` without its experience segments, and where each kept
    token came from (``index[j]`` = original position of the j-th kept token)."""
    tokens = np.asarray(tokens)[:length]
    keep = np.ones(length, bool)
    for p in np.flatnonzero(tokens == E.EXP):
        keep[p: p + E.EXP_LEN] = False
    idx = np.flatnonzero(keep)
    return tokens[idx], idx


def episode_from_actions(env, level, actions, max_steps: int, *, token_slots: int | None = None,
                         params=None) -> Episode:
    """An unbatched ``Episode`` of a given action sequence from a level (host-side helper for
    tests, logged data and docs): replayed states and feedback, tokens as the policy sees them."""
    params = params or env.default_params
    acts = np.full(max_steps, -1, np.int32)
    acts[: len(actions)] = actions
    rep = replay(env, level, acts, params)
    n = len(actions)
    fb = np.concatenate([[E.FB_START], np.asarray(jax.vmap(E.feedback_token)(rep.info))[:-1]])
    toks, _ = E.encode_episode(np.asarray(rep.obs[: n + 1]), acts[:n], fb[:n])
    S = token_slots or len(toks)
    tokens = np.zeros(S, np.int32)
    tokens[: len(toks)] = toks
    L = E.turn_length(env.height, env.width)
    pos = np.full(max_steps, 0, np.int32)
    pos[:n] = 1 + np.arange(n) * L + (L - 1)
    active = np.arange(max_steps) < n
    return Episode(states=rep.states, actions=jnp.asarray(acts),
                   feedback=jnp.asarray(np.concatenate([fb[1:], [E.FB_START]])),
                   info={k: jnp.asarray(np.asarray(rep.info[k]) & active) for k in INFO_KEYS},
                   active=jnp.asarray(active), action_pos=jnp.asarray(pos), tokens=jnp.asarray(tokens),
                   token_len=jnp.int32(len(toks)), solved=jnp.asarray(rep.solved[n - 1]) if n else jnp.bool_(False),
                   num_steps=jnp.int32(n), start=jnp.int32(0))

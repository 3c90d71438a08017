"""The agent loop on device: policy decodes an action, the env steps, the next turn joins
the context - a jitted ``lax.scan`` over turns, batched over episodes.

A rollout may start mid-episode (rollback branches): it takes env states, the token prefix
that precedes the current turn, an optional experience segment placed right before the
first action, and an optional set of forbidden first actions. Per-step randomness is
``fold_in(episode_key, env time)``, so a branch restarted at step tau with the same
episode key and the same prefix reproduces the original continuation.

Shapes: B episodes, T turns, P prefix tokens, C cells per turn, S cache slots.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leafe_jax.data.loader import round_up
from leafe_jax.envs.sokoban.env import EnvState, Sokoban
from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.policy.model import init_cache
from leafe_jax.policy.sampling import Constrained

INFO_KEYS = ("moved", "pushed", "bumped", "box_on_target", "box_off_target", "dead_square",
              "frozen", "deadlock", "progress", "invalid_action")


class Trajectory(NamedTuple):
    """Time-major record of a batch of episodes (``states[t]`` is the state before action t)."""

    states: EnvState          # [T+1, B, ...]
    actions: jax.Array        # int32 [T, B]  (-1 once the episode is over)
    logprobs: jax.Array       # float32 [T, B]
    rewards: jax.Array        # float32 [T, B]
    feedback: jax.Array       # int32 [T, B]  feedback token produced by action t
    info: dict                # bool [T, B] per feedback flag
    active: jax.Array         # bool [T, B]   the episode was still running at step t
    terminated: jax.Array     # bool [T, B]
    truncated: jax.Array      # bool [T, B]
    tokens: jax.Array         # int32 [B, S]  the whole context (prefix, turns, last action)
    token_len: jax.Array      # int32 [B]
    action_pos: jax.Array     # int32 [T, B]  where action t sits in ``tokens``
    solved: jax.Array         # bool [B]
    num_steps: jax.Array      # int32 [B]     actions taken


def _feedback_info(info):
    return {k: info[k] for k in INFO_KEYS}


PREFIX_CHUNK = 128     # prefix tokens fed per step (attention scores rows x heads x chunk x slots)


@functools.partial(jax.jit, static_argnames=("graphdef", "env", "num_steps", "cache_size",
                                             "temperature", "num_segments", "prefix_chunk"))
def _rollout(graphdef, state, env: Sokoban, params, start, prefix, prefix_len, first_fb, keys,
             experience, has_exp, forbidden, *, num_steps: int, cache_size: int, temperature: float,
             num_segments: int = 4, prefix_chunk: int = PREFIX_CHUNK):
    """The jitted agent loop. Long because it is one traced body: the sampling, prefill and
    turn closures share the cache layout and the loop's carry, and splitting them apart
    would only pass that state around."""
    model = nnx.merge(graphdef, state)
    B = prefix.shape[0]
    C = (env.height - 2) * (env.width - 2)
    V = model.cfg.vocab_size
    rows = jnp.arange(B)
    strategy = Constrained(allowed=E.ACTION_TOKENS, temperature=temperature)
    act_tok = jnp.asarray(E.ACTION_TOKENS)

    def sample(logits_BxV, t_B, mask_BxV):
        def one(lg, k, t, m):
            tok, lp = strategy.get_next_tokens(lg[None], jax.random.fold_in(k, t), m[None])
            return tok[0], lp[0]
        return jax.vmap(one)(logits_BxV, keys, t_B, mask_BxV)

    window = history_window(model.cfg, C)

    def feed(cache, buf, chunk_BxL, count_B, attend=None, turn=True):
        """Write ``chunk[:, :count]`` at each row's next positions; logits at its last token.
        A turn's chunk of a windowed policy reads only the window's slots."""
        L = chunk_BxL.shape[1]
        pos = cache.lengths[:, None] + jnp.arange(L)[None]
        pos = jnp.where(jnp.arange(L)[None] < count_B[:, None], pos, cache_size)   # dropped
        logits, cache = model(chunk_BxL, pos, cache=cache, new_lengths_B=cache.lengths + count_B,
                              attend_slots=attend, attend_window=window if turn else None)
        buf = buf.at[rows[:, None], pos].set(chunk_BxL, mode="drop")
        last = jnp.take_along_axis(logits, (count_B - 1)[:, None, None], 1)[:, 0]
        return cache, buf, last

    # 1. prefix (everything before the current turn), ``prefix_chunk`` tokens at a time: a
    # branch's prefix is a whole episode, and its scores in one piece (rows x heads x P x
    # slots, float32) took > 20 GB for 200 branches of a 7x7 episode
    cache = init_cache(model.cfg, B, cache_size)
    buf = jnp.zeros((B, cache_size), jnp.int32)
    n_chunks = -(-prefix.shape[1] // prefix_chunk)
    padded = jnp.pad(prefix, ((0, 0), (0, n_chunks * prefix_chunk - prefix.shape[1])))

    def prefix_step(i, c):
        part = jax.lax.dynamic_slice_in_dim(padded, i * prefix_chunk, prefix_chunk, 1)
        count = jnp.clip(prefix_len - i * prefix_chunk, 0, prefix_chunk)
        return feed(*c, part, count, turn=False)[:2]
    cache, buf = jax.lax.fori_loop(0, n_chunks, prefix_step, (cache, buf))
    # 2. first turn: cells, feedback, then the optional experience right before the action
    obs0 = jax.vmap(env.get_obs)(start)
    chunk0 = jnp.concatenate([jax.vmap(E.obs_tokens)(obs0), first_fb[:, None], experience], 1)
    cache, buf, logits = feed(cache, buf, chunk0, C + 1 + jnp.where(has_exp, E.EXP_LEN, 0))
    allow_first = jnp.ones((B, V), bool).at[:, act_tok].set(~forbidden)

    def turn(carry, t, attend):
        s, cache, buf, logits, done, mask = carry
        tok, lp = sample(logits, s.time, mask)
        a = E.token_action(tok)
        _, s2, r, term, info = jax.vmap(env.step_env, in_axes=(None, 0, 0, None))(None, s, a, params)
        trunc = s2.time >= params.max_steps_in_episode
        live = ~done
        s2 = jax.tree.map(lambda x, y: jnp.where(live.reshape((-1,) + (1,) * (x.ndim - 1)), x, y), s2, s)
        fb = jax.vmap(E.feedback_token)(info)
        a_pos = cache.lengths
        chunk = jnp.concatenate([tok[:, None], jax.vmap(E.obs_tokens)(jax.vmap(env.get_obs)(s2)),
                                 fb[:, None]], 1)
        cache, buf, logits = feed(cache, buf, chunk, jnp.full((B,), C + 2), attend)
        out = dict(state=s, action=jnp.where(live, a, -1), logp=jnp.where(live, lp, 0.0),
                   reward=jnp.where(live, r, 0.0), feedback=fb,
                   info=jax.tree.map(lambda v: v & live, _feedback_info(info)), active=live,
                   term=term & live, trunc=trunc & live, a_pos=a_pos)
        done = done | term | trunc
        return (s2, cache, buf, logits, done, jnp.ones_like(mask)), out

    done0 = env.is_terminated(start, params) | (start.time >= params.max_steps_in_episode)
    # Segments of turns, each attending only to the cache prefix it can have filled:
    # attention over all S slots every turn would cost ~2x more on average.
    carry = (start, cache, buf, logits, done0, allow_first)
    outs, first = [], prefix.shape[1] + C + 1 + E.EXP_LEN
    bounds = np.linspace(0, num_steps, min(num_segments, num_steps) + 1).astype(int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        attend = min(cache_size, round_up(first + int(b) * (C + 2), 64))
        carry, o = jax.lax.scan(functools.partial(turn, attend=attend), carry, jnp.arange(a, b))
        outs.append(o)
    s_end, cache, buf, _, done, _ = carry
    out = jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs)
    # The context ends at the last action: drop the turn fed after it.
    n_act = out["active"].sum(0).astype(jnp.int32)
    last_pos = jnp.take_along_axis(out["a_pos"], jnp.maximum(n_act - 1, 0)[None], 0)[0]
    token_len = jnp.where(n_act > 0, last_pos + 1, prefix_len + C + 1 + jnp.where(has_exp, E.EXP_LEN, 0))
    buf = jnp.where(jnp.arange(cache_size)[None] < token_len[:, None], buf, E.PAD)
    states = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), out["state"], s_end)
    return Trajectory(states=states, actions=out["action"], logprobs=out["logp"],
                      rewards=out["reward"], feedback=out["feedback"], info=out["info"],
                      active=out["active"], terminated=out["term"], truncated=out["trunc"],
                      tokens=buf, token_len=token_len, action_pos=out["a_pos"],
                      solved=env.is_terminated(s_end, params), num_steps=n_act)


def history_window(cfg, cells: int) -> tuple[int, int] | None:
    """``(sink, recent)`` slots a turn's chunk of a windowed policy can see (``None``: not
    windowed). Segments open at feedback tokens, so segment 0 is ``BOS [start experience]
    cells_0`` and segment u >= 1 is ``fb_{u-1} [experience] a_{u-1} cells_u`` (at most
    C + 8 tokens). A chunk's first query is in segment t (``a_{t-1}`` or ``cells_t``), so
    it may see segments t - W .. t in full plus its own last tokens: (W + 1)(C + 8) + 7."""
    if not cfg.window_segments:
        return None
    W = cfg.window_segments
    return round_up(1 + E.EXP_LEN + cells, 8), round_up((W + 1) * (cells + 2 + E.EXP_LEN) + 8, 8)


def windowed(cfg, history_length: int):
    """``cfg`` for a policy that sees the current turn, the ``history_length`` turns before
    it and the first observation (the task), like verl-agent's ``history_length``; 0 = the
    whole episode (``cfg`` unchanged). Segments open at feedback tokens: the query that
    picks ``a_t`` sits in segment t + 1 (after ``fb_t``), which with W = history_length + 1
    sees ``cells_{t-h} .. cells_t`` and the actions ``a_{t-h-1} .. a_{t-1}``."""
    if history_length <= 0:
        return cfg
    fb = tuple(range(E.FB0, E.FB0 + len(E.FEEDBACK_NAMES)))
    return cfg.replace(window_segments=history_length + 1, segment_tokens=fb)


def cache_size_for(env: Sokoban, prefix_len: int, num_steps: int) -> int:
    """Slots for a prefix, an experience, and ``num_steps`` turns (rounded up to 64)."""
    need = prefix_len + E.EXP_LEN + (num_steps + 1) * E.turn_length(env.height, env.width) + 1
    return round_up(need, 64)


def rollout(model, env: Sokoban, params, start_states: EnvState, keys, *, num_steps: int,
            prefix=None, prefix_len=None, first_feedback=None, experience=None,
            forbidden=None, temperature: float = 1.0, cache_size: int | None = None) -> Trajectory:
    """Run ``num_steps`` turns of the policy from ``start_states`` (batched, leading B).

    ``prefix`` [B, P] / ``prefix_len`` [B]: tokens before the current turn (default: BOS).
    ``first_feedback`` [B]: the feedback token shown with the first observation (default
    FB_START). ``experience`` [B, EXP_LEN] (rows of PAD = none) goes right before the
    first action; ``forbidden`` [B, 4] bool masks first actions. ``cache_size`` overrides the
    context slots (default: the padded prefix plus ``num_steps`` turns); rollback branches
    pass the size of a whole episode, since a branch at tau has ``num_steps - tau`` turns
    left (writes past the end, by rows already finished, are dropped).
    """
    B = int(np.shape(start_states.player)[0])
    keys = jnp.asarray(keys)
    if keys.shape[:1] != (B,):
        raise ValueError(f"need one key per episode: {B} episodes, keys of shape {keys.shape}")
    if prefix is None:
        prefix = np.full((B, 1), E.BOS, np.int32)
        prefix_len = np.ones((B,), np.int32)
    prefix = jnp.asarray(prefix, jnp.int32)
    prefix_len = jnp.asarray(prefix_len, jnp.int32)
    if experience is None:
        experience = jnp.zeros((B, E.EXP_LEN), jnp.int32)
    experience = jnp.asarray(experience, jnp.int32)
    has_exp = experience[:, 0] == E.EXP
    first_feedback = jnp.full((B,), E.FB_START, jnp.int32) if first_feedback is None else \
        jnp.asarray(first_feedback, jnp.int32)
    forbidden = jnp.zeros((B, 4), bool) if forbidden is None else jnp.asarray(forbidden, bool)
    if bool(jnp.all(forbidden, axis=1).any()):
        raise ValueError("a row forbids all four actions")
    if model.cfg.vocab_size < E.VOCAB_SIZE:
        raise ValueError(f"the policy's vocabulary ({model.cfg.vocab_size}) is smaller than the "
                         f"interaction vocabulary ({E.VOCAB_SIZE})")
    size = cache_size_for(env, prefix.shape[1], num_steps) if cache_size is None else int(cache_size)
    if size < prefix.shape[1] + E.turn_length(env.height, env.width) + E.EXP_LEN:
        raise ValueError(f"cache_size {size} cannot hold a prefix of {prefix.shape[1]} tokens and a turn")
    if size > model.cfg.max_seq_len:
        raise ValueError(f"{num_steps} turns need {size} context slots; the policy allows "
                         f"{model.cfg.max_seq_len}")
    graphdef, state = nnx.split(model)
    return _rollout(graphdef, state, env, params, start_states, prefix, prefix_len, first_feedback,
                    keys, experience, has_exp, forbidden, num_steps=num_steps, cache_size=size,
                    temperature=float(temperature), prefix_chunk=PREFIX_CHUNK)

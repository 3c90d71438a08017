"""Jit-compiled batched generation with a KV cache.

``generate`` = one jitted prefill of per-row-length prompts (right-padded, lengths
bucketed so only values change between calls) + one jitted ``lax.while_loop`` decode
with a donated cache. Rows stop at a stop token or after ``max_new_tokens``; finished
rows emit ``pad_id`` with log-prob 0.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leafe_jax.policy.model import KVCache, Transformer, cache_shardings, init_cache
from leafe_jax.sharding import logical_sharding


class SampleOutput(NamedTuple):
    tokens: jax.Array    # int32 [B, N]
    logprobs: jax.Array  # float32 [B, N]
    lengths: jax.Array   # int32 [B]  tokens emitted, a stop token included
    done: jax.Array      # bool [B]   stopped on a stop token


def bucket(n: int, minimum: int = 16, steps: int = 1) -> int:
    """Round a length up so shapes repeat: to a power of two (>= ``minimum``), or with
    ``steps`` > 1 to one of ``steps`` evenly spaced sizes per octave (``steps = 4``: 128,
    160, 192, 224, 256, 320, ...; at most 25 % padding instead of 100 %, for a few more
    compiled shapes)."""
    n = max(int(n), 1)
    top = 1 << int(np.ceil(np.log2(n)))
    if steps <= 1 or top <= steps:
        return max(minimum, top)
    step = top // 2 // steps
    return max(minimum, top // 2 + -(-(n - top // 2) // step) * step)


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def prefill(graphdef, state, tokens_BxL, lengths_B, cache: KVCache):
    """Write the prompts into the cache; returns (logits at each row's last token, cache)."""
    model = nnx.merge(graphdef, state)
    B, T = tokens_BxL.shape
    pos = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    # the vocabulary projection at each row's last token only, not at every prompt position
    logits, cache = model(tokens_BxL, pos, cache=cache, new_lengths_B=lengths_B,
                          logits_at=jnp.maximum(lengths_B - 1, 0)[:, None])
    return logits[:, 0], cache


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "strategy", "stop_tokens",
                                             "pad_id", "attend_slots"), donate_argnames=("cache",))
def decode(graphdef, state, last_logits_BxV, cache: KVCache, key, mask_BxV, *, max_new_tokens: int,
           strategy, stop_tokens: tuple[int, ...] = (), pad_id: int = 0, attend_slots: int | None = None):
    """``lax.while_loop`` decode from the cache; returns (SampleOutput, cache). ``attend_slots``
    (static) bounds the slots attention reads (no row may reach beyond it). ``key``: one key
    for the batch, or a key per row ([B]: a row's samples then depend only on its own key
    and context, not on the rows beside it)."""
    model = nnx.merge(graphdef, state)
    B = last_logits_BxV.shape[0]
    N = max_new_tokens
    stops = jnp.asarray(stop_tokens if stop_tokens else (-1,), jnp.int32)
    per_row = jnp.ndim(key) > 0

    def sample(logits, i):
        if not per_row:
            return strategy.get_next_tokens(logits, jax.random.fold_in(key, i), mask_BxV)
        one = lambda lg, k, m: jax.tree.map(lambda x: x[0], strategy.get_next_tokens(
            lg[None], jax.random.fold_in(k, i), None if m is None else m[None]))
        if mask_BxV is None:
            return jax.vmap(lambda lg, k: one(lg, k, None))(logits, key)
        return jax.vmap(one)(logits, key, mask_BxV)

    def cond(c):
        i, _, _, _, _, done, _ = c
        return (i < N) & ~jnp.all(done)

    def body(c):
        i, logits, cache, toks, logps, done, n = c
        tok, lp = sample(logits, i)
        tok = jnp.where(done, pad_id, tok).astype(jnp.int32)
        lp = jnp.where(done, 0.0, lp)
        toks = toks.at[:, i].set(tok)
        logps = logps.at[:, i].set(lp)
        live = (~done).astype(jnp.int32)
        n = n + live
        done = done | jnp.isin(tok, stops)
        # the emitted token (a stop token too) joins the cache; finished rows stay as they
        # were, so the cache holds exactly each row's context for a next turn
        lg, cache = model(tok[:, None], cache.lengths[:, None], cache=cache,
                          new_lengths_B=cache.lengths + live, attend_slots=attend_slots)
        return i + 1, lg[:, 0], cache, toks, logps, done, n

    init = (jnp.int32(0), last_logits_BxV, cache, jnp.full((B, N), pad_id, jnp.int32),
            jnp.zeros((B, N), jnp.float32), jnp.zeros((B,), bool), jnp.zeros((B,), jnp.int32))
    _, _, cache, toks, logps, done, n = jax.lax.while_loop(cond, body, init)
    return SampleOutput(toks, logps, n, done), cache


@functools.partial(jax.jit, static_argnames=("graphdef", "attend_slots"), donate_argnames=("cache",))
def extend(graphdef, state, tokens_BxL, lengths_B, cache: KVCache, attend_slots: int | None = None):
    """Append ``lengths_B`` new tokens per row after what the cache holds (a new turn of a
    chat: only the new tokens are prefilled); returns (logits at each row's last new token,
    cache)."""
    model = nnx.merge(graphdef, state)
    T = tokens_BxL.shape[1]
    pos = cache.lengths[:, None] + jnp.arange(T)[None]
    logits, cache = model(tokens_BxL, pos, cache=cache, new_lengths_B=cache.lengths + lengths_B,
                          attend_slots=attend_slots, logits_at=jnp.maximum(lengths_B - 1, 0)[:, None])
    return logits[:, 0], cache


def new_cache(model: Transformer, batch: int, size: int, mesh=None) -> KVCache:
    """An empty KV cache, sharded by KV heads (and batch) when a mesh is given."""
    cache = init_cache(model.cfg, batch, size)
    return cache if mesh is None else jax.device_put(cache, cache_shardings(mesh, model.cfg))


def place_rows(tokens_BxL, lengths_B, mesh):
    return (jax.device_put(tokens_BxL, logical_sharding(mesh, ("batch", None))),
            jax.device_put(lengths_B, logical_sharding(mesh, ("batch",))))


def generate(model: Transformer, prompts, lengths, key, *, max_new_tokens: int, strategy,
             stop_tokens: tuple[int, ...] = (), pad_id: int = 0, mask_BxV=None,
             mesh=None) -> SampleOutput:
    """Sample continuations of right-padded ``prompts`` [B, T] with per-row ``lengths``."""
    prompts = np.asarray(prompts, np.int32)
    lengths = np.asarray(lengths, np.int32)
    if prompts.ndim != 2 or lengths.shape != (prompts.shape[0],):
        raise ValueError(f"prompts must be [B, T] with lengths [B]; got {prompts.shape} and "
                         f"{lengths.shape}")
    if (lengths < 1).any() or (lengths > prompts.shape[1]).any():
        raise ValueError(f"prompt lengths must be in [1, {prompts.shape[1]}], got {lengths.tolist()}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    B, T = prompts.shape
    Tb = bucket(T)
    S = Tb + bucket(max_new_tokens)
    if S > model.cfg.max_seq_len:
        raise ValueError(f"prompt bucket {Tb} + {max_new_tokens} new tokens exceed the model's "
                         f"max_seq_len {model.cfg.max_seq_len}")
    padded = np.full((B, Tb), pad_id, np.int32)
    padded[:, :T] = prompts
    graphdef, state = nnx.split(model)
    cache = new_cache(model, B, S, mesh)
    if mesh is not None:
        padded, lengths = place_rows(padded, lengths, mesh)
    last, cache = prefill(graphdef, state, jnp.asarray(padded), jnp.asarray(lengths), cache)
    out, _ = decode(graphdef, state, last, cache, key, mask_BxV, max_new_tokens=max_new_tokens,
                    strategy=strategy, stop_tokens=tuple(stop_tokens), pad_id=pad_id)
    return out

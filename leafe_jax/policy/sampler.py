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

from leafe_jax.policy.model import KVCache, Transformer, init_cache


class SampleOutput(NamedTuple):
    tokens: jax.Array    # int32 [B, N]
    logprobs: jax.Array  # float32 [B, N]
    lengths: jax.Array   # int32 [B]  tokens emitted, a stop token included
    done: jax.Array      # bool [B]   stopped on a stop token


def bucket(n: int, minimum: int = 16) -> int:
    """Round a length up to a power of two (>= ``minimum``) so shapes repeat."""
    return max(minimum, 1 << max(0, int(np.ceil(np.log2(max(n, 1))))))


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def prefill(graphdef, state, tokens_BxL, lengths_B, cache: KVCache):
    """Write the prompts into the cache; returns (logits at each row's last token, cache)."""
    model = nnx.merge(graphdef, state)
    B, T = tokens_BxL.shape
    pos = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    logits, cache = model(tokens_BxL, pos, cache=cache, new_lengths_B=lengths_B)
    last = jnp.take_along_axis(logits, jnp.maximum(lengths_B - 1, 0)[:, None, None], 1)[:, 0]
    return last, cache


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "strategy", "stop_tokens",
                                             "pad_id"), donate_argnames=("cache",))
def decode(graphdef, state, last_logits_BxV, cache: KVCache, key, mask_BxV, *, max_new_tokens: int,
           strategy, stop_tokens: tuple[int, ...] = (), pad_id: int = 0):
    """``lax.while_loop`` decode from the cache; returns (SampleOutput, cache)."""
    model = nnx.merge(graphdef, state)
    B = last_logits_BxV.shape[0]
    N = max_new_tokens
    stops = jnp.asarray(stop_tokens if stop_tokens else (-1,), jnp.int32)

    def cond(c):
        i, _, _, _, _, done, _ = c
        return (i < N) & ~jnp.all(done)

    def body(c):
        i, logits, cache, toks, logps, done, n = c
        tok, lp = strategy.get_next_tokens(logits, jax.random.fold_in(key, i), mask_BxV)
        tok = jnp.where(done, pad_id, tok).astype(jnp.int32)
        lp = jnp.where(done, 0.0, lp)
        toks = toks.at[:, i].set(tok)
        logps = logps.at[:, i].set(lp)
        n = n + (~done).astype(jnp.int32)
        done = done | jnp.isin(tok, stops)
        lg, cache = model(tok[:, None], cache.lengths[:, None], cache=cache)
        return i + 1, lg[:, 0], cache, toks, logps, done, n

    init = (jnp.int32(0), last_logits_BxV, cache, jnp.full((B, N), pad_id, jnp.int32),
            jnp.zeros((B, N), jnp.float32), jnp.zeros((B,), bool), jnp.zeros((B,), jnp.int32))
    _, _, cache, toks, logps, done, n = jax.lax.while_loop(cond, body, init)
    return SampleOutput(toks, logps, n, done), cache


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
    cache = init_cache(model.cfg, B, S)
    if mesh is not None:
        from leafe_jax.policy.model import cache_shardings
        from leafe_jax.sharding import logical_sharding
        cache = jax.device_put(cache, cache_shardings(mesh, model.cfg))
        bs = logical_sharding(mesh, ("batch", None))
        padded, lengths = jax.device_put(padded, bs), jax.device_put(lengths, logical_sharding(mesh, ("batch",)))
    last, cache = prefill(graphdef, state, jnp.asarray(padded), jnp.asarray(lengths), cache)
    out, _ = decode(graphdef, state, last, cache, key, mask_BxV, max_new_tokens=max_new_tokens,
                    strategy=strategy, stop_tokens=tuple(stop_tokens), pad_id=pad_id)
    return out

"""A pretrained causal language model as a text agent's policy: batched generation over
token-id prompts that share an instruction prefix.

``LMPolicy.generate(prompts, keys, ...)``: the prompts (token ids) are right-padded after
their shared prefix; the prefix's KV cache is computed once (per distinct prefix) and
broadcast into every row, so a turn prefills only each row's own tokens (``extend``), then
one jitted ``while_loop`` decode samples up to ``max_new_tokens`` per row, stopping at the
end-of-turn / end-of-sequence tokens. Rows and lengths are bucketed (``sampler.bucket``: rows to two sizes
per octave, prompt widths and cache slots to four, so padding wastes at most 25 % of a
prefill, where powers of two wasted up to half), so a whole search compiles a handful of
shapes. ``keys`` are per row: a row's
sample depends on its own key and prompt, not on the rows sampled beside it. With a
``mesh`` (a model loaded onto it: ``load_pretrained(..., mesh=mesh)``) the episodes are
split over the batch axes (rows padded to a multiple of them) and the model's weights are
sharded as loaded.

Anything with ``tokenizer``, ``stop_tokens`` and ``generate`` of this signature can stand
in (the tests' scripted generators do).
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leafe_jax.policy.model import KVCache, cache_shardings
from leafe_jax.policy.sampler import bucket, decode, extend, new_cache, place_rows, prefill
from leafe_jax.policy.sampling import Greedy, Temperature
from leafe_jax.policy.text import default_stop_tokens
from leafe_jax.sharding import logical_sharding


class Generation(NamedTuple):
    tokens: list          # int32 arrays: the generated ids of each row (a stop token included)
    logprobs: list        # float32 arrays: their log-probs under the sampling distribution


ROW_STEPS, LENGTH_STEPS = 2, 4          # bucket sizes per octave (rows; widths and slots)


@functools.partial(jax.jit, static_argnames=("batch", "size"))
def _broadcast_prefix(prefix: KVCache, batch: int, size: int) -> KVCache:
    """The one-row prefix cache copied into ``batch`` rows of ``size`` slots."""
    def grow(x):
        x = jnp.pad(x, ((0, 0), (0, 0), (0, size - x.shape[2]), (0, 0)))
        return jnp.broadcast_to(x, (batch,) + x.shape[1:])
    return KVCache(k=tuple(grow(x) for x in prefix.k), v=tuple(grow(x) for x in prefix.v),
                   lengths=jnp.broadcast_to(prefix.lengths, (batch,)))


class LMPolicy:
    """``model`` (``policy.model.Transformer``) + its ``tokenizer``."""

    def __init__(self, model, tokenizer, *, name: str = "", mesh=None):
        if model.cfg.window_segments:
            raise ValueError("a text policy needs an unwindowed model (its prompts carry their "
                             "own history window)")
        self.model, self.tokenizer, self.name, self.mesh = model, tokenizer, name, mesh
        # rows per call: a multiple of the mesh's batch axes (episodes are data-parallel)
        self.row_multiple = 1 if mesh is None else int(np.prod(
            [mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape]))
        self.stop_tokens = default_stop_tokens(tokenizer)
        self._prefix: tuple | None = None          # (ids, one-row cache)
        self.prefilled = self.generated = 0        # tokens, for throughput reports
        self.timing = {"prefill": 0.0, "decode": 0.0}   # seconds (benchmarks)

    def _prefix_cache(self, ids: tuple) -> KVCache:
        if self._prefix is None or self._prefix[0] != ids:
            graphdef, state = nnx.split(self.model)
            L = bucket(len(ids), 16, LENGTH_STEPS)      # <= any turn's slots (bucket is monotone)
            arr = np.zeros((1, L), np.int32)
            arr[0, : len(ids)] = ids
            cache = new_cache(self.model, 1, L)
            with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
                _, cache = prefill(graphdef, state, jnp.asarray(arr), jnp.asarray([len(ids)], np.int32),
                                   cache)
            self._prefix = (ids, cache)
            self.prefilled += len(ids)
        return self._prefix[1]

    def generate(self, prompts: list, keys, *, max_new_tokens: int, temperature: float,
                 prefix_len: int = 0) -> Generation:
        """Sample a response per prompt (token ids). ``prefix_len``: the prompts' shared
        first tokens (their KV is computed once and reused)."""
        if not prompts:
            return Generation([], [])
        B = len(prompts)
        prefix = tuple(prompts[0][:prefix_len])
        if any(tuple(p[:prefix_len]) != prefix for p in prompts):
            raise ValueError("the prompts do not share their first prefix_len tokens")
        rest = [list(p[prefix_len:]) for p in prompts]
        if min(len(r) for r in rest) < 1:
            raise ValueError("every prompt needs a token after the shared prefix")
        rows = max(bucket(B, 1, ROW_STEPS), self.row_multiple)
        rows = -(-rows // self.row_multiple) * self.row_multiple
        longest = max(len(r) for r in rest)
        width = bucket(longest, 16, LENGTH_STEPS)
        size = bucket(prefix_len + longest + max_new_tokens, 64, LENGTH_STEPS)
        if size > self.model.cfg.max_seq_len:
            raise ValueError(f"prompts of up to {prefix_len + longest} tokens + "
                             f"{max_new_tokens} new exceed the model's context of "
                             f"{self.model.cfg.max_seq_len}")
        arr = np.zeros((rows, width), np.int32)
        lens = np.ones(rows, np.int32)
        for i, r in enumerate(rest):
            arr[i, : len(r)] = r
            lens[i] = len(r)
        arr[B:], lens[B:] = arr[0], lens[0]
        keys = jnp.asarray(keys)
        keys = jnp.concatenate([keys, jnp.repeat(keys[:1], rows - B, 0)]) if rows > B else keys
        graphdef, state = nnx.split(self.model)
        if prefix_len:
            cache = _broadcast_prefix(self._prefix_cache(prefix), rows, size)
            if self.mesh is not None:
                cache = jax.device_put(cache, cache_shardings(self.mesh, self.model.cfg))
        else:
            cache = new_cache(self.model, rows, size, self.mesh)
        arr, lens = jnp.asarray(arr), jnp.asarray(lens)
        if self.mesh is not None:
            arr, lens = place_rows(arr, lens, self.mesh)
            keys = jax.device_put(keys, logical_sharding(self.mesh, ("batch",)))
        t0 = time.perf_counter()
        with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
            last, cache = extend(graphdef, state, arr, lens, cache, attend_slots=size)
        last.block_until_ready()
        t1 = time.perf_counter()
        strategy = Greedy() if temperature == 0 else Temperature(temperature=temperature)
        with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
            out, _ = decode(graphdef, state, last, cache, keys, None, max_new_tokens=max_new_tokens,
                            strategy=strategy, stop_tokens=self.stop_tokens, pad_id=0, attend_slots=size)
        toks, lps, n = (np.asarray(x) for x in (out.tokens, out.logprobs, out.lengths))
        self.timing["prefill"] += t1 - t0
        self.timing["decode"] += time.perf_counter() - t1
        self.prefilled += int(lens[:B].sum())
        self.generated += int(n[:B].sum())
        return Generation([toks[i, : n[i]].astype(np.int32) for i in range(B)],
                          [lps[i, : n[i]].astype(np.float32) for i in range(B)])

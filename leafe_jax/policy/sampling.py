"""Sampling strategies: small frozen objects with ``get_next_tokens(logits, key, mask)``.

``mask_BxV`` (optional) marks the tokens a row may emit (e.g. the actions an experience
does not forbid). Each strategy returns ``(tokens_B, logprobs_B)``; the log-prob is that
of the chosen token under the distribution actually sampled from (after temperature,
truncation and masking; greedy: the plain softmax).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_NEG = -1e30


def _masked(logits, mask):
    return logits if mask is None else jnp.where(mask, logits, _NEG)


def _pick(logits, key):
    tok = jax.random.categorical(key, logits, axis=-1)
    return tok, jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tok[:, None], -1)[:, 0]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Greedy:
    def get_next_tokens(self, logits_BxV, key, mask_BxV=None):
        lg = _masked(logits_BxV, mask_BxV)
        tok = jnp.argmax(lg, -1)
        return tok, jnp.take_along_axis(jax.nn.log_softmax(lg, -1), tok[:, None], -1)[:, 0]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Temperature:
    temperature: float = 1.0

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (use Greedy), got {self.temperature}")

    def get_next_tokens(self, logits_BxV, key, mask_BxV=None):
        return _pick(_masked(logits_BxV, mask_BxV) / self.temperature, key)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TopK:
    k: int
    temperature: float = 1.0

    def __post_init__(self):
        if self.k < 1 or not self.temperature > 0:
            raise ValueError(f"TopK needs k >= 1 and temperature > 0, got {self}")

    def get_next_tokens(self, logits_BxV, key, mask_BxV=None):
        lg = _masked(logits_BxV, mask_BxV) / self.temperature
        kth = jax.lax.top_k(lg, self.k)[0][:, -1:]
        return _pick(jnp.where(lg >= kth, lg, _NEG), key)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TopP:
    p: float
    temperature: float = 1.0

    def __post_init__(self):
        if not 0 < self.p <= 1 or not self.temperature > 0:
            raise ValueError(f"TopP needs 0 < p <= 1 and temperature > 0, got {self}")

    def get_next_tokens(self, logits_BxV, key, mask_BxV=None):
        lg = _masked(logits_BxV, mask_BxV) / self.temperature
        srt = jnp.sort(lg, -1)[:, ::-1]
        probs = jax.nn.softmax(srt, -1)
        before = jnp.cumsum(probs, -1) - probs          # mass strictly above each token
        keep = before < self.p                           # the smallest set reaching p
        cutoff = jnp.min(jnp.where(keep, srt, jnp.inf), -1, keepdims=True)
        return _pick(jnp.where(lg >= cutoff, lg, _NEG), key)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Constrained:
    """Sample only among ``allowed`` token ids (e.g. the action tokens), optionally
    intersected with a per-row mask."""

    allowed: tuple[int, ...]
    temperature: float = 1.0

    def __post_init__(self):
        if not self.allowed or not self.temperature > 0:
            raise ValueError(f"Constrained needs allowed ids and temperature > 0, got {self}")

    def get_next_tokens(self, logits_BxV, key, mask_BxV=None):
        V = logits_BxV.shape[-1]
        if max(self.allowed) >= V or min(self.allowed) < 0:
            raise ValueError(f"allowed ids {self.allowed} outside the vocabulary of {V}")
        allow = jnp.zeros((V,), bool).at[jnp.asarray(self.allowed)].set(True)[None]
        mask = allow if mask_BxV is None else (allow & mask_BxV)
        lg = _masked(logits_BxV, mask) / self.temperature
        return _pick(lg, key)

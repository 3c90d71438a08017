"""Decoder-only transformer of the Llama / Qwen2 family in Flax NNX.

RMSNorm in float32; RoPE in HF's split-half layout (``rotate_half``) with optional
Llama-3.1 scaling; grouped-query attention without materialising repeated K/V; SwiGLU
MLP; optional q/k/v bias (Qwen2); tied or untied embeddings. Every weight carries logical
axis names resolved through ``leafe_jax.sharding.RULES``.

The KV cache keeps one slot per absolute position and a valid length per row, so rows of
one batch can sit at different depths (rollback branches restart at different steps).
Shapes (the README's legend): B batch, L new tokens, S cache slots, D hidden, Q / K query /
KV heads (R = Q // K query heads share a KV head), E head dim, V vocab.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from leafe_jax.policy.config import ModelConfig, rope_inv_freq
from leafe_jax.sharding import RULES, constrain, logical_sharding, single_device_mesh

_NEG = -1e30


def _init(init, axes):
    return nnx.with_partitioning(init, axes, sharding_rules=RULES)


def _dtype(name: str):
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


@struct.dataclass
class KVCache:
    k: tuple           # per layer [B, K, S, E]  (batch and KV head lead: the decode dot's
    v: tuple           # per layer [B, K, S, E]   batch dims, so XLA needs no transposes)
    lengths: jax.Array  # int32 [B]: valid slots per row
    seg: jax.Array | None = None    # int32 [B, S]: each slot's segment (windowed models only)
    nseg: jax.Array | None = None   # int32 [B]: segments opened so far (windowed models only)

    @property
    def size(self) -> int:
        return self.k[0].shape[2]


def init_cache(cfg: ModelConfig, batch: int, size: int, dtype=None) -> KVCache:
    dtype = dtype or _dtype(cfg.dtype)
    shape = (batch, cfg.num_kv_heads, size, cfg.hd)
    z = lambda: jnp.zeros(shape, dtype)
    windowed = cfg.window_segments > 0
    return KVCache(k=tuple(z() for _ in range(cfg.num_layers)),
                   v=tuple(z() for _ in range(cfg.num_layers)),
                   lengths=jnp.zeros((batch,), jnp.int32),
                   seg=jnp.zeros((batch, size), jnp.int32) if windowed else None,
                   nseg=jnp.zeros((batch,), jnp.int32) if windowed else None)


def cache_shardings(mesh, cfg: ModelConfig):
    """NamedShardings of a ``KVCache`` pytree (batch over data/fsdp, KV heads over tp)."""
    kv = logical_sharding(mesh, ("cache_batch", "cache_kv", "cache_seq", "head_dim"))
    rows = logical_sharding(mesh, ("cache_batch",))
    windowed = cfg.window_segments > 0
    return KVCache(k=(kv,) * cfg.num_layers, v=(kv,) * cfg.num_layers, lengths=rows,
                   seg=logical_sharding(mesh, ("cache_batch", "cache_seq")) if windowed else None,
                   nseg=rows if windowed else None)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, param_dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = nnx.Param(_init(nnx.initializers.ones_init(), ("norm",))(
            rngs.params(), (dim,), param_dtype))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def apply_rope(x_BxLxQxE, cos_BxLxE2, sin_BxLxE2):
    """HF ``rotate_half`` RoPE: the two halves of the head dim form the rotated pairs."""
    x = x_BxLxQxE.astype(jnp.float32)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos_BxLxE2[:, :, None, :], sin_BxLxE2[:, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x_BxLxQxE.dtype)


def _linear(cfg, din, dout, axes, bias, rngs):
    return nnx.Linear(din, dout, use_bias=bias, rngs=rngs, param_dtype=_dtype(cfg.param_dtype),
                      dtype=_dtype(cfg.dtype),
                      kernel_init=_init(nnx.initializers.normal(0.02), axes),
                      bias_init=_init(nnx.initializers.zeros_init(), (axes[1],)))


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        Q, K, E, D = cfg.num_heads, cfg.num_kv_heads, cfg.hd, cfg.hidden_size
        self.Q, self.K, self.E = Q, K, E
        self.q = _linear(cfg, D, Q * E, ("embed", "heads"), cfg.qkv_bias, rngs)
        self.k = _linear(cfg, D, K * E, ("embed", "kv_heads"), cfg.qkv_bias, rngs)
        self.v = _linear(cfg, D, K * E, ("embed", "kv_heads"), cfg.qkv_bias, rngs)
        self.o = _linear(cfg, Q * E, D, ("heads", "embed"), False, rngs)

    def __call__(self, x_BxLxD, cos, sin, pos_BxL, valid_BxL, cache_kv, kv_len_B,
                 attend_slots=None, window=None):
        B, L, _ = x_BxLxD.shape
        Q, K, E = self.Q, self.K, self.E
        R = Q // K
        heads = ("act_batch", "act_seq", "act_heads", None)
        q = apply_rope(constrain(self.q(x_BxLxD).reshape(B, L, Q, E), heads), cos, sin)
        k = apply_rope(constrain(self.k(x_BxLxD).reshape(B, L, K, E), heads), cos, sin)
        v = constrain(self.v(x_BxLxD).reshape(B, L, K, E), heads)
        if cache_kv is None:
            keys, values = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)   # [B, K, L, E]
            mask = (pos_BxL[:, None, :] <= pos_BxL[:, :, None]) & valid_BxL[:, None, :]
            new_kv = None
        else:
            ck, cv = cache_kv                                                  # [B, K, S, E]
            rows = jnp.arange(B)[:, None]
            keys = ck.at[rows, :, pos_BxL].set(k.astype(ck.dtype), mode="drop")
            values = cv.at[rows, :, pos_BxL].set(v.astype(cv.dtype), mode="drop")
            new_kv = (keys, values)
            slots = jnp.arange(keys.shape[2])[None]                            # [1 | B, N]
            if window is not None and window.slots is not None:   # the window's slots only
                slots = window.slots
                g = slots[:, None, :, None]
                keys = jnp.take_along_axis(keys, g, 2)
                values = jnp.take_along_axis(values, g, 2)
            elif attend_slots is not None:      # static: no row has reached these slots yet
                keys, values = keys[:, :, :attend_slots], values[:, :, :attend_slots]
                slots = slots[:, :attend_slots]
            mask = ((slots[:, None, :] <= pos_BxL[:, :, None])
                    & (slots[:, None, :] < kv_len_B[:, None, None]))
        if window is not None:
            mask = mask & window.mask
        # GQA: the R query heads of a KV head share its keys; [B, K, L*R, E] queries.
        qg = q.reshape(B, L, K, R, E).transpose(0, 2, 1, 3, 4).reshape(B, K, L * R, E)
        s = jnp.einsum("bkqe,bkse->bkqs", qg, keys.astype(qg.dtype),
                       preferred_element_type=jnp.float32) / np.sqrt(E)
        s = jnp.where(mask[:, None, :, None, :], s.reshape(B, K, L, R, -1), _NEG)
        p = jax.nn.softmax(s, axis=-1).astype(values.dtype).reshape(B, K, L * R, -1)
        o = jnp.einsum("bkqs,bkse->bkqe", p, values)
        o = o.reshape(B, K, L, R, E).transpose(0, 2, 1, 3, 4).reshape(B, L, Q * E)
        return self.o(o.astype(x_BxLxD.dtype)), new_kv


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        D, F = cfg.hidden_size, cfg.intermediate_size
        self.gate = _linear(cfg, D, F, ("embed", "mlp"), False, rngs)
        self.up = _linear(cfg, D, F, ("embed", "mlp"), False, rngs)
        self.down = _linear(cfg, F, D, ("mlp", "embed"), False, rngs)

    def __call__(self, x):
        h = constrain(jax.nn.silu(self.gate(x)) * self.up(x), ("act_batch", "act_seq", "act_mlp"))
        return self.down(h)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        pd = _dtype(cfg.param_dtype)
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd, rngs)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, cos, sin, pos, valid, cache_kv, kv_len, attend_slots=None, window=None):
        h, new_kv = self.attn(self.attn_norm(x), cos, sin, pos, valid, cache_kv, kv_len,
                              attend_slots, window)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), new_kv


class Transformer(nnx.Module):
    """``model(tokens_BxL, positions_BxL, valid_BxL=None, cache=None) -> (logits, cache)``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = _dtype(cfg.param_dtype)
        self.embed = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, param_dtype=pd,
                               dtype=_dtype(cfg.dtype),
                               embedding_init=_init(nnx.initializers.normal(0.02), ("vocab", "embed")))
        self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd, rngs)
        if not cfg.tie_embeddings:
            self.lm_head = _linear(cfg, cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), False, rngs)

    def __call__(self, tokens_BxL, positions_BxL=None, valid_BxL=None, cache: KVCache | None = None,
                 new_lengths_B=None, attend_slots: int | None = None,
                 attend_window: tuple[int, int] | None = None, logits_at=None):
        """Full forward (``cache=None``) or a cached prefill / decode step.

        With a cache, token t of row b is written to slot ``positions[b, t]`` and attends to
        slots ``<= positions[b, t]`` below ``new_lengths[b]`` (default: the row's old length
        plus T). ``attend_slots`` (static) promises that no row attends beyond that many
        slots, so attention reads only that prefix of the cache (the agent loop grows it
        turn by turn). Returns ``(logits_BxLxV float32, cache)``.

        Windowed models (``cfg.window_segments`` = W > 0): a token sees only its own segment,
        the W before it and segment 0 (a segment opens at each of ``cfg.segment_tokens``),
        with the cache or without - a history window like verl-agent's ``history_length``,
        with positions kept absolute so training on whole episodes and cached decoding see
        the same attention. ``attend_window = (sink, recent)`` (static, cached calls) promises
        that segment 0 lies in the first ``sink`` slots and every key the new tokens may see
        past it in the ``recent`` slots ending at the row's last new token: attention then
        reads only those ``sink + recent`` slots, whatever the context's length.

        ``logits_at`` (int32 [B, K], full forward): logits only at those positions
        ([B, K, V]) - a loss on a few tokens of a long context (a chat response) need not
        materialise the vocabulary for every position.
        """
        tokens_BxL = jnp.asarray(tokens_BxL)
        if tokens_BxL.ndim != 2:
            raise ValueError(f"tokens must be [batch, time], got shape {tokens_BxL.shape}")
        B, T = tokens_BxL.shape
        if positions_BxL is None:
            start = cache.lengths[:, None] if cache is not None else 0
            positions_BxL = start + jnp.arange(T)[None, :]
        positions_BxL = jnp.broadcast_to(positions_BxL, (B, T)).astype(jnp.int32)
        if valid_BxL is None:
            valid_BxL = jnp.ones((B, T), bool)
        freqs = positions_BxL[..., None].astype(jnp.float32) * jnp.asarray(
            rope_inv_freq(self.cfg), jnp.float32)
        cos, sin = jnp.cos(freqs), jnp.sin(freqs)
        kv_len = None
        if cache is not None:
            kv_len = new_lengths_B if new_lengths_B is not None else cache.lengths + T
        window, seg, nseg = None, None, None
        if self.cfg.window_segments:
            window, seg, nseg = _segment_window(self.cfg, tokens_BxL, positions_BxL, valid_BxL,
                                                cache, kv_len, attend_slots, attend_window)
        act = ("act_batch", "act_seq", "act_embed")
        x = constrain(self.embed(tokens_BxL), act)
        ks, vs = [], []
        if cache is None and self.cfg.scan_layers:
            x = _scan_blocks(self.layers, x, cos, sin, positions_BxL, valid_BxL, self.cfg.remat,
                             window)
        for i, layer in enumerate([] if cache is None and self.cfg.scan_layers else self.layers):
            if cache is None and self.cfg.remat:      # training: keep only block inputs
                x, _ = _remat_block(layer, x, cos, sin, positions_BxL, valid_BxL, window)
                x = constrain(x, act)
                continue
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x, new_kv = layer(x, cos, sin, positions_BxL, valid_BxL, kv, kv_len, attend_slots,
                              window)
            x = constrain(x, act)
            if cache is not None:
                ks.append(new_kv[0])
                vs.append(new_kv[1])
        if logits_at is not None:
            x = jnp.take_along_axis(x, jnp.asarray(logits_at, jnp.int32)[..., None], 1)
        x = self.final_norm(x)
        if self.cfg.tie_embeddings:
            logits = self.embed.attend(x)
        else:
            logits = self.lm_head(x)
        logits = constrain(logits, ("act_batch", "act_seq", "act_vocab"))
        new_cache = None if cache is None else KVCache(k=tuple(ks), v=tuple(vs), lengths=kv_len,
                                                       seg=seg, nseg=nseg)
        return logits.astype(jnp.float32), new_cache


class _Window(NamedTuple):
    mask: jax.Array           # bool [B, L, N]: which of the N keys each new token may see
    slots: jax.Array | None   # int32 [B, N]: the cache slots attended (None: all, or a prefix)


def _segment_window(cfg: ModelConfig, tokens, pos, valid, cache, kv_len, attend_slots,
                    attend_window):
    """The segment rule of a windowed model: key k is visible to query q when k's segment is
    0 or at most ``window_segments`` before q's; returns ``(window, cache seg, cache nseg)``."""
    B = tokens.shape[0]
    mark = jnp.isin(tokens, jnp.asarray(cfg.segment_tokens, jnp.int32)) & valid
    if cache is None:
        qseg = jnp.cumsum(mark, 1, dtype=jnp.int32)
        return _Window(_segment_rule(qseg, qseg, cfg.window_segments), None), None, None
    if cache.seg is None:
        raise ValueError("a windowed model needs a cache made for it (init_cache with its config)")
    live = pos < kv_len[:, None]                 # dropped / finished rows' tokens open nothing
    mark = mark & live
    qseg = cache.nseg[:, None] + jnp.cumsum(mark, 1, dtype=jnp.int32)
    nseg = cache.nseg + mark.sum(1, dtype=jnp.int32)
    seg = cache.seg.at[jnp.arange(B)[:, None], pos].set(qseg, mode="drop")
    S = seg.shape[1]
    slots, kseg = None, seg
    if attend_window is not None and sum(attend_window) <= S:
        sink, recent = attend_window
        last = jnp.max(jnp.where(live, pos, -1), 1)
        start = jnp.clip(last + 1 - recent, sink, S - recent)
        slots = jnp.concatenate([jnp.broadcast_to(jnp.arange(sink), (B, sink)),
                                 start[:, None] + jnp.arange(recent)[None]], 1)
        kseg = jnp.take_along_axis(seg, slots, 1)
    elif attend_slots is not None:
        kseg = seg[:, :attend_slots]
    return _Window(_segment_rule(qseg, kseg, cfg.window_segments), slots), seg, nseg


def _segment_rule(qseg_BxL, kseg_BxN, W: int):
    k = kseg_BxN[:, None, :]
    return (k == 0) | (k >= qseg_BxL[:, :, None] - W)


@nnx.remat
def _remat_block(layer, x, cos, sin, pos, valid, window=None):
    return layer(x, cos, sin, pos, valid, None, None, None, window)


def _scan_blocks(layers, x, cos, sin, pos, valid, remat: bool, window=None):
    """The blocks as one ``lax.scan`` over their stacked weights (stacked at call time:
    storage, checkpoints and loaders keep one module per layer). Under fsdp the compiler then
    gathers one layer's weights per iteration instead of keeping every layer's live at once;
    gradients flow back to each layer's own weights through the stack."""
    graphdef, _ = nnx.split(layers[0])
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[nnx.state(layer) for layer in layers])

    def body(x, state):
        y, _ = nnx.merge(graphdef, state)(x, cos, sin, pos, valid, None, None, None, window)
        return constrain(y, ("act_batch", "act_seq", "act_embed")), None

    return jax.lax.scan(jax.checkpoint(body) if remat else body, x, stacked)[0]


def create_model(cfg: ModelConfig, seed: int = 0, mesh=None) -> Transformer:
    """Build the model with its weights placed per the sharding rules (1-device mesh default)."""
    mesh = mesh or single_device_mesh()
    with jax.set_mesh(mesh):
        return Transformer(cfg, rngs=nnx.Rngs(seed))


def abstract_model(cfg: ModelConfig, mesh=None):
    """``(graphdef, abstract_state)`` with shardings, without allocating (any model size)."""
    mesh = mesh or single_device_mesh()
    return nnx.get_abstract_model(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)

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

    @property
    def size(self) -> int:
        return self.k[0].shape[2]


def init_cache(cfg: ModelConfig, batch: int, size: int, dtype=None) -> KVCache:
    dtype = dtype or _dtype(cfg.dtype)
    shape = (batch, cfg.num_kv_heads, size, cfg.hd)
    z = lambda: jnp.zeros(shape, dtype)
    return KVCache(k=tuple(z() for _ in range(cfg.num_layers)),
                   v=tuple(z() for _ in range(cfg.num_layers)),
                   lengths=jnp.zeros((batch,), jnp.int32))


def cache_shardings(mesh, cfg: ModelConfig):
    """NamedShardings of a ``KVCache`` pytree (batch over data/fsdp, KV heads over tp)."""
    kv = logical_sharding(mesh, ("cache_batch", "cache_kv", "cache_seq", "head_dim"))
    return KVCache(k=(kv,) * cfg.num_layers, v=(kv,) * cfg.num_layers,
                   lengths=logical_sharding(mesh, ("cache_batch",)))


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
                 attend_slots=None):
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
            if attend_slots is not None:        # static: no row has reached these slots yet
                keys, values = keys[:, :, :attend_slots], values[:, :, :attend_slots]
            slots = jnp.arange(keys.shape[2])
            mask = ((slots[None, None, :] <= pos_BxL[:, :, None])
                    & (slots[None, None, :] < kv_len_B[:, None, None]))
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

    def __call__(self, x, cos, sin, pos, valid, cache_kv, kv_len, attend_slots=None):
        h, new_kv = self.attn(self.attn_norm(x), cos, sin, pos, valid, cache_kv, kv_len,
                              attend_slots)
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
                 new_lengths_B=None, attend_slots: int | None = None):
        """Full forward (``cache=None``) or a cached prefill / decode step.

        With a cache, token t of row b is written to slot ``positions[b, t]`` and attends to
        slots ``<= positions[b, t]`` below ``new_lengths[b]`` (default: the row's old length
        plus T). ``attend_slots`` (static) promises that no row attends beyond that many
        slots, so attention reads only that prefix of the cache (the agent loop grows it
        turn by turn). Returns ``(logits_BxLxV float32, cache)``.
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
        act = ("act_batch", "act_seq", "act_embed")
        x = constrain(self.embed(tokens_BxL), act)
        ks, vs = [], []
        if cache is None and self.cfg.scan_layers:
            x = _scan_blocks(self.layers, x, cos, sin, positions_BxL, valid_BxL, self.cfg.remat)
        for i, layer in enumerate([] if cache is None and self.cfg.scan_layers else self.layers):
            if cache is None and self.cfg.remat:      # training: keep only block inputs
                x, _ = _remat_block(layer, x, cos, sin, positions_BxL, valid_BxL)
                x = constrain(x, act)
                continue
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x, new_kv = layer(x, cos, sin, positions_BxL, valid_BxL, kv, kv_len, attend_slots)
            x = constrain(x, act)
            if cache is not None:
                ks.append(new_kv[0])
                vs.append(new_kv[1])
        x = self.final_norm(x)
        if self.cfg.tie_embeddings:
            logits = self.embed.attend(x)
        else:
            logits = self.lm_head(x)
        logits = constrain(logits, ("act_batch", "act_seq", "act_vocab"))
        new_cache = None if cache is None else KVCache(k=tuple(ks), v=tuple(vs), lengths=kv_len)
        return logits.astype(jnp.float32), new_cache


@nnx.remat
def _remat_block(layer, x, cos, sin, pos, valid):
    return layer(x, cos, sin, pos, valid, None, None)


def _scan_blocks(layers, x, cos, sin, pos, valid, remat: bool):
    """The blocks as one ``lax.scan`` over their stacked weights (stacked at call time:
    storage, checkpoints and loaders keep one module per layer). Under fsdp the compiler then
    gathers one layer's weights per iteration instead of keeping every layer's live at once;
    gradients flow back to each layer's own weights through the stack."""
    graphdef, _ = nnx.split(layers[0])
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[nnx.state(layer) for layer in layers])

    def body(x, state):
        y, _ = nnx.merge(graphdef, state)(x, cos, sin, pos, valid, None, None)
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

"""The jitted SFT step: gradient accumulation over micro-batches, one optimiser update.

Batches are dicts ``{"tokens": int32 [B, T], "loss_mask": bool [B, T], "weight": f32 [B]}``.
Under ``jax.set_mesh`` the weights keep their logical shardings and the batch is sharded
over (data, fsdp); XLA inserts the collectives. Accumulation sums unnormalised losses and
token counts over micro-batches and normalises once, so ``accum = k`` computes exactly the
update of one step on the whole batch. ``group_weights`` (static) switches to the
per-dataset loss (``losses.group_weights_B``; the batch then carries ``group`` int32 [B]).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from leafe_jax.train.losses import group_weights_B, masked_token_sums


def _sums(params, graphdef, rest, batch, targets: int | None = None):
    model = nnx.merge(graphdef, params, rest)
    if targets is None:
        logits, _ = model(batch["tokens"][:, :-1])
        return masked_token_sums(logits, batch["tokens"], batch["loss_mask"], batch.get("weight"))
    # only the (at most ``targets``) masked positions of each row go through the vocabulary
    mask = batch["loss_mask"][:, 1:]
    pos = jax.vmap(lambda m: jnp.nonzero(m, size=targets, fill_value=0)[0])(mask)
    valid = jnp.arange(targets)[None] < mask.sum(1, keepdims=True)
    logits, _ = model(batch["tokens"][:, :-1], logits_at=pos)
    tgt = jnp.take_along_axis(batch["tokens"][:, 1:], pos, 1)
    B = tgt.shape[0]
    return masked_token_sums(logits, jnp.concatenate([jnp.zeros((B, 1), tgt.dtype), tgt], 1),
                             jnp.concatenate([jnp.zeros((B, 1), bool), valid], 1), batch.get("weight"))


def _pin_shardings(node) -> None:
    """Keep params and optimizer state on their annotated shardings: under an Auto mesh XLA
    may otherwise return an updated weight in another layout (seen: a kernel transposed to
    P('tp', 'fsdp')), and the next step would reshard it."""
    if jax.sharding.get_abstract_mesh().empty:
        return
    state = nnx.state(node)
    nnx.update(node, jax.lax.with_sharding_constraint(state, nnx.get_partition_spec(state)))


@nnx.jit(static_argnames=("accum", "group_weights", "targets"), donate_argnames=("model", "optimizer"))
def train_step(model, optimizer, batch, accum: int = 1, group_weights: tuple | None = None,
               targets: int | None = None):
    """One update from ``batch`` split into ``accum`` micro-batches; returns metrics.
    ``group_weights`` (c_g per group): the per-dataset loss instead of the pooled mean.
    ``targets``: at most that many masked tokens per row - logits are computed only there
    (the same loss; a chat response's few tokens after a long prompt need ~1/30 of the
    memory). A row with more masked tokens is an error of the caller's sizing."""
    B = batch["tokens"].shape[0]
    if B % accum:
        raise ValueError(f"batch of {B} does not split into {accum} micro-batches")
    if group_weights is not None:
        if "group" not in batch:
            raise ValueError("group_weights needs batches with a 'group' field")
        w = group_weights_B(batch["loss_mask"], batch["group"], group_weights)
        batch = {k: v for k, v in batch.items() if k != "group"} | {"weight": w}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    grad_fn = jax.value_and_grad(functools.partial(_sums, targets=targets), has_aux=True)
    micro = jax.tree.map(lambda x: x.reshape((accum, B // accum) + x.shape[1:]), batch)

    def body(acc, mb):
        (s, aux), g = grad_fn(params, graphdef, rest, mb)
        return jax.tree.map(jnp.add, acc, (g, s, aux)), None

    zero = (jax.tree.map(jnp.zeros_like, params), jnp.float32(0),
            {"tokens": jnp.float32(0), "correct": jnp.float32(0)})
    (grads, loss_sum, aux), _ = jax.lax.scan(body, zero, micro)
    n = jnp.maximum(aux["tokens"], 1.0) if group_weights is None else jnp.float32(1.0)
    grads = jax.tree.map(lambda g: g / n, grads)
    optimizer.update(model, grads)
    _pin_shardings(model)
    _pin_shardings(optimizer)
    return {"loss": loss_sum / n, "accuracy": aux["correct"] / jnp.maximum(aux["tokens"], 1.0),
            "tokens": aux["tokens"],
            "grad_norm": jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))}


@nnx.jit
def eval_step(model, batch):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    s, aux = _sums(params, graphdef, rest, batch)
    n = jnp.maximum(aux["tokens"], 1.0)
    return {"loss": s / n, "accuracy": aux["correct"] / n, "tokens": aux["tokens"]}

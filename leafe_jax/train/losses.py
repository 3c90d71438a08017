"""Next-token cross-entropy on masked tokens, with per-example weights or per-dataset means.

Pooled (the default): one mean over every masked token of the batch. Per dataset (LEAFE's
L = L_e2p + beta * L_reh): each example belongs to a group g with a coefficient c_g, and the
loss is sum_g c_g * (mean over group g's masked tokens) - each dataset's expectation
estimated on its own, so a large dataset cannot drown a small one. That is the pooled sum
with per-example weights c_g / n_g (n_g: group g's masked tokens in the batch) and no
further normalisation, which keeps gradient accumulation exact (``group_weights_B``).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def masked_token_sums(logits_BxLxV, tokens_BxL, loss_mask_BxL, weights_B=None):
    """Unnormalised sums for predicting ``tokens[:, t+1]`` from ``logits[:, t]`` where
    ``loss_mask[:, t+1]``: ``(sum_b w_b * ce, {"tokens": n, "correct": c})``.

    ``logits`` come from the model run on ``tokens[:, :-1]`` (T-1 positions). Sums (not
    means) make gradient accumulation exact: normalise once by the batch's token count.
    """
    targets = tokens_BxL[:, 1:]
    mask = loss_mask_BxL[:, 1:].astype(jnp.float32)
    if weights_B is None:
        weights_B = jnp.ones(tokens_BxL.shape[0], jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV.astype(jnp.float32), targets)
    correct = (jnp.argmax(logits_BxLxV, -1) == targets).astype(jnp.float32)
    return (ce * mask * weights_B[:, None]).sum(), {"tokens": mask.sum(),
                                                   "correct": (correct * mask).sum()}


def masked_token_loss(logits_BxLxV, tokens_BxL, loss_mask_BxL, weights_B=None):
    """Mean loss over masked tokens: sum(w_b * ce) / number of masked tokens (so a weight
    scales an example's share - beta for rehearsal - without rescaling unit-weight data)."""
    s, aux = masked_token_sums(logits_BxLxV, tokens_BxL, loss_mask_BxL, weights_B)
    n = jnp.maximum(aux["tokens"], 1.0)
    return s / n, {"loss": s / n, "accuracy": aux["correct"] / n, "tokens": aux["tokens"]}


def group_weights_B(loss_mask_BxL, group_B, coefs):
    """Per-example weights ``c_g / n_g`` that turn the summed loss into the per-dataset
    loss; a group with no masked token in the batch contributes nothing."""
    coefs = jnp.asarray(coefs, jnp.float32)
    n_B = loss_mask_BxL[:, 1:].astype(jnp.float32).sum(1)
    n_G = jnp.zeros(coefs.shape[0], jnp.float32).at[group_B].add(n_B)
    return coefs[group_B] / jnp.maximum(n_G[group_B], 1.0)

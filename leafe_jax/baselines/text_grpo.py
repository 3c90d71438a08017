"""GRPO-RLVR for the text agent, on the same objective and loop as the symbolic GRPO.

Each rollout batch: ``tasks_per_step`` tasks x G episodes of the current text policy
(``TextSession.roots``), reward = solved (0/1), group advantage (``grpo.group_advantages``).
Every turn of every episode is one training sequence - the whole prompt the policy saw,
then the response it generated (cut past ``</action>``, as stored) - with the loss mask on
the response tokens and its episode's advantage (verl-agent trains the turns of a
multi-turn episode this way). The rows hold what follows the instruction prefix every
prompt shares (``prefix``); its keys and values are computed once per forward and
broadcast (``masked_logprobs(prefix=...)``), so a row runs only its own ~150 tokens, not
the ~310 of the whole prompt. Old and reference log-probs are recomputed by forwards with
logits only at the response tokens (``masked_logprobs``); each update step is
``grpo.grpo_objective`` (token-level clipped ratio + k3 KL to the frozen reference, mean
over response tokens) on a minibatch of ``minibatch_sequences`` rows. The number of
sequences is padded to a multiple of ``minibatch_sequences`` (padding rows have an empty
mask; fewer than one minibatch of them): the log-prob chunks and the update steps have one
shape per bucketed length, whatever the number of turns.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leafe_jax.baselines.grpo import GRPOConfig, group_advantages, grpo_objective
from leafe_jax.data.loader import round_up
from leafe_jax.interfaces.text.episode import masked_logprobs, masked_logprobs_jit
from leafe_jax.train.loop import LoopConfig, train_loop


def turn_sequences(agent, episodes, adv, minibatch_sequences: int = 4) -> dict:
    """``tokens`` int32 [N, L], ``loss_mask`` bool [N, L] (response tokens), ``adv`` [N],
    ``episode`` [N] (-1: padding) - one row per turn of every episode, after the shared
    ``prefix`` int32 [P] (the format's instruction prefix). N is the number of
    turns rounded up to a multiple of ``minibatch_sequences``; the real rows are dealt
    round-robin over the minibatches of ``minibatch_sequences`` rows, so no minibatch is all
    padding (an empty minibatch would still move Adam's moments)."""
    ep = jax.tree.map(np.asarray, episodes)
    pre = agent.fmt.prefix_ids
    rows, masks, owner = [], [], []
    for r in range(len(ep.num_steps)):
        for t in range(int(ep.start[r]), int(ep.num_steps[r])):
            prompt = ep.prompt[r, t, : ep.prompt_len[r, t]].tolist()
            resp = ep.response[r, t, : ep.response_len[r, t]].tolist()
            rows.append(prompt + resp)
            masks.append(len(prompt))
            owner.append(r)
    k = minibatch_sequences
    n = max(k, round_up(len(rows), k))
    mb = n // k
    L = round_up(max(len(x) for x in rows), 64)
    tokens = np.zeros((n, L), np.int32)
    mask = np.zeros((n, L), bool)
    episode = np.full(n, -1, np.int64)
    for i, (x, p) in enumerate(zip(rows, masks)):
        at = (i % mb) * k + i // mb
        tokens[at, : len(x)] = x
        mask[at, p: len(x)] = True
        episode[at] = owner[i]
    a = np.where(episode >= 0, np.asarray(adv, np.float32)[np.maximum(episode, 0)], 0.0)
    return {"tokens": tokens, "loss_mask": mask, "adv": a.astype(np.float32), "episode": episode,
            "prefix": np.asarray(pre, np.int32)}


@functools.partial(nnx.jit, static_argnames=("eps", "eps_high", "beta", "targets"),
                   donate_argnames=("model", "optimizer"))
def _update_step(model, optimizer, batch, prefix, *, eps: float, eps_high: float, beta: float,
                 targets: int):
    """One optimiser step of ``grpo.grpo_objective`` on one minibatch (log-probs at the
    response tokens only)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(p):
        m = nnx.merge(graphdef, p, rest)
        logp, valid, ent = masked_logprobs(m, batch["tokens"], batch["loss_mask"], targets,
                                           prefix=prefix)
        loss, aux = grpo_objective(logp, batch["old_logp"], batch["ref_logp"], batch["adv"], valid,
                                   eps=eps, eps_high=eps_high, beta=beta)
        v = valid.astype(jnp.float32)
        aux["entropy"] = (ent * v).sum() / jnp.maximum(v.sum(), 1.0)
        return loss, aux

    (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(nnx.state(model, nnx.Param))
    optimizer.update(model, g)
    gn = jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(g)))
    return {"loss": loss, "grad_norm": gn, **aux}


def _logprobs(model, tokens, mask, targets: int, chunk: int, prefix) -> np.ndarray:
    prefix = jnp.asarray(prefix)
    return np.concatenate([np.asarray(masked_logprobs_jit(model, jnp.asarray(tokens[i: i + chunk]),
                                                          jnp.asarray(mask[i: i + chunk]), 1.0, targets,
                                                          prefix))
                           for i in range(0, len(tokens), chunk)])


def targets_for(mask) -> int:
    """K: the most response tokens of a row, rounded up (few compiled shapes)."""
    return round_up(max(1, int(np.asarray(mask)[:, 1:].sum(1).max())), 8)


def rollout_batch(agent, policy, ref_model, levels, step: int, key, cfg: GRPOConfig, *,
                  minibatch_sequences: int = 4):
    """One on-policy batch of turn sequences (module docstring) and its stats."""
    if cfg.shaped:
        raise ValueError("the text GRPO uses the 0/1 outcome reward only (baselines.grpo.shaped = 0)")
    n = int(np.shape(levels.player)[0]) if hasattr(levels, "player") else len(levels)
    B, G = cfg.tasks_per_step, cfg.group_size
    task = np.repeat((np.arange(B) + step * B) % n, G)
    session = agent.session(policy, levels, max_depth=0, temperature=cfg.temperature)
    out = session.roots(task, jax.random.split(jax.random.fold_in(key, step), B * G))
    ep = out.episodes
    reward = ep.solved.astype(np.float32)
    adv = np.asarray(group_advantages(reward.reshape(B, G), cfg.adv_eps)).reshape(-1)
    batch = turn_sequences(agent, ep, adv, minibatch_sequences)
    K = targets_for(batch["loss_mask"])
    args = (batch["tokens"], batch["loss_mask"], K, minibatch_sequences, batch["prefix"])
    batch["old_logp"] = _logprobs(policy.model, *args)
    batch["ref_logp"] = _logprobs(ref_model, *args)
    del batch["episode"]
    stats = {"reward": float(reward.mean()), "success": float(ep.solved.mean()),
             "env_steps": int(out.env_steps.sum()), "tokens_sampled": int(out.tokens.sum()),
             "invalid_rate": float((~getattr(ep, "valid", getattr(ep, "stepped", None)) & ep.active).sum()
                                   / max(1, ep.active.sum()))}
    return batch, stats


def update(model, optimizer, batch: dict, cfg: GRPOConfig, eps_high: float,
           minibatch_sequences: int) -> dict:
    """``epochs`` passes of one optimiser step per minibatch of ``minibatch_sequences`` rows
    (one compiled step, whatever the batch's length); metrics are means over the steps."""
    k = minibatch_sequences
    K = batch["old_logp"].shape[1]
    prefix = jnp.asarray(batch["prefix"])
    rows = {key: v for key, v in batch.items() if key != "prefix"}
    total, n = None, 0
    for _ in range(cfg.epochs):
        for i in range(0, len(batch["tokens"]), k):
            b = {key: jnp.asarray(v[i: i + k]) for key, v in rows.items()}
            m = _update_step(model, optimizer, b, prefix, eps=cfg.eps, eps_high=eps_high,
                             beta=cfg.beta, targets=K)
            total = m if total is None else jax.tree.map(jnp.add, total, m)
            n += 1
    return {key: float(v) / n for key, v in total.items()}


def train_text_grpo(agent, policy, ref_model, levels, cfg: GRPOConfig, optimizer, steps: int,
                    workdir, *, key, progress: bool = True, meta: dict | None = None,
                    minibatch_sequences: int = 4, ckpt_every: int = 10, mesh=None) -> dict:
    """GRPO on ``levels`` for ``steps`` rollout batches in the shared loop (resume,
    checkpoints, metrics, NaN stop, SIGTERM); ``ref_model`` stays frozen."""
    eps_high = cfg.eps if cfg.eps_high is None else cfg.eps_high

    def batches(step):
        b, st = rollout_batch(agent, policy, ref_model, levels, step, key, cfg,
                              minibatch_sequences=minibatch_sequences)
        return b | {"_stats": st}

    def step_fn(model, optimizer, batch, accum=1):
        st = batch.pop("_stats")
        m = update(model, optimizer, batch, cfg, eps_high, minibatch_sequences)
        policy._prefix = None                 # the weights changed: recompute the prefix cache
        return {**m, **st, "accuracy": st["success"]}

    return train_loop(policy.model, optimizer, batches,
                      LoopConfig(num_steps=steps, log_every=1, ckpt_every=ckpt_every, progress=progress),
                      workdir, meta=meta, step_fn=step_fn, place=False, mesh=mesh)

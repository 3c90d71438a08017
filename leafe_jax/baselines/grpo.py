"""GRPO-RLVR for multi-turn agents, on the shared train loop.

Each training step: G rollouts per task from the on-device agent loop (the current policy),
verifiable reward (solved = 1, else 0; optionally + ``shaped`` x the env's reward),
group advantage (r - mean_g) / (std_g + eps), then ``epochs`` x ``minibatches`` updates of
the clipped token-level objective with a k3 KL to the frozen reference policy, loss on
action tokens only:

    ratio = exp(logp - logp_old)
    L = mean over action tokens of  -min(ratio A, clip(ratio, 1 - eps, 1 + eps_high) A)
                                    + beta (exp(ref - logp) - (ref - logp) - 1)

Defaults as tunix's GRPO: beta 0.04, eps 0.2 (``eps_high`` = eps unless set).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leafe_jax.configs import config, field
from leafe_jax.interfaces.symbolic.rollout import rollout
from leafe_jax.train.loop import LoopConfig, train_loop
from leafe_jax.train.optim import OptimConfig


@config
class GRPOConfig:
    tasks_per_step: int = field(16, lo=1, doc="tasks per rollout batch")
    group_size: int = field(8, lo=2, doc="G rollouts per task (advantages are relative to the group)")
    beta: float = field(0.04, lo=0, doc="KL coefficient")
    eps: float = field(0.2, lo=0, lo_open=True, doc="clip range (low)")
    eps_high: float | None = field(None, lo=0, lo_open=True, doc="clip range (high; None = eps)")
    epochs: int = field(1, lo=1, doc="passes over each rollout batch")
    minibatches: int = field(2, lo=1, doc="optimiser steps per pass")
    shaped: float = field(0.0, lo=0, doc="weight of the env's shaped return added to the 0/1 reward")
    temperature: float = field(1.0, lo=0, lo_open=True)
    adv_eps: float = field(1e-6, lo=0, lo_open=True)
    steps: int = field(20, lo=1, doc="rollout batches (when the budget is not matched)")
    learning_rate: float = field(1e-4, lo=0, lo_open=True)

    def __post_init__(self):
        if (self.tasks_per_step * self.group_size) % self.minibatches:
            raise ValueError("tasks_per_step x group_size must split into minibatches")


def group_advantages(rewards_BxG, eps: float = 1e-6):
    """(r - group mean) / (group std + eps); a group whose rewards are all equal gets 0."""
    r = jnp.asarray(rewards_BxG, jnp.float32)
    mu = r.mean(-1, keepdims=True)
    sd = r.std(-1, keepdims=True)
    return (r - mu) / (sd + eps)


def kl_k3(logp, ref_logp):
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(d) - d - 1, d = ref - logp (>= 0)."""
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def grpo_objective(logp_BxL, old_BxL, ref_BxL, adv_B, mask_BxL, *, eps: float, eps_high: float,
                   beta: float):
    """Token-level clipped objective + beta k3 KL; mean over masked (action) tokens."""
    m = mask_BxL.astype(jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)
    ratio = jnp.exp(logp_BxL - old_BxL)
    a = adv_B[:, None]
    pg = -jnp.minimum(ratio * a, jnp.clip(ratio, 1.0 - eps, 1.0 + eps_high) * a)
    kl = kl_k3(logp_BxL, ref_BxL)
    loss = ((pg + beta * kl) * m).sum() / n
    clipped = ((ratio < 1.0 - eps) | (ratio > 1.0 + eps_high)).astype(jnp.float32)
    return loss, {"pg_loss": (pg * m).sum() / n, "kl": (kl * m).sum() / n,
                  "clip_frac": (clipped * m).sum() / n}


def token_logprobs(model, tokens_BxS):
    """``logp[b, t]`` of token t+1 given tokens <= t (aligned to the *target* position t+1,
    i.e. output [B, S] with column 0 = 0), and the entropy of each position's distribution."""
    logits, _ = model(tokens_BxS[:, :-1])
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    tgt = jnp.take_along_axis(lp, tokens_BxS[:, 1:, None], -1)[..., 0]
    ent = -(jnp.exp(lp) * lp).sum(-1)
    pad = jnp.zeros((tokens_BxS.shape[0], 1), jnp.float32)
    return jnp.concatenate([pad, tgt], 1), jnp.concatenate([pad, ent], 1)


@nnx.jit
def policy_logprobs(model, tokens):
    return token_logprobs(model, tokens)[0]


@nnx.jit(static_argnames=("eps", "eps_high", "beta", "epochs", "minibatches"),
         donate_argnames=("model", "optimizer"))
def grpo_update(model, optimizer, batch, *, eps: float, eps_high: float, beta: float, epochs: int,
                minibatches: int):
    """``epochs`` x ``minibatches`` optimiser steps on one rollout batch; metrics are means
    over those steps (the first sees ratio 1, later ones the policy's drift)."""
    B = batch["tokens"].shape[0]
    mb = B // minibatches
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(p, b):
        m = nnx.merge(graphdef, p, rest)
        logp, ent = token_logprobs(m, b["tokens"])
        loss, aux = grpo_objective(logp, b["old_logp"], b["ref_logp"], b["adv"], b["loss_mask"],
                                   eps=eps, eps_high=eps_high, beta=beta)
        mask = b["loss_mask"].astype(jnp.float32)
        aux["entropy"] = (ent * mask).sum() / jnp.maximum(mask.sum(), 1.0)
        return loss, aux

    total = None
    for _ in range(epochs):
        for i in range(minibatches):
            b = jax.tree.map(lambda x: x[i * mb:(i + 1) * mb], batch)
            params = nnx.state(model, nnx.Param)
            (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, b)
            optimizer.update(model, g)
            gn = jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(g)))
            m = {"loss": loss, "grad_norm": gn, **aux}
            total = m if total is None else jax.tree.map(jnp.add, total, m)
    return jax.tree.map(lambda x: x / (epochs * minibatches), total)


def rollout_batch(model, ref, env, params, levels, step: int, key, cfg: GRPOConfig):
    """One on-policy batch: ``tasks_per_step`` tasks (cycling through ``levels``) x G rollouts,
    with rewards, group advantages, old and reference log-probs, and action-token masks."""
    n = int(np.shape(levels.player)[0])
    B, G = cfg.tasks_per_step, cfg.group_size
    task = (np.arange(B) + step * B) % n
    idx = np.repeat(task, G)
    lv = jax.tree.map(lambda x: jnp.asarray(x)[idx], levels)
    _, states = jax.vmap(env.reset_to_level, in_axes=(0, None))(lv, params)
    keys = jax.random.split(jax.random.fold_in(key, step), B * G)
    T = int(params.max_steps_in_episode)
    traj = rollout(model, env, params, states, keys, num_steps=T, temperature=cfg.temperature)
    reward = traj.solved.astype(jnp.float32) + cfg.shaped * traj.rewards.sum(0)
    adv = group_advantages(reward.reshape(B, G), cfg.adv_eps).reshape(-1)
    S = traj.tokens.shape[1]
    rows = jnp.arange(B * G)[:, None]
    mask = jnp.zeros((B * G, S), bool).at[rows, traj.action_pos.T].set(traj.active.T, mode="drop")
    tokens = traj.tokens
    batch = {"tokens": tokens, "loss_mask": mask, "adv": adv,
             "old_logp": jax.lax.stop_gradient(policy_logprobs(model, tokens)),
             "ref_logp": policy_logprobs(ref, tokens)}
    stats = {"reward": reward.mean(), "success": traj.solved.mean(),
             "env_steps": traj.num_steps.sum(), "tokens_sampled": traj.token_len.sum()}
    return batch, stats


def grpo_optim(cfg: GRPOConfig, rollout_batches: int) -> OptimConfig:
    """The schedule in optimiser updates (``epochs x minibatches`` per rollout batch), so the
    warm-up and the cosine decay span every update (sized in rollout batches, the decay
    ended after 1 / (epochs x minibatches) of the run and the rest ran at its floor)."""
    updates = rollout_batches * cfg.epochs * cfg.minibatches
    return OptimConfig(learning_rate=cfg.learning_rate, warmup_steps=updates // 10,
                       total_steps=updates)


def train_grpo(model, ref, env, params, levels, cfg: GRPOConfig, optimizer, steps: int, workdir,
               *, key=None, progress: bool = True, meta: dict | None = None, log_every: int = 1,
               ckpt_every: int = 10) -> dict:
    """GRPO on ``levels`` for ``steps`` rollout batches, in the shared ``train_loop`` (resume,
    checkpoints, metrics, NaN stop, SIGTERM); ``ref`` stays frozen."""
    key = jax.random.key(0) if key is None else key
    eps_high = cfg.eps if cfg.eps_high is None else cfg.eps_high
    spent = {"env_steps": 0}

    def batches(step):
        b, st = rollout_batch(model, ref, env, params, levels, step, key, cfg)
        b["_stats"] = st
        return b

    def step_fn(model, optimizer, batch, accum=1):
        st = batch.pop("_stats")
        m = grpo_update(model, optimizer, batch, eps=cfg.eps, eps_high=eps_high, beta=cfg.beta,
                        epochs=cfg.epochs, minibatches=cfg.minibatches)
        spent["env_steps"] += int(st["env_steps"])
        return {**m, **st, "accuracy": st["success"]}

    final = train_loop(model, optimizer, batches, LoopConfig(num_steps=steps, log_every=log_every,
                                                             ckpt_every=ckpt_every, progress=progress),
                       workdir, meta=meta, step_fn=step_fn, place=False)
    return final | {"env_steps_this_run": spent["env_steps"]}


"""One function per pipeline stage. Each reads its inputs from disk, writes its outputs into
its own directory and returns nothing of substance: ``run.run_pipeline`` wraps every call
in the done / log / time / mark bookkeeping (``stages.Stages.run``), so a killed run resumes
at the stage it was in. The Stage-1, dataset and evaluation runners take any agent interface
(``interfaces.protocol``); the training runners the symbolic policy.
"""

from __future__ import annotations

import json
import os
import warnings

import jax
import numpy as np

from leafe_jax.baselines.converge import train_until_converged
from leafe_jax.baselines.early_experience import world_model_examples
from leafe_jax.baselines.grpo import grpo_optim, train_grpo
from leafe_jax.data.loader import round_up
from leafe_jax.data.store import write_sft
from leafe_jax.interfaces.symbolic.pretrain import pretrain_base_policy
from leafe_jax.leafe.diagnostics import (branch_starts, compliance, first_success_cost, interrupted,
                                         root_length)
from leafe_jax.leafe.distill import stage2_examples
from leafe_jax.policy.config import dtype_pair
from leafe_jax.leafe.explore import explore
from leafe_jax.leafe.render import example_tasks, render_tree
from leafe_jax.leafe.tree import load_tree, save_tree, solved_within, tree_stats
from leafe_jax.pipeline.config import VARIANTS, PipelineConfig
from leafe_jax.pipeline.stages import read_json, write_json
from leafe_jax.train.checkpoint import load_policy
from leafe_jax.train.optim import create_optimizer
from leafe_jax.train.sft import SFTConfig, data_max_len, finetune

# Key offsets per stage: each stage's randomness is its own stream of the experiment seed.
STAGE1_KEY, GRPO_KEY, VAL_KEY, TEXT_KEY = 1000, 3000, 5000, 7000


def base(preset, model_cfg, cfg: PipelineConfig, out: str, progress: bool) -> None:
    pretrain_base_policy(preset, model_cfg, cfg.base, out, seed=cfg.experiment.seed, progress=progress)


def stage1(interface, policy, tasks, cfg: PipelineConfig, strategy: str, out: str,
           progress: bool) -> None:
    """A Stage-1 tree (``tree.npz``), its stats and a few rendered trees."""
    extra = {}
    tree = explore(interface, policy, tasks, jax.random.key(cfg.experiment.seed + STAGE1_KEY),
                   cfg.stage1.explore, strategy, progress=progress, stats=extra)
    os.makedirs(out, exist_ok=True)
    save_tree(tree, os.path.join(out, "tree.npz"))
    cost = first_success_cost(tree)
    write_json(os.path.join(out, "stats.json"),
               tree_stats(tree) | {"solved_within_k": solved_within(tree).mean(0).tolist(),
                                   "task_env_steps": cost["env_steps"].tolist(),
                                   "task_tokens": cost["tokens"].tolist(),
                                   "task_solved": cost["solved"].tolist(),
                                   "compliance": compliance(interface, policy, tree,
                                                            cfg.stage1.explore.temperature),
                                   "branch_starts": branch_starts(interface, tree),
                                   "interrupted": interrupted(interface, tree)} | extra)
    with open(os.path.join(out, "trees.txt"), "w") as fh:
        for b in example_tasks(tree):
            fh.write(render_tree(interface, tree, b) + "\n\n")


def dataset(interface, tree_dir: str, variant: str, cfg: PipelineConfig, out: str) -> None:
    """A Stage-2 dataset (TFDS ``sft_examples``) and its ``stats.json``."""
    spec = VARIANTS[variant]
    tree = load_tree(os.path.join(tree_dir, "tree.npz"), interface.episode_like(), as_jax=False)
    records, stats = stage2_examples(interface, tree, cfg.stage2.distill, rehearsal=spec.rehearsal,
                                     e2p=spec.e2p)
    if stats["successful_branches"] == 0 and spec.e2p:
        warnings.warn("Stage 1 produced no successful rollback branch: there is nothing to distil "
                      "(e2p is empty); LEAFE reduces to rehearsal here. Raise the budget K, the "
                      "depth D or the number of training levels.")
    os.makedirs(out, exist_ok=True)
    stats["examples"] = 0 if records is None else len(records)
    if records is not None:
        write_sft(records, out, overwrite=True)
        stats["max_len"] = int(max(len(t) for t in records.tokens))
        if hasattr(interface, "sft_examples"):     # (chat data: text SFT sizes its logits by it)
            stats["max_targets"] = int(max(int(m.sum()) for m in records.loss_mask))
    write_json(os.path.join(out, "stats.json"), stats)


def sft(base_dir: str, data_dir: str, cfg: PipelineConfig, out: str, progress: bool,
        from_tree: bool = True) -> None:
    """A Stage-2 variant (or the BC control): the base policy fine-tuned on one dataset, with
    the per-dataset loss for the tree datasets unless ``stage2.distill.loss`` is pooled."""
    model, meta = load_policy(base_dir)
    finetune(model, data_dir, cfg.stage2.sft, out, seed=cfg.experiment.seed, progress=progress,
             source_coefs=cfg.stage2.distill.source_coefs() if from_tree else None,
             meta={"model": meta["model"], "preset": meta.get("preset"), "base": base_dir,
                   "data": data_dir})


def budget(interface, rollback_dir: str | None) -> dict:
    """Env steps (and policy tokens) LEAFE's Stage 1 spent; the baselines get the same.
    Also the base policy's mean episode length (its roots), to size GRPO's batches."""
    if rollback_dir is None:
        return {"env_steps": 0, "tokens": 0, "root_len": 1.0}
    st = read_json(os.path.join(rollback_dir, "stats.json"))
    tree = load_tree(os.path.join(rollback_dir, "tree.npz"), interface.episode_like(), as_jax=False)
    return {"env_steps": int(st["env_steps"]), "tokens": int(st["tokens"]),
            "root_len": root_length(interface, tree)}


def grpo(base_dir, train, env, params, cfg: PipelineConfig, out, target: dict, progress) -> None:
    g = cfg.baselines.grpo
    per_batch = g.tasks_per_step * g.group_size * target["root_len"]
    steps = max(1, round(target["env_steps"] / per_batch)) if cfg.baselines.match_budget else g.steps
    model, meta = load_policy(base_dir)
    ref, _ = load_policy(base_dir)
    opt = create_optimizer(model, grpo_optim(g, steps))
    final = train_grpo(model, ref, env, params, train.level, g, opt, steps, out,
                       key=jax.random.key(cfg.experiment.seed + GRPO_KEY), progress=progress,
                       meta={"model": meta["model"], "preset": meta.get("preset"), "base": base_dir},
                       ckpt_every=max(1, steps // 2))
    write_json(os.path.join(out, "budget.json"), {
        "env_steps": _metric_sum(out, "env_steps"), "tokens": _metric_sum(out, "tokens_sampled"),
        "rollout_batches": steps, "optimizer_steps": steps * g.epochs * g.minibatches,
        "target_env_steps": target["env_steps"], "final": final})


def grpo_converged(base_dir, train, agent, cfg: PipelineConfig, out, target: dict, val_levels,
                   progress) -> None:
    """GRPO until Pass@1 on the validation pool stops improving (``baselines.converge``),
    at most ``cap`` x LEAFE's Stage-1 env steps; the schedule spans that cap. The evaluated
    policy is the best validated one (``best/``); the curve is ``curve.json``."""
    g, c = cfg.baselines.grpo, cfg.baselines.converge
    env, params = agent.env, agent.params
    per_batch = g.tasks_per_step * g.group_size * target["root_len"]
    cap = max(c.eval_every, int(c.cap * target["env_steps"] / per_batch))
    model, meta = load_policy(base_dir)
    ref, _ = load_policy(base_dir)
    opt = create_optimizer(model, grpo_optim(g, cap))
    key = jax.random.key(cfg.experiment.seed + GRPO_KEY)
    vkey = jax.random.key(cfg.experiment.seed + VAL_KEY)
    train_dir = os.path.join(out, "train")
    policy_meta = {"model": meta["model"], "preset": meta.get("preset"), "base": base_dir}

    def train_to(step):
        train_grpo(model, ref, env, params, train.level, g, opt, step, train_dir, key=key,
                   progress=progress, meta=policy_meta, ckpt_every=c.eval_every)
        return _metric_sum(train_dir, "env_steps")

    def validate(m):
        return float(agent.success(m, val_levels, c.val_samples, vkey, progress=False).mean())

    summary = train_until_converged(model, train_to, validate, c, cap, out, meta=policy_meta,
                                    log=lambda s: print(f"[grpo_converged] {s}", flush=True))
    b = summary["best"]
    write_json(os.path.join(out, "budget.json"), {
        "env_steps": b["env_steps"], "tokens": _metric_sum(train_dir, "tokens_sampled", upto=b["rollout_batches"]),
        "rollout_batches": b["rollout_batches"],
        "optimizer_steps": b["rollout_batches"] * g.epochs * g.minibatches,
        "env_steps_trained": summary["last"]["env_steps"], "stopped": summary["stopped"],
        "cap_rollout_batches": cap, "target_env_steps": target["env_steps"],
        "policy_dir": os.path.join(out, "best")})


def _metric_sum(workdir, key, upto: int | None = None):
    """Sum of a per-step metric over the JSONL log (last record per step wins)."""
    by_step = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        for line in fh:
            r = json.loads(line)
            if key in r and (upto is None or r["step"] <= upto):
                by_step[r["step"]] = r[key]
    return int(sum(by_step.values()))


def early_experience(base_dir, demo, env, params, cfg: PipelineConfig, out, target: dict,
                     progress) -> None:
    """World modelling on alternative actions at demo states, then imitation; the total
    update steps equal every other fine-tuning's (``stage2.sft.steps``)."""
    ee, s = cfg.baselines.early_experience, cfg.stage2.sft
    lengths = np.asarray(demo.solution_len)
    if cfg.baselines.match_budget:      # demo levels whose states x alternatives match the budget
        need = np.cumsum(lengths * ee.alternatives)
        m = int(min(len(lengths), np.searchsorted(need, target["env_steps"]) + 1))
    else:
        m = min(len(lengths), ee.demo_levels)
    sub = jax.tree.map(lambda x: x[:m], demo)
    rec, env_steps = world_model_examples(env, params, sub.level, np.asarray(sub.solution),
                                          lengths[:m], num_alternatives=ee.alternatives,
                                          rng=np.random.default_rng(cfg.experiment.seed))
    data_dir = os.path.join(out, "data")
    write_sft(rec, data_dir, overwrite=True)
    if ee.wm_epochs > 0:        # passes over what was collected, then the usual imitation
        wm_steps = max(1, int(np.ceil(ee.wm_epochs * len(rec) / s.batch_size)))
        im_steps = s.steps
    else:                       # the old split of the others' total
        wm_steps = int(round(ee.wm_fraction * s.steps))
        im_steps = s.steps - wm_steps
    model, meta = load_policy(base_dir)
    demo_dir = os.path.join(base_dir, "data")
    phases = [("wm", data_dir, wm_steps, round_up(max(len(t) for t in rec.tokens))),
              ("imitation", demo_dir, im_steps, data_max_len(demo_dir))]
    for name, d, steps, max_len in phases:
        if steps >= 1:
            finetune(model, d, SFTConfig(steps=steps, batch_size=s.batch_size,
                                         learning_rate=ee.learning_rate, accum=s.accum),
                     os.path.join(out, name), seed=cfg.experiment.seed, max_len=max_len,
                     progress=progress, meta={"model": meta["model"], "preset": meta.get("preset")})
    # the evaluated policy is the last phase's checkpoint
    final_dir = os.path.join(out, "imitation" if im_steps >= 1 else "wm")
    write_json(os.path.join(out, "budget.json"), {
        "env_steps": env_steps, "tokens": 0, "demo_levels": m, "examples": len(rec),
        "wm_steps": wm_steps, "imitation_steps": im_steps,
        "wm_examples_seen": min(len(rec), wm_steps * s.batch_size),
        "target_env_steps": target["env_steps"], "policy_dir": final_dir})


def text_mesh(tx):
    """The mesh of the text stages (``text.mesh``); ``None`` for one device."""
    if tuple(tx.mesh) == (1, 1, 1):
        return None
    from leafe_jax.sharding import make_mesh
    return make_mesh(tuple(tx.mesh))


def text_base(agent, tx, demo_levels, seed: int, out: str, progress: bool) -> None:
    """The text base policy: the pretrained model, BC-warmed on the demo pool unless
    ``text.base.demo_levels`` is 0 (then ``base/`` only names the model)."""
    from leafe_jax.interfaces.text.pretrain import load_text_policy, warm_up
    os.makedirs(out, exist_ok=True)
    if tx.base.demo_levels == 0:
        write_json(os.path.join(out, "model.json"), {"model": tx.model, "warm_up": False})
        return
    mesh = text_mesh(tx)
    policy = load_text_policy(tx.model, mesh=mesh, dtype=tx.dtype)
    warm_up(agent, policy, demo_levels, tx.base, out, seed=seed, key=jax.random.key(seed + TEXT_KEY),
            progress=progress, mesh=mesh)


def text_policy(stage_dir: str, tx, dtype: str | None = None):
    """The text policy a stage left (``checkpoints/`` + ``tokenizer/``), or the pretrained
    ``text.model`` where the stage trained nothing (a zero-shot base); on ``text.mesh``, in
    ``dtype`` (default ``text.dtype``)."""
    from leafe_jax.interfaces.text.pretrain import load_text_policy
    d = policy_dir(stage_dir)
    return load_text_policy(d if os.path.isdir(os.path.join(d, "checkpoints")) else tx.model,
                            mesh=text_mesh(tx), dtype=dtype or tx.dtype)


def text_sft(base_dir: str, data_dir: str, cfg: PipelineConfig, out: str,
             progress: bool, from_tree: bool = True) -> None:
    """A Stage-2 variant of the text policy: the base fine-tuned on chat examples (loss on the
    response tokens), saved with its tokenizer."""
    from leafe_jax.interfaces.text.pretrain import save_tokenizer
    policy = text_policy(base_dir, cfg.lm)
    save_tokenizer(policy.tokenizer, out)
    finetune(policy.model, data_dir, cfg.stage2.sft, out, seed=cfg.experiment.seed, progress=progress,
             mesh=text_mesh(cfg.lm),
             max_targets=read_json(os.path.join(data_dir, "stats.json"))["max_targets"],
             source_coefs=cfg.stage2.distill.source_coefs() if from_tree else None,
             meta={"model": policy.model.cfg.to_dict(), "source": policy.name, "tokenizer": "tokenizer",
                   "agent": "text", "base": base_dir, "data": data_dir})


def text_grpo(base_dir: str, tasks, agent, cfg: PipelineConfig, out: str, target: dict,
              progress: bool, minibatch_sequences: int = 4) -> None:
    """GRPO of the text policy (``baselines.text_grpo``) at LEAFE's env-step budget (rollout
    batches sized by the base's root length, as the symbolic GRPO). A rollout batch makes
    one optimiser step per ``minibatch_sequences`` turns, so the schedule's length is an
    estimate (batches x turns per batch / minibatch); ``budget.json`` has the real count."""
    from leafe_jax.baselines.text_grpo import train_text_grpo
    from leafe_jax.interfaces.text.pretrain import save_tokenizer
    from leafe_jax.train.optim import OptimConfig
    g = cfg.baselines.grpo
    per_batch = g.tasks_per_step * g.group_size * target["root_len"]
    steps = max(1, round(target["env_steps"] / per_batch)) if cfg.baselines.match_budget else g.steps
    policy = text_policy(base_dir, cfg.lm)
    # the frozen reference: bf16-mixed computes in bfloat16, so bfloat16 weights give the same
    # log-probs at half the memory
    _, cd = dtype_pair(cfg.lm.dtype)
    ref = text_policy(base_dir, cfg.lm, dtype="bfloat16" if cd == "bfloat16" else None).model
    updates = max(1, round(steps * g.epochs * per_batch / minibatch_sequences))
    opt = create_optimizer(policy.model, OptimConfig(learning_rate=g.learning_rate,
                                                     warmup_steps=updates // 10, total_steps=updates),
                           text_mesh(cfg.lm))
    save_tokenizer(policy.tokenizer, out)
    final = train_text_grpo(agent, policy, ref, tasks, g, opt, steps, out,
                            key=jax.random.key(cfg.experiment.seed + GRPO_KEY), progress=progress,
                            meta={"model": policy.model.cfg.to_dict(), "source": policy.name,
                                  "tokenizer": "tokenizer", "agent": "text", "base": base_dir},
                            minibatch_sequences=minibatch_sequences, ckpt_every=max(1, steps // 2),
                            mesh=text_mesh(cfg.lm))
    write_json(os.path.join(out, "budget.json"), {
        "env_steps": _metric_sum(out, "env_steps"), "tokens": _metric_sum(out, "tokens_sampled"),
        "rollout_batches": steps, "optimizer_steps_planned": updates,
        "target_env_steps": target["env_steps"], "final": final})


def policy_dir(stage_dir: str) -> str:
    """Where a stage's evaluated policy is (a baseline may name another directory)."""
    bj = os.path.join(stage_dir, "budget.json")
    if os.path.exists(bj):
        return read_json(bj).get("policy_dir", stage_dir)
    return stage_dir


def evaluate(interface, policy, tasks, cfg: PipelineConfig, key, out: str, progress: bool,
             n: int | None = None) -> None:
    """``success.npy`` [levels, n] of one model on the held-out tasks (``n``: default
    ``eval.n``)."""
    os.makedirs(out, exist_ok=True)
    partial = os.path.join(out, "partial.npz")      # finished chunks: a killed eval resumes
    succ = interface.success(policy, tasks, n or cfg.eval.n, key, temperature=cfg.eval.temperature,
                             progress=progress, checkpoint=partial)
    np.save(os.path.join(out, "success.npy"), np.asarray(succ))
    if os.path.exists(partial):
        os.remove(partial)

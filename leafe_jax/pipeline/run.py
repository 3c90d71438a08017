"""``leafe pipeline``: base policy -> Stage 1 -> datasets -> Stage 2 (+ baselines) -> Pass@k
-> report, in one resumable work directory.

    workdir/
      config.json  timings.json  report.md  .lock
      base/                 BC checkpoints + data (leafe pretrain)
      stage1/<strategy>/    tree.npz, stats.json, trees.txt (examples rendered)
      data/<variant>/       TFDS sft_examples (+ stats.json)
      sft/<variant>/        Stage-2 checkpoints (leafe | rehearsal | e2p | bc control)
      baselines/<method>/   GRPO / Early Experience checkpoints + budget.json
      eval/<model>/         success.npy (levels x samples); eval/passk.json / .md / .png over all

A stage whose DONE matches its inputs is skipped (``stages``); training stages also resume
mid-way from their checkpoints.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from leafe_jax.envs.sokoban import get_preset
from leafe_jax.envs.sokoban.pools import held_out_pool, training_pools, validation_pool
from leafe_jax.eval.checkpoints import level_file
from leafe_jax.eval.sweep import eval_key, write_sweep
from leafe_jax.interfaces.symbolic.interface import SymbolicSokoban, context_size
from leafe_jax.pipeline import runners
from leafe_jax.pipeline.config import VARIANTS, PipelineConfig
from leafe_jax.pipeline.lm import lm_stages
from leafe_jax.pipeline.report import write_report
from leafe_jax.pipeline.stages import Stages, WorkdirLock, read_json, write_json
from leafe_jax.train.checkpoint import load_policy


def _log(msg):
    print(f"[leafe pipeline] {msg}", flush=True)


def check_context(cfg: PipelineConfig) -> int:
    """Context slots the deepest rollback branch needs; refused up front if the model cannot
    hold them (rather than after base training)."""
    preset, model = get_preset(cfg.experiment.preset), cfg.experiment.policy_config()
    need = context_size(preset.make_env(), cfg.stage1.explore.max_depth, preset.max_steps)
    if need > model.max_seq_len:
        raise ValueError(f"preset {preset.name!r} ({preset.max_steps} steps) with "
                         f"stage1.explore.max_depth = {cfg.stage1.explore.max_depth} needs {need} "
                         f"context tokens; model {model.name!r} holds {model.max_seq_len}: use a "
                         "longer context (experiment.max_seq_len), a smaller preset or a smaller depth")
    return need


def run_pipeline(cfg: PipelineConfig, workdir: str, *, progress: bool = True) -> dict:
    if cfg.experiment.agent == "symbolic":
        check_context(cfg)
    os.makedirs(workdir, exist_ok=True)
    with WorkdirLock(workdir):
        if cfg.experiment.agent == "host":
            from leafe_jax.pipeline.run_host import run_host
            return run_host(cfg, workdir, progress, _log)
        return (_run_text if cfg.experiment.agent == "text" else _run)(cfg, workdir, progress)


def _run(cfg: PipelineConfig, workdir: str, progress: bool) -> dict:
    st = Stages(workdir, cfg, _log)
    ex = cfg.experiment
    preset = get_preset(ex.preset)
    env = preset.make_env()
    params = env.default_params
    agent = SymbolicSokoban(env, params)
    at = lambda *p: os.path.join(workdir, *p)

    st.run("base", lambda: runners.base(preset, ex.policy_config(), cfg, at("base"), progress),
           timing="base", what="base policy: behaviour cloning")
    base_model = load_policy(at("base"))[0]
    demo, train = training_pools(preset.generator, ex.seed, demo_levels=cfg.base.demo_levels,
                                 train_levels=cfg.stage1.train_levels)

    trees = {}
    for s in cfg.stage1.strategies:
        st.run(f"stage1/{s}", lambda: runners.stage1(agent, base_model, train.level, cfg, s,
                                                     at("stage1", s), progress),
               timing=f"stage1_{s}", what=f"stage 1: {s}")
        trees[s] = at("stage1", s)

    models = {"base": at("base")}
    for v in cfg.stage2.variants:
        spec = VARIANTS[v]
        data_dir = at("data", v) if spec.from_tree else at("base", "data")
        if spec.from_tree:
            st.run(f"data/{v}", lambda: runners.dataset(agent, trees[spec.tree], v, cfg, data_dir),
                   timing=f"data_{v}", what=f"dataset: {v}")
            if read_json(os.path.join(data_dir, "stats.json"))["examples"] == 0:
                warnings.warn(f"Stage-2 variant {v!r} has no examples (no successful rollouts of "
                              "the kind it needs): skipped")
                continue
        st.run(f"sft/{v}", lambda: runners.sft(at("base"), data_dir, cfg, at("sft", v), progress,
                                                   spec.from_tree),
               timing=f"sft_{v}", what=f"stage 2: {v}")
        models[spec.model_name or v] = at("sft", v)

    target = runners.budget(agent, trees.get("rollback"))
    for m in cfg.baselines.methods:
        fn = {"grpo": lambda: runners.grpo(at("base"), train, env, params, cfg, at("baselines", m),
                                           target, progress),
              "grpo_converged": lambda: runners.grpo_converged(
                  at("base"), train, agent, cfg, at("baselines", m), target, validation_pool(
                      cfg.baselines.converge.val_levels, preset.generator, ex.seed,
                      demo_levels=cfg.base.demo_levels, train_levels=cfg.stage1.train_levels,
                      eval_levels=cfg.eval.levels).level, progress),
              "early_experience": lambda: runners.early_experience(
                  at("base"), demo, env, params, cfg, at("baselines", m), target, progress)}[m]
        st.run(f"baselines/{m}", fn, timing=m, what=f"baseline: {m} (env-step budget {target['env_steps']})")
        models[m.replace("_", "-")] = at("baselines", m)

    # Pass@k of every model on the same held-out levels with the same keys; a model added
    # later is evaluated alone
    held = None
    for name, d in models.items():
        if not st.done(f"eval/{name}"):
            if held is None:
                held = held_out_pool(cfg.eval.levels, preset.generator, ex.seed,
                                     demo_levels=cfg.base.demo_levels,
                                     train_levels=cfg.stage1.train_levels, pools=(demo, train))
            policy = load_policy(runners.policy_dir(d))[0]
            st.run(f"eval/{name}", lambda: runners.evaluate(agent, policy, held.level, cfg,
                                                             eval_key(ex.seed), at("eval", name), progress),
                   timing=f"eval_{name}", what=f"eval: {name}")
    results = {name: np.load(at("eval", name, "success.npy")) for name in models}
    write_sweep(results, at("eval"), title=f"{ex.preset}, {cfg.eval.levels} held-out levels, seed {ex.seed}")
    if cfg.eval.transfer_levels:
        _transfer(st, agent, cfg, models, preset, at, progress)
    write_json(at("config.json"), cfg.to_dict())     # the latest run's config; stages keep their own
    report = write_report(workdir, cfg, trees, st.timings)
    _log(f"report: {at('report.md')}")
    return report


def _run_text(cfg: PipelineConfig, workdir: str, progress: bool) -> dict:
    """The same stages for the text agent (``experiment.agent = "text"``): the pretrained
    model warmed up by BC in its chat format (``text.base``), Stage 1 through the text
    interface, the Stage-2 datasets as chat examples, Stage 2 by the same SFT loop, Pass@k
    of the zero-shot model, the base and every variant."""
    from leafe_jax.interfaces.text.agent import TextSokoban
    from leafe_jax.interfaces.text.pretrain import load_text_tokenizer

    st = Stages(workdir, cfg, _log)
    ex, tx = cfg.experiment, cfg.text
    preset = get_preset(ex.preset)
    env = preset.make_env()
    at = lambda *p: os.path.join(workdir, *p)
    agent = TextSokoban(env, load_text_tokenizer(tx.model), env.default_params, tx.format)
    demo, train = training_pools(preset.generator, ex.seed, demo_levels=max(1, tx.base.demo_levels),
                                 train_levels=cfg.stage1.train_levels)
    st.run("base", lambda: runners.text_base(agent, tx, demo.level, ex.seed, at("base"), progress),
           timing="base", what=f"base policy: {tx.model}, BC warm-up on {tx.base.demo_levels} levels")
    trees, models = lm_stages(st, agent, cfg, train.level, at, progress)

    held = None
    for name, d in models.items():
        stage = f"eval/{name}"
        if not st.done(stage):
            if held is None:
                held = held_out_pool(cfg.eval.levels, preset.generator, ex.seed,
                                     demo_levels=max(1, tx.base.demo_levels),
                                     train_levels=cfg.stage1.train_levels, pools=(demo, train))
            policy = runners.text_policy(d, tx)         # (zero-shot: d is text.model itself)
            st.run(stage, lambda: runners.evaluate(agent, policy, held.level, cfg, eval_key(ex.seed),
                                                   at("eval", name), progress),
                   timing=f"eval_{name}", what=f"eval: {name}")
    results = {name: np.load(at("eval", name, "success.npy")) for name in models}
    write_sweep(results, at("eval"), title=f"text {ex.preset}, {tx.model}, {cfg.eval.levels} "
                f"held-out levels, seed {ex.seed}")
    write_json(at("config.json"), cfg.to_dict())
    report = write_report(workdir, cfg, trees, st.timings)
    _log(f"report: {at('report.md')}")
    return report


def _transfer(st: Stages, agent, cfg: PipelineConfig, models: dict, preset, at, progress) -> None:
    """Every model on the transfer level file too (``eval_transfer/``), same keys."""
    levels, seed = None, cfg.experiment.seed
    for name, d in models.items():
        if st.done(f"eval_transfer/{name}"):
            continue
        if levels is None:
            levels = level_file(cfg.eval.transfer_levels, preset)
        policy = load_policy(runners.policy_dir(d))[0]
        st.run(f"eval_transfer/{name}", lambda: runners.evaluate(
            agent, policy, levels, cfg, eval_key(seed), at("eval_transfer", name), progress,
            n=cfg.eval.transfer_n or cfg.eval.n),
            timing=f"eval_transfer_{name}", what=f"transfer eval: {name}")
    results = {name: np.load(at("eval_transfer", name, "success.npy")) for name in models}
    n = len(next(iter(results.values())))
    write_sweep(results, at("eval_transfer"), title=f"{preset.name}, {n} transfer levels "
                f"({os.path.basename(cfg.eval.transfer_levels)}), seed {seed}")


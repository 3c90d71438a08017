"""The stages a language-model agent (``text`` or ``host``) runs after its base: Stage 1 per
strategy, the Stage-2 datasets and SFT variants, the baselines (GRPO on text)."""

from __future__ import annotations

import os
import warnings

from leafe_jax.pipeline import runners
from leafe_jax.pipeline.config import VARIANTS, PipelineConfig
from leafe_jax.pipeline.stages import Stages, read_json


def lm_stages(st: Stages, agent, cfg: PipelineConfig, train_tasks, at, progress: bool) -> tuple[dict, dict]:
    """``(trees, models)``: each Stage-1 strategy's directory, and every model to evaluate
    (``zero-shot`` names the pretrained model itself; the others their stage directory)."""
    lm = cfg.lm
    base_policy = runners.text_policy(at("base"), lm) if cfg.stage1.strategies else None
    trees = {}
    for s in cfg.stage1.strategies:
        st.run(f"stage1/{s}", lambda: runners.stage1(agent, base_policy, train_tasks, cfg, s,
                                                     at("stage1", s), progress),
               timing=f"stage1_{s}", what=f"stage 1: {s}")
        trees[s] = at("stage1", s)
    base_policy = None                          # every later stage loads the weights it trains

    models = ({"zero-shot": lm.model} if lm.zero_shot else {}) | {"base": at("base")}
    for v in cfg.stage2.variants:
        spec = VARIANTS[v]
        data_dir = at("data", v) if spec.from_tree else at("base", "data")
        if spec.from_tree:
            st.run(f"data/{v}", lambda: runners.dataset(agent, trees[spec.tree], v, cfg, data_dir),
                   timing=f"data_{v}", what=f"dataset: {v}")
            if read_json(os.path.join(data_dir, "stats.json"))["examples"] == 0:
                warnings.warn(f"Stage-2 variant {v!r} has no examples: skipped")
                continue
        st.run(f"sft/{v}", lambda: runners.text_sft(at("base"), data_dir, cfg, at("sft", v),
                                                    progress, spec.from_tree),
               timing=f"sft_{v}", what=f"stage 2: {v}")
        models[spec.model_name or v] = at("sft", v)

    target = runners.budget(agent, trees.get("rollback"))
    for m in cfg.baselines.methods:             # (the config allows grpo only, for now)
        st.run(f"baselines/{m}", lambda: runners.text_grpo(at("base"), train_tasks, agent, cfg,
                                                           at("baselines", m), target, progress),
               timing=m, what=f"baseline: {m} (env-step budget {target['env_steps']})")
        models[m] = at("baselines", m)
    return trees, models

"""The pipeline for a language model in a host-side environment (``experiment.agent =
"host"``, the ``[host]`` section): the same stages as the text agent's - the base (the
pretrained model, warmed up on the env's gold demonstrations), Stage 1 through the host
interface (rollback by reset + replay, charged), the Stage-2 chat datasets and SFT, GRPO,
Pass@k on the held-out split and, where ``host.transfer_env`` is set, on another env (the
paper's MBPP check: train on one code set, evaluate the transfer on the other).

Tasks: the train split's first ``base.demo_levels`` tasks are the demo pool, the next
``stage1.train_levels`` the Stage-1 (and GRPO) tasks; the eval split's first
``eval.levels`` are held out; the transfer env's test split's first ``eval.levels`` are the
transfer tasks. Worker processes hold the envs (``host.workers``); they are closed at the
end, also when a stage fails.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from leafe_jax.configs import ConfigError
from leafe_jax.envs.host.registry import env_spec
from leafe_jax.eval.sweep import eval_key, write_sweep
from leafe_jax.pipeline import runners
from leafe_jax.pipeline.config import PipelineConfig
from leafe_jax.pipeline.lm import lm_stages
from leafe_jax.pipeline.report import write_report
from leafe_jax.pipeline.stages import Stages, write_json


def _agent(hx, env: str, split: str, limit: int, tok, stack):
    from leafe_jax.interfaces.host.agent import HostTextAgent
    spec = env_spec(env, split, limit=limit, data=hx.data, task_names=hx.task_names,
                    variations=hx.variations)
    agent = HostTextAgent(spec, tok, hx.format, workers=hx.workers, step_timeout_s=hx.step_timeout_s)
    stack.callback(agent.close)
    return agent


def run_host(cfg: PipelineConfig, workdir: str, progress: bool, log) -> dict:
    from leafe_jax.interfaces.text.pretrain import load_text_tokenizer
    st = Stages(workdir, cfg, log)
    ex, hx = cfg.experiment, cfg.host
    at = lambda *p: os.path.join(workdir, *p)
    tok = load_text_tokenizer(hx.model)
    n_demo, n_train = hx.base.demo_levels, cfg.stage1.train_levels
    with contextlib.ExitStack() as stack:
        agent = _agent(hx, hx.env, hx.train_split, n_demo + n_train, tok, stack)
        if agent.num_tasks < n_demo + n_train:
            raise ConfigError("stage1.train_levels", f"{hx.env} {hx.train_split!r} has {agent.num_tasks} "
                              f"tasks; base.demo_levels + stage1.train_levels = {n_demo + n_train}")
        demo, train = np.arange(n_demo), np.arange(n_demo, n_demo + n_train)
        st.run("base", lambda: runners.text_base(agent, hx, demo, ex.seed, at("base"), progress),
               timing="base", what=f"base policy: {hx.model}, BC warm-up on {n_demo} {hx.env} tasks")
        trees, models = lm_stages(st, agent, cfg, train, at, progress)
        agent.close()

        sets = [("eval", hx.env, hx.eval_split)]
        if hx.transfer_env:
            sets.append(("eval_transfer", hx.transfer_env, "test"))
        for group, env, split in sets:
            ev = None
            for name, d in models.items():
                stage = f"{group}/{name}"
                if st.done(stage):
                    continue
                ev = ev or _agent(hx, env, split, cfg.eval.levels, tok, stack)
                held = np.arange(min(cfg.eval.levels, ev.num_tasks))
                policy = runners.text_policy(d, hx)
                st.run(stage, lambda: runners.evaluate(ev, policy, held, cfg, eval_key(ex.seed),
                                                       at(group, name), progress),
                       timing=f"{group}_{name}", what=f"{group}: {name} ({env} {split})")
            if ev is not None:
                ev.close()
            results = {name: np.load(at(group, name, "success.npy")) for name in models}
            write_sweep(results, at(group), title=f"{env} {split}, {hx.model}, "
                        f"{len(next(iter(results.values())))} tasks, seed {ex.seed}")
    write_json(at("config.json"), cfg.to_dict())
    report = write_report(workdir, cfg, trees, st.timings)
    log(f"report: {at('report.md')}")
    return report

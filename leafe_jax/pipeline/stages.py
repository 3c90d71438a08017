"""Stage bookkeeping: what each stage is made from, DONE markers, timings, the run lock.

A stage's ``DONE`` records its inputs (its own settings, its upstream stages' inputs, the
level generator's version and this layout's version): a rerun reuses a stage only when they
are equal, so adding a variant, a baseline or a strategy to a finished run computes just
what is new, and a changed setting is refused by name instead of silently mixing results.
Every bookkeeping file is written atomically (temporary file + rename); an unreadable one is
named in the error. One run at a time per work directory (an ``flock`` that dies with its
process, so a killed run leaves no stale lock).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time

from leafe_jax.configs import diff, to_dict
from leafe_jax.envs.sokoban.generator import VERSION as GENERATOR_VERSION
from leafe_jax.pipeline.config import VARIANTS, PipelineConfig

# Version of the work-directory layout; 2 = the nested configs (stage inputs name sections
# ``experiment``, ``base.sft``, ``stage1.explore``, ``stage2.distill`` / ``.sft``, ...).
LAYOUT = 2
LAYOUT_CHANGES = ("[pipeline] became [experiment]; SFT settings moved to [base.sft] and "
                  "[stage2.sft] (lr -> learning_rate); exploration settings to [stage1.explore]; "
                  "distillation settings to [stage2.distill]; GRPO / Early Experience settings "
                  "to [baselines.grpo] / [baselines.early_experience] without their prefixes")


def write_json(path: str, obj) -> None:
    """``obj`` as JSON at ``path``, atomically: readers see the old file or the new one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def read_json(path: str):
    try:
        with open(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is unreadable ({e}); it is a bookkeeping file of this work "
                         "directory: delete it (and the stage it belongs to) to recompute") from None


# Settings that change memory or capacity, never a result: left out of the stage inputs, so
# a run can resume or be extended with them changed (and run directories made before they
# existed stay reusable).
_MEMORY_ONLY = {"experiment": ("max_seq_len", "remat")}


def _result_settings(d, section: str = ""):
    """``to_dict(cfg)`` without the memory-only settings: ``_MEMORY_ONLY`` and every SFT
    section's ``accum`` (gradient accumulation: the same update)."""
    if not isinstance(d, dict):
        return d
    drop = _MEMORY_ONLY.get(section, ())
    return {k: _result_settings(v, k) for k, v in d.items()
            if k not in drop and not (k == "accum" and "learning_rate" in d)}


def inputs(cfg: PipelineConfig, stage: str) -> dict:
    """What a stage's output depends on: sub-configs of ``cfg`` and its upstream stages."""
    d = _result_settings(to_dict(cfg))
    if cfg.experiment.agent == "text":
        base = {"experiment": d["experiment"], "text": d["text"], "generator_version": GENERATOR_VERSION}
    elif cfg.experiment.agent == "host":      # (which envs are evaluated, and how many workers
        base = {"experiment": d["experiment"],   # run them, change no trained policy)
                "host": {k: v for k, v in d["host"].items()
                         if k not in ("eval_split", "transfer_env", "workers", "step_timeout_s")}}
    else:       # (the symbolic agent's stage inputs predate the agent key and the text section)
        base = {"experiment": {k: v for k, v in d["experiment"].items() if k != "agent"},
                "base": d["base"], "generator_version": GENERATOR_VERSION}
    tree = lambda strategy: {"base": base, "strategy": strategy,
                             "train_levels": cfg.stage1.train_levels, "explore": d["stage1"]["explore"]}
    kind, _, name = stage.partition("/")
    if kind == "base":
        return base
    if kind == "zero_shot":              # the text agent's pretrained model as it is
        lm = d["host" if cfg.experiment.agent == "host" else "text"]
        return {"experiment": base["experiment"], "model": lm["model"],
                "format": lm["format"], "generator_version": GENERATOR_VERSION}
    if kind == "stage1":
        return tree(name)
    if kind == "data":
        return {"tree": tree(VARIANTS[name].tree), "variant": name, "distill": d["stage2"]["distill"]}
    if kind == "sft":
        data = inputs(cfg, f"data/{name}") if VARIANTS[name].from_tree else base
        return {"data": data, "sft": d["stage2"]["sft"]}
    if kind == "baselines" and name == "grpo_converged":    # cap from LEAFE's budget; the
        return {"base": base, "budget": tree("rollback"),     # validation pool avoids held-out
                "grpo": d["baselines"]["grpo"], "converge": d["baselines"]["converge"],
                "eval_levels": cfg.eval.levels}
    if kind == "baselines":
        own = {"base": base, "budget": tree("rollback") if cfg.baselines.match_budget else None,
               name: d["baselines"][name]}
        if name == "early_experience":
            own["sft"] = d["stage2"]["sft"]
        return own
    held_out = {k: v for k, v in d["eval"].items() if k not in ("transfer_levels", "transfer_n")}
    if kind == "eval":
        out = {"model": inputs(cfg, model_stage(name)), "eval": held_out,
               "train_levels": cfg.stage1.train_levels}
        return out | ({"split": cfg.host.eval_split} if cfg.experiment.agent == "host" else {})
    if kind == "eval_transfer" and cfg.experiment.agent == "host":
        return {"model": inputs(cfg, model_stage(name)), "eval": held_out, "env": cfg.host.transfer_env}
    if kind == "eval_transfer":
        return {"model": inputs(cfg, model_stage(name)), "eval": held_out,
                "levels": file_digest(cfg.eval.transfer_levels),
                "n": cfg.eval.transfer_n or cfg.eval.n}
    raise KeyError(stage)


def file_digest(path: str) -> str:
    """sha256 of a file's bytes (a stage reading it is redone when it changes)."""
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError as e:
        raise FileNotFoundError(f"{path}: unreadable level file ({e.strerror})") from None


def model_stage(model: str) -> str:
    """The stage that trained the evaluated model ``model`` (its report name)."""
    if model == "base":
        return "base"
    if model == "zero-shot":
        return "zero_shot"
    for v, spec in VARIANTS.items():
        if model == (spec.model_name or v):
            return f"sft/{v}"
    return f"baselines/{model.replace('-', '_')}"


class Stages:
    """DONE markers, timings and the lock of one work directory."""

    def __init__(self, workdir: str, cfg: PipelineConfig, log=print):
        self.workdir, self.cfg, self.log = workdir, cfg, log
        self.timings_file = os.path.join(workdir, "timings.json")
        self.timings = read_json(self.timings_file) if os.path.exists(self.timings_file) else {}

    def done(self, stage: str) -> bool:
        f = os.path.join(self.workdir, stage, "DONE")
        if not os.path.exists(f):
            return False
        marker = read_json(f)
        if not isinstance(marker, dict) or marker.get("layout") != LAYOUT:
            raise ValueError(f"{self.workdir}: stage {stage!r} was made by an earlier layout of "
                             f"leafe_jax ({LAYOUT_CHANGES}); its results are not reused: use a "
                             "new work directory")
        have = marker["inputs"]
        changed = diff(have, json.loads(json.dumps(inputs(self.cfg, stage))))
        if changed and all(k.endswith("generator_version") for k in changed):
            raise ValueError(
                f"{self.workdir}: stage {stage!r} was made with the level generator of an earlier "
                "version (see leafe_jax/envs/sokoban/generator.py VERSION): its levels differ "
                "from today's; use a new work directory")
        if changed:
            raise ValueError(
                f"{self.workdir}: stage {stage!r} was made with other settings ({', '.join(changed)} "
                f"differ); use a new work directory, or delete {os.path.join(self.workdir, stage)} "
                "and the stages built on it")
        return True

    def mark(self, stage: str) -> None:
        path = os.path.join(self.workdir, stage)
        os.makedirs(path, exist_ok=True)
        write_json(os.path.join(path, "DONE"), {"layout": LAYOUT, "inputs": inputs(self.cfg, stage)})

    def time(self, name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
        write_json(self.timings_file, self.timings)
        return out

    def run(self, stage: str, fn, *, timing: str, what: str) -> bool:
        """Run ``fn`` unless ``stage`` is done with these inputs: log, time, mark. Returns
        whether it ran. A stage that raises (or is preempted) is not marked."""
        if self.done(stage):
            return False
        self.log(what)
        self.time(timing, fn)
        self.mark(stage)
        return True


class WorkdirBusy(OSError):
    """Another run holds the work directory's lock."""


class WorkdirLock:
    """Exclusive ``flock`` on ``workdir/.lock`` for the duration of a run."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self.fh = None

    def __enter__(self):
        self.fh = open(self.path, "a")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise WorkdirBusy(f"{os.path.dirname(self.path)} is in use by another leafe pipeline "
                               "run (it holds the lock); wait for it to finish or use another "
                               "work directory") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()

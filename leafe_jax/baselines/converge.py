"""Training until a validation metric stops improving: GRPO "to convergence", as in the paper.

``train_until_converged`` alternates ``eval_every`` rollout batches of a resumable trainer
with one validation (Pass@1 on a validation pool, disjoint from the demonstration,
training and held-out levels: the mean success of ``val_samples`` episodes per level,
fixed keys) and keeps the best policy so far. It stops when ``patience`` validations in a
row brought no new best, or when the next chunk would pass ``max_steps`` rollout batches
(the pipeline sizes that cap as a multiple of LEAFE's Stage-1 env steps). The curve
(rollout batches, env steps, Pass@1 after each chunk; the base at 0) goes to
``curve.json`` after every validation, so a killed run resumes where it stopped and the
best policy lands in ``best/checkpoints``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from leafe_jax.configs import config, field
from leafe_jax.train.checkpoint import Checkpointer


@config
class ConvergeConfig:
    val_levels: int = field(64, lo=1, doc="validation pool levels (disjoint from demo, training "
                                          "and held-out levels)")
    val_samples: int = field(8, lo=1, doc="episodes per validation level (Pass@1 = mean success)")
    eval_every: int = field(5, lo=1, doc="rollout batches between validations")
    patience: int = field(4, lo=1, doc="validations without a new best before stopping")
    cap: float = field(20.0, lo=1, doc="at most this multiple of LEAFE's Stage-1 env steps")


def _read(path) -> list:
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return json.load(fh)


def _write(path, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def stop_reason(curve: list, patience: int, eval_every: int, max_steps: int) -> str | None:
    """Why training stops after ``curve`` (None: go on). Hand-checkable: the best point's
    index, the points after it, and whether another chunk fits under the cap."""
    if not curve:
        return None
    best = max(range(len(curve)), key=lambda i: (curve[i]["val_pass1"], -i))
    if len(curve) - 1 - best >= patience:
        return f"no new best in {patience} validations"
    if curve[-1]["rollout_batches"] + eval_every > max_steps:
        return f"cap of {max_steps} rollout batches"
    return None


def train_until_converged(model, train_to: Callable[[int], int], validate: Callable[[object], float],
                          cfg: ConvergeConfig, max_steps: int, workdir: str, *, meta: dict,
                          log=print) -> dict:
    """``train_to(step)`` trains ``model`` (resuming) until ``step`` rollout batches and
    returns the env steps spent so far; ``validate(model)`` gives Pass@1 on the validation
    pool. Returns the summary written to ``converge.json``."""
    os.makedirs(workdir, exist_ok=True)
    curve_file = os.path.join(workdir, "curve.json")
    curve = _read(curve_file)
    best_dir = os.path.join(workdir, "best", "checkpoints")

    def keep_best(step):
        ck = Checkpointer(best_dir, keep=1)
        if ck.latest_step() != step:            # (a resumed run may have saved it already)
            ck.save(step, model, meta=meta, force=True)
        ck.wait()
        ck.close()

    if not curve:                               # the starting policy is the first point
        curve = [{"rollout_batches": 0, "env_steps": 0, "val_pass1": float(validate(model))}]
        keep_best(0)
        _write(curve_file, curve)
    while (reason := stop_reason(curve, cfg.patience, cfg.eval_every, max_steps)) is None:
        step = curve[-1]["rollout_batches"] + cfg.eval_every
        env_steps = int(train_to(step))
        p1 = float(validate(model))
        if p1 > max(c["val_pass1"] for c in curve):
            keep_best(step)
        curve.append({"rollout_batches": step, "env_steps": env_steps, "val_pass1": p1})
        _write(curve_file, curve)
        log(f"validation after {step} rollout batches ({env_steps} env steps): Pass@1 {p1:.3f}")
    best = max(curve, key=lambda c: c["val_pass1"])
    out = {"stopped": reason, "best": best, "last": curve[-1], "points": len(curve),
           "max_rollout_batches": max_steps}
    _write(os.path.join(workdir, "converge.json"), out)
    return out

"""The training loop every trainer shares: resume, step, log, check, checkpoint.

``batches(step) -> batch`` makes the data order a function of the step index, so a run
killed after step k and resumed sees exactly the batches an uninterrupted run would.
SIGTERM (a preemption on TPU) saves a checkpoint at the current step and stops cleanly.
A non-finite loss stops with a clear error and leaves the last good checkpoint untouched.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
from collections.abc import Callable

import jax
from tqdm.auto import tqdm

from leafe_jax.train.checkpoint import Checkpointer
from leafe_jax.train.step import eval_step, train_step


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConfig:
    num_steps: int
    accum: int = 1
    log_every: int = 10
    ckpt_every: int = 100
    keep: int = 3
    eval_every: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.num_steps < 1 or self.accum < 1 or self.log_every < 1 or self.ckpt_every < 1:
            raise ValueError(f"invalid loop config {self}")


def train_loop(model, optimizer, batches: Callable[[int], dict], cfg: LoopConfig, workdir: str, *,
               eval_batches: Callable[[], list] | None = None, meta: dict | None = None) -> dict:
    """Train to ``cfg.num_steps`` (resuming from ``workdir`` if it holds a checkpoint)."""
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=cfg.keep)
    start = 0
    if ckpt.latest_step() is not None:
        start = ckpt.restore(model, optimizer)["step"]
    stop = {"flag": False}
    old = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True)) \
        if _main_thread() else None
    last = {}
    log = open(os.path.join(workdir, "metrics.jsonl"), "a")
    try:
        bar = tqdm(range(start, cfg.num_steps), initial=start, total=cfg.num_steps,
                   disable=not cfg.progress or jax.process_index() != 0, desc="train")
        for step in bar:
            m = train_step(model, optimizer, batches(step), accum=cfg.accum)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.num_steps or stop["flag"]:
                last = {k: float(v) for k, v in jax.device_get(m).items()}
                if not all(math.isfinite(v) for v in last.values()):
                    raise FloatingPointError(
                        f"non-finite metrics at step {done}: {last}. Stopped; the last good "
                        f"checkpoint (step {ckpt.latest_step()}) in {ckpt.directory} is kept.")
                bar.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last['accuracy']:.3f}")
                if jax.process_index() == 0:
                    log.write(json.dumps({"step": done, **last}) + "\n")
                    log.flush()
            if cfg.eval_every and eval_batches and done % cfg.eval_every == 0:
                ev = [jax.device_get(eval_step(model, b)) for b in eval_batches()]
                n = sum(float(e["tokens"]) for e in ev)
                rec = {"step": done, "eval_loss": sum(float(e["loss"]) * float(e["tokens"]) for e in ev) / max(n, 1),
                       "eval_accuracy": sum(float(e["accuracy"]) * float(e["tokens"]) for e in ev) / max(n, 1)}
                if jax.process_index() == 0:
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
            if done % cfg.ckpt_every == 0 or done == cfg.num_steps or stop["flag"]:
                ckpt.save(done, model, optimizer, meta, force=True)
            if stop["flag"]:
                break
        ckpt.wait()
        return last
    finally:
        log.close()
        ckpt.close()
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()

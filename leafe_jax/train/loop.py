"""The training loop every trainer shares: resume, step, log, check, checkpoint.

``data`` is either ``batches(step) -> batch`` (the data order a function of the step index)
or a resumable iterator with ``get_state()`` / ``set_state()`` (the grain pipeline of
``leafe_jax.data.loader``), whose state is saved with every checkpoint. Either way a run
killed after step k and resumed sees exactly the batches an uninterrupted run would.

Batches are host (numpy) or device arrays holding this process's share of the global batch;
under a ``mesh`` they are assembled into global arrays sharded over the batch axes.
SIGTERM (a preemption on TPU) saves a checkpoint at the current step and raises
``Preempted`` (so no caller mistakes the run for finished); rerunning resumes.
Finiteness of loss and gradient norm is tracked on device every step; a non-finite value
stops with a clear error before the next checkpoint, so the last good one stays the latest.
Metrics go to JSON lines and TensorBoard (and W&B if asked) from a background thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp
from etils import epath
from tqdm.auto import tqdm

from leafe_jax.sharding import place_batch
from leafe_jax.train.checkpoint import Checkpointer
from leafe_jax.train.metrics import MetricsWriter
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
    tensorboard: bool = True
    wandb_project: str | None = None

    def __post_init__(self):
        if self.num_steps < 1 or self.accum < 1 or self.log_every < 1 or self.ckpt_every < 1:
            raise ValueError(f"invalid loop config {self}")


class Preempted(Exception):
    """Raised after a SIGTERM-triggered save: the run is incomplete, callers must not treat
    it as finished (the pipeline does not mark the stage done; the CLI exits with 143)."""


class StepData:
    """Adapts ``batches(step)`` to the resumable-iterator protocol (state = next step)."""

    def __init__(self, fn: Callable[[int], dict]):
        self.fn, self.step = fn, 0

    def __next__(self):
        b = self.fn(self.step)
        self.step += 1
        return b

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])


def train_loop(model, optimizer, data, cfg: LoopConfig, workdir, *, mesh=None,
               eval_batches: Callable[[], list] | None = None, meta: dict | None = None,
               step_fn=train_step, place: bool = True) -> dict:
    """Train to ``cfg.num_steps`` (resuming from ``workdir`` if it holds a checkpoint).

    ``step_fn(model, optimizer, batch, accum=...) -> metrics`` (default: the SFT step; GRPO
    passes its own) must return ``loss`` and ``grad_norm``. ``place=False`` hands batches
    to it as they come (e.g. rollout batches already on device)."""
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = data if hasattr(data, "get_state") else StepData(data)
    ckpt = Checkpointer(workdir / "checkpoints", save_every=1, keep=cfg.keep)
    start = 0
    restored = ckpt.restore_intact(model, optimizer)
    if restored is not None:
        start = restored["step"]
        if "data_state" in restored:
            data.set_state(restored["data_state"])
        elif isinstance(data, StepData):
            data.set_state({"step": start})
    stop = {"flag": False}
    old = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True)) \
        if _main_thread() else None
    first_bad = jnp.int32(-1)     # on device: first step with a non-finite loss or grad norm
    last, writer = {}, None
    mesh_ctx = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
    try:
        bar = tqdm(range(start, cfg.num_steps), initial=start, total=cfg.num_steps,
                   disable=not cfg.progress or jax.process_index() != 0, desc="train")

        def show(step, rec):
            if "loss" in rec:
                bar.set_postfix(loss=f"{rec['loss']:.4f}", acc=f"{rec.get('accuracy', 0):.3f}",
                                refresh=False)

        writer = MetricsWriter(workdir, tensorboard=cfg.tensorboard,
                               wandb_project=cfg.wandb_project, config=meta, on_record=show)
        with mesh_ctx:
            for step in bar:
                batch = next(data)
                m = step_fn(model, optimizer, place_batch(batch, mesh) if place else batch,
                            accum=cfg.accum)
                done = step + 1
                finite = jnp.isfinite(m["loss"]) & jnp.isfinite(m["grad_norm"])
                first_bad = jnp.where((first_bad < 0) & ~finite, done, first_bad)
                if done % cfg.log_every == 0 or done == cfg.num_steps or stop["flag"]:
                    writer.write(done, m)
                    last = m
                if cfg.eval_every and eval_batches and done % cfg.eval_every == 0:
                    writer.write(done, _evaluate(model, eval_batches, mesh))
                if done % cfg.ckpt_every == 0 or done == cfg.num_steps or stop["flag"]:
                    _check_finite(first_bad, ckpt)
                    ckpt.save(done, model, optimizer, meta, data_state=data.get_state(), force=True)
                if stop["flag"]:
                    break
        _check_finite(first_bad, ckpt)
        ckpt.wait()
        writer.flush()
        if stop["flag"]:
            raise Preempted(f"SIGTERM: stopped after step {done} with a checkpoint in "
                            f"{ckpt.directory}; rerun the same command to resume")
        return {k: float(v) for k, v in jax.device_get(last).items()}
    finally:
        if writer is not None:
            writer.close()
        ckpt.close()
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _check_finite(first_bad, ckpt) -> None:
    bad = int(first_bad)
    if bad >= 0:
        raise FloatingPointError(
            f"non-finite loss or gradient at step {bad}. Stopped; the last good checkpoint "
            f"(step {ckpt.latest_step()}) in {ckpt.directory} is kept.")


def _evaluate(model, eval_batches, mesh) -> dict:
    ev = [jax.device_get(eval_step(model, place_batch(b, mesh))) for b in eval_batches()]
    n = sum(float(e["tokens"]) for e in ev)
    return {"eval_loss": sum(float(e["loss"]) * float(e["tokens"]) for e in ev) / max(n, 1),
            "eval_accuracy": sum(float(e["accuracy"]) * float(e["tokens"]) for e in ev) / max(n, 1)}


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()

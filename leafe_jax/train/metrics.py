"""Asynchronous metric logging: JSON lines, TensorBoard event files, W&B when asked.

``write(step, metrics)`` hands device arrays to a background thread, which waits for them
(``device_get``), and writes them, so the training loop never blocks on logging. Only
process 0 writes. ``close()`` drains the queue.
"""

from __future__ import annotations

import json
import math
import queue
import threading

import jax
from etils import epath


class MetricsWriter:
    def __init__(self, workdir, *, tensorboard: bool = True, wandb_project: str | None = None,
                 config: dict | None = None, on_record=None):
        self.active = jax.process_index() == 0
        self.on_record = on_record      # called (step, record) from the writer thread
        self.error: BaseException | None = None
        self._q: queue.Queue = queue.Queue()
        self._tb = self._wandb = self._jsonl = None
        if not self.active:
            return
        workdir = epath.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = (workdir / "metrics.jsonl").open("a")
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(workdir / "tensorboard"))
        if wandb_project:
            try:
                import wandb
            except ImportError as e:
                raise ImportError("W&B logging was asked for (wandb_project) but `wandb` is not "
                                  "installed: pip install wandb") from e
            self._wandb = wandb.init(project=wandb_project, config=config or {}, dir=str(workdir),
                                     resume="allow")
        self._thread = threading.Thread(target=self._run, daemon=True, name="metrics-writer")
        self._thread.start()

    def write(self, step: int, metrics: dict) -> None:
        if self.active:
            self._q.put((step, metrics))

    def _run(self):
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                step, m = item
                rec = {k: float(v) for k, v in jax.device_get(m).items()}
                self._jsonl.write(json.dumps({"step": step, **rec}) + "\n")
                self._jsonl.flush()
                if self._tb is not None:
                    for k, v in rec.items():
                        if math.isfinite(v):
                            self._tb.add_scalar(k, v, step)
                if self._wandb is not None:
                    self._wandb.log(rec, step=step)
                if self.on_record is not None:
                    self.on_record(step, rec)
            except BaseException as e:       # surfaced to the training loop
                self.error = e
            finally:
                self._q.task_done()

    def flush(self) -> None:
        """Wait until everything written so far is on disk; re-raise a writer error."""
        if self.active:
            self._q.join()
        if self.error is not None:
            raise RuntimeError(f"metrics writer failed: {self.error}") from self.error

    def close(self) -> None:
        if not self.active:
            return
        self._q.put(None)
        self._thread.join()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

"""Orbax checkpoints of a model + optimizer (+ JSON metadata), restorable onto any mesh.

Restore targets are the *live* model's and optimizer's arrays (shape, dtype and sharding),
so a checkpoint written on one mesh restores onto another: build the model under the new
mesh first.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from flax import nnx


class CheckpointNotFoundError(FileNotFoundError):
    pass


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


class Checkpointer:
    def __init__(self, directory: str, *, save_every: int = 1, keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, save_interval_steps=save_every, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, model, optimizer=None, meta: dict | None = None, *, force=False) -> bool:
        items = {"params": ocp.args.StandardSave(nnx.state(model, nnx.Param)),
                 "meta": ocp.args.JsonSave(meta or {})}
        if optimizer is not None:
            items["opt"] = ocp.args.StandardSave(nnx.state(optimizer, nnx.optimizer.OptState))
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def metadata(self, step: int | None = None) -> dict:
        """The JSON metadata saved with a checkpoint (no arrays are read)."""
        step = self._existing(step)
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"] or {}) | {"step": step}

    def _existing(self, step):
        step = self.latest_step() if step is None else step
        if step is None or step not in self.manager.all_steps():
            raise CheckpointNotFoundError(
                f"no checkpoint{'' if step is None else f' at step {step}'} in {self.directory} "
                f"(steps present: {list(self.manager.all_steps())})")
        return step

    def restore(self, model, optimizer=None, step: int | None = None) -> dict:
        """Load into ``model`` (and ``optimizer``) in place; returns the metadata."""
        step = self._existing(step)
        items = {"params": ocp.args.StandardRestore(_abstract(nnx.state(model, nnx.Param))),
                 "meta": ocp.args.JsonRestore()}
        if optimizer is not None:
            items["opt"] = ocp.args.StandardRestore(
                _abstract(nnx.state(optimizer, nnx.optimizer.OptState)))
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise ValueError(f"checkpoint step {step} in {self.directory} does not match this "
                             f"model or is corrupt: {type(e).__name__}: {str(e)[:300]}") from e
        nnx.update(model, out["params"])
        if optimizer is not None:
            nnx.update(optimizer, out["opt"])
        return dict(out["meta"] or {}) | {"step": step}

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()

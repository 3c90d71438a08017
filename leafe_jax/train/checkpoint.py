"""Orbax checkpoints of a model + optimizer (+ JSON metadata), restorable onto any mesh.

Restore targets are the *live* model's and optimizer's arrays (shape, dtype and sharding),
so a checkpoint written on one mesh restores onto another: build the model under the new
mesh first. A step holds ``params``, ``opt`` (optional), ``meta`` (JSON: config, preset ...)
and ``data`` (JSON: the input iterator's state, optional). Directories may be local paths or
``gs://`` URLs (orbax writes through ``etils.epath``). Orbax writes each step into a
temporary directory and renames it when complete: a killed save never corrupts the latest
good step.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx


class CheckpointNotFoundError(FileNotFoundError):
    pass


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


class Checkpointer:
    def __init__(self, directory: str, *, save_every: int = 1, keep: int = 3):
        directory = str(directory)
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, save_interval_steps=save_every, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, model, optimizer=None, meta: dict | None = None, *,
             data_state: dict | None = None, force=False) -> bool:
        items = {"params": ocp.args.StandardSave(nnx.state(model, nnx.Param)),
                 "meta": ocp.args.JsonSave(meta or {})}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(data_state)
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
        """Load into ``model`` (and ``optimizer``) in place; returns the metadata, with the
        data-iterator state under ``"data_state"`` when the step holds one."""
        step = self._existing(step)
        items = {"params": ocp.args.StandardRestore(_abstract(nnx.state(model, nnx.Param))),
                 "meta": ocp.args.JsonRestore()}
        has_data = (epath.Path(self.directory) / str(step) / "data").exists()
        if has_data:
            items["data"] = ocp.args.JsonRestore()
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
        extra = {"data_state": dict(out["data"])} if has_data else {}
        return dict(out["meta"] or {}) | {"step": step} | extra

    def export_params(self, out_dir, step: int | None = None, model=None) -> str:
        """Write the params of a step (alone: no optimiser state) to ``out_dir`` as a plain
        orbax PyTree checkpoint; ``model`` gives the restore target (shape/sharding)."""
        if model is None:
            raise ValueError("export_params needs the model to restore into")
        self.restore(model, step=step)
        path = epath.Path(out_dir)
        if path.exists():
            raise FileExistsError(f"{path} exists; refusing to overwrite an export")
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(path.absolute() if "://" not in str(path) else path, nnx.state(model, nnx.Param))
        ckptr.wait_until_finished()
        return str(path)

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()

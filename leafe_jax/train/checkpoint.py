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
import warnings

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from leafe_jax.policy.config import ModelConfig, with_dtype_policy
from leafe_jax.policy.hf import save_hf
from leafe_jax.policy.model import create_model


class CheckpointNotFoundError(FileNotFoundError):
    pass


class CheckpointCorruptError(ValueError):
    """A checkpoint step that exists but cannot be read (truncated or corrupt files)."""

    def __init__(self, directory, step, err):
        self.step = step
        super().__init__(f"checkpoint step {step} in {directory} is corrupt or does not match this "
                         f"model ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})")


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
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:          # orbax raises many kinds for unreadable JSON
            raise CheckpointCorruptError(self.directory, step, e) from None
        if not isinstance(out["meta"], (dict, type(None))):
            raise CheckpointCorruptError(self.directory, step, TypeError("metadata is not a JSON object"))
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
        except Exception as e:          # tensorstore / orbax raise many kinds for bad files
            raise CheckpointCorruptError(self.directory, step, e) from None
        nnx.update(model, out["params"])
        if optimizer is not None:
            nnx.update(optimizer, out["opt"])
        extra = {"data_state": dict(out["data"])} if has_data else {}
        return dict(out["meta"] or {}) | {"step": step} | extra

    def restore_intact(self, model, optimizer=None) -> dict | None:
        """Restore the latest step that reads back; a corrupt later step is skipped with a
        warning (and left on disk untouched). ``None`` when there is no step at all."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            try:
                return self.restore(model, optimizer, step=step)
            except CheckpointCorruptError as e:
                if i == len(steps) - 1:
                    raise
                # kept beside the good steps (orbax ignores the name), so a new save of this
                # step can be written and nothing on disk is deleted
                aside = epath.Path(self.directory) / f"{step}.corrupt"
                (epath.Path(self.directory) / str(step)).rename(aside)
                self.manager.reload()
                warnings.warn(f"{e}; moved to {aside}, resuming from step {steps[i + 1]}",
                              stacklevel=2)
        return None

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


def load_policy(workdir: str, *, mesh=None, dtype: str | None = None):
    """The policy saved in ``workdir/checkpoints`` (latest step), rebuilt from the checkpoint's
    metadata onto ``mesh`` (default: one device), in the dtype policy ``dtype`` (default: as
    saved; the arrays are cast on restore); returns ``(model, meta)``. Errors name the
    directory and the step."""
    ckdir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckdir):
        hint = ""
        if os.path.exists(os.path.join(workdir, "config.json")) and os.path.isdir(os.path.join(workdir, "base")):
            models = [os.path.join(workdir, d) for d in ("base",)] + sorted(
                os.path.join(workdir, g, m) for g in ("sft", "baselines")
                if os.path.isdir(os.path.join(workdir, g)) for m in os.listdir(os.path.join(workdir, g)))
            hint = f": it is a pipeline work directory; its policies are {', '.join(models)}"
        raise CheckpointNotFoundError(f"{workdir}: no checkpoints/ directory{hint or ' (not a trained policy)'}")
    ck = Checkpointer(ckdir)
    try:
        meta = ck.metadata()
        if "model" not in meta:
            raise ValueError(f"{ckdir}: checkpoint step {meta['step']} metadata lacks the model config")
        try:
            cfg = ModelConfig.from_dict(meta["model"])
        except (TypeError, KeyError, ValueError) as e:
            raise ValueError(f"{ckdir}: checkpoint step {meta['step']} has a malformed model config: {e}") from None
        if dtype is not None:
            cfg = with_dtype_policy(cfg, dtype)
        model = create_model(cfg, mesh=mesh)
        ck.restore(model)
    finally:
        ck.close()
    return model, meta


def export_policy(workdir: str, out: str, *, fmt: str = "params", step: int | None = None) -> int:
    """Export a saved policy: ``params`` (orbax, params only) or ``hf`` (safetensors +
    ``config.json``); refuses to overwrite ``out``. Returns the exported step."""
    if fmt not in ("params", "hf"):
        raise ValueError(f"unknown export format {fmt!r}; known: params, hf")
    if os.path.exists(out):
        raise FileExistsError(f"{out} exists; refusing to overwrite")
    model, meta = load_policy(workdir)
    ck = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        if fmt == "params":
            ck.export_params(out, step=step, model=model)
        else:
            if step is not None:
                ck.restore(model, step=step)
            save_hf(model, out, model_type="qwen2" if model.cfg.qkv_bias else "llama")
            tok = meta.get("tokenizer")         # a text policy keeps its tokenizer beside it
            if tok and os.path.isdir(os.path.join(workdir, tok)):
                from leafe_jax.policy.tokenizer import Tokenizer
                Tokenizer.from_hf(os.path.join(workdir, tok)).save(out)
    finally:
        ck.close()
    return meta["step"] if step is None else step

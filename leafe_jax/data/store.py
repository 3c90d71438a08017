"""Write and read the library's datasets through the TFDS builders (array_record).

    write_sft(records, data_dir)          -> data_dir/sft_examples/1.0.0/...
    sft_source(data_dir, split="train")   -> random-access source (grain reads it)
    write_levels(levels, data_dir, ...)   /  read_levels(data_dir, split)

A data directory holds one dataset of each kind; writing over an existing one is refused
unless ``overwrite=True`` (and then the old one is only removed once the new one is complete).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
from collections.abc import Iterable

import numpy as np
from etils import epath

SFT = "sft_examples"
LEVELS = "sokoban_levels"


class DatasetError(ValueError):
    pass


@dataclasses.dataclass
class SftRecords:
    """Column-wise SFT examples (ragged ``tokens``/``loss_mask`` as lists of arrays)."""

    tokens: list
    loss_mask: list
    weight: np.ndarray
    task_id: np.ndarray
    step: np.ndarray
    source: list

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, tokens, loss_mask, *, source, weight=1.0, task_id=-1, step=-1) -> "SftRecords":
        n = len(tokens)
        col = lambda v, dt: np.broadcast_to(np.asarray(v, dt), (n,)).copy()
        src = [source] * n if isinstance(source, str) else list(source)
        out = cls([np.asarray(t, np.int32) for t in tokens], [np.asarray(m, bool) for m in loss_mask],
                  col(weight, np.float32), col(task_id, np.int64), col(step, np.int32), src)
        out.check()
        return out

    @classmethod
    def from_tuples(cls, examples: Iterable, **kw) -> "SftRecords":
        """From ``[(tokens, loss_mask, source)]`` as the demo/tree builders return them."""
        ex = list(examples)
        return cls.build([e[0] for e in ex], [e[1] for e in ex], source=[e[2] for e in ex], **kw)

    def check(self) -> None:
        n = len(self.tokens)
        for name in ("loss_mask", "weight", "task_id", "step", "source"):
            if len(getattr(self, name)) != n:
                raise DatasetError(f"SFT records: {name} has {len(getattr(self, name))} entries, "
                                   f"tokens has {n}")
        for i, (t, m) in enumerate(zip(self.tokens, self.loss_mask)):
            if t.ndim != 1 or t.shape != m.shape:
                raise DatasetError(f"SFT example {i}: tokens {t.shape} and loss_mask {m.shape} "
                                   "must be equal 1-D shapes")

    def concat(self, other: "SftRecords") -> "SftRecords":
        return SftRecords(self.tokens + other.tokens, self.loss_mask + other.loss_mask,
                          np.concatenate([self.weight, other.weight]),
                          np.concatenate([self.task_id, other.task_id]),
                          np.concatenate([self.step, other.step]), self.source + other.source)


def _offsets(arrays) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)


def _prepare(builder_cls, data_dir, staged: dict[str, dict], overwrite: bool) -> epath.Path:
    import tensorflow_datasets as tfds

    data_dir = epath.Path(data_dir)
    target = data_dir / builder_cls.name
    if target.exists() and not overwrite:
        raise DatasetError(f"{target} already holds a dataset; pass overwrite=True to replace it")
    stage = data_dir / "_staging" / builder_cls.name
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for split, arrays in staged.items():
        np.savez(stage / f"{split}.npz", **arrays)
    tmp = data_dir / "_building"
    if tmp.exists():
        shutil.rmtree(tmp)
    builder = builder_cls(data_dir=str(tmp), file_format="array_record")
    tfds.disable_progress_bar()
    with contextlib.redirect_stdout(sys.stderr):     # TFDS chatter: keep stdout for results
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(stage)))
    # the new dataset is complete: only now replace the old one
    if target.exists():
        shutil.rmtree(target)
    (tmp / builder_cls.name).rename(target)
    shutil.rmtree(tmp)
    shutil.rmtree(data_dir / "_staging")
    return data_dir


def write_sft(records: SftRecords | dict[str, SftRecords], data_dir, *, overwrite: bool = False):
    """Write SFT records (one split ``train``, or ``{split: records}``)."""
    from leafe_jax.data.builders import SftExamples

    splits = records if isinstance(records, dict) else {"train": records}
    staged = {}
    for split, r in splits.items():
        r.check()
        if len(r) == 0:
            raise DatasetError(f"SFT split {split!r} is empty")
        staged[split] = {"tokens": np.concatenate(r.tokens), "loss_mask": np.concatenate(r.loss_mask),
                         "offsets": _offsets(r.tokens), "weight": r.weight, "task_id": r.task_id,
                         "step": r.step, "source": np.asarray(r.source, dtype=str)}
    return _prepare(SftExamples, data_dir, staged, overwrite)


def _source(name: str, data_dir, split: str):
    import tensorflow_datasets as tfds

    import leafe_jax.data.builders  # noqa: F401  (registers the builders)

    data_dir = epath.Path(data_dir)
    if not (data_dir / name).exists():
        raise DatasetError(f"no {name} dataset in {data_dir}")
    try:
        return tfds.data_source(name, data_dir=str(data_dir), split=split, try_gcs=False)
    except ValueError as e:       # unknown split
        raise DatasetError(f"{name} in {data_dir}: {e}") from e


def sft_source(data_dir, split: str = "train"):
    return _source(SFT, data_dir, split)


def sft_counts(source) -> dict[str, int]:
    """Examples per provenance (``source`` field) - reads every record once."""
    out: dict[str, int] = {}
    for i in range(len(source)):
        s = source[i]["source"]
        s = s.decode() if isinstance(s, bytes) else str(s)
        out[s] = out.get(s, 0) + 1
    return out


def write_levels(grid, player, solution, solution_len, data_dir, *, height: int, width: int,
                 split: str = "train", index=None, overwrite: bool = False):
    """Write a level set: ``grid`` uint8 [B, H*W], ``player`` [B], ``solution`` [B, S] with
    ``solution_len`` [B] (0 where unknown)."""
    from leafe_jax.data.builders import SokobanLevels

    grid, player = np.asarray(grid, np.uint8), np.asarray(player, np.int32)
    n = len(player)
    if n == 0:
        raise DatasetError("empty level set")
    if grid.shape != (n, height * width):
        raise DatasetError(f"grid {grid.shape} is not [{n}, {height}*{width}]")
    sols = [np.asarray(solution[i][: int(solution_len[i])], np.int32) for i in range(n)]
    staged = {split: {"grid": grid, "player": player, "height": np.int32(height),
                      "width": np.int32(width), "solution": np.concatenate(sols),
                      "sol_offsets": _offsets(sols),
                      "index": np.arange(n, dtype=np.int64) if index is None else np.asarray(index)}}
    return _prepare(SokobanLevels, data_dir, staged, overwrite)


def read_levels(data_dir, split: str = "train"):
    """``(Level, solutions list, (height, width))`` of a written level set."""
    from leafe_jax.envs.sokoban.level import Level

    src = _source(LEVELS, data_dir, split)
    recs = [src[i] for i in range(len(src))]
    hw = (int(recs[0]["height"]), int(recs[0]["width"]))
    level = Level(grid=np.stack([r["grid"] for r in recs]),
                  player=np.asarray([r["player"] for r in recs], np.int32))
    return level, [np.asarray(r["solution"]) for r in recs], hw

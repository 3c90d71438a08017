"""grain input pipeline for SFT: deterministic shuffle, per-process shards, length buckets,
and an iterator whose state goes into the checkpoint.

    it = sft_batches(sft_source(dir), batch_size=32, max_len=512, seed=0)
    batch = next(it)            # {"tokens" int32 [b, L], "loss_mask" bool [b, L], "weight" f32 [b]}
    state = it.get_state()      # JSON-able; it.set_state(state) resumes exactly there

Each process reads the records ``process_index::process_count`` and yields its local share
of the global batch (``batch_size // process_count`` rows); ``train_loop`` assembles the
global array. Epochs repeat forever, reshuffled with the same seed per epoch. Batches are
padded to the smallest *bucket* length that holds their longest example, so short data do
not pay for ``max_len`` and the step compiles at most ``len(buckets)`` times.
"""

from __future__ import annotations

import jax
import numpy as np

from leafe_jax.data.store import DatasetError


def round_up(n: int, multiple: int = 16) -> int:
    """``n`` rounded up to a multiple (padded lengths: fewer distinct shapes to compile)."""
    return int(-(-int(n) // multiple) * multiple)


def default_buckets(max_len: int, smallest: int = 64) -> tuple[int, ...]:
    out, b = [], smallest
    while b < max_len:
        out.append(b)
        b *= 2
    return tuple(out) + (max_len,)


class _PadTo:
    def __init__(self, max_len: int, groups: dict | None = None):
        self.max_len, self.groups = max_len, groups

    def __call__(self, ex):
        t, m = np.asarray(ex["tokens"]), np.asarray(ex["loss_mask"])
        if len(t) > self.max_len:
            raise DatasetError(f"an SFT example has {len(t)} tokens, more than max_len "
                               f"{self.max_len}")
        pad = self.max_len - len(t)
        out = {"tokens": np.pad(t, (0, pad)).astype(np.int32),
               "loss_mask": np.pad(m, (0, pad)).astype(bool),
               "weight": np.float32(ex["weight"]), "length": np.int32(len(t))}
        if self.groups is not None:
            src = ex["source"].decode() if isinstance(ex["source"], bytes) else str(ex["source"])
            if src not in self.groups:
                raise DatasetError(f"an SFT example of source {src!r} has no loss group "
                                   f"(groups: {sorted(self.groups)})")
            out["group"] = np.int32(self.groups[src])
        return out


class _Bucket:
    def __init__(self, buckets):
        self.buckets = np.asarray(sorted(buckets))

    def __call__(self, b):
        L = int(self.buckets[np.searchsorted(self.buckets, int(b["length"].max()))])
        return {"tokens": b["tokens"][:, :L], "loss_mask": b["loss_mask"][:, :L], "weight": b["weight"]} \
            | ({"group": b["group"]} if "group" in b else {})


def sft_batches(source, *, batch_size: int, max_len: int, seed: int, buckets=None,
                process_index: int | None = None, process_count: int | None = None,
                num_threads: int = 2, prefetch: int = 8, groups: dict | None = None):
    """An endless, resumable iterator of this process's share of each global batch.
    ``groups`` (source -> group index) adds each example's loss group as ``group``."""
    import grain

    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if batch_size % pc:
        raise DatasetError(f"global batch {batch_size} does not split over {pc} processes")
    if len(source) < pc:
        raise DatasetError(f"{len(source)} examples cannot be sharded over {pc} processes")
    buckets = default_buckets(max_len) if buckets is None else tuple(buckets)
    if max(buckets) != max_len:
        raise DatasetError(f"the largest bucket {max(buckets)} must equal max_len {max_len}")
    ds = (grain.MapDataset.source(source)[pi::pc]
          .shuffle(seed=seed).repeat(None)
          .map(_PadTo(max_len, groups))
          .batch(batch_size // pc, drop_remainder=True)
          .map(_Bucket(buckets)))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                     prefetch_buffer_size=prefetch)))

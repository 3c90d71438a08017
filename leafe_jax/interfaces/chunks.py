"""Pass@k evaluation in resumable chunks, shared by the agent interfaces' ``success``."""

from __future__ import annotations

import hashlib
import os

import jax
import numpy as np
from tqdm.auto import tqdm


def run_tag(tasks, n, key, temperature, batch) -> str:
    """What an evaluation's result depends on besides the policy (a resume must match it)."""
    h = hashlib.sha256()
    for x in jax.tree.leaves(tasks) + [jax.random.key_data(key)]:
        h.update(np.ascontiguousarray(np.asarray(x)).tobytes())
    return f"{h.hexdigest()[:16]}:{n}:{temperature!r}:{batch}"


def resumable(total: int, batch: int, tag: str, checkpoint: str | None, run_chunk, *,
              desc: str, progress: bool, pad: bool = False) -> np.ndarray:
    """``out[total]`` (bool) filled chunk by chunk: ``run_chunk(idx) -> bool [len(idx)]``
    for the episode indices ``idx`` of each chunk of ``batch``. ``pad``: the last chunk is
    padded to ``batch`` (indices wrap around; one compiled shape) and only its real part
    kept. ``checkpoint`` (a file) keeps the finished chunks, written after each (atomically),
    so a killed evaluation resumes where it stopped with the same result - only for the same
    ``tag``."""
    out, first = np.zeros(total, bool), 0
    if checkpoint is not None and os.path.exists(checkpoint):
        with np.load(checkpoint) as z:
            if str(z["tag"]) == tag:
                out, first = z["out"].copy(), int(z["next"])
    for start in tqdm(range(first, total, batch), desc=desc, disable=not progress, unit="chunk",
                      initial=first // batch, total=-(-total // batch)):
        real = np.arange(start, min(start + batch, total))
        idx = np.arange(start, start + batch) % total if pad else real
        out[real] = np.asarray(run_chunk(idx))[: len(real)]
        if checkpoint is not None:
            tmp = checkpoint + ".tmp.npz"
            np.savez(tmp, out=out, next=start + batch, tag=tag)
            os.replace(tmp, checkpoint)
    return out

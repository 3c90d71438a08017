"""TFDS dataset builders (array_record, no TensorFlow needed): SFT examples and level sets.

The data are produced by this library (demonstrations, Stage-1 trees, Early Experience
branches), not downloaded: ``leafe_jax.data.store`` stages them as ``.npz`` files in the
builder's *manual directory* and calls ``download_and_prepare``; the builders below turn a
staged file into records. TFDS writes into a temporary directory and renames it when
complete, so an interrupted write never leaves a half-written dataset behind.

Read back with ``tfds.data_source(name, data_dir=..., split=...)`` (random access, what
grain consumes); ``tfds.load`` / ``as_dataset`` need TensorFlow and are not used.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

_STAGED = "{split}.npz"


def _ragged(flat: np.ndarray, offsets: np.ndarray, i: int) -> np.ndarray:
    return flat[offsets[i]: offsets[i + 1]]


class _Staged(tfds.core.GeneratorBasedBuilder):
    """Splits = the ``*.npz`` files staged in the manual directory."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Written by leafe_jax.data.store, never downloaded."

    def _split_generators(self, dl_manager):
        files = sorted(dl_manager.manual_dir.glob("*.npz"))
        if not files:
            raise FileNotFoundError(f"nothing staged in {dl_manager.manual_dir}")
        return {f.name[: -len(".npz")]: self._generate_examples(f) for f in files}


class SftExamples(_Staged):
    """Supervised fine-tuning examples: a token sequence, the loss mask over it (action tokens
    only), a per-example weight and where the example came from."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "loss_mask": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
            "weight": np.float32,
            "task_id": np.int64,        # level index in its pool (-1: none)
            "step": np.int32,           # the decision the example is about (tau for e2p; -1: all)
            "source": tfds.features.Text(),   # demo | demo+exp | rehearsal | e2p | ...
        }), description=self.__doc__)

    def _generate_examples(self, path):
        with np.load(path) as z:
            d = {k: z[k] for k in z.files}
        for i in range(len(d["weight"])):
            yield i, {"tokens": _ragged(d["tokens"], d["offsets"], i),
                      "loss_mask": _ragged(d["loss_mask"], d["offsets"], i),
                      "weight": d["weight"][i], "task_id": d["task_id"][i],
                      "step": d["step"][i], "source": str(d["source"][i])}


class SokobanLevels(_Staged):
    """Sokoban level sets: bit-coded grid, player cell, and the generator's solution."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "grid": tfds.features.Tensor(shape=(None,), dtype=np.uint8),   # H*W bit codes
            "player": np.int32,
            "height": np.int32,
            "width": np.int32,
            "solution": tfds.features.Tensor(shape=(None,), dtype=np.int32),   # may be empty
            "index": np.int64,          # position in the pool it was drawn from
        }), description=self.__doc__)

    def _generate_examples(self, path):
        with np.load(path) as z:
            d = {k: z[k] for k in z.files}
        for i in range(len(d["player"])):
            yield i, {"grid": d["grid"][i], "player": d["player"][i], "height": d["height"],
                      "width": d["width"], "solution": _ragged(d["solution"], d["sol_offsets"], i),
                      "index": d["index"][i]}

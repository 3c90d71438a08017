"""TFDS (array_record) datasets and the grain pipeline: round trips, shards, resume, errors."""

import struct

import jax
import numpy as np
import pytest

from leafe_jax.data.loader import default_buckets, sft_batches
from leafe_jax.data.store import (DatasetError, SftRecords, read_levels, sft_counts, sft_source,
                                  write_levels, write_sft)


def records(n=40, seed=0, max_len=30):
    rng = np.random.default_rng(seed)
    toks = [rng.integers(3, 60, rng.integers(4, max_len + 1)) for _ in range(n)]
    masks = [t % 3 == 0 for t in toks]
    return SftRecords.build(toks, masks, source=["demo", "e2p", "rehearsal", "demo"] * (n // 4),
                            weight=np.linspace(0.5, 1.0, n), task_id=np.arange(n), step=np.arange(n) % 5)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sft")
    write_sft(records(), d)
    return d


def test_sft_round_trip(sft_dir):
    r = records()
    src = sft_source(sft_dir)
    assert len(src) == 40
    got = {int(src[i]["task_id"]): src[i] for i in range(len(src))}   # TFDS reorders records
    for i in range(40):
        np.testing.assert_array_equal(got[i]["tokens"], r.tokens[i])
        np.testing.assert_array_equal(got[i]["loss_mask"], r.loss_mask[i])
        assert got[i]["weight"] == pytest.approx(r.weight[i]) and got[i]["step"] == r.step[i]
        assert got[i]["source"].decode() == r.source[i]
    assert sft_counts(src) == {"demo": 20, "e2p": 10, "rehearsal": 10}


def test_existing_dataset_is_kept_unless_overwritten(tmp_path, monkeypatch):
    write_sft(records(8), tmp_path)
    with pytest.raises(DatasetError, match="already holds a dataset"):
        write_sft(records(12), tmp_path)
    # a failure while writing the replacement leaves the old dataset readable and complete
    from leafe_jax.data import builders

    def boom(self, path):
        raise RuntimeError("disk full")
        yield
    monkeypatch.setattr(builders.SftExamples, "_generate_examples", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_sft(records(12), tmp_path, overwrite=True)
    assert len(sft_source(tmp_path)) == 8
    monkeypatch.undo()
    write_sft(records(12), tmp_path, overwrite=True)
    assert len(sft_source(tmp_path)) == 12


def test_bad_records_and_missing_data_are_named(tmp_path):
    with pytest.raises(DatasetError, match="tokens .* and loss_mask .* must be equal"):
        SftRecords.build([np.arange(4)], [np.ones(3, bool)], source="demo")
    with pytest.raises(DatasetError, match="source has 2 entries, tokens has 1"):
        SftRecords.build([np.arange(4)], [np.ones(4, bool)], source=["a", "b"])
    with pytest.raises(DatasetError, match="'train' is empty"):
        write_sft(SftRecords.build([], [], source="demo"), tmp_path)
    with pytest.raises(DatasetError, match="no sft_examples dataset"):
        sft_source(tmp_path / "nowhere")


def test_unknown_split(sft_dir):
    with pytest.raises(DatasetError, match="sft_examples"):
        sft_source(sft_dir, split="validation")


def test_batches_bucketed_deterministic_and_resumable(sft_dir):
    assert default_buckets(300) == (64, 128, 256, 300)
    kw = dict(batch_size=4, max_len=32, seed=3, buckets=(8, 16, 32))
    a = sft_batches(sft_source(sft_dir), **kw)
    first = [next(a) for _ in range(12)]                    # more than one epoch (10 batches)
    for b in first:
        L = b["tokens"].shape[1]
        longest = int((b["tokens"] != 0).sum(1).max())     # tokens are >= 3, padding is 0
        assert L in (8, 16, 32) and longest <= L and (L == 8 or longest > L // 2)
        assert not b["loss_mask"][b["tokens"] == 0].any()
    # one epoch visits every example once
    seen = np.concatenate([b["weight"] for b in first[:10]])
    np.testing.assert_allclose(np.sort(seen), np.linspace(0.5, 1.0, 40), rtol=1e-6)
    # same seed, same order; set_state resumes exactly
    b = sft_batches(sft_source(sft_dir), **kw)
    [next(b) for _ in range(5)]
    state = b.get_state()
    c = sft_batches(sft_source(sft_dir), **kw)
    c.set_state(state)
    for want in first[5:]:
        np.testing.assert_array_equal(next(c)["tokens"], want["tokens"])
    other = next(sft_batches(sft_source(sft_dir), **(kw | {"seed": 4})))
    assert not np.array_equal(other["weight"], first[0]["weight"])


def test_process_shards_are_disjoint_and_cover(sft_dir):
    src = sft_source(sft_dir)
    got = []
    for pi in range(2):
        it = sft_batches(src, batch_size=4, max_len=32, seed=0, process_index=pi, process_count=2)
        w = np.concatenate([next(it)["weight"] for _ in range(10)])   # 2 rows x 10 = a shard
        assert len(w) == 20
        got.append(set(np.round(w, 6)))
    assert not got[0] & got[1] and len(got[0] | got[1]) == 40
    with pytest.raises(DatasetError, match="global batch 5 does not split over 2"):
        sft_batches(src, batch_size=5, max_len=32, seed=0, process_index=0, process_count=2)


def test_batches_carry_each_examples_loss_group(sft_dir):
    src = sft_source(sft_dir)
    groups = {"demo": 0, "e2p": 1, "rehearsal": 2}
    b = next(sft_batches(src, batch_size=40, max_len=32, seed=0, groups=groups))
    by_len = {(len(r), tuple(r)): s for r, s in zip(records().tokens, records().source)}
    for t, g, m in zip(b["tokens"], b["group"], b["loss_mask"]):
        L = next(L for L in range(len(t), 0, -1) if (len(t[:L]), tuple(t[:L])) in by_len)
        assert groups[by_len[(L, tuple(t[:L]))]] == g
    assert sorted(np.bincount(b["group"])) == [10, 10, 20]
    with pytest.raises(Exception, match="source 'demo' has no loss group"):
        next(sft_batches(src, batch_size=4, max_len=32, seed=0, groups={"e2p": 0, "rehearsal": 1}))


def test_too_long_example_is_named(sft_dir):
    it = sft_batches(sft_source(sft_dir), batch_size=40, max_len=16, seed=0, buckets=(16,))
    with pytest.raises(Exception, match="more than max_len 16"):
        next(it)


def test_level_set_round_trip(tmp_path):
    from leafe_jax.envs.sokoban import get_preset
    from leafe_jax.envs.sokoban.generator import generate_levels
    cfg = get_preset("verl6x6").generator
    gen = generate_levels(jax.random.key(0), 5, cfg)
    write_levels(gen.level.grid, gen.level.player, gen.solution, gen.solution_len, tmp_path,
                 height=6, width=6, split="eval")
    level, sols, hw = read_levels(tmp_path, "eval")
    assert hw == (6, 6)
    for i in range(5):                   # TFDS reorders records: match them by grid
        j = [k for k in range(5) if np.array_equal(level.grid[k], np.asarray(gen.level.grid[i]))][0]
        assert level.player[j] == int(gen.level.player[i])
        np.testing.assert_array_equal(sols[j], np.asarray(gen.solution[i][: int(gen.solution_len[i])]))
    with pytest.raises(DatasetError, match=r"grid \(5, 36\) is not \[5, 7\*7\]"):
        write_levels(gen.level.grid, gen.level.player, gen.solution, gen.solution_len,
                     tmp_path / "x", height=7, width=7)


def read_tb_scalars(directory):
    """Minimal TFRecord reader for TensorBoard event files (length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2
    out = {}
    for f in directory.glob("events.out.tfevents.*"):
        raw = f.read_bytes()
        i = 0
        while i < len(raw):
            (n,) = struct.unpack("<Q", raw[i: i + 8])
            ev = event_pb2.Event.FromString(raw[i + 12: i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def test_train_loop_resumes_the_grain_iterator_and_logs_tensorboard(sft_dir, tmp_path):
    import signal, os  # noqa: E401
    from flax import nnx
    from leafe_jax.policy.config import get_config
    from leafe_jax.policy.model import create_model
    from leafe_jax.train.checkpoint import Checkpointer
    from leafe_jax.train.loop import LoopConfig, train_loop
    from leafe_jax.train.optim import OptimConfig, create_optimizer

    cfg = get_config("test-tiny").replace(vocab_size=64)

    def fresh():
        m = create_model(cfg, seed=0)
        return m, create_optimizer(m, OptimConfig(learning_rate=1e-2, warmup_steps=1, total_steps=8))

    def data():
        return sft_batches(sft_source(sft_dir), batch_size=4, max_len=32, seed=1, buckets=(16, 32))

    lc = LoopConfig(num_steps=6, log_every=1, ckpt_every=2, progress=False)
    m_ref, o_ref = fresh()
    train_loop(m_ref, o_ref, data(), lc, tmp_path / "ref")

    class Killed:               # delivers SIGTERM while the third batch is drawn
        def __init__(self):
            self.it, self.n = data(), 0

        def __next__(self):
            self.n += 1
            if self.n == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return next(self.it)

        def get_state(self):
            return self.it.get_state()

        def set_state(self, s):
            self.it.set_state(s)

    m, o = fresh()
    from leafe_jax.train.loop import Preempted
    with pytest.raises(Preempted):
        train_loop(m, o, Killed(), lc, tmp_path / "run")
    meta = Checkpointer(tmp_path / "run" / "checkpoints").restore(fresh()[0])
    assert meta["step"] == 3 and meta["data_state"] == {"next_index": 3}
    m2, o2 = fresh()
    train_loop(m2, o2, data(), lc, tmp_path / "run")      # resumes model, optimiser and data
    for a, b in zip(jax.tree.leaves(nnx.state(m_ref, nnx.Param)), jax.tree.leaves(nnx.state(m2, nnx.Param))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    tb = read_tb_scalars(tmp_path / "ref" / "tensorboard")
    assert [s for s, _ in tb["loss"]] == [1, 2, 3, 4, 5, 6]
    jsonl = [eval(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().split("\n") if line]
    np.testing.assert_allclose([v for _, v in tb["loss"]], [r["loss"] for r in jsonl], rtol=1e-6)


def test_wandb_asked_but_missing_is_a_clear_error(tmp_path):
    pytest.importorskip("tensorboardX")
    try:
        import wandb  # noqa: F401
        pytest.skip("wandb is installed here")
    except ImportError:
        pass
    from leafe_jax.train.metrics import MetricsWriter
    with pytest.raises(ImportError, match="wandb_project.*pip install wandb"):
        MetricsWriter(tmp_path, wandb_project="leafe")

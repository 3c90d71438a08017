"""Two local processes with ``jax.distributed`` (4 CPU devices each): sharded SFT steps on
per-process data shards, a checkpoint saved and restored - equal to one process."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

HERE = os.path.dirname(__file__)


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_and_checkpoint(tmp_path):
    from leafe_jax.data.store import SftRecords, write_sft
    rng = np.random.default_rng(0)
    toks = [rng.integers(1, 32, rng.integers(4, 17)) for _ in range(24)]
    write_sft(SftRecords.build(toks, [t % 2 == 0 for t in toks], source="demo"),
              tmp_path / "ckpt" / "data")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.path.dirname(HERE)}
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multihost_worker.py"), str(i),
                               str(port), str(tmp_path / "ckpt")], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    results = []
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        line = [l for l in out.splitlines() if l.startswith("RESULT ")]
        assert line, out[-3000:]
        results.append(json.loads(line[0][len("RESULT "):]))
    assert [r["processes"] for r in results] == [2, 2] and results[0]["devices"] == 8
    assert results[0]["losses"] == results[1]["losses"]
    assert all(r["restored_equal"] and r["meta_losses"] == r["losses"] for r in results)
    # the same three steps in one process on one device
    from leafe_jax.policy.config import get_config
    from leafe_jax.policy.model import create_model
    from leafe_jax.train.optim import OptimConfig, create_optimizer
    from leafe_jax.train.step import train_step
    model = create_model(get_config("test-tiny").replace(vocab_size=32), seed=0)
    opt = create_optimizer(model, OptimConfig(learning_rate=1e-2, warmup_steps=1, total_steps=10))
    ref = []
    for step in range(3):
        rng = np.random.default_rng(step)
        b = {"tokens": jax.numpy.asarray(rng.integers(1, 32, (8, 12)), jax.numpy.int32),
             "loss_mask": jax.numpy.asarray(rng.random((8, 12)) < 0.4),
             "weight": jax.numpy.asarray(rng.choice([0.5, 1.0], 8), jax.numpy.float32)}
        ref.append(float(train_step(model, opt, b)["loss"]))
    np.testing.assert_allclose(results[0]["losses"], ref, rtol=1e-5)
    # the loop's two steps: global batch = process 0's shard rows, then process 1's
    from leafe_jax.data.loader import sft_batches
    from leafe_jax.data.store import sft_source
    model = create_model(get_config("test-tiny").replace(vocab_size=32), seed=0)
    opt = create_optimizer(model, OptimConfig(learning_rate=1e-2, warmup_steps=1, total_steps=10))
    its = [sft_batches(sft_source(tmp_path / "ckpt" / "data"), batch_size=8, max_len=16, seed=0,
                       buckets=(16,), process_index=i, process_count=2) for i in range(2)]
    for _ in range(2):
        parts = [next(it) for it in its]
        b = {k: jax.numpy.concatenate([p[k] for p in parts]) for k in parts[0]}
        loss = float(train_step(model, opt, b)["loss"])
    assert results[0]["loop_loss"] == results[1]["loop_loss"]
    np.testing.assert_allclose(results[0]["loop_loss"], loss, rtol=1e-5)
    lines = (tmp_path / "ckpt" / "loop" / "metrics.jsonl").read_text().strip().split("\n")
    assert len(lines) == 2                     # written by process 0 only

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

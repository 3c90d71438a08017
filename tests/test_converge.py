"""Training to convergence on a validation pool: stop rule, best kept, resume, pools."""

import json
import os

import numpy as np
import pytest

from leafe_jax.baselines.converge import ConvergeConfig, stop_reason, train_until_converged
from leafe_jax.envs.sokoban import get_preset
from leafe_jax.envs.sokoban.pools import _fingerprints, held_out_pool, training_pools, validation_pool
from leafe_jax.policy.config import get_config
from leafe_jax.policy.model import create_model
from leafe_jax.train.checkpoint import load_policy


def _pts(*vals, every=5):
    return [{"rollout_batches": i * every, "env_steps": 100 * i, "val_pass1": v} for i, v in enumerate(vals)]


def test_stop_rule_by_hand():
    assert stop_reason([], 2, 5, 100) is None
    assert stop_reason(_pts(0.1, 0.3, 0.2), 2, 5, 100) is None          # 1 point since the best
    assert "no new best in 2" in stop_reason(_pts(0.1, 0.3, 0.2, 0.3), 2, 5, 100)   # a tie is no new best
    assert stop_reason(_pts(0.1, 0.3, 0.2, 0.4), 2, 5, 100) is None
    assert "cap of 12" in stop_reason(_pts(0.1, 0.2, 0.3), 5, 5, 12)     # 10 + 5 > 12
    assert stop_reason(_pts(0.1, 0.2, 0.3), 5, 5, 15) is None            # 10 + 5 fits


def test_train_until_converged_keeps_the_best_and_resumes(tmp_path):
    model = create_model(get_config("test-tiny"), seed=0)
    script = {0: 0.10, 2: 0.30, 4: 0.25, 6: 0.35, 8: 0.20, 10: 0.30, 12: 0.9}
    state = {"step": 0, "trained": []}

    def train_to(step):
        state["trained"].append(step)
        state["step"] = step
        return 10 * step

    def validate(m):
        return script[state["step"]]

    cfg = ConvergeConfig(eval_every=2, patience=2, cap=5.0)
    wd = str(tmp_path / "run")
    calls = {"n": 0}

    def flaky(step):                       # "killed" during the third chunk
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return train_to(step)

    with pytest.raises(KeyboardInterrupt):
        train_until_converged(model, flaky, validate, cfg, 100, wd, meta={"model": model.cfg.to_dict()})
    curve = json.load(open(os.path.join(wd, "curve.json")))
    assert [c["rollout_batches"] for c in curve] == [0, 2, 4]
    out = train_until_converged(model, train_to, validate, cfg, 100, wd, meta={"model": model.cfg.to_dict()})
    curve = json.load(open(os.path.join(wd, "curve.json")))
    # 0.35 at 6 is the best; 8 and 10 bring none -> stop after 10 (patience 2), never reach 12
    assert [c["rollout_batches"] for c in curve] == [0, 2, 4, 6, 8, 10]
    assert out["best"]["rollout_batches"] == 6 and out["best"]["env_steps"] == 60
    assert "no new best" in out["stopped"] and state["trained"][-1] == 10
    _, meta = load_policy(os.path.join(wd, "best"))
    assert meta["step"] == 6
    # the cap: a 5-batch budget allows chunks up to 4 only
    state["step"] = 0
    out = train_until_converged(model, train_to, validate, cfg, 5, str(tmp_path / "cap"),
                                meta={"model": model.cfg.to_dict()})
    assert out["last"]["rollout_batches"] == 4 and "cap of 5" in out["stopped"]


def test_validation_pool_is_disjoint_and_leaves_the_other_pools_alone():
    g = get_preset("verl6x6").generator
    demo, train = training_pools(g, 0, demo_levels=32, train_levels=16)
    held = held_out_pool(12, g, 0, demo_levels=32, train_levels=16)
    val = validation_pool(24, g, 0, demo_levels=32, train_levels=16, eval_levels=12)
    fv = set(_fingerprints(val))
    assert len(_fingerprints(val)) == 24
    for other in (demo, train, held):
        assert not fv & set(_fingerprints(other))
    again = held_out_pool(12, g, 0, demo_levels=32, train_levels=16)
    assert np.array_equal(np.asarray(again.level.grid), np.asarray(held.level.grid))

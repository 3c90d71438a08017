"""Pass@k evaluation: rollouts per level -> success matrix -> JSON / Markdown / PNG."""

import json

import jax
import numpy as np
import pytest

from leafe_jax.envs.sokoban import generate_levels, get_preset
from leafe_jax.eval.sweep import sample_success, write_sweep
from leafe_jax.policy.config import get_config
from leafe_jax.policy.model import create_model


def test_sample_success_matches_the_rollouts_and_is_reproducible():
    p = get_preset("verl6x6")
    env = p.make_env()
    params = env.default_params.replace(max_steps_in_episode=6)
    g = generate_levels(jax.random.key(3), 3, p.generator, chunk=256)
    model = create_model(get_config("test-tiny").replace(vocab_size=64, max_seq_len=512), seed=0)
    a = sample_success(model, env, params, g.level, 5, jax.random.key(0), batch_size=4, progress=False)
    b = sample_success(model, env, params, g.level, 5, jax.random.key(0), batch_size=8, progress=False)
    assert a.shape == (3, 5) and a.dtype == bool
    assert np.array_equal(a, b)        # chunking does not change which episodes are drawn
    with pytest.raises(ValueError, match="empty level set"):
        sample_success(model, env, params, jax.tree.map(lambda x: x[:0], g.level), 5, jax.random.key(0))


def test_a_killed_evaluation_resumes_with_the_same_result(tmp_path, monkeypatch):
    import leafe_jax.interfaces.symbolic.interface as I
    p = get_preset("verl6x6")
    env = p.make_env()
    params = env.default_params.replace(max_steps_in_episode=6)
    g = generate_levels(jax.random.key(3), 3, p.generator, chunk=256)
    model = create_model(get_config("test-tiny").replace(vocab_size=64, max_seq_len=512), seed=0)
    agent = I.SymbolicSokoban(env, params)
    run = lambda **kw: agent.success(model, g.level, 5, jax.random.key(0), batch_size=4,
                                     progress=False, **kw)
    want = run()
    ck = str(tmp_path / "partial.npz")
    real, calls = I.rollout, []

    def dies_after_two(*a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(I, "rollout", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint=ck)
    with np.load(ck) as z:
        assert int(z["next"]) == 8                       # two chunks of 4 episodes kept
    monkeypatch.setattr(I, "rollout", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert np.array_equal(run(checkpoint=ck), want) and len(calls) == 2 + 2   # 15 episodes: 4 chunks
    # a checkpoint of another evaluation (other key) is not used
    other = agent.success(model, g.level, 5, jax.random.key(1), batch_size=4, progress=False,
                          checkpoint=ck)
    assert np.array_equal(other, agent.success(model, g.level, 5, jax.random.key(1), batch_size=4,
                                               progress=False))


def test_write_sweep_artifacts(tmp_path):
    rng = np.random.default_rng(0)
    res = {"base": rng.random((20, 8)) < 0.1, "better": rng.random((20, 8)) < 0.4}
    tables = write_sweep(res, str(tmp_path), title="test")
    data = json.loads((tmp_path / "passk.json").read_text())
    assert set(data["passk"]) == {"base", "better"}
    assert list(data["passk"]["base"]) == ["1", "2", "4", "8"]
    for t in tables.values():
        means = [t[k]["mean"] for k in (1, 2, 4, 8)]
        assert all(0 <= m <= 1 for m in means) and means == sorted(means)
    assert "| better |" in (tmp_path / "passk.md").read_text()
    assert (tmp_path / "passk.png").stat().st_size > 1000
    with pytest.raises(ValueError, match=r"k = \[16\] exceed"):
        write_sweep(res, str(tmp_path), ks=[1, 16])

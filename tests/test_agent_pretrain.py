"""Level pools and a one-step end-to-end run: pretrain -> checkpoint -> Pass@k evaluation."""

import json

import jax
import numpy as np
import pytest

from leafe_jax.envs.sokoban.pools import _fingerprints, level_pool
from leafe_jax.interfaces.symbolic.pretrain import PretrainConfig, pretrain_base_policy
from leafe_jax.envs.sokoban import get_preset
from leafe_jax.eval.sweep import sample_success, write_sweep
from leafe_jax.policy.config import get_config
from leafe_jax.policy.model import create_model
from leafe_jax.train.checkpoint import Checkpointer
from leafe_jax.train.sft import SFTConfig

TINY = get_config("test-tiny").replace(vocab_size=64, max_seq_len=512)


def test_pools_are_disjoint_and_named():
    cfg = get_preset("verl6x6").generator
    demo = level_pool("demo", 64, cfg, seed=0)
    ev = level_pool("eval", 64, cfg, seed=0, exclude=(demo,))
    assert not set(_fingerprints(demo)) & set(_fingerprints(ev))
    assert len(set(_fingerprints(ev))) == 64 or len(_fingerprints(ev)) == 64
    with pytest.raises(KeyError, match="unknown level pool 'test'"):
        level_pool("test", 4, cfg)


@pytest.mark.slow
def test_pretrain_then_evaluate_end_to_end(tmp_path):
    preset = get_preset("verl6x6")
    cfg = PretrainConfig(demo_levels=6, exp_per_episode=1, sft=SFTConfig(steps=2, batch_size=4))
    model, metrics, stats = pretrain_base_policy(preset, TINY, cfg, str(tmp_path / "base"),
                                                 progress=False)
    assert stats["demo"] == 6 and stats["examples"] == stats["demo"] + stats["demo+exp"]
    assert np.isfinite(metrics["loss"]) and metrics["tokens"] > 0
    ck = Checkpointer(str(tmp_path / "base" / "checkpoints"))
    assert ck.latest_step() == 2
    loaded = create_model(TINY, seed=123)
    meta = ck.restore(loaded)
    assert meta["preset"] == "verl6x6"
    toks = np.arange(10)[None] % 60
    np.testing.assert_allclose(np.asarray(loaded(toks)[0]), np.asarray(model(toks)[0]), atol=1e-6)
    demo = level_pool("demo", 6, preset.generator, 0)
    held = level_pool("eval", 3, preset.generator, 0, exclude=(demo,))
    env = preset.make_env()
    success = sample_success(loaded, env, env.default_params, held.level, 4, jax.random.key(0),
                             progress=False)
    write_sweep({"base": success}, str(tmp_path / "eval"))
    data = json.loads((tmp_path / "eval" / "passk.json").read_text())
    assert list(data["passk"]["base"]) == ["1", "2", "4"]
    vals = [data["passk"]["base"][k]["mean"] for k in ("1", "2", "4")]
    assert all(0.0 <= v <= 1.0 for v in vals) and vals == sorted(vals)


def test_pretrain_rejects_a_too_small_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="vocabulary 32 < interaction vocabulary 61"):
        pretrain_base_policy(get_preset("verl6x6"), TINY.replace(vocab_size=32),
                             PretrainConfig(demo_levels=2, sft=SFTConfig(steps=1)), str(tmp_path))


@pytest.mark.slow
def test_following_rounds_teach_from_the_policys_own_failures(tmp_path, monkeypatch):
    """On-policy following data: contexts are the policy's own branches (the experience right
    before the target), targets the exact solver's action at tau (never the failed a_tau),
    levels from the demo pool only; the base policy saved is the fine-tuned one."""
    from leafe_jax.data.store import sft_source
    from leafe_jax.interfaces.symbolic import encoding as E
    from leafe_jax.train.checkpoint import load_policy

    preset = get_preset("verl6x6")
    cfg = PretrainConfig(demo_levels=24, sft=SFTConfig(steps=3, batch_size=8, learning_rate=1e-3),
                         following_rounds=1, following_levels=24, following_steps=2)
    wd = tmp_path / "base"
    import leafe_jax.interfaces.symbolic.pretrain as P
    seen, real = [], P.following_examples
    monkeypatch.setattr(P, "following_examples", lambda env, params, policy, levels, key, **k:
                        seen.append(levels) or real(env, params, policy, levels, key, **k))
    pretrain_base_policy(preset, TINY, cfg, str(wd), seed=0, progress=False)
    report = json.loads((wd / "following.json").read_text())
    (r0,) = report["rounds"]
    assert r0["rollouts"] == 24 and r0["branches"] >= 1 and r0["examples"] >= 1, r0
    assert 0 <= r0["repeat_rate"] <= 1 and {"compliance", "p_repeat_without_experience"} <= set(report["after"])
    src = sft_source(str(wd / "following_0" / "data"))
    demo = level_pool("demo", 24, preset.generator, seed=0)
    follow = [src[i] for i in range(len(src)) if src[i]["source"] == b"follow"]
    assert len(follow) == r0["examples"]
    for ex in follow:
        t, m = np.asarray(ex["tokens"]), np.asarray(ex["loss_mask"])
        assert m.sum() == 1 and m[-1] and t[-1] in E.ACTION_TOKENS
        assert t[-1 - E.EXP_LEN] == E.EXP                       # the experience right before it
        named = t[-1 - E.EXP_LEN + 2] - E.ACT0                  # EXP reason ACTION ...
        assert t[-1] - E.ACT0 != named                          # never the action that failed
    # every round (and the final compliance check) rolls out on demo-pool levels only
    assert [np.asarray(lv.grid).tobytes() for lv in seen] == [np.asarray(demo.level.grid).tobytes()] * 2
    model, meta = load_policy(str(wd))
    assert meta["step"] == 3 + 2                                # the followed policy is the base

"""Self-reflection: the policy names tau and writes the experience; its warm-up data come
from demo-pool failures labelled by the feedback reflector; the search takes its answers."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from leafe_jax.envs.sokoban import Sokoban, get_preset
from leafe_jax.envs.sokoban.pools import level_pool
from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.interfaces.symbolic.episode import episode_from_actions
from leafe_jax.interfaces.symbolic.interface import SymbolicSokoban
from leafe_jax.interfaces.symbolic.reflect import feedback_reflect
from leafe_jax.interfaces.symbolic.self_reflect import (answer_masks, match_step, reflection_examples,
                                                        reflection_prompt)
from leafe_jax.leafe.explore import ExploreConfig, explore
from leafe_jax.policy.config import get_config
from leafe_jax.policy.model import create_model
from sokoban_cases import CORNER_TEXT, level

CORNER, _, _ = level(CORNER_TEXT)
ENV = Sokoban(6, 6, 1, max_steps=10)
L, D, U, R = 2, 1, 0, 3


def test_match_step_and_answer_masks_by_hand():
    ep = episode_from_actions(ENV, CORNER, [L, R, U, U, D], 10)
    p = np.asarray(ep.states.player)
    # step 2 (U from the start cell (3, 3)): the first step with the player there taking U
    assert divmod(int(p[2]), 6) == (3, 3) and match_step(ep, U, 3, 3, 6) == 2
    assert match_step(ep, L, 3, 3, 6) == 0            # L at the start: step 0, not later
    assert match_step(ep, D, 3, 3, 6) == -1           # D was never taken at (3, 3)
    m = answer_masks(6, 6, 64)
    assert np.flatnonzero(m[0]).tolist() == list(range(E.R_DEADLOCK, E.R_LOOP + 1))
    assert np.flatnonzero(m[1]).tolist() == list(E.ACTION_TOKENS)
    assert np.flatnonzero(m[2]).tolist() == [E.ROW0 + r for r in range(1, 5)]
    assert np.flatnonzero(m[3]).tolist() == [E.COL0 + c for c in range(1, 5)]


@pytest.fixture(scope="module")
def setup():
    preset = get_preset("verl6x6")
    env = preset.make_env()
    model = create_model(get_config("sokoban-tiny"), seed=3)
    return preset, env, SymbolicSokoban(env, env.default_params), model


def test_warm_up_examples_are_the_feedback_labels_of_the_given_levels(setup):
    preset, env, agent, model = setup
    demo = level_pool("demo", 16, preset.generator, 0)
    rec, st = reflection_examples(agent, model, demo.level, jax.random.key(0))
    assert st["rollouts"] == 16 and 1 <= st["examples"] <= st["failed"]
    # recompute the rollouts and labels independently: same key -> same episodes
    sess = agent.session(model, demo.level, max_depth=1, temperature=1.0)
    roots = sess.roots(np.arange(16), jax.random.split(jax.random.key(0), 16))
    fb = jax.device_get(feedback_reflect(roots.episodes, width=6, num_candidates=1))
    eps = jax.tree.map(np.asarray, roots.episodes)
    rows = np.flatnonzero((fb.tau[:, 0] >= 0) & ~eps.solved)
    assert len(rec) == len(rows)
    for i, r in enumerate(rows):
        t, m = np.asarray(rec.tokens[i]), np.asarray(rec.loss_mask[i])
        prompt = reflection_prompt(eps.tokens[r], int(eps.token_len[r]))
        assert t[: len(prompt)].tolist() == prompt.tolist()           # the episode as it was seen
        assert t[len(prompt):].tolist() == fb.experience[r, 0, 1:].tolist()    # the label
        assert m.tolist() == [False] * len(prompt) + [True] * (E.EXP_LEN - 1)  # loss: the answer only


def test_the_search_takes_the_policys_own_reflections(setup):
    """rollback_self: every branch's experience names the action the parent took at tau and
    the player's cell there (the answer was matched to that step); counters are kept."""
    preset, env, agent, model = setup
    levels = level_pool("train", 8, preset.generator, 0)
    stats = {}
    tree = explore(agent, model, levels.level, jax.random.key(1),
                   ExploreConfig(budget=4, max_depth=2, children=2), "rollback_self",
                   progress=False, stats=stats)
    st = stats["reflector"]
    assert st["asked"] > 0 and st["asked"] >= st["malformed"] + st["duplicate"]
    ep = jax.tree.map(np.asarray, tree.episodes)
    br = np.argwhere(tree.valid & tree.is_branch)
    assert len(br) == (tree.valid & tree.is_branch).sum() and len(br) >= 1
    for b, k in br:
        par, tau = tree.parent[b, k], tree.tau[b, k]
        e = tree.experience[b, k]
        a = int(ep.actions[b, par, tau])
        r, c = divmod(int(ep.states.player[b, par, tau]), 6)
        assert e.tolist()[:1] + e.tolist()[2:] == [E.EXP, E.ACT0 + a, E.ROW0 + r, E.COL0 + c, E.EXP_END]
        assert match_step(jax.tree.map(lambda x: x[b, par], ep), a, r, c, 6) == tau


@pytest.mark.slow
def test_self_reflection_rounds_teach_the_policy_to_reflect(tmp_path, monkeypatch):
    """base.self_reflection: the rounds add the warm-up data, made and measured on
    demonstration-pool levels only; its parse rate and agreement with the feedback reflector
    are measured before and after; training on the labels makes the policy agree with them
    more often than the untrained one."""
    import leafe_jax.interfaces.symbolic.pretrain as P
    from leafe_jax.interfaces.symbolic.pretrain import PretrainConfig, pretrain_base_policy
    from leafe_jax.train.sft import SFTConfig
    preset = get_preset("verl6x6")
    cfg = PretrainConfig(demo_levels=48, sft=SFTConfig(steps=20, batch_size=8, learning_rate=3e-3),
                         following_rounds=1, following_levels=48, following_steps=60,
                         self_reflection=True)
    wd = tmp_path / "base"
    seen = []
    for name in ("reflection_examples", "reflection_quality"):
        real = getattr(P, name)
        monkeypatch.setattr(P, name, lambda agent, policy, levels, key, _r=real, **k:
                            seen.append(levels) or _r(agent, policy, levels, key, **k))
    pretrain_base_policy(preset, get_config("sokoban-tiny"), cfg, str(wd), seed=0, progress=False)
    demo = level_pool("demo", 48, preset.generator, seed=0).level
    train = level_pool("train", 16, preset.generator, seed=0).level
    assert len(seen) == 3            # quality before, the round's examples, quality after
    for lv in seen:
        assert np.array_equal(np.asarray(lv.grid), np.asarray(demo.grid))
        assert not np.array_equal(np.asarray(lv.grid[:16]), np.asarray(train.grid))
    rep = json.loads((wd / "following.json").read_text())
    before, after = rep["rounds"][0]["reflection_quality"], rep["after"]["reflection_quality"]
    assert rep["rounds"][0]["reflection"]["examples"] >= 1
    assert before["failures"] >= 1 and after["failures"] >= 1
    assert after["agrees_with_feedback"] > before["agrees_with_feedback"], (before, after)
    with pytest.raises(ValueError, match="following_rounds"):
        dataclasses.replace(cfg, following_rounds=0)

"""LEAFE: reflectors on hand-built episodes, rollback trees (restore = replay, K/D/BFS),
Stage-2 datasets (no experience in e2p, rehearsal only from successes, action-only masks)."""

import dataclasses
import jax
import numpy as np
import pytest

from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.envs.sokoban import Sokoban
from leafe_jax.envs.sokoban.replay import replay
from leafe_jax.leafe.distill import DistillConfig, stage2_examples
from leafe_jax.interfaces.symbolic.episode import episode_from_actions, strip_experience
from leafe_jax.leafe.explore import ExploreConfig, explore, resolve
from leafe_jax.leafe.tree import NO_PARENT, load_tree, path_to_root, save_tree, solved_within, tree_stats
from leafe_jax.interfaces.symbolic.interface import SymbolicSokoban
from leafe_jax.interfaces.symbolic.reflect import ModelReflector, OracleReflector, feedback_reflect
from sokoban_cases import CORNER_TEXT, level

CORNER, _, _ = level(CORNER_TEXT)
ENV = Sokoban(6, 6, 1, max_steps=10)
L, D, U, R = 2, 1, 0, 3       # action ids: up 0, down 1, left 2, right 3


def one(ep):
    return jax.tree.map(lambda x: x[None], ep)


def test_feedback_reflector_picks_the_deadlocking_push():
    # L, R: a wasted cycle (back to the start state); U pushes the box against the top
    # wall (a dead square: no target in row 1); U again bumps (the box cannot move).
    ep = episode_from_actions(ENV, CORNER, [L, R, U, U, D], 10)
    r = feedback_reflect(one(ep), width=6, num_candidates=4)
    # (NO_PROGRESS would name tau = 0 - no push ever brought the box closer - but the loop
    # already took step 0: candidates are distinct steps, so a slot stays empty)
    assert r.tau[0].tolist() == [2, 0, 3, -1]
    assert r.reason[0].tolist() == [E.R_DEADLOCK, E.R_LOOP, E.R_BUMP, 0]
    assert E.describe(r.experience[0, 0]) == "<exp deadlock [U] r3 c3 >"    # player at (3, 3)
    assert E.describe(r.experience[0, 1]) == "<exp loop [L] r3 c3 >"
    assert E.describe(r.experience[0, 2]) == "<exp bump [U] r2 c3 >"
    assert r.forbidden[0, 0].tolist() == [True, False, False, False]


def test_feedback_reflector_bump_and_no_progress_and_success():
    ep = episode_from_actions(ENV, CORNER, [D, D, R], 10)     # down, then into the wall
    r = feedback_reflect(one(ep), width=6, num_candidates=2)
    assert r.tau[0].tolist() == [1, 0] and r.reason[0].tolist() == [E.R_BUMP, E.R_NO_PROGRESS]
    solved = episode_from_actions(ENV, CORNER, [R, U, U, L, D, D, L, D, R], 10)
    assert bool(solved.solved)
    r = feedback_reflect(one(solved), width=6, num_candidates=2)
    assert r.tau[0].tolist() == [-1, -1]                     # nothing to take back
    assert (r.experience[0] == E.PAD).all()


def test_periodic_reflection_adds_window_candidates():
    ep = episode_from_actions(ENV, CORNER, [D, D, U, U, L, L, L, U], 10)
    base = feedback_reflect(one(ep), width=6, num_candidates=6)
    per = feedback_reflect(one(ep), width=6, num_candidates=6, every=3)
    assert set(base.tau[0].tolist()) - {-1} <= set(per.tau[0].tolist()) - {-1}


def test_oracle_reflector_finds_the_step_that_made_the_level_unsolvable():
    ep = episode_from_actions(ENV, CORNER, [L, R, U, U, D], 10)
    r = OracleReflector(6, 6, num_candidates=1)(one(ep))
    assert r.tau[0].tolist() == [2] and r.reason[0].tolist() == [E.R_DEADLOCK]


def test_model_reflector_parses_and_counts_bad_answers():
    ep = episode_from_actions(ENV, CORNER, [L, R, U, U, D], 10)
    eps = jax.tree.map(lambda x: np.stack([x] * 4), ep)
    answers = ["Thinking... tau=2 reason=deadlock action=U cell=3,3", "no idea",
               "tau=9 reason=bump action=D cell=1,1", "tau=1 reason=boredom action=L cell=3,2"]
    seen = []
    refl = ModelReflector(lambda prompts: seen.extend(prompts) or answers)
    r = refl(eps)
    assert r.tau[:, 0].tolist() == [2, -1, -1, -1]
    assert refl.malformed == 2 and refl.out_of_range == 1 and refl.calls == 4
    assert E.describe(r.experience[0, 0]) == "<exp deadlock [U] r3 c3 >"
    assert "[L]" in seen[0] and "tau=<step>" in seen[0]


def test_explore_config_rejects_bad_budgets():
    for kw, msg in (({"budget": 0}, "budget must be >= 1"), ({"max_depth": 0}, "max_depth must be >= 1"),
                    ({"children": -1}, "children must be >= 1"), ({"budget": 2.7}, "must be an integer"),
                    ({"temperature": 0.0}, "temperature must be > 0"),
                    ({"reflect_every": -1}, "reflect_every must be >= 0")):
        with pytest.raises(ValueError, match=msg):
            ExploreConfig(**kw)
    with pytest.raises(ValueError, match="unknown Stage-1 strategy 'bfs'"):
        resolve("bfs", ExploreConfig())
    with pytest.raises(ValueError, match="rollback needs the experience, the mask, or both"):
        resolve("rollback", ExploreConfig(use_experience=False, use_mask=False))
    assert resolve("rollback_mask_only", ExploreConfig())[1].use_experience is False


# ------------------------------------------------------------------ trees on a real policy
@pytest.fixture(scope="module")
def setup():
    from leafe_jax.envs.sokoban.pools import level_pool
    from leafe_jax.envs.sokoban import get_preset
    from leafe_jax.policy.config import get_config
    from leafe_jax.policy.model import create_model
    preset = get_preset("verl6x6")
    env = preset.make_env()
    levels = level_pool("train", 12, preset.generator, 0)
    model = create_model(get_config("sokoban-tiny"), seed=3)     # seed 3 + key 1: 6 successful branches
    return model, env, env.default_params, levels


@pytest.fixture(scope="module")
def rollback_tree(setup):
    model, env, params, levels = setup
    cfg = ExploreConfig(budget=6, max_depth=2, children=2)
    return explore(SymbolicSokoban(env, params), model, levels.level, jax.random.key(1), cfg,
                   progress=False), cfg


def test_tree_respects_budget_depth_and_bfs_order(rollback_tree):
    tree, cfg = rollback_tree
    assert (tree.valid.sum(1) <= cfg.budget).all() and (tree.depth[tree.valid] <= cfg.max_depth).all()
    assert (tree.valid.sum(1) > 1).any()                       # some tasks were expanded
    for b in range(tree.valid.shape[0]):
        nodes = np.flatnonzero(tree.valid[b])
        order = tree.order[b, nodes]
        assert sorted(order.tolist()) == list(range(len(nodes)))
        by_order = nodes[np.argsort(order)]
        assert (np.diff(tree.depth[b, by_order]) >= 0).all()   # breadth-first
        for n in nodes:
            p = tree.parent[b, n]
            if p != NO_PARENT:
                path = path_to_root(tree, b, n)
                assert path[1] == p and tree.parent[b, path[-1]] == NO_PARENT
                assert len(path) == tree.depth[b, n] + 1
                assert tree.order[b, p] < tree.order[b, n] and not tree.solved[b, p]
                assert tree.depth[b, n] == tree.depth[b, p] + 1
        # no more than M children per node
        kids = np.bincount(tree.parent[b, nodes][tree.parent[b, nodes] >= 0], minlength=cfg.budget)
        assert kids.max(initial=0) <= cfg.children


def test_branches_restore_the_parent_state_and_prefix_exactly(setup, rollback_tree):
    model, env, params, levels = setup
    tree, _ = rollback_tree
    ep = jax.tree.map(np.asarray, tree.episodes)
    checked = 0
    for b, n in zip(*np.nonzero(tree.valid & (tree.tau >= 0))):
        p, tau = tree.parent[b, n], tree.tau[b, n]
        # env state and actions before tau are the parent's (rollback = a gather) ...
        np.testing.assert_array_equal(ep.states.grid[b, n, : tau + 1], ep.states.grid[b, p, : tau + 1])
        np.testing.assert_array_equal(ep.actions[b, n, :tau], ep.actions[b, p, :tau])
        # ... and a replay of the whole episode from the level gives every state
        steps = int(ep.num_steps[b, n])
        lv = jax.tree.map(lambda x: x[b], levels.level)
        rep = replay(env, lv, ep.actions[b, n], params)
        np.testing.assert_array_equal(np.asarray(rep.states.grid)[: steps + 1], ep.states.grid[b, n, : steps + 1])
        np.testing.assert_array_equal(np.asarray(rep.states.player)[: steps + 1], ep.states.player[b, n, : steps + 1])
        # the context: the experience right before a'_tau, and without experiences exactly
        # the encoding of the replayed episode (the parent's prefix + the branch's turns)
        toks = ep.tokens[b, n, : ep.token_len[b, n]]
        a_tau = ep.action_pos[b, n, tau]
        np.testing.assert_array_equal(toks[a_tau - E.EXP_LEN: a_tau], tree.experience[b, n])
        fb = np.concatenate([[E.FB_START], np.asarray(jax.vmap(E.feedback_token)(rep.info))[: steps - 1]])
        want, _ = E.encode_episode(np.asarray(rep.obs)[: steps + 1], ep.actions[b, n, :steps], fb)
        stripped, _ = strip_experience(toks, len(toks))
        np.testing.assert_array_equal(stripped, want)
        parent_toks = ep.tokens[b, p]
        turn = 1 + tau * E.turn_length(6, 6) + (int((parent_toks[:a_tau] == E.EXP).sum()) * E.EXP_LEN)
        np.testing.assert_array_equal(toks[:turn], parent_toks[:turn])
        checked += 1
    assert checked >= 3


def test_strategies_stop_at_first_success_and_share_the_first(setup, rollback_tree):
    model, env, params, levels = setup
    tree, _ = rollback_tree
    agent = SymbolicSokoban(env, params)
    ind = explore(agent, model, levels.level, jax.random.key(1), ExploreConfig(budget=6), "independent",
                  progress=False)
    ref = explore(agent, model, levels.level, jax.random.key(1), ExploreConfig(budget=6), "refine",
                  progress=False)
    # each task stops at its first success (K rollouts if it never succeeds) ...
    for t in (ind, ref, tree):
        first = np.where(t.valid & t.solved, t.order, 99).min(1)         # order of the first success
        slot = np.argmin(np.where(t.valid & t.solved, t.order, 99), 1)
        if t is tree:     # rollback: no round after the one that first succeeded (its
            depth_first = np.where(first < 99, t.depth[np.arange(12), slot], 99)   # siblings ran)
            assert (t.depth <= depth_first[:, None])[t.valid].all()
        else:
            assert not (t.valid & (t.order > first[:, None])).any()
            assert (t.valid.sum(1) == np.where(first < 99, first + 1, 6)).all()
    # ... unless stopping is off (the pre-redesign budgets)
    legacy = ExploreConfig(budget=6, stop_at_first_success=False)
    ind_all = explore(agent, model, levels.level, jax.random.key(1), legacy, "independent", progress=False)
    assert ind_all.valid.sum(1).tolist() == [6] * 12 and ind.solved.any(1).sum() >= 1
    np.testing.assert_array_equal(ind_all.solved[ind.valid], ind.solved[ind.valid])
    # the first rollout of every strategy is the same root (same key, same context)
    np.testing.assert_array_equal(ind.solved[:, 0], tree.solved[:, 0])
    np.testing.assert_array_equal(np.asarray(ind.episodes.actions[:, 0]), np.asarray(tree.episodes.actions[:, 0]))
    # refinement puts the last failure's reflection right after BOS
    e = np.asarray(ref.episodes.tokens[:, 1, 1: 1 + E.EXP_LEN])
    failed = ~ref.solved[:, 0]
    assert (e[failed, 0] == E.EXP).all() and (ref.experience[failed, 1] == e[failed]).all()
    sw = solved_within(tree)
    assert (np.diff(sw.astype(int), axis=1) >= 0).all()
    st = tree_stats(tree)
    assert st["rollouts"] == int(tree.valid.sum()) and st["env_steps"] > 0


def test_replay_cost_charges_tau_per_branch(setup, rollback_tree):
    model, env, params, levels = setup
    tree, cfg = rollback_tree
    paid = explore(SymbolicSokoban(env, params), model, levels.level, jax.random.key(1),
                   dataclasses.replace(cfg, replay_cost=True), progress=False)
    np.testing.assert_array_equal(paid.tau, tree.tau)                 # the same search ...
    np.testing.assert_array_equal(paid.solved, tree.solved)
    extra = np.where(tree.is_branch, tree.tau, 0)                     # ... charged tau more
    np.testing.assert_array_equal(paid.env_steps, tree.env_steps + extra)
    assert extra.sum() > 0


def test_action_distribution_is_chunking_free_and_normalised(setup, rollback_tree):
    model, env, params, levels = setup
    tree, _ = rollback_tree
    agent = SymbolicSokoban(env, params)
    b, n = np.nonzero(tree.is_branch)
    eps = jax.tree.map(lambda x: np.asarray(x)[b, n], tree.episodes)
    small = agent.action_distribution(model, eps, tree.tau[b, n], chunk=3)
    big = agent.action_distribution(model, eps, tree.tau[b, n], chunk=64)
    np.testing.assert_allclose(small, big, atol=1e-5)
    np.testing.assert_allclose(small.sum(1), 1, atol=1e-5)
    # the revised action the rollout sampled has positive probability in its own context
    assert (small[np.arange(len(b)), eps.actions[np.arange(len(b)), tree.tau[b, n]]] > 0).all()


def test_tree_save_load_round_trip(rollback_tree, tmp_path):
    tree, _ = rollback_tree
    save_tree(tree, tmp_path / "t.npz")
    back = load_tree(tmp_path / "t.npz", SymbolicSokoban(ENV).episode_like())
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_stage2_datasets(rollback_tree):
    tree, _ = rollback_tree
    agent = SymbolicSokoban(ENV)
    rec, stats = stage2_examples(agent, tree, DistillConfig())
    assert stats["successful_branches"] >= 1, stats            # the fixture's seed gives some
    solved_nodes = {(b, n) for b, n in zip(*np.nonzero(tree.valid & tree.solved))}
    for t, m, s, st, task in zip(rec.tokens, rec.loss_mask, rec.source, rec.step, rec.task_id):
        assert not (t == E.EXP).any()                          # no experience in any context
        assert np.isin(t[m], E.ACTION_TOKENS).all() and m.any()  # loss on action tokens only
        assert t[-1] in E.ACTION_TOKENS and m[-1]
        if s == "e2p":
            assert m.sum() == 1 and st >= 0                    # h_tau -> a'_tau alone
            acts = tree.episodes.actions
            n = [n for (b, n) in solved_nodes if b == task and tree.tau[b, n] == st
                 and t[-1] == acts[b, n, st] + E.ACT0]
            assert n, "e2p only from successful branches, target a'_tau"
            # ... and only where a'_tau differs from the failed parent's a_tau
            assert any(acts[task, tree.parent[task, k], st] != acts[task, k, st] for k in n)
        else:
            assert any(b == task for b, _ in solved_nodes)
    reh, _ = stage2_examples(agent, tree, DistillConfig(), e2p=False)
    assert set(reh.source) == {"rehearsal"}
    assert len(reh) == stats["rehearsal"] and stats["e2p"] >= 1
    # rehearsal-only holds no (h_tau -> a'_tau) pair: every e2p example's context+target is absent
    reh_keys = {(t.tobytes(), m.tobytes()) for t, m in zip(reh.tokens, reh.loss_mask)}
    for t, m, s in zip(rec.tokens, rec.loss_mask, rec.source):
        if s == "e2p":
            assert (t.tobytes(), m.tobytes()) not in reh_keys
    suffix, _ = stage2_examples(agent, tree, DistillConfig(e2p_suffix=True), rehearsal=False)
    assert max(m.sum() for m in suffix.loss_mask) > 1
    # changed_only drops exactly the branches whose revised action repeats the parent's
    _, every = stage2_examples(agent, tree, DistillConfig(dedupe=False, changed_only=False), rehearsal=False)
    _, changed = stage2_examples(agent, tree, DistillConfig(dedupe=False), rehearsal=False)
    br = tree.valid & tree.solved & (tree.tau >= 0)
    b, n = np.nonzero(br)
    same = int((tree.episodes.actions[b, n, tree.tau[b, n]]
                == tree.episodes.actions[b, tree.parent[b, n], tree.tau[b, n]]).sum())
    assert every["e2p"] == int(br.sum()) and every["e2p_same_action"] == 0
    assert (changed["e2p"], changed["e2p_same_action"]) == (int(br.sum()) - same, same)


def test_no_successful_branch_gives_an_empty_distillation_set(rollback_tree):
    tree, _ = rollback_tree
    failed_only = tree.replace(solved=np.zeros_like(tree.solved))
    agent = SymbolicSokoban(ENV)
    rec, stats = stage2_examples(agent, failed_only, DistillConfig())
    assert rec is None and stats["successful_branches"] == 0
    with pytest.raises(ValueError, match="needs rehearsal, e2p, or both"):
        stage2_examples(agent, tree, DistillConfig(), rehearsal=False, e2p=False)


def test_periodic_stop_and_truncate_by_hand():
    """Deadlock at step 2 (U pushes the box onto a dead square). A check every R steps of the
    rollout sees steps < R, < 2R, ...: R = 2 first sees it at 4, R = 3 at 3, R = 5 at 5;
    R = 6 would check at 6 = the episode's end (nothing left to save: no stop)."""
    from leafe_jax.interfaces.symbolic.episode import truncate
    from leafe_jax.interfaces.symbolic.reflect import periodic_stop
    acts = [L, R, U, U, D, D]
    ep = episode_from_actions(ENV, CORNER, acts, 10)
    assert bool(ep.info["deadlock"][2]) and not np.asarray(ep.info["deadlock"][:2]).any()
    assert [int(periodic_stop(one(ep), r)[0]) for r in (2, 3, 5, 6)] == [4, 3, 5, 6]
    clean = episode_from_actions(ENV, CORNER, [D, D, R], 10)      # bumps, no deadlock
    assert int(periodic_stop(one(clean), 1)[0]) == 3
    # a cut episode is the episode of the first 4 actions
    cut = jax.tree.map(lambda x: x[0], truncate(one(ep), np.array([4])))
    want = episode_from_actions(ENV, CORNER, acts[:4], 10, token_slots=ep.tokens.shape[0])
    for f in ("actions", "active", "tokens", "token_len", "num_steps", "solved"):
        np.testing.assert_array_equal(np.asarray(getattr(cut, f)), np.asarray(getattr(want, f)), err_msg=f)
    np.testing.assert_array_equal(np.asarray(cut.states.grid), np.asarray(want.states.grid))
    assert np.asarray(cut.action_pos[:4]).tolist() == np.asarray(want.action_pos[:4]).tolist()


def test_interrupted_search_cuts_lost_rollouts_and_pays_only_what_ran(setup, rollback_tree):
    from leafe_jax.interfaces.symbolic.reflect import periodic_stop
    model, env, params, levels = setup
    tree, cfg = rollback_tree
    R = 3
    cut = explore(SymbolicSokoban(env, params), model, levels.level, jax.random.key(1),
                  dataclasses.replace(cfg, interrupt_every=R), progress=False)
    # the roots are the uninterrupted roots, stopped where the check says
    full_root = jax.tree.map(lambda x: x[:, 0], tree.episodes)
    stop = np.asarray(periodic_stop(full_root, R))
    n = np.asarray(cut.episodes.num_steps)
    assert (n[:, 0] == stop).all() and (stop < np.asarray(full_root.num_steps)).any()
    for b in range(12):
        np.testing.assert_array_equal(np.asarray(cut.episodes.actions[b, 0, : stop[b]]),
                                      np.asarray(full_root.actions[b, : stop[b]]))
    # every rollout pays exactly the steps it ran; a stopped one is a failure that had caused
    # a deadlock, stopped on a check (a multiple of R of its own steps)
    start = np.asarray(cut.episodes.start)
    np.testing.assert_array_equal(cut.env_steps[cut.valid], (n - start)[cut.valid])
    stopped = cut.valid & ~cut.solved & (n < env.default_params.max_steps_in_episode)
    assert stopped.any() and ((n - start)[stopped] % R == 0).all()
    dead = np.asarray(cut.episodes.info["deadlock"])
    assert all(dead[b, k, start[b, k]: n[b, k]].any() for b, k in zip(*np.nonzero(stopped)))
    assert cut.env_steps[cut.valid].sum() < tree.env_steps[tree.valid].sum()

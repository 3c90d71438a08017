"""Tree diagnostics on hand-built trees: cost to first success, compliance with experience,
and the search's (tau, experience) dedupe along a path."""

from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pytest

from leafe_jax.leafe.diagnostics import (branch_starts, compliance, first_success_cost,
                                         solved_within_env_steps)
from leafe_jax.leafe.explore import _new_on_path
from leafe_jax.leafe.tree import NO_PARENT, NO_ROLLBACK, Tree


class Episodes(NamedTuple):        # a pytree, as an interface's episodes are
    actions: np.ndarray


def hand_tree():
    """Task 0: root (fails, 10 steps) -> branch tau=2 (fails, 8) -> branch tau=4 (solved, 6),
    and a second child of the root at tau=2 (solved, 9; order 3: after the first success).
    Task 1: a root that fails (12 steps), nothing else."""
    B, K, T = 2, 4, 6
    valid = np.array([[1, 1, 1, 1], [1, 0, 0, 0]], bool)
    parent = np.array([[NO_PARENT, 0, 1, 0], [NO_PARENT, -1, -1, -1]])
    order = np.array([[0, 1, 2, 3], [0, 1, 2, 3]])
    tau = np.array([[NO_ROLLBACK, 2, 4, 2], [NO_ROLLBACK] * 4])
    solved = np.array([[0, 0, 1, 1], [0, 0, 0, 0]], bool)
    env_steps = np.array([[10, 8, 6, 9], [12, 0, 0, 0]])
    tokens = env_steps * 10
    actions = np.zeros((B, K, T), np.int32)
    actions[0, 0] = [0, 1, 2, 3, 0, 1]       # root
    actions[0, 1] = [0, 1, 3, 3, 0, 1]       # a'_2 = 3 != a_2 = 2
    actions[0, 2] = [0, 1, 3, 3, 0, 2]       # a'_4 = 0 == the parent's a_4 = 0: repeated
    actions[0, 3] = [0, 1, 1, 0, 0, 0]       # a'_2 = 1 != 2
    z = np.zeros((B, K), np.int32)
    return Tree(valid=valid, parent=parent, depth=np.array([[0, 1, 2, 1], [0, 0, 0, 0]]),
                order=order, tau=tau, reason=z, experience=np.zeros((B, K, 2), np.int32),
                forbidden=np.zeros((B, K, 4), bool), solved=solved, env_steps=env_steps,
                tokens=tokens, episodes=Episodes(actions))


class Agent:
    """Actions by step; the policy's distribution: P(action 2 | branch context) = 0.1,
    P(action 0 | ...) = 0.5 in every branch context, 0.6 / 0.7 in the parents' contexts."""

    def action(self, episode, t):
        return int(episode.actions[t])

    def action_distribution(self, policy, episodes, t, temperature=1.0):
        d = np.full((len(t), 4), 0.1)
        is_branch = np.asarray(episodes.actions)[:, 2] != 2      # the root has a_2 = 2
        d[:, 0] = np.where(is_branch, 0.5, 0.7)
        d[:, 2] = np.where(is_branch, 0.1, 0.6)
        return d


def test_first_success_cost_by_budget_order():
    cost = first_success_cost(hand_tree())
    assert cost["solved"].tolist() == [True, False]
    assert cost["env_steps"].tolist() == [10 + 8 + 6, 12]          # order 3 came after
    assert cost["tokens"].tolist() == [240, 120]
    assert solved_within_env_steps(cost, [23, 24, 1000]) == [0.0, 0.5, 0.5]


def test_compliance_on_a_hand_built_tree():
    c = compliance(Agent(), None, hand_tree())
    assert c["branches"] == 3
    assert c["repeat_rate"] == pytest.approx(1 / 3)                 # only node 2 repeated a_tau
    assert c["repeat_rate_successful"] == pytest.approx(1 / 2)      # nodes 2 and 3 solved
    # a_tau = 2, 0, 2 for nodes 1, 2, 3; with experience (branch contexts) P = 0.1, 0.5, 0.1;
    # the parents' contexts: node 1's parent = the root (0.6), node 2's = node 1 (a branch: 0.5),
    # node 3's = the root (0.6)
    assert c["p_repeat_with_experience"] == pytest.approx((0.1 + 0.5 + 0.1) / 3)
    assert c["p_repeat_without_experience"] == pytest.approx((0.6 + 0.5 + 0.6) / 3)
    assert c["compliance"] == pytest.approx(1.0 / 3)
    no_branch = hand_tree()
    no_branch = no_branch.replace(tau=np.full_like(no_branch.tau, NO_ROLLBACK))
    assert compliance(Agent(), None, no_branch) == {}


def test_children_never_repeat_a_path_nodes_tau_and_experience():
    t = hand_tree()
    exp = np.zeros((2, 4, 2), np.int32)
    exp[0, 1], exp[0, 2] = [5, 1], [7, 2]
    s = SimpleNamespace(t={"tau": t.tau, "parent": t.parent}, experience=exp,
                        cfg=SimpleNamespace(max_depth=2))
    # candidates below node 2 (path 2 -> 1 -> 0): (4, [7, 2]) is node 2's own, (2, [5, 1])
    # node 1's; (2, [7, 2]) and (4, [5, 1]) are new; below node 3 (path 3 -> 0) node 2's is new
    task = np.array([0, 0, 0, 0, 0])
    slot = np.array([2, 2, 2, 2, 3])
    tau = np.array([4, 2, 2, 4, 4])
    cand = np.array([[7, 2], [5, 1], [7, 2], [5, 1], [7, 2]])
    assert _new_on_path(s, task, slot, tau, cand).tolist() == [False, False, True, True, True]


def test_branch_starts_on_a_hand_built_tree():
    class Solver(Agent):
        max_steps = 8

        def distance_to_go(self, episodes, t):      # 5 moves from the start; after step 2 of
            acts = np.asarray(episodes.actions)     # the node-1 line the level is lost
            lost = (acts[:, 2] == 3) & (np.asarray(t) >= 4)
            return np.where(np.asarray(t) == 0, 5, np.where(lost, -1, 5 - np.asarray(t) // 2))

    d = branch_starts(Solver(), hand_tree())
    # branches: node 1 (tau 2, failed), node 2 (tau 4, solved), node 3 (tau 2, solved)
    assert d["branches"] == 3 and d["tau_mean"] == pytest.approx(8 / 3)
    assert d["tau_mean_successful"] == pytest.approx(3.0)
    assert d["steps_left_mean"] == pytest.approx(8 - 8 / 3)
    assert d["successful_start_quarters"] == [0, 1, 1, 0]        # tau/T = 0.5 and 0.25
    assert d["start_unsolvable"] == pytest.approx(1 / 3)          # node 2 starts lost (t=4)
    assert d["start_unsolvable_successful"] == pytest.approx(1 / 2)
    assert d["distance_at_tau_mean"] == pytest.approx(4.0)        # nodes 1, 3: 5 - 2 // 2
    assert d["distance_at_root_mean"] == pytest.approx(5.0)


def test_report_tables_of_the_new_diagnostics(tmp_path):
    import json
    from leafe_jax.pipeline.report import _branch_starts, _compliance, _following, _per_cost
    r = {"rollouts": 10, "solved": 4, "branches": 6, "repeat_rate": 0.5, "compliance": 0.25,
         "p_repeat_with_experience": 0.25, "p_repeat_without_experience": 0.5, "examples": 3}
    (tmp_path / "f.json").write_text(json.dumps({"rounds": [r], "after": r | {"repeat_rate": 0.1}}))
    text = "\n".join(_following(str(tmp_path / "f.json")))
    assert "| before round 1 | 4 / 10 | 6 | 50.0 % | 25.0 % / 50.0 % | 25.0 % | 3 |" in text
    assert "| after | 4 / 10 | 6 | 10.0 % |" in text and _following(str(tmp_path / "none")) == []
    s1 = {"rollback": {"task_env_steps": [10, 40], "task_solved": [True, False], "env_steps": 50,
                       "tokens": 500, "compliance": {"branches": 3, "repeat_rate": 1 / 3},
                       "branch_starts": {"branches": 3, "tau_mean": 2.0, "tau_mean_successful": None}}}
    cost = "\n".join(_per_cost(s1))
    assert "E = 5 / E = 10 / E = 20 / E = 40" in cost and "| rollback | 0.0 / 50.0 / 50.0 / 50.0 | 20.00 | 2000.0 |" in cost
    assert "| rollback | 3 | 33.3 % | - | - | - |" in "\n".join(_compliance(s1))
    assert "| rollback | 3 | 2.0 / - |" in "\n".join(_branch_starts(s1))


def test_root_length_counts_stopped_roots_at_the_step_limit():
    """GRPO's batches are sized by the base's root length. Roots: solved in 5 steps; failed
    at the limit (T = 10); stopped by periodic reflection after 4 steps (a deadlock: it would
    have run to the limit) -> (5 + 10 + 10) / 3, not (5 + 10 + 4) / 3."""
    from leafe_jax.leafe.diagnostics import root_length

    class Eps(NamedTuple):
        num_steps: np.ndarray
    z = np.zeros((3, 1), np.int32)
    tree = Tree(valid=np.ones((3, 1), bool), parent=z - 1, depth=z, order=z, tau=z - 1, reason=z,
                experience=np.zeros((3, 1, 2), np.int32), forbidden=np.zeros((3, 1, 4), bool),
                solved=np.array([[True], [False], [False]]), env_steps=np.array([[5], [10], [4]]),
                tokens=z, episodes=Eps(num_steps=np.array([[5], [10], [4]])))
    assert root_length(SimpleNamespace(max_steps=10), tree) == pytest.approx(25 / 3)
    assert root_length(SimpleNamespace(), tree) == pytest.approx(19 / 3)   # no step limit known

"""Early Experience world-model examples: next-observation targets on a hand-built level."""

import numpy as np

from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.baselines.early_experience import world_model_examples
from leafe_jax.envs.sokoban import Sokoban
from leafe_jax.envs.sokoban.level import stack_levels
from sokoban_cases import CORNER_TEXT, level

START, H, W = level(CORNER_TEXT)
U, D, L, R = 0, 1, 2, 3
# After each action from the start (interior 4x4, RAGEN symbols: _ floor, X box, P player,
# O target; codes 1 floor, 2 target, 4 box, 5 player):
NEXT = {
    U: ["__X_", "__P_", "____", "___O"],      # pushes the box up against the wall
    D: ["____", "__X_", "____", "__PO"],      # moves down
    L: ["____", "__X_", "_P__", "___O"],      # moves left
    R: ["____", "__X_", "___P", "___O"],      # moves right
}
CODE = {"_": 1, "O": 2, "X": 4, "P": 5}
FB = {U: E.FB_DEADLOCK, D: E.FB_MOVED, L: E.FB_MOVED, R: E.FB_MOVED}


def test_next_observation_targets_are_the_written_grids():
    env = Sokoban(H, W, 1, max_steps=10)
    demo = [R, U, U, L, D, D, L, D, R]        # the expert solution (9 steps)
    sols = np.full((1, 10), -1, np.int32)
    sols[0, :9] = demo
    rec, steps = world_model_examples(env, env.default_params, stack_levels([START]), sols,
                                      np.array([9]), num_alternatives=3)
    assert len(rec) == 9 * 3 == steps
    first = [i for i in range(len(rec)) if rec.step[i] == 0]
    assert len(first) == 3
    seen = set()
    for i in first:
        t, m = rec.tokens[i], rec.loss_mask[i]
        C = 16
        assert len(t) == 1 + C + 1 + 1 + C + 1 and m.sum() == C + 1
        a = int(t[1 + C + 1] - E.ACT0)
        assert a != R                          # never the expert's action
        want = [CODE[c] + E.CELL0 for row in NEXT[a] for c in row] + [FB[a]]
        np.testing.assert_array_equal(t[m], want)
        assert E.describe(t[: 1 + C + 1]).startswith("<bos> _ _ _ _ _ _ X _ _ _ P _ _ _ _ O <start>")
        seen.add(a)
    assert seen == {U, D, L}
    # a later state: the context is the demonstration so far (expert actions in it)
    later = [i for i in range(len(rec)) if rec.step[i] == 4][0]
    acts = [int(x) - E.ACT0 for x in rec.tokens[later][~rec.loss_mask[later]]
            if E.ACT0 <= x < E.ACT0 + 4]
    assert acts[:4] == demo[:4] and acts[4] != demo[4]


def test_solution_lengths_that_do_not_fit_are_refused():
    import pytest
    env = Sokoban(H, W, 1, max_steps=10)
    sols = np.zeros((1, 4), np.int32)
    with pytest.raises(ValueError, match=r"solution lengths must be in 1..4.*levels \[0\] have \[5\]"):
        world_model_examples(env, env.default_params, stack_levels([START]), sols, np.array([5]))

"""Diagnostic feedback: dead squares, frozen blocks, progress, bumps (hand-worked)."""

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.envs.sokoban import Sokoban, push_distance
from sokoban_cases import level

U, D, L, R = 0, 1, 2, 3


def steps(lvl, H, W, nb, actions):
    env = Sokoban(H, W, nb, max_steps=50)
    _, s = env.reset_to_level(lvl)
    f = jax.jit(env.step_env)
    infos = []
    for a in actions:
        _, s, _, _, info = f(None, s, jnp.int32(a), env.default_params)
        infos.append(jax.tree.map(lambda x: np.asarray(x).item(), info))
    return infos, s


def test_push_distances_hand_worked():
    lvl, H, W = level("""
|#######
|#@    #
|# $ . #
|#     #
|#######
""")
    dist = np.asarray(push_distance(np.asarray(lvl.grid).reshape(H, W)))
    X = 255
    # Only row 2 leads to the target: (2,2) -> (2,3) -> (2,4) is two pushes right.
    # (2,1) is against the left wall (a push right needs the player on the wall): dead.
    # Row 1 / row 3 cells could only be pushed down/up with the player on a wall: dead.
    # (2,5): a push left needs the player at (2,6), a wall: dead.
    expected = np.array([
        [X, X, X, X, X, X, X],
        [X, X, X, X, X, X, X],
        [X, X, 2, 1, 0, X, X],
        [X, X, X, X, X, X, X],
        [X, X, X, X, X, X, X]])
    assert dist.tolist() == expected.tolist()


def test_push_into_corner_is_a_dead_square():
    lvl, H, W = level("""
|######
|#    #
|# $@.#
|######
""")
    infos, s = steps(lvl, H, W, 1, [L, L])
    assert infos[0]["pushed"] and infos[0]["box_cell"] == 2 * W + 1
    assert infos[0]["dead_square"] and infos[0]["deadlock"]
    assert not infos[1]["pushed"] and infos[1]["bumped"]


def test_two_boxes_against_a_wall_are_frozen_not_dead():
    lvl, H, W = level("""
|#######
|#  @  #
|# $ . #
|#  $. #
|#######
""")
    infos, _ = steps(lvl, H, W, 2, [L, D])
    assert infos[1]["pushed"] and infos[1]["frozen"] and not infos[1]["dead_square"]
    assert infos[1]["deadlock"]


def test_boxes_on_targets_in_a_block_are_not_frozen():
    lvl, H, W = level("""
|######
|#    #
|# @$.#
|#   *#
|######
""")
    infos, _ = steps(lvl, H, W, 2, [R])
    assert infos[0]["box_on_target"] and infos[0]["solved"]
    assert not infos[0]["frozen"] and not infos[0]["deadlock"]


def test_progress_and_steps_since_progress():
    lvl, H, W = level("""
|########
|#@ $  .#
|#      #
|########
""")
    infos, s = steps(lvl, H, W, 1, [R, R, L, R, R])
    assert [i["moved"] for i in infos] == [True, True, True, True, True]
    assert [i["pushed"] for i in infos] == [False, True, False, False, True]
    assert [i["progress"] for i in infos] == [False, True, False, False, True]
    assert [i["steps_since_progress"] for i in infos] == [1, 0, 1, 2, 0]
    assert int(s.steps_since_progress) == 0


def test_feedback_off_still_steps_identically():
    lvl, H, W = level("""
|########
|#@ $  .#
|#      #
|########
""")
    on, off = Sokoban(H, W, 1), Sokoban(H, W, 1, feedback=False)
    _, s1 = on.reset_to_level(lvl)
    _, s2 = off.reset_to_level(lvl)
    for a in [R, R, D, R, U, R]:
        _, s1, r1, t1, _ = on.step_env(None, s1, jnp.int32(a), on.default_params)
        _, s2, r2, t2, info = off.step_env(None, s2, jnp.int32(a), off.default_params)
        assert info == {}
        assert np.array_equal(s1.grid, s2.grid) and int(s1.player) == int(s2.player)
        assert float(r1) == float(r2) and bool(t1) == bool(t2)

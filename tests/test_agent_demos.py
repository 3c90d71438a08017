"""BC demonstrations: alternatives classified from env feedback; examples well formed."""

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.interfaces.symbolic import encoding as E
from leafe_jax.interfaces.symbolic.demos import bc_examples, build_demos
from leafe_jax.envs.sokoban import GeneratedLevel, Sokoban
from sokoban_cases import level

U, D, L, R = 0, 1, 2, 3


def hand_demo():
    lvl, H, W = level("""
|#######
|#     #
|# @$ .#
|#     #
|#######
""")
    sol = np.array([R, R, -1, -1], np.int32)     # push, push: solved
    gen = GeneratedLevel(level=jax.tree.map(lambda x: jnp.asarray(x)[None], lvl),
                         solution=jnp.asarray(sol)[None], solution_len=jnp.array([2]),
                         num_pulls=jnp.array([2]), valid=jnp.array([True]))
    env = Sokoban(H, W, 1, max_steps=4)
    return env, gen, H, W


def test_alternatives_are_classified_from_feedback():
    env, gen, H, W = hand_demo()
    d = build_demos(env, env.default_params, gen)
    # step 0 (player (2,2), box (2,3)): up / down / left are plain moves; right is the demo
    assert d.bad[0, 0].tolist() == [0, 0, 0, 0]
    # step 1 (player (2,3), box (2,4)): walking back left is not a loop - the box has
    # moved, so the state differs; up / down are plain moves
    assert d.bad[0, 1].tolist() == [0, 0, 0, 0]
    assert d.feedback[0, :2].tolist() == [E.FB_START, E.FB_PUSHED]
    assert d.player[0, :2].tolist() == [2 * W + 2, 2 * W + 3]


def dead_demo():
    lvl, H, W = level("""
|#######
|#     #
|# $@  #
|#  .  #
|#######
""")
    # demo: up, left, push the box down to (3,2), walk round (left, down), push right onto (3,3)
    sol = np.array([U, L, D, L, D, R, -1], np.int32)
    gen = GeneratedLevel(level=jax.tree.map(lambda x: jnp.asarray(x)[None], lvl),
                         solution=jnp.asarray(sol)[None], solution_len=jnp.array([6]),
                         num_pulls=jnp.array([2]), valid=jnp.array([True]))
    return Sokoban(H, W, 1, max_steps=7), gen, H, W


def test_deadlock_loop_and_bump_alternatives():
    env, gen, H, W = dead_demo()
    d = build_demos(env, env.default_params, gen)
    # step 0, player (2,3): left pushes the box into column 1 - a dead square (a push right
    # would need the player on the wall); down and right are plain moves; up is the demo
    assert d.bad[0, 0].tolist() == [0, 0, E.R_DEADLOCK, 0]
    # step 1, player (1,3): up bumps the wall, down walks back to the previous state (loop),
    # left is the demo, right a plain move
    assert d.bad[0, 1].tolist() == [E.R_BUMP, E.R_LOOP, 0, 0]


def test_bc_examples_place_experience_and_mask_actions_only():
    env, gen, H, W = dead_demo()
    d = build_demos(env, env.default_params, gen)
    demo_tokens = [E.ACT0 + a for a in (U, L, D, L, D, R)]
    for start_share in (0.0, 1.0):
        ex = bc_examples(d, W, np.random.default_rng(0), exp_per_episode=3, start_share=start_share)
        assert [s for _, _, s in ex] == ["demo"] + ["demo+exp"] * 3
        plain = ex[0]
        assert plain[0][plain[1]].tolist() == demo_tokens       # loss on action tokens only
        for toks, mask, _ in ex[1:]:
            assert toks[mask].tolist() == demo_tokens           # targets stay the demo actions
            assert len(toks) == len(plain[0]) + E.EXP_LEN and mask.sum() == 6
            i = int(np.flatnonzero(toks == E.EXP)[0])
            seg = toks[i:i + E.EXP_LEN]
            a, r, c = seg[2] - E.ACT0, seg[3] - E.ROW0, seg[4] - E.COL0
            if start_share == 0.0:                              # right before its action
                t = int(np.flatnonzero(mask).tolist().index(i + E.EXP_LEN))
            else:                                               # after BOS, naming the state
                assert i == 1
                t = [k for k in range(6) if d.player[0, k] == r * W + c and d.bad[0, k, a] == seg[1]][0]
            assert seg[1] == d.bad[0, t, a] != 0                 # the classifier's reason
            assert r * W + c == d.player[0, t]

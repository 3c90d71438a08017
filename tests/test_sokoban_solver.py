"""Exact solver: hand-worked optima, unsolvable levels, and a brute-force cross-check."""

import collections

import jax
import numpy as np

from leafe_jax.envs.sokoban import generate_levels, get_preset, solve
from sokoban_cases import level


def brute_force_length(lvl, H, W, limit=200_000):
    """Plain BFS over (player, boxes) with no pruning: the independent reference."""
    grid = np.asarray(lvl.grid)
    wall = (grid & 1) != 0
    target = frozenset(np.flatnonzero(grid & 2).tolist())
    start = (int(lvl.player), frozenset(np.flatnonzero(grid & 4).tolist()))
    seen, q = {start}, collections.deque([(start, 0)])
    while q:
        (p, boxes), d = q.popleft()
        if boxes == target:
            return d
        for delta in (-W, W, -1, 1):
            n1 = p + delta
            if wall[n1]:
                continue
            if n1 in boxes:
                n2 = n1 + delta
                if wall[n2] or n2 in boxes:
                    continue
                nxt = (n1, (boxes - {n1}) | {n2})
            else:
                nxt = (n1, boxes)
            if nxt not in seen:
                seen.add(nxt)
                q.append((nxt, d + 1))
        assert len(seen) < limit
    return None


def test_hand_worked_optimum():
    lvl, H, W = level("""
|#######
|#.$  @#
|#######
""")
    res = solve(lvl, H, W)
    assert res.solved and res.actions == (2, 2, 2)       # L L L


def test_detour_optimum():
    # Push right three times, walk round (up, right), push down: R R R U R D = 6 moves.
    # Pushing down first costs 8 (U R D L D R R R).
    lvl, H, W = level("""
|#######
|#     #
|#@$   #
|#    .#
|#######
""")
    res = solve(lvl, H, W)
    assert res.solved and res.actions == (3, 3, 3, 0, 3, 1)
    assert res.length == brute_force_length(lvl, H, W)


def test_unsolvable_and_node_limit():
    corner, H, W = level("""
|#####
|#$ .#
|#  @#
|#####
""")
    assert solve(corner, H, W).status == "unsolvable"
    # every push only makes it worse: box against the top wall, target below it
    stuck, H2, W2 = level("""
|######
|# $  #
|#@   #
|#  . #
|######
""")
    assert solve(stuck, H2, W2).status == "unsolvable"
    big, H3, W3 = level("""
|##########
|#@       #
|# $  $   #
|#   ##   #
|# $    $ #
|#  ....  #
|##########
""")
    assert solve(big, H3, W3, max_nodes=5).status == "node_limit"


def test_matches_brute_force_on_generated_levels():
    p = get_preset("6x6_2box")
    g = generate_levels(jax.random.key(9), 10, p.generator, chunk=256)
    for i in range(10):
        lvl = jax.tree.map(lambda x: np.asarray(x[i]), g.level)
        assert solve(lvl, 6, 6).length == brute_force_length(lvl, 6, 6)


def test_repeated_solves_compile_once():
    """The oracle reflector calls the solver thousands of times: its dead-square table must
    not compile per call (eagerly it did - 18 memory maps per call until LLVM ran out)."""
    from leafe_jax.envs.sokoban.level import push_distance
    from sokoban_cases import CORNER_TEXT

    lvl, H, W = level(CORNER_TEXT)
    before = push_distance._cache_size()
    for _ in range(3):
        solve(lvl, H, W)
    assert push_distance._cache_size() - before <= 1

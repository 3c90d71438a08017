"""Exact Sokoban solver (host side): A* in player moves over (player, boxes) states.

The heuristic - the sum over boxes of their push distance to the nearest target, other
boxes ignored - never overestimates and drops by at most one per step, so the first
solved state popped is optimal in moves (gym-sokoban counts moves, pushes included).
Pushes onto dead squares and into frozen 2x2 blocks are pruned: such states are
provably unsolvable, so pruning keeps optimality. Used to validate generated levels and
as the oracle reflector's ground truth.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools

import numpy as np

from leafe_jax.envs.sokoban import constants as C
from leafe_jax.envs.sokoban.level import Level, push_distance


@dataclasses.dataclass(frozen=True)
class SolveResult:
    status: str                      # "solved" | "unsolvable" | "node_limit"
    actions: tuple[int, ...] | None  # optimal action sequence (0..3) when solved
    nodes: int                       # states expanded

    @property
    def solved(self) -> bool:
        return self.status == "solved"

    @property
    def length(self) -> int | None:
        return None if self.actions is None else len(self.actions)


class _Problem:
    def __init__(self, level: Level, height: int, width: int):
        grid = np.asarray(level.grid, np.uint8).reshape(-1)
        if grid.shape[0] != height * width:
            raise ValueError(f"level has {grid.shape[0]} cells, expected {height}x{width}")
        self.W, self.n = width, height * width
        self.wall = (grid & C.BIT_WALL) != 0
        self.target = (grid & C.BIT_TARGET) != 0
        self.dist = np.asarray(push_distance(grid.reshape(height, width))).reshape(-1).astype(int)
        self.deltas = (-width, width, -1, 1)
        self.boxes0 = tuple(int(i) for i in np.flatnonzero(grid & C.BIT_BOX))
        self.player0 = int(level.player)

    def h(self, boxes) -> int:
        return sum(self.dist[b] for b in boxes)

    def frozen(self, boxes: frozenset, x: int) -> bool:
        """A 2x2 block of walls/boxes containing the box at ``x`` with a box off target."""
        W = self.W
        occ = lambda c: self.wall[c] or c in boxes
        off = lambda c: c in boxes and not self.target[c]
        for a in (-1, 1):
            for b in (-W, W):
                sq = (x, x + a, x + b, x + a + b)
                if all(occ(c) for c in sq[1:]) and any(off(c) for c in sq):
                    return True
        return False

    def successors(self, player: int, boxes: tuple):
        bset = frozenset(boxes)
        for a, d in enumerate(self.deltas):
            n1 = player + d
            if self.wall[n1]:
                continue
            if n1 in bset:
                n2 = n1 + d
                if self.wall[n2] or n2 in bset or self.dist[n2] == C.DEAD:
                    continue
                nb = (bset - {n1}) | {n2}
                if self.frozen(nb, n2):
                    continue
                yield a, n1, tuple(sorted(nb))
            else:
                yield a, n1, boxes


def solve(level: Level, height: int, width: int, *, max_nodes: int = 1_000_000) -> SolveResult:
    """Optimal (fewest moves) solution of an unbatched level, or why there is none."""
    prob = _Problem(level, height, width)
    start = (prob.player0, prob.boxes0)
    if any(prob.dist[b] == C.DEAD for b in prob.boxes0):
        return SolveResult("unsolvable", None, 0)
    is_goal = lambda boxes: all(prob.target[b] for b in boxes)
    tie = itertools.count()
    g_best = {start: 0}
    parent: dict = {start: None}
    heap = [(prob.h(prob.boxes0), 0, next(tie), start)]
    nodes = 0
    while heap:
        f, g, _, state = heapq.heappop(heap)
        if g > g_best[state]:
            continue
        if is_goal(state[1]):
            actions = []
            while parent[state] is not None:
                state, a = parent[state]
                actions.append(a)
            return SolveResult("solved", tuple(reversed(actions)), nodes)
        nodes += 1
        if nodes > max_nodes:
            return SolveResult("node_limit", None, nodes)
        for a, p2, b2 in prob.successors(*state):
            nxt = (p2, b2)
            if g + 1 < g_best.get(nxt, 1 << 30):
                g_best[nxt] = g + 1
                parent[nxt] = (state, a)
                heapq.heappush(heap, (g + 1 + prob.h(b2), g + 1, next(tie), nxt))
    return SolveResult("unsolvable", None, nodes)

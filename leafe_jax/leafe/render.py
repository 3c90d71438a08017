"""Rollback trees as text: the level, then one line per rollout, indented by depth."""

from __future__ import annotations

import numpy as np

from leafe_jax.agent import encoding as E
from leafe_jax.envs.sokoban.constants import ACTION_LETTERS


def render_tree(tree, task: int, width: int) -> str:
    ep = tree.episodes
    grid = np.asarray(ep.states.grid[task, 0, 0])
    player = int(ep.states.player[task, 0, 0])
    from leafe_jax.envs.sokoban.level import Level, level_to_ascii
    height = grid.shape[0] // width
    lines = [f"task {task}: {int(tree.valid[task].sum())} rollouts, "
             f"{'solved' if (tree.valid[task] & tree.solved[task]).any() else 'not solved'}",
             level_to_ascii(Level(grid=grid, player=np.int32(player)), height, width)]
    kids: dict[int, list[int]] = {}
    for n in np.flatnonzero(tree.valid[task]):
        kids.setdefault(int(tree.parent[task, n]), []).append(int(n))

    def line(n, indent):
        acts = np.asarray(ep.actions[task, n])
        start = int(ep.start[task, n])
        steps = int(ep.num_steps[task, n])
        own = "".join(ACTION_LETTERS[a] for a in acts[start:steps] if a >= 0)
        tau = int(tree.tau[task, n])
        head = "root" if tau < 0 and tree.parent[task, n] < 0 else (
            f"tau={tau} {E.describe(tree.experience[task, n])}" if tau >= 0 else
            f"retry {E.describe(tree.experience[task, n])}")
        mark = "SOLVED" if tree.solved[task, n] else "failed"
        lines.append(f"{'  ' * indent}#{int(tree.order[task, n])} {head} | {own} | {mark} "
                     f"after {steps} steps")
        for c in kids.get(n, []):
            line(c, indent + 1)

    for r in kids.get(-1, []):
        line(r, 0)
    return "\n".join(lines)

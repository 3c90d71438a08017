"""Rollback trees as text: the task, then one line per rollout, indented by depth."""

from __future__ import annotations

import jax
import numpy as np

from leafe_jax.leafe.tree import NO_PARENT, NO_ROLLBACK, Tree


def render_tree(interface, tree: Tree, task: int) -> str:
    ep = tree.episodes
    lines = [f"task {task}: {int(tree.valid[task].sum())} rollouts, "
             f"{'solved' if (tree.valid[task] & tree.solved[task]).any() else 'not solved'}",
             interface.describe_task(ep, task)]
    kids: dict[int, list[int]] = {}
    for n in np.flatnonzero(tree.valid[task]):
        kids.setdefault(int(tree.parent[task, n]), []).append(int(n))

    def line(n, indent):
        one = jax.tree.map(lambda x: x[task, n], ep)
        tau = int(tree.tau[task, n])
        exp = interface.describe_experience(tree.experience[task, n])
        head = ("root" if tau == NO_ROLLBACK and tree.parent[task, n] == NO_PARENT else
                f"tau={tau} {exp}" if tau != NO_ROLLBACK else f"retry {exp}")
        mark = "SOLVED" if tree.solved[task, n] else "failed"
        lines.append(f"{'  ' * indent}#{int(tree.order[task, n])} {head} | "
                     f"{interface.describe_rollout(one)} | {mark} after {int(one.num_steps)} steps")
        for c in kids.get(n, []):
            line(c, indent + 1)

    for r in kids.get(NO_PARENT, []):
        line(r, 0)
    return "\n".join(lines)


def example_tasks(tree: Tree, n: int = 3) -> list[int]:
    """The tasks with the most rollouts that ended solved by a child, else the first ones."""
    score = tree.valid.sum(1) + 100 * (tree.valid & tree.solved & (tree.parent != NO_PARENT)).any(1)
    return list(np.argsort(-score, kind="stable")[:n])

"""The Stage-1 search tree: ``[B, N]`` fixed-size arrays with parent pointers (mctx's layout).

One tree per task, ``N`` node slots (``N = K``, the attempt budget); slot ``ROOT_INDEX`` is
the task's first rollout. A node is one rollout: a root, a rollback branch (``tau`` = the
step it was restarted from) or, for iterative refinement, a retry from the start (a parent
but ``tau == NO_ROLLBACK``). Unused slots have ``valid = False``. ``episodes`` holds every
rollout's whole-episode record as whatever pytree the agent interface uses (env states
included), so a rollback is a gather and a saved tree can be re-branched or distilled later.

Queries: ``solved_within`` (solved by the first k rollouts), ``tree_stats``,
``path_to_root``; ``save_tree`` / ``load_tree`` for any episode pytree (``.npz``, arrays by
their key path).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import struct

ROOT_INDEX = 0        # slot of each task's first rollout
NO_PARENT = -1        # parent of a root
NO_ROLLBACK = -1      # tau of a rollout that started from step 0 (root or retry)


@struct.dataclass
class Tree:
    valid: np.ndarray        # bool [B, N]
    parent: np.ndarray       # int32 [B, N]  node slot of the parent; NO_PARENT for roots
    depth: np.ndarray        # int32 [B, N]
    order: np.ndarray        # int32 [B, N]  rollout index within the task's budget
    tau: np.ndarray          # int32 [B, N]  branch point; NO_ROLLBACK for rollouts from step 0
    reason: np.ndarray       # int32 [B, N]  reason code of the experience that made the node
    experience: np.ndarray   # int32 [B, N, ...]  that experience (interface's encoding)
    forbidden: np.ndarray    # bool [B, N, A]  actions masked at tau (mask ablation)
    solved: np.ndarray       # bool [B, N]
    env_steps: np.ndarray    # int32 [B, N]  env steps this rollout took itself
    tokens: np.ndarray       # int32 [B, N]  tokens the policy processed (prefill + turns)
    episodes: object         # [B, N, ...] whole-episode records (the interface's pytree)

    @property
    def is_branch(self) -> np.ndarray:
        """bool [B, N]: rollback branches (not roots, not retries)."""
        return self.valid & (self.tau != NO_ROLLBACK)

    @property
    def is_root(self) -> np.ndarray:
        return self.valid & (self.parent == NO_PARENT)


ARRAY_FIELDS = ("valid", "parent", "depth", "order", "tau", "reason", "experience", "forbidden",
                "solved", "env_steps", "tokens")


def solved_within(tree: Tree) -> np.ndarray:
    """bool [B, K]: task solved by one of its first k+1 rollouts."""
    K = tree.valid.shape[1]
    hit = np.zeros(tree.valid.shape, bool)
    b, n = np.nonzero(tree.valid & tree.solved)
    hit[b, tree.order[b, n]] = True
    return np.logical_or.accumulate(hit, axis=1)[:, :K]


def tree_stats(tree: Tree) -> dict:
    v = tree.valid
    br = tree.is_branch
    kids = (tree.parent[:, None, :] == np.arange(v.shape[1])[None, :, None]) & br[:, None, :]
    return {"tasks": int(v.shape[0]), "rollouts": int(v.sum()),
            "branches_per_task": float(br.sum(1).mean()),
            "max_depth_reached": int(tree.depth[v].max(initial=0)),
            "mean_depth": float(tree.depth[v].mean()) if v.any() else 0.0,
            "successful_branches": int((br & tree.solved).sum()),
            "branch_success_rate": float((br & tree.solved).sum() / max(1, br.sum())),
            "root_success_rate": float(tree.solved[:, ROOT_INDEX].mean()),
            "solved_within_K": float(solved_within(tree)[:, -1].mean()),
            "env_steps": int(tree.env_steps[v].sum()), "tokens": int(tree.tokens[v].sum()),
            "children_per_expanded_node": float(kids.sum(2)[kids.sum(2) > 0].mean())
            if kids.any() else 0.0}


def path_to_root(tree: Tree, task: int, node: int) -> list[int]:
    """Node slots from ``node`` up to its root (both included)."""
    if not tree.valid[task, node]:
        raise ValueError(f"task {task}: node {node} is not a rollout of the tree")
    path = [int(node)]
    while tree.parent[task, path[-1]] != NO_PARENT:
        path.append(int(tree.parent[task, path[-1]]))
        if len(path) > tree.valid.shape[1]:
            raise ValueError(f"task {task}: the parent pointers of node {node} form a cycle")
    return path


def _key(path) -> str:
    return "episodes" + jax.tree_util.keystr(path)


def save_tree(tree: Tree, path) -> None:
    """``.npz`` with every tree array by name and every episode leaf by its key path (written
    to a temporary file and renamed: a killed save leaves no half-written tree)."""
    out = {k: np.asarray(getattr(tree, k)) for k in ARRAY_FIELDS}
    for p, x in jax.tree_util.tree_flatten_with_path(tree.episodes)[0]:
        out[_key(p)] = np.asarray(x)
    tmp = f"{path}.tmp.npz"
    np.savez_compressed(tmp, **out)
    os.replace(tmp, path)


def load_tree(path, episodes_like, *, as_jax: bool = True) -> Tree:
    """A tree saved by ``save_tree``; ``episodes_like`` is any pytree with the structure of
    the saved episodes (the agent interface's ``episode_like()``)."""
    try:
        with np.load(path) as z:
            d = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: unreadable tree file ({type(e).__name__}: {e})") from None
    flat, treedef = jax.tree_util.tree_flatten_with_path(episodes_like)
    missing = [k for k in ARRAY_FIELDS if k not in d] + [_key(p) for p, _ in flat if _key(p) not in d]
    if missing:
        raise ValueError(f"{path}: not a tree of this agent interface (missing {missing[:5]})")
    conv = jax.numpy.asarray if as_jax else (lambda x: x)
    episodes = jax.tree_util.tree_unflatten(treedef, [conv(d[_key(p)]) for p, _ in flat])
    return Tree(**{k: d[k] for k in ARRAY_FIELDS}, episodes=episodes)

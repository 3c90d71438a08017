"""Stage 1: reflective rollback trees, and the two alternatives at equal budget.

``explore(policy, env, params, levels, key, cfg)`` runs, for B tasks at once:

* ``rollback`` (LEAFE): a root rollout per task; each round, the failed nodes of the last
  round (depth < D) are reflected on (batched), each yields up to M children (distinct tau
  candidates); a child starts from the parent's env state at tau (a gather), re-prefills
  the parent's context before turn tau plus the experience, samples a'_tau and continues.
  Children are taken breadth-first until each task has spent K rollouts (root included).
  All tasks' children of a round run as one batched on-device rollout.
* ``independent``: K fresh rollouts per task.
* ``refine``: K attempts from the start; attempt k+1 carries the reflection on attempt k's
  failure as an experience right after BOS ("a later state to avoid").

The result is a ``Tree`` of fixed-size arrays ``[B, N = K]`` (unused slots ``valid = False``),
whose ``episodes`` are whole-episode records (``Episode``) of every rollout. ``order`` is
the rollout's index in its task's budget, so "solved within k" reads off the tree for every
strategy. Env steps and policy tokens are counted per node.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.agent import encoding as E
from leafe_jax.agent.rollout import cache_size_for, rollout
from leafe_jax.leafe.episode import Episode, branch_inputs, from_trajectory, stitch
from leafe_jax.leafe.reflect import feedback_reflect

STRATEGIES = ("rollback", "independent", "refine")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExploreConfig:
    strategy: str = "rollback"
    budget: int = 8               # K: rollouts per task, root included
    max_depth: int = 3            # D: nested rollbacks
    children: int = 2             # M: children per failed node
    use_experience: bool = True   # ablation: experience in context at tau
    use_mask: bool = False        # ablation: forbid the original action at tau
    reflect_every: int = 0        # R: also reflect on every R-step window (0: only on failure)
    temperature: float = 1.0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown Stage-1 strategy {self.strategy!r}; known: {STRATEGIES}")
        for f in ("budget", "max_depth", "children"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f} must be > 0, got {getattr(self, f)}")
        if self.reflect_every < 0:
            raise ValueError(f"reflect_every must be >= 0, got {self.reflect_every}")
        if not (self.use_experience or self.use_mask) and self.strategy == "rollback":
            raise ValueError("rollback needs the experience, the mask, or both")


class Tree(NamedTuple):
    valid: np.ndarray        # bool [B, N]
    parent: np.ndarray       # int32 [B, N]  (-1 for roots)
    depth: np.ndarray        # int32 [B, N]
    order: np.ndarray        # int32 [B, N]  rollout index within the task's budget
    tau: np.ndarray          # int32 [B, N]  branch point (-1 for roots)
    reason: np.ndarray       # int32 [B, N]  reason token of the experience that made the node
    experience: np.ndarray   # int32 [B, N, EXP_LEN]
    forbidden: np.ndarray    # bool [B, N, 4]
    solved: np.ndarray       # bool [B, N]
    env_steps: np.ndarray    # int32 [B, N]  steps this rollout took itself
    tokens: np.ndarray       # int32 [B, N]  tokens the policy processed (prefill + turns)
    episodes: Episode        # [B, N, ...] whole-episode records (device arrays)


def solved_within(tree: Tree) -> np.ndarray:
    """bool [B, K]: task solved by one of its first k+1 rollouts."""
    K = tree.valid.shape[1]
    hit = np.zeros(tree.valid.shape, bool)
    b, n = np.nonzero(tree.valid & tree.solved)
    hit[b, tree.order[b, n]] = True
    return np.logical_or.accumulate(hit, axis=1)[:, :K]


def tree_stats(tree: Tree) -> dict:
    v = tree.valid
    br = v & (tree.tau >= 0)                      # rollback branches (not roots or retries)
    kids = (tree.parent[:, None, :] == np.arange(v.shape[1])[None, :, None]) & br[:, None, :]
    return {"tasks": int(v.shape[0]), "rollouts": int(v.sum()),
            "branches_per_task": float(br.sum(1).mean()),
            "max_depth_reached": int(tree.depth[v].max(initial=0)),
            "mean_depth": float(tree.depth[v].mean()) if v.any() else 0.0,
            "successful_branches": int((br & tree.solved).sum()),
            "branch_success_rate": float((br & tree.solved).sum() / max(1, br.sum())),
            "root_success_rate": float(tree.solved[:, 0].mean()),
            "solved_within_K": float(solved_within(tree)[:, -1].mean()),
            "env_steps": int(tree.env_steps[v].sum()), "tokens": int(tree.tokens[v].sum()),
            "children_per_expanded_node": float(kids.sum(2)[kids.sum(2) > 0].mean())
            if kids.any() else 0.0}


def _rank_within(task: np.ndarray) -> np.ndarray:
    """Position of each entry among the entries of its task (``task`` sorted)."""
    return np.arange(len(task)) - np.searchsorted(task, task)


def _bucket(n: int) -> int:
    return max(8, 1 << math.ceil(math.log2(max(n, 1))))


def _pad_rows(x, rows):
    return jnp.concatenate([x, jnp.repeat(x[:1], rows - x.shape[0], 0)]) if rows > x.shape[0] else x


def _gather(tree_eps: Episode, flat_idx) -> Episode:
    return jax.tree.map(lambda x: x[flat_idx], tree_eps)


@jax.jit
def _scatter(tree_eps: Episode, flat_idx, new: Episode) -> Episode:
    return jax.tree.map(lambda x, y: x.at[flat_idx].set(y.astype(x.dtype)), tree_eps, new)


def explore(model, env, params, levels, key, cfg: ExploreConfig, *, reflector=None,
            progress: bool = True) -> Tree:
    """Stage-1 exploration of B tasks (``levels``: a batched ``Level``)."""
    from tqdm.auto import tqdm

    B = int(np.shape(levels.player)[0])
    if B == 0:
        raise ValueError("no tasks to explore")
    K, T = cfg.budget, params.max_steps_in_episode
    C = (env.height - 2) * (env.width - 2)
    S = cache_size_for(env, 1 + (cfg.max_depth + 1) * E.EXP_LEN, T)
    task_keys = jax.random.split(key, B)
    reflect = reflector or (lambda ep: feedback_reflect(
        ep, width=env.width, num_candidates=cfg.children, every=cfg.reflect_every))
    _, s0 = jax.vmap(lambda lv: env.reset_to_level(lv, params))(levels)

    t = {k: np.zeros((B, K), np.int32) for k in ("parent", "depth", "order", "tau", "reason",
                                                  "env_steps", "tokens")}
    t["parent"][:] = -1
    t["tau"][:] = -1
    valid = np.zeros((B, K), bool)
    solved = np.zeros((B, K), bool)
    experience = np.zeros((B, K, E.EXP_LEN), np.int32)
    forbidden = np.zeros((B, K, 4), bool)
    used = np.zeros(B, np.int32)
    bar = tqdm(total=B * K, desc=f"stage 1 ({cfg.strategy})", disable=not progress)

    def run(task, parent_eps, tau, exp, forb, start_exp=None):
        """One batched rollout round for rows ``task`` (padded to a bucket); -> Episodes."""
        R = len(task)
        rows = _bucket(R)
        idx = np.concatenate([task, np.full(rows - R, task[0])])
        order = used[task] + _rank_within(task)           # the slot each rollout will take
        keys = jax.vmap(jax.random.fold_in)(task_keys[idx], jnp.asarray(
            np.concatenate([order, np.zeros(rows - R, np.int32)])))
        if parent_eps is None:                      # from the start
            states = jax.tree.map(lambda x: x[idx], s0)
            if start_exp is None:
                prefix = np.full((rows, 1), E.BOS, np.int32)
                plen = np.ones(rows, np.int32)
            else:
                se = np.concatenate([start_exp, np.zeros((rows - R, E.EXP_LEN), np.int32)])
                has = se[:, 0] == E.EXP
                prefix = np.concatenate([np.full((rows, 1), E.BOS, np.int32), se], 1)
                plen = np.where(has, 1 + E.EXP_LEN, 1).astype(np.int32)
            traj = rollout(model, env, params, states, keys, num_steps=T, prefix=prefix,
                           prefix_len=plen, temperature=cfg.temperature, cache_size=S)
            eps = from_trajectory(traj, S)
        else:
            pe = jax.tree.map(lambda x: _pad_rows(x, rows), parent_eps)
            tau_p = jnp.asarray(np.concatenate([tau, np.zeros(rows - R, np.int32)]))
            states, prefix, plen, fb = branch_inputs(pe, tau_p, C)
            longest = int(jnp.max(plen))
            P = min(int(-(-longest // 64) * 64), S - E.turn_length(env.height, env.width) - E.EXP_LEN)
            assert longest <= P, (longest, P, S)
            exp_p = np.concatenate([exp, np.zeros((rows - R, E.EXP_LEN), np.int32)])
            forb_p = np.concatenate([forb, np.zeros((rows - R, 4), bool)])
            traj = rollout(model, env, params, states, keys, num_steps=T, prefix=prefix[:, :P],
                           prefix_len=plen, first_feedback=fb,
                           experience=exp_p if cfg.use_experience else None,
                           forbidden=forb_p if cfg.use_mask else None,
                           temperature=cfg.temperature, cache_size=S)
            eps = stitch(pe, traj, tau_p)
        eps = jax.tree.map(lambda x: x[:R], eps)
        return eps, np.asarray(traj.num_steps)[:R], np.asarray(traj.token_len)[:R]

    def record(task, eps, steps, toks, tree_eps, **fields):
        """Store rollouts of ``task`` (sorted; a task may repeat) in its next free slots."""
        slot = used[task] + _rank_within(task)
        flat = task * K + slot
        tree_eps = _scatter(tree_eps, jnp.asarray(flat), eps)
        valid[task, slot] = True
        solved[task, slot] = np.asarray(eps.solved)
        t["order"][task, slot] = slot
        t["env_steps"][task, slot] = steps
        t["tokens"][task, slot] = toks
        for k, v in fields.items():
            (t[k] if k in t else {"experience": experience, "forbidden": forbidden}[k])[task, slot] = v
        np.add.at(used, task, 1)
        bar.update(len(task))
        return tree_eps, flat

    all_tasks = np.arange(B)
    if cfg.strategy == "independent":
        tree_eps = None
        for _ in range(K):
            eps, steps, toks = run(all_tasks, None, None, None, None)
            if tree_eps is None:
                tree_eps = jax.tree.map(lambda x: jnp.zeros((B * K,) + x.shape[1:], x.dtype), eps)
            tree_eps, _ = record(all_tasks, eps, steps, toks, tree_eps)
    elif cfg.strategy == "refine":
        tree_eps, start_exp = None, np.zeros((B, E.EXP_LEN), np.int32)
        for k in range(K):
            eps, steps, toks = run(all_tasks, None, None, None, None, start_exp=start_exp)
            if tree_eps is None:
                tree_eps = jax.tree.map(lambda x: jnp.zeros((B * K,) + x.shape[1:], x.dtype), eps)
            tree_eps, _ = record(all_tasks, eps, steps, toks, tree_eps,
                                 experience=start_exp, depth=np.full(B, k),
                                 parent=np.full(B, k - 1))
            refl = reflect(eps)
            new = np.asarray(refl.experience[:, 0])
            # a success needs no reflection; a failure with nothing to say keeps the last one
            start_exp = np.where((np.asarray(refl.tau[:, 0]) >= 0)[:, None], new, start_exp)
    else:
        eps, steps, toks = run(all_tasks, None, None, None, None)
        tree_eps = jax.tree.map(lambda x: jnp.zeros((B * K,) + x.shape[1:], x.dtype), eps)
        tree_eps, frontier = record(all_tasks, eps, steps, toks, tree_eps)
        for d in range(1, cfg.max_depth + 1):
            fr_eps = _gather(tree_eps, jnp.asarray(frontier))
            refl = jax.device_get(reflect(fr_eps))                   # [F, M]
            f_task, f_slot = frontier // K, frontier % K
            M = refl.tau.shape[1]
            ok = (refl.tau >= 0) & ~solved[f_task, f_slot][:, None]
            # breadth-first within each task: frontier order, then candidate rank
            c_task = np.repeat(f_task, M)[ok.reshape(-1)]
            c_par = np.repeat(frontier, M)[ok.reshape(-1)]
            c_tau = refl.tau.reshape(-1)[ok.reshape(-1)]
            c_exp = refl.experience.reshape(-1, E.EXP_LEN)[ok.reshape(-1)]
            c_forb = refl.forbidden.reshape(-1, 4)[ok.reshape(-1)]
            c_reason = refl.reason.reshape(-1)[ok.reshape(-1)]
            srt = np.argsort(c_task, kind="stable")
            c_task, c_par, c_tau, c_exp, c_forb, c_reason = (
                x[srt] for x in (c_task, c_par, c_tau, c_exp, c_forb, c_reason))
            keep = _rank_within(c_task) < (K - used[c_task])
            if not keep.any():
                break
            c_task, c_par, c_tau, c_exp, c_forb, c_reason = (
                x[keep] for x in (c_task, c_par, c_tau, c_exp, c_forb, c_reason))
            parent_eps = _gather(tree_eps, jnp.asarray(c_par))
            eps, steps, toks = run(c_task, parent_eps, c_tau, c_exp, c_forb)
            tree_eps, frontier = record(c_task, eps, steps, toks, tree_eps, parent=c_par % K,
                                        depth=np.full(len(c_task), d), tau=c_tau, reason=c_reason,
                                        experience=c_exp, forbidden=c_forb)
    bar.close()
    return Tree(valid=valid, parent=t["parent"], depth=t["depth"], order=t["order"], tau=t["tau"],
                reason=t["reason"], experience=experience, forbidden=forbidden, solved=solved,
                env_steps=t["env_steps"], tokens=t["tokens"],
                episodes=jax.tree.map(lambda x: x.reshape((B, K) + x.shape[1:]), tree_eps))


def save_tree(tree: Tree, path) -> None:
    """``.npz`` with every array by name (episode fields as ``ep.<field>[.<sub>]``)."""
    import dataclasses as dc
    out = {k: np.asarray(v) for k, v in tree._asdict().items() if k != "episodes"}
    ep = tree.episodes
    for f in Episode._fields:
        v = getattr(ep, f)
        if f == "states":
            out |= {f"ep.states.{x.name}": np.asarray(getattr(v, x.name)) for x in dc.fields(v)}
        elif f == "info":
            out |= {f"ep.info.{k}": np.asarray(x) for k, x in v.items()}
        else:
            out[f"ep.{f}"] = np.asarray(v)
    np.savez_compressed(path, **out)


def load_tree(path) -> Tree:
    from leafe_jax.envs.sokoban.env import EnvState
    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    states = EnvState(**{k[len("ep.states."):]: jnp.asarray(v) for k, v in d.items()
                         if k.startswith("ep.states.")})
    info = {k[len("ep.info."):]: jnp.asarray(v) for k, v in d.items() if k.startswith("ep.info.")}
    ep = Episode(states=states, info=info, **{f: jnp.asarray(d[f"ep.{f}"]) for f in Episode._fields
                                              if f not in ("states", "info")})
    return Tree(**{k: d[k] for k in Tree._fields if k != "episodes"}, episodes=ep)

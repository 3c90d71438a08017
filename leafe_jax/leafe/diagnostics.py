"""What a Stage-1 tree says about *why* a strategy wins or loses: budgets per env step and
per policy token, and whether the policy follows the experience it is given.

* ``first_success_cost``: per task, the env steps and policy tokens spent up to and
  including its first successful rollout (by budget order; all it spent when unsolved), so
  strategies compare at equal interaction cost, not only at equal rollout counts.
* ``compliance``: for every rollback branch, did the revised action a'_tau repeat the
  failed parent's a_tau? Sampled (``repeat_rate``) and, when the interface exposes the
  policy's action distribution (``action_distribution``), exactly: P(a_tau | h_tau with the
  experience) against the policy's own P(a_tau | h_tau) in the parent's context (without
  it). ``compliance`` = the drop from one to the other - 0 when experience is ignored.
* ``branch_starts``: where branches restart - tau, the steps left T - tau, and (when the
  interface has an exact ``distance_to_go``) the optimal distance to the goal at the branch
  start against the root's start, and how many branches start from a state that can no
  longer be solved (the reflector named a step after the fatal one).
"""

from __future__ import annotations

import jax
import numpy as np

from leafe_jax.leafe.tree import ROOT_INDEX, Tree


def first_success_cost(tree: Tree) -> dict:
    """``{"solved": bool [B], "env_steps": int [B], "tokens": int [B]}`` spent per task up to
    its first success (by ``order``), or in total when it was never solved."""
    K = tree.valid.shape[1]
    first = np.where(tree.valid & tree.solved, tree.order, K).min(1)          # K: never
    upto = tree.valid & (tree.order <= first[:, None])
    return {"solved": first < K, "env_steps": (tree.env_steps * upto).sum(1),
            "tokens": (tree.tokens * upto).sum(1)}


def cost_from_stats(st: dict) -> dict:
    """``first_success_cost``'s per-task arrays back from a Stage-1 ``stats.json``."""
    return {"solved": np.asarray(st["task_solved"], bool), "env_steps": np.asarray(st["task_env_steps"])}


def solved_within_env_steps_per_task(cost: dict, budget: int) -> np.ndarray:
    """Per task: solved with at most ``budget`` env steps spent on it (bool [B])."""
    return cost["solved"] & (cost["env_steps"] <= budget)


def solved_within_env_steps(cost: dict, budgets) -> list[float]:
    """Fraction of tasks solved with at most ``E`` env steps spent on them, per ``E``."""
    return [float(solved_within_env_steps_per_task(cost, e).mean()) for e in budgets]


def compliance(interface, policy, tree: Tree, temperature: float = 1.0) -> dict:
    """Branch-level following of the experience (see the module docstring); ``{}`` for a
    tree without rollback branches."""
    b, n = np.nonzero(tree.is_branch)
    if not len(b):
        return {}
    p, tau = tree.parent[b, n], tree.tau[b, n]
    ep = jax.tree.map(np.asarray, tree.episodes)
    branch = jax.tree.map(lambda x: x[b, n], ep)
    parent = jax.tree.map(lambda x: x[b, p], ep)
    one = lambda e, r: jax.tree.map(lambda x: x[r], e)
    a_old = np.array([interface.action(one(parent, r), int(tau[r])) for r in range(len(b))])
    a_new = np.array([interface.action(one(branch, r), int(tau[r])) for r in range(len(b))])
    out = {"branches": int(len(b)), "repeat_rate": float((a_new == a_old).mean()),
           "repeat_rate_successful": float((a_new == a_old)[tree.solved[b, n]].mean())
           if tree.solved[b, n].any() else None}
    with_p = None
    if hasattr(interface, "action_distribution"):     # (None: this policy cannot be scored)
        with_p = interface.action_distribution(policy, branch, tau, temperature)
    # a parent whose a_tau was no action at all (a text agent's invalid answer) has no
    # probability of repeating it: those branches are left out of the exact numbers
    if with_p is None:                  # (actions may be free text: nothing to score)
        return out
    scored = a_old < with_p.shape[1]
    if scored.any():
        rows = np.flatnonzero(scored)
        sub = lambda e: jax.tree.map(lambda x: x[rows], e)
        with_exp = with_p[rows, a_old[rows]]
        without = interface.action_distribution(policy, sub(parent), tau[rows], temperature)[
            np.arange(len(rows)), a_old[rows]]
        out |= {"scored_branches": int(len(rows)),
                "p_repeat_with_experience": float(with_exp.mean()),
                "p_repeat_without_experience": float(without.mean()),
                "compliance": float(without.mean() - with_exp.mean())}
    return out


def branch_starts(interface, tree: Tree) -> dict:
    """Where rollback branches start and what is left to do there (see the module
    docstring); ``{}`` for a tree without branches."""
    b, n = np.nonzero(tree.is_branch)
    if not len(b):
        return {}
    tau = tree.tau[b, n]
    ok = tree.solved[b, n]
    out = {"branches": int(len(b)), "tau_mean": float(tau.mean()),
           "tau_mean_successful": float(tau[ok].mean()) if ok.any() else None}
    T = getattr(interface, "max_steps", None)
    if T is not None:
        out["steps_left_mean"] = float((T - tau).mean())
        frac = np.clip(tau / T, 0, 1 - 1e-9)
        out["successful_start_quarters"] = np.bincount((frac[ok] * 4).astype(int),
                                                       minlength=4).tolist()
    if hasattr(interface, "distance_to_go"):
        ep = jax.tree.map(np.asarray, tree.episodes)
        at_tau = interface.distance_to_go(jax.tree.map(lambda x: x[b, n], ep), tau)
        at_root = interface.distance_to_go(jax.tree.map(lambda x: x[b, n], ep), np.zeros_like(tau))
        both = (at_tau >= 0) & (at_root >= 0) & (at_tau < 10 ** 6) & (at_root < 10 ** 6)
        out |= {"start_unsolvable": float((at_tau < 0).mean()),
                "start_unsolvable_successful": float((at_tau[ok] < 0).mean()) if ok.any() else None,
                "distance_at_tau_mean": float(at_tau[both].mean()) if both.any() else None,
                "distance_at_root_mean": float(at_root[both].mean()) if both.any() else None}
    return out


def interrupted(interface, tree) -> int:
    """Rollouts a periodic reflection stopped: failed before the step limit (an episode ends
    early only when solved, otherwise)."""
    T = getattr(interface, "max_steps", None)
    if T is None:
        return 0
    n = np.asarray(tree.episodes.num_steps)
    return int((tree.valid & ~tree.solved & (n < T)).sum())


def root_length(interface, tree) -> float:
    """The mean env steps of a root rollout had nothing stopped it - what a baseline that
    never stops a rollout (GRPO) pays per episode. A root a periodic reflection stopped had
    caused a deadlock, so it would have run to the step limit."""
    roots = tree.env_steps[:, ROOT_INDEX].astype(float)
    T = getattr(interface, "max_steps", None)
    if T is None:
        return float(roots.mean())
    n = np.asarray(tree.episodes.num_steps)[:, ROOT_INDEX]
    stopped = tree.valid[:, ROOT_INDEX] & ~tree.solved[:, ROOT_INDEX] & (n < T)
    return float(np.where(stopped, T, roots).mean())

"""Stage 2 data: behaviour rehearsal and experience-to-policy distillation from the trees.

For every *successful* rollout of a Stage-1 tree (host-side; datasets are built once):

* **rehearsal** (weight beta): context -> action for every step of a successful root, and
  for a successful branch only its steps *after* tau. The context is the branch's whole
  episode with every experience segment removed (the original prefix without experience
  plus its own continuation).
* **e2p** (weight 1): for a successful branch, the context h_tau *without* the experience
  -> a'_tau (``e2p_suffix``: a'_tau and every later action of the branch).

So a rehearsal-only dataset holds no (h_tau -> a'_tau) pair. Loss masks mark action tokens
only. Provenance: ``task_id`` (the task's index in its level pool), ``step`` (tau, -1 for
roots), ``source``.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from leafe_jax.agent import encoding as E
from leafe_jax.data.store import SftRecords
from leafe_jax.leafe.episode import strip_experience
from leafe_jax.leafe.explore import Tree


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillConfig:
    rehearsal: bool = True
    e2p: bool = True
    e2p_suffix: bool = False      # distil a'_tau and the rest of the branch, not a'_tau alone
    beta: float = 1.0             # weight of rehearsal examples (L = L_e2p + beta L_reh)
    dedupe: bool = True

    def __post_init__(self):
        if not (self.rehearsal or self.e2p):
            raise ValueError("a Stage-2 dataset needs rehearsal, e2p, or both")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


def stage2_examples(tree: Tree, cfg: DistillConfig, task_ids=None) -> tuple[SftRecords | None, dict]:
    """Examples from every successful rollout of ``tree``; ``(records or None, stats)``."""
    ep = jax.tree.map(np.asarray, tree.episodes)
    B, N = tree.valid.shape
    task_ids = np.arange(B) if task_ids is None else np.asarray(task_ids)
    toks, masks, src, weight, tid, step = [], [], [], [], [], []
    seen = set()
    stats = {"successful_roots": 0, "successful_branches": 0, "rehearsal": 0, "e2p": 0,
             "duplicates": 0}

    def add(t, m, source, w, b, s):
        if cfg.dedupe:
            key = (t.tobytes(), m.tobytes())
            if key in seen:
                stats["duplicates"] += 1
                return
            seen.add(key)
        toks.append(t), masks.append(m), src.append(source), weight.append(w)
        tid.append(task_ids[b]), step.append(s)
        stats[source] += 1

    for b, n in zip(*np.nonzero(tree.valid & tree.solved)):
        L, n_act = int(ep.token_len[b, n]), int(ep.num_steps[b, n])
        kept, idx = strip_experience(ep.tokens[b, n], L)
        pos = np.searchsorted(idx, ep.action_pos[b, n, :n_act])      # action t in ``kept``
        if not np.array_equal(idx[pos], ep.action_pos[b, n, :n_act]):
            raise AssertionError("an action token sits inside an experience segment")
        tau = int(tree.tau[b, n])
        branch = tau >= 0
        stats["successful_branches" if branch else "successful_roots"] += 1
        if cfg.rehearsal:
            first = tau + 1 if branch else 0
            if first < n_act:
                m = np.zeros(L, bool)[: pos[-1] + 1]
                m[pos[first:]] = True
                add(kept[: pos[-1] + 1], m, "rehearsal", cfg.beta, b, tau)
        if cfg.e2p and branch:
            last = n_act - 1 if cfg.e2p_suffix else tau
            m = np.zeros(pos[last] + 1, bool)
            m[pos[tau: last + 1]] = True
            add(kept[: pos[last] + 1], m, "e2p", 1.0, b, tau)
    if not toks:
        return None, stats
    assert all(not (t == E.EXP).any() for t in toks)
    return SftRecords.build(toks, masks, source=src, weight=np.asarray(weight, np.float32),
                            task_id=np.asarray(tid), step=np.asarray(step)), stats

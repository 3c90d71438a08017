"""Stage 2 data: behaviour rehearsal and experience-to-policy distillation from the trees.

For every *successful* rollout of a Stage-1 tree (host-side; datasets are built once):

* **rehearsal** (weight beta): context -> action for every step of a successful root, and
  for a successful branch only its steps *after* tau. The context is the branch's whole
  episode with every experience segment removed (the original prefix without experience
  plus its own continuation).
* **e2p** (weight 1): for a successful branch, the context h_tau *without* the experience
  -> a'_tau (``e2p_suffix``: a'_tau and every later action of the branch) - only where the
  revised action differs from the failed parent's a_tau (``changed_only``): a branch that
  repeated a_tau and still succeeded teaches no correction (its steps stay in rehearsal).

``loss`` = ``per_dataset`` trains L = L_e2p + beta * L_reh, each a mean over its own action
tokens (``train.losses``); ``pooled`` (the ablation) is one mean over all action tokens with
rehearsal examples weighted beta.

So a rehearsal-only dataset holds no (h_tau -> a'_tau) pair. Loss masks mark action tokens
only. Provenance: ``task_id`` (the task's index in its level pool), ``step`` (tau, -1 for
roots), ``source``.
"""

from __future__ import annotations

import jax
import numpy as np

from leafe_jax.configs import config, field
from leafe_jax.data.store import SftRecords
from leafe_jax.leafe.tree import NO_ROLLBACK, Tree


@config
class DistillConfig:
    e2p_suffix: bool = False      # distil a'_tau and the rest of the branch, not a'_tau alone
    beta: float = field(1.0, lo=0, doc="weight of rehearsal examples (L = L_e2p + beta L_reh)")
    dedupe: bool = True
    changed_only: bool = field(True, doc="e2p only where a'_tau differs from the parent's a_tau")
    e2p_action_only: bool = field(False, doc="text agent: an e2p target keeps only its "
                                  "<action>...</action> (the reasoning, which may quote the "
                                  "experience, dropped); a symbolic action is its own answer")
    loss: str = field("per_dataset", choices=("per_dataset", "pooled"),
                      doc="per-dataset means (the paper's L_e2p + beta L_reh) or one pooled mean")

    def source_coefs(self) -> dict[str, float] | None:
        """``finetune``'s per-dataset coefficients (None: the pooled loss)."""
        return {"e2p": 1.0, "rehearsal": self.beta} if self.loss == "per_dataset" else None


def stage2_examples(interface, tree: Tree, cfg: DistillConfig, *, rehearsal: bool = True,
                    e2p: bool = True, task_ids=None) -> tuple[SftRecords | None, dict]:
    """Examples from every successful rollout of ``tree``, each encoded by the agent
    interface (``sft_example``: experience removed, loss on the chosen actions);
    ``(records or None, stats)``."""
    if not (rehearsal or e2p):
        raise ValueError("a Stage-2 dataset needs rehearsal, e2p, or both")
    ep = jax.tree.map(np.asarray, tree.episodes)
    B, N = tree.valid.shape
    task_ids = np.arange(B) if task_ids is None else np.asarray(task_ids)
    toks, masks, src, weight, tid, step = [], [], [], [], [], []
    seen = set()
    stats = {"successful_roots": 0, "successful_branches": 0, "rehearsal": 0, "e2p": 0,
             "duplicates": 0, "e2p_same_action": 0}
    quoting = hasattr(interface, "quotes_experience")
    if quoting:         # how often a'_tau's reasoning repeats the experience it was shown
        stats |= {"e2p_with_reasoning": 0, "e2p_quoting": 0}

    def encode(one, first, last, action_only=False) -> list:
        """The interface's examples for steps first..last: one sequence, or one per turn
        where an interface's turns are separate prompts (``sft_examples``)."""
        if hasattr(interface, "sft_examples"):
            return interface.sft_examples(one, first, last, action_only=action_only)
        return [interface.sft_example(one, first, last)]

    def add(examples, source, w, b, s):
        for t, m in examples:
            if cfg.dedupe:
                key = (t.tobytes(), m.tobytes())
                if key in seen:
                    stats["duplicates"] += 1
                    continue
                seen.add(key)
            toks.append(t), masks.append(m), src.append(source), weight.append(w)
            tid.append(task_ids[b]), step.append(s)
            stats[source] += 1

    for b, n in zip(*np.nonzero(tree.valid & tree.solved)):
        one = jax.tree.map(lambda x: x[b, n], ep)
        n_act = int(one.num_steps)
        tau = int(tree.tau[b, n])
        branch = tau != NO_ROLLBACK
        stats["successful_branches" if branch else "successful_roots"] += 1
        if rehearsal:
            first = tau + 1 if branch else 0
            if first < n_act:
                add(encode(one, first, n_act - 1), "rehearsal", cfg.beta, b, tau)
        if e2p and branch:
            parent = jax.tree.map(lambda x: x[b, tree.parent[b, n]], ep)
            if cfg.changed_only and interface.action(one, tau) == interface.action(parent, tau):
                stats["e2p_same_action"] += 1
                continue
            last = n_act - 1 if cfg.e2p_suffix else tau
            if quoting and (q := interface.quotes_experience(one, tau)) is not None:
                stats["e2p_with_reasoning"] += 1
                stats["e2p_quoting"] += int(q)
            add(encode(one, tau, last, cfg.e2p_action_only), "e2p", 1.0, b, tau)
    if not toks:
        return None, stats
    return SftRecords.build(toks, masks, source=src, weight=np.asarray(weight, np.float32),
                            task_id=np.asarray(tid), step=np.asarray(step)), stats

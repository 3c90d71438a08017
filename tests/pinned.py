"""Fingerprints of a pipeline work directory (trees, datasets, success matrices, Pass@k),
to pin the tiny run's outputs to those of the pre-redesign code (tests/data/)."""

import hashlib
import json
import os

import jax
import numpy as np

from leafe_jax.data.store import sft_source
from leafe_jax.envs.sokoban import get_preset
from leafe_jax.interfaces.symbolic.interface import SymbolicSokoban
from leafe_jax.leafe.tree import ARRAY_FIELDS, load_tree

# What the comparison adds to the tiny run (as the pre-redesign test did).
COMPARISON = {"baselines": {"methods": ["grpo", "early_experience"]},
              "stage1": {"strategies": ["rollback", "independent", "refine", "rollback_oracle"]},
              "stage2": {"variants": ["leafe", "rehearsal", "bc"]}}
# The pre-redesign code's budgets and Stage-2 objective, kept as named options: no stopping
# at a task's first success, children may repeat an ancestor's (tau, experience), one
# pooled mean over all action tokens, and e2p also where a'_tau repeated the parent's a_tau;
# Early Experience's world modelling as a share of the others' update steps.
LEGACY = {"stage1": {"explore": {"stop_at_first_success": False, "dedupe_path": False}},
          "stage2": {"distill": {"loss": "pooled", "changed_only": False}},
          "baselines": {"early_experience": {"wm_epochs": 0.0}}}
PINNED = os.path.join(os.path.dirname(__file__), "data", "pinned_tiny_pipeline.json")


def _h(arrs: dict) -> str:
    m = hashlib.sha256()
    for k in sorted(arrs):
        a = np.ascontiguousarray(arrs[k])
        m.update(k.encode()), m.update(str(a.dtype).encode()), m.update(str(a.shape).encode())
        m.update(a.tobytes())
    return m.hexdigest()[:16]


def fingerprint(wd: str, preset: str = "verl6x6") -> dict:
    out = {}
    agent = SymbolicSokoban(get_preset(preset).make_env())
    for s in sorted(os.listdir(os.path.join(wd, "stage1"))):
        tree = load_tree(os.path.join(wd, "stage1", s, "tree.npz"), agent.episode_like())
        d = {k: np.asarray(getattr(tree, k)) for k in ARRAY_FIELDS}
        d |= {f"ep{i:03d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(tree.episodes))}
        out[f"tree/{s}"] = _h(d)
        out[f"tree/{s}/structure"] = _h({k: d[k] for k in ("valid", "parent", "depth", "order", "tau",
                                                          "solved")}
                                       | {"actions": np.asarray(tree.episodes.actions)})
    for v in sorted(os.listdir(os.path.join(wd, "data"))):
        with open(os.path.join(wd, "data", v, "stats.json")) as fh:
            st = json.load(fh)
        # a counter added since (e2p dropped because a'_tau = a_tau): 0 under LEGACY
        if st.pop("e2p_same_action", 0):
            raise AssertionError(f"data/{v}: e2p examples were dropped under LEGACY")
        out[f"data/{v}/stats"] = st
        if st["examples"]:
            src = sft_source(os.path.join(wd, "data", v))
            out[f"data/{v}"] = _h({f"{i}/{k}": np.asarray(val) for i in range(len(src))
                                   for k, val in src[i].items()})
    for m in sorted(os.listdir(os.path.join(wd, "eval"))):
        f = os.path.join(wd, "eval", m, "success.npy")
        if os.path.exists(f):
            s = np.load(f)
            out[f"eval/{m}"], out[f"eval/{m}/sum"] = _h({"s": s}), int(s.sum())
    with open(os.path.join(wd, "eval", "passk.json")) as fh:
        pk = json.load(fh)["passk"]
    out["passk"] = {m: {k: v["mean"] for k, v in t.items()} for m, t in pk.items()}
    return out

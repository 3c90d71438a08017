"""Pass@k evaluation: n on-device rollouts per held-out level, then a k = 1..n sweep.

``sample_success`` runs ``levels x n`` episodes of the symbolic policy (through its agent
interface's ``success``) and returns ``success[B, n]``; any other agent interface is
evaluated the same way. ``eval_key`` is the one sampling key per experiment seed.
``write_sweep`` turns any number of named success arrays into ``passk.json``, a Markdown
table and a Pass@k curve plot.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from leafe_jax.configs import config, field
from leafe_jax.envs.sokoban.level import Level
from leafe_jax.eval.passk import pass_at_k_table
from leafe_jax.interfaces.symbolic.interface import SymbolicSokoban


@config
class EvalConfig:
    levels: int = field(50, lo=1, doc="held-out levels")
    n: int = field(128, lo=1, doc="samples per level")
    temperature: float = field(1.0, lo=0, lo_open=True)
    transfer_levels: str = field("", doc="a level file (Boxoban format, the preset's size): "
                                         "every model is also evaluated on it")
    transfer_n: int = field(0, lo=0, doc="samples per transfer level (0: n)")


EVAL_KEY_OFFSET = 2000


def eval_key(seed: int):
    """The sampling key of every Pass@k evaluation made with experiment seed ``seed`` (the
    pipeline and ``leafe evaluate`` alike, so their numbers are comparable)."""
    return jax.random.key(seed + EVAL_KEY_OFFSET)


def sample_success(model, env, params, levels: Level, n: int, key, *, temperature: float = 1.0,
                   batch_size: int = 128, progress: bool = True) -> np.ndarray:
    """``success[B, n]`` (bool) of ``n`` sampled episodes per level of the symbolic agent."""
    return SymbolicSokoban(env, params).success(model, levels, n, key, temperature=temperature,
                                                progress=progress, batch_size=batch_size)


def write_sweep(results: dict[str, np.ndarray], out_dir: str, *, ks=None, title: str = "") -> dict:
    """Pass@k tables (with bootstrap CIs over levels) of named ``success[B, n]`` arrays."""
    if not results:
        raise ValueError("no results to sweep")
    ns = {name: np.asarray(s).shape[-1] for name, s in results.items()}
    n = min(ns.values())
    if ks is None:
        ks = [2 ** i for i in range(int(np.log2(n)) + 1)]
    too_big = [k for k in ks if k > n]
    if too_big:
        raise ValueError(f"k = {too_big} exceed the samples per level (n = {n}); draw more samples")
    tables = {name: pass_at_k_table(s, ks) for name, s in results.items()}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "passk.json"), "w") as fh:
        json.dump({"title": title, "n": ns, "levels": {k: int(np.shape(v)[0]) for k, v in results.items()},
                   "passk": tables}, fh, indent=1)
    lines = ["| method | " + " | ".join(f"Pass@{k}" for k in ks) + " |",
             "|---|" + "---|" * len(ks)]
    for name, t in tables.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * t[k]['mean']:.1f} [{100 * t[k]['ci_low']:.1f}, {100 * t[k]['ci_high']:.1f}]"
            for k in ks) + " |")
    with open(os.path.join(out_dir, "passk.md"), "w") as fh:
        fh.write((f"# {title}\n\n" if title else "") + "Pass@k in %, [95 % bootstrap CI over levels]\n\n"
                 + "\n".join(lines) + "\n")
    _plot(tables, ks, os.path.join(out_dir, "passk.png"), title)
    return tables


def _plot(tables, ks, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, t in tables.items():
        m = [100 * t[k]["mean"] for k in ks]
        ax.plot(ks, m, marker="o", label=name)
        ax.fill_between(ks, [100 * t[k]["ci_low"] for k in ks], [100 * t[k]["ci_high"] for k in ks],
                        alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("Pass@k (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

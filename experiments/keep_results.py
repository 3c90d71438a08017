"""Keep a finished pipeline run's results in the repository (``runs/`` does not survive a
session): its small files, in the run's own layout, so ``experiments/aggregate.py`` reads the
kept folder as it reads the run.

    python experiments/keep_results.py runs/faithful_small_s1 docs/results/faithful_small_s1

Kept: ``config.json``, ``timings.json``, ``report.md``; ``eval*/passk.json``, ``passk.md``,
``passk.png`` and every model's ``success.npy``; ``stage1/*/stats.json`` and ``trees.txt``;
``data/*/stats.json``; ``baselines/*/budget.json`` and ``curve.json``; ``base/following.json``
and ``base/warmup.json``. Checkpoints, datasets and trees stay behind.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil

PATTERNS = ["config.json", "timings.json", "report.md", "eval*/passk.json", "eval*/passk.md",
            "eval*/passk.png", "eval*/*/success.npy", "stage1/*/stats.json", "stage1/*/trees.txt",
            "data/*/stats.json", "baselines/*/budget.json", "baselines/*/curve.json",
            "base/following.json", "base/warmup.json"]


def keep(run: str, out: str) -> list[str]:
    if not os.path.exists(os.path.join(run, "eval", "passk.json")):
        raise FileNotFoundError(f"{run}: no eval/passk.json (is the pipeline run finished?)")
    kept = []
    for pat in PATTERNS:
        for f in sorted(glob.glob(os.path.join(run, pat))):
            rel = os.path.relpath(f, run)
            os.makedirs(os.path.dirname(os.path.join(out, rel)) or out, exist_ok=True)
            shutil.copy2(f, os.path.join(out, rel))
            kept.append(rel)
    return kept


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("out")
    a = ap.parse_args()
    print("\n".join(keep(a.run, a.out)))

"""Aggregate pipeline runs over seeds into the tables of docs/RESULTS.md.

    python experiments/aggregate.py runs/leafe_small_s0 runs/leafe_small_s1 runs/leafe_small_s2

Per method: Pass@1 and Pass@128 per seed with its bootstrap CI, and the mean over seeds with
a 95 % CI from the seeds' spread (t distribution, n - 1 dof). Stage 1: solved within k for
each strategy, env steps and tokens, mean over seeds. Also the wall-clock per stage.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57}


def mean_ci(xs):
    xs = np.asarray(xs, float)
    if len(xs) < 2:
        return xs.mean(), float("nan")
    return xs.mean(), T95.get(len(xs) - 1, 2.0) * xs.std(ddof=1) / np.sqrt(len(xs))


def main(dirs):
    runs = []
    for d in dirs:
        passk = json.load(open(os.path.join(d, "eval", "passk.json")))["passk"]
        cfg = json.load(open(os.path.join(d, "config.json")))
        s1 = {}
        for s in cfg["stage1"]["strategies"]:
            f = os.path.join(d, "stage1", s, "stats.json")
            if os.path.exists(f):
                s1[s] = json.load(open(f))
        runs.append({"dir": d, "seed": cfg["pipeline"]["seed"], "passk": passk, "stage1": s1,
                     "timings": json.load(open(os.path.join(d, "timings.json")))})
    K = max(int(k) for k in runs[0]["passk"]["base"])
    out = ["### Pass@k on held-out levels", "",
           f"Per seed: mean over levels [95 % bootstrap CI over levels]. Mean over {len(runs)} seeds "
           "± 95 % CI over seeds.", "",
           "| method | " + " | ".join(f"seed {r['seed']} Pass@1" for r in runs) + " | **mean Pass@1** | "
           + " | ".join(f"seed {r['seed']} Pass@{K}" for r in runs) + f" | **mean Pass@{K}** |",
           "|---|" + "---|" * (2 * len(runs) + 2)]
    for m in runs[0]["passk"]:
        row = [m]
        for k in ("1", str(K)):
            vals = []
            for r in runs:
                e = r["passk"][m][k]
                vals.append(100 * e["mean"])
                row.append(f"{100 * e['mean']:.1f} [{100 * e['ci_low']:.1f}, {100 * e['ci_high']:.1f}]")
            mu, ci = mean_ci(vals)
            row.append(f"**{mu:.1f} ± {ci:.1f}**")
        out.append("| " + " | ".join(row) + " |")
    out += ["", "### Stage 1 at equal budget (solved within k, % of training tasks; mean over seeds)", ""]
    strategies = list(runs[0]["stage1"])
    Kb = len(runs[0]["stage1"][strategies[0]]["solved_within_k"])
    out += ["| strategy | " + " | ".join(f"k={k + 1}" for k in range(Kb)) +
            " | env steps | policy tokens | successful branches |", "|---|" + "---|" * (Kb + 3)]
    for s in strategies:
        sw = np.array([r["stage1"][s]["solved_within_k"] for r in runs]) * 100
        cells = []
        for k in range(Kb):
            mu, ci = mean_ci(sw[:, k])
            cells.append(f"{mu:.1f} ± {ci:.1f}")
        es = np.mean([r["stage1"][s]["env_steps"] for r in runs])
        tk = np.mean([r["stage1"][s]["tokens"] for r in runs])
        sb = np.mean([r["stage1"][s]["successful_branches"] for r in runs])
        out.append(f"| {s} | " + " | ".join(cells) + f" | {es:.0f} | {tk:.0f} | {sb:.1f} |")
    out += ["", "### Wall-clock per stage (s, this 2-core machine)", "",
            "| stage | " + " | ".join(f"seed {r['seed']}" for r in runs) + " |",
            "|---|" + "---|" * len(runs)]
    for st in runs[0]["timings"]:
        out.append(f"| {st} | " + " | ".join(f"{r['timings'].get(st, 0):.0f}" for r in runs) + " |")
    out.append("| **total** | " + " | ".join(f"**{sum(r['timings'].values()) / 60:.1f} min**" for r in runs) + " |")
    text = "\n".join(out)
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])

"""Aggregate pipeline runs over seeds into the tables of docs/RESULTS.md.

    python experiments/aggregate.py runs/leafe_small_s0 runs/leafe_small_s1 runs/leafe_small_s2 \
        [--plot docs/results/leafe_small_passk.png] [--out table.md]

Per method: Pass@1 and Pass@128 per seed with its bootstrap CI, and the mean over seeds with
a 95 % CI from the seeds' spread (t distribution, n - 1 dof). Paired differences (LEAFE minus
each other method): every method is evaluated on the same held-out levels with the same
sampling keys, so per-level differences are paired; their CI is a bootstrap over the pooled
levels of all seeds. Stage 1: solved within k for each strategy, env steps and tokens, mean
over seeds. Interaction budgets per method. The wall-clock per stage.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings

import numpy as np

from leafe_jax.eval.passk import bootstrap_ci, pass_at_k_per_task
from leafe_jax.leafe.explore import STRATEGIES

T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57}
ORDER = ["base", "bc-control", "rehearsal", "e2p", "leafe", "grpo", "early-experience"]


def mean_ci(xs):
    xs = np.asarray(xs, float)
    if len(xs) < 2:
        return xs.mean(), float("nan")
    return xs.mean(), T95.get(len(xs) - 1, 2.0) * xs.std(ddof=1) / np.sqrt(len(xs))


def load_success(d: str) -> dict[str, np.ndarray]:
    """``{method: success[levels, samples]}`` of one run (per-model files, or the older npz)."""
    ev = os.path.join(d, "eval")
    out = {}
    if os.path.exists(os.path.join(ev, "success.npz")):
        out.update(dict(np.load(os.path.join(ev, "success.npz"))))
    for name in os.listdir(ev):
        f = os.path.join(ev, name, "success.npy")
        if os.path.exists(f):
            out[name] = np.load(f)
    return out


def load_run(d: str) -> dict:
    if not os.path.exists(os.path.join(d, "eval", "passk.json")):
        raise FileNotFoundError(f"{d}: no eval/passk.json (is the pipeline run finished?)")
    cfg = json.load(open(os.path.join(d, "config.json")))
    s1 = {}
    for s in STRATEGIES:
        f = os.path.join(d, "stage1", s, "stats.json")
        if os.path.exists(f):
            s1[s] = json.load(open(f))
    budgets = {}
    for m in ("grpo", "early_experience"):
        f = os.path.join(d, "baselines", m, "budget.json")
        if os.path.exists(f):
            budgets[m.replace("_", "-")] = json.load(open(f))
    return {"dir": d, "seed": cfg.get("experiment", cfg.get("pipeline"))["seed"], "success": load_success(d), "stage1": s1,
            "budgets": budgets, "timings": json.load(open(os.path.join(d, "timings.json")))}


def main(dirs, plot=None, out_file=None):
    runs = [load_run(d) for d in dirs]
    common = set.intersection(*(set(r["success"]) for r in runs))
    missing = set.union(*(set(r["success"]) for r in runs)) - common
    if missing:
        warnings.warn(f"left out (not evaluated in every run): {sorted(missing)}")
    methods = [m for m in ORDER if m in common] + sorted(common - set(ORDER))
    K = min(r["success"]["base"].shape[1] for r in runs)
    seeds = [r["seed"] for r in runs]
    out = ["### Pass@k on held-out levels", "",
           f"Per seed: mean over levels [95 % bootstrap CI over levels]. Mean over {len(runs)} seeds "
           "± 95 % CI over seeds (t).", "",
           "| method | " + " | ".join(f"seed {s} Pass@1" for s in seeds) + " | **mean Pass@1** | "
           + " | ".join(f"seed {s} Pass@{K}" for s in seeds) + f" | **mean Pass@{K}** |",
           "|---|" + "---|" * (2 * len(runs) + 2)]
    curves = {}
    for m in methods:
        row = [m]
        for k in (1, K):
            vals = []
            for r in runs:
                per = pass_at_k_per_task(r["success"][m], k)
                lo, hi = bootstrap_ci(per)
                vals.append(100 * per.mean())
                row.append(f"{100 * per.mean():.1f} [{100 * lo:.1f}, {100 * hi:.1f}]")
            mu, ci = mean_ci(vals)
            row.append(f"**{mu:.1f} ± {ci:.1f}**")
        out.append("| " + " | ".join(row) + " |")
        ks = [2 ** i for i in range(int(np.log2(K)) + 1)]
        curves[m] = (ks, np.array([[100 * pass_at_k_per_task(r["success"][m], k).mean() for k in ks] for r in runs]))

    if "leafe" in methods and len(methods) > 1:
        n_levels = sum(r["success"]["leafe"].shape[0] for r in runs)
        out += ["", "### Paired differences: LEAFE minus each method (percentage points)", "",
                f"Same levels, same sampling keys: per-level differences, pooled over the seeds' "
                f"{n_levels} levels, 95 % bootstrap CI; and the mean of the per-seed differences "
                "± 95 % CI over seeds.", "",
                f"| LEAFE minus | Pass@1 (pooled levels) | Pass@1 (over seeds) | Pass@{K} (pooled levels) "
                f"| Pass@{K} (over seeds) |", "|---|---|---|---|---|"]
        for m in methods:
            if m == "leafe":
                continue
            cells = []
            for k in (1, K):
                diffs = [pass_at_k_per_task(r["success"]["leafe"], k) - pass_at_k_per_task(r["success"][m], k) for r in runs]
                pooled = np.concatenate(diffs)
                lo, hi = bootstrap_ci(pooled)
                mu, ci = mean_ci([100 * d.mean() for d in diffs])
                cells += [f"{100 * pooled.mean():+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]",
                          f"{mu:+.1f} ± {ci:.1f}"]
            out.append(f"| {m} | " + " | ".join(cells) + " |")

    strategies = [s for s in STRATEGIES if all(s in r["stage1"] for r in runs)]
    if strategies:
        Kb = len(runs[0]["stage1"][strategies[0]]["solved_within_k"])
        out += ["", "### Stage 1 at equal budget (solved within k, % of training tasks; mean ± 95 % CI "
                "over seeds)", "",
                "| strategy | " + " | ".join(f"k={k + 1}" for k in range(Kb)) +
                " | env steps | policy tokens | successful branches |", "|---|" + "---|" * (Kb + 3)]
        for s in strategies:
            sw = np.array([r["stage1"][s]["solved_within_k"] for r in runs]) * 100
            cells = [("{:.1f} ± {:.1f}".format(*mean_ci(sw[:, k]))) for k in range(Kb)]
            es = np.mean([r["stage1"][s]["env_steps"] for r in runs])
            tk = np.mean([r["stage1"][s]["tokens"] for r in runs])
            sb = np.mean([r["stage1"][s]["successful_branches"] for r in runs])
            out.append(f"| {s} | " + " | ".join(cells) + f" | {es:.0f} | {tk:.0f} | {sb:.1f} |")

    if any(r["budgets"] for r in runs):
        out += ["", "### Interaction budgets (env steps spent collecting training data, mean over seeds)", "",
                "| method | env steps | policy tokens | what |", "|---|---|---|---|"]
        if all("rollback" in r["stage1"] for r in runs):
            out.append(f"| leafe / rehearsal | {np.mean([r['stage1']['rollback']['env_steps'] for r in runs]):.0f} "
                       f"| {np.mean([r['stage1']['rollback']['tokens'] for r in runs]):.0f} | Stage-1 rollback trees |")
        for m in ("grpo", "early-experience"):
            if all(m in r["budgets"] for r in runs):
                b = [r["budgets"][m] for r in runs]
                what = (f"{np.mean([x['rollout_batches'] for x in b]):.1f} rollout batches, "
                        f"{np.mean([x['optimizer_steps'] for x in b]):.0f} optimizer steps" if m == "grpo" else
                        f"{np.mean([x['demo_levels'] for x in b]):.0f} demo levels x alternatives, "
                        f"{b[0]['wm_steps']} world-model + {b[0]['imitation_steps']} imitation steps")
                out.append(f"| {m} | {np.mean([x['env_steps'] for x in b]):.0f} | "
                           f"{np.mean([x['tokens'] for x in b]):.0f} | {what} |")

    stages = list(dict.fromkeys(k for r in runs for k in r["timings"]))
    out += ["", "### Wall-clock per stage (s, this 2-core machine)", "",
            "| stage | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(runs)]
    for st in stages:
        out.append(f"| {st} | " + " | ".join(f"{r['timings'][st]:.0f}" if st in r["timings"] else "-"
                                             for r in runs) + " |")
    out.append("| **total** | " + " | ".join(f"**{sum(r['timings'].values()) / 60:.1f} min**" for r in runs) + " |")
    text = "\n".join(out)
    print(text)
    if out_file:
        with open(out_file, "w") as fh:
            fh.write(text + "\n")
    if plot:
        _plot(curves, plot, len(runs))
    return text


def _plot(curves, path, n_seeds):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m, (ks, v) in curves.items():
        mu = v.mean(0)
        ax.plot(ks, mu, marker="o", ms=3, label=m)
        if n_seeds > 1:
            ci = np.array([mean_ci(v[:, i])[1] for i in range(len(ks))])
            ax.fill_between(ks, mu - ci, mu + ci, alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("Pass@k (%)")
    ax.set_title(f"Pass@k on held-out levels, mean over {n_seeds} seeds (band: 95 % CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="pipeline work directories (one per seed)")
    ap.add_argument("--plot", help="write the mean Pass@k curves over seeds to this PNG")
    ap.add_argument("--out", help="also write the tables to this Markdown file")
    a = ap.parse_args()
    main(a.runs, a.plot, a.out)

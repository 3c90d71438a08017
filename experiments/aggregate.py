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
import re
import warnings

import numpy as np

from leafe_jax.eval.claims import compare
from leafe_jax.eval.passk import bootstrap_ci, pass_at_k_per_task
from leafe_jax.leafe.diagnostics import cost_from_stats, solved_within_env_steps_per_task
from leafe_jax.leafe.explore import STRATEGIES

T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57}
ORDER = ["base", "bc-control", "rehearsal", "e2p", "leafe", "grpo", "early-experience"]
ORDER_ALL = ORDER + ["leafe-self", "grpo-converged"]
E_GRID = (30, 60, 120, 240)     # env steps per task for the Stage-1 per-cost table
E_CLAIM = 120                   # the pre-registered equal env-step budget per task
TRANSFER_K = 32                 # samples per transfer level in the pre-registered runs


def mean_ci(xs):
    xs = np.asarray(xs, float)
    if len(xs) < 2:
        return xs.mean(), float("nan")
    return xs.mean(), T95.get(len(xs) - 1, 2.0) * xs.std(ddof=1) / np.sqrt(len(xs))


def load_success(d: str, sub: str = "eval") -> dict[str, np.ndarray]:
    """``{method: success[levels, samples]}`` of one run's ``sub`` folder (per-model files, or
    the older npz)."""
    ev = os.path.join(d, sub)
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
    for m in ("grpo", "grpo_converged", "early_experience"):
        f = os.path.join(d, "baselines", m, "budget.json")
        if os.path.exists(f):
            budgets[m.replace("_", "-")] = json.load(open(f))
    transfer, transfer_means = {}, {}
    tr = os.path.join(d, "eval_transfer")
    if os.path.isdir(tr):
        transfer = load_success(d, "eval_transfer")
        if os.path.exists(os.path.join(tr, "passk.json")):
            transfer_means = {m: {int(k): v["mean"] for k, v in t.items()}
                              for m, t in json.load(open(os.path.join(tr, "passk.json")))["passk"].items()}
    report = os.path.join(d, "report.md")
    return {"dir": d, "seed": cfg.get("experiment", cfg.get("pipeline"))["seed"], "success": load_success(d), "stage1": s1,
            "budgets": budgets, "timings": json.load(open(os.path.join(d, "timings.json"))),
            "transfer": transfer, "transfer_means": transfer_means,
            "report_per_cost": _report_per_cost(report) if os.path.exists(report) else {}}


def _report_per_cost(path: str) -> dict:
    """``{strategy: {E: solved %}}`` from a run report's "solved within E env steps per task"
    table - for runs whose per-task Stage-1 arrays were not kept (the report keeps the table)."""
    lines = open(path).read().splitlines()
    for i, line in enumerate(lines):
        if "solved within E env steps per task" in line:
            es = [int(e) for e in re.findall(r"E = (\d+)", line)]
            out = {}
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                cells = [c.strip() for c in row.strip("|").split("|")]
                out[cells[0]] = dict(zip(es, (float(v) for v in cells[1].split(" / "))))
            return out
    return {}


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

    out += _stage1_tables(runs)
    out += _budgets(runs)
    out += _transfer_table(runs)
    out += _claims_table(runs, K)

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


def _with(runs, key, name):
    """The runs whose ``key`` holds ``name`` (and their seeds, for the tables' notes)."""
    have = [r for r in runs if name in r[key]]
    return have, ", ".join(str(r["seed"]) for r in have)


def _within(st: dict, e: int) -> np.ndarray:
    """Per task of a Stage-1 stats file: solved within ``e`` env steps (up to its first success)."""
    return solved_within_env_steps_per_task(cost_from_stats(st), e)


def _passk_diff(sa, sb, k: int) -> np.ndarray:
    """Per level, Pass@k of ``sa`` minus ``sb`` (success matrices of the same levels), points."""
    return 100 * (pass_at_k_per_task(sa, k) - pass_at_k_per_task(sb, k))


def _stage1_tables(runs) -> list[str]:
    out = []
    strategies = [s for s in STRATEGIES if any(s in r["stage1"] for r in runs)]
    if not strategies:
        return out
    have, seeds = _with(runs, "stage1", strategies[0])
    Kb = len(have[0]["stage1"][strategies[0]]["solved_within_k"])
    out += ["", f"### Stage 1 at equal budget (solved within k, % of training tasks; mean ± 95 % CI "
            f"over the seeds that kept their Stage-1 stats: {seeds})", "",
            "| strategy | " + " | ".join(f"k={k + 1}" for k in range(Kb)) +
            " | env steps | policy tokens | successful branches |", "|---|" + "---|" * (Kb + 3)]
    for s in strategies:
        rs = [r["stage1"][s] for r in runs if s in r["stage1"]]
        sw = np.array([st["solved_within_k"] for st in rs]) * 100
        cells = [("{:.1f} ± {:.1f}".format(*mean_ci(sw[:, k]))) for k in range(Kb)]
        out.append(f"| {s} | " + " | ".join(cells) + f" | {np.mean([st['env_steps'] for st in rs]):.0f} | "
                   f"{np.mean([st['tokens'] for st in rs]):.0f} | "
                   f"{np.mean([st['successful_branches'] for st in rs]):.1f} |")
    out += ["", "### Stage 1 per interaction cost (solved within E env steps per task, %; per seed, "
            "from the per-task arrays or, where they were not kept, the run's report)", "",
            "| strategy | " + " | ".join(f"seed {r['seed']}: E = {' / '.join(map(str, E_GRID))}" for r in runs)
            + " | compliance (pts) | branches starting unsolvable |", "|---|" + "---|" * (len(runs) + 2)]
    for s in strategies:
        cells = []
        for r in runs:
            v = _per_cost_values(r, s)
            cells.append(" / ".join("-" if x is None else f"{x:.1f}" for x in v))
        comp = [r["stage1"][s]["compliance"].get("compliance") for r in runs
                if s in r["stage1"] and r["stage1"][s].get("compliance")]
        unsolv = [r["stage1"][s]["branch_starts"].get("start_unsolvable") for r in runs
                  if s in r["stage1"] and r["stage1"][s].get("branch_starts")]
        fmt = lambda xs: " / ".join(f"{100 * x:.1f}" for x in xs if x is not None) or "-"
        out.append(f"| {s} | " + " | ".join(cells) + f" | {fmt(comp)} | {fmt(unsolv)} |")
    return out


def _per_cost_values(r, s) -> list:
    if s in r["stage1"] and "task_env_steps" in r["stage1"][s]:
        return [100 * _within(r["stage1"][s], e).mean() for e in E_GRID]
    row = r["report_per_cost"].get(s, {})
    return [row.get(e) for e in E_GRID]


def _budgets(runs) -> list[str]:
    out = []
    if not any(r["budgets"] for r in runs):
        return out
    out += ["", "### Interaction budgets (env steps spent collecting training data, mean over the "
            "seeds that kept them)", "", "| method | seeds | env steps | policy tokens | what |", "|---|---|---|---|---|"]
    have, seeds = _with(runs, "stage1", "rollback")
    if have:
        out.append(f"| leafe / rehearsal | {seeds} | {np.mean([r['stage1']['rollback']['env_steps'] for r in have]):.0f} "
                   f"| {np.mean([r['stage1']['rollback']['tokens'] for r in have]):.0f} | Stage-1 rollback trees |")
    for m in ("grpo", "grpo-converged", "early-experience"):
        have, seeds = _with(runs, "budgets", m)
        if not have:
            continue
        b = [r["budgets"][m] for r in have]
        if m.startswith("grpo"):
            what = (f"{np.mean([x.get('rollout_batches', 0) for x in b]):.1f} rollout batches, "
                    f"{np.mean([x.get('optimizer_steps', 0) for x in b]):.0f} optimizer steps")
            if m == "grpo-converged":
                what = (f"the best validated policy: {what}; trained "
                        f"{np.mean([x.get('env_steps_trained', 0) for x in b]):.0f} env steps before it stopped")
        else:
            what = (f"{np.mean([x['demo_levels'] for x in b]):.0f} demo levels x alternatives, "
                    f"{b[0]['wm_steps']} world-model + {b[0]['imitation_steps']} imitation steps")
        out.append(f"| {m} | {seeds} | {np.mean([x['env_steps'] for x in b]):.0f} | "
                   f"{np.mean([x.get('tokens', 0) for x in b]):.0f} | {what} |")
    return out


def _transfer_means(r, m, k) -> float | None:
    if m in r["transfer"] and r["transfer"][m].shape[1] >= k:
        return 100 * pass_at_k_per_task(r["transfer"][m], k).mean()
    v = r["transfer_means"].get(m, {}).get(k)
    return None if v is None else 100 * v


def _transfer_table(runs) -> list[str]:
    methods = [m for m in ORDER_ALL if any(m in r["transfer_means"] or m in r["transfer"] for r in runs)]
    if not methods:
        return []
    n = min(next(iter(r["transfer"].values())).shape[1] if r["transfer"] else TRANSFER_K for r in runs)
    ks = [k for k in (1, 8, n) if k <= n]
    out = ["", "### Pass@k on the transfer levels (%, per seed and mean over seeds)", "",
           "| method | " + " | ".join(f"Pass@{k} (seeds {', '.join(str(r['seed']) for r in runs)})" for k in ks)
           + " |", "|---|" + "---|" * len(ks)]
    for m in methods:
        cells = []
        for k in ks:
            vals = [_transfer_means(r, m, k) for r in runs]
            got = [v for v in vals if v is not None]
            cells.append(" / ".join("-" if v is None else f"{v:.1f}" for v in vals)
                         + (f" (mean {np.mean(got):.1f})" if got else ""))
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return out


def _claims_table(runs, K) -> list[str]:
    """Each pre-registered claim: per-seed paired differences, pooled CI, verdict."""
    rows = []
    for a, b, sign, what in (("rollback", "independent", 1, f"Stage 1, solved within E = {E_CLAIM} env steps per task: rollback − independent > 0"),
                             ("rollback", "refine", 1, f"Stage 1, solved within E = {E_CLAIM}: rollback − refine > 0")):
        diffs = []
        for r in runs:
            if a in r["stage1"] and b in r["stage1"] and "task_env_steps" in r["stage1"][a]:
                diffs.append(100 * (_within(r["stage1"][a], E_CLAIM).astype(float) - _within(r["stage1"][b], E_CLAIM)))
            elif E_CLAIM in r["report_per_cost"].get(a, {}) and E_CLAIM in r["report_per_cost"].get(b, {}):
                diffs.append(r["report_per_cost"][a][E_CLAIM] - r["report_per_cost"][b][E_CLAIM])
        if diffs:
            rows.append((what, compare(diffs, sign)))
    for b, k, sign, what in (("grpo", 1, -1, "Pass@1: LEAFE − GRPO (matched) < 0 (GRPO sharpens)"),
                             ("grpo", K, 1, f"Pass@{K}: LEAFE − GRPO (matched) > 0 (LEAFE widens)"),
                             ("grpo-converged", 1, -1, "Pass@1: LEAFE − GRPO (converged) < 0"),
                             ("grpo-converged", K, 1, f"Pass@{K}: LEAFE − GRPO (converged) > 0"),
                             ("rehearsal", K, 1, f"Pass@{K}: LEAFE − rehearsal > 0 (distillation, not rehearsal alone)")):
        if all("leafe" in r["success"] and b in r["success"] for r in runs):
            rows.append((what, compare([_passk_diff(r["success"]["leafe"], r["success"][b], k) for r in runs], sign)))
    for b in ("grpo", "grpo-converged"):
        diffs = []
        for r in runs:
            if "leafe" in r["transfer"] and b in r["transfer"]:
                diffs.append(_passk_diff(r["transfer"]["leafe"], r["transfer"][b], TRANSFER_K))
            elif _transfer_means(r, "leafe", TRANSFER_K) is not None and _transfer_means(r, b, TRANSFER_K) is not None:
                diffs.append(_transfer_means(r, "leafe", TRANSFER_K) - _transfer_means(r, b, TRANSFER_K))
        if diffs:
            rows.append((f"Transfer Pass@{TRANSFER_K}: LEAFE − {b} > 0", compare(diffs, 1)))
    if not rows:
        return []
    out = ["", "### The pre-registered claims (paired differences, percentage points)", "",
           "Each claim is a paired difference A − B with the sign the paper claims. Per seed: its "
           "mean (Stage 1 per task, Pass@k per level). Pooled: 95 % bootstrap CI over the levels (tasks) of "
           "the seeds that kept per-level values. Holds = every seed on the claimed side and the CI "
           "excluding 0 there; null = CI includes 0; reversed = CI excludes 0 on the other side; "
           "mixed = CI on the claimed side but a seed disagrees.", "",
           "| claim | per seed | pooled [95 % CI] (seeds pooled) | verdict |", "|---|---|---|---|"]
    for what, c in rows:
        lo, hi = c["ci"]
        out.append(f"| {what} | {' / '.join(f'{d:+.1f}' for d in c['per_seed'])} | "
                   f"{c['pooled']:+.1f} [{lo:+.1f}, {hi:+.1f}] ({c['pooled_seeds']}) | **{c['verdict']}** |")
    return out


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

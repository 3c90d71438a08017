"""The pipeline's ``report.md``: Pass@k with CIs, Stage 1 at equal budget, budgets, data,
example trees, timings."""

from __future__ import annotations

import os

from leafe_jax.pipeline.config import PipelineConfig
from leafe_jax.pipeline.stages import read_json


def write_report(workdir: str, cfg: PipelineConfig, trees: dict, timings: dict) -> dict:
    at = lambda *p: os.path.join(workdir, *p)
    passk = read_json(at("eval", "passk.json"))
    s1 = {k: read_json(os.path.join(v, "stats.json")) for k, v in trees.items()}
    ex, K = cfg.experiment, cfg.stage1.explore.budget
    with open(at("eval", "passk.md")) as fh:
        table = fh.read().strip()
    lines = [f"# LEAFE pipeline report: {ex.preset}, model {ex.model}, seed {ex.seed}", "",
             "## Pass@k on held-out levels (95 % bootstrap CI over levels)", "", table, "",
             "![Pass@k](eval/passk.png)", "",
             f"## Stage 1 at equal budget (K = {K} rollouts per task, "
             f"{cfg.stage1.train_levels} training levels)", "",
             "| strategy | solved within k = 1 ... K | env steps | policy tokens | "
             "branches / task | depth reached | successful branches |", "|---|---|---|---|---|---|---|"]
    for k, st in s1.items():
        sw = " / ".join(f"{100 * x:.1f}" for x in st["solved_within_k"])
        lines.append(f"| {k} | {sw} | {st['env_steps']} | {st['tokens']} | "
                     f"{st['branches_per_task']:.2f} | {st['max_depth_reached']} | "
                     f"{st['successful_branches']} ({100 * st['branch_success_rate']:.1f} %) |")
    if cfg.baselines.methods:
        g, ee = cfg.baselines.grpo, cfg.baselines.early_experience
        lines += ["", "## Interaction budgets (env steps spent collecting training data)", "",
                  "| method | env steps | policy tokens | notes |", "|---|---|---|---|"]
        if "rollback" in s1:
            lines.append(f"| leafe / rehearsal | {s1['rollback']['env_steps']} | {s1['rollback']['tokens']} "
                         f"| Stage-1 rollback trees, K = {K} |")
        if "bc" in cfg.stage2.variants:
            lines.append("| bc-control | 0 | 0 | demonstrations only |")
        for m in cfg.baselines.methods:
            bj = read_json(at("baselines", m, "budget.json"))
            note = (f"{bj['rollout_batches']} rollout batches x {g.tasks_per_step} tasks x "
                    f"G = {g.group_size}" if m == "grpo" else
                    f"{bj['demo_levels']} demo levels x {ee.alternatives} alternatives")
            lines.append(f"| {m} | {bj['env_steps']} | {bj['tokens']} | {note} (target "
                         f"{bj['target_env_steps']}) |")
    lines += ["", "## Stage-2 data", ""]
    for v in cfg.stage2.variants:
        f = at("data", v, "stats.json")
        if os.path.exists(f):
            lines.append(f"- {v}: {read_json(f)}")
    if "rollback" in trees:
        with open(os.path.join(trees["rollback"], "trees.txt")) as fh:
            lines += ["", "## Example rollback trees", "", "```", fh.read().strip(), "```"]
    lines += ["", "## Timings (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines.append(f"| total (every stage run in this work directory) | {sum(timings.values()):.0f} |")
    with open(at("report.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return {"passk": passk["passk"], "stage1": s1, "timings": timings}

"""The pipeline's ``report.md``: Pass@k with CIs, Stage 1 at equal budget, budgets, data,
example trees, timings."""

from __future__ import annotations

import os

from leafe_jax.leafe.diagnostics import cost_from_stats, solved_within_env_steps
from leafe_jax.pipeline.config import PipelineConfig
from leafe_jax.pipeline.stages import read_json


def write_report(workdir: str, cfg: PipelineConfig, trees: dict, timings: dict) -> dict:
    at = lambda *p: os.path.join(workdir, *p)
    passk = read_json(at("eval", "passk.json"))
    s1 = {k: read_json(os.path.join(v, "stats.json")) for k, v in trees.items()}
    ex, K = cfg.experiment, cfg.stage1.explore.budget
    with open(at("eval", "passk.md")) as fh:
        table = fh.read().strip()
    model = (f"text agent, {cfg.text.model}" if ex.agent == "text" else
             f"{cfg.host.env}, {cfg.host.model}" if ex.agent == "host" else f"model {ex.model}")
    lines = [f"# LEAFE pipeline report: {ex.preset}, {model}, seed {ex.seed}", "",
             "## Pass@k on held-out levels (95 % bootstrap CI over levels)", "", table, "",
             "![Pass@k](eval/passk.png)", ""]
    if os.path.exists(at("eval_transfer", "passk.md")):
        with open(at("eval_transfer", "passk.md")) as fh:
            lines += ["## Pass@k on the transfer levels (another generator, same room size)", "",
                      fh.read().strip(), "", "![Pass@k, transfer](eval_transfer/passk.png)", ""]
    lines += [f"## Stage 1 at equal budget (K = {K} rollouts per task, "
              f"{cfg.stage1.train_levels} training levels)", "",
              "| strategy | solved within k = 1 ... K | env steps | policy tokens | "
              "branches / task | depth reached | successful branches |", "|---|---|---|---|---|---|---|"]
    for k, st in s1.items():
        sw = " / ".join(f"{100 * x:.1f}" for x in st["solved_within_k"])
        lines.append(f"| {k} | {sw} | {st['env_steps']} | {_tokens_cell(st)} | "
                     f"{st['branches_per_task']:.2f} | {st['max_depth_reached']} | "
                     f"{st['successful_branches']} ({100 * st['branch_success_rate']:.1f} %) |")
    lines += _per_cost(s1) + _compliance(s1) + _branch_starts(s1) + _following(at("base", "following.json"))
    notes = [f"- {k}: the policy's own reflections - {st['reflector']['asked']} answers, "
             f"{st['reflector']['malformed']} malformed (no step matches), "
             f"{st['reflector']['duplicate']} repeating a tau already taken" + _text_reflector(st['reflector'])
             for k, st in s1.items() if "reflector" in st]
    notes += [f"- {k}: {st['interrupted']} rollouts stopped by periodic reflection"
              for k, st in s1.items() if st.get("interrupted")]
    notes += [f"- {k}: {se['turns']} turns, {se['invalid']} invalid answers "
              f"({100 * se['invalid'] / max(1, se['turns']):.1f} %), "
              f"{se['prompt_tokens'] / max(1, se['turns']):.0f} prompt tokens (after the shared "
              f"instruction) and {se['generated_tokens'] / max(1, se['turns']):.1f} generated tokens per turn"
              for k, st in s1.items() if (se := st.get("session")) and "turns" in se]
    lines += [""] + notes if notes else []
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
                    f"best of the curve: {bj['rollout_batches']} rollout batches; trained "
                    f"{bj['env_steps_trained']} env steps, stopped: {bj['stopped']}"
                    if m == "grpo_converged" else
                    f"{bj['demo_levels']} demo levels x {ee.alternatives} alternatives; "
                    f"world model {bj['wm_steps']} steps over {bj['examples']} examples, "
                    f"imitation {bj['imitation_steps']} steps")
            lines.append(f"| {m} | {bj['env_steps']} | {bj['tokens']} | {note} (target "
                         f"{bj['target_env_steps']}) |")
    lines += _curve(at("baselines", "grpo_converged", "curve.json"))
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


def _text_reflector(r: dict) -> str:
    """The text reflector's further counts (a model answering in words)."""
    if "generated_tokens" not in r:
        return ""
    return (f", {r['ok']} parsed, {r['none']} 'no rollback', {r['out_of_range']} naming a step "
            f"outside the rollout; {r['generated_tokens']} reflection tokens generated over "
            f"{r['prompt_tokens']} prompt tokens (the table's '+ ... reflection' tokens)")


def _reflection_tokens(st: dict) -> int:
    """Tokens a model wrote reflecting (the self-reflector); 0 for a rule-based reflector."""
    return int(sum(st.get("task_reflection_tokens", ())))


def _tokens_cell(st: dict) -> str:
    r = _reflection_tokens(st)
    return f"{st['tokens']}" + (f" + {r} reflection = {st['tokens'] + r}" if r else "")


def _per_cost(s1: dict) -> list[str]:
    """Solved within E env steps per task, E on a grid shared by the strategies."""
    if not s1 or any("task_env_steps" not in st for st in s1.values()):
        return []
    top = max(max(st["task_env_steps"], default=0) for st in s1.values())
    grid = [int(round(top * f)) for f in (0.125, 0.25, 0.5, 1.0)]
    lines = ["", "Per interaction cost (a task's env steps and policy tokens up to its first "
             "success):", "", "| strategy | solved within E env steps per task: "
             + " / ".join(f"E = {e}" for e in grid) + " | solved per 1k env steps | "
             "solved per 1M tokens (reflection tokens included) |", "|---|---|---|---|"]
    for k, st in s1.items():
        cost = cost_from_stats(st)
        solved = cost["solved"]
        within = " / ".join(f"{100 * x:.1f}" for x in solved_within_env_steps(cost, grid))
        lines.append(f"| {k} | {within} | {1e3 * solved.sum() / max(1, st['env_steps']):.2f} | "
                     f"{1e6 * solved.sum() / max(1, st['tokens'] + _reflection_tokens(st)):.1f} |")
    return lines


def _compliance(s1: dict) -> list[str]:
    rows = {k: st["compliance"] for k, st in s1.items() if st.get("compliance")}
    if not rows:
        return []
    fmt = lambda x: "-" if x is None else f"{100 * x:.1f} %"
    lines = ["", "Following the experience (rollback branches: does a'_tau repeat the failed "
             "a_tau?):", "", "| strategy | branches | repeated (sampled) | P(a_tau), with "
             "experience | P(a_tau), parent context | compliance |", "|---|---|---|---|---|---|"]
    for k, c in rows.items():
        lines.append(f"| {k} | {c['branches']} | {fmt(c['repeat_rate'])} | "
                     f"{fmt(c.get('p_repeat_with_experience'))} | "
                     f"{fmt(c.get('p_repeat_without_experience'))} | {fmt(c.get('compliance'))} |")
    return lines


def _branch_starts(s1: dict) -> list[str]:
    rows = {k: st["branch_starts"] for k, st in s1.items() if st.get("branch_starts")}
    if not rows:
        return []
    fmt = lambda x, pct=False: "-" if x is None else (f"{100 * x:.1f} %" if pct else f"{x:.1f}")
    lines = ["", "Where branches start (tau; distance to go = optimal moves left, exact solver):",
             "", "| strategy | branches | tau (all / successful) | steps left | distance to go at "
             "tau / at the root | start already unsolvable (all / successful) | successful "
             "starts by quarter of T |", "|---|---|---|---|---|---|---|"]
    for k, c in rows.items():
        lines.append(
            f"| {k} | {c['branches']} | {fmt(c['tau_mean'])} / {fmt(c['tau_mean_successful'])} | "
            f"{fmt(c.get('steps_left_mean'))} | {fmt(c.get('distance_at_tau_mean'))} / "
            f"{fmt(c.get('distance_at_root_mean'))} | {fmt(c.get('start_unsolvable'), True)} / "
            f"{fmt(c.get('start_unsolvable_successful'), True)} | "
            f"{c.get('successful_start_quarters', '-')} |")
    return lines


def _following(path: str) -> list[str]:
    """The base policy's following rounds: compliance on demo-pool rollouts before each
    round's training, and after the last."""
    if not os.path.exists(path):
        return []
    f = read_json(path)
    pct = lambda x: "-" if x is None else f"{100 * x:.1f} %"
    lines = ["", "Base policy, following experience (on-policy rounds on demo-pool levels):", "",
             "| when | rollouts solved | branches | repeated a_tau (sampled) | P(a_tau) with / "
             "without the experience | compliance | examples |", "|---|---|---|---|---|---|---|"]
    rows = [(f"before round {i + 1}", r) for i, r in enumerate(f["rounds"])] + [("after", f["after"])]
    for name, r in rows:
        lines.append(f"| {name} | {r['solved']} / {r['rollouts']} | {r['branches']} | "
                     f"{pct(r.get('repeat_rate'))} | {pct(r.get('p_repeat_with_experience'))} / "
                     f"{pct(r.get('p_repeat_without_experience'))} | {pct(r.get('compliance'))} | "
                     f"{r.get('examples', '-')} |")
    q = [(name, r["reflection_quality"]) for name, r in rows if "reflection_quality" in r]
    if q:
        lines += ["", "Self-reflection (the policy's greedy reflection on fresh demo-pool failures; "
                  "warm-up labels from the feedback reflector):", "",
                  "| when | failures | parses to a step | equals the feedback reflector |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | {x['failures']} | {pct(x.get('parse_rate'))} | "
                  f"{pct(x.get('agrees_with_feedback'))} |" for name, x in q]
    return lines


def _curve(path: str) -> list[str]:
    """GRPO's training curve: validation Pass@1 against rollout batches and env steps."""
    if not os.path.exists(path):
        return []
    curve = read_json(path)
    best = max(curve, key=lambda c: c["val_pass1"])
    lines = ["", "## GRPO to convergence: validation curve", "",
             "Pass@1 on the validation pool (never the held-out levels) after each chunk; "
             "the evaluated policy is the best point (**bold**).", "",
             "| rollout batches | env steps | validation Pass@1 |", "|---|---|---|"]
    for c in curve:
        v = f"{100 * c['val_pass1']:.1f}"
        lines.append(f"| {c['rollout_batches']} | {c['env_steps']} | {f'**{v}**' if c is best else v} |")
    return lines

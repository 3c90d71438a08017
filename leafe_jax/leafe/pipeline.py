"""``leafe pipeline``: base policy -> Stage 1 -> datasets -> Stage 2 -> Pass@k -> report.

Everything goes into one work directory; a stage whose output exists is skipped, so a
killed run resumes where it stopped (the training stages also resume mid-way from their
checkpoints). Each stage's ``DONE`` records its inputs: a config that adds variants,
baselines or strategies to a finished run computes only what is new, and a changed setting
is refused by the first stage it touches. ``timings.json`` records how long each stage took.

    workdir/
      config.json  timings.json  report.md  passk.png
      base/                 BC checkpoints + data (leafe pretrain)
      stage1/<strategy>/    tree.npz, stats.json, trees.txt (examples rendered)
      data/<variant>/       TFDS sft_examples (+ stats.json)
      sft/<variant>/        Stage-2 checkpoints (leafe | rehearsal | e2p | bc control)
      baselines/<method>/   GRPO / Early Experience checkpoints + budget.json
      eval/<model>/         success.npy (levels x samples); eval/passk.json / .md / .png over all
"""

from __future__ import annotations

import json
import os
import time
import warnings

import jax
import numpy as np

from leafe_jax.leafe.config import STAGE1, PipelineConfig
from leafe_jax.leafe.explore import load_tree, save_tree


class Timer:
    def __init__(self, path):
        self.path = path
        self.t = json.load(open(path)) if os.path.exists(path) else {}

    def run(self, name, fn):
        t0 = time.perf_counter()
        out = fn()
        self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0
        with open(self.path, "w") as fh:
            json.dump(self.t, fh, indent=1)
        return out


def _inputs(cfg: PipelineConfig, stage: str) -> dict:
    """What a stage's output depends on (its config and its upstream stages' inputs).

    Recorded in the stage's DONE file: a resumed or extended run reuses a stage only when
    these are equal, so adding a variant, a baseline or a strategy to a finished run
    computes just what is new, and a changed setting never silently mixes results."""
    from leafe_jax.envs.sokoban.generator import VERSION

    d = cfg.to_dict()
    p, s1, s2, bl = d["pipeline"], d["stage1"], d["stage2"], d["baselines"]
    base = {"preset": p["preset"], "model": p["model"], "seed": p["seed"], "base": d["base"],
            "generator_version": VERSION}
    tree = lambda strategy: {"base": base, "strategy": strategy,
                             "stage1": {k: v for k, v in s1.items() if k != "strategies"}}
    sft = {k: s2[k] for k in ("steps", "batch_size", "lr")}
    kind, _, name = stage.partition("/")
    if kind == "base":
        return base
    if kind == "stage1":
        return tree(name)
    if kind == "data":
        return {"tree": tree("rollback"), "variant": name,
                "stage2": {k: s2[k] for k in ("beta", "e2p_suffix", "dedupe")}}
    if kind == "sft":
        return {"data": _inputs(cfg, f"data/{name}") if name != "bc" else base, "stage2": sft}
    if kind == "baselines":
        prefix = "grpo_" if name == "grpo" else "ee_"
        own = {k: v for k, v in bl.items() if k.startswith(prefix) or k == "match_budget"}
        if name == "early_experience":
            own["stage2_steps"] = s2["steps"]
        return {"base": base, "budget": tree("rollback") if bl["match_budget"] else None, name: own}
    if kind == "eval":
        model = {"base": base, "bc-control": _inputs(cfg, "sft/bc")}.get(name)
        if model is None:
            model = (_inputs(cfg, f"sft/{name}") if name in s2["variants"]
                     else _inputs(cfg, f"baselines/{name.replace('-', '_')}"))
        return {"model": model, "eval": d["eval"], "train_levels": s1["train_levels"]}
    raise KeyError(stage)


def check_context(cfg: PipelineConfig) -> int:
    """Context slots the deepest rollback branch needs (start, one experience per depth, the
    revised action's experience, every turn); refused up front if the model cannot hold them."""
    from leafe_jax.agent import encoding as E
    from leafe_jax.agent.rollout import cache_size_for
    from leafe_jax.envs.sokoban import get_preset
    from leafe_jax.policy.config import get_config

    preset, model = get_preset(cfg.pipeline.preset), get_config(cfg.pipeline.model)
    need = cache_size_for(preset.make_env(), 1 + (cfg.stage1.max_depth + 1) * E.EXP_LEN, preset.max_steps)
    if need > model.max_seq_len:
        raise ValueError(f"preset {preset.name!r} ({preset.max_steps} steps) with stage1.max_depth = "
                         f"{cfg.stage1.max_depth} needs {need} context tokens; model {model.name!r} holds "
                         f"{model.max_seq_len}: use a model with a longer context, a smaller preset or a "
                         "smaller depth")
    return need


def _diff(a, b, prefix=""):
    """Dotted keys where two nested dicts differ."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [prefix or "(value)"] if a != b else []
    return [k for key in sorted(set(a) | set(b))
            for k in _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)]


class _Stages:
    """DONE markers that say what each stage was made from."""

    def __init__(self, workdir, cfg):
        self.workdir, self.cfg = workdir, cfg

    def done(self, stage) -> bool:
        f = os.path.join(self.workdir, stage, "DONE")
        if not os.path.exists(f):
            return False
        have = json.load(open(f)).get("inputs")
        if have is None:
            raise ValueError(f"{f} was written before stages recorded their inputs (and with level "
                             "generator version 1): use a new work directory")
        diff = _diff(have, json.loads(json.dumps(_inputs(self.cfg, stage))))
        if diff and all(k.endswith("generator_version") for k in diff):
            raise ValueError(
                f"{self.workdir}: stage {stage!r} was made with the level generator of an earlier "
                "version (see leafe_jax/envs/sokoban/generator.py VERSION): its levels differ "
                "from today's; use a new work directory")
        if diff:
            raise ValueError(
                f"{self.workdir}: stage {stage!r} was made with other settings ({', '.join(diff)} "
                f"differ); use a new work directory, or delete {os.path.join(self.workdir, stage)} "
                "and the stages built on it")
        return True

    def mark(self, stage):
        path = os.path.join(self.workdir, stage)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "DONE"), "w") as fh:
            json.dump({"inputs": _inputs(self.cfg, stage)}, fh, indent=1)


def _log(msg):
    print(f"[leafe pipeline] {msg}", flush=True)


def run_pipeline(cfg: PipelineConfig, workdir: str, *, progress: bool = True) -> dict:
    from leafe_jax.agent.pools import level_pool
    from leafe_jax.agent.pretrain import PretrainConfig, pretrain_base_policy
    from leafe_jax.envs.sokoban import get_preset
    from leafe_jax.policy.config import get_config

    check_context(cfg)
    os.makedirs(workdir, exist_ok=True)
    cfg_file = os.path.join(workdir, "config.json")
    check = _Stages(workdir, cfg)
    timer = Timer(os.path.join(workdir, "timings.json"))
    p = cfg.pipeline
    preset = get_preset(p.preset)
    model_cfg = get_config(p.model)
    env = preset.make_env()
    params = env.default_params

    # 1. base policy
    base_dir = os.path.join(workdir, "base")
    if not check.done("base"):
        _log("base policy: behaviour cloning")
        b = cfg.base
        timer.run("base", lambda: pretrain_base_policy(
            preset, model_cfg, PretrainConfig(num_demo_levels=b.demo_levels, exp_per_episode=b.exp_per_episode,
                                              steps=b.steps, batch_size=b.batch_size, learning_rate=b.lr,
                                              seed=p.seed), base_dir, progress=progress))
        check.mark("base")
    base_model = _load(base_dir)

    # 2. Stage 1 on the training pool (disjoint from demo and eval levels)
    demo = level_pool("demo", cfg.base.demo_levels, preset.generator, p.seed)
    train = level_pool("train", cfg.stage1.train_levels, preset.generator, p.seed, exclude=(demo,))
    trees = {}
    for strategy in cfg.stage1.strategies:
        name = f"stage1/{strategy}"
        out = os.path.join(workdir, name)
        if not check.done(name):
            _log(f"stage 1: {strategy}")
            timer.run(f"stage1_{strategy}", lambda: _stage1(base_model, env, params, train, cfg, strategy,
                                                            out, progress))
            check.mark(name)
        trees[strategy] = out

    # 3. Stage-2 datasets and 4. SFT
    variants = {}
    for v in cfg.stage2.variants:
        data_dir = os.path.join(workdir, "data", v) if v != "bc" else os.path.join(base_dir, "data")
        if v != "bc" and not check.done(f"data/{v}"):
            _log(f"dataset: {v}")
            timer.run(f"data_{v}", lambda: _dataset(trees["rollback"], v, cfg, data_dir))
            check.mark(f"data/{v}")
        if v != "bc" and json.load(open(os.path.join(data_dir, "stats.json")))["examples"] == 0:
            warnings.warn(f"Stage-2 variant {v!r} has no examples (no successful rollouts of the "
                          "kind it needs): skipped")
            continue
        sft_dir = os.path.join(workdir, "sft", v)
        if not check.done(f"sft/{v}"):
            _log(f"stage 2: {v}")
            timer.run(f"sft_{v}", lambda: _finetune(base_dir, data_dir, sft_dir, cfg, progress))
            check.mark(f"sft/{v}")
        variants[v] = sft_dir

    # 4b. baselines from the same base policy, at LEAFE's Stage-1 env-step budget
    budget = _budget(trees.get("rollback"), cfg)
    for method in cfg.baselines.methods:
        name = f"baselines/{method}"
        out = os.path.join(workdir, name)
        if not check.done(name):
            _log(f"baseline: {method} (env-step budget {budget['env_steps']})")
            fn = _grpo if method == "grpo" else _early_experience
            timer.run(method, lambda: fn(base_dir, train, demo, env, params, preset, cfg, out,
                                         budget, progress))
            check.mark(name)
        variants[method.replace("_", "-")] = out

    # 5. Pass@k on held-out levels: each model once (a model added later is evaluated alone)
    _evaluate(base_dir, variants, env, params, preset, cfg, (demo, train), os.path.join(workdir, "eval"),
              check, timer, progress)
    with open(cfg_file, "w") as fh:       # the config of the latest run; each stage keeps its own
        json.dump(cfg.to_dict(), fh, indent=1)
    report = _report(workdir, cfg, trees, timer.t)
    _log(f"report: {os.path.join(workdir, 'report.md')}")
    return report


def _load(workdir):
    from leafe_jax.cli.evaluate import load_policy
    return load_policy(workdir)[0]


def _stage1(model, env, params, train, cfg, strategy, out, progress):
    from leafe_jax.leafe.explore import ExploreConfig, explore, solved_within, tree_stats
    from leafe_jax.leafe.render import render_tree

    s = cfg.stage1
    ablation = dict(STAGE1[strategy])
    reflector = None
    if ablation.pop("reflector", None) == "oracle":
        from leafe_jax.leafe.reflect import OracleReflector
        reflector = OracleReflector(env.height, env.width, num_candidates=s.children)
    ec = ExploreConfig(**{"strategy": strategy.split("_")[0], "budget": s.budget, "max_depth": s.max_depth,
                          "children": s.children, "use_experience": s.use_experience,
                          "use_mask": s.use_mask, "reflect_every": s.reflect_every,
                          "temperature": s.temperature, **ablation})
    tree = explore(model, env, params, train.level, jax.random.key(cfg.pipeline.seed + 1000), ec,
                   reflector=reflector, progress=progress)
    os.makedirs(out, exist_ok=True)
    save_tree(tree, os.path.join(out, "tree.npz"))
    stats = tree_stats(tree) | {"solved_within_k": solved_within(tree).mean(0).tolist()}
    with open(os.path.join(out, "stats.json"), "w") as fh:
        json.dump(stats, fh, indent=1)
    with open(os.path.join(out, "trees.txt"), "w") as fh:
        for b in _example_tasks(tree):
            fh.write(render_tree(tree, b, env.width) + "\n\n")


def _example_tasks(tree, n=3):
    """The tasks with the most rollouts that ended solved, else the first ones."""
    score = tree.valid.sum(1) + 100 * (tree.valid & tree.solved & (tree.parent >= 0)).any(1)
    return list(np.argsort(-score, kind="stable")[:n])


def _dataset(tree_dir, variant, cfg, data_dir):
    from leafe_jax.data.store import write_sft
    from leafe_jax.leafe.distill import DistillConfig, stage2_examples

    s = cfg.stage2
    dc = DistillConfig(rehearsal=variant in ("leafe", "rehearsal"), e2p=variant in ("leafe", "e2p"),
                       e2p_suffix=s.e2p_suffix, beta=s.beta, dedupe=s.dedupe)
    tree = load_tree(os.path.join(tree_dir, "tree.npz"))
    records, stats = stage2_examples(tree, dc)
    if stats["successful_branches"] == 0 and dc.e2p:
        warnings.warn("Stage 1 produced no successful rollback branch: there is nothing to distil "
                      "(e2p is empty); LEAFE reduces to rehearsal here. Raise the budget K, the "
                      "depth D or the number of training levels.")
    os.makedirs(data_dir, exist_ok=True)
    stats["examples"] = 0 if records is None else len(records)
    if records is not None:
        write_sft(records, data_dir, overwrite=True)
        stats["max_len"] = int(max(len(t) for t in records.tokens))
    with open(os.path.join(data_dir, "stats.json"), "w") as fh:
        json.dump(stats, fh, indent=1)


def _finetune(base_dir, data_dir, sft_dir, cfg, progress):
    from leafe_jax.cli.evaluate import load_policy
    from leafe_jax.data.loader import round_up, sft_batches
    from leafe_jax.data.store import sft_source
    from leafe_jax.train.loop import LoopConfig, train_loop
    from leafe_jax.train.optim import OptimConfig, create_optimizer

    s = cfg.stage2
    model, meta = load_policy(base_dir)
    stats = json.load(open(os.path.join(data_dir, "stats.json")))
    max_len = round_up(stats["max_len"])
    data = sft_batches(sft_source(data_dir), batch_size=s.batch_size, max_len=max_len,
                       seed=cfg.pipeline.seed)
    opt = create_optimizer(model, OptimConfig(learning_rate=s.lr, warmup_steps=s.steps // 10,
                                              total_steps=s.steps))
    train_loop(model, opt, data, LoopConfig(num_steps=s.steps, log_every=max(1, min(25, s.steps)),
                                            ckpt_every=max(1, s.steps // 2), progress=progress),
               sft_dir, meta={"model": meta["model"], "preset": meta.get("preset"),
                              "base": base_dir, "data": data_dir})


def _budget(rollback_dir, cfg) -> dict:
    """Env steps (and policy tokens) LEAFE's Stage 1 spent; the baselines get the same.
    Also the base policy's mean episode length (its roots), to size GRPO's batches."""
    if rollback_dir is None:
        return {"env_steps": 0, "tokens": 0, "root_len": 1.0}
    st = json.load(open(os.path.join(rollback_dir, "stats.json")))
    from leafe_jax.leafe.explore import load_tree
    tree = load_tree(os.path.join(rollback_dir, "tree.npz"))
    return {"env_steps": int(st["env_steps"]), "tokens": int(st["tokens"]),
            "root_len": float(tree.env_steps[:, 0].mean())}


def _grpo(base_dir, train, demo, env, params, preset, cfg, out, budget, progress):
    from leafe_jax.baselines.grpo import GRPOConfig, train_grpo
    from leafe_jax.cli.evaluate import load_policy
    from leafe_jax.train.optim import OptimConfig, create_optimizer

    b = cfg.baselines
    gc = GRPOConfig(tasks_per_step=b.grpo_tasks_per_step, group_size=b.grpo_group_size,
                    beta=b.grpo_beta, eps=b.grpo_eps, epochs=b.grpo_epochs,
                    minibatches=b.grpo_minibatches, shaped=b.grpo_shaped)
    per_batch = b.grpo_tasks_per_step * b.grpo_group_size * budget["root_len"]
    steps = max(1, round(budget["env_steps"] / per_batch)) if b.match_budget else b.grpo_steps
    model, meta = load_policy(base_dir)
    ref, _ = load_policy(base_dir)
    opt = create_optimizer(model, OptimConfig(learning_rate=b.grpo_lr, warmup_steps=steps // 10,
                                              total_steps=steps))
    final = train_grpo(model, ref, env, params, train.level, gc, opt, steps, out,
                       key=jax.random.key(cfg.pipeline.seed + 3000), progress=progress,
                       meta={"model": meta["model"], "preset": meta.get("preset"), "base": base_dir},
                       ckpt_every=max(1, steps // 2))
    spent = _metric_sum(out, "env_steps")
    with open(os.path.join(out, "budget.json"), "w") as fh:
        json.dump({"env_steps": spent, "tokens": _metric_sum(out, "tokens_sampled"),
                   "rollout_batches": steps, "optimizer_steps": steps * gc.epochs * gc.minibatches,
                   "target_env_steps": budget["env_steps"], "final": final}, fh, indent=1)


def _metric_sum(workdir, key):
    """Sum of a per-step metric over the JSONL log (last record per step wins)."""
    by_step = {}
    for line in open(os.path.join(workdir, "metrics.jsonl")):
        r = json.loads(line)
        if key in r:
            by_step[r["step"]] = r[key]
    return int(sum(by_step.values()))


def _early_experience(base_dir, train, demo, env, params, preset, cfg, out, budget, progress):
    from leafe_jax.baselines.early_experience import world_model_examples
    from leafe_jax.data.loader import round_up, sft_batches
    from leafe_jax.data.store import sft_source, write_sft
    from leafe_jax.cli.evaluate import load_policy
    from leafe_jax.train.loop import LoopConfig, train_loop
    from leafe_jax.train.optim import OptimConfig, create_optimizer

    b, s = cfg.baselines, cfg.stage2
    lengths = np.asarray(demo.solution_len)
    if b.match_budget:      # demo levels whose states x alternatives match the budget
        need = np.cumsum(lengths * b.ee_alternatives)
        m = int(min(len(lengths), np.searchsorted(need, budget["env_steps"]) + 1))
    else:
        m = min(len(lengths), b.ee_demo_levels)
    sub = jax.tree.map(lambda x: x[:m], demo)
    rec, env_steps = world_model_examples(env, params, sub.level, np.asarray(sub.solution),
                                          lengths[:m], num_alternatives=b.ee_alternatives,
                                          rng=np.random.default_rng(cfg.pipeline.seed))
    data_dir = os.path.join(out, "data")
    write_sft(rec, data_dir, overwrite=True)
    wm_steps = int(round(b.ee_wm_fraction * s.steps))
    model, meta = load_policy(base_dir)
    max_wm = round_up(max(len(t) for t in rec.tokens))
    phases = [("wm", data_dir, wm_steps, max_wm),
              ("imitation", os.path.join(base_dir, "data"), s.steps - wm_steps,
               round_up(json.load(open(os.path.join(base_dir, "data", "stats.json")))["max_len"]))]
    for name, d, steps, max_len in phases:
        if steps < 1:
            continue
        opt = create_optimizer(model, OptimConfig(learning_rate=b.ee_lr, warmup_steps=steps // 10,
                                                  total_steps=steps))
        train_loop(model, opt, sft_batches(sft_source(d), batch_size=s.batch_size, max_len=max_len,
                                           seed=cfg.pipeline.seed),
                   LoopConfig(num_steps=steps, log_every=max(1, min(25, steps)),
                              ckpt_every=max(1, steps), progress=progress),
                   os.path.join(out, name), meta={"model": meta["model"], "preset": meta.get("preset")})
    # the evaluated policy is the last phase's checkpoint
    final_dir = os.path.join(out, "imitation" if s.steps - wm_steps >= 1 else "wm")
    with open(os.path.join(out, "budget.json"), "w") as fh:
        json.dump({"env_steps": env_steps, "tokens": 0, "demo_levels": m, "examples": len(rec),
                   "wm_steps": wm_steps, "imitation_steps": s.steps - wm_steps,
                   "target_env_steps": budget["env_steps"], "policy_dir": final_dir}, fh, indent=1)


def _evaluate(base_dir, variants, env, params, preset, cfg, pools, eval_dir, check, timer, progress):
    """Pass@k of every model on the same held-out levels with the same sampling keys; each
    model's success matrix is kept in ``eval/<name>/`` and the sweep rewritten over them all."""
    from leafe_jax.agent.pools import level_pool
    from leafe_jax.eval.sweep import sample_success, write_sweep

    p = cfg.pipeline
    models = [("base", base_dir)] + [(v if v != "bc" else "bc-control", w) for v, w in variants.items()]
    held = None
    results = {}
    for name, d in models:
        f = os.path.join(eval_dir, name, "success.npy")
        if not check.done(f"eval/{name}"):
            _log(f"eval: {name}")
            bj = os.path.join(d, "budget.json")
            if os.path.exists(bj) and "policy_dir" in json.load(open(bj)):
                d = json.load(open(bj))["policy_dir"]
            model = _load(d)
            if held is None:            # disjoint from the demo and training pools
                held = level_pool("eval", cfg.eval.levels, preset.generator, p.seed, exclude=pools)
            succ = timer.run(f"eval_{name}", lambda: sample_success(
                model, env, params, held.level, cfg.eval.n, jax.random.key(p.seed + 2000),
                temperature=cfg.eval.temperature, progress=progress))
            os.makedirs(os.path.dirname(f), exist_ok=True)
            np.save(f, np.asarray(succ))
            check.mark(f"eval/{name}")
        results[name] = np.load(f)
    write_sweep(results, eval_dir, title=f"{p.preset}, {cfg.eval.levels} held-out levels, seed {p.seed}")


def _report(workdir, cfg, trees, timings) -> dict:
    passk = json.load(open(os.path.join(workdir, "eval", "passk.json")))
    s1 = {k: json.load(open(os.path.join(v, "stats.json"))) for k, v in trees.items()}
    lines = [f"# LEAFE pipeline report: {cfg.pipeline.preset}, model {cfg.pipeline.model}, "
             f"seed {cfg.pipeline.seed}", "",
             "## Pass@k on held-out levels (95 % bootstrap CI over levels)", "",
             open(os.path.join(workdir, "eval", "passk.md")).read().strip(), "",
             "![Pass@k](eval/passk.png)", "",
             f"## Stage 1 at equal budget (K = {cfg.stage1.budget} rollouts per task, "
             f"{cfg.stage1.train_levels} training levels)", "",
             "| strategy | solved within k = 1 ... K | env steps | policy tokens | "
             "branches / task | depth reached | successful branches |", "|---|---|---|---|---|---|---|"]
    for k, st in s1.items():
        sw = " / ".join(f"{100 * x:.1f}" for x in st["solved_within_k"])
        lines.append(f"| {k} | {sw} | {st['env_steps']} | {st['tokens']} | "
                     f"{st['branches_per_task']:.2f} | {st['max_depth_reached']} | "
                     f"{st['successful_branches']} ({100 * st['branch_success_rate']:.1f} %) |")
    if cfg.baselines.methods:
        lines += ["", "## Interaction budgets (env steps spent collecting training data)", "",
                  "| method | env steps | policy tokens | notes |", "|---|---|---|---|"]
        if "rollback" in s1:
            lines.append(f"| leafe / rehearsal | {s1['rollback']['env_steps']} | {s1['rollback']['tokens']} "
                         f"| Stage-1 rollback trees, K = {cfg.stage1.budget} |")
        if "bc" in cfg.stage2.variants:
            lines.append("| bc-control | 0 | 0 | demonstrations only |")
        for m in cfg.baselines.methods:
            bj = json.load(open(os.path.join(workdir, "baselines", m, "budget.json")))
            note = (f"{bj['rollout_batches']} rollout batches x {cfg.baselines.grpo_tasks_per_step} tasks x "
                    f"G = {cfg.baselines.grpo_group_size}" if m == "grpo" else
                    f"{bj['demo_levels']} demo levels x {cfg.baselines.ee_alternatives} alternatives")
            lines.append(f"| {m} | {bj['env_steps']} | {bj['tokens']} | {note} (target "
                         f"{bj['target_env_steps']}) |")
    lines += ["", "## Stage-2 data", ""]
    for v in cfg.stage2.variants:
        f = os.path.join(workdir, "data", v, "stats.json")
        if os.path.exists(f):
            lines.append(f"- {v}: {json.load(open(f))}")
    if "rollback" in trees:
        lines += ["", "## Example rollback trees", "", "```",
                  open(os.path.join(trees["rollback"], "trees.txt")).read().strip(), "```"]
    lines += ["", "## Timings (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines.append(f"| total (every stage run in this work directory) | {sum(timings.values()):.0f} |")
    with open(os.path.join(workdir, "report.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return {"passk": passk["passk"], "stage1": s1, "timings": timings}

"""Full vs windowed history, measured on the validation pool (never the held-out levels).

    python experiments/history_window_val.py --workdir runs/history_window_val [--histories 0,2]

For each history length: the base policy of the pipeline's ``[base]`` stage (the config's
base, trained with that window; resumes), then on the validation pool
(``envs.sokoban.pools.validation_pool``: disjoint from the demo, training and held-out
levels of the same seed) Pass@k from ``--n`` samples per level, Stage-1 rollback yield
(solved within K, env steps) on the same levels, and the wall time of each (indicative
only: a speed comparison is ``benchmarks/history_window.py``, side by side). Each history's
success matrix is kept (``h<h>/success.npy``; a finished history without one is evaluated
again with the same key), and the first history is compared with each other one level by
level: paired Pass@1 / Pass@n differences with 95 % bootstrap CIs. Writes
``<workdir>/history_window_val.json``; the numbers go to docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from leafe_jax.envs.sokoban import get_preset
from leafe_jax.envs.sokoban.pools import validation_pool
from leafe_jax.eval.passk import bootstrap_ci, pass_at_k_per_task, pass_at_k_table
from leafe_jax.interfaces.symbolic.interface import SymbolicSokoban
from leafe_jax.leafe.explore import explore
from leafe_jax.leafe.tree import solved_within, tree_stats
from leafe_jax.pipeline import config as C
from leafe_jax.pipeline import runners
from leafe_jax.train.checkpoint import load_policy


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", nargs="?", default=None, help="pipeline TOML (default: the small default)")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--histories", default="0,2")
    ap.add_argument("--levels", type=int, default=64)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    base_cfg = C.load(args.config, args.overrides)
    out_file = os.path.join(args.workdir, "history_window_val.json")
    results = json.load(open(out_file)) if os.path.exists(out_file) else {}
    histories = [int(x) for x in args.histories.split(",")]
    for h in histories:
        cfg = C.from_dict({"experiment": {"history_length": h}}, base=base_cfg)
        ex = cfg.experiment
        preset = get_preset(ex.preset)
        wd = os.path.join(args.workdir, f"h{h}")
        if str(h) in results:
            if not os.path.exists(os.path.join(wd, "success.npy")):      # made before it was kept
                agent = SymbolicSokoban(preset.make_env())
                succ = agent.success(load_policy(os.path.join(wd, "base"))[0], _val(args, cfg),
                                     args.n, jax.random.key(ex.seed + 7000))
                again = {str(k): v["mean"] for k, v in pass_at_k_table(succ, ci=False).items()}
                if any(abs(again[k] - v["mean"]) > 1e-9 for k, v in results[str(h)]["passk"].items()):
                    raise RuntimeError(f"h{h}: the re-evaluation does not reproduce the recorded Pass@k")
                np.save(os.path.join(wd, "success.npy"), np.asarray(succ))
            continue
        agent = SymbolicSokoban(preset.make_env())
        t0 = time.perf_counter()
        if not os.path.exists(os.path.join(wd, "base", "DONE")):
            runners.base(preset, ex.policy_config(), cfg, os.path.join(wd, "base"), True)
            open(os.path.join(wd, "base", "DONE"), "w").close()
        t_base = time.perf_counter() - t0
        model = load_policy(os.path.join(wd, "base"))[0]
        val = _val(args, cfg)
        t0 = time.perf_counter()
        succ = agent.success(model, val, args.n, jax.random.key(ex.seed + 7000))
        t_eval = time.perf_counter() - t0
        np.save(os.path.join(wd, "success.npy"), np.asarray(succ))
        t0 = time.perf_counter()
        tree = explore(agent, model, val, jax.random.key(ex.seed + 7001), cfg.stage1.explore, "rollback")
        t_s1 = time.perf_counter() - t0
        st = tree_stats(tree)
        results[str(h)] = {
            "history_length": h, "val_levels": args.levels, "n": args.n,
            "passk": {str(k): v for k, v in pass_at_k_table(succ).items()},
            "stage1_solved_within_k": solved_within(tree).mean(0).tolist(),
            "stage1_env_steps": int(st["env_steps"]), "stage1_successful_branches": int(st["successful_branches"]),
            "base_s": t_base, "eval_s": t_eval, "stage1_s": t_s1,
            "eval_episodes_per_s": args.levels * args.n / t_eval}
        os.makedirs(args.workdir, exist_ok=True)
        with open(out_file, "w") as fh:
            json.dump(results, fh, indent=1)
        print(json.dumps(results[str(h)]), flush=True)
    results["paired"] = _paired(args.workdir, histories, args.n)
    with open(out_file, "w") as fh:
        json.dump(results, fh, indent=1)
    print(json.dumps(results["paired"]), flush=True)


def _val(args, cfg):
    """The validation levels (the same for every history: they depend on the seed and pools)."""
    preset = get_preset(cfg.experiment.preset)
    return validation_pool(args.levels, preset.generator, cfg.experiment.seed, demo_levels=cfg.base.demo_levels,
                           train_levels=cfg.stage1.train_levels, eval_levels=cfg.eval.levels).level


def _paired(workdir, histories, n) -> dict:
    """Each other history minus the first, per validation level: Pass@1 and Pass@n."""
    succ = {h: np.load(os.path.join(workdir, f"h{h}", "success.npy")) for h in histories}
    out = {}
    for h in histories[1:]:
        row = {}
        for k in (1, n):
            d = pass_at_k_per_task(succ[h], k) - pass_at_k_per_task(succ[histories[0]], k)
            lo, hi = bootstrap_ci(d)
            row[str(k)] = {"mean": float(d.mean()), "ci_low": lo, "ci_high": hi}
        out[f"h{h} - h{histories[0]}"] = row
    return out


if __name__ == "__main__":
    main()

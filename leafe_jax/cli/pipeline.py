"""Run LEAFE end to end: base policy, Stage 1, datasets, Stage 2, Pass@k, report (resumable)."""

from __future__ import annotations

import argparse
import json


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None,
                   help="TOML config (default: the small config, experiments/leafe_small.toml)")
    p.add_argument("--workdir", default="runs/leafe_small", help="everything goes here (resumed)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set pipeline.seed=1")
    p.add_argument("--tiny", action="store_true", help="seconds-scale config (smoke test)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from leafe_jax.leafe import config as C
    from leafe_jax.leafe.pipeline import run_pipeline

    if args.tiny:
        if args.config:
            raise ValueError("--tiny and a config file exclude each other")
        cfg = C.from_dict(_overrides(args.set), base=C.tiny())
    else:
        cfg = C.load(args.config, args.set)
    report = run_pipeline(cfg, args.workdir, progress=not args.no_progress)
    brief = {name: {k: round(v["mean"], 4) for k, v in table.items() if k in ("1", "128")}
             for name, table in report["passk"].items()}
    print(json.dumps({"workdir": args.workdir, "pass@k": brief,
                      "minutes": round(sum(report["timings"].values()) / 60, 1)}, indent=1))
    return 0


def _overrides(items):
    from leafe_jax.leafe.config import load
    import dataclasses
    cfg = load(None, items)
    default = load(None, [])
    out = {}
    for sec in ("pipeline", "base", "stage1", "stage2", "baselines", "eval"):
        a, b = dataclasses.asdict(getattr(cfg, sec)), dataclasses.asdict(getattr(default, sec))
        diff = {k: v for k, v in a.items() if v != b[k]}
        if diff:
            out[sec] = diff
    return out

"""Run LEAFE end to end: base policy, Stage 1, datasets, Stage 2, Pass@k, report (resumable)."""

from __future__ import annotations

import argparse
import json


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None,
                   help="TOML file with what differs from the built-in defaults (the small "
                        "experiment; experiments/leafe_small.toml documents it)")
    p.add_argument("--workdir", default="runs/leafe_small", help="everything goes here (resumed)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set experiment.seed=1 or "
                        "--set stage1.explore.budget=4 (applied as given, also with --tiny)")
    p.add_argument("--tiny", action="store_true", help="seconds-scale config (smoke test)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from leafe_jax.pipeline import config as C
    from leafe_jax.pipeline.run import run_pipeline

    if args.tiny and args.config:
        raise ValueError("--tiny and a config file exclude each other")
    cfg = C.load(args.config, args.set, base=C.tiny() if args.tiny else None)
    report = run_pipeline(cfg, args.workdir, progress=not args.no_progress)
    brief = {name: {k: round(v["mean"], 4) for k, v in table.items() if k in ("1", "128")}
             for name, table in report["passk"].items()}
    print(json.dumps({"workdir": args.workdir, "pass@k": brief,
                      "minutes": round(sum(report["timings"].values()) / 60, 1)}, indent=1))
    return 0

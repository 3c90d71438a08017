"""``leafe`` entry point: a registry of subcommand groups, each in its own module."""

from __future__ import annotations

import argparse
import sys

from leafe_jax.cli import code_check, evaluate, export, generate, pipeline, play, pretrain, sokoban


GROUPS = {"pipeline": pipeline, "sokoban": sokoban, "pretrain": pretrain, "evaluate": evaluate,
          "play": play, "export": export, "generate": generate, "code-check": code_check}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leafe", description="LEAFE in JAX: command line.")
    mh = parser.add_argument_group("multi-host (detected on Cloud TPU slices; else give all three)")
    mh.add_argument("--coordinator", help="host:port of process 0")
    mh.add_argument("--num-processes", type=int)
    mh.add_argument("--process-id", type=int)
    sub = parser.add_subparsers(dest="group", required=True)
    for name, module in GROUPS.items():
        module.register(sub.add_parser(name, help=module.__doc__.splitlines()[0]))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from leafe_jax.distributed import maybe_initialize
        maybe_initialize(args.coordinator, args.num_processes, args.process_id)
        return int(args.func(args) or 0)
    except Exception as e:
        from leafe_jax.train.loop import Preempted
        if isinstance(e, Preempted):
            print(f"leafe: {e}", file=sys.stderr)
            return 143
        # Errors of the user's making (bad config, missing or corrupt files, a full or
        # read-only disk, a busy work directory): one line, no traceback.
        if not isinstance(e, (ValueError, KeyError, OSError, FloatingPointError)):
            raise
        print(f"leafe: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None and e.filename:
        return f"{e.strerror}: {e.filename}"
    return str(e) if not isinstance(e, KeyError) else f"{e.args[0]}"


if __name__ == "__main__":
    sys.exit(main())

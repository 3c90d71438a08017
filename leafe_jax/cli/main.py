"""``leafe`` entry point: a registry of subcommand groups, each in its own module."""

from __future__ import annotations

import argparse
import sys

from leafe_jax.cli import evaluate, play, pretrain, sokoban


GROUPS = {"sokoban": sokoban, "pretrain": pretrain, "evaluate": evaluate, "play": play}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leafe", description="LEAFE in JAX: command line.")
    sub = parser.add_subparsers(dest="group", required=True)
    for name, module in GROUPS.items():
        module.register(sub.add_parser(name, help=module.__doc__.splitlines()[0]))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"leafe: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

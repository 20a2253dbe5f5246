"""The ``hashbench`` command.

Each subcommand lives in its own module of this package and exposes
``add_parser(subparsers)``, which adds its parser and sets ``func`` (called
with the parsed arguments, returning an exit code). Modules import heavy
libraries (torch, ray) inside their functions so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hashbench import __version__
from hashbench.platform.errors import HashbenchError

# (module in this package, in the order they are listed by --help)
SUBCOMMANDS = ["data", "methods", "eval", "train", "fewshot", "sweep", "leaderboard", "reproduce",
               "quickstart", "dashboard"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hashbench",
        description="Benchmark hash codes and compact embeddings for medical image retrieval.")
    parser.add_argument("--version", action="version", version=f"hashbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}_cmd":
                continue  # subcommand not installed in this build
            raise
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except HashbenchError as exc:
        print(f"hashbench {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"hashbench {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

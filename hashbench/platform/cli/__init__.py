"""The ``hashbench`` command.

Each subcommand lives in its own module of this package and exposes
``add_parser(subparsers)``, which adds its parser and sets ``func`` (called
with the parsed arguments, returning an exit code). Modules import heavy
libraries (torch, ray) inside their functions so ``--help`` stays fast, and
``main`` imports only the module of the command it runs (``build_parser``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from hashbench import __version__
from hashbench.platform.errors import HashbenchError, HashbenchWarning

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (module in this package, in the order they are listed by --help)
SUBCOMMANDS = ["data", "methods", "eval", "train", "fewshot", "sweep", "leaderboard", "compare", "reproduce",
               "quickstart", "dashboard"]


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The ``hashbench`` parser. Given the arguments ``argv`` of a call that starts with a known
    command, it holds that command's parser only (all that parsing them needs: the top-level parser
    has no option before the command but ``-h`` and ``--version``); otherwise, e.g. for
    ``hashbench --help``, every subcommand's."""
    parser = argparse.ArgumentParser(
        prog="hashbench",
        description="Benchmark hash codes and compact embeddings for medical image retrieval.")
    parser.add_argument("--version", action="version", version=f"hashbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = [argv[0]] if argv and argv[0] in SUBCOMMANDS else SUBCOMMANDS
    for name in names:
        try:
            module = importlib.import_module(f"{__name__}.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}_cmd":
                continue  # subcommand not installed in this build
            raise
        module.add_parser(sub)
    return parser


def _clean_warnings(command: str):
    """A ``warnings.showwarning`` that prints hashbench's own warnings (a skipped file, ...) as one
    line ``hashbench <command>: warning: <message>`` on stderr, without Python's file:line prefix;
    warnings of other libraries keep Python's format."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        ours = issubclass(category, HashbenchWarning) or (
            issubclass(category, UserWarning) and os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep))
        if not ours:
            return default(message, category, filename, lineno, file, line)
        text = " ".join(str(message).split())  # one line
        try:
            print(f"hashbench {command}: warning: {text}", file=file or sys.stderr)
        except (OSError, ValueError):
            pass

    return show


def _quiet_broken_pipe() -> int:
    """stdout's reader went away (``hashbench data info | head``): stop quietly, no traceback.

    Later writes (and the interpreter's final flush) go to /dev/null; the status is 141, a
    SIGPIPE'd command's, as `yes | head` gives."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return 141


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    saved = warnings.showwarning
    warnings.showwarning = _clean_warnings(args.command)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except HashbenchError as exc:
        print(f"hashbench {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"hashbench {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = saved


if __name__ == "__main__":
    sys.exit(main())

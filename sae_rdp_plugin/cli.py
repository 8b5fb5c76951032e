"""``sae-rdp``: the command-line entry point.

Each command group lives in ``sae_rdp_plugin/commands/<group>.py`` and exposes
``register(subparsers)``; heavy imports happen inside the handlers so ``sae-rdp --help`` is fast.
Every handler raises :class:`~sae_rdp_plugin.errors.SaeRdpError` (or ValueError / OSError) on bad
input; :func:`main` prints it as one line, ``error: ...``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn

COMMAND_GROUPS = [
    "demo",
    "theory",
    "sweep",
    "audit",
    "train",
    "identifiability",
    "models",
    "distributed",
]


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error contract: a usage error is one line, ``error: ...``, exit 2
    (argparse's own error prints the usage block first). Subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}\n")


def run_entry_point(fn: Callable[[], Any]) -> int:
    """Run a command-line entry point under the error contract: bad input (SaeRdpError, ValueError,
    OSError, KeyError, JSON errors) is printed as one line ``error: ...`` and gives exit status 2."""
    try:
        rc = fn()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError, json.JSONDecodeError) as exc:  # SaeRdpError is a ValueError
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return rc if isinstance(rc, int) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="sae-rdp",
        description=(
            "Rate-Distortion-Polysemanticity theory, metrics and audits, and weighted SAEs for SAELens/SAEBench."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in COMMAND_GROUPS:
        mod = importlib.import_module(f"sae_rdp_plugin.commands.{group}")
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_entry_point(lambda: int(args.func(args) or 0))


if __name__ == "__main__":
    sys.exit(main())

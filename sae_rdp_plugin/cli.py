"""``sae-rdp``: the command-line entry point.

Each command group lives in ``sae_rdp_plugin/commands/<group>.py`` and exposes
``register(subparsers)``; heavy imports happen inside the handlers so ``sae-rdp --help`` is fast.
Every handler raises :class:`~sae_rdp_plugin.errors.SaeRdpError` (or ValueError / OSError) on bad
input; :func:`main` prints it as one line, ``error: ...``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
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


class Terminated(BaseException):
    """SIGTERM, raised in the main thread (as SIGINT raises KeyboardInterrupt) so that the cleanup of a
    command (temporary files, folder locks) runs before the process exits."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _bad_input_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a failed read/write, not a bug: printed as one line.
    RecursionError: a too deeply nested JSON file; UnpicklingError: a pickle torch refuses to load
    (weights_only); SafetensorError: a truncated or corrupt .safetensors file; OutOfMemoryError: a
    configuration too large for the device."""
    import pickle

    types: list[type[BaseException]] = [ValueError, OSError, KeyError, RecursionError, MemoryError]
    types.append(pickle.UnpicklingError)
    if "safetensors" in sys.modules:
        types.append(sys.modules["safetensors"].SafetensorError)
    if "torch" in sys.modules and hasattr(sys.modules["torch"], "OutOfMemoryError"):
        types.append(sys.modules["torch"].OutOfMemoryError)
    return tuple(types)


def _close_progress_bars() -> None:
    """End the lines of progress bars an exception left open, so the error starts its own line."""
    tqdm_mod = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm_mod, "tqdm", None), "_instances", ())):
        try:
            bar.close()
        except Exception:  # a half-torn-down bar must not hide the error
            pass


def _error(msg: str) -> None:
    _close_progress_bars()
    print(f"error: {msg}", file=sys.stderr)


def run_entry_point(fn: Callable[[], Any]) -> int:
    """Run a command-line entry point under the error contract: bad input (SaeRdpError, ValueError,
    OSError, KeyError, JSON errors, a too deeply nested file, an unloadable pickle or safetensors file,
    out of memory) is printed as one line ``error: ...`` and gives exit status 2; SIGINT gives 130 and
    SIGTERM 143, after the command's own cleanup."""
    import signal
    import threading

    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        try:
            rc = fn()
        except KeyboardInterrupt:
            _error("interrupted")
            return 130
        except Terminated:
            _error("terminated (SIGTERM)")
            return 143
        except _bad_input_types() as exc:  # SaeRdpError is a ValueError
            text = str(exc).strip()
            msg = text.splitlines()[0] if text else type(exc).__name__
            if isinstance(exc, RecursionError):
                msg = f"input nested too deeply ({msg})"
            elif isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
                msg = f"out of memory ({msg[:200]})"
            _error(msg)
            return 2
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
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

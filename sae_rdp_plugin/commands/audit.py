"""`sae-rdp audit ...` commands (placeholder: owned by the audit work, not yet implemented)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `audit` command group to the top-level parser."""
    return None


def demo_section(out: Path) -> str | None:
    """Run this group's part of `sae-rdp demo` into `out`; return its markdown (None = nothing yet)."""
    return None

"""Atomic file writes: every result file is written to a temporary sibling and renamed into place,
so a killed job never leaves a truncated or partial result behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def atomic_save(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` (e.g. ``torch.save``/``savefig``) and rename the result into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        writer(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def replace_dir(staging: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Rename the finished folder ``staging`` to ``dest`` (a sibling), replacing what ``dest`` holds.

    The old ``dest`` is first moved aside into a hidden sibling, so ``dest`` is at every moment absent, the
    old complete folder or the new complete folder; if the swap fails the old folder is put back. The
    caller decides beforehand whether ``dest`` may be replaced (this function deletes the old one)."""
    staging, dest = Path(staging), Path(dest)
    if not dest.exists():
        os.replace(staging, dest)
        return dest
    aside = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old"))
    os.replace(dest, aside / "previous")
    try:
        os.replace(staging, dest)
    except BaseException:
        os.replace(aside / "previous", dest)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return dest

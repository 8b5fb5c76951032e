"""Atomic file writes, folder swaps, the checks before a command writes a folder, and a folder lock.

Every result file is written to a temporary sibling and renamed into place, so a killed job never leaves
a truncated or partial result behind. The temporary siblings are named ``.<name>.<8 random chars>.tmp``
(``atomic_save``: ``.<stem>.<8 random chars>.tmp<suffix>``, the suffix kept for writers that read it);
:func:`remove_stale_temps` removes the ones a killed job left, by that pattern and nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from sae_rdp_plugin.errors import SaeRdpError

# tempfile.mkstemp's random part: 8 characters of [a-z0-9_]
_TEMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (files of any size, constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        writer(Path(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # a full disk can surface here; the rename must not publish a short file
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_json_object(path: str | os.PathLike, what: str = "file") -> dict[str, Any]:
    """A JSON object file written by this package; unreadable, malformed or not an object: SaeRdpError
    naming ``what`` and the path."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise SaeRdpError(f"{what} {path} is unreadable ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise SaeRdpError(f"{what} {path} is not a JSON object")
    return obj


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of this module's temporary siblings (see the module docstring)."""
    return bool(_TEMP_RE.match(name))


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary siblings (by this module's naming pattern) directly in ``folder``: what a
    killed atomic write leaves. Call it only on a folder the caller owns and holds the lock of."""
    folder = Path(folder)
    gone = []
    if folder.is_dir():
        for p in folder.iterdir():
            if is_temp_name(p.name) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                gone.append(p)
    return gone


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
    try:
        os.replace(dest, aside / "previous")
    except BaseException:  # dest could not be moved (e.g. no permission on it): nothing left behind
        aside.rmdir()
        raise
    try:
        os.replace(staging, dest)
    except BaseException:
        os.replace(aside / "previous", dest)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return dest


@contextlib.contextmanager
def staged_folder(dest: str | os.PathLike) -> Iterator[Path]:
    """``with staged_folder(dest) as tmp: write into tmp``: a fresh hidden sibling ``.<dest>.<id>.partial``
    that replaces ``dest`` (:func:`replace_dir`) when the block succeeds. On failure it is deleted, with
    the parent folders this call created, so ``dest`` is never left with part of a set of files. The
    caller decides beforehand whether ``dest`` may be replaced (:func:`check_out_folder`)."""
    dest = Path(dest)
    created = []
    above = dest.absolute().parent
    while not above.exists():
        created.append(above)
        above = above.parent
    staging = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:12]}.partial"
    staging.mkdir(parents=True)
    try:
        yield staging
        replace_dir(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for d in created:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break
        raise


def check_parent_writable(p: Path, flag: str) -> Path:
    """``p`` if the nearest existing folder above it is a folder this process may write in, else SaeRdpError."""
    above = p.absolute().parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise SaeRdpError(f"{flag} {p}: {above} is not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise SaeRdpError(f"{flag} {p}: no permission to write in {above}")
    return p


def check_out_folder(path: str | os.PathLike, is_ours: Callable[[Path], bool], flag: str = "--out") -> Path:
    """``path`` as a Path if a command may write (or replace) the folder there: it does not exist, is an
    empty folder, or ``is_ours(path)`` (an earlier output of the same command); and the nearest existing
    folder above it is writable. Anything else raises SaeRdpError naming ``flag``; nothing is written."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise SaeRdpError(f"{flag} {p} is a broken symbolic link")
    if p.exists() and not p.is_dir():
        raise SaeRdpError(f"{flag} {p} exists and is not a folder")
    if p.is_dir() and any(p.iterdir()) and not is_ours(p):
        raise SaeRdpError(f"{flag} {p} is a non-empty folder this command did not write; give a new or empty folder")
    return check_parent_writable(p, flag)


def folder_holds_only(path: str | os.PathLike, known: Callable[[str], bool]) -> bool:
    """True if every entry directly in the folder ``path`` has a name ``known`` accepts (our temporary names
    aside). An earlier output of a command may be replaced only when this holds for the names that command
    writes: a user's file put into it must not be deleted with it."""
    return all(known(e.name) or is_temp_name(e.name) for e in Path(path).iterdir())


def check_out_file(
    path: str | os.PathLike,
    flag: str = "--out",
    inputs: tuple[str | os.PathLike, ...] = (),
    is_ours: Callable[[Path], bool] | None = None,
    suffix: str | None = None,
) -> Path:
    """``path`` as a Path if a command may write the file there: it is not a folder, ends in ``suffix`` (when
    given: the format the command writes, case-insensitive), is not one of the command's ``inputs`` (the same
    file by any name), and is either absent or ``is_ours(path)`` (a file this command wrote before); the nearest
    existing folder above it is writable. Anything else raises SaeRdpError naming ``flag``; nothing is
    written."""
    p = Path(path)
    if str(path) == "" or p.is_dir():
        raise SaeRdpError(f"{flag} {p} is a folder; give a file path")
    if suffix is not None and p.suffix.lower() != suffix.lower():
        raise SaeRdpError(f"{flag} {p} must end in {suffix} (the command writes a {suffix.lstrip('.').upper()} file)")
    for i in inputs:
        if Path(i).exists() and p.exists() and os.path.samefile(p, i):
            raise SaeRdpError(f"{flag} {p} is the input file {i}; give another path")
    if p.exists() or p.is_symlink():
        if is_ours is None or not p.is_file() or not is_ours(p):
            raise SaeRdpError(f"{flag} {p} exists and was not written by this command; give a new path")
    return check_parent_writable(p, flag)


def check_text_file(path: str | os.PathLike, flag: str, prefix_bytes: int = 1 << 20) -> Path:
    """``path`` as a Path if its first ``prefix_bytes`` read as UTF-8 text: no NUL byte and no invalid UTF-8
    sequence (a character cut at the end of the prefix is fine). A binary file (an archive, weights, an
    image) raises SaeRdpError naming ``flag`` and the first bad byte, instead of being decoded into garbage."""
    import codecs

    p = Path(path)
    with open(p, "rb") as f:
        data = f.read(prefix_bytes)
        at_end = not f.read(1)
    nul = data.find(b"\x00")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=at_end)
        bad = -1
    except UnicodeDecodeError as exc:
        bad = exc.start
    first = min(i for i in (nul, bad) if i >= 0) if max(nul, bad) >= 0 else -1
    if first >= 0:
        raise SaeRdpError(
            f"{flag} {p} is not a UTF-8 text file (byte {first} is {data[first]:#04x}); give a text file, a datasets "
            "folder with a 'tokens' column or a corpus folder"
        )
    return p


class FolderLock:
    """An exclusive lock on a folder for one process: ``with FolderLock(out): ...``.

    The lock is ``flock`` on ``<folder>/.sae-rdp.lock``, which holds the owner's pid; a second process
    gets SaeRdpError naming that pid. The file is removed on exit. A process killed with SIGKILL
    leaves the file but not the lock (the kernel drops it with the process), so the next run takes it
    over; :attr:`stale_pid` is then the dead owner's pid."""

    NAME = ".sae-rdp.lock"

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / self.NAME
        self.fd: int | None = None
        self.stale_pid: int | None = None

    def __enter__(self) -> FolderLock:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise SaeRdpError(
                    f"{self.path.parent} is in use by another sae-rdp process (pid {pid if pid else 'unknown'}, "
                    f"lock file {self.path}); wait for it to finish"
                ) from None
            except OSError as exc:
                os.close(fd)
                raise SaeRdpError(
                    f"cannot lock {self.path.parent}: {exc.strerror} (a file system without flock?)"
                ) from None
            try:  # the previous owner may have removed the file between our open and our lock: retry
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _read_pid(fd)
        if old and old != os.getpid():
            self.stale_pid = old
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding the lock (see the retry in __enter__)
            os.close(self.fd)
            self.fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None

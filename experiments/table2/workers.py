"""The device stages' spawned worker processes: dying with their parent, and the host-memory guard.

The absorption stage evaluates SAEs in several processes at once; SAEBench's k-sparse scoring builds ~300 KiB of
Python rows per test word in each (``diagnostics/absorption_memory.json``), so a few workers can take the machine's
memory. When a machine runs out of memory it can stop answering, and a call that loses its machine brings back
nothing, not even its record. :class:`MemoryGuard` samples the host's used memory and each worker's resident
memory while the workers run; when the used memory comes within ``floor_bytes`` of the limit, the supervisor stops
the worker holding the most memory among those evaluating an SAE (that SAE is left for a later call) rather than
letting the machine fail, and the record says what it saw: the peak used memory and when, each worker's peak
resident memory, and every stop.

The limit is :func:`sae_rdp_plugin.devices.memory_bytes` of the CPU, which honours ``SAE_RDP_HOST_MEMORY_GIB``:
on the device's Firecracker machines the RAM grows as it is used and ``MemTotal`` starts far below the machine's
memory (the device notes: 31 GiB read at the start of a 256 GiB machine), so ``stage.sh`` sets the kind's memory.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent dies (a stage killed from outside leaves no worker going
    on through the queue); elsewhere nothing."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def start_all(procs: list[Any]) -> float:
    """Start the spawned processes ``procs`` at once, each ``start()`` in a thread of its own; the seconds it took.

    A spawned child reads its pickled arguments only as it unpickles them, i.e. while importing what they need
    (torch; with a model, TransformerLens and its CUDA context), and the parent's ``start()`` writes them into a
    pipe: arguments larger than the pipe's buffer (a model with its tokenizer) keep each ``start()`` waiting for
    its child's imports, so a loop of ``start()`` calls starts the children one after another (README section 6
    gives the device's numbers). From threads, the children import at the same time. The first exception of any
    ``start()`` is raised once all threads have ended."""
    import threading

    errors: list[BaseException] = []

    def start(p: Any) -> None:
        try:
            p.start()
        except BaseException as e:  # noqa: BLE001 - raised below, in the caller's thread
            errors.append(e)

    t0 = time.time()
    threads = [threading.Thread(target=start, args=(p,), daemon=True) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.time() - t0


def _host_memory() -> tuple[int, int] | None:
    """(MemTotal, MemAvailable) bytes of this machine (psutil, else /proc/meminfo); None where unreadable."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available)
    except Exception:  # noqa: BLE001 - psutil missing: /proc/meminfo (Linux), else unknown
        f = _proc_kib("/proc/meminfo", ("MemTotal", "MemAvailable"))
        return None if f is None else (f["MemTotal"], f["MemAvailable"])


def host_used_bytes() -> int | None:
    """Memory in use on this machine, ``MemTotal - MemAvailable`` (page cache that can be dropped not counted);
    None where it cannot be read. On a machine whose RAM grows as it is used both terms grow; their difference
    is what the processes hold."""
    m = _host_memory()
    return None if m is None else m[0] - m[1]


def process_rss_bytes(pid: int) -> tuple[int, int] | None:
    """(resident, peak resident) bytes of process ``pid`` (``VmRSS``, ``VmHWM`` of /proc/<pid>/status); None
    where it cannot be read (not Linux, the process gone)."""
    f = _proc_kib(f"/proc/{pid}/status", ("VmRSS", "VmHWM"))
    return None if f is None else (f["VmRSS"], f["VmHWM"])


def _proc_kib(path: str, keys: tuple[str, ...]) -> dict[str, int] | None:
    """{key: bytes} of the ``key: N kB`` lines of a /proc file; None where the file or a key cannot be read."""
    try:
        with open(path) as fh:
            fields = {k: int(v.split()[0]) * 1024 for k, _, v in (ln.partition(":") for ln in fh) if k in keys}
        return fields if set(fields) == set(keys) else None
    except (OSError, ValueError, IndexError):
        return None


def host_limit() -> tuple[int | None, str]:
    """(this machine's memory in bytes or None, where the number comes from: ``SAE_RDP_HOST_MEMORY_GIB`` or the
    machine's own report)."""
    import os

    from sae_rdp_plugin.devices import HOST_MEMORY_ENV, memory_bytes

    source = HOST_MEMORY_ENV if os.environ.get(HOST_MEMORY_ENV) else "the machine's MemTotal"
    return memory_bytes("cpu"), source


def host_snapshot() -> dict[str, Any]:
    """This machine's memory now, for a call record: the limit the stages use and its source (:func:`host_limit`),
    MemTotal as the machine reports it (on the device it grows as RAM is used), the used memory, and this
    process's peak resident memory (bytes; None where unreadable)."""
    import os

    limit, source = host_limit()
    mem = _host_memory()  # one reading for both fields
    rss = process_rss_bytes(os.getpid())
    return {
        "limit_bytes": limit,
        "limit_source": source,
        "memtotal_bytes": None if mem is None else mem[0],
        "used_bytes": None if mem is None else mem[0] - mem[1],
        "process_peak_rss_bytes": None if rss is None else rss[1],
    }


@dataclasses.dataclass
class MemoryGuard:
    """Samples host memory while workers run and tells the supervisor which worker to stop near the limit."""

    limit_bytes: int | None
    """The machine's memory; None: only sample, never stop a worker."""
    limit_source: str = "given"
    """Where ``limit_bytes`` comes from (the record says it)."""
    floor_bytes: int | None = None
    """Stop a worker when less than this is left below the limit; default max(2 GiB, 5% of the limit)."""
    interval_s: float = 1.0
    """Seconds between samples."""
    cooldown_s: float = 5.0
    """Seconds after a stop before another: the stopped process's memory takes a moment to be freed."""
    used: Callable[[], int | None] = host_used_bytes
    """Reads the host's used memory (a parameter so that tests can feed it)."""
    rss: Callable[[int], tuple[int, int] | None] = process_rss_bytes
    """Reads a process's (resident, peak resident) memory."""

    def __post_init__(self) -> None:
        if self.floor_bytes is None and self.limit_bytes is not None:
            self.floor_bytes = max(2 << 30, self.limit_bytes // 20)
        self.t0 = time.time()
        self._next = 0.0
        self._last_stop = -float("inf")
        self.samples = 0
        self.peak_used_bytes: int | None = None
        self.peak_used_at_s: float | None = None
        self.peak_rss: dict[int, int] = {}
        self.over_without_sae = 0
        self.stopped: list[dict[str, Any]] = []

    @classmethod
    def for_host(cls) -> MemoryGuard:
        """A guard with this machine's limit (:func:`host_limit`)."""
        limit, source = host_limit()
        return cls(limit, source)

    def check(self, workers: dict[int, tuple[int, str, str | None]]) -> int | None:
        """Sample (at most every ``interval_s``) for ``workers`` = {index: (pid, phase, sae)} of the live workers;
        the index of the worker to stop, or None. Only a worker in phase ``"sae"`` is stopped (SAEBench's
        k-sparse scoring is what grows); over the limit with none there, the sample is counted, nothing stopped."""
        now = time.time()
        if now < self._next:
            return None
        self._next = now + self.interval_s
        self.samples += 1
        used = self.used()
        rss: dict[int, int] = {}
        for i, (pid, _phase, _sae) in workers.items():
            r = self.rss(pid)
            if r is not None:
                rss[i] = r[0]
                self.peak_rss[i] = max(self.peak_rss.get(i, 0), r[1])
        if used is not None and (self.peak_used_bytes is None or used > self.peak_used_bytes):
            self.peak_used_bytes, self.peak_used_at_s = used, round(now - self.t0, 1)
        if used is None or self.limit_bytes is None or used <= self.limit_bytes - (self.floor_bytes or 0):
            return None
        if now - self._last_stop < self.cooldown_s:
            return None
        in_sae = [i for i, (_pid, phase, _sae) in workers.items() if phase == "sae"]
        if not in_sae:
            self.over_without_sae += 1
            return None
        victim = max(in_sae, key=lambda i: (rss.get(i, 0), -i))
        self._last_stop = now
        self.stopped.append(
            {
                "worker": victim,
                "sae": workers[victim][2],
                "used_bytes": used,
                "worker_rss_bytes": rss.get(victim),
                "at_s": round(now - self.t0, 1),
            }
        )
        return victim

    def record(self) -> dict[str, Any]:
        """What the guard saw, for the stage record (bytes; seconds from the guard's start)."""
        return {
            "limit_bytes": self.limit_bytes,
            "limit_source": self.limit_source,
            "floor_bytes": self.floor_bytes,
            "samples": self.samples,
            "peak_used_bytes": self.peak_used_bytes,
            "peak_used_at_s": self.peak_used_at_s,
            "worker_peak_rss_bytes": {str(i): b for i, b in sorted(self.peak_rss.items())},
            "over_limit_without_an_sae_worker": self.over_without_sae,
            "stopped": self.stopped,
        }

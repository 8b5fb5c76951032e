"""experiments/table2/workers.py: the host-memory guard of the stages' worker processes, its readings against
/proc, and SAE_RDP_HOST_MEMORY_GIB (sae_rdp_plugin.devices.memory_bytes)."""

from __future__ import annotations

import os
import sys

import pytest

from sae_rdp_plugin.devices import HOST_MEMORY_ENV, memory_bytes
from sae_rdp_plugin.errors import SaeRdpError
from tests.experiments.script_loader import load_script

GiB = 1 << 30


@pytest.fixture
def wk():
    return load_script("workers", "experiments/table2/workers.py")


def _guard(wk, used, limit=100 * GiB, rss=None, **kw):
    rss = rss or {}
    return wk.MemoryGuard(limit, used=lambda: used[0], rss=lambda pid: rss.get(pid), interval_s=0, **kw)


def test_guard_stops_the_largest_sae_worker_near_the_limit(wk):
    used = [10 * GiB]
    rss = {101: (4 * GiB, 5 * GiB), 102: (9 * GiB, 9 * GiB), 103: (20 * GiB, 20 * GiB)}
    g = _guard(wk, used, rss=rss, cooldown_s=0)
    assert g.floor_bytes == 5 * GiB  # 5% of 100 GiB (above the 2 GiB minimum)
    workers = {0: (101, "sae", "a"), 1: (102, "sae", "b"), 2: (103, "probe", None)}
    assert g.check(workers) is None  # far below the limit: nothing stopped, peaks kept
    used[0] = 95 * GiB  # exactly at limit - floor: still allowed
    assert g.check(workers) is None
    used[0] = 95 * GiB + 1
    # worker 2 holds the most but trains the probe (the others wait for it): the largest SAE worker goes
    assert g.check(workers) == 1
    assert g.stopped == [{"worker": 1, "sae": "b", "used_bytes": 95 * GiB + 1, "worker_rss_bytes": 9 * GiB,
                          "at_s": g.stopped[0]["at_s"]}]  # fmt: skip
    del workers[1]
    assert g.check(workers) == 0  # cooldown 0: the next one at the next sample
    del workers[0]
    assert g.check(workers) is None and g.over_without_sae == 1  # only the probe worker left: counted, not stopped
    rec = g.record()
    assert rec["peak_used_bytes"] == 95 * GiB + 1 and rec["samples"] == 5 and len(rec["stopped"]) == 2
    assert rec["worker_peak_rss_bytes"] == {"0": 5 * GiB, "1": 9 * GiB, "2": 20 * GiB}


def test_guard_cooldown_floor_interval_and_no_limit(wk):
    used = [99 * GiB]
    g = _guard(wk, used, cooldown_s=3600)
    workers = {0: (1, "sae", "a"), 1: (2, "sae", "b")}
    assert g.check(workers) == 0  # equal (unknown) memory: the lower index
    assert g.check(workers) is None  # within the cooldown: the stopped one's memory is being freed
    small = _guard(wk, [int(9.5 * GiB)], limit=10 * GiB)
    assert small.floor_bytes == 2 * GiB and small.check(workers) == 0  # 2 GiB minimum floor
    none = _guard(wk, [10**15], limit=None)
    assert none.check(workers) is None and none.record()["peak_used_bytes"] == 10**15  # no limit: only samples
    slow = wk.MemoryGuard(GiB, used=lambda: 10**15, rss=lambda pid: None, interval_s=3600)
    assert slow.check(workers) == 0 and slow.check(workers) is None and slow.samples == 1  # one sample an hour


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_readings_against_proc(wk):
    fields = {}
    for line in open("/proc/meminfo").read().splitlines():
        k, _, v = line.partition(":")
        fields[k] = int(v.split()[0]) * 1024
    used = wk.host_used_bytes()
    assert abs(used - (fields["MemTotal"] - fields["MemAvailable"])) < 512 << 20
    with pytest.MonkeyPatch.context() as m:  # without psutil: /proc/meminfo read directly
        m.setitem(sys.modules, "psutil", None)
        assert abs(wk.host_used_bytes() - (fields["MemTotal"] - fields["MemAvailable"])) < 512 << 20
    before = wk.process_rss_bytes(os.getpid())
    block = bytearray(300 << 20)  # touched: resident
    for i in range(0, len(block), 4096):
        block[i] = 1
    rss, hwm = wk.process_rss_bytes(os.getpid())
    assert rss >= before[0] + (290 << 20) and hwm >= rss
    del block
    assert wk.process_rss_bytes(2**22 + 12345) is None  # no such process


def test_host_memory_env(monkeypatch):
    monkeypatch.setenv(HOST_MEMORY_ENV, "128")
    assert memory_bytes("cpu") == 128 * GiB
    monkeypatch.setenv(HOST_MEMORY_ENV, "0.5")
    assert memory_bytes("cpu") == GiB // 2
    for bad in ("x", "0", "-1", "inf", "nan"):
        monkeypatch.setenv(HOST_MEMORY_ENV, bad)
        with pytest.raises(SaeRdpError, match=f"{HOST_MEMORY_ENV}='{bad}' is not a positive number of GiB"):
            memory_bytes("cpu")
    monkeypatch.delenv(HOST_MEMORY_ENV)
    import psutil

    assert memory_bytes("cpu") == psutil.virtual_memory().total


def test_host_limit_names_its_source(wk, monkeypatch):
    monkeypatch.setenv(HOST_MEMORY_ENV, "64")
    assert wk.host_limit() == (64 * GiB, HOST_MEMORY_ENV)
    assert wk.MemoryGuard.for_host().limit_bytes == 64 * GiB
    monkeypatch.delenv(HOST_MEMORY_ENV)
    assert wk.host_limit()[1] == "the machine's MemTotal"


def _restore_slowly(log: str, delay: float) -> str:
    """Unpickled in the spawned child before the rest of its arguments: logs when it ran, then waits (as a child's
    imports keep it from reading the rest of its arguments out of the pipe)."""
    import time

    t = time.time()
    time.sleep(delay)
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {t} {time.time()}\n")
    return log


class _SlowToUnpickle:
    def __init__(self, log: str, delay: float) -> None:
        self.log, self.delay = log, delay

    def __reduce__(self):
        return _restore_slowly, (self.log, self.delay)


def _noop(*args) -> None:
    pass


def _unpickle_intervals(wk, tmp_path, threaded: bool) -> list[tuple[float, float]]:
    import multiprocessing as mp

    log = str(tmp_path / f"log_{threaded}.txt")
    big = b"x" * (4 << 20)  # far beyond a pipe's buffer: start() waits for the child to read it
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_noop, args=(_SlowToUnpickle(log, 1.5), big)) for _ in range(3)]
    if threaded:
        wk.start_all(procs)
    else:
        for p in procs:
            p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = [line.split() for line in open(log).read().splitlines()]
    return sorted((float(a), float(b)) for _, a, b in rows)


def test_start_all_lets_the_children_unpickle_at_once(wk, tmp_path):
    """Arguments larger than a pipe's buffer, unpickled slowly in the child: a loop of start() calls lets each child
    begin only after the one before has read its arguments (the intervals do not overlap); start_all's threads let
    all three unpickle at once (every child began before any ended)."""
    seq = _unpickle_intervals(wk, tmp_path, threaded=False)
    assert all(seq[i + 1][0] >= seq[i][1] for i in range(2)), seq
    par = _unpickle_intervals(wk, tmp_path, threaded=True)
    assert max(a for a, _ in par) < min(b for _, b in par), par


def test_start_all_raises_a_start_error_after_starting_the_rest(wk):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ok = ctx.Process(target=_noop, args=(1,))
    bad = ctx.Process(target=_noop, args=(lambda: None,))  # a lambda does not pickle
    with pytest.raises(Exception, match="pickle|lambda"):
        wk.start_all([ok, bad])
    ok.join(60)
    assert ok.exitcode == 0  # started and ran although its sibling failed
    assert bad.pid is None  # pickled before its process is made: none was

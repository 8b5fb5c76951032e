"""Interrupted runs leave nothing partial behind, and a resumed sweep equals an uninterrupted one.

``sweep run`` runs in a subprocess whose checkpoint writer stalls on its second checkpoint (after the
temporary file exists, before it is renamed); the test then sends SIGTERM or SIGKILL, checks what is left,
checks that a second ``sweep run`` on the locked folder is refused while the first one runs, resumes, and
compares every member's results with an uninterrupted run's. The folder lock is also tested on its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sae_rdp_plugin.cli import main
from sae_rdp_plugin.io import FolderLock, is_temp_name

# 2 groups x 2 seeds; checkpoints every 7 steps fall inside a data chunk (64 batches), so an exact resume
# needs the chunk position, not only the generator state
CFG = {
    "dgps": [{"name": "a", "m": 4, "d": 8, "rho": 0.5, "q": 0.2}],
    "architectures": ["topk", "standard"],
    "widths": [4],
    "ks": [1],
    "seeds": [0, 1],
    "steps": 40,
    "batch_size": 16,
    "eval_samples": 64,
    "checkpoint_every": 7,
}

# the subprocess: stall inside the second checkpoint write, once its temporary file exists
DRIVER = """
import sys, time
import safetensors.torch as st
real, calls = st.save_file, [0]
def stalling(*a, **k):
    calls[0] += 1
    if calls[0] == 2:
        print("STALLED", flush=True)
        time.sleep(60)
    return real(*a, **k)
st.save_file = stalling
from sae_rdp_plugin.cli import main
sys.exit(main(["sweep", "run", "--config", sys.argv[1], "--out", sys.argv[2], "--no-plots"]))
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    from sae_rdp_plugin.sweep.config import SweepConfig
    from sae_rdp_plugin.sweep.train import train_sweep

    out = tmp_path_factory.mktemp("ref") / "sweep"
    train_sweep(SweepConfig.from_dict(CFG), out, progress=False)
    return _members(out)


def _members(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "members").glob("*.json"))}


def _temps(out: Path) -> list[str]:
    return [str(p.relative_to(out)) for p in out.rglob("*") if is_temp_name(p.name)]


def _start(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    tmp_path.mkdir()
    cfg, out = tmp_path / "c.json", tmp_path / "sweep"
    cfg.write_text(json.dumps(CFG))
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(cfg), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return proc, cfg, out


def _wait_stalled(proc: subprocess.Popen) -> None:
    for line in proc.stdout:  # progress lines, then the driver's mark
        if line.strip() == "STALLED":
            return
    raise AssertionError(f"the sweep ended before its second checkpoint: {proc.stderr.read()}")


def test_killed_sweeps_resume_to_the_uninterrupted_result(reference, tmp_path, capsys):
    """Two runs at once (their start-up overlaps): one gets SIGTERM, one SIGKILL, both while writing a
    checkpoint; a third run on a locked folder is refused meanwhile."""
    runs = {sig: _start(tmp_path / sig.name) for sig in (signal.SIGTERM, signal.SIGKILL)}
    try:
        for sig, (proc, cfg, out) in runs.items():
            _wait_stalled(proc)
            assert [Path(t).parent.name for t in _temps(out)] == ["groups"]  # the stalled checkpoint's temp file
        # a second run on a folder while the first holds it: one error line naming the owner, nothing touched
        proc, cfg, out = runs[signal.SIGKILL]
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
        assert main(["sweep", "run", "--config", str(cfg), "--out", str(out), "--resume", "--no-plots"]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and f"in use by another sae-rdp process (pid {proc.pid}" in err
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
        for sig, (proc, _, _) in runs.items():
            proc.send_signal(sig)
        rcs = {sig: proc.wait(timeout=60) for sig, (proc, _, _) in runs.items()}
    finally:
        for proc, _, _ in runs.values():
            proc.kill()
            proc.wait()
    for sig, (proc, cfg, out) in runs.items():
        stderr = proc.stderr.read()
        if sig == signal.SIGTERM:  # the command's own cleanup ran: no temporary file, no lock
            assert rcs[sig] == 143 and stderr.strip().splitlines()[-1] == "error: terminated (SIGTERM)"
            assert "Traceback" not in stderr
            assert _temps(out) == [] and not (out / FolderLock.NAME).exists()
        else:  # SIGKILL: the 0-byte temporary file and the lock file stay until the next run
            assert rcs[sig] == -signal.SIGKILL
            assert len(_temps(out)) == 1 and (out / FolderLock.NAME).exists()
        state = json.loads((out / "state.json").read_text())
        assert state["groups"]["topk_w4_d8_c0"] == {"status": "running", "step": 7}
        assert main(["sweep", "run", "--config", str(cfg), "--out", str(out), "--resume", "--no-plots"]) == 0
        assert _temps(out) == [] and not (out / FolderLock.NAME).exists()
        assert _members(out) == reference  # bit for bit: same weights, Adam state and batches


def test_folder_lock_is_taken_over_from_a_dead_process(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / FolderLock.NAME).write_text(f"{pid}\n")  # what a SIGKILLed owner leaves
    with FolderLock(tmp_path) as lock:
        assert lock.stale_pid == pid
        assert (tmp_path / FolderLock.NAME).read_text().strip() == str(os.getpid())
    assert list(tmp_path.iterdir()) == []


def test_folder_lock_refuses_a_second_holder(tmp_path):
    from sae_rdp_plugin.errors import SaeRdpError

    with FolderLock(tmp_path):
        with pytest.raises(SaeRdpError, match=f"in use by another sae-rdp process \\(pid {os.getpid()}"):
            with FolderLock(tmp_path):
                pass
        assert (tmp_path / FolderLock.NAME).exists()
    assert not (tmp_path / FolderLock.NAME).exists()
    with FolderLock(tmp_path):  # free again
        pass


def test_sigterm_handler_is_restored(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    main(["sweep", "plot", "--sweep", str(tmp_path / "none")])
    assert signal.getsignal(signal.SIGTERM) is before

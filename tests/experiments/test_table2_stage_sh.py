"""experiments/table2/stage.sh's own checks, run with bash (no device, no model)."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp: Path, *args: str, python: str, whl: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "T2_WORK": str(tmp / "work"), "T2_SITE": str(tmp / "site"), "OUT": str(tmp / "out"),
           "PYTHON": python, "T2_RESULTS": str(tmp / "results"), "T2_WHL": whl or str(tmp / "no_wheels")}  # fmt: skip
    return subprocess.run(
        ["bash", str(ROOT / "experiments/table2/stage.sh"), *args], env=env, capture_output=True, text=True
    )


def test_run_without_wheels_fails_at_once_naming_the_missing_step(tmp_path):
    """A refused `wheels` call leaves the later calls without SAELens: `run` says so before loading anything."""
    fake = tmp_path / "python-without-wheels"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    r = _run(tmp_path, "run", "T-gemma3-270m-9-topk", python=str(fake))
    assert r.returncode == 3 and "GGUF missing" in r.stdout  # staging is checked first
    (tmp_path / "work").mkdir(exist_ok=True)
    (tmp_path / "work" / "GGUF").write_text("model.gguf 0000\n")
    r = _run(tmp_path, "run", "T-gemma3-270m-9-topk", python=str(fake))
    assert r.returncode == 3 and "wheels are not installed" in r.stdout and "stage.sh wheels" in r.stdout
    assert not (tmp_path / "out" / "log.txt").exists()


def test_unknown_step_is_refused(tmp_path):
    r = _run(tmp_path, "train", python="python3")
    assert r.returncode == 2 and r.stdout.strip() == "error: unknown step train (wheels, put, run)"


def test_run_puts_committed_calibrations_and_llm_baselines_on_a_fresh_machine(tmp_path):
    """Before run_stage starts: results/calibration_*.json into the run folder, and every model-layer's
    probe_baselines/ tree into the run's sae-probes folder (files already there are kept)."""
    fake = tmp_path / "python-ok"
    fake.write_text('#!/bin/sh\n[ "$1" = "-c" ] && exit 0\necho "run_stage $*"\n')
    fake.chmod(0o755)
    work, res = tmp_path / "work", tmp_path / "results"
    (work / "run" / "probing" / "sae_probes" / "baseline_results_m" / "normal_setting").mkdir(parents=True)
    (work / "GGUF").write_text("model.gguf 0000\n")
    (work / "model.gguf").write_bytes(b"weights")
    kept = work / "run" / "probing" / "sae_probes" / "baseline_results_m" / "normal_setting" / "a_logreg.json"
    kept.write_text("on the machine")
    base = res / "m-L9" / "probe_baselines" / "baseline_results_m" / "normal_setting"
    base.mkdir(parents=True)
    (base / "a_logreg.json").write_text("committed a")
    (base / "b_logreg.json").write_text("committed b")
    (res / "calibration_C-m-9-standard.json").write_text("{}")
    r = _run(tmp_path, "run", "E-m-9", python=str(fake))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "run_stage" in r.stdout and "--stage E-m-9" in r.stdout
    assert kept.read_text() == "on the machine"
    assert (kept.parent / "b_logreg.json").read_text() == "committed b"
    assert (work / "run" / "calibration_C-m-9-standard.json").read_text() == "{}"


def test_run_installs_carried_wheels_when_the_wheels_call_was_refused(tmp_path):
    """`run` with .whl carried installs them first (pip into the site folder), then runs the stage."""
    marker = tmp_path / "installed"
    fake = tmp_path / "python-fresh"
    fake.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-m" ]; then echo "pip $*"; touch {marker}; exit 0; fi\n'
        f'if [ "$1" = "-c" ]; then [ -f {marker} ]; exit $?; fi\n'
        'echo "run_stage $*"\n'
    )
    fake.chmod(0o755)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "GGUF").write_text("model.gguf 0000\n")
    (tmp_path / "work" / "model.gguf").write_bytes(b"weights")
    whl = tmp_path / "whl"
    whl.mkdir()
    (whl / "sae_lens-6.54.12-py3-none-any.whl").write_bytes(b"wheel")
    r = _run(tmp_path, "run", "T-m-9-topk", python=str(fake), whl=str(whl))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "installing the carried" in out and f"--target {tmp_path / 'site'}" in out
    assert out.index("pip ") < out.index("run_stage ") and "--stage T-m-9-topk" in out
    marker.unlink()
    (whl / "sae_lens-6.54.12-py3-none-any.whl").unlink()  # nothing carried: the error, nothing run
    r = _run(tmp_path, "run", "T-m-9-topk", python=str(fake), whl=str(whl))
    assert r.returncode == 3 and "carry .whl with this call" in r.stdout and "run_stage" not in r.stdout

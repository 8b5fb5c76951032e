"""experiments/table2/stage.sh's own checks, run with bash (no device, no model)."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp: Path, *args: str, python: str, whl: str | None = None, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "T2_WORK": str(tmp / "work"), "T2_SITE": str(tmp / "site"), "OUT": str(tmp / "out"),
           "PYTHON": python, "T2_RESULTS": str(tmp / "results"), "T2_WHL": whl or str(tmp / "no_wheels"),
           **extra}  # fmt: skip
    return subprocess.run(
        ["bash", str(ROOT / "experiments/table2/stage.sh"), *args], env=env, capture_output=True, text=True
    )


def _stage_model(tmp: Path) -> Path:
    """What the put calls leave on the device: the GGUF record and the assembled model file."""
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    (work / "GGUF").write_text("model.gguf 0000\n")
    (work / "model.gguf").write_bytes(b"weights")
    return work


def test_run_without_wheels_fails_at_once_naming_the_missing_step(tmp_path):
    """A refused `wheels` call leaves the later calls without SAELens: `run` says so before loading anything."""
    fake = tmp_path / "python-without-wheels"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    r = _run(tmp_path, "run", "T-gemma3-270m-9-topk", python=str(fake))
    assert r.returncode == 3 and r.stderr.strip().startswith("error: ") and "GGUF missing" in r.stderr  # staging first
    (tmp_path / "work").mkdir(exist_ok=True)
    (tmp_path / "work" / "GGUF").write_text("model.gguf 0000\n")
    r = _run(tmp_path, "run", "T-gemma3-270m-9-topk", python=str(fake))
    assert r.returncode == 3 and "wheels are not installed" in r.stderr and "stage.sh site .carry/site" in r.stderr
    assert not (tmp_path / "out" / "log.txt").exists()


def test_unknown_step_is_refused(tmp_path):
    r = _run(tmp_path, "train", python="python3")
    steps = "site, wheels, put, join, run, runprobe, trainprobe"
    assert r.returncode == 2 and r.stderr.strip() == f"error: unknown step train ({steps})"
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()  # checked before any folder


def test_join_assembles_the_gguf_pieces_checked_by_sha256(tmp_path):
    """`join` (for the e2e benchmark's real weights, without running a stage): the pieces concatenated in
    order and checked against the packed sha256; incomplete pieces leave no model file."""
    import hashlib

    work = tmp_path / "work"
    work.mkdir()
    data = b"gguf-bytes-" * 1000
    (work / "m.gguf.piece00").write_bytes(data[:4000])
    (work / "m.gguf.piece01").write_bytes(data[4000:])
    (work / "GGUF").write_text(f"m.gguf {hashlib.sha256(data + b'x').hexdigest()}\n")
    r = _run(tmp_path, "join", python="python3")
    assert r.returncode == 3 and r.stderr.strip() == "error: GGUF pieces incomplete" and not (work / "m.gguf").exists()
    assert not list(work.glob("*.tmp"))
    (work / "GGUF").write_text(f"m.gguf {hashlib.sha256(data).hexdigest()}\n")
    r = _run(tmp_path, "join", python="python3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (work / "m.gguf").read_bytes() == data and str(work / "m.gguf") in r.stdout
    assert not list(work.glob("m.gguf.piece*"))


def test_run_puts_committed_calibrations_and_llm_baselines_on_a_fresh_machine(tmp_path):
    """Before run_stage starts: results/calibration_*.json into the run folder, and every model-layer's
    probe_baselines/ tree into the run's sae-probes folder (files already there are kept)."""
    fake = tmp_path / "python-ok"
    fake.write_text('#!/bin/sh\n[ "$1" = "-c" ] && exit 0\necho "run_stage $*"\n')
    fake.chmod(0o755)
    work, res = tmp_path / "work", tmp_path / "results"
    _stage_model(tmp_path)
    (work / "run" / "probing" / "sae_probes" / "baseline_results_m" / "normal_setting").mkdir(parents=True)
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
    _stage_model(tmp_path)
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
    assert r.returncode == 3 and "carry .whl with this call" in r.stderr and "run_stage" not in r.stdout


def _staged_fake(tmp: Path, body: str, name: str = "python-fake") -> Path:
    _stage_model(tmp)
    fake = tmp / name
    fake.write_text('#!/bin/sh\n[ "$1" = "-c" ] && exit 0\n' + body)
    fake.chmod(0o755)
    return fake


def test_runprobe_trains_then_probes_with_the_time_left(tmp_path):
    """runprobe: the T stage with its arguments, then E-<model>-<layer> with --time-budget = what is left of
    T2_CALL_S; both logs kept; with too little left, E is not started; a failed T stops the call."""
    fake = _staged_fake(tmp_path, 'echo "run_stage $*"\n')
    r = _run(tmp_path, "runprobe", "T-m-9-jumprelu", "--max-saes", "5", python=str(fake), T2_CALL_S="500")
    assert r.returncode == 0, r.stdout + r.stderr
    calls = [ln for ln in r.stdout.splitlines() if ln.startswith("run_stage ")]
    assert len(calls) == 2 and "--stage T-m-9-jumprelu" in calls[0] and "--max-saes 5" in calls[0]
    assert "--stage E-m-9 " in calls[1] and "--max-saes" not in calls[1]
    budget = int(calls[1].split("--time-budget ")[1].split()[0])
    assert 490 <= budget <= 500
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "--stage T-m-9-jumprelu" in log and "--stage E-m-9" in log  # appended, not overwritten
    r = _run(tmp_path, "runprobe", "T-m-9-jumprelu", python=str(fake), T2_CALL_S="100")
    assert r.returncode == 0 and r.stdout.count("run_stage ") == 1 and "E-m-9 not started" in r.stdout
    failing = _staged_fake(tmp_path, 'echo "run_stage $*"; exit 1\n', name="python-failing")
    r = _run(tmp_path, "runprobe", "T-m-9-jumprelu", python=str(failing))
    assert r.returncode != 0 and r.stdout.count("run_stage ") == 1
    r = _run(tmp_path, "runprobe", "E-m-9", python=str(fake))
    assert r.returncode == 2 and r.stderr.startswith("error: runprobe takes a T-") and "run_stage" not in r.stdout
    r = _run(tmp_path, "runprobe", "W-wsae", python=str(fake), T2_E="E-m-9")
    calls = [ln for ln in r.stdout.splitlines() if ln.startswith("run_stage ")]
    assert r.returncode == 0 and "--stage W-wsae" in calls[0] and "--stage E-m-9 " in calls[1]


def test_the_carried_tokenizer_is_unpacked_once_and_named_to_every_step(tmp_path):
    """pack.py puts tokenizer.tar.xz in the first call: stage.sh unpacks it into the work folder and exports
    SAE_RDP_TOKENIZER_DIR for run_stage (the device's transformers would otherwise convert Gemma's tokenizer);
    without the archive nothing is set."""
    import tarfile

    fake = tmp_path / "python-ok"
    fake.write_text(
        '#!/bin/sh\ncase "$2" in *tarfile*) exec python3 "$@";; esac\n[ "$1" = "-c" ] && exit 0\n'
        'echo "run_stage TOK=${SAE_RDP_TOKENIZER_DIR:-none}"\n'
    )
    fake.chmod(0o755)
    work = _stage_model(tmp_path)
    r = _run(tmp_path, "run", "T-gemma3-270m-9-topk", python=str(fake))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "run_stage TOK=none" in r.stdout
    src = tmp_path / "src" / "tokenizer"
    src.mkdir(parents=True)
    (src / "tokenizer.json").write_text('{"model": "checked on the dev machine"}')
    with tarfile.open(work / "tokenizer.tar.xz", "w:xz") as tar:
        tar.add(src, arcname="tokenizer")
    r = _run(tmp_path, "run", "T-gemma3-270m-9-topk", python=str(fake))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"run_stage TOK={work / 'tokenizer'}" in r.stdout
    assert (work / "tokenizer" / "tokenizer.json").read_text() == '{"model": "checked on the dev machine"}'
    (work / "tokenizer" / "tokenizer.json").write_text("kept")  # unpacked once: a later step does not redo it
    r = _run(tmp_path, "run", "T-gemma3-270m-9-topk", python=str(fake))
    assert r.returncode == 0 and (work / "tokenizer" / "tokenizer.json").read_text() == "kept"


def test_pack_archives_the_checked_tokenizer_under_tokenizer(tmp_path, monkeypatch):
    """pack.py's tokenizer.tar.xz: the folder tokenizer/ with the tokenizer load_tokenizer returned (given the
    --gguf path), which AutoTokenizer reads back with the same pieces."""
    import sys
    import tarfile

    from transformers import AutoTokenizer

    sys.path.insert(0, str(ROOT / "tests" / "lm"))
    from script_loader import load_script
    from test_tokenizer_check import PIECES, TEXT, _fast

    from sae_rdp_plugin.lm import models as M

    pack = load_script("table2_pack", "experiments/table2/pack.py")
    seen = []
    monkeypatch.setattr(
        M, "load_tokenizer", lambda model, path=None: seen.append((model, path)) or _fast(PIECES, False)
    )
    out = pack.tokenizer_archive("gemma3-270m", tmp_path / "t.tar.xz", tmp_path / "m.gguf")
    assert seen == [("gemma3-270m", tmp_path / "m.gguf")] and out == tmp_path / "t.tar.xz"
    with tarfile.open(out) as tar:
        assert all(n == "tokenizer" or n.startswith("tokenizer/") for n in tar.getnames())
        tar.extractall(tmp_path / "x", filter="data")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "x" / "tokenizer"))
    assert tok.convert_ids_to_tokens(tok.encode(TEXT, add_special_tokens=False)) == PIECES
    assert not list(tmp_path.glob("*.part"))


def test_run_puts_a_replicates_probing_and_absorption_jsons_but_not_its_core(tmp_path):
    """T2_REPLICATE=<name>: the replicate's committed sparse-probing and absorption JSONs go into the run folder
    (the E stage skips those SAEs; one already there is kept), its core JSONs do not (recomputed, then compared
    by collect.py); a replicate that is not there stops the call before anything is written."""
    fake = tmp_path / "python-ok"
    fake.write_text('#!/bin/sh\n[ "$1" = "-c" ] && exit 0\necho "run_stage $*"\n')
    fake.chmod(0o755)
    work, res = tmp_path / "work", tmp_path / "results"
    _stage_model(tmp_path)
    rep = res / "replicates" / "m-L9-topk-r3"
    for d in ("core", "absorption_first_letter", "sparse_probing_sae_probes"):
        (rep / d).mkdir(parents=True)
        (rep / d / "topk__a.json").write_text(f"committed {d}")
    (work / "run" / "absorption_first_letter").mkdir(parents=True)
    (work / "run" / "absorption_first_letter" / "topk__b.json").write_text("on the machine")
    r = _run(tmp_path, "run", "E-m-9", python=str(fake), T2_REPLICATE="m-L9-topk-r3")
    assert r.returncode == 0, r.stdout + r.stderr
    run = work / "run"
    assert (run / "absorption_first_letter" / "topk__a.json").read_text() == "committed absorption_first_letter"
    assert (run / "sparse_probing_sae_probes" / "topk__a.json").read_text() == "committed sparse_probing_sae_probes"
    assert (run / "absorption_first_letter" / "topk__b.json").read_text() == "on the machine"
    assert not (run / "core").exists()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = _run(tmp_path, "run", "E-m-9", python=str(fake), T2_REPLICATE="m-L9-topk-r9")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: T2_REPLICATE=m-L9-topk-r9"), r.stderr
    assert "run_stage" not in r.stdout and sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_run_names_the_machines_memory(tmp_path):
    """stage.sh exports SAE_RDP_HOST_MEMORY_GIB=128 for run_stage (the device's RAM grows as it is used, so MemTotal
    starts far below it; the absorption workers' count and memory guard read the variable); a value already set
    is kept."""
    fake = _staged_fake(tmp_path, 'echo "run_stage $* mem=$SAE_RDP_HOST_MEMORY_GIB"\n')
    env = {k: v for k, v in os.environ.items() if k != "SAE_RDP_HOST_MEMORY_GIB"}
    r = subprocess.run(
        ["bash", str(ROOT / "experiments/table2/stage.sh"), "run", "E-m-9"],
        env={**env, "T2_WORK": str(tmp_path / "work"), "T2_SITE": str(tmp_path / "site"), "OUT": str(tmp_path / "out"),
             "PYTHON": str(fake), "T2_RESULTS": str(tmp_path / "results"), "T2_WHL": str(tmp_path / "no_wheels")},
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0 and "mem=128" in r.stdout, r.stdout + r.stderr
    r = _run(tmp_path, "run", "E-m-9", python=str(fake), SAE_RDP_HOST_MEMORY_GIB="80")
    assert r.returncode == 0 and "mem=80" in r.stdout, r.stdout + r.stderr


def test_trainprobe_runs_the_t_stage_and_the_probe_at_once(tmp_path):
    """trainprobe: the preparation once, then the T stage and its E-<model>-<layer>'s first-letter probe
    (--absorption-probe-only) in two processes at the same time, the probe's log apart; a failure of either
    fails the call after both ended; a stage that is not T-* is refused before anything runs."""
    # each fake run_stage sleeps 1 s and notes when it started and ended: both must overlap
    fake = _staged_fake(
        tmp_path,
        'echo "run_stage $* start $(date +%s.%N)"; sleep 1; echo "end $(date +%s.%N)"\n'
        'case "$*" in *probe-only*) [ -n "${FAIL_PROBE:-}" ] && exit 1;; esac; exit 0\n',
    )
    r = _run(tmp_path, "trainprobe", "T-m-9-topk", "--time-budget", "460", python=str(fake))
    assert r.returncode == 0, r.stdout + r.stderr
    log, probe_log = (tmp_path / "out" / "log.txt").read_text(), (tmp_path / "out" / "log_probe.txt").read_text()
    (t_line,) = [ln for ln in log.splitlines() if ln.startswith("run_stage ")]
    (p_line,) = [ln for ln in probe_log.splitlines() if ln.startswith("run_stage ")]
    assert "--stage T-m-9-topk" in t_line and "--time-budget 460" in t_line
    assert "--stage E-m-9 " in p_line and "--evals absorption --absorption-probe-only --beside T-m-9-topk" in p_line
    assert "--time-budget" not in p_line and "--model-path" in p_line and "model.gguf" in p_line
    t_start, p_start = float(t_line.split("start ")[1]), float(p_line.split("start ")[1])
    t_end = float([ln for ln in log.splitlines() if ln.startswith("end ")][0].split()[1])
    assert p_start < t_end and t_start < t_end  # the probe started while the T stage ran
    assert "trainprobe: T-m-9-topk exit 0; the E-m-9 probe exit 0" in r.stdout
    r = _run(tmp_path, "trainprobe", "T-m-9-topk", python=str(fake), FAIL_PROBE="1")
    assert r.returncode == 1 and "the E-m-9 probe exit 1" in r.stdout, r.stdout + r.stderr
    r = _run(tmp_path, "trainprobe", "E-m-9", python=str(fake))
    assert r.returncode == 2 and r.stderr.startswith("error: trainprobe takes a T-") and "run_stage" not in r.stdout


def test_pack_check_names_the_calls_that_no_longer_fit_beside_the_tree(tmp_path, monkeypatch, capsys):
    """pack.py --check: a packed call (or a wheel half the session carries) fits when its folder plus the working
    tree is at most the run tool's limit; one byte over names that folder and exits 1 (the run tool would refuse it
    after the machine started); nothing packed is bad input (exit 2)."""
    import json
    import shutil
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "lm"))
    from script_loader import load_script

    pack = load_script("table2_pack_check", "experiments/table2/pack.py")
    monkeypatch.setattr(pack, "ROOT", tmp_path)
    dest = tmp_path / ".carry" / "t2" / "gemma3-270m"
    sizes = {"call0": 1000, "call1": 600}
    for name, n in sizes.items():
        (dest / name / "shards").mkdir(parents=True)
        (dest / name / "shards" / "a").write_bytes(b"x" * (n - 100))
        (dest / name / "b").write_bytes(b"x" * 100)  # files in the folder and under it both count
    calls = [{"command": f"put {n}", "carry": [f".carry/t2/gemma3-270m/{n}"]} for n in sizes]
    (dest / "calls.json").write_text(json.dumps(calls))
    folders = pack.carried_folders(dest)
    assert folders == [".carry/t2/gemma3-270m/call0", ".carry/t2/gemma3-270m/call1"]  # no halves here
    sizes = {f: pack.folder_bytes(tmp_path / f) for f in folders}
    assert sizes == {".carry/t2/gemma3-270m/call0": 1000, ".carry/t2/gemma3-270m/call1": 600}
    assert pack.overfull(sizes, tree=3000, limit=4000) == []
    assert pack.overfull(sizes, tree=3001, limit=4000) == [(".carry/t2/gemma3-270m/call0", 1)]
    (tmp_path / ".carry" / "whl_part2").mkdir()
    (tmp_path / ".carry" / "whl_part2" / "w.whl").write_bytes(b"x" * 1200)  # a wheel half is checked too
    assert pack.carried_folders(dest)[-1] == ".carry/whl_part2"
    monkeypatch.setattr(pack, "LIMIT", 4000)
    monkeypatch.setattr(pack, "tree_bytes", lambda: 3100)
    out = tmp_path / ".carry" / "t2"
    assert pack.main(["--model", "gemma3-270m", "--check", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "call0 (+0.0 MiB)" in err and "whl_part2 (+0.0 MiB)" in err and "call1" not in err
    assert err.startswith("error: ")
    monkeypatch.setattr(pack, "tree_bytes", lambda: 2800)
    assert pack.main(["--model", "gemma3-270m", "--check", "--out", str(out)]) == 0
    assert pack.main(["--model", "smollm2-135m", "--check", "--out", str(out)]) == 2
    assert "nothing packed for smollm2-135m" in capsys.readouterr().err
    # a listed folder that is gone would measure 0 bytes and pass: bad input instead, as is a foreign calls.json
    shutil.rmtree(dest / "call1")
    assert pack.main(["--model", "gemma3-270m", "--check", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: .carry/t2/gemma3-270m/call1: listed in") and err.count("\n") == 1
    (dest / "calls.json").write_text('{"not": "a list"}')
    assert pack.main(["--model", "gemma3-270m", "--check", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a pack.py call list" in err and err.count("\n") == 1
    (dest / "calls.json").write_text("[]")  # an empty list: bad input, not a max() of nothing
    assert pack.main(["--model", "gemma3-270m", "--check", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "lists no put call" in err and err.count("\n") == 1


def test_run_passes_the_committed_results_unless_retraining(tmp_path):
    """`run` hands run_stage the committed results folder (--committed T2_RESULTS: SAEs committed there are not
    trained again on a fresh machine); T2_RETRAIN=1 (a new training-run replicate) and T2_REPLICATE (a replicate's
    later session) leave it out, so every SAE of the stage is trained."""
    fake = _staged_fake(tmp_path, 'echo "run_stage $*"\n')
    results = tmp_path / "results"
    (results / "replicates" / "m-L9-topk-r2").mkdir(parents=True)
    for extra, expect in (({}, True), ({"T2_RETRAIN": "1"}, False), ({"T2_REPLICATE": "m-L9-topk-r2"}, False)):
        r = _run(tmp_path, "run", "T-m-9-topk", "--max-saes", "2", python=str(fake), **extra)
        assert r.returncode == 0, r.stdout + r.stderr
        (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("run_stage ")]
        assert (f"--committed {results} " in line) is expect, (extra, line)
        assert line.endswith("--max-saes 2") and line.count("--committed") == int(expect)

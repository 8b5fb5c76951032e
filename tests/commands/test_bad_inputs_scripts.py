"""The scripts users are told to run (benchmarks/e2e/bench_e2e.py, experiments/table2/collect.py, report.py,
stage.sh, prepare.sh) under the error contract: bad input gives exit status 2 and exactly one stderr line ``error: ...``
naming the problem, no traceback, and the working folder unchanged (nothing written, nothing deleted).

Each case runs the script in a subprocess in a fresh working folder after its setup."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = [sys.executable, str(ROOT / "benchmarks/e2e/bench_e2e.py"), "--quick", "--device", "cpu", "--in-process"]
BE = [*BENCH, "--only", "ours", "--out", "o", "--work", "w"]
COLLECT = [sys.executable, str(ROOT / "experiments/table2/collect.py")]
REPORT = [sys.executable, str(ROOT / "experiments/table2/report.py")]
STAGE = ["bash", str(ROOT / "experiments/table2/stage.sh")]
PREPARE = ["bash", str(ROOT / "experiments/table2/prepare.sh")]
SCORING = [sys.executable, str(ROOT / "experiments/table2/diagnostics/absorption_scoring.py")]
MEMORY = [sys.executable, str(ROOT / "experiments/table2/diagnostics/absorption_memory.py")]
CORE_MEMORY = [sys.executable, str(ROOT / "experiments/table2/diagnostics/core_memory.py")]
T_STAGE = "stage_T-gemma3-270m-9-topk.json"
OURS_LATEST = {"device": "cpu (2 cores)", "settings": {"tokens": 8192}, "rows": []}


def _corpus(tokenizer: str):
    """A setup: a corpus manifest folder ``c`` of that tokenizer, 8 held-out rows of 1024 tokens (no tokens needed:
    the script refuses before loading them)."""

    def setup(work: Path) -> None:
        _write(work, {"c/manifest.json": {"tokenizer": tokenizer, "heldout_rows": 8, "context_size": 1024}})
        _write(work, {"c/tokens.npz": b""})

    return setup


def _write(work: Path, files: dict[str, object]) -> None:
    for name, content in files.items():
        p = work / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content if isinstance(content, str) else json.dumps(content))


def _bundle(members: dict[str, object]):
    """Setup: b.tar.xz holding ``members`` (made in a folder outside the working folder's snapshot)."""

    def make(work: Path) -> None:
        src = work.parent / "bundle_src"
        _write(src, members)
        with tarfile.open(work / "b.tar.xz", "w:xz") as tar:
            for name in members:
                tar.add(src / name, arcname=name)
        shutil.rmtree(src)

    return make


def _files(files: dict[str, object]):
    return lambda work: _write(work, files)


def _results_copy_with_bad_core(work: Path) -> None:
    shutil.copytree(ROOT / "experiments/table2/results", work / "r")
    core = sorted((work / "r").glob("*-L*/core/*.json"))[0]
    core.write_text("{\n")


def _nothing(work: Path) -> None:
    pass


# (id, setup(work), argv, environment additions, words of the error line)
CASES = [
    # bench_e2e.py: every input checked before a row starts or a folder is made (item 56-58)
    ("bench-tokens-negative", _nothing, [*BE, "--tokens", "-100"], {}, "--tokens"),
    ("bench-tokens-zero", _nothing, [*BE, "--tokens", "0"], {}, "--tokens"),
    ("bench-baseline-tokens-zero", _nothing, [*BE, "--baseline-tokens", "0"], {}, "--baseline-tokens"),
    ("bench-heldout-zero", _nothing, [*BE, "--heldout-tokens", "0"], {}, "--heldout-tokens"),
    ("bench-tokens-huge", _nothing, [*BE, "--tokens", str(10**15)], {}, "lower --tokens / --heldout-tokens"),
    ("bench-context-zero", _nothing, [*BE, "--context", "0"], {}, "--context"),
    ("bench-warmup-negative", _nothing, [*BE, "--warmup-steps", "-1"], {}, "--warmup-steps"),
    ("bench-seed-negative", _nothing, [*BE, "--seed", "-1"], {}, "--seed"),
    ("bench-corpus-missing", _nothing, [*BE, "--corpus", "nope"], {}, "--corpus nope"),
    ("bench-corpus-empty-folder", _files({"c/x.txt": "x"}), [*BE, "--corpus", "c"], {}, "--corpus c"),
    ("bench-device-bad", _nothing, [*BE[:4], "banana", *BE[5:]], {}, "--device"),
    ("bench-gguf-missing", _nothing, [*BE, "--gguf", "nope.gguf"], {}, "--gguf nope.gguf"),
    ("bench-gguf-not-gguf", _files({"m.gguf": "text"}), [*BE, "--gguf", "m.gguf"], {}, "not a GGUF"),
    ("bench-resume-missing", _nothing, [*BE, "--resume", "nope.json"], {}, "--resume nope.json"),
    ("bench-resume-malformed", _files({"r.json": "{\n"}), [*BE, "--resume", "r.json"], {}, "--resume r.json"),
    ("bench-resume-foreign", _files({"r.json": {"rows": 1}}), [*BE, "--resume", "r.json"], {}, "--resume r.json"),
    ("bench-out-file", _files({"o": "precious"}), BE, {}, "--out o exists and is not a folder"),
    (
        "bench-out-user-latest",
        _files({"o/latest.json": {"mine": 1}, "o/latest.md": "precious"}),
        BE,
        {},
        "latest.json",
    ),
    ("bench-out-user-latest-md", _files({"o/latest.md": "precious"}), BE, {}, "latest.md"),
    ("bench-copy-to-file", _files({"c": "precious"}), [*BE, "--copy-to", "c"], {}, "--copy-to c"),
    ("bench-work-file", _files({"w": "precious"}), BE, {}, "--work w"),
    ("bench-only-bad", _nothing, [*BENCH, "--only", "nope", "--out", "o"], {}, "--only"),
    ("bench-unknown-flag", _nothing, [*BE, "--bogus"], {}, "--bogus"),
    ("bench-profile-without-its-row", _nothing, [*BE, "--profile", "3", "4"], {}, "--profile"),
    # collect.py (item 59)
    ("collect-no-arguments", _nothing, COLLECT, {}, "bundle"),
    (
        "collect-stage-record-a-list",
        _bundle({T_STAGE: []}),
        [*COLLECT, "b.tar.xz", "--into", "res/gemma3-270m-L9"],
        {},
        T_STAGE,
    ),
    (
        "collect-committed-stage-record-a-list",
        lambda w: (
            _bundle({T_STAGE: {"stage": "T-gemma3-270m-9-topk"}})(w),
            _write(w, {f"res/gemma3-270m-L9/{T_STAGE}": "[]"}),
        ),
        [*COLLECT, "b.tar.xz", "--into", "res/gemma3-270m-L9"],
        {},
        T_STAGE,
    ),
    (
        "collect-malformed-core-json",
        _bundle({"core/a.json": "{\n", T_STAGE: {"stage": "T-gemma3-270m-9-topk"}}),
        [*COLLECT, "b.tar.xz", "--into", "res/gemma3-270m-L9"],
        {},
        "core/a.json",
    ),
    (
        "collect-into-a-file",
        lambda w: (_bundle({T_STAGE: {"stage": "T-gemma3-270m-9-topk"}})(w), _write(w, {"res/gemma3-270m-L9": "x"})),
        [*COLLECT, "b.tar.xz", "--into", "res/gemma3-270m-L9"],
        {},
        "--into",
    ),
    ("collect-unknown-flag", _nothing, [*COLLECT, "b.tar.xz", "--bogus"], {}, "--bogus"),
    # report.py (items 60-61)
    (
        "report-out-file",
        _files({"o": "precious"}),
        [*REPORT, "--n-boot", "10", "--n-perm", "10", "--out", "o"],
        {},
        "--out o",
    ),
    (
        "report-out-user-table2-md",
        _files({"o/table2.md": "precious"}),
        [*REPORT, "--n-boot", "10", "--n-perm", "10", "--out", "o"],
        {},
        "table2.md",
    ),
    (
        "report-out-user-table2-json",
        _files({"o/table2.json": {"mine": 1}}),
        [*REPORT, "--n-boot", "10", "--n-perm", "10", "--out", "o"],
        {},
        "table2.json",
    ),
    (
        "report-out-user-file-in-audit-folder",
        _files({"o/audit/gemma3-270m-L9/pooled_1EV/notes.txt": "precious"}),
        [*REPORT, "--n-boot", "10", "--n-perm", "10", "--out", "o"],
        {},
        "pooled_1EV",
    ),
    (
        "report-malformed-core-json",
        _results_copy_with_bad_core,
        [*REPORT, "--results", "r", "--n-boot", "10", "--n-perm", "10", "--out", "o"],
        {},
        "/core/",
    ),
    ("report-unknown-flag", _nothing, [*REPORT, "--bogus"], {}, "--bogus"),
    # stage.sh (item 62): usage errors on stderr, exit 2, before any folder is made
    ("stage-no-arguments", _nothing, STAGE, {}, "no step"),
    ("stage-unknown-step", _nothing, [*STAGE, "bogus"], {}, "unknown step bogus"),
    ("stage-put-no-folder", _nothing, [*STAGE, "put"], {}, "put"),
    ("stage-put-missing-folder", _nothing, [*STAGE, "put", "nope"], {}, "nope"),
    ("stage-run-no-stage", _nothing, [*STAGE, "run"], {}, "STAGE"),
    ("stage-runprobe-not-a-t-stage", _nothing, [*STAGE, "runprobe", "X-bogus"], {}, "X-bogus"),
    ("stage-wheels-not-a-folder", _nothing, [*STAGE, "wheels", "x"], {}, "wheels: x is not a folder here"),
    ("stage-wheels-two-folders", _nothing, [*STAGE, "wheels", "x", "y"], {}, "wheels takes at most one folder"),
    ("prepare-no-model", _nothing, PREPARE, {}, "usage: prepare.sh"),
    ("prepare-unknown-model", _nothing, [*PREPARE, "gpt2"], {}, "unknown model gpt2"),
    ("prepare-two-models", _nothing, [*PREPARE, "gemma3-270m", "smollm2-135m"], {}, "usage: prepare.sh"),
    # diagnostics/absorption_scoring.py (the device check of the batched k-sparse scoring's order)
    ("scoring-zero-rows", _nothing, [*SCORING, "--rows", "0"], {}, "--rows"),
    ("scoring-zero-batch", _nothing, [*SCORING, "--batch", "0"], {}, "--batch"),
    ("scoring-narrow-sae", _nothing, [*SCORING, "--d-sae", "16"], {}, "--d-sae"),
    ("scoring-out-folder-missing", _nothing, [*SCORING, "--plans-only", "--out", "nope/x.json"], {}, "nope/x.json"),
    ("scoring-rows-not-a-number", _nothing, [*SCORING, "--rows", "many"], {}, "--rows"),
    # diagnostics/absorption_memory.py (the workers' memory cap's measurement)
    ("memory-unknown-scoring", _nothing, [*MEMORY, "--scoring", "fast", "--out", "m.json"], {}, "--scoring"),
    ("memory-zero-rows", _nothing, [*MEMORY, "--rows", "0", "--out", "m.json"], {}, "--rows"),
    ("memory-no-out", _nothing, MEMORY, {}, "--out"),
    ("memory-max-k-above-latents", _nothing, [*MEMORY, "--max-k", "2049", "--out", "m.json"], {}, "--max-k"),
    ("memory-out-folder-missing", _nothing, [*MEMORY, "--rows", "5", "--out", "nope/m.json"], {}, "--out"),
    # diagnostics/core_memory.py (the core eval's memory per token)
    ("core-memory-no-corpus", _nothing, [*CORE_MEMORY, "--corpus", "c", "--out", "m.json"], {}, "--corpus c"),
    (
        "core-memory-zero-prompts",
        _nothing,
        [*CORE_MEMORY, "--corpus", "c", "--prompts", "0", "--out", "m.json"],
        {},
        "--prompts",
    ),
    (
        "core-memory-unknown-model",
        _nothing,
        [*CORE_MEMORY, "--model", "gpt2", "--corpus", "c", "--out", "m.json"],
        {},
        "--model",
    ),
    ("core-memory-no-out", _nothing, [*CORE_MEMORY, "--corpus", "c"], {}, "--out"),
    (
        "core-memory-other-model",
        _corpus("smollm2-135m"),
        [*CORE_MEMORY, "--corpus", "c", "--out", "m.json"],
        {},
        "'smollm2-135m'",
    ),
    (
        "core-memory-too-many-prompts",
        _corpus("gemma3-270m"),
        [*CORE_MEMORY, "--corpus", "c", "--prompts", "9", "--out", "m.json"],
        {},
        "8 held-out rows",
    ),
    (
        "core-memory-too-long-context",
        _corpus("gemma3-270m"),
        [*CORE_MEMORY, "--corpus", "c", "--context", "2048", "--out", "m.json"],
        {},
        "of 1024 tokens",
    ),
]


@pytest.mark.parametrize("setup,argv,env,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_script_bad_input(setup, argv, env, words, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    setup(work)
    before = _files_of(work)
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "T2_WORK": str(work / "t2"),
        "OUT": str(work / "outt2"),
        "T2_SITE": str(work / "site"),
        **env,
    }
    r = subprocess.run(argv, cwd=work, env=full_env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert _files_of(work) == before  # nothing written, nothing deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def _files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


def test_bench_accepts_its_own_earlier_results_and_a_log_beside_them(tmp_path):
    """The bench's own latest.json / latest.md (and run_on_device.sh's log.txt next to them) do not stop a rerun;
    the check reads latest.json's keys."""
    sys.path.insert(0, str(ROOT / "benchmarks/e2e"))
    try:
        import bench_e2e
    finally:
        sys.path.pop(0)
    out = tmp_path / "o"
    _write(out, {"latest.json": OURS_LATEST, "latest.md": "table", "log.txt": "log"})
    assert bench_e2e.check_results_folder(str(out), "--out") == out
    assert bench_e2e._load_rows(out / "latest.json") == []


def test_bench_bare_resume_without_earlier_rows_starts_afresh(tmp_path):
    """A bare --resume (OUT/latest.json) where an earlier call was cut before its first row: the checks pass and
    the run starts from no rows (an explicit --resume FILE that is missing stays an error, above)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_e2e_resume", ROOT / "benchmarks" / "e2e" / "bench_e2e.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # (its dataclasses look their module up)
    spec.loader.exec_module(bench)
    args = bench.parse_args(["--quick", "--only", "ours", "--out", str(tmp_path / "o"), "--resume"])
    bench.check_args(args)  # no error
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "latest.json").write_text("{\n")
    with pytest.raises(Exception, match="latest.json"):
        bench.check_args(args)  # an OUT/latest.json that is there must be the bench's own

"""Bad inputs of `audit`, `theory`, `identifiability` and `demo`: exit 2, one `error:` line naming the problem,
nothing written and nothing deleted (the idioms of tests/test_bad_inputs.py).

Each CLI case creates its files in a fresh working folder, optionally runs commands that must succeed first
(an earlier output), then runs the bad command in-process and compares the folder before and after.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sae_rdp_plugin.cli import main
from sae_rdp_plugin.errors import SaeRdpError

CSV_HEAD = (
    "release,sae_id,model,layer,d_sae,sparsity.l0,reconstruction_quality.explained_variance,"
    "absorption_first_letter.mean.mean_absorption_fraction_score\n"
)


def _csv(l0_2: str = "2", ev_2: str = "0.3") -> str:
    """Four SAEs of one sweep; SAE s2's L0 and explained variance as given."""
    rows = [f"r,s{i},m,3,16,{i},0.{5 - i},0.{i}\n" for i in range(1, 5)]
    rows[1] = f"r,s2,m,3,16,{l0_2},{ev_2},0.2\n"
    return CSV_HEAD + "".join(rows)


L2 = ["basic.l2_loss", 0.4, -1, 0.2, 0.1]  # a last column in place of absorption: SAE s2's L2 error is negative
RUN = "audit run --results r.csv --n-perm 10 --n-boot 0 --no-plots --out a"
FRONTIER = "theory frontier --pmf p.json --width 2 --k 1"
PMF = {"concepts": 2, "pmf": {"": 0.5, "0": 0.2, "1": 0.2, "0,1": 0.1}}
# an `audit run` summary as the command writes it (the marker), listing its files
AUDIT_SUMMARY = {
    "rows": [],
    "skipped_sweeps": [],
    "reader_report": [],
    "files": ["rdp_audit_summary.json", "rdp_audit_summary.md"],
}
ID_SUMMARY = {"machine": "x", "date": "d", "torch": "t", "grids": {}}  # identifiability's summary_<tag>.json

# (id, files to create {name: text or JSON-able; a (target,) tuple makes a symbolic link}, then in order
# commands that must succeed (an earlier output) or more files to create, argv, words of the error)
CLI_CASES = [
    # 13, 14: --seed is checked before anything is written, and named
    ("bundled-seed-negative", {}, [], "audit bundled --quick --seed -1 --out a", "--seed"),
    ("run-seed-negative", {"r.csv": _csv()}, [], RUN + " --seed -1", "--seed"),
    # 15: fewer than 2 SAEs per sweep is meaningless
    ("run-min-saes-0", {"r.csv": _csv()}, [], RUN + " --min-saes 0", "--min-saes"),
    ("run-min-saes-negative", {"r.csv": _csv()}, [], RUN + " --min-saes -3", "--min-saes"),
    ("run-min-saes-1", {"r.csv": _csv()}, [], RUN + " --min-saes 1", "--min-saes"),
    # 16: conflicting checkpoint flags
    (
        "run-checkpoints-exclude-and-include",
        {"r.csv": _csv()},
        [],
        RUN + " --checkpoints exclude --include-checkpoints",
        "--include-checkpoints",
    ),
    (
        "run-checkpoints-only-and-include",
        {"r.csv": _csv()},
        [],
        RUN + " --checkpoints only --include-checkpoints",
        "--include-checkpoints",
    ),
    # 17: impossible rate / distortion values, naming the SAE and the field
    ("run-negative-l0", {"r.csv": _csv(l0_2="-5")}, [], RUN, "r/s2 (r.csv): sparsity.l0 = -5"),
    (
        "run-l2-distortion-negative",
        {"r.csv": "".join(line.rsplit(",", 1)[0] + f",{v}\n" for line, v in zip(_csv().splitlines(), L2))},
        [],
        RUN + " --distortion-field basic.l2_loss",
        "basic.l2_loss = -1",
    ),
    # 18: a user's file put into an earlier audit output is never deleted with it
    (
        "run-user-file-in-earlier-output",
        {"r.csv": _csv()},
        [RUN, {"a/rdp_audit_notes.md": "precious"}],
        RUN,
        "did not write",
    ),
    (
        "run-user-file-in-crafted-output",
        {
            "r.csv": _csv(),
            "a/rdp_audit_summary.json": AUDIT_SUMMARY,
            "a/rdp_audit_summary.md": "# RDP audit\n",
            "a/rdp_audit_notes.md": "precious",
        },
        [],
        RUN,
        "did not write",
    ),
    (
        "run-into-folder-without-marker",
        {"r.csv": _csv(), "a/rdp_audit_summary.md": "mine", "a/rdp_audit_x.json": "{}"},
        [],
        RUN,
        "did not write",
    ),
    (
        "bundled-user-file-in-analysis-folder",
        {
            "a/summary.json": {"analyses": {}, "final_saes_only": True},
            "a/summary.md": "x",
            "a/per_sweep_runA_fve/rdp_audit_summary.json": AUDIT_SUMMARY,
            "a/per_sweep_runA_fve/rdp_audit_notes.md": "precious",
        },
        [],
        "audit bundled --quick --out a",
        "did not write",
    ),
    (
        "bundled-user-folder-beside-output",
        {"a/summary.json": {"analyses": {}, "final_saes_only": True}, "a/thesis/x.tex": "precious"},
        [],
        "audit bundled --quick --out a",
        "did not write",
    ),
    # 31, 32: --grid with --quick, and an unknown grid before any folder is created
    ("id-quick-with-unknown-grid", {}, [], "identifiability --out o --quick --grid nope --no-progress", "--grid"),
    ("id-quick-with-grid", {}, [], "identifiability --out o --quick --grid width --no-progress", "--grid"),
    ("id-unknown-grid", {}, [], "identifiability --out o --grid nope --no-progress", "unknown grid(s) ['nope']"),
    # 33: the user's files of the same names are not overwritten
    (
        "id-user-quick-files",
        {"o/quick.json": "mine", "o/RESULTS_quick.md": "mine"},
        [],
        "identifiability --out o --quick --no-progress",
        "not written by this command",
    ),
    (
        "id-user-quick-json-beside-earlier-output",
        {"o/summary_quick.json": ID_SUMMARY, "o/quick.json": "mine"},
        [],
        "identifiability --out o --quick --no-progress",
        "o/quick.json exists and was not written",
    ),
    (
        "id-user-figure-beside-earlier-output",
        {"o/summary_quick.json": ID_SUMMARY, "o/quick_mcc.png": "mine"},
        [],
        "identifiability --out o --quick --no-progress",
        "quick_mcc.png",
    ),
    ("id-user-folder", {"o/thesis.tex": "mine"}, [], "identifiability --out o --quick --no-progress", "did not write"),
    # 34: demo
    (
        "demo-user-report",
        {"o/report.md": "mine", "o/thesis.tex": "mine"},
        [],
        "demo --out o --only theory",
        "did not write",
    ),
    ("demo-user-report-alone", {"o/report.md": "mine"}, [], "demo --out o --only theory", "did not write"),
    (
        "demo-user-file-beside-earlier-report",
        {"o/report.md": "# sae-rdp demo report\n\nold", "o/thesis.tex": "mine"},
        [],
        "demo --out o --only theory",
        "did not write",
    ),
    # 63: theory frontier never overwrites its input nor a file it did not write
    ("frontier-out-is-the-pmf", {"p.json": PMF}, [], FRONTIER + " --out p.json", "is the input file"),
    ("frontier-out-links-to-the-pmf", {"p.json": PMF, "q.json": ("p.json",)}, [], FRONTIER + " --out q.json", "input"),
    ("frontier-out-user-file", {"p.json": PMF, "u.json": "{}"}, [], FRONTIER + " --out u.json", "--out u.json"),
    (
        "frontier-plot-user-file",
        {"p.json": PMF, "u.png": "mine"},
        [],
        FRONTIER + " --out f.json --plot u.png",
        "--plot u.png",
    ),
    (
        "frontier-plot-of-another-output",
        {"p.json": PMF},
        [FRONTIER + " --out f.json --plot f.png"],
        FRONTIER + " --out g.json --plot f.png",
        "--plot f.png",
    ),
]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(root.rglob("*"))
        if not p.is_symlink()
    }


def _make(work: Path, files: dict) -> None:
    for name, content in files.items():
        p = work / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple):
            p.symlink_to(content[0])
        else:
            p.write_text(content if isinstance(content, str) else json.dumps(content))


@pytest.mark.parametrize("files,pre,argv,words", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(files, pre, argv, words, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    _make(work, files)
    for step in pre:
        if isinstance(step, dict):
            _make(work, step)
        else:
            assert main(step.split()) == 0, capsys.readouterr().err
    capsys.readouterr()
    before = _files(work)
    rc = main(argv.split())
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, err
    assert len(errors) == 1 and words in errors[0], err
    assert err.strip() == errors[0], err  # one line, no traceback
    assert _files(work) == before  # nothing written, nothing deleted
    assert [p.name for p in tmp_path.iterdir()] == ["work"]  # no temporary sibling either


# --- what must keep working


def test_audit_run_replaces_its_own_output_and_keeps_negative_ev(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.csv").write_text(_csv(ev_2="1.0008"))  # SAEBench's core explained_variance can exceed 1
    assert main(RUN.split()) == 0
    (tmp_path / "r.csv").write_text(_csv(ev_2="-0.3"))  # negative explained variance is possible
    assert main(RUN.split()) == 0
    assert main(RUN.replace("--no-plots ", "").split()) == 0  # the earlier output is ours: replaced
    files = json.loads((tmp_path / "a" / "rdp_audit_summary.json").read_text())["files"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(files) and any(".png" in f for f in files)
    (tmp_path / "r.csv").write_text(_csv(l0_2="nan", ev_2="1.0"))  # a missing L0: the SAE is left out, as before
    assert main((RUN + " --checkpoints all --include-checkpoints").split()) == 0


def test_frontier_rewrites_its_own_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.json").write_text(json.dumps(PMF))
    for _ in range(2):
        assert main((FRONTIER + " --out f.json --plot f.png").split()) == 0
    assert json.loads((tmp_path / "p.json").read_text()) == PMF


def test_committed_identifiability_results_are_recognised():
    from sae_rdp_plugin.experiments.identifiability import grid_configs, is_experiment_output

    out = Path(__file__).resolve().parents[2] / "experiments" / "identifiability"
    if not out.is_dir():
        pytest.skip("no committed identifiability results")
    for grids in (None, ["width"], ["mixed_wp"]):
        assert is_experiment_output(out, list(grid_configs(False, grids)))


def test_demo_output_is_recognised(tmp_path):
    from sae_rdp_plugin.commands.demo import is_demo_output

    (tmp_path / "report.md").write_text("# sae-rdp demo report\n\nx")
    (tmp_path / "theory").mkdir()
    assert is_demo_output(tmp_path)
    (tmp_path / "notes.md").write_text("mine")
    assert not is_demo_output(tmp_path)


# --- the same checks from Python


def _api_cases():
    from sae_rdp_plugin.audit.readers import read_bundled
    from sae_rdp_plugin.evals.rdp_audit.bundled import run_bundled
    from sae_rdp_plugin.evals.rdp_audit.eval_config import RdpAuditEvalConfig
    from sae_rdp_plugin.evals.rdp_audit.main import run_eval
    from sae_rdp_plugin.experiments.identifiability import grid_configs

    def eval_with(**kw):
        return lambda out: run_eval(RdpAuditEvalConfig(**kw), None, "cpu", str(out), table=read_bundled("A"))

    return [
        ("eval-min-saes", eval_with(min_saes=1), "min_saes"),
        ("eval-seed", eval_with(random_seed=-1), "random_seed"),
        ("bundled-seed", lambda out: run_bundled(out, seed=-1), "seed"),
        ("bundled-analysis", lambda out: run_bundled(out, analyses=["nope"]), "nope"),
        ("quick-with-grid", lambda out: grid_configs(True, ["width"]), "quick"),
    ]


@pytest.mark.parametrize("case", _api_cases(), ids=lambda c: c[0])
def test_api_bad_input(case, tmp_path):
    _, call, words = case
    with pytest.raises(SaeRdpError, match=words):
        call(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_run_experiment_keeps_a_users_file(tmp_path):
    from sae_rdp_plugin.experiments.identifiability import run_experiment

    (tmp_path / "quick.json").write_text("mine")
    with pytest.raises(SaeRdpError, match="quick.json exists and was not written"):
        run_experiment(tmp_path, quick=True, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["quick.json"]
    assert (tmp_path / "quick.json").read_text() == "mine"

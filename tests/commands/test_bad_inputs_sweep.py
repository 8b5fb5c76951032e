"""Bad inputs of ``sae-rdp sweep ...`` and ``sae-rdp distributed ...``: exit 2, one ``error:`` line naming the
problem, nothing written, nothing deleted (as tests/test_bad_inputs.py, for the sweep area's own cases)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from small_sweep import SWEEP

from sae_rdp_plugin.cli import main

MEMBER = "a__topk__w4__k1__s0__random"
DIST = "distributed train --device cpu --d-in 8 --d-sae 16 --k 2 --n-features 16 --batch 16 --steps 2"
GRID = "distributed grid --device cpu --d-in 8 --d-sae 16 --n-features 16 --batch 16 --steps 2"
DSWEEP = "distributed sweep --device cpu --quiet --config c.json"


def _cfg(**over) -> dict:
    return {**SWEEP, **over}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, small_sweep) -> dict[str, Path]:
    from sae_rdp_plugin.sweep.export import export_member

    root = tmp_path_factory.mktemp("sweeps")
    shutil.copytree(small_sweep, root / "full")
    export_member(root / "full", MEMBER, root / "export")
    return {k: root / k for k in ("full", "export")}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


def _copy(name: str, to: str) -> Callable[[Path, dict[str, Path]], None]:
    return lambda work, sweeps: shutil.copytree(sweeps[name], work / to)


def _state(edit: Callable[[dict], object]) -> Callable[[Path, dict[str, Path]], None]:
    """A copy of the finished sweep as work/full, its state.json edited."""

    def setup(work: Path, sweeps: dict[str, Path]) -> None:
        shutil.copytree(sweeps["full"], work / "full")
        state = json.loads((work / "full" / "state.json").read_text())
        edit(state)
        (work / "full" / "state.json").write_text(json.dumps(state))

    return setup


def _export_plus(name: str, text: str) -> Callable[[Path, dict[str, Path]], None]:
    def setup(work: Path, sweeps: dict[str, Path]) -> None:
        shutil.copytree(sweeps["export"], work / "d")
        (work / "d" / name).write_text(text)

    return setup


def _swap_enc_dec(path: Path) -> None:
    """W_enc and W_dec of a safetensors file swapped (shapes transposed), the rest as it was."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(path))
    for enc, dec in (("param.W_enc", "param.W_dec"), ("W_enc", "W_dec")):
        if enc in sd:
            sd[enc], sd[dec] = sd[dec].contiguous(), sd[enc].contiguous()
    save_file(sd, str(path))


def _swapped_group(work: Path, sweeps: dict[str, Path]) -> None:
    shutil.copytree(sweeps["full"], work / "full")
    for f in (work / "full" / "groups").glob("topk_*.safetensors"):
        _swap_enc_dec(f)


def _swapped_export(work: Path, sweeps: dict[str, Path]) -> None:
    shutil.copytree(sweeps["export"], work / "sae1")
    _swap_enc_dec(work / "sae1" / "sae_weights.safetensors")


EXPORT = f"sweep export --sweep {{sweep_full}} --member {MEMBER} --dest d"
EXPORT_LOCAL = f"sweep export --sweep full --member {MEMBER} --dest d"
RUN = "sweep run --config c.json --out o --no-plots"

# (id, files {name: text or JSON-able}, setup(work, sweeps) or None, argv, words of the error)
CASES = [
    # 1. a DGP name is part of file names
    ("dgp-name-dotdot", {"c.json": _cfg(dgps=[{"name": "../../x"}])}, None, RUN, "DGP name '../../x'"),
    ("dgp-name-slash", {"c.json": _cfg(dgps=[{"name": "a/b"}])}, None, RUN, "not a safe file name"),
    ("dgp-name-hidden", {"c.json": _cfg(dgps=[{"name": ".a"}])}, None, RUN, "not a safe file name"),
    # 2, 3. sizes that cannot fit
    ("dgp-d-huge", {"c.json": _cfg(dgps=[{"name": "a", "d": 10**9}])}, None, RUN, "lower its d or m"),
    ("eval-samples-huge", {"c.json": _cfg(eval_samples=10**11)}, None, RUN, "lower eval_samples"),
    # 4. seeds out of the 64-bit range
    ("seeds-huge", {"c.json": _cfg(seeds=[2**70])}, None, RUN, "seeds must be in 0..2**63-1"),
    ("seeds-negative", {"c.json": _cfg(seeds=[-1])}, None, RUN, "seeds must be in 0..2**63-1"),
    ("data-seed-huge", {"c.json": _cfg(data_seed=2**70)}, None, RUN, "data_seed must be in 0..2**63-1"),
    ("eval-seed-negative", {"c.json": _cfg(eval_seed=-1)}, None, RUN, "eval_seed must be in"),
    ("concept-seed-huge", {"c.json": _cfg(dgps=[{"name": "a", "concept_seed": 2**70}])}, None, RUN, "concept_seed"),
    # 5. an earlier export with a user's file in it is not replaced
    ("export-over-user-notes", {}, _export_plus("my_notes.txt", "precious"), EXPORT, "my_notes.txt"),
    (
        "export-marker-with-thesis",
        {"d/.sae_rdp_export.json": "", "d/thesis.tex": "precious"},
        None,
        EXPORT,
        "thesis.tex",
    ),
    # 6, 7. a malformed state.json
    ("export-state-groups-list", {}, _state(lambda s: s.update(groups=[])), EXPORT_LOCAL, "'groups' must be"),
    ("export-state-no-config", {}, _state(lambda s: s.pop("config")), EXPORT_LOCAL, "state.json has no 'config'"),
    ("export-state-members-list", {}, _state(lambda s: s.update(members=[])), EXPORT_LOCAL, "'members' must be"),
    # 8, 9. options of the other mode
    (
        "eval-sweep-and-sae-path",
        {},
        _copy("export", "sae1"),
        "sweep eval --sweep {sweep_full} --sae-path sae1 --n-samples 64 --out e",
        "--sae-path cannot be combined with --sweep",
    ),
    (
        "eval-sweep-and-config-dgp",
        {"c.json": SWEEP},
        None,
        "sweep eval --sweep {sweep_full} --config c.json --dgp zzz --n-samples 64 --out e",
        "--config, --dgp cannot be combined with --sweep",
    ),
    # 10. two SAEs whose results would go to one file
    (
        "eval-duplicate-names",
        {"c.json": SWEEP},
        lambda work, sweeps: [shutil.copytree(sweeps["export"], work / p) for p in ("sae1", "x/sae1")],
        "sweep eval --sae-path sae1 x/sae1 --config c.json --n-samples 64 --out e",
        "--sae-path sae1 and x/sae1 have the same folder name",
    ),
    # 11. the d mismatch is found before e/ is created
    (
        "eval-d-mismatch",
        {"c.json": _cfg(dgps=[{"name": "a", "m": 4, "d": 16}])},
        _copy("export", "sae1"),
        "sweep eval --sae-path sae1 --config c.json --n-samples 64 --out e",
        "SAE d_in=8 but DGP 'a' of --config has d=16",
    ),
    # 12. a sample that would run for days
    (
        "eval-n-samples-huge",
        {},
        None,
        "sweep eval --sweep {sweep_full} --n-samples 100000000000 --out e",
        "--n-samples",
    ),
    # sw-dgp-m-odd-pairs: kind pairs with an odd m left its last concept in no pair (rho = 1: it never fired)
    ("dgp-pairs-odd-m", {"c.json": _cfg(dgps=[{"name": "a", "m": 5, "rho": 1.0}])}, None, RUN, "needs an even m"),
    ("dgp-pairs-blocks", {"c.json": _cfg(dgps=[{"name": "a", "blocks": [[0, 1, 2]]}])}, None, RUN, "blocks is read"),
    ("dgp-pairs-pmf", {"c.json": _cfg(dgps=[{"name": "a", "pmf": {"0": 1.0}}])}, None, RUN, "pmf is read"),
    # sw-resume-nonexistent: --resume on a missing or empty folder started a new sweep there
    ("resume-nonexistent", {"c.json": SWEEP}, None, RUN + " --resume", "--resume: --out o does not exist"),
    ("resume-empty-folder", {"c.json": SWEEP, "o/.keep": ""}, None, RUN + " --resume", "holds no sweep to resume"),
    ("dist-sweep-resume-nonexistent", {"c.json": SWEEP}, None, DSWEEP + " --resume --out o", "does not exist"),
    # ex-weights-swapped: group weights of other shapes than the config's (W_enc / W_dec swapped): a traceback
    ("export-weights-swapped", {}, _swapped_group, EXPORT_LOCAL, "W_enc of member"),
    (
        "eval-weights-swapped",
        {"c.json": SWEEP},
        _swapped_export,
        "sweep eval --sae-path sae1 --config c.json --n-samples 64 --out e",
        "size mismatch for W_",
    ),
    # di-dataseed-neg: a negative --data-seed was taken (torch aliases it to 2**64-1)
    ("dist-data-seed-negative", {}, None, DIST + " --data-seed -1 --out o", "data_seed must be an integer in 0.."),
    ("dist-data-seed-huge", {}, None, DIST + " --data-seed 99999999999999999999 --out o", "data_seed must be"),
    ("dist-seed-negative", {}, None, DIST + " --seed -1 --out o", "seed must be an integer in 0..2**63-1"),
    # 48. --device
    ("dist-train-device", {}, None, DIST.replace("cpu", "banana") + " --out o", "--device 'banana' is not a device"),
    ("dist-sweep-device", {"c.json": SWEEP}, None, DSWEEP.replace("cpu", "banana") + " --out o", "not a device"),
    ("dist-grid-device", {}, None, GRID.replace("cpu", "banana") + " --out o", "not a device"),
    # 49. --sae-kwargs
    ("dist-sae-kwargs-d-in", {}, None, DIST + ' --sae-kwargs {{"d_in":5}} --out o', "which --d-in sets"),
    ("dist-sae-kwargs-k", {}, None, DIST + ' --sae-kwargs {{"k":3}} --out o', "which --k sets"),
    ("dist-sae-kwargs-unknown", {}, None, DIST + ' --sae-kwargs {{"banana":3}} --out o', "unknown config field"),
    # 50. --backend, --timeout-s, --warmup-steps
    ("dist-backend-banana", {}, None, DIST + " --backend banana --out o", "--backend 'banana'"),
    ("dist-backend-nccl-cpu", {}, None, DIST + " --backend nccl --out o", "--backend nccl needs a CUDA device"),
    ("dist-timeout-zero", {}, None, DIST + " --timeout-s 0 --out o", "--timeout-s"),
    ("dist-timeout-negative", {}, None, DIST + " --timeout-s -5 --out o", "--timeout-s"),
    ("dist-timeout-nan", {}, None, DIST + " --timeout-s nan --out o", "--timeout-s"),
    ("dist-warmup-negative", {}, None, DIST + " --warmup-steps -1 --out o", "--warmup-steps"),
    ("dist-warmup-past-steps", {}, None, DIST + " --warmup-steps 50 --out o", "--warmup-steps"),
    ("dist-sweep-backend", {"c.json": SWEEP}, None, DSWEEP + " --backend banana --out o", "--backend 'banana'"),
    ("dist-sweep-timeout", {"c.json": SWEEP}, None, DSWEEP + " --timeout-s -1 --out o", "--timeout-s"),
    ("dist-grid-backend", {}, None, GRID + " --backend banana --out o", "--backend 'banana'"),
    # 51, 54. --out is a file
    ("dist-train-out-file", {"o": "x"}, None, DIST + " --out o", "--out o exists and is not a folder"),
    ("dist-grid-out-file", {"o": "x"}, None, GRID + " --ks 2 --out o", "--out o exists and is not a folder"),
    ("dist-sweep-out-file", {"c.json": SWEEP, "o": "x"}, None, DSWEEP + " --out o", "--out o exists and is not"),
    # 52, 53. --out holds a user's files
    ("dist-train-user-metrics", {"o/train_metrics.json": "{}"}, None, DIST + " --out o", "did not write"),
    ("dist-train-user-folder", {"o/thesis.tex": "precious"}, None, DIST + " --out o", "did not write"),
    ("dist-grid-user-folder", {"o/thesis.tex": "precious"}, None, GRID + " --ks 2 --out o", "did not write"),
    ("dist-sweep-user-folder", {"c.json": SWEEP, "o/thesis.tex": "x"}, None, DSWEEP + " --out o", "did not write"),
    # 55. options that do not apply
    ("dist-grid-ks-standard", {}, None, GRID + " --architecture standard --ks 1,2 --out o", "--ks does not apply"),
    ("dist-grid-ks-empty", {}, None, GRID + " --ks= --out o", "--ks is empty"),
    ("dist-train-k-standard", {}, None, DIST + " --architecture standard --out o", "--k does not apply"),
    ("dist-train-autocast-cpu", {}, None, DIST + " --autocast --out o", "--autocast needs a CUDA device"),
]


@pytest.mark.parametrize("files,setup,argv,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_bad_input(files, setup, argv, words, sweeps, tmp_path, monkeypatch, capsys):
    if ("nccl" in argv or "autocast" in argv) and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    work = tmp_path / "work"
    work.mkdir()
    for name, content in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(content if isinstance(content, str) else json.dumps(content))
    if setup is not None:
        setup(work, sweeps)
    before, sweep_before = _files(work), {k: _files(p) for k, p in sweeps.items()}
    monkeypatch.chdir(work)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rc = main(argv.format(**{f"sweep_{k}": p for k, p in sweeps.items()}).split())
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, err
    assert len(errors) == 1 and words in errors[0], err
    assert "Traceback" not in err
    assert _files(work) == before  # nothing written, nothing deleted
    assert {k: _files(p) for k, p in sweeps.items()} == sweep_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # nothing outside --out either (../../x)


def test_reexport_replaces_a_previous_export(sweeps, tmp_path):
    shutil.copytree(sweeps["export"], tmp_path / "d")
    assert (
        main(["sweep", "export", "--sweep", str(sweeps["full"]), "--member", MEMBER, "--dest", str(tmp_path / "d")])
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(
        [".sae_rdp_export.json", "cfg.json", "sae_weights.safetensors"]
    )


def test_huge_seeds_within_range_train(tmp_path):
    """data_seed up to 2**63-1 is accepted and trains (its stream seed is folded into 64 bits)."""
    from sae_rdp_plugin.sweep.config import SweepConfig
    from sae_rdp_plugin.sweep.train import train_sweep

    cfg = SweepConfig.from_dict(
        _cfg(seeds=[2**63 - 1], data_seed=2**63 - 1, eval_seed=2**63 - 1, architectures=["topk"])
    )
    assert len(train_sweep(cfg, tmp_path / "o", progress=False)) == 1


def test_distributed_train_reruns_into_its_own_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = DIST.split() + ["--no-resume", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    assert main(argv) == 0  # an earlier run of its own is not "a folder this command did not write"
    (tmp_path / "o" / "notes.txt").write_text("mine")
    assert main(argv) == 2
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"
    assert "did not write" in capsys.readouterr().err


def test_distributed_train_resumes_a_killed_run(tmp_path, monkeypatch):
    """A folder holding only a killed run's checkpoint folder is its own output (resumed, not refused)."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    (tmp_path / "o" / "checkpoints").mkdir(parents=True)
    (tmp_path / "o" / "checkpoints" / "latest.json").write_text('{"checkpoint": "16"}')
    assert main(DIST.split() + ["--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "train_metrics.json").is_file()


def test_distributed_sweep_resumes_a_run_killed_before_the_merge(tmp_path, monkeypatch):
    from sae_rdp_plugin.sweep.config import SweepConfig
    from sae_rdp_plugin.sweep.train import train_sweep

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = _cfg(architectures=["topk"])
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    train_sweep(SweepConfig.from_dict(cfg), tmp_path / "o" / "ranks" / "rank0", progress=False)
    argv = DSWEEP.replace("c.json", str(tmp_path / "c.json")).split() + ["--resume", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    assert (tmp_path / "o" / "results.json").is_file()


def test_sweep_eval_scores_an_exported_member_against_its_own_dgp(tmp_path, monkeypatch, capsys):
    """With a config of two DGPs, an exported member is scored against the DGP its export recorded (before, the
    config's first DGP, whatever the member was trained on); a folder that records none needs --dgp."""
    from sae_rdp_plugin.sweep.config import SweepConfig
    from sae_rdp_plugin.sweep.export import export_member
    from sae_rdp_plugin.sweep.train import train_sweep

    monkeypatch.chdir(tmp_path)
    cfg = _cfg(dgps=[SWEEP["dgps"][0], {**SWEEP["dgps"][0], "name": "b", "rho": 0.0}], seeds=[0],
               architectures=["topk"])  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    train_sweep(SweepConfig.from_dict(cfg), tmp_path / "full", progress=False)
    export_member(tmp_path / "full", "b__topk__w4__k1__s0__random", tmp_path / "mb")
    assert main(["sweep", "eval", "--sae-path", "mb", "--config", "c.json", "--out", "e", "--n-samples", "64"]) == 0
    res = json.loads((tmp_path / "e" / "mb_custom_sae_eval_results.json").read_text())
    assert res["eval_config"]["dgp"]["name"] == "b"
    (tmp_path / "plain").mkdir()
    for f in ("cfg.json", "sae_weights.safetensors"):
        shutil.copy(tmp_path / "mb" / f, tmp_path / "plain" / f)
    capsys.readouterr()
    assert main(["sweep", "eval", "--sae-path", "plain", "--config", "c.json", "--out", "e2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "name one with --dgp" in err[0] and not (tmp_path / "e2").exists()


def test_distributed_sweep_out_with_plots_is_its_own(tmp_path):
    """`sweep plot` (and `sweep run` unless --no-plots) write rdp_summary.json and rdp_*.png into a sweep folder:
    it is still the sweep's own for `distributed sweep --out` (resume); a user's file is not."""
    from sae_rdp_plugin.commands.distributed import _is_sweep_out

    (tmp_path / "state.json").write_text(json.dumps({"config": {}, "groups": {}, "members": {}}))
    for n in ("rdp_summary.json", "rdp_rate_distortion.png", "rdp_premium_vs_P.png"):
        (tmp_path / n).write_text("x")
    assert _is_sweep_out(tmp_path)
    (tmp_path / "notes.md").write_text("mine")
    assert not _is_sweep_out(tmp_path)

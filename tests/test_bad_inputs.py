"""Every bad input is a clear error, leaves nothing behind and deletes nothing a user owns.

Table-driven: each CLI case runs ``sae_rdp_plugin.cli.main`` in-process (in a fresh working folder) and
asserts exit status 2, exactly one ``error:`` line naming the problem, no traceback, and the folder
unchanged (nothing written, nothing deleted). Each API case asserts the documented SaeRdpError.
"""

from __future__ import annotations

import errno
import importlib
import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from small_sweep import SWEEP  # 2 groups (topk, standard) x 2 seeds = 4 members

from sae_rdp_plugin.cli import main
from sae_rdp_plugin.errors import SaeRdpError


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, small_sweep) -> dict[str, Path]:
    from sae_rdp_plugin.io import atomic_write_json
    from sae_rdp_plugin.sweep.config import SweepConfig
    from sae_rdp_plugin.sweep.export import export_member
    from sae_rdp_plugin.sweep.train import train_sweep

    root = tmp_path_factory.mktemp("sweeps")
    cfg = SweepConfig.from_dict(SWEEP)
    shutil.copytree(small_sweep, root / "full")
    train_sweep(cfg, root / "partial", progress=False, groups=["topk_w4_d8_c0"])  # as if killed half-way
    # group weights cut short (a damaged disk or copy): topk done, standard interrupted at step 3
    shutil.copytree(root / "full", root / "truncated")
    for f in (root / "truncated" / "groups").glob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:300])
    state = json.loads((root / "truncated" / "state.json").read_text())
    state["groups"]["standard_w4_d8_c0"] = {"status": "running", "step": 3}
    atomic_write_json(root / "truncated" / "state.json", state)
    (root / "truncated" / "results.json").unlink()
    sae = export_member(root / "full", "a__topk__w4__k1__s0__random", root / "sae_truncated")
    w = sae / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    return {k: root / k for k in ("full", "partial", "truncated", "sae_truncated")}


def _sweep_cfg(**over) -> dict:
    return {**SWEEP, **over}


def _crafted_pickle() -> bytes:
    """A trainer state whose unpickling would create the file PWNED (torch's weights_only loader refuses it)."""

    class Payload:
        def __reduce__(self):
            return (Path.touch, (Path("PWNED"),))

    return pickle.dumps({"optimizer": Payload()})


def _disk_full(target: str):
    """A monkeypatch setter: ``target`` ("module:attr") raises ENOSPC, as a write on a full disk does."""

    def apply(monkeypatch):
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        module, attr = target.split(":")
        monkeypatch.setattr(importlib.import_module(module), attr, full)

    return apply


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


DEEP = "[" * 200_000 + "]" * 200_000
TRAIN = "train --synthetic --architecture topk --d-in 8 --d-sae 16 --k 2 --tokens 64 --batch-size 32"
AUDIT_CSV = (
    "release,sae_id,model,layer,d_sae,sparsity.l0,reconstruction_quality.explained_variance,"
    "absorption_first_letter.mean.mean_absorption_fraction_score\n"
    + "".join(f"r,s{i},m,{{layer}},16,{i},0.{5 - i},0.{i}\n" for i in range(1, 5))
)
CHECKPOINT = {"sae_weights.safetensors": b"", "activation_scaler.json": "{}"}  # a resume folder's other files

# (id, files to create first {name: text, bytes or JSON-able}, argv with {sweep_<name>} for the module's
# sweeps, words of the error); PATCHES[id] sets up a fault (monkeypatch) first
CLI_CASES = [
    (
        "grad-clip-negative",
        {"c.json": _sweep_cfg(grad_clip_norm=-1)},
        "sweep run --config c.json --out o",
        "grad_clip_norm",
    ),
    ("grad-clip-zero", {"c.json": _sweep_cfg(grad_clip_norm=0)}, "sweep run --config c.json --out o", "grad_clip_norm"),
    ("widths-bool", {"c.json": _sweep_cfg(widths=[True])}, "sweep run --config c.json --out o", "widths"),
    ("ks-bool", {"c.json": _sweep_cfg(ks=[True])}, "sweep run --config c.json --out o", "ks must be"),
    (
        "batchtopk-k-above-width",
        {"c.json": _sweep_cfg(architectures=["batchtopk"], ks=[20])},
        "sweep run --config c.json --out o",
        "k=20 fits no member",
    ),
    (
        "topk-fractional-k",
        {"c.json": _sweep_cfg(architectures=["topk"], ks=[2.7])},
        "sweep run --config c.json --out o",
        "whole number",
    ),
    ("adam-beta", {"c.json": _sweep_cfg(adam_beta1=1.5)}, "sweep run --config c.json --out o", "adam_beta1"),
    (
        "train-negative-sparsity",
        {},
        "train --synthetic --architecture weighted_standard --d-in 8 --d-sae 16 --tokens 64 --batch-size 32 "
        "--sparsity-coefficient -5 --out o",
        "sparsity_coefficient",
    ),
    (
        "train-fractional-k",
        {},
        "train --synthetic --architecture topk --d-in 8 --d-sae 16 --k 2.7 --tokens 64 --batch-size 32 --out o",
        "whole number",
    ),
    (
        "train-zero-features",
        {},
        "train --synthetic --architecture topk --d-in 8 --d-sae 16 --k 2 --tokens 64 --batch-size 32 "
        "--n-features 0 --out o",
        "n_features",
    ),
    ("eval-negative-samples", {}, "sweep eval --sweep {sweep_full} --n-samples -5 --out o", "n_samples"),
    ("eval-zero-samples", {}, "sweep eval --sweep {sweep_full} --n-samples 0 --out o", "n_samples"),
    ("eval-partial", {}, "sweep eval --sweep {sweep_partial} --out o", "2 of 4 members"),
    ("plot-partial", {}, "sweep plot --sweep {sweep_partial}", "--resume"),
    (
        "export-into-user-folder",
        {"mine/thesis.tex": "precious"},
        "sweep export --sweep {sweep_full} --member a__topk__w4__k1__s0__random --dest mine",
        "not a sae-rdp export",
    ),
    (
        "export-onto-user-file",
        {"notes.txt": "precious"},
        "sweep export --sweep {sweep_full} --member a__topk__w4__k1__s0__random --dest notes.txt",
        "not a folder",
    ),
    (
        "pmf-unknown-key",
        {"p.json": {"concepts": 2, "pmf": {"": 0.5, "0,1": 0.5}, "concpets": 3}},
        "theory frontier --pmf p.json --width 2 --k 1 --out f.json",
        "unknown key(s) in PMF JSON: concpets",
    ),
    # ---- issue 16, clear errors and clean failures
    (
        "sweep-does-not-fit-in-memory",
        {"c.json": _sweep_cfg(widths=[10**12])},
        "sweep run --config c.json --out o",
        "needs about",
    ),
    (
        "sweep-host-memory-env-bad",  # SAE_RDP_HOST_MEMORY_GIB=lots (PATCHES): the memory check names the variable
        {"c.json": SWEEP},
        "sweep run --config c.json --out o",
        "SAE_RDP_HOST_MEMORY_GIB='lots' is not a positive number of GiB",
    ),
    ("sweep-device-banana", {"c.json": SWEEP}, "sweep run --config c.json --out o --device banana", "not a device"),
    ("train-device-banana", {}, TRAIN + " --device banana --out o", "--device 'banana' is not a device"),
    ("train-device-cuda:99", {}, TRAIN + " --device cuda:99 --out o", "--device 'cuda:99'"),
    ("train-negative-batch", {}, TRAIN.replace("32", "-32") + " --out o", "batch_size"),
    ("sweep-deep-json", {"c.json": DEEP}, "sweep run --config c.json --out o", "nested too deeply"),
    (
        "pmf-deep-json",
        {"p.json": DEEP},
        "theory frontier --pmf p.json --width 2 --k 1 --out f.json",
        "nested too deeply",
    ),
    ("audit-deep-json", {"r/x.json": DEEP}, "audit run --results r/x.json --out a", "nested too deeply"),
    ("audit-csv-layer-inf", {"r.csv": AUDIT_CSV.format(layer="inf")}, "audit run --results r.csv --out a", "'inf'"),
    (
        "audit-n-perm-unbounded",
        {"r.csv": AUDIT_CSV.format(layer=3)},
        "audit run --results r.csv --n-perm 1000000000000 --out a",
        "n_perm must be an integer in 1..100,000",
    ),
    (
        "audit-into-user-folder",
        {"r.csv": AUDIT_CSV.format(layer=3), "a/thesis.tex": "precious"},
        "audit run --results r.csv --n-perm 10 --n-boot 0 --out a",
        "did not write",
    ),
    (
        "audit-disk-full-at-summary",
        {"r.csv": AUDIT_CSV.format(layer=3)},
        "audit run --results r.csv --n-perm 10 --n-boot 0 --no-plots --out a",
        "No space left on device",
    ),
    ("bundled-into-user-folder", {"a/thesis.tex": "precious"}, "audit bundled --quick --out a", "did not write"),
    ("distributed-zero-chunks", {}, "distributed train --n-chunks 0 --steps 2 --batch 16 --out o", "n_chunks"),
    (
        "sweep-lr-scheduler",
        {"c.json": _sweep_cfg(lr_scheduler_name="warmcosine")},
        "sweep run --config c.json --out o",
        "lr_scheduler_name",
    ),
    (
        "sweep-lr-decay-to-zero",
        {"c.json": _sweep_cfg(lr_scheduler_name="cosineannealing", lr_decay_steps=2, lr_end=0.0)},
        "sweep run --config c.json --out o",
        "lr schedule",
    ),
    (
        "sweep-negative-q",
        {"c.json": _sweep_cfg(dgps=[{"name": "a", "q": -1}])},
        "sweep run --config c.json --out o",
        "q",
    ),
    (
        "sweep-into-user-folder",
        {"c.json": SWEEP, "o/thesis.tex": "precious"},
        "sweep run --config c.json --out o",
        "holds no sweep",
    ),
    (
        "export-truncated-weights",
        {},
        "sweep export --sweep {sweep_truncated} --member a__topk__w4__k1__s0__random --dest x",
        "unreadable",
    ),
    (
        "resume-truncated-checkpoint",
        {"c.json": SWEEP},
        "sweep run --config c.json --out {sweep_truncated} --resume",
        "standard_w4_d8_c0.safetensors is unreadable",
    ),
    (
        "eval-truncated-sae",
        {"c.json": SWEEP},
        "sweep eval --sae-path {sweep_sae_truncated} --config c.json --n-samples 64 --out e",
        "cannot load the SAE",
    ),
    (
        "train-resume-crafted-pickle",
        {"ck/trainer_state.pt": _crafted_pickle(), **{f"ck/{k}": v for k, v in CHECKPOINT.items()}},
        TRAIN + " --resume ck --out o",
        "refused (loading it could run code)",
    ),
    ("train-resume-not-a-checkpoint", {"ck/x": "x"}, TRAIN + " --resume ck --out o", "not a SAELens training"),
    ("train-into-user-folder", {"o/thesis.tex": "precious"}, TRAIN + " --out o", "did not write"),
    ("train-out-under-a-file", {"f": "x"}, TRAIN + " --out f/run", "is not a folder"),
    ("sweep-disk-full", {"c.json": SWEEP}, "sweep run --config c.json --out o", "No space left on device"),
    ("train-disk-full-checkpoint", {}, TRAIN + " --checkpoints 1 --out o", "No space left on device"),
    ("train-disk-full-final-save", {}, TRAIN + " --out o", "No space left on device"),
]

PATCHES = {
    "audit-disk-full-at-summary": _disk_full("sae_rdp_plugin.evals.rdp_audit.main:atomic_write_text"),
    "sweep-disk-full": _disk_full("safetensors.torch:save_file"),
    "train-disk-full-checkpoint": _disk_full("torch:save"),  # SAELens's trainer state, after the weights
    "train-disk-full-final-save": _disk_full("sae_lens.saes.sae:save_file"),
    "sweep-host-memory-env-bad": lambda mp: mp.setenv("SAE_RDP_HOST_MEMORY_GIB", "lots"),
}


@pytest.mark.parametrize("files,argv,words", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(request, files, argv, words, sweeps, tmp_path, monkeypatch, capsys):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    work = tmp_path / "work"
    work.mkdir()
    for name, content in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (work / name).write_bytes(content)
        else:
            (work / name).write_text(content if isinstance(content, str) else json.dumps(content))
    before, sweep_before = _files(work), {k: _files(p) for k, p in sweeps.items()}
    monkeypatch.chdir(work)
    case = request.node.callspec.id
    if case in PATCHES:
        PATCHES[case](monkeypatch)
    rc = main(argv.format(**{f"sweep_{k}": p for k, p in sweeps.items()}).split())
    monkeypatch.undo()
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, err
    assert len(errors) == 1 and words in errors[0], err
    assert all(line.startswith("error:") for line in err.split("\n") if "error:" in line), err  # no bar before it
    assert "Traceback" not in err
    assert _files(work) == before  # nothing written, nothing deleted
    assert {k: _files(p) for k, p in sweeps.items()} == sweep_before
    assert [p.name for p in tmp_path.iterdir()] == ["work"]  # no temporary sibling either


def test_cli_partial_sweep_with_allow_partial_warns(sweeps, capsys):
    assert main(["sweep", "plot", "--sweep", str(sweeps["partial"]), "--allow-partial"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "2 of 4 members" in err
    summary = json.loads((sweeps["partial"] / "rdp_summary.json").read_text())
    assert summary["a"]["n_members"] == 2
    for p in sweeps["partial"].glob("rdp_*"):  # the module's other cases compare this folder's files
        p.unlink()


def _weighted_sae_with_gamma():
    from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig, TrainStepInput

    from sae_rdp_plugin.train.config import sae_config_dict
    from sae_rdp_plugin.wsae.registry import register_now

    register_now()
    sae = TrainingSAE.from_dict(TrainingSAEConfig.from_dict(sae_config_dict("weighted_topk", 8, 16, k=2)).to_dict())
    sae.set_gamma(torch.ones(8))
    x = torch.randn(4, 8)
    x[1, 3] = float("nan")
    return lambda: sae.training_forward_pass(
        TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=7, is_logging_step=False)
    )


def _api_cases():
    from sae_rdp_plugin.audit.stats import audit_proxy, dominated_pairs, rdp_rank_correlation, violation_rate
    from sae_rdp_plugin.evals.rdp_synthetic.eval_config import RDPSyntheticEvalConfig
    from sae_rdp_plugin.rdp.dgp import ExplicitPMF
    from sae_rdp_plugin.rdp.metrics import rate_distortion, sae_feature_rows
    from sae_rdp_plugin.sweep.config import SweepConfig
    from sae_rdp_plugin.sweep.train import train_sweep
    from sae_rdp_plugin.train.config import TrainConfig
    from sae_rdp_plugin.wsae.gamma import gamma_from_variance

    R, D, P = [1, 2, 3, 4], [1, 2, 3, 4], [0.1, 0.1, 0.3, 0.4]
    return [
        ("tie-weight-5", lambda: violation_rate(R, D, P, tie_weight=5), "tie_weight"),
        ("tie-weight-nan", lambda: violation_rate(R, D, P, tie_weight=math.nan), "tie_weight"),
        ("tie-weight-audit", lambda: audit_proxy(R, D, P, tie_weight=-0.1, n_boot=0, n_perm=1), "tie_weight"),
        ("alpha-1000", lambda: gamma_from_variance(torch.tensor([1e-3, 1.0, 100.0]), 1000), "alpha=1000"),
        ("weighted-nan-input", _weighted_sae_with_gamma(), "NaN or Inf in the training activations at step 7"),
        ("eval-n-samples", lambda: RDPSyntheticEvalConfig(n_samples=-5).check(), "n_samples"),
        (
            "pmf-unknown-key",
            lambda: ExplicitPMF.from_json({"concepts": 1, "pmf": {"0": 1.0}, "note": 1}),
            "unknown key",
        ),
        ("sweep-grad-clip", lambda: SweepConfig.from_dict(_sweep_cfg(grad_clip_norm=-1)), "grad_clip_norm"),
        ("train-sparsity", lambda: TrainConfig("weighted_standard", 8, 16, sparsity_coefficient=-5), "sparsity"),
        ("train-k", lambda: TrainConfig("topk", 8, 16, k=2.7), "whole number"),
        ("rho-constant-proxy", lambda: rdp_rank_correlation(R, D, [0, 0, 0, 0]), "the proxy is constant"),
        ("dominated-pairs-lengths", lambda: dominated_pairs([1, 2], [1, 2, 3]), "one length"),
        ("audit-n-perm", lambda: audit_proxy(R, D, P, n_boot=0, n_perm=10**12), "n_perm"),
        ("table-row-out-of-range", lambda: _table().subset([5]), "row index 5 out of range"),  # was IndexError
        ("table-unknown-column", lambda: _table().to_rows(["nope"]), "no metric 'nope'"),  # was KeyError
        ("sweep-device", lambda: train_sweep(SweepConfig.from_dict(SWEEP), "/nonexistent/o", "banana"), "banana"),
        ("feature-rows-not-an-sae", lambda: sae_feature_rows(object()), "no W_dec tensor"),
        ("rate-distortion-batch", lambda: rate_distortion(lambda x: x, torch.ones(2, 2), lambda z: z, 0), "batch"),
    ]


def _table():
    from sae_rdp_plugin.audit.readers import ResultsTable

    return ResultsTable(["r/a", "r/b"], {"x.m": np.array([1.0, 2.0])}, {"release": ["r", "r"]})


API_CASES = [
    "tie-weight-5",
    "tie-weight-nan",
    "tie-weight-audit",
    "alpha-1000",
    "weighted-nan-input",
    "eval-n-samples",
    "pmf-unknown-key",
    "sweep-grad-clip",
    "train-sparsity",
    "train-k",
    "rho-constant-proxy",
    "dominated-pairs-lengths",
    "audit-n-perm",
    "table-row-out-of-range",
    "table-unknown-column",
    "sweep-device",
    "feature-rows-not-an-sae",
    "rate-distortion-batch",
]


@pytest.mark.parametrize("name", API_CASES)
def test_api_bad_input(name):
    cases = {n: (call, words) for n, call, words in _api_cases()}
    assert sorted(cases) == sorted(API_CASES)
    call, words = cases[name]
    with pytest.raises(SaeRdpError) as info:
        call()
    assert words in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_load_results_of_a_partial_sweep(sweeps):
    from sae_rdp_plugin.sweep.train import load_results

    with pytest.raises(SaeRdpError, match=r"2 of 4 members have no results.*--resume"):
        load_results(sweeps["partial"])
    assert len(load_results(sweeps["partial"], allow_partial=True)) == 2
    assert len(load_results(sweeps["full"])) == 4

"""Every bad input is a clear error, leaves nothing behind and deletes nothing a user owns.

Table-driven: each CLI case runs ``sae_rdp_plugin.cli.main`` in-process (in a fresh working folder) and
asserts exit status 2, exactly one ``error:`` line naming the problem, no traceback, and the folder
unchanged (nothing written, nothing deleted). Each API case asserts the documented SaeRdpError.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sae_rdp_plugin.cli import main
from sae_rdp_plugin.errors import SaeRdpError

# a sweep of 2 groups (topk, standard) x 2 seeds = 4 members; ``partial`` trains only the topk group
SWEEP = {
    "dgps": [{"name": "a", "m": 4, "d": 8, "rho": 0.5, "q": 0.2}],
    "architectures": ["topk", "standard"],
    "widths": [4],
    "ks": [1],
    "seeds": [0, 1],
    "steps": 5,
    "batch_size": 16,
    "eval_samples": 64,
    "checkpoint_every": 5,
}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Path]:
    from sae_rdp_plugin.sweep.config import SweepConfig
    from sae_rdp_plugin.sweep.train import train_sweep

    root = tmp_path_factory.mktemp("sweeps")
    cfg = SweepConfig.from_dict(SWEEP)
    train_sweep(cfg, root / "full", progress=False)
    train_sweep(cfg, root / "partial", progress=False, groups=["topk_w4_d8_c0"])  # as if killed half-way
    return {"full": root / "full", "partial": root / "partial"}


def _sweep_cfg(**over) -> dict:
    return {**SWEEP, **over}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


# (id, files to create first {name: text or JSON-able}, argv with {sweep_full} / {sweep_partial}, words of the error)
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
]


@pytest.mark.parametrize("files,argv,words", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(files, argv, words, sweeps, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    for name, content in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(content if isinstance(content, str) else json.dumps(content))
    before, sweep_before = _files(work), {k: _files(p) for k, p in sweeps.items()}
    monkeypatch.chdir(work)
    rc = main(argv.format(sweep_full=sweeps["full"], sweep_partial=sweeps["partial"]).split())
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, err
    assert len(errors) == 1 and words in errors[0], err
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
    from sae_rdp_plugin.audit.stats import audit_proxy, violation_rate
    from sae_rdp_plugin.evals.rdp_synthetic.eval_config import RDPSyntheticEvalConfig
    from sae_rdp_plugin.rdp.dgp import ExplicitPMF
    from sae_rdp_plugin.sweep.config import SweepConfig
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
    ]


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

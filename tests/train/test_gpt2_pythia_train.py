"""Training on GPT-2 / Pythia architectures with random weights, offline: ``sae-rdp train --model <name>
--random-init`` end to end (published width, first block), the WSAE paper's Pythia-160M preset with one
command at a small width (weighted SAEs next to stock TopK), and the rdp_synthetic / rdp_audit evals on the
SAEs trained there."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from sae_rdp_plugin.cli import main as sae_rdp

T = 16


def no_hub(monkeypatch) -> None:
    import transformers
    from transformer_lens import HookedTransformer

    def refuse(*a, **k):
        raise AssertionError(f"hub touched: {a[:1]}")

    for cls in (transformers.AutoConfig, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", refuse)
    monkeypatch.setattr(HookedTransformer, "from_pretrained", refuse)


def token_dataset(path, bos: int, vocab: int = 50257, rows: int = 40, seed: int = 0):
    import datasets

    r = np.random.default_rng(seed).integers(1, vocab, size=(rows, T)).astype(np.int64)
    r[:, 0] = bos
    datasets.Dataset.from_dict({"tokens": r}).save_to_disk(str(path))
    return path


@pytest.mark.parametrize(("name", "width", "bos"), [("gpt2", 768, 50256), ("pythia-70m-deduped", 512, 0)])
def test_sae_rdp_train_model_end_to_end(name, width, bos, tmp_path, monkeypatch, capsys):
    """`sae-rdp train --model NAME --random-init`: the published architecture (first block, full width) built
    with the hub unreachable, a weighted TopK SAE trained on its residual stream and saved loadable by SAELens,
    gamma next to it; the run's summary names the model."""
    from sae_lens import SAE

    no_hub(monkeypatch)
    ds = token_dataset(tmp_path / "ds", bos)
    out = tmp_path / "o"
    args = ["train", "--model", name, "--random-init", "--n-layers", "1", "--hook", "blocks.0.hook_resid_post"]
    args += ["--dataset", str(ds), "--architecture", "weighted_topk", "--d-sae", "64", "--k", "4", "--alpha", "1"]
    args += ["--tokens", "256", "--batch-size", "64", "--buffer-tokens", "128", "--model-dtype", "float32"]
    args += ["--gamma-batches", "2"]
    assert sae_rdp([*args, "--out", str(out)]) == 0
    assert f"saved weighted_topk SAE for {name} blocks.0.hook_resid_post" in capsys.readouterr().out
    sae = SAE.load_from_disk(str(out))
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (width, 64)
    assert (out / "gamma.safetensors").is_file()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["model"] == name and summary["random_init"] is True and summary["heldout_tokens"] > 0


@pytest.fixture(scope="module")
def preset_run(tmp_path_factory):
    """The preset's one command at a small width: Pythia-160M's architecture, 2 blocks, d_model 64."""
    from sae_rdp_plugin.train.presets import main

    tmp = tmp_path_factory.mktemp("preset")
    ds = token_dataset(tmp / "ds", bos=0, vocab=50304)
    out = tmp / "wsae"
    argv = ["wsae-pythia-160m", "--dataset", str(ds), "--out", str(out)]
    argv += ["--random-init", "--n-layers", "2", "--d-model", "64", "--n-heads", "4"]
    argv += ["--tokens", "256", "--batch-size", "64", "--buffer-tokens", "128", "--model-dtype", "float32"]
    argv += ["--gamma-batches", "4"]
    assert main(argv) == 0
    return out


def test_wsae_pythia_preset_trains_the_papers_comparison(preset_run):
    """Per layer (both blocks of the small model): stock TopK and weighted TopK at alpha 0.5 and 1, k = 32,
    32 x d_model latents. Both weighted SAEs of a hook estimate gamma = s^alpha / rms from the same variance
    s, so gamma(0.5)^2 / gamma(1) is the same for every dimension."""
    from sae_lens import SAE
    from safetensors.torch import load_file

    summary = json.loads((preset_run / "summary.json").read_text())
    assert summary["preset"] == "wsae-pythia-160m" and summary["model"] == "pythia-160m"
    got = {(s["hook"], s["name"]) for s in summary["saes"]}
    names = {"topk-d2048-k32", "weighted_topk-d2048-k32-a0.5", "weighted_topk-d2048-k32-a1"}
    assert got == {(f"blocks.{layer}.hook_resid_post", n) for layer in (0, 1) for n in names}
    for layer in (0, 1):
        hook = preset_run / f"blocks.{layer}.hook_resid_post"
        for n in names:
            sae = SAE.load_from_disk(str(hook / n))
            assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (64, 2048, 32)
        assert not (hook / "topk-d2048-k32" / "gamma.safetensors").exists()
        half = load_file(str(hook / "weighted_topk-d2048-k32-a0.5" / "gamma.safetensors"))
        one = load_file(str(hook / "weighted_topk-d2048-k32-a1" / "gamma.safetensors"))
        torch.testing.assert_close(half["variance"], one["variance"], rtol=0, atol=0)  # one stream
        g_half, g_one = half["gamma"], one["gamma"]
        ratio = g_half.double() ** 2 / g_one.double()
        assert float(ratio.std() / ratio.mean()) < 1e-4
        assert float(g_one.std() / g_one.mean()) > 0.05  # the variances differ: a test that could fail


def test_preset_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    from sae_rdp_plugin.train.presets import main

    ds = token_dataset(tmp_path / "ds", bos=0, rows=4)
    capsys.readouterr()
    base = ["wsae-pythia-160m", "--dataset", str(ds), "--out", str(tmp_path / "o")]
    cases = [
        (["--d-model", "64"], "--d-model / --n-heads resize a random GPT-2 / Pythia: add --random-init"),
        (["--random-init", "--n-layers", "1", "--d-model", "64", "--layers", "3"], r"--layers \[3\]"),
        (["--tokens", "10"], r"tokens \(10\) must be at least one batch"),
    ]
    for extra, match in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
        assert re.search(match, err[0]), err[0]
    assert not (tmp_path / "o").exists()


def test_rdp_evals_on_saes_trained_there(preset_run, tmp_path):
    """rdp_synthetic measures the three SAEs of layer 1 on a synthetic DGP of their width (64), and rdp_audit
    audits the resulting sweep (P_dec as the proxy); the audit reads back every SAE's rate and distortion."""
    from sae_lens import SAE

    from sae_rdp_plugin.evals.rdp_audit.eval_config import RdpAuditEvalConfig
    from sae_rdp_plugin.evals.rdp_audit.main import run_eval as audit
    from sae_rdp_plugin.evals.rdp_synthetic.eval_config import RDPSyntheticEvalConfig
    from sae_rdp_plugin.evals.rdp_synthetic.main import run_eval as synthetic

    saes = [
        (f"{d.parent.name}__{d.name}", SAE.load_from_disk(str(d)))
        for d in sorted(preset_run.glob("blocks.1.*/*"))
        if (d / "cfg.json").is_file()
    ]
    assert len(saes) == 3
    dgp = {"name": "pairs64", "kind": "pairs", "m": 32, "d": 64, "rho": 0.5, "q": 0.05}
    out = synthetic(RDPSyntheticEvalConfig(dgp=dgp, n_samples=1000), saes, "cpu", str(tmp_path / "syn"))
    assert len(out) == 3
    for obj in out.values():
        rd = obj["eval_result_metrics"]["rate_distortion"]
        assert 0 < rd["rate"] <= 32 and rd["distortion"] > 0
    cfg = RdpAuditEvalConfig(
        results_paths=[str(tmp_path / "syn")],
        rate_field="rdp_synthetic.rate_distortion.rate",
        distortion_field="rdp_synthetic.rate_distortion.distortion",
        proxies=["rdp_synthetic.polysemanticity.P_dec:+"],
        group_by=[],
        n_bootstrap=100,
        n_permutations=100,
        make_plots=False,
    )
    res = audit(cfg, None, "cpu", str(tmp_path / "audit"))
    (sweep,) = res.values()
    assert sweep["eval_result_metrics"]["sweep"]["n_saes"] == 3
    rates = sorted(o["eval_result_metrics"]["rate_distortion"]["rate"] for o in out.values())
    m = sweep["eval_result_metrics"]["sweep"]
    assert (m["rate_min"], m["rate_max"]) == pytest.approx((rates[0], rates[-1]))


def test_pipeline_saes_record_their_model_and_hook(preset_run):
    cfg = json.loads((preset_run / "blocks.1.hook_resid_post" / "topk-d2048-k32" / "cfg.json").read_text())
    md = cfg.get("metadata") or {}
    assert (md.get("model_name"), md.get("hook_name")) == ("pythia-160m", "blocks.1.hook_resid_post")


def test_preset_configs_are_the_papers_setting():
    """The full-size preset: 12 layers x 3 SAEs of 24,576 latents at k = 32 on Pythia-160M (d_model 768)."""
    from sae_rdp_plugin.lm.models import published_arch
    from sae_rdp_plugin.train.presets import WSAE_PYTHIA_160M as P

    d = published_arch(P.model)[0].d_model
    cfgs = P.configs(d)
    assert [(c.architecture, c.alpha, c.k, c.d_sae) for c in cfgs] == [
        ("topk", None, 32, 24576),
        ("weighted_topk", 0.5, 32, 24576),
        ("weighted_topk", 1.0, 32, 24576),
    ]
    assert P.hooks() == [f"blocks.{i}.hook_resid_post" for i in range(12)]
    assert torch.tensor([c.tokens for c in cfgs]).unique().numel() == 1

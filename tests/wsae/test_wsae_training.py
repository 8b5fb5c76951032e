"""End-to-end training of weighted SAEs: synthetic trainer path, checkpoint resume, the language-model
runner path with a tiny random HookedTransformer, SAELens's own CLI parser, and the `sae-rdp train` CLI."""

from __future__ import annotations

import json

import pytest
import torch

import sae_rdp_plugin  # noqa: F401
from sae_rdp_plugin.cli import main as cli_main
from sae_rdp_plugin.train.config import TrainConfig
from sae_rdp_plugin.train.saelens import runner_config, train_language_model, train_synthetic
from sae_rdp_plugin.wsae.gamma import load_gamma_file


def test_train_synthetic_saves_stock_loadable_sae_and_gamma(tmp_path):
    from sae_lens import SAE

    res = train_synthetic(
        "weighted_topk", 16, 32, tmp_path / "run", k=3, alpha=1.0, tokens=2048, batch_size=256, lr=1e-3
    )
    assert res.steps == 8
    sae = SAE.load_from_disk(tmp_path / "run")
    assert type(sae).__name__ == "TopKSAE"
    gf = load_gamma_file(tmp_path / "run")
    # gamma is the normalised power of the recorded float64 variance
    ref = gf.stats.variance**1.0
    ref = ref / ref.pow(2).mean().sqrt()
    assert torch.allclose(gf.gamma, ref, rtol=1e-12)
    assert gf.gamma.pow(2).mean().item() == pytest.approx(1.0, rel=1e-12)
    assert gf.stats.n_samples == 20 * 256  # gamma_estimation_batches default 20 in train_synthetic
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert 0 <= summary["mcc"] <= 1


def test_checkpoint_resume_keeps_gamma_through_trainer(tmp_path):
    train_synthetic(
        "weighted_topk", 16, 32, tmp_path / "a", k=3, alpha=1.0, tokens=2048, batch_size=256, n_checkpoints=1, seed=1
    )
    ckpts = sorted((tmp_path / "a" / "checkpoints").iterdir())
    assert ckpts and (ckpts[0] / "gamma.safetensors").exists()
    g_ckpt = load_gamma_file(ckpts[0]).gamma
    # resume with a different seed: a fresh estimate would differ, the resumed run must keep the checkpoint's gamma
    train_synthetic(
        "weighted_topk",
        16,
        32,
        tmp_path / "b",
        k=3,
        alpha=1.0,
        tokens=2048,
        batch_size=256,
        seed=7,
        resume_from=ckpts[0],
    )
    assert torch.equal(load_gamma_file(tmp_path / "b").gamma, g_ckpt)
    fresh = train_synthetic("weighted_topk", 16, 32, tmp_path / "c", k=3, alpha=1.0, tokens=512, batch_size=256, seed=7)
    assert not torch.equal(load_gamma_file(fresh.out).gamma, g_ckpt)


def test_language_model_runner_path_with_tiny_model(tmp_path):
    from datasets import Dataset
    from sae_lens import SAE
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    mcfg = HookedTransformerConfig(
        n_layers=1, d_model=16, d_head=8, n_heads=2, d_mlp=32, d_vocab=50, n_ctx=32, act_fn="gelu", seed=0
    )
    model = HookedTransformer(mcfg)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 50, (64, 32), generator=g)
    ds = Dataset.from_dict({"tokens": tokens.tolist()})
    cfg = TrainConfig("weighted_topk", 16, 32, k=4, alpha=1.0, tokens=1024, batch_size=256, gamma_estimation_batches=8)
    rc = runner_config(
        cfg,
        model_name="tiny",
        hook_name="blocks.0.hook_resid_post",
        out=tmp_path / "lm",
        context_size=32,
        n_batches_in_buffer=8,
        store_batch_size_prompts=4,
    )
    assert rc.training_tokens == 1024 and rc.train_batch_size_tokens == 256 and rc.sae.k == 4
    rc.sequence_separator_token = None
    rc.prepend_bos = False
    train_language_model(rc, override_model=model, override_dataset=ds, gamma_progress=False)
    out = tmp_path / "lm"
    assert json.loads((out / "cfg.json").read_text())["architecture"] == "topk"
    assert type(SAE.load_from_disk(out)).__name__ == "TopKSAE"
    gf = load_gamma_file(out)
    assert gf.stats.n_samples == 8 * 256
    # the streamed estimate is close to the variance of the hook over the whole (small) dataset
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")
    acts = cache["blocks.0.hook_resid_post"].reshape(-1, 16).double()
    ref = acts.var(0, unbiased=False)
    ref = ref / ref.pow(2).mean().sqrt()
    assert torch.allclose(gf.gamma, ref, rtol=0.25)


def test_saelens_own_cli_parser_knows_weighted_architectures():
    from sae_lens.llm_sae_training_runner import _parse_cfg_args

    cfg = _parse_cfg_args(
        [
            "--architecture",
            "weighted_jumprelu",
            "--alpha",
            "0.5",
            "--d_in",
            "64",
            "--d_sae",
            "256",
            "--hook_name",
            "blocks.0.hook_resid_post",
        ]
    )
    assert type(cfg.sae).__name__ == "WeightedJumpReLUTrainingSAEConfig"
    assert cfg.sae.alpha == 0.5


def test_cli_errors(capsys, tmp_path):
    rc = cli_main(
        [
            "train",
            "--synthetic",
            "--architecture",
            "nope",
            "--d-in",
            "4",
            "--d-sae",
            "8",
            "--tokens",
            "10",
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert (
        rc == 2 and err.startswith("error: unknown architecture 'nope'") and "weighted_topk" in err and "\n" not in err
    )
    rc = cli_main(
        [
            "train",
            "--synthetic",
            "--architecture",
            "weighted_topk",
            "--alpha",
            "-1",
            "--d-in",
            "4",
            "--d-sae",
            "8",
            "--k",
            "2",
            "--tokens",
            "1024",
            "--batch-size",
            "256",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert rc == 2 and "alpha" in capsys.readouterr().err
    assert not (tmp_path / "x" / "cfg.json").exists()
    rc = cli_main(
        [
            "train",
            "--model",
            "no-such-model-xyz",
            "--hook",
            "blocks.0.hook_resid_post",
            "--dataset",
            str(tmp_path),
            "--d-sae",
            "8",
            "--tokens",
            "10",
            "--out",
            str(tmp_path / "y"),
        ]
    )
    assert rc == 2 and capsys.readouterr().err.startswith("error:")

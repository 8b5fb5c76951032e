"""TrainConfig: validation, the SAELens configs it builds, and that the CLI commands and the Python API
describe the same run with it."""

from __future__ import annotations

import dataclasses

import pytest

from sae_rdp_plugin.cli import build_parser
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.train.config import SyntheticStreamConfig, TrainConfig, sae_config_dict


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"architecture": "gated"}, "unknown architecture 'gated'; valid: weighted_standard"),
        ({"k": 0}, "k must be in 1..d_sae=16"),
        ({"k": 17}, "k must be in 1..d_sae=16"),
        ({"k": -3}, "k must be in"),
        ({"k": float("nan")}, "k must be finite"),
        ({"k": 2.5}, "whole number"),
        ({"d_sae": 0}, "d_sae must be an integer >= 1"),
        ({"d_in": 2.0}, "d_in must be an integer"),
        ({"lr": -1e-3}, "lr must be > 0"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"tokens": -5}, "tokens must be an integer >= 1"),
        ({"tokens": 100, "batch_size": 128}, r"tokens \(100\) must be at least one batch \(128\)"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"alpha": -1.0}, "alpha"),
        ({"architecture": "topk", "alpha": 0.5}, "needs a weighted architecture \\(weighted_topk\\)"),
        ({"sparsity_coefficient": 1.0}, "weighted_topk has no sparsity coefficient"),
        ({"architecture": "standard", "sparsity_coefficient": -1.0}, "sparsity_coefficient must be >= 0"),
        ({"n_checkpoints": -1}, "n_checkpoints must be an integer >= 0"),
        ({"gamma_estimation_batches": 0}, "gamma_estimation_batches"),
        ({"variance_cap_quantile": 0.0}, r"variance_cap_quantile must be a number in \(0, 1\]"),
        ({"variance_cap_quantile": 1.01}, "variance_cap_quantile must be"),
        ({"variance_cap_quantile": float("nan")}, "variance_cap_quantile must be"),
        ({"architecture": "topk", "variance_cap_quantile": 0.99}, "variance_cap_quantile needs a weighted"),
        ({"dead_feature_window": 0}, "dead_feature_window"),
        ({"sae_kwargs": [1]}, "sae_kwargs must be a dict"),
    ],
)
def test_bad_values_raise_one_line_errors(fields, match):
    base = {"architecture": "weighted_topk", "d_in": 8, "d_sae": 16, "k": 4}
    with pytest.raises(SaeRdpError, match=match) as e:
        TrainConfig(**{**base, **fields})
    assert "\n" not in str(e.value)


def test_replace_validates_too():
    cfg = TrainConfig("topk", 8, 16, k=4)
    with pytest.raises(SaeRdpError, match="k must be in"):
        dataclasses.replace(cfg, d_sae=2)
    with pytest.raises(SaeRdpError, match="n_chunks"):
        SyntheticStreamConfig(n_chunks=0)


def test_k_is_checked_only_where_it_is_used():
    # the default k (32) exceeds d_sae, but standard / jumprelu have no k
    for arch in ("standard", "weighted_jumprelu"):
        assert "k" not in TrainConfig(arch, 8, 16).sae_config_dict()
    with pytest.raises(SaeRdpError, match="k must be in 1..d_sae=16, got 32"):
        TrainConfig("topk", 8, 16)


def test_sae_config_dict_per_architecture():
    assert TrainConfig("topk", 8, 64).sae_config_dict() == {
        "architecture": "topk",
        "d_in": 8,
        "d_sae": 64,
        "device": "cpu",
        "dtype": "float32",
        "normalize_activations": "none",
        "k": 32,
    }
    d = TrainConfig("weighted_batchtopk", 8, 64, k=3, gamma_path="g.safetensors").sae_config_dict()
    assert d["k"] == 3.0 and isinstance(d["k"], float) and isinstance(TrainConfig("topk", 8, 64).k, int)
    assert d["alpha"] == 1.0 and d["gamma_path"] == "g.safetensors" and d["gamma_estimation_batches"] == 20
    assert TrainConfig("standard", 8, 64, sparsity_coefficient=2).sae_config_dict()["l1_coefficient"] == 2.0
    assert TrainConfig("weighted_jumprelu", 8, 64, sparsity_coefficient=3).sae_config_dict()["l0_coefficient"] == 3.0
    assert TrainConfig("topk", 8, 64, alpha=0.0).sae_config_dict().get("alpha") is None
    assert "variance_cap_quantile" not in d  # no cap: the dict SAELens gets is unchanged
    capped = TrainConfig("weighted_topk", 8, 64, k=3, variance_cap_quantile=0.99).sae_config_dict()
    assert capped == {**TrainConfig("weighted_topk", 8, 64, k=3).sae_config_dict(), "variance_cap_quantile": 0.99}
    over = TrainConfig("topk", 8, 64, sae_kwargs={"k": 5, "normalize_activations": "expected_average_only_in"})
    assert over.sae_config_dict()["k"] == 5 and over.sae_config_dict()["normalize_activations"] != "none"


def test_unknown_sae_fields_are_refused_when_the_sae_is_built():
    from sae_rdp_plugin.train.saelens import build_training_sae

    with pytest.raises(SaeRdpError, match=r"unknown config fields for topk: \['nope'\]"):
        build_training_sae(TrainConfig("topk", 8, 16, k=2, sae_kwargs={"nope": 1}).sae_config_dict())
    sae = build_training_sae(TrainConfig("weighted_topk", 8, 16, k=2, alpha=0.5).sae_config_dict())
    assert sae.cfg.k == 2 and sae.cfg.alpha == 0.5 and sae.cfg.gamma_estimation_batches == 20
    assert sae.cfg.variance_cap_quantile is None
    cfg = TrainConfig("weighted_topk", 8, 16, k=2, alpha=0.5, variance_cap_quantile=0.9)
    assert build_training_sae(cfg.sae_config_dict()).cfg.variance_cap_quantile == 0.9


def test_trainer_config_is_the_run():
    cfg = TrainConfig("topk", 8, 16, k=2, tokens=5000, batch_size=256, lr=1e-3, n_checkpoints=2, autocast=True)
    t = cfg.trainer_config("ck")
    assert (t.total_training_samples, t.train_batch_size_samples, t.lr, t.lr_end) == (5000, 256, 1e-3, 1e-3)
    assert (t.n_checkpoints, t.checkpoint_path, t.autocast, t.logger.log_to_wandb) == (2, "ck", True, False)
    assert (t.dead_feature_window, t.feature_sampling_window) == (1000, 2000)  # SAELens's defaults
    assert cfg.steps == 5000 // 256


def test_keyword_function_is_the_config_method():
    kw = dict(
        k=4,
        alpha=0.5,
        gamma_path="g",
        gamma_estimation_batches=7,
        variance_cap_quantile=0.9,
        device="cpu",
        dtype="float64",
    )
    d = sae_config_dict("weighted_topk", 8, 16, normalize_activations="layer_norm", **kw)
    assert (
        d
        == TrainConfig(
            "weighted_topk", 8, 16, sae_kwargs={"normalize_activations": "layer_norm"}, **kw
        ).sae_config_dict()
    )
    assert sae_config_dict("topk", 8, 64)["k"] == TrainConfig.k == 32


def _train_args(*extra: str):
    base = ["train", "--synthetic", "--d-in", "8", "--d-sae", "64", "--tokens", "4096", "--out", "x"]
    return build_parser().parse_args([*base, *extra])


def test_train_cli_builds_the_python_api_config():
    from sae_rdp_plugin.commands.train import train_config

    # defaults: the CLI's are TrainConfig's (k = 32, SAELens's default)
    assert train_config(_train_args()) == TrainConfig("weighted_topk", 8, 64, tokens=4096)
    args = _train_args(
        *("--architecture", "weighted_batchtopk", "--k", "6", "--alpha", "0.5", "--batch-size", "512"),
        *("--lr", "1e-3", "--seed", "3", "--checkpoints", "2", "--gamma-batches", "5", "--gamma-file", "g"),
        *("--variance-cap-quantile", "0.99"),
    )
    cfg = TrainConfig(
        "weighted_batchtopk",
        8,
        64,
        k=6,
        alpha=0.5,
        tokens=4096,
        batch_size=512,
        lr=1e-3,
        seed=3,
        n_checkpoints=2,
        gamma_estimation_batches=5,
        gamma_path="g",
        variance_cap_quantile=0.99,
    )
    assert train_config(args) == cfg
    assert train_config(args).sae_config_dict() == cfg.sae_config_dict()
    assert train_config(args).trainer_config().__dict__ == cfg.trainer_config().__dict__
    # --model: d_in comes from the model unless given
    lm = build_parser().parse_args(["train", "--model", "m", "--d-sae", "64", "--tokens", "4096", "--out", "x"])
    assert train_config(lm, d_in=8) == TrainConfig("weighted_topk", 8, 64, tokens=4096)


def test_train_cli_and_python_api_train_the_same_config(monkeypatch, tmp_path):
    """`sae-rdp train --synthetic`, train_synthetic(arch, d_in, d_sae, out, **fields) and
    train_synthetic(TrainConfig, out) reach the trainer with equal TrainConfigs (the trainer config
    is replaced by a recorder that stops the run)."""
    import sae_rdp_plugin.train.saelens as S
    from sae_rdp_plugin.cli import main

    seen = []

    def record(self, checkpoint_path=None):
        seen.append(self)
        raise SaeRdpError("recorded")

    monkeypatch.setattr(TrainConfig, "trainer_config", record)
    argv = ["train", "--synthetic", "--architecture", "topk", "--d-in", "8", "--d-sae", "64", "--k", "4"]
    argv += ["--tokens", "2048", "--batch-size", "256", "--lr", "2e-3", "--seed", "5", "--out", str(tmp_path)]
    assert main(argv) == 2
    kw = dict(k=4, tokens=2048, batch_size=256, lr=2e-3, seed=5)
    with pytest.raises(SaeRdpError, match="recorded"):
        S.train_synthetic("topk", 8, 64, tmp_path, **kw)
    with pytest.raises(SaeRdpError, match="recorded"):
        S.train_synthetic(TrainConfig("topk", 8, 64, **kw), tmp_path)
    assert len(seen) == 3 and seen[0] == seen[1] == seen[2] == TrainConfig("topk", 8, 64, **kw)
    with pytest.raises(TypeError):
        S.train_synthetic(TrainConfig("topk", 8, 64, **kw), tmp_path, k=3)  # fields go into the config


def test_distributed_cli_builds_the_same_config():
    from sae_rdp_plugin.commands.distributed import config_from_args

    a = build_parser().parse_args(["distributed", "train", "--out", "x"])
    cfg, stream = config_from_args(a)
    assert cfg == TrainConfig("topk", 64, 256, tokens=200 * 1024)  # --steps 200 of --batch 1024
    assert stream == SyntheticStreamConfig()
    a = build_parser().parse_args(
        ["distributed", "grid", "--out", "x", "--architecture", "weighted_topk", "--d-sae", "32", "--ks", "2,4"]
        + ["--batch", "64", "--steps", "3", "--sae-kwargs", '{"alpha": 0.5}', "--data-seed", "7"]
    )
    cfg, stream = config_from_args(a)
    assert cfg == TrainConfig("weighted_topk", 64, 32, k=2, tokens=192, batch_size=64, sae_kwargs={"alpha": 0.5})
    assert stream == SyntheticStreamConfig(data_seed=7)


@pytest.mark.parametrize("q", ["0", "1.5", "nan"])
def test_train_cli_refuses_a_bad_variance_cap_quantile(q, capsys, tmp_path):
    from sae_rdp_plugin.cli import main

    argv = ["train", "--synthetic", "--d-in", "8", "--d-sae", "64", "--k", "4", "--tokens", "2048"]
    argv += ["--variance-cap-quantile", q, "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: variance_cap_quantile must be a number in (0, 1]") and "\n" not in err
    assert list(tmp_path.iterdir()) == []

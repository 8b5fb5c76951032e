"""SAELens's own config / CLI route names the plugin's models: ``python -m sae_rdp_plugin.train.saelens
--model_name gemma3-270m ...`` and a LanguageModelSAERunnerConfig naming it load them through
:func:`sae_rdp_plugin.train.saelens.runner_model` (SAELens alone answers "not found"). Exercised on a random
Pythia-70M of a small width, with no network."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.train.config import TrainConfig
from sae_rdp_plugin.train.saelens import runner_config, runner_dataset, runner_model, saelens_cli

T = 16
SMALL = {"random_init": True, "n_layers": 1, "d_model": 64, "n_heads": 4}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    import datasets

    p = tmp_path_factory.mktemp("route") / "tokens"
    rows = np.random.default_rng(0).integers(1, 50304, size=(48, T)).astype(np.int64)
    datasets.Dataset.from_dict({"tokens": rows}).save_to_disk(str(p))
    return p


def cli_args(model: str, kwargs: dict, dataset, out) -> list[str]:
    args = ["--model_name", model, "--model_from_pretrained_kwargs", json.dumps(kwargs)]
    args += ["--hook_name", "blocks.0.hook_resid_post", "--d_in", "64", "--d_sae", "128"]
    args += ["--architecture", "weighted_topk", "--k", "4", "--alpha", "1", "--gamma_estimation_batches", "4"]
    args += ["--dataset_path", str(dataset), "--context_size", str(T), "--training_tokens", "512"]
    args += ["--train_batch_size_tokens", "64", "--n_batches_in_buffer", "8", "--store_batch_size_prompts", "4"]
    return args + ["--output_path", str(out), "--device", "cpu", "--log_to_wandb", "False"]


def test_saelens_cli_trains_on_a_named_plugin_model(dataset, tmp_path, monkeypatch):
    """The runner CLI with --model_name pythia-70m and random weights at width 64 (the SAE's d_in 64 only fits
    that model): the SAE is saved with gamma, and its config names the model and hook; rdp_synthetic's output
    on it is read back by the audit with that model name and layer."""
    import transformers
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_rdp_plugin.audit.readers import read_results
    from sae_rdp_plugin.evals.rdp_synthetic.eval_config import RDPSyntheticEvalConfig
    from sae_rdp_plugin.evals.rdp_synthetic.main import run_eval

    def refuse(*a, **k):
        raise AssertionError("hub touched")

    for cls in (transformers.AutoConfig, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", refuse)
    monkeypatch.setattr(HookedTransformer, "from_pretrained", refuse)
    out = tmp_path / "sae"
    saelens_cli(cli_args("pythia-70m", SMALL, dataset, out))
    assert (out / "gamma.safetensors").is_file()
    md = json.loads((out / "cfg.json").read_text())["metadata"]
    assert (md["model_name"], md["hook_name"]) == ("pythia-70m", "blocks.0.hook_resid_post")
    sae = SAE.load_from_disk(str(out))
    dgp = {"name": "p", "kind": "pairs", "m": 32, "d": 64, "rho": 0.5, "q": 0.05}
    run_eval(RDPSyntheticEvalConfig(dgp=dgp, n_samples=500), [("route", sae)], "cpu", str(tmp_path / "ev"))
    t = read_results(tmp_path / "ev", warn=False)
    assert (t.meta["model"], t.meta["layer"]) == (["pythia-70m"], [0])


def test_config_naming_gemma3_reaches_the_offline_loader(tmp_path, monkeypatch):
    """A LanguageModelSAERunnerConfig naming gemma3-270m: runner_model passes its path and first_n_layers to
    lm.models.load_model (a stand-in model here: the GGUF packages are not needed to check the route), and
    train_language_model trains on what it returns."""
    import sae_rdp_plugin.lm.models as models
    from sae_rdp_plugin.train.saelens import train_language_model

    calls = []

    def fake_load(name, **kw):
        calls.append((name, kw))
        return models.random_model_like("pythia-70m", n_layers=1, d_model=64, n_heads=4)

    monkeypatch.setattr(models, "load_model", fake_load)
    tc = TrainConfig("topk", 64, 128, k=4, tokens=256, batch_size=64)
    kw = {"path": "/models/gemma.gguf", "first_n_layers": 3, "center_writing_weights": False}
    cfg = runner_config(
        tc, model_name="gemma3-270m", hook_name="blocks.0.hook_resid_post", out=tmp_path / "o", context_size=T
    )
    cfg.model_from_pretrained_kwargs = kw
    runner_model(cfg)
    assert calls == [("gemma3-270m", {"path": "/models/gemma.gguf", "device": "cpu", "n_layers": 3})]
    import datasets

    rows = np.random.default_rng(1).integers(1, 50304, size=(32, T))
    train_language_model(cfg, override_dataset=datasets.Dataset.from_dict({"tokens": rows}))
    assert len(calls) == 2 and (tmp_path / "o" / "cfg.json").is_file()


def test_cli_naming_an_offline_model_fails_in_our_loader_with_one_line(dataset, tmp_path, capsys):
    """Without its GGUF the error is the offline loader's (the file it looked for), not SAELens's
    'not found', and it is one line with exit status 2; nothing is written."""
    from sae_rdp_plugin.cli import run_entry_point

    argv = cli_args("gemma3-270m", {"path": str(tmp_path / "missing.gguf")}, dataset, tmp_path / "o")
    assert run_entry_point(lambda: saelens_cli(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: GGUF file not found: {tmp_path / 'missing.gguf'}"]
    assert not (tmp_path / "o").exists()


def _cfg(model: str, kwargs: dict | None):
    cfg = runner_config(
        TrainConfig("topk", 64, 128, k=4), model_name=model, hook_name="blocks.0.hook_resid_post", out="o"
    )
    cfg.model_from_pretrained_kwargs = kwargs
    return cfg


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fold_ln": True}, "fold_ln must be false"),
        ({"revision": "step1000"}, r"\['revision'\] not understood"),
        ({"n_layers": 1, "first_n_layers": 1}, "not both"),
        ({"d_model": 64}, "only with random_init"),
        ({"random_init": True, "path": "x"}, "takes no path"),
    ],
)
def test_runner_model_refuses_what_it_cannot_honour(kwargs, match):
    with pytest.raises(SaeRdpError, match=match) as e:
        runner_model(_cfg("pythia-160m-deduped", kwargs))
    assert "\n" not in str(e.value)


def test_other_names_and_datasets_stay_with_saelens(dataset, tmp_path):
    import datasets

    assert runner_model(_cfg("tiny-stories-1M", {"fold_ln": True})) is None  # SAELens's own loader
    assert runner_dataset("NeelNanda/pile-10k") is None and runner_dataset("") is None
    assert runner_dataset(str(dataset))["tokens"][0] == datasets.load_from_disk(str(dataset))["tokens"][0]
    datasets.DatasetDict({"train": datasets.load_from_disk(str(dataset))}).save_to_disk(str(tmp_path / "dd"))
    assert len(runner_dataset(str(tmp_path / "dd"))) == 48


def test_cli_with_wandb_on_and_no_login_fails_before_loading(dataset, tmp_path, capsys, monkeypatch):
    """SAELens's runner CLI logs to wandb unless told not to: with no wandb login that used to end in wandb's
    traceback after the gamma pass; now one line before the model loads, naming the way out."""
    pytest.importorskip("wandb")
    from sae_rdp_plugin.cli import run_entry_point
    from sae_rdp_plugin.train import saelens

    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setattr(saelens, "runner_model", lambda cfg: (_ for _ in ()).throw(AssertionError("model loaded")))
    argv = cli_args("pythia-70m", SMALL, dataset, tmp_path / "o")[:-2]  # without --log_to_wandb False
    assert run_entry_point(lambda: saelens.saelens_cli(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wandb is not logged in" in err[0] and "--log_to_wandb False" in err[0], err
    assert not (tmp_path / "o").exists()

"""`sae-rdp train --model`: the activation-pipeline path end to end on a tiny random model (CPU), its
layouts (one SAE in --out, several in out/<hook>/<name>/ with out/summary.json) and its refusals."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from sae_rdp_plugin.cli import main

HOOKS = "blocks.0.hook_resid_post,blocks.1.hook_resid_pre"
T = 16


def token_rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.integers(3, 512, size=(n, T)).astype(np.int32)
    rows[:, 0] = 2  # BOS of the tiny Gemma3
    return rows


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    import datasets

    p = tmp_path_factory.mktemp("ds") / "tokens_ds"
    datasets.Dataset.from_dict({"tokens": token_rows(40)}).save_to_disk(str(p))
    return p


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    p = tmp_path_factory.mktemp("corpus")
    np.savez_compressed(p / "tokens.npz", train=token_rows(30), heldout=token_rows(4, seed=1))
    (p / "manifest.json").write_text(json.dumps({"format": "sae-rdp corpus v2", "bos_token_id": 2, "context_size": T}))
    return p


def run(out, dataset, *extra: str) -> int:
    base = ["train", "--model", "tiny-gemma3", "--dataset", str(dataset), "--out", str(out)]
    small = ["--tokens", "1024", "--batch-size", "64", "--buffer-tokens", "256", "--model-dtype", "float32"]
    return main([*base, *small, *extra])


def test_several_saes_per_hook_from_one_stream(tmp_path, dataset_dir, capsys):
    from sae_lens import SAE

    out = tmp_path / "sweep"
    rc = run(out, dataset_dir, "--hook", HOOKS, "--architecture", "weighted_topk", "--d-sae", "64,96", "--k", "4")
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hooks"] == HOOKS.split(",") and len(summary["saes"]) == 4
    assert summary["heldout"] == f"last 5% of the rows of {dataset_dir} (2 of 40)"
    names = {(s["hook"], s["name"]) for s in summary["saes"]}
    assert names == {(h, f"weighted_topk-d{d}-k4-a1") for h in HOOKS.split(",") for d in (64, 96)}
    for s in summary["saes"]:
        assert s["tokens"] == 1024 and s["heldout_tokens"] > 0 and 0 < s["heldout_fvu"] < 2
        assert s["stream"]["forwards"] >= 1 and s["epochs"] > 0 and s["forward_s"] > 0
        sae = SAE.load_from_disk(s["out"])
        assert sae.cfg.d_in == 64 and sae.cfg.d_sae in (64, 96)
        assert (tmp_path / "sweep" / s["hook"] / s["name"] / "gamma.safetensors").is_file()
    assert capsys.readouterr().out.count("saved weighted_topk SAE for tiny-gemma3") == 4


def test_one_sae_keeps_todays_layout_and_corpus_heldout(tmp_path, corpus_dir):
    from sae_lens import SAE

    out = tmp_path / "one"
    with pytest.warns(
        UserWarning, match=r"the corpus has 450 usable tokens( \(this rank\))?, fewer than the 1024 requested"
    ):
        rc = run(out, corpus_dir, "--hook", "blocks.1.hook_resid_post", "--architecture", "topk", "--d-sae", "64")
    assert rc == 0
    s = json.loads((out / "train_summary.json").read_text())
    assert s["epochs"] > 1  # the corpus was repeated, and the summary says so
    assert s["heldout"] == f"held-out split of corpus {corpus_dir} (4 rows)"
    assert s["heldout_tokens"] > 0 and not (out / "summary.json").exists()
    assert SAE.load_from_disk(out).cfg.d_sae == 64


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--hook", "blocks.7.hook_resid_post"], "unknown hook 'blocks.7.hook_resid_post'"),
        (["--hook", "blocks.0.hook_resid_post", "--k", "4,x"], "--k takes comma-separated floats, got '4,x'"),
        (["--hook", "blocks.0.hook_resid_post", "--tokens", "10"], r"tokens \(10\) must be at least one batch"),
        (["--hook", "blocks.0.hook_resid_post", "--d-in", "32"], "--d-in 32 does not match the model's width 64"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, dataset_dir, capsys, extra, match):
    out = tmp_path / "o"
    args = ["--architecture", "topk", "--d-sae", "64", *extra]
    assert run(out, dataset_dir, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert re.search(match, err[0])
    assert list(tmp_path.iterdir()) == []


def test_foreign_out_is_refused_and_left_intact(tmp_path, dataset_dir, capsys):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "paper.tex").write_text("draft")
    assert run(out, dataset_dir, "--hook", "blocks.0.hook_resid_post", "--architecture", "topk", "--d-sae", "64") == 2
    assert "is not empty and holds no sae-rdp training run" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["theirs"]
    assert [p.name for p in out.iterdir()] == ["paper.tex"] and (out / "paper.tex").read_text() == "draft"


def test_pipeline_flags_refused_on_the_other_paths(tmp_path, capsys):
    synthetic = ["train", "--synthetic", "--d-in", "8", "--k", "4", "--tokens", "4096", "--out", str(tmp_path / "s")]
    assert main([*synthetic, "--d-sae", "16", "--no-compile"]) == 2
    assert "--no-compile: only with --model and without --saelens-store" in capsys.readouterr().err
    assert main([*synthetic, "--d-sae", "16", "--overlap-forward"]) == 2
    assert "--overlap-forward: only with --model and without --saelens-store" in capsys.readouterr().err
    assert main([*synthetic, "--d-sae", "16,32"]) == 2
    assert "several --d-sae / --k / --alpha values need --model" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_saelens_store_keeps_the_runner_path(tmp_path, monkeypatch, capsys):
    """--saelens-store: SAELens's runner and activation store on a TransformerLens model (a tiny random one
    stands in for the offline loader), the SAE saved in --out as before."""
    import datasets
    from sae_lens import SAE
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    import sae_rdp_plugin.lm.models as models

    tiny = HookedTransformerConfig(
        n_layers=2, d_model=16, d_head=4, n_heads=4, d_mlp=32, n_ctx=32, d_vocab=50, act_fn="gelu", seed=0
    )
    monkeypatch.setattr(models, "load_model", lambda *a, **k: HookedTransformer(tiny))
    import sae_rdp_plugin.commands.train as train_cmd

    monkeypatch.setattr(train_cmd, "_check_model_name", lambda args: None)  # "tiny" is known to the stand-in only
    ds = tmp_path / "ds"
    rows = np.random.default_rng(0).integers(1, 50, size=(64, T))
    datasets.Dataset.from_dict({"tokens": rows}).save_to_disk(str(ds))
    out = tmp_path / "o"
    args = ["train", "--saelens-store", "--model", "tiny", "--hook", "blocks.1.hook_resid_post", "--dataset", str(ds)]
    rest = ["--architecture", "topk", "--d-sae", "32", "--k", "4", "--tokens", "512", "--batch-size", "128"]
    assert main([*args, *rest, "--context-size", str(T), "--out", str(out)]) == 0
    assert "saved topk SAE for tiny blocks.1.hook_resid_post" in capsys.readouterr().out
    assert SAE.load_from_disk(out).cfg.d_sae == 32
    assert main([*args, *rest, "--d-sae", "32,64", "--out", str(tmp_path / "p")]) == 2
    assert "several --d-sae / --k / --alpha values need --model (without --saelens-store)" in capsys.readouterr().err


# ---- `train --synthetic`: the run folder is written whole, and a resume continues the count

SYNTH = ["train", "--synthetic", "--architecture", "topk", "--d-in", "8", "--d-sae", "16", "--k", "2"]
SMALL = ["--tokens", "2048", "--batch-size", "64"]  # 32 steps


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_synthetic_rerun_replaces_the_whole_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    weighted = ["--architecture", "weighted_topk", "--checkpoints", "2"]
    assert main([*SYNTH, *SMALL, *weighted, "--out", str(out)]) == 0
    assert (out / "gamma.safetensors").is_file() and len(list((out / "checkpoints").iterdir())) == 2
    assert main([*SYNTH, *SMALL, "--out", str(out)]) == 0  # unweighted, no checkpoints, same folder
    synthetic = ["synthetic_model", "synthetic_model/synthetic_model.safetensors",
                 "synthetic_model/synthetic_model_config.json"]  # fmt: skip
    expected = ["cfg.json", "sae_weights.safetensors", *synthetic, "train_summary.json"]
    assert _listing(out) == expected  # nothing of the old run
    assert json.loads((out / "train_summary.json").read_text())["architecture"] == "topk"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left


def test_synthetic_resume_counts_steps_and_checkpoints_once(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SYNTH, *SMALL, "--checkpoints", "3", "--out", str(out)]) == 0
    first = sorted(int(p.name) for p in (out / "checkpoints").iterdir())
    assert len(first) == 3
    assert main([*SYNTH, *SMALL, "--checkpoints", "3", "--resume", str(out / "checkpoints" / str(first[0])),
                 "--out", str(out)]) == 0  # fmt: skip
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2048 // 64  # not one short
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir()) == first  # none twice, none missing


def test_interrupted_synthetic_run_keeps_only_its_checkpoints_and_resumes_in_place(tmp_path, monkeypatch, capsys):
    """A run stopped after training (before its publish) leaves out untouched and its checkpoints in the
    hidden staging folder; resuming from one of them continues in that folder and publishes it."""
    import sae_rdp_plugin.train.saelens as S

    out = tmp_path / "run"

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(S, "rate_distortion", stop)
    assert main([*SYNTH, *SMALL, "--checkpoints", "2", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "error: interrupted" in err and "checkpoints of this run are kept" in err
    monkeypatch.undo()
    (staging,) = tmp_path.iterdir()  # no out, one hidden staging folder
    assert staging.name.startswith(".run.") and staging.name.endswith(".partial")
    cks = sorted((staging / "checkpoints").iterdir(), key=lambda p: int(p.name))
    assert len(cks) == 2
    assert main([*SYNTH, *SMALL, "--checkpoints", "2", "--resume", str(cks[0]), "--out", str(out)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(p.name for p in cks)


def test_synthetic_run_saves_its_ground_truth_for_rdp_synthetic(tmp_path, monkeypatch):
    """train --synthetic saves its synthetic model (a SAELens SyntheticModel folder) next to the SAE, so
    rdp_synthetic scores the SAE against the features it was trained on: its MCC equals the one training
    reported (two code paths: the training run's dictionary, and the folder loaded back by SAELens)."""
    from sae_rdp_plugin.cli import main as cli_main
    from sae_rdp_plugin.evals.rdp_synthetic.main import main as eval_main

    monkeypatch.chdir(tmp_path)
    argv = "train --synthetic --architecture topk --d-in 16 --d-sae 32 --k 4 --tokens 4096 --batch-size 256 --out r"
    assert cli_main(argv.split()) == 0
    assert (tmp_path / "r" / "synthetic_model" / "synthetic_model_config.json").is_file()
    trained = json.loads((tmp_path / "r" / "train_summary.json").read_text())
    eval_main(["--sae_paths", "r", "--synthetic_model_path", "r/synthetic_model", "--output_folder", "ev"])
    res = json.loads(next((tmp_path / "ev").glob("*.json")).read_text())
    assert res["eval_result_metrics"]["ground_truth"]["mcc"] == pytest.approx(trained["mcc"], abs=1e-5)
    assert cli_main(argv.split()) == 0  # the run folder, synthetic model included, is its own: rerun replaces it

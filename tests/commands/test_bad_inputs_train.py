"""`sae-rdp train` bad inputs: exit 2, one ``error:`` line naming the flag, nothing written or deleted, and no
model loaded / no training run before the check (no progress line before the error)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sae_rdp_plugin.cli import main

T = "train --synthetic --architecture topk --d-in 8 --d-sae 16 --k 2 --tokens 64 --batch-size 32"
W = T.replace("topk", "weighted_topk")
# the model rows use a random tiny model (no weights); their checks all run before it is built
M = (
    "train --model tiny-llama --random-init --n-layers 1 --hook blocks.0.hook_resid_post --architecture topk "
    "--d-sae 16 --k 2 --tokens 256 --batch-size 32 --no-compile --model-dtype float32 --dataset c"
)
TEXT = "hello world, this is a small text. " * 40


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


def _earlier_run(work: Path) -> None:
    """o/: an earlier `train --synthetic` run plus a user's notes.md."""
    assert main([*T.split(), "--out", str(work / "o")]) == 0
    (work / "o" / "notes.md").write_text("precious")


def _datasets_folder(work: Path) -> None:
    from datasets import Dataset

    Dataset.from_dict({"tokens": [[1 + (i * 7 + j) % 500 for j in range(32)] for i in range(40)]}).save_to_disk(
        str(work / "c")
    )


def _binary_file(work: Path) -> None:
    (work / "b.bin").write_bytes(bytes(range(256)) * 16)


SETUPS = {"earlier-run": _earlier_run, "datasets": _datasets_folder, "binary": _binary_file}
# --saelens-store with a published model name: its hook names are known from its config (no weights, no hub)
S = (
    "train --model gpt2 --saelens-store --architecture topk --d-sae 16 --k 2 --tokens 256 --batch-size 32 "
    "--dataset d.txt"
)

# (id, setup, argv, words of the error)
CASES = [
    # 19: allocations that cannot fit, refused before anything runs
    ("d-in-huge", None, T.replace("--d-in 8", "--d-in 100000000") + " --out o", "--d-in"),
    ("d-sae-huge", None, T.replace("--d-sae 16", "--d-sae 100000000000") + " --out o", "--d-sae"),
    ("n-features-huge", None, T + " --n-features 100000000000 --out o", "--n-features"),
    (
        "batch-huge",
        None,
        T.replace("--tokens 64 --batch-size 32", "--tokens 100000000000 --batch-size 100000000000") + " --out o",
        "--batch-size",
    ),
    # 20: --out '' and a too large alpha, before training
    ("out-empty", None, T + " --out=", "--out is empty"),
    ("out-dot", None, T + " --out .", "current folder"),
    ("alpha-huge", None, W + " --alpha 1e6 --out o", "alpha=1000000.0 is above"),
    # 21: an earlier run holding a user's file is not replaced
    ("out-earlier-run-plus-user-file", "earlier-run", T + " --out o", "did not write"),
    # 23: model-only flags with --synthetic
    ("synthetic-hook", None, T + " --hook blocks.0.hook_resid_post --out o", "--hook: only with --model"),
    ("synthetic-dataset", None, T + " --dataset nope.txt --out o", "--dataset: only with --model"),
    ("synthetic-n-layers", None, T + " --n-layers 2 --out o", "--n-layers: only with --model"),
    ("synthetic-gguf", None, T + " --gguf nope.gguf --out o", "--gguf: only with --model"),
    ("synthetic-context-size", None, T + " --context-size 64 --out o", "--context-size: only with --model"),
    ("synthetic-saelens-store", None, T + " --saelens-store --out o", "--saelens-store: only with --model"),
    ("model-n-features", "datasets", M + " --n-features 5 --out o", "--n-features: only with --synthetic"),
    # 24, 25: options of other architectures
    ("gamma-file-unweighted", None, T + " --gamma-file g.safetensors --out o", "--gamma-file"),
    (
        "k-standard",
        None,
        T.replace("--architecture topk", "--architecture standard") + " --out o",
        "--k: standard has no k",
    ),
    # 26: --context-size
    ("context-size-0", "datasets", M + " --context-size 0 --out o", "--context-size must be at least 2"),
    ("context-size-negative", "datasets", M + " --context-size -4 --out o", "--context-size must be at least 2"),
    # 27: wandb not logged in
    ("wandb-not-logged-in", "datasets", M + " --wandb-project x --out o", "--wandb-project x"),
    # 28: --overlap-forward on the CPU
    ("overlap-forward-cpu", "datasets", M + " --overlap-forward --out o", "--overlap-forward needs CUDA"),
    # 29: checks before the model loads
    ("hook-unknown", "datasets", M.replace("hook_resid_post", "hook_nope") + " --out o", "--hook 'blocks.0.hook_nope'"),
    ("hook-too-deep", "datasets", M.replace("blocks.0.", "blocks.5.") + " --out o", "--hook: unknown hook"),
    (
        "hook-duplicate",
        "datasets",
        M.replace("blocks.0.hook_resid_post", "blocks.0.hook_resid_post,blocks.0.hook_resid_post") + " --out o",
        "--hook lists",
    ),
    ("dataset-missing", None, M.replace("--dataset c", "--dataset nope.txt") + " --out o", "--dataset nope.txt"),
    ("dataset-empty-folder", None, M + " --out o", "--dataset c is an empty folder"),
    ("context-size-huge", "datasets", M + " --context-size 100000000 --out o", "--context-size 100000000"),
    ("d-in-mismatch", "datasets", M + " --d-in 7 --out o", "--d-in 7 does not match"),
    ("tokens-per-forward-0", "datasets", M + " --tokens-per-forward 0 --out o", "--tokens-per-forward (0)"),
    ("buffer-tokens-0", "datasets", M + " --buffer-tokens 0 --out o", "--buffer-tokens (0)"),
    ("buffer-tokens-negative", "datasets", M + " --buffer-tokens -5 --out o", "--buffer-tokens (-5)"),
    ("resume-latest-nothing", "datasets", M + " --resume latest --out o", "--resume latest: no checkpoint"),
    # tr-seed-neg: a negative seed was taken (torch aliases it to 2**64-1)
    ("seed-negative", None, T + " --seed -1 --out o", "seed must be an integer in 0..2**63-1"),
    ("seed-huge", None, T + " --seed 18446744073709551615 --out o", "seed must be an integer in 0..2**63-1"),
    # tr-ckpt-huge: more checkpoints than steps were silently cut to one per step
    ("checkpoints-past-steps", None, T + " --checkpoints 3 --out o", "n_checkpoints (3) is more than the run's 2"),
    ("checkpoints-huge", None, T + " --checkpoints 1000000000 --out o", "n_checkpoints (1000000000)"),
    # tm-dataset-binary: a binary --dataset was decoded into replacement characters (or refused after the load)
    ("dataset-binary", "binary", M.replace("--dataset c", "--dataset b.bin") + " --out o", "not a UTF-8 text file"),
    # --saelens-store: a wrong hook name of a valid block, before the weights load (not after)
    ("saelens-store-hook-bogus", None, S + " --hook blocks.0.hook_resid_bogus --out o", "is not a hook of gpt2"),
    ("saelens-store-hook-too-deep", None, S + " --hook blocks.12.hook_resid_post --out o", "blocks 0..11"),
    # 30: an unknown model name, without trying the hub
    ("model-unknown", "datasets", M.replace("tiny-llama", "nope-xyz-model") + " --out o", "--model 'nope-xyz-model'"),
]


@pytest.mark.parametrize("setup,argv,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_train_bad_input(setup, argv, words, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "d.txt").write_text(TEXT)
    (work / "c").mkdir()
    (work / "g.safetensors").write_bytes(b"x")
    if setup:
        if setup == "datasets":
            shutil.rmtree(work / "c")
        SETUPS[setup](work)
        capsys.readouterr()
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = _files(work)
    monkeypatch.chdir(work)
    rc = main(argv.split())
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], err  # no progress line first
    assert _files(work) == before  # nothing written, nothing deleted
    assert [p.name for p in tmp_path.iterdir() if p.name != "no-netrc"] == ["work"]


def test_replacing_an_earlier_run_of_only_our_files_still_works(tmp_path, capsys):
    out = tmp_path / "o"
    assert main([*W.split(), "--out", str(out)]) == 0
    assert (out / "gamma.safetensors").is_file()
    assert main([*T.split(), "--out", str(out)]) == 0  # ours only: replaced
    names = ["cfg.json", "sae_weights.safetensors", "synthetic_model", "train_summary.json"]
    assert sorted(p.name for p in out.iterdir()) == names
    assert json.loads((out / "train_summary.json").read_text())["architecture"] == "topk"


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root and setpriv")
def test_read_only_out_refused_before_training_and_nothing_left(tmp_path):
    """22: --out an existing folder without write permission (root without CAP_DAC_OVERRIDE, as a user would
    be): refused up front, and no hidden .o.*.old sibling is left."""
    ro = tmp_path / "ro"
    (ro / "o").mkdir(parents=True)
    os.chmod(ro / "o", 0o555)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner,-chown", sys.executable, "-m"]
    r = subprocess.run(
        [*cmd, "sae_rdp_plugin", *T.split(), "--out", "ro/o"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    os.chmod(ro / "o", 0o755)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--out ro/o: no permission" in lines[0], r.stderr
    assert sorted(p.name for p in ro.iterdir()) == ["o"] and not any((ro / "o").iterdir())


def test_failed_swap_leaves_no_old_folder(tmp_path, monkeypatch):
    """A swap that fails after replace_dir made its hidden .old folder (the run folder cannot be moved aside): that
    empty folder is removed."""
    import sae_rdp_plugin.io as io

    out, staging = tmp_path / "o", tmp_path / ".o.x.partial"
    out.mkdir()
    (out / "cfg.json").write_text("{}")
    staging.mkdir()
    real = os.replace

    def refuse_moving_out(src, dst):
        if Path(src) == out:
            raise PermissionError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", refuse_moving_out)
    with pytest.raises(PermissionError):
        io.replace_dir(staging, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".o.x.partial", "o"]


def test_hub_repository_names_pass_the_name_check_unless_offline(monkeypatch):
    """A hub repository name (org/model) is left to the loader on a machine that may reach the hub; with
    HF_HUB_OFFLINE=1 (and not cached) it is refused up front, as a bare unknown name always is."""
    import argparse

    from sae_rdp_plugin.commands import train as cmd
    from sae_rdp_plugin.errors import SaeRdpError

    def ns(model: str) -> argparse.Namespace:
        return argparse.Namespace(model=model, gguf=None, saelens_store=False)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    cmd._check_model_name(ns("some-org/some-model-not-cached"))
    with pytest.raises(SaeRdpError, match="nope-xyz-model"):
        cmd._check_model_name(ns("nope-xyz-model"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SaeRdpError, match="some-org/some-model-not-cached"):
        cmd._check_model_name(ns("some-org/some-model-not-cached"))


def test_short_model_run_reads_no_more_of_the_corpus_than_it_trains_on(tmp_path, monkeypatch):
    """A run far shorter than the default shuffle buffer (2**19 rows) fills the buffer only with what it draws:
    256 training tokens of a 1,240-token corpus read under one pass of it (before, the buffer fill repeated the
    corpus ~400 times without a word)."""
    monkeypatch.chdir(tmp_path)
    _datasets_folder(tmp_path)
    assert main([*M.split(), "--out", "o"]) == 0
    summary = json.loads((tmp_path / "o" / "train_summary.json").read_text())
    assert 0 < summary["epochs"] < 1, summary["epochs"]


def test_a_killed_model_grid_is_its_own_and_hub_offline_false_is_online(tmp_path, monkeypatch):
    """A train --model grid killed before its summary leaves only hook folders (SAEs, .partial staging): still a
    training run (resume, rerun); HF_HUB_OFFLINE=false means online, as huggingface_hub reads it."""
    import argparse

    from sae_rdp_plugin.commands import train as cmd
    from sae_rdp_plugin.train.saelens import _is_train_run

    (tmp_path / "g" / "blocks.0.hook_resid_post" / ".topk-d64-k8.abcdef123456.partial" / "checkpoints" / "100").mkdir(
        parents=True
    )
    assert _is_train_run(tmp_path / "g")
    (tmp_path / "g" / "notes.md").write_text("mine")
    assert not _is_train_run(tmp_path / "g")
    monkeypatch.setenv("HF_HUB_OFFLINE", "false")
    cmd._check_model_name(argparse.Namespace(model="some-org/some-model", gguf=None, saelens_store=False))

"""train_saes / train_on_model data-parallel over 2 gloo ranks (tests/lm_distributed_worker.py under torchrun)
against one process on the concatenated batches: the saved SAEs (weights, gamma, normalisation folded in)
must agree to summation order (float64 SAEs), and only rank 0 writes."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import lm_distributed_worker as W
import pytest
import torch
from safetensors.torch import load_file

from sae_rdp_plugin.train.lm import train_saes

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240
ATOL = 1e-7  # float64 SAEs: summation order only (a flipped TopK selection moves weights by ~1e-4)


@pytest.fixture(scope="module")
def dist_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("lmdist")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(REPO / "tests" / "lm_distributed_worker.py"), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO / "tests")}
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s (hung collective?): {exc}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.parametrize("fast", [False, True])
def test_two_ranks_equal_one_process_on_the_global_batch(dist_out, tmp_path, fast):
    """SAELens's step under DDP, and the fast step with its gradient all-reduce and summed firing counts
    (the dead-latent aux loss runs from step 4 in the TopK SAE), against one process of the same step."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = train_saes(W.global_batches(), W.specs(tmp_path), tokens=W.STEPS * W.B, fast=fast, progress=False)
    assert [r["name"] for r in ref] == ["topk", "wtopk"] and [r["fast_step"] for r in ref] == [fast, fast]
    assert [r["b_dec_init"] for r in ref] == ["zeros", "mean"]
    for name in ("topk", "wtopk"):
        a = load_file(dist_out / ("saes_fast" if fast else "saes") / name / "sae_weights.safetensors")
        b = load_file(tmp_path / name / "sae_weights.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=ATOL, rtol=0), (name, k, (a[k] - b[k]).abs().max())
        # the parameters moved: equality is not trivially the initialisation
        init_moved = (a["W_dec"] - b["W_dec"]).abs().max() < ATOL and a["b_dec"].abs().max() > 0
        assert init_moved
    ga = load_file(dist_out / ("saes_fast" if fast else "saes") / "wtopk" / "gamma.safetensors")
    gb = load_file(tmp_path / "wtopk" / "gamma.safetensors")
    for k in ga:
        assert torch.allclose(ga[k].double(), gb[k].double(), atol=1e-6), k


def test_rank0_alone_writes_and_the_lm_run_is_stock_loadable(dist_out):
    from sae_lens import SAE

    leftovers = [p.name for p in dist_out.rglob("*") if ".partial" in p.name]
    assert leftovers == []
    sae = SAE.load_from_disk(dist_out / "lm", device="cpu")
    assert sae.cfg.d_in == W.D and sae.cfg.d_sae == 32
    import json

    summary = json.loads((dist_out / "lm" / "train_summary.json").read_text())
    assert summary["tokens"] == 8 * W.B and summary["heldout_tokens"] > 0
    assert summary["fast_step"] is True  # the fast step with its gradient all-reduce


def test_train_command_under_torchrun(tmp_path, tiny_corpus):
    """`torchrun --nproc_per_node 2 -m sae_rdp_plugin train --model ...`: data-parallel on 2 gloo ranks,
    one SAE written (by rank 0), one report line."""
    import json

    from sae_lens import SAE

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "sae_rdp_plugin", "train", "--model", "tiny-gemma3", "--dataset", str(tiny_corpus)]
    cmd += ["--out", str(out), "--hook", "blocks.1.hook_resid_post", "--d-sae", "64", "--k", "4"]
    cmd += ["--tokens", "1024", "--batch-size", "64", "--buffer-tokens", "256", "--model-dtype", "float32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("saved ") == 1, proc.stdout
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["tokens"] == 1024 and summary["fast_step"] is True
    assert SAE.load_from_disk(out, device="cpu").cfg.d_sae == 64

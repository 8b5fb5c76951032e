"""Two-process (gloo, CPU) checks of sae_rdp_plugin.train.ddp / grid against single-process SAELens runs.

One torchrun launch (tests/distributed_worker.py) trains tiny SAEs with 2 ranks x batch B; here the
same SAEs are trained by SAELens's stock SAETrainer in one process on the concatenated batch 2B from
the same initialisation, and the parameters are compared. Each launch has a hard timeout, so a hung
collective fails the test instead of blocking CI; torchrun --standalone picks a free port itself.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
import distributed_worker as W  # noqa: E402

TIMEOUT_S = 240
ATOL = 1e-5  # float32: 2-rank all-reduce vs 1-rank sum differ only in summation order


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"},
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s (hung collective?): {exc}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def worker_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    _torchrun([str(REPO / "tests" / "distributed_worker.py"), str(out)], cwd=REPO)
    return out


def _reference(name: str, steps: int) -> dict[str, torch.Tensor]:
    """Stock SAELens SAETrainer, one process, batch 2B = the global batch, same init and data."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from sae_rdp_plugin.train.ddp import build_sae
    from sae_rdp_plugin.train.distributed import DistContext
    from sae_rdp_plugin.train.synthetic import ShardedSyntheticStream, synthetic_model

    cfg, stream = W.case_config(name, steps=steps), W.STREAM
    sae = build_sae(cfg)
    data = ShardedSyntheticStream(
        synthetic_model(cfg.d_in, stream.n_features, stream.data_seed),
        cfg.batch_size,
        DistContext(),
        seed=stream.data_seed,
        n_chunks=stream.n_chunks,
    )
    tcfg = SAETrainerConfig(
        total_training_samples=cfg.batch_size * steps,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr,
        device="cpu",
        dead_feature_window=cfg.dead_feature_window,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=4,
    )
    trainer = SAETrainer(tcfg, sae, data)
    trainer.fit()
    return {k: v.detach() for k, v in trainer.sae.state_dict().items()}, trainer


@pytest.mark.parametrize("name", list(W.CASES))
def test_two_ranks_equal_one_rank_on_concatenated_batch(worker_out, name):
    ref, trainer = _reference(name, W.STEPS)
    got = torch.load(worker_out / name / "training_state.pt")
    assert set(got) == set(ref)
    for k in ref:
        assert torch.allclose(got[k], ref[k], atol=ATOL, rtol=0), (k, (got[k] - ref[k]).abs().max().item())
    # the parameters moved (the comparison is not trivially between two initialisations)
    from sae_rdp_plugin.train.ddp import build_sae

    init = build_sae(W.case_config(name))
    assert (init.W_dec.detach() - ref["W_dec"]).abs().max() > 1e-4
    metrics = json.loads((worker_out / name / "train_metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["n_training_samples"] == W.BATCH * W.STEPS
    assert metrics["dead_latents"] == int(trainer.dead_neurons.sum())
    if name == "topk":  # the aux loss was exercised: some latents were dead during training
        assert trainer.dead_neurons.any()


def test_resume_matches_uninterrupted(worker_out):
    info = json.loads((worker_out / "resume_info.json").read_text())
    assert info["resumed_from"] is not None and info["steps_run"] == 2
    a = torch.load(worker_out / "resume_uninterrupted.pt")
    b = torch.load(worker_out / "resume" / "training_state.pt")
    ref, _ = _reference("topk", 6)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=ATOL, rtol=0), k
        assert torch.allclose(b[k], ref[k], atol=ATOL, rtol=0), k


def test_partitioned_results_gathered_in_order(worker_out):
    res = json.loads((worker_out / "partitioned.json").read_text())
    assert [r["i"] for r in res] == list(range(5))
    assert [r["sq"] for r in res] == [i * i for i in range(5)]
    assert {r["rank"] for r in res} == {0, 1}  # both ranks did work


def test_grid_members_identical_to_single_process(worker_out):
    from sae_rdp_plugin.train.config import SyntheticStreamConfig, TrainConfig
    from sae_rdp_plugin.train.grid import _sweep_member

    res = json.loads((worker_out / "grid" / "sweep_results.json").read_text())
    assert res["world_size"] == 2 and [m["member"] for m in res["members"]] == [0, 1, 2]
    member = _sweep_member(TrainConfig(**W.GRID_BASE), SyntheticStreamConfig(**W.GRID_STREAM), "cpu")
    solo = member(2, W.GRID[2])  # rank 0 ran member 2
    solo1 = member(1, W.GRID[1])  # rank 1 ran member 1
    for ref, got in ((solo, res["members"][2]), (solo1, res["members"][1])):
        for key in ("mse", "explained_variance", "l0", "seed"):
            assert got[key] == pytest.approx(ref[key], abs=1e-6), key


def test_activation_stats_reduced_over_ranks(worker_out):
    st = torch.load(worker_out / "stats.pt")
    union = torch.cat([W.rank_rows(0), W.rank_rows(1)])
    assert st["n"] == union.shape[0]
    assert torch.allclose(st["mean"], union.mean(0), atol=1e-12, rtol=0)
    assert torch.allclose(st["variance"], union.var(0, unbiased=False), atol=1e-12, rtol=0)


def test_cli_sweep_under_torchrun_matches_single_process(worker_out, tmp_path):
    """The worker's last act is `sweep --config ...` (the CLI handler) with 2 ranks."""
    from sae_rdp_plugin.cli import main
    from sae_rdp_plugin.sweep.config import SweepConfig
    from sae_rdp_plugin.sweep.export import export_member
    from sae_rdp_plugin.sweep.train import train_sweep

    two_dir = worker_out / "sweep_two"
    two = json.loads((two_dir / "results.json").read_text())
    one = train_sweep(SweepConfig.from_dict(W.SWEEP_CFG), tmp_path / "one", progress=False)
    assert two["world_size"] == 2 and set(two["group_rank"].values()) == {0, 1}
    assert [m["member_id"] for m in two["members"]] == [m["member_id"] for m in one]
    for a, b in zip(one, two["members"]):
        for key, v in a.items():
            if isinstance(v, float):
                assert b[key] == pytest.approx(v, abs=1e-6), (a["member_id"], key)
    # the merged folder is a normal sweep folder: export a member that rank 1 trained, load it stock
    from sae_lens import SAE

    mid = next(
        m for m, g in json.loads((two_dir / "state.json").read_text())["members"].items() if two["group_rank"][g] == 1
    )
    sae = SAE.load_from_disk(str(export_member(two_dir, mid, tmp_path / "exported")))
    ref = SAE.load_from_disk(str(export_member(tmp_path / "one", mid, tmp_path / "exported_one")))
    assert torch.allclose(sae.W_dec, ref.W_dec, atol=1e-6)
    # rerunning into the same folder without --resume is refused (exit 2, one-line error)
    assert (
        main(
            [
                "distributed",
                "sweep",
                "--config",
                str(worker_out / "sweep.json"),
                "--out",
                str(two_dir),
                "--device",
                "cpu",
            ]
        )
        == 2
    )


@pytest.mark.slow
def test_bench_script_quick_on_cpu(tmp_path):
    """benchmarks/distributed/bench_distributed.py --quick (gloo, 1 and 2 processes): runs, and its own 1-vs-2 check
    holds (several torchrun launches: minutes on a small CPU, hence slow)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "distributed" / "bench_distributed.py"),
            "--quick",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--timeout-s",
            "300",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((tmp_path / "bench_distributed.json").read_text())
    assert [r["nprocs"] for r in rep["train"]] == [1, 2] and all(r["steady_samples_per_s"] > 0 for r in rep["train"])
    assert rep["check"]["train"]["max_abs_diff_overall"] <= ATOL
    assert rep["check"]["sweep"]["max_abs_diff_member_metrics"] <= 1e-6

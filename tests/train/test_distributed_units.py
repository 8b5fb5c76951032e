"""In-process checks of sae_rdp_plugin.train.distributed / ddp / synthetic (no process group needed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.sweep.distributed import assign_groups
from sae_rdp_plugin.train.config import SyntheticStreamConfig, TrainConfig
from sae_rdp_plugin.train.ddp import latest_checkpoint
from sae_rdp_plugin.train.distributed import DistContext, partition, run_partitioned
from sae_rdp_plugin.train.synthetic import ShardedSyntheticStream, synthetic_model

REPO = Path(__file__).resolve().parents[2]


@given(st.integers(0, 200), st.integers(1, 9))
def test_partition_is_a_balanced_disjoint_cover(n, world):
    parts = [partition(n, world, r) for r in range(world)]
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(n))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=0, max_size=7), st.integers(1, 3))
def test_assign_groups_within_graham_bound_of_brute_force(sizes, world):
    import itertools

    owner = assign_groups(sizes, world)
    assert all(0 <= r < world for r in owner) and len(owner) == len(sizes)
    load = [sum(s for s, r in zip(sizes, owner) if r == j) for j in range(world)]
    if sizes:  # LPT makespan <= (4/3 - 1/(3 world)) * optimum; optimum by brute force
        opt = min(
            max(sum(s for s, r in zip(sizes, a) if r == j) for j in range(world))
            for a in itertools.product(range(world), repeat=len(sizes))
        )
        assert max(load) <= (4 / 3 - 1 / (3 * world)) * opt + 1e-9
    assert owner == assign_groups(sizes, world)  # deterministic


def test_partition_rejects_bad_rank():
    with pytest.raises(SaeRdpError):
        partition(4, 2, 2)


def test_stream_shards_union_is_the_single_process_batch():
    model = synthetic_model(d_in=12, n_features=30, seed=4)
    full = ShardedSyntheticStream(model, 64, DistContext(), seed=9).batch(3)
    for world in (2, 4, 8):
        shards = [
            ShardedSyntheticStream(model, 64, DistContext(rank=r, world_size=world), seed=9).batch(3)
            for r in range(world)
        ]
        assert all(s.shape == (64 // world, 12) for s in shards)
        assert torch.equal(torch.cat(shards), full)
    other = ShardedSyntheticStream(model, 64, DistContext(), seed=9).batch(4)
    assert not torch.equal(other, full)


def test_stream_rejects_indivisible_shapes():
    model = synthetic_model(d_in=4, n_features=8, seed=0)
    with pytest.raises(SaeRdpError):
        ShardedSyntheticStream(model, 60, DistContext(), n_chunks=8)
    with pytest.raises(SaeRdpError):
        ShardedSyntheticStream(model, 48, DistContext(rank=0, world_size=3), n_chunks=8)


def test_run_partitioned_single_process_order_and_failure(tmp_path):
    out = tmp_path / "r.json"
    res = run_partitioned([3, 1, 2], lambda i, x: {"i": i, "x": x * 10}, DistContext(), out_path=out)
    assert res == [{"i": 0, "x": 30}, {"i": 1, "x": 10}, {"i": 2, "x": 20}]
    assert json.loads(out.read_text()) == res

    def boom(i, x):
        if i == 1:
            raise RuntimeError("bad member")
        return x

    with pytest.raises(SaeRdpError, match="member 1 failed.*bad member"):
        run_partitioned([0, 1, 2], boom, DistContext(), out_path=tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()


def test_latest_checkpoint_pointer(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "128").mkdir()
    (tmp_path / "latest.json").write_text('{"checkpoint": "128"}')
    assert latest_checkpoint(tmp_path) == tmp_path / "128"
    (tmp_path / "latest.json").write_text("{not json")
    with pytest.raises(SaeRdpError):
        latest_checkpoint(tmp_path)


def test_nvlink_multicast_off_by_default_but_user_value_kept():
    code = (
        "import os, sae_rdp_plugin.train.distributed; "
        "print(os.environ['NCCL_NVLS_ENABLE'], os.environ['TORCH_SYMM_MEM_DISABLE_MULTICAST'])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.stdout.split() == ["0", "1"], out.stderr
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "NCCL_NVLS_ENABLE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.stdout.split() == ["1", "1"], out.stderr


def test_cli_errors_are_one_line(tmp_path):
    from sae_rdp_plugin.cli import main

    assert main(["distributed", "train", "--out", str(tmp_path), "--sae-kwargs", "[1]", "--device", "cpu"]) == 2
    assert (
        main(
            [
                "distributed",
                "train",
                "--out",
                str(tmp_path),
                "--architecture",
                "nope",
                "--device",
                "cpu",
                "--steps",
                "1",
            ]
        )
        == 2
    )
    assert (
        main(["distributed", "train", "--out", str(tmp_path), "--batch", "60", "--device", "cpu", "--steps", "1"]) == 2
    )
    assert not (tmp_path / "train_metrics.json").exists()


def test_cli_refuses_bad_configs_before_training(tmp_path, capsys):
    """Unknown SAELens fields in --sae-kwargs and a grid point with k > d_sae fail as one-line errors."""
    from sae_rdp_plugin.cli import main

    common = ["--device", "cpu", "--steps", "1", "--batch", "32", "--d-in", "8", "--d-sae", "16"]
    rc = main(
        ["distributed", "train", "--out", str(tmp_path / "t"), "--k", "2", "--sae-kwargs", '{"nope": 1}', *common]
    )
    assert rc == 2 and "unknown config fields" in capsys.readouterr().err
    assert main(["distributed", "grid", "--out", str(tmp_path / "g"), "--ks", "2,17", *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: k must be in 1..d_sae=16") and "\n" not in err.strip()
    assert not (tmp_path / "g" / "sweep_results.json").exists()


def test_single_process_train_and_resume(tmp_path):
    """World size 1 (no torchrun): a run with a mid-way checkpoint, resumed, ends where an
    uninterrupted run ends."""
    from sae_rdp_plugin.train.ddp import train_distributed

    cfg = TrainConfig("topk", d_in=8, d_sae=16, k=2, tokens=4 * 32, batch_size=32, n_checkpoints=1)
    stream = SyntheticStreamConfig(n_features=24)
    a = train_distributed(cfg, tmp_path / "a", DistContext(), stream, resume=False)
    assert a["world_size"] == 1 and a["n_training_steps"] == 4 and a["resumed_from"] is None
    b = train_distributed(cfg, tmp_path / "a", DistContext(), stream, resume=True)
    assert b["resumed_from"] is not None and b["steps_run"] < 4
    ref = train_distributed(cfg, tmp_path / "ref", DistContext(), stream, resume=False)
    sa = torch.load(tmp_path / "a" / "training_state.pt")
    sr = torch.load(tmp_path / "ref" / "training_state.pt")
    assert ref["n_training_steps"] == b["n_training_steps"] == 4
    for k in sr:
        assert torch.allclose(sa[k], sr[k], atol=1e-6), k
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(tmp_path / "a" / "sae"))
    assert sae.W_dec.shape == (16, 8)

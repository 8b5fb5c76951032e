"""Run under ``torchrun --nproc_per_node 2`` (gloo, CPU) by tests/test_distributed_gloo.py.

Trains a few tiny SAEs data-parallel with sae_rdp_plugin.train.ddp, exercises resume, and writes
everything under argv[1]; the test process compares against single-process SAELens runs.
"""

import json
import shutil
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from sae_rdp_plugin.cli import main as cli_main  # noqa: E402
from sae_rdp_plugin.io import atomic_write_json  # noqa: E402
from sae_rdp_plugin.train.config import SyntheticStreamConfig, TrainConfig  # noqa: E402
from sae_rdp_plugin.train.ddp import reduce_activation_stats, train_distributed  # noqa: E402
from sae_rdp_plugin.train.distributed import barrier, destroy_distributed, init_distributed, run_partitioned  # noqa: E402
from sae_rdp_plugin.train.grid import sweep_distributed  # noqa: E402
from sae_rdp_plugin.wsae.gamma import estimate_activation_stats  # noqa: E402

CASES = {
    # dead_feature_window=1: latents that did not fire in the last step are "dead", so TopK's aux loss
    # (which depends on the all-reduced dead mask) is active from step 2 on.
    "topk": dict(architecture="topk", k=4, dead_feature_window=1),
    "batchtopk": dict(architecture="batchtopk", k=4, dead_feature_window=1),
    "jumprelu": dict(architecture="jumprelu"),
    "standard": dict(architecture="standard", normalize_activations="expected_average_only_in"),
    # WSAE (plugin architecture) with no gamma given: estimated from the first (global) training batch
    "weighted_topk": dict(architecture="weighted_topk", k=4, dead_feature_window=1, alpha=1.0),
}
GRID = [{"k": 2.0}, {"k": 4.0}, {"k": 2.0}]
GRID_BASE = dict(architecture="topk", d_in=8, d_sae=16, k=2, tokens=3 * 32, batch_size=32, seed=0)
GRID_STREAM = dict(n_features=24, data_seed=2)


def rank_rows(rank: int) -> torch.Tensor:
    """Unequal, rank-specific activations for the stats reduction check."""
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(40 + 25 * rank, 6, generator=g, dtype=torch.float64) * (1 + rank) + rank


SWEEP_CFG = {
    "dgps": [{"name": "p", "kind": "pairs", "m": 4, "d": 8, "rho": 0.5, "q": 0.2}],
    "architectures": ["topk", "standard", "batchtopk"],
    "widths": [6],
    "ks": [2],
    "seeds": [0, 1],
    "steps": 12,
    "batch_size": 64,
    "eval_samples": 400,
    "checkpoint_every": 5,
}

BATCH, STEPS = 64, 4  # global batch (rows, both ranks), optimizer steps
BASE = dict(d_in=16, d_sae=32, batch_size=BATCH, lr=1e-3, seed=3)
STREAM = SyntheticStreamConfig(n_features=48, data_seed=5)


def case_config(name: str, steps: int = STEPS, **extra) -> TrainConfig:
    """The TrainConfig of CASES[name] run for ``steps`` steps."""
    return TrainConfig(**BASE, tokens=BATCH * steps, **CASES[name], **extra)


def main() -> None:
    out = Path(sys.argv[1])
    ctx = init_distributed("cpu", "gloo", timeout_s=60)
    try:
        for name in CASES:
            train_distributed(case_config(name), out / name, ctx, STREAM)
        # resume: a 6-step run with a checkpoint half-way, its final output removed, then rerun
        rcfg = case_config("topk", steps=6, n_checkpoints=1)
        train_distributed(rcfg, out / "resume", ctx, STREAM)
        if ctx.is_main:
            shutil.copy(out / "resume" / "training_state.pt", out / "resume_uninterrupted.pt")
        res = train_distributed(rcfg, out / "resume", ctx, STREAM, resume=True)
        if ctx.is_main:
            atomic_write_json(
                out / "resume_info.json", {"resumed_from": res["resumed_from"], "steps_run": res["steps_run"]}
            )
        # partitioned map: which rank ran which item
        got = run_partitioned(
            list(range(5)), lambda i, x: {"i": i, "sq": x * x, "rank": ctx.rank}, ctx, out_path=out / "partitioned.json"
        )
        assert (got is None) == (ctx.rank != 0)
        # SAELens-trainer grid, members over ranks
        sweep_distributed(TrainConfig(**GRID_BASE), GRID, out / "grid", ctx, SyntheticStreamConfig(**GRID_STREAM))
        # float64 activation statistics (WSAE gamma) reduced over ranks with unequal row counts
        st = reduce_activation_stats(estimate_activation_stats([rank_rows(ctx.rank)], 6, 1), ctx)
        if ctx.is_main:
            torch.save({"mean": st.mean, "variance": st.variance, "n": st.n_samples}, out / "stats.pt")
            (out / "sweep.json").write_text(json.dumps(SWEEP_CFG))
        barrier(ctx)
    except BaseException:
        destroy_distributed()
        raise
    # last: the `sweep` CLI under torchrun (its handler joins the existing group and leaves it at the end)
    rc = cli_main(
        [
            "distributed",
            "sweep",
            "--config",
            str(out / "sweep.json"),
            "--out",
            str(out / "sweep_two"),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    sys.exit(rc)


if __name__ == "__main__":
    main()

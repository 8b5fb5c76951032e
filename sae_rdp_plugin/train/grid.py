"""A grid of SAELens-trainer SAEs, its members spread over ``torch.distributed`` ranks.

Member ``i`` of the grid is ``dataclasses.replace(base, seed=base.seed + i, **grid[i])`` (a
:class:`~sae_rdp_plugin.train.config.TrainConfig`), trained by one process on the full batch of the
synthetic stream and scored on a held-out batch. Members run round-robin over the ranks
(:func:`~sae_rdp_plugin.train.distributed.run_partitioned`): a member seeds itself from its index, not
from the rank, so its result does not depend on the world size.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sae_rdp_plugin.io import atomic_write_json
from sae_rdp_plugin.rdp.metrics import rate_distortion
from sae_rdp_plugin.train.config import SyntheticStreamConfig, TrainConfig
from sae_rdp_plugin.train.ddp import DistributedSAETrainer, build_sae
from sae_rdp_plugin.train.distributed import DistContext, run_partitioned
from sae_rdp_plugin.train.synthetic import ShardedSyntheticStream, synthetic_model

#: the held-out batch is global batch 0 of the stream seeded data_seed + HELD_OUT_SEED_OFFSET
HELD_OUT_SEED_OFFSET = 10_000


def _sweep_member(
    base: TrainConfig, stream: SyntheticStreamConfig, device: str
) -> Callable[[int, dict[str, Any]], dict[str, Any]]:
    """The per-member job of :func:`sweep_distributed`: one process trains one SAE on the full batch
    (world size 1 inside the member), seeded by ``base.seed + i``, and reports on a held-out synthetic
    batch of ``batch_size`` rows the distortion ``mse = E||x - x_hat||^2`` (summed over dimensions),
    the explained variance and the rate ``l0 = E||z||_0`` (:func:`sae_rdp_plugin.rdp.metrics.rate_distortion`)."""

    def run(i: int, overrides: dict[str, Any]) -> dict[str, Any]:
        mcfg = dataclasses.replace(base, seed=base.seed + i, device=device, **overrides)
        solo = DistContext(0, 1, 0, device, None)
        data_model = synthetic_model(mcfg.d_in, stream.n_features, stream.data_seed, device=device)
        trainer = DistributedSAETrainer(
            mcfg.trainer_config(),
            build_sae(mcfg),
            ShardedSyntheticStream(data_model, mcfg.batch_size, solo, stream.data_seed, stream.n_chunks),
            solo,
        )
        t0 = time.perf_counter()
        trainer.fit()
        wall = time.perf_counter() - t0
        held = ShardedSyntheticStream(
            data_model, mcfg.batch_size, solo, stream.data_seed + HELD_OUT_SEED_OFFSET, stream.n_chunks
        ).batch(0)
        trainer.sae.eval()
        rd = rate_distortion(trainer.sae, held)
        return {
            "member": i,
            "seed": mcfg.seed,
            "overrides": overrides,
            "mse": rd.distortion,
            "explained_variance": rd.explained_variance,
            "l0": rd.rate,
            "wall_s": wall,
        }

    return run


def sweep_distributed(
    base: TrainConfig,
    grid: list[dict[str, Any]],
    out_dir: str | os.PathLike,
    ctx: DistContext,
    stream: SyntheticStreamConfig | None = None,
) -> list[dict[str, Any]] | None:
    """Train one SAE per grid point (``dataclasses.replace(base, **grid[i])``, seed ``base.seed+i``) on the
    synthetic stream ``stream`` (default :class:`SyntheticStreamConfig`), members round-robin over
    ranks; rank 0 writes ``out_dir/sweep_results.json`` atomically and returns the member results in
    grid order."""
    stream = stream or SyntheticStreamConfig()
    for overrides in [{}, *grid]:
        dataclasses.replace(base, **overrides).require_zero_b_dec("sweep_distributed (sae-rdp distributed grid)")
    t0 = time.perf_counter()
    results = run_partitioned(grid, _sweep_member(base, stream, ctx.device), ctx)
    wall = time.perf_counter() - t0
    if ctx.is_main:
        assert results is not None
        atomic_write_json(
            Path(out_dir) / "sweep_results.json",
            {
                "world_size": ctx.world_size,
                "device": ctx.device,
                "wall_s": wall,
                "members_per_s": len(grid) / wall if wall > 0 else None,
                "base": {**dataclasses.asdict(base), **dataclasses.asdict(stream)},
                "members": results,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            },
        )
    return results

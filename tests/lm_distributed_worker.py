"""torchrun worker (2 gloo ranks, CPU) for tests/train/test_lm_distributed.py: train_saes (SAELens's step and
the fast step) and train_on_model data-parallel. Rank r gets rows [r*B/2, (r+1)*B/2) of every global batch
of ``global_batches``; the test trains the same specs in one process on the global batches and compares the
saved SAEs.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/lm_distributed_worker.py OUT
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

from sae_rdp_plugin.train.config import TrainConfig
from sae_rdp_plugin.train.lm import SAESpec, train_on_model, train_saes

D, B, STEPS = 16, 32, 10
HOOK = "h.a"


def global_batches(n: int = STEPS + 8) -> list[dict[str, torch.Tensor]]:
    """Sparse non-negative codes times a fixed dictionary, per-dimension scales (gamma is not flat)."""
    g = torch.Generator().manual_seed(0)
    dic = torch.randn(4 * D, D, generator=torch.Generator().manual_seed(1))
    out = []
    for _ in range(n):
        codes = torch.rand(B, 4 * D, generator=g) * (torch.rand(B, 4 * D, generator=g) < 0.1)
        out.append({HOOK: codes @ dic * torch.linspace(0.3, 3.0, D)})
    return out


def specs(out: Path) -> list[SAESpec]:
    # float64 SAEs: a near-tie in a TopK selection cannot flip between the two runs (in float32 the rows
    # of a 16-row and a 32-row matmul may round differently, and one flipped selection moves W_dec by ~1e-4)
    base = {"d_in": D, "d_sae": 32, "k": 4, "batch_size": B, "tokens": STEPS * B, "lr": 3e-3, "seed": 1}
    base["dtype"] = "float64"
    return [
        SAESpec(HOOK, TrainConfig("topk", **base, dead_feature_window=4), out / "topk"),
        SAESpec(
            HOOK,
            TrainConfig(
                "weighted_topk",
                **base,
                alpha=1.0,
                gamma_estimation_batches=3,
                normalize_activations="expected_average_only_in",
                n_batches_for_norm_estimate=2,
                b_dec_init="mean",  # from the all-reduced row sums: the one-process mean
            ),
            out / "wtopk",
        ),
    ]


def shard(batches: list[dict[str, torch.Tensor]], rank: int, world: int) -> list[dict[str, torch.Tensor]]:
    n = B // world
    return [{h: x[rank * n : (rank + 1) * n] for h, x in b.items()} for b in batches]


def main(out: str) -> None:
    from sae_rdp_plugin.lm.models import tiny_hf_model
    from sae_rdp_plugin.lm.pipeline import PipelineConfig
    from sae_rdp_plugin.train.distributed import destroy_distributed, init_distributed

    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    root = Path(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fast in (False, True):  # SAELens's step under DDP; the fast step with its gradient all-reduce
            res = train_saes(
                shard(global_batches(), ctx.rank, ctx.world_size),
                specs(root / ("saes_fast" if fast else "saes")),
                tokens=STEPS * B,
                fast=fast,
                progress=False,
                ctx=ctx,
            )
            assert [r["name"] for r in res] == ["topk", "wtopk"], res  # every rank gets rank 0's results
            assert [r["fast_step"] for r in res] == [fast, fast], res
        # the pipeline end to end: each rank its shard of the token rows, its own forward
        model = tiny_hf_model("gemma3", n_layers=2, d=D, vocab=128, seed=0)
        ids = torch.randint(4, 128, (64, 17), generator=torch.Generator().manual_seed(2))
        ids[:, 0] = 2  # BOS, excluded
        pcfg = PipelineConfig(
            hooks=["blocks.1.hook_resid_post"],
            context_size=17,
            batch_size=B,
            buffer_tokens=4 * B,
            model_dtype="float32",
            compile=False,
        )
        cfg = TrainConfig("topk", d_in=D, d_sae=32, k=4, batch_size=B, tokens=8 * B, lr=3e-3, seed=1)
        lm_res = train_on_model(
            model,
            ids.numpy(),
            pcfg,
            [SAESpec("blocks.1.hook_resid_post", cfg, root / "lm")],
            heldout_tokens=ids[:8].numpy(),
            bos_token_id=2,
            progress=False,
            ctx=ctx,
        )
        assert lm_res[0]["tokens"] == 8 * B, lm_res
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1])

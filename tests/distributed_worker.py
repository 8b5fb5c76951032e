"""Run under ``torchrun --nproc_per_node 2`` (gloo, CPU) by tests/test_distributed_gloo.py.

Trains a few tiny SAEs data-parallel with sae_rdp_plugin.distributed, exercises resume, and writes
everything under argv[1]; the test process compares against single-process SAELens runs.
"""

import dataclasses
import shutil
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from sae_rdp_plugin.distributed import (  # noqa: E402
    DistTrainConfig,
    destroy_distributed,
    init_distributed,
    run_partitioned,
    train_distributed,
)
from sae_rdp_plugin.io import atomic_write_json  # noqa: E402

CASES = {
    # dead_feature_window=1: latents that did not fire in the last step are "dead", so TopK's aux loss
    # (which depends on the all-reduced dead mask) is active from step 2 on.
    "topk": dict(architecture="topk", k=4, dead_feature_window=1),
    "batchtopk": dict(architecture="batchtopk", k=4, dead_feature_window=1),
    "jumprelu": dict(architecture="jumprelu"),
    "standard": dict(architecture="standard", normalize_activations="expected_average_only_in"),
}
BASE = dict(d_in=16, d_sae=32, n_features=48, batch=64, steps=4, lr=1e-3, seed=3, data_seed=5)


def main() -> None:
    out = Path(sys.argv[1])
    ctx = init_distributed("cpu", "gloo", timeout_s=60)
    try:
        for name, kw in CASES.items():
            train_distributed(DistTrainConfig(**BASE, **kw), out / name, ctx)
        # resume: a 6-step run with a checkpoint half-way, its final output removed, then rerun
        rcfg = DistTrainConfig(**{**BASE, "steps": 6}, **CASES["topk"], n_checkpoints=1)
        train_distributed(rcfg, out / "resume", ctx)
        if ctx.is_main:
            shutil.copy(out / "resume" / "training_state.pt", out / "resume_uninterrupted.pt")
        res = train_distributed(rcfg, out / "resume", ctx, resume=True)
        if ctx.is_main:
            atomic_write_json(out / "resume_info.json", {"resumed_from": res["resumed_from"], "steps_run": res["steps_run"]})
        # partitioned map: which rank ran which item
        got = run_partitioned(list(range(5)), lambda i, x: {"i": i, "sq": x * x, "rank": ctx.rank}, ctx,
                              out_path=out / "partitioned.json")
        assert (got is None) == (ctx.rank != 0)
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()

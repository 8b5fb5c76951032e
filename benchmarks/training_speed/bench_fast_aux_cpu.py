"""CPU timing of the fast step's dead-latent aux loss: ``FastTopKTrainer.loss_and_grads`` with half the
latents dead, aux_impl "sparse" / "dense" / "auto", and optionally an older version of the fast step's
module (``--old FILE``, e.g. ``git show 95a8c15:sae_rdp_plugin/fast_topk.py > /tmp/old.py``). Runs interleaved
(shared CPUs),
median of the last ``--reps - 2``. Writes ``aux_cpu.json`` under ``--out``.

    python benchmarks/training_speed/bench_fast_aux_cpu.py --old /tmp/old.py --out benchmarks/training_speed/aux_cpu
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import torch

import sae_rdp_plugin.fast.step as new
from sae_rdp_plugin.io import atomic_write_json


def _trainer(mod, d_in: int, d_sae: int, k: int, bf16: bool, **kw):
    torch.manual_seed(0)
    W = torch.randn(d_sae, d_in) / d_in**0.5
    cfg = mod.FastTopKConfig(d_in=d_in, d_sae=d_sae, k=k, bf16=bf16, **kw)
    return mod.FastTopKTrainer(
        cfg, W.t().clone(), torch.zeros(d_sae), W.clone(), torch.zeros(d_in), gamma=torch.rand(d_in) + 0.5
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", default=None, help="an older sae_rdp_plugin/fast/step.py to compare with")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--shapes", default="256x4096,512x4096", help="d_in x d_sae pairs (batch 512, k 16)")
    args = ap.parse_args(argv)
    old = None
    if args.old:
        spec = importlib.util.spec_from_file_location("fast_topk_old", args.old)
        old = importlib.util.module_from_spec(spec)
        sys.modules["fast_topk_old"] = old  # dataclasses look the module up
        spec.loader.exec_module(old)  # type: ignore[union-attr]
    B, k = 512, 16
    rows = []
    for shape in args.shapes.split(","):
        d_in, d_sae = map(int, shape.split("x"))
        x = torch.randn(B, d_in)
        dead = torch.zeros(d_sae, dtype=torch.bool)
        dead[::2] = True
        for bf16 in (False, True):
            trs = {n: _trainer(new, d_in, d_sae, k, bf16, aux_impl=n) for n in ("auto", "sparse", "dense")}
            if old is not None:
                trs = {"old": _trainer(old, d_in, d_sae, k, bf16), **trs}
            ts: dict[str, list[float]] = {n: [] for n in trs}
            for _ in range(args.reps):
                for n, tr in trs.items():
                    t0 = time.perf_counter()
                    tr.loss_and_grads(x, dead)
                    ts[n].append(time.perf_counter() - t0)
            med = {n: sorted(v[2:])[len(v[2:]) // 2] * 1e3 for n, v in ts.items()}
            row = {
                "batch": B,
                "d_in": d_in,
                "d_sae": d_sae,
                "k": k,
                "k_aux": d_in // 2,
                "bf16": bf16,
                "auto_uses_dense": trs["auto"]._aux_dense(d_in // 2),
                "median_ms": med,
            }
            print(row, flush=True)
            rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "old": args.old,
    }
    atomic_write_json(out / "aux_cpu.json", {"env": env, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

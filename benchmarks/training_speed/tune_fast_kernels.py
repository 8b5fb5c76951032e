"""Block sizes of the fast step's Triton kernels (sae_rdp_plugin.fast.kernels), by coordinate search:
for each kernel group (decode, rowdot, fused sparse-gradient Adam) try a few (block, block, warps)
settings with the others at their defaults, timing the whole bf16 fast weighted-TopK step (median of
CUDA-event timings after warm-up) at (640, 16384, 32) and (2304, 65536, 64), batch 4096.

    python benchmarks/training_speed/tune_fast_kernels.py --out $OUT   # on the GPU; prints a table, writes JSON

The step builders and the timer are bench_training_speed.py's, imported as a sibling module (Python puts
the running script's folder first on the import path).
"""

from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path

import bench_training_speed as B
import torch

from sae_rdp_plugin.fast import kernels as fk
from sae_rdp_plugin.io import atomic_write_json

GROUPS = {
    "ADAM": [(16, 128, 4), (32, 64, 4), (8, 256, 4), (16, 256, 8), (32, 128, 8), (8, 128, 2), (4, 256, 4)],
    "DEC": [(32, 128, 4), (64, 64, 4), (16, 256, 4), (64, 128, 8), (32, 256, 8)],
    "DOT": [(32, 128, 4), (64, 64, 4), (16, 256, 4), (64, 128, 8), (32, 256, 8)],
    # SAELens's W_enc layout, timed through SAETrainer (what `sae-rdp train` runs)
    "ADAMT": [(64, 32, 4), (128, 32, 4), (32, 64, 4), (64, 64, 4), (128, 16, 4), (32, 32, 2), (16, 128, 4)],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/tune_fast_kernels")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="tiny shapes, CPU interpreter (smoke test)")
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = [(64, 512, 8)] if args.quick else [(640, 16384, 32), (2304, 65536, 64)]
    batch = 128 if args.quick else 4096
    warm, iters = (1, 2) if args.quick else (5, args.iters)
    defaults = {g: fk.get_blocks(g) for g in GROUPS}
    res = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu (interpreter)",
        "defaults": defaults,
        "rows": [],
    }
    lines = []
    for d_in, d_sae, k in configs:
        gamma = B._gamma(d_in, dev)
        xs = [torch.randn(batch, d_in, device=dev) * gamma.sqrt() for _ in range(4)]
        step, keep = B.build_fast("weighted_topk", d_in, d_sae, k, True, dev, xs, gamma, kernels="triton")
        assert keep["trainer"].use_triton, "Triton kernels not in use"
        step_t, keep_t = B.build_saelens(
            "weighted_topk", d_in, d_sae, k, True, dev, xs, gamma, fast=True, kernels="triton"
        )
        for g, cands in GROUPS.items():
            fn = step_t if g == "ADAMT" else step
            for cand in cands[: 2 if args.quick else None]:
                fk.set_blocks(g, cand)
                try:
                    t = B.time_fn(fn, dev, warm, iters)["median_ms"]
                    err = None
                except Exception as e:  # noqa: BLE001
                    t, err = None, repr(e)[:200]
                row = {"config": f"{d_in}x{d_sae}_k{k}", "group": g, "blocks": cand, "median_ms": t, "error": err}
                res["rows"].append(row)
                lines.append(
                    f"{row['config']:>16} {g:>5} {str(cand):>14} "
                    f"{t if t is not None else float('nan'):8.3f} ms {err or ''}"
                )
                print(lines[-1], flush=True)
            fk.set_blocks(g, defaults[g])
        del step, keep, step_t, keep_t, xs
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    # best per (config, group)
    best = {}
    for r in res["rows"]:
        key = f"{r['config']}/{r['group']}"
        if r["error"] is None and (key not in best or r["median_ms"] < best[key]["median_ms"]):
            best[key] = r
    res["best"] = {k: {"blocks": v["blocks"], "median_ms": v["median_ms"]} for k, v in best.items()}
    atomic_write_json(out / "tune_fast_kernels.json", res)
    print("\nbest per config/group:")
    for k, v in res["best"].items():
        print(f"  {k:>24}: {v['blocks']} {v['median_ms']:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GPU timing of the radix-select TopK kernel (sae_rdp_plugin.fast.topk_kernel.row_topk) against torch.topk.

For each case (rows, cols, dtype, k) it checks exactness (same sorted values as torch.topk, values ==
x.gather(1, indices), indices unique per row), then times both with CUDA events: warm-up, then the
median of 30 timed calls. Prints a table and writes JSON atomically to $OUT/row_topk.json (or
--out). Needs CUDA.

    python benchmarks/training_speed/bench_row_topk.py [--reps 30] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

CASES = [  # (rows, cols, dtype, k)
    (4096, 65536, torch.bfloat16, 64),
    (4096, 65536, torch.float32, 64),
    (4096, 16384, torch.bfloat16, 32),
    (4096, 16384, torch.float32, 32),
]


def _time_ms(fn, reps: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def _exact(x: torch.Tensor, k: int, v: torch.Tensor, i: torch.Tensor) -> bool:
    tv, _ = x.topk(k, dim=1, sorted=False)
    same_vals = torch.equal(v.sort(1).values, tv.sort(1).values)
    gathered = torch.equal(x.gather(1, i), v)
    si = i.sort(1).values
    unique = bool((si[:, 1:] != si[:, :-1]).all()) if k > 1 else True
    in_range = bool(((i >= 0) & (i < x.shape[1])).all())
    return same_vals and gathered and unique and in_range


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/row_topk.json, else ./row_topk.json)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_row_topk: needs a CUDA device (none found)", file=sys.stderr)
        return 1
    from sae_rdp_plugin.fast import topk_kernel as tk  # the package imports without SAELens

    torch.manual_seed(0)
    rows = []
    for B, n, dt, k in CASES:
        x = torch.randn(B, n, device="cuda").to(dt)
        v, i = tk.row_topk(x, k)
        exact = _exact(x, k, v, i)
        # heavy ties too: integer-valued rows (many equal values at the threshold)
        xt = torch.randint(-50, 50, (B, n), device="cuda").to(dt)
        exact_ties = _exact(xt, k, *tk.row_topk(xt, k))
        t_torch = _time_ms(lambda: x.topk(k, dim=1, sorted=False), args.reps)
        t_ours = _time_ms(lambda: tk.row_topk(x, k), args.reps)
        floor = x.numel() * x.element_size() / 1e9  # GB read once
        rows.append(
            {
                "rows": B,
                "cols": n,
                "dtype": str(dt).replace("torch.", ""),
                "k": k,
                "torch_topk_ms": round(t_torch, 4),
                "row_topk_ms": round(t_ours, 4),
                "speedup": round(t_torch / t_ours, 3),
                "exact": exact,
                "exact_ties": exact_ties,
                "row_topk_GBps_one_read": round(floor / (t_ours / 1e3), 1),
            }
        )
    hdr = (
        f"{'shape':>14} {'dtype':>9} {'k':>3} {'torch ms':>9} {'row_topk ms':>11} {'speedup':>8} {'exact':>6} "
        f"{'ties':>5}"
    )
    print(hdr)
    for r in rows:
        print(
            f"{r['rows']}x{r['cols']:>8} {r['dtype']:>9} {r['k']:>3} {r['torch_topk_ms']:>9.3f} "
            f"{r['row_topk_ms']:>11.3f} {r['speedup']:>8.2f} {str(r['exact']):>6} {str(r['exact_ties']):>5}"
        )
    meta = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "block_16": tk._BLOCK_16,
        "block_32": tk._BLOCK_32,
        "groups": tk._GROUPS,
        "cap": tk._CAP,
        "cb": tk._CB,
        "num_warps": tk._NUM_WARPS,
        "reps": args.reps,
        "cases": rows,
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        pass
    out = Path(args.out) if args.out else Path(os.environ.get("OUT", ".")) / "row_topk.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0 if all(r["exact"] and r["exact_ties"] for r in rows) else 2


if __name__ == "__main__":
    sys.exit(main())

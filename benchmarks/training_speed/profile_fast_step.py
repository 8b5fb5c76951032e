"""Where the fast TopK step's GPU time goes: torch.profiler kernel table per configuration.

Runs the fast step (sae_rdp_plugin.fast.step) standalone and through SAELens's SAETrainer on random
activations (batch 4096, bf16 autocast), profiles ``--steps`` steps after warm-up and prints / writes the
CUDA kernels sorted by total device time (ms per step).

    python benchmarks/training_speed/profile_fast_step.py --out $OUT            # on the GPU
    python benchmarks/training_speed/profile_fast_step.py --quick --out /tmp/p  # tiny CPU smoke test

The step builders are bench_training_speed.py's, imported as a sibling module (Python puts the running
script's folder first on the import path).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import bench_training_speed as B
import torch

from sae_rdp_plugin.devices import synchronize
from sae_rdp_plugin.io import atomic_write_json, atomic_write_text


def profile(step, steps: int, dev: torch.device) -> list[dict]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprof

    for _ in range(5):
        step()
    synchronize(dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with tprof(activities=acts) as prof:
        for _ in range(steps):
            step()
        synchronize(dev)
    rows = []
    for ev in prof.key_averages():
        dt = getattr(ev, "device_time_total", None)
        if dt is None:
            dt = getattr(ev, "cuda_time_total", 0)
        self_dt = getattr(ev, "self_device_time_total", getattr(ev, "self_cuda_time_total", 0))
        if dev.type == "cuda" and self_dt <= 0:
            continue
        if dev.type != "cuda":
            self_dt = ev.self_cpu_time_total
        rows.append({"name": ev.key[:110], "calls_per_step": ev.count / steps, "ms_per_step": self_dt / 1e3 / steps})
    rows.sort(key=lambda r: -r["ms_per_step"])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/profile_fast_step")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dead-frac", type=float, default=0.0, help="fraction of latents kept dead (aux loss runs)")
    ap.add_argument("--small-only", action="store_true", help="only the (640, 16384, k32) configuration")
    ap.add_argument(
        "--heavy",
        action="store_true",
        help=f"only bench_training_speed's heavy-tailed config {B.HEAVY_CONFIG} (issue 14's aux-loss anchor)",
    )
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = [(64, 512, 8)] if args.quick else [(640, 16384, 32), (2304, 65536, 64)]
    if args.small_only:
        configs = configs[:1]
    if args.heavy and not args.quick:
        configs = [B.HEAVY_CONFIG]
    dead = {"dead_frac": args.dead_frac}
    batch = 256 if args.quick else 4096
    res: dict = {
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "torch": torch.__version__,
        "runs": {},
    }
    text = []
    for d_in, d_sae, k in configs:
        if args.heavy:  # Student-t rows with per-dimension scales, as bench_training_speed.py --heavy
            xs, gamma = B.config_batches(d_in, batch, B.HEAVY, None, dev)
        else:
            gamma = B._gamma(d_in, dev)
            xs = [torch.randn(batch, d_in, device=dev) * gamma.sqrt() for _ in range(4)]
        builds = [
            ("fast_weighted_topk", lambda: B.build_fast("weighted_topk", d_in, d_sae, k, True, dev, xs, gamma, **dead)),
            (
                "fast_weighted_topk[SAETrainer]",
                lambda: B.build_saelens("weighted_topk", d_in, d_sae, k, True, dev, xs, gamma, fast=True, **dead),
            ),
        ]
        if args.dead_frac:  # the aux loss runs: also its dense selection by topk_kernel.topk_mask
            builds.append(
                (
                    "fast_weighted_topk[mask]",
                    lambda: B.build_fast(
                        "weighted_topk", d_in, d_sae, k, True, dev, xs, gamma, aux_topk="mask", **dead
                    ),
                )
            )
        for name, build in builds:
            step, _extras = build()
            rows = profile(step, args.steps, dev)
            key = f"{name}@{d_in}x{d_sae}k{k}" + ("_heavy" if args.heavy else "")
            key += f"_dead{args.dead_frac:g}" if args.dead_frac else ""
            total = sum(r["ms_per_step"] for r in rows)
            res["runs"][key] = {"total_kernel_ms_per_step": total, "kernels": rows[:40]}
            text.append(f"## {key}: kernels {total:.2f} ms/step")
            for r in rows[:25]:
                text.append(f"{r['ms_per_step']:8.3f} ms  x{r['calls_per_step']:5.1f}  {r['name']}")
            del step, _extras
            torch.cuda.empty_cache() if dev.type == "cuda" else None
    atomic_write_json(out / "profile_fast_step.json", res)
    atomic_write_text(out / "profile_fast_step.txt", "\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The dead-latent aux loss's dense selection alone: topk_kernel.topk_mask (only the keys in registers through
the search, "lean", or the values too, "regs"; at 4, 8 and 16 warps per program) against the step's PyTorch
selection (gather of the compacted columns, masked copy, torch.topk, scatter into zeros), both through the
step's own FastTopKTrainer._aux_dense_selection, on bf16 pre-activations of a batch of 4096 rows and 16,384
latents, k_aux 320, at three dead fractions (the compacted widths the step uses: aux_pad_width). CUDA events
after warm-up, median of --iters; every kernel variant's selection is checked equal to the first kernel
variant's, and its picks per row to torch's.

    python benchmarks/training_speed/bench_topk_mask.py --out $OUT/topk_mask     # on the GPU
    TRITON_INTERPRET=1 python benchmarks/training_speed/bench_topk_mask.py --quick --out /tmp/tm  # CPU smoke test

--quick: tiny shapes, on the GPU where there is one (else on the CPU in Triton's interpreter).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sae_rdp_plugin.fast import topk_kernel as tk
from sae_rdp_plugin.fast.step import FastTopKConfig, FastTopKTrainer, aux_pad_width
from sae_rdp_plugin.io import atomic_write_json


def selection(aux_topk: str, d_sae: int, dev: torch.device):
    """The step's own dense aux selection, ``FastTopKTrainer._aux_dense_selection`` (bf16 products), of a trainer
    with ``aux_topk`` ("torch": top-k scattered into zeros; "mask": topk_kernel.topk_mask); the weights are not
    read by it (d_in 64)."""
    d_in = 64
    cfg = FastTopKConfig(d_in=d_in, d_sae=d_sae, k=8, kernels="triton", bf16=True, aux_topk=aux_topk)
    w = torch.zeros(d_in, d_sae, device=dev)
    tr = FastTopKTrainer(cfg, w, torch.zeros(d_sae, device=dev), w.t().contiguous(), torch.zeros(d_in, device=dev))
    tr._row_topk_on_cpu = dev.type == "cpu"  # (the --quick run: the kernel in Triton's interpreter)
    return lambda pre, dead, cols, n, k: tr._aux_dense_selection(pre, dead, n, cols, k, torch.bfloat16)


def timed(fn, iters: int, dev: torch.device) -> float:
    for _ in range(3 if dev.type == "cuda" else 1):
        fn()
    if dev.type != "cuda":
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/topk_mask")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    B, d_sae, k = (16, 1024, 20) if args.quick else (4096, 16384, 320)
    g = torch.Generator(device=dev).manual_seed(0)
    pre = (torch.randn(B, d_sae, device=dev, generator=g) * 2).bfloat16()
    n = torch.rand(d_sae, device=dev, generator=g) + 0.5
    by_torch, by_mask = selection("torch", d_sae, dev), selection("mask", d_sae, dev)
    rows, lines = [], []
    defaults = tk._TOPK_MASK_LEAN, tk._TOPK_MASK_WARPS
    try:
        for frac in (0.2, 0.5, 0.85):
            dead = torch.rand(d_sae, device=dev, generator=g) < frac
            n_dead = int(dead.sum())
            width = aux_pad_width(n_dead, d_sae, k)
            cols = torch.argsort((~dead).to(torch.int8), stable=True)[:width] if width < d_sae else None
            ref = None  # the first kernel variant's (A, M): every other kernel variant must equal it exactly
            picks = None  # torch.topk's tie order is unspecified: against it, the picks per row are compared
            variants = [("torch", None, None)] + [
                (f"{'lean' if lean else 'regs'}_w{w}", lean, w) for lean in (True, False) for w in (4, 8, 16)
            ]
            for name, lean, warps in variants:
                if warps is not None:
                    tk._TOPK_MASK_LEAN, tk._TOPK_MASK_WARPS = lean, warps
                sel = by_torch if warps is None else by_mask
                fn = lambda sel=sel: sel(pre, dead, cols, n, k)  # noqa: E731
                A, M = fn()
                same = None
                if warps is None:
                    picks = M.sum(1)
                else:
                    ref = ref or (A, M)
                    same = bool(torch.equal(M, ref[1]) and torch.equal(A, ref[0]) and torch.equal(M.sum(1), picks))
                ms = timed(fn, args.iters, dev)
                row = {"dead_frac": frac, "n_dead": n_dead, "width": width, "impl": name, "ms": ms}
                if warps is not None:
                    row["same_as_first_kernel_and_torch_picks"] = same
                rows.append(row)
                lines.append(f"dead {frac:4.2f} width {width:6d}  {name:12s} {ms:8.3f} ms  same={same}")
                print(lines[-1], flush=True)
    finally:
        tk._TOPK_MASK_LEAN, tk._TOPK_MASK_WARPS = defaults
    env = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "torch": torch.__version__,
        "shape": {"batch": B, "d_sae": d_sae, "k_aux": k},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "topk_mask.json", {**env, "rows": rows})
    print(json.dumps(env))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

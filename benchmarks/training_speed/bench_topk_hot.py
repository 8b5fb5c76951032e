"""Micro-benchmark of two pieces of the fast step on the GPU (benchmarks/training_speed):

* TopK over the [B, d_sae] pre-activations: one ``torch.topk`` vs a two-stage TopK (:func:`chunked_topk`
  below: the top k of each of 2..64 column blocks, then the top k of the survivors). The two-stage TopK
  was slower than one torch.topk in every case (HISTORY.md), so the fast step does not use it; the
  comparison stays here;
* the dead-latent aux selection (top k_aux = d_in/2 of the [B, d_sae] pre-activations with the live latents
  at -inf, half or 85% of the latents dead; :func:`aux_topk_row`): the fast step's masked_fill + torch.topk
  against the same on float32, the two-stage TopK and ``topk_kernel.masked_topk`` (radix select with the
  mask fused, ``FastTopKConfig.aux_topk="radix"``) at several blocks and warps (its top k_aux costs about as
  much as the rest of the step at 85% dead: benchmarks/training_speed/aux_compact/);
* :func:`sae_rdp_plugin.fast.kernels.hot_rows` with ``unique=False`` (sort-based accumulate) vs ``True``; its
  busiest-rows selection (``kernels.HOT_SELECT``: torch.topk vs a radix sort) alone and inside hot_rows
  (plain scatter) on TopK codes of random pre-activations.

Median of CUDA-event timings after warm-up. Prints a table, writes ``$OUT/topk_hot.json``.
Usage: python benchmarks/training_speed/bench_topk_hot.py [--out DIR] [--iters 30]

The CUDA-event timer is bench_row_topk.py's, imported as a sibling module: Python puts the running
script's folder first on the import path.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
from pathlib import Path

import torch
from bench_row_topk import _time_ms  # one CUDA-event timer for both micro-benchmarks

from sae_rdp_plugin.fast import kernels as fk
from sae_rdp_plugin.fast import topk_kernel


def chunked_topk(x: torch.Tensor, k: int, chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k along dim 1 in two stages (values, indices; unsorted): the top k of each of ``chunks`` equal
    column blocks, then the top k of the chunks * k survivors. Exact: an element of the row's top k is in
    its block's top k. One torch.topk when the blocks would not divide the row or hold fewer than k."""
    B, n = x.shape
    if chunks <= 1 or n % chunks or n // chunks < k:
        return x.topk(k, dim=1, sorted=False)
    c = n // chunks
    v1, i1 = x.reshape(B, chunks, c).topk(k, dim=2, sorted=False)
    i1 = i1 + torch.arange(0, n, c, device=x.device, dtype=i1.dtype).view(1, chunks, 1)
    v, j = v1.reshape(B, chunks * k).topk(k, dim=1, sorted=False)
    return v, i1.reshape(B, chunks * k).gather(1, j)


def topk_row(x: torch.Tensor, k: int, iters: int, warmup: int) -> dict:
    """One torch.topk vs chunked_topk at every block count that divides the row (checked exact), in ms."""
    n = x.shape[1]
    ref_v = x.topk(k, dim=1).values.sort(dim=1).values
    row = {"d_sae": n, "k": k, "dtype": str(x.dtype).split(".")[-1]}
    row["torch_topk_ms"] = _time_ms(lambda: x.topk(k, dim=1, sorted=False), iters, warmup)
    for c in (2, 4, 8, 16, 32, 64):
        if n % c or n // c < k:
            continue
        v, _ = chunked_topk(x, k, c)
        assert torch.equal(v.sort(dim=1).values, ref_v), "chunked_topk disagrees with torch.topk"
        row[f"chunks{c}_ms"] = _time_ms(lambda: chunked_topk(x, k, c), iters, warmup)
    return row


def aux_topk_row(pre: torch.Tensor, k_aux: int, dead_frac: float, iters: int, warmup: int) -> dict:
    """The aux selection as the fast step makes it (masked_fill of the live columns with -inf, then
    torch.topk of k_aux) against the same in float32 and against chunked_topk of the filled rows (checked
    equal values), in ms; ``fill_ms`` is the masked_fill alone."""
    n = pre.shape[1]
    dead = torch.zeros(n, dtype=torch.bool, device=pre.device)
    dead[torch.randperm(n, device=pre.device)[: int(dead_frac * n)]] = True
    filled = pre.masked_fill(~dead, -torch.inf)
    ref_v = filled.topk(k_aux, dim=1).values.sort(dim=1).values
    row = {"d_sae": n, "k_aux": k_aux, "dead_frac": dead_frac, "dtype": str(pre.dtype).split(".")[-1]}
    row["fill_ms"] = _time_ms(lambda: pre.masked_fill(~dead, -torch.inf), iters, warmup)
    row["fill_topk_ms"] = _time_ms(
        lambda: pre.masked_fill(~dead, -torch.inf).topk(k_aux, dim=1, sorted=False), iters, warmup
    )
    f32 = pre.float()
    row["fill_topk_fp32_ms"] = _time_ms(
        lambda: f32.masked_fill(~dead, -torch.inf).topk(k_aux, dim=1, sorted=False), iters, warmup
    )
    if topk_kernel.available(pre.device):
        # radix select with the mask read by the kernel (no masked copy), at a few blocks / warps per program
        v, _ = topk_kernel.masked_topk(pre, k_aux, dead)
        assert torch.equal(v.sort(dim=1).values, ref_v), "masked_topk disagrees with torch.topk"
        for block, warps in ((1024, 4), (2048, 4), (2048, 8), (4096, 8), (4096, 16)):
            row[f"radix_b{block}_w{warps}_ms"] = _time_ms(
                lambda block=block, warps=warps: topk_kernel.masked_topk(
                    pre, k_aux, dead, block=block, num_warps=warps
                ),
                iters,
                warmup,
            )
    for c in (2, 4, 8, 16, 32):
        if n % c or n // c < k_aux:
            continue
        v, _ = chunked_topk(filled, k_aux, c)
        assert torch.equal(v.sort(dim=1).values, ref_v), "chunked_topk disagrees with torch.topk"
        row[f"fill_chunks{c}_ms"] = _time_ms(
            lambda: chunked_topk(pre.masked_fill(~dead, -torch.inf), k_aux, c), iters, warmup
        )
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("error: bench_topk_hot.py needs a CUDA GPU")
    dev = torch.device("cuda")
    res = {
        "env": {
            "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "device": torch.cuda.get_device_name(dev),
            "torch": torch.__version__,
        },
        "topk": [],
        "aux_topk": [],
        "hot_rows": [],
    }
    B = args.batch
    lines = []
    for d_in, n, k in [(640, 16384, 32), (2304, 65536, 64)]:
        for dtype in (torch.bfloat16, torch.float32):
            torch.manual_seed(0)
            row = topk_row(torch.randn(B, n, device=dev).to(dtype), k, args.iters, args.warmup)
            base = row["torch_topk_ms"]
            res["topk"].append(row)
            best = min((v, kk) for kk, v in row.items() if kk.startswith("chunks"))
            lines.append(
                f"topk  {n:>6} k{k:<3} {row['dtype']:<8} torch {base:6.3f} ms  best {best[1]} {best[0]:6.3f} ms  "
                f"({base / best[0]:.2f}x)"
            )
        # the aux selection (bf16 pre-activations, as in the bf16 step), k_aux = d_in / 2
        for dead_frac in (0.5, 0.85):
            torch.manual_seed(2)
            row = aux_topk_row(torch.randn(B, n, device=dev).bfloat16(), d_in // 2, dead_frac, args.iters, args.warmup)
            res["aux_topk"].append(row)
            best = min((v, kk) for kk, v in row.items() if kk.startswith("fill_chunks"))
            radix = min(((v, kk) for kk, v in row.items() if kk.startswith("radix")), default=(float("nan"), "-"))
            lines.append(
                f"aux   {n:>6} k{d_in // 2:<4} dead {dead_frac:.2f}  fill {row['fill_ms']:6.3f}  fill+topk "
                f"{row['fill_topk_ms']:6.3f}  fp32 {row['fill_topk_fp32_ms']:6.3f}  best {best[1]} {best[0]:6.3f} ms  "
                f"radix {radix[1]} {radix[0]:6.3f} ms"
            )
        # hot rows on TopK codes (bf16 sources, as in the bf16 step)
        torch.manual_seed(1)
        pre = torch.randn(B, n, device=dev) + torch.randn(n, device=dev)  # per-latent offsets: some busy latents
        v, i = pre.topk(k, dim=1, sorted=False)
        idx = i.reshape(-1)
        rows = torch.arange(B * k, device=dev) // k
        order = torch.argsort(idx)
        crow = torch.searchsorted(idx[order], torch.arange(n + 1, device=dev))
        coefs = [v.reshape(-1), v.reshape(-1) * 0.5]
        S = [torch.randn(B, d_in, device=dev).bfloat16(), torch.randn(B, d_in, device=dev).bfloat16()]
        hr = {"d_sae": n, "k": k, "d_in": d_in, "busy_latents_over_64": int(((crow[1:] - crow[:-1]) > 64).sum())}
        outs = {}
        for unique in (False, True):
            outs[unique] = fk.hot_rows(crow, idx, rows, coefs, S, unique=unique)
            hr[f"unique_{unique}_ms"] = _time_ms(
                lambda: fk.hot_rows(crow, idx, rows, coefs, S, unique=unique), args.iters, args.warmup
            )
        assert torch.equal(outs[False][0], outs[True][0])
        hr["max_abs_diff"] = max(float((a - b).abs().max()) for a, b in zip(outs[False][1], outs[True][1]))
        # the busiest-rows selection at the step's capacity (bf16: H = B*k/64), torch.topk vs a radix sort
        # (kernels.HOT_SELECT), alone and inside hot_rows
        H = min(n, max(256, B * k // 64))
        counts = crow[1:] - crow[:-1]
        hr["H"] = H
        default = fk.HOT_SELECT
        try:
            for mode in ("topk", "sort"):
                fk.HOT_SELECT = mode
                hr[f"select_{mode}_ms"] = _time_ms(lambda: fk.hot_select(counts, H), args.iters, args.warmup)
                hr[f"hot_rows_H_{mode}_ms"] = _time_ms(
                    lambda: fk.hot_rows(crow, idx, rows, coefs, S, max_hot=H, min_count=32, unique=True),
                    args.iters,
                    args.warmup,
                )
        finally:
            fk.HOT_SELECT = default  # the module's own setting, whatever it is
        res["hot_rows"].append(hr)
        lines.append(
            f"hot   {n:>6} k{k:<3} accumulate {hr['unique_False_ms']:6.3f} ms  scatter {hr['unique_True_ms']:6.3f} ms  "
            f"busy={hr['busy_latents_over_64']}  maxdiff={hr['max_abs_diff']:.2e}"
        )
        lines.append(
            f"hot   {n:>6} H{H:<5} select topk {hr['select_topk_ms']:6.3f} sort {hr['select_sort_ms']:6.3f} ms; "
            f"hot_rows topk {hr['hot_rows_H_topk_ms']:6.3f} sort {hr['hot_rows_H_sort_ms']:6.3f} ms"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "topk_hot.json.tmp"
    tmp.write_text(json.dumps(res, indent=2))
    tmp.replace(out / "topk_hot.json")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

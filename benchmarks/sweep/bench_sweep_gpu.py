#!/usr/bin/env python
"""Batched sweep trainer vs a loop of SAELens's ``train_toy_sae``, and a timed paper-style sweep.

Part A (throughput): the same grid of TopK SAEs on the same DGP, trained (1) all at once by
``sae_rdp_plugin.sweep`` (stacked weights, one shared data stream) and (2) one after another by
``sae_lens.synthetic.train_toy_sae``. Both are timed with CUDA events after a warm-up, per SAE-step
(one optimizer step of one SAE on one batch, data generation included on both sides). The baseline
loop trains only ``--baseline-members`` members for ``--baseline-steps`` steps each and is
extrapolated linearly to the grid (stated in the output).

Part B (full sweep): a paper-style RDP sweep (>= 200 SAEs: TopK / ReLU-L1 / BatchTopK x widths x
sparsity x seeds x 4 co-occurrence levels rho) trained and evaluated end to end by ``train_sweep``,
timed wall-clock, with its results (``full_sweep/results.json``), summary and figures under $OUT.

Usage (GPU):    OUT=/tmp/out python benchmarks/sweep/bench_sweep_gpu.py --device cuda
CPU smoke test: python benchmarks/sweep/bench_sweep_gpu.py --quick --device cpu --out /tmp/bench
No network needed. Writes ``$OUT/bench_sweep_gpu.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from sae_rdp_plugin.io import atomic_write_json  # noqa: E402
from sae_rdp_plugin.sweep.config import DGPSpec, SweepConfig  # noqa: E402
from sae_rdp_plugin.sweep.data import DataStream, build_dgp, saelens_toy_data  # noqa: E402
from sae_rdp_plugin.sweep.export import saelens_training_sae as _saelens_training_sae  # noqa: E402
from sae_rdp_plugin.sweep.members import enumerate_members  # noqa: E402
from sae_rdp_plugin.sweep.stacked import StackedSAEs  # noqa: E402
from sae_rdp_plugin.sweep.stacked import make_optimizer as _make_optimizer  # noqa: E402
from sae_rdp_plugin.sweep.train import train_sweep  # noqa: E402


class Timer:
    """CUDA-event timer on CUDA, perf_counter otherwise (seconds)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.a = torch.cuda.Event(enable_timing=True)
            self.b = torch.cuda.Event(enable_timing=True)
            self.a.record()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.b.record()
            torch.cuda.synchronize()
            self.seconds = self.a.elapsed_time(self.b) / 1000.0
        else:
            self.seconds = time.perf_counter() - self.t0
        self.wall = time.perf_counter() - self.t0


def throughput_config(quick: bool) -> SweepConfig:
    if quick:
        spec = DGPSpec(name="pairs_rho0.5", m=8, d=16, rho=0.5, q=0.1)
        return SweepConfig(
            dgps=[spec],
            architectures=["topk"],
            widths=[16],
            ks=[1, 2],
            seeds=[0, 1],
            batch_size=128,
            steps=30,
            lr=1e-3,
            eval_samples=256,
        )
    spec = DGPSpec(name="pairs_rho0.5", m=64, d=128, rho=0.5, q=0.05)
    return SweepConfig(
        dgps=[spec],
        architectures=["topk"],
        widths=[256],
        ks=[2, 4, 8, 16],
        seeds=list(range(16)),
        batch_size=1024,
        steps=400,
        lr=1e-3,
        eval_samples=4096,
    )


def full_sweep_config(quick: bool) -> SweepConfig:
    """Paper-style sweep: 4 DGPs (pairs that co-occur, rho in {0, .25, .5, .75}) x TopK (K 1..8) /
    ReLU-L1 (5 coefficients) / BatchTopK (K 1, 2, 4) x widths {32, 64} x 2 seeds = 224 SAEs."""
    rhos = [0.0, 0.25, 0.5, 0.75]
    if quick:
        dgps = [DGPSpec(name=f"pairs_rho{r}", m=8, d=16, rho=r, q=0.1) for r in (0.0, 0.5)]
        return SweepConfig(
            dgps=dgps,
            architectures=["topk", "standard"],
            widths=[8],
            ks=[1, 2],
            l1_coefficients=[0.1],
            seeds=[0],
            steps=40,
            batch_size=128,
            lr=1e-3,
            eval_samples=500,
            checkpoint_every=20,
        )
    dgps = [DGPSpec(name=f"pairs_rho{r}", m=32, d=64, rho=r, q=0.05) for r in rhos]
    return SweepConfig(
        dgps=dgps,
        architectures=["topk", "standard", "batchtopk"],
        widths=[32, 64],
        ks=[1, 2, 3, 4, 6, 8],
        l1_coefficients=[0.01, 0.03, 0.1, 0.3, 1.0],
        seeds=[0, 1],
        steps=4000,
        batch_size=2048,
        lr=1e-3,
        eval_samples=20000,
        checkpoint_every=1000,
        dead_feature_window=1000,
    )


def bench_batched(cfg: SweepConfig, device: torch.device, warmup: int) -> dict:
    """SAE-steps per second of the stacked trainer: one group (all members), data sampled each step."""
    built = build_dgp(cfg.dgps[0], device)
    mbs = enumerate_members(cfg)
    model = StackedSAEs(cfg, "topk", cfg.widths[0], built.d, mbs, {built.name: built.concepts}, device)
    opt, sched = _make_optimizer(cfg, model, device)
    stream = DataStream(built, torch.Generator(device=device).manual_seed(0))
    G = len(mbs)

    def run(n: int) -> None:
        for s in range(n):
            x = stream.next_batch(cfg.batch_size)[0].unsqueeze(0).expand(G, -1, -1)
            loss, _ = model.loss(x, s)
            loss.sum().backward()
            model.clip_grads_(1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()

    run(warmup)
    with Timer(device) as t:
        run(cfg.steps)
    return {"members": G, "steps": cfg.steps, "seconds": t.seconds, "sae_steps_per_s": G * cfg.steps / t.seconds}


def bench_baseline(cfg: SweepConfig, device: torch.device, n_members: int, steps: int, warmup: int) -> dict:
    """SAE-steps per second of a loop of sae_lens.synthetic.train_toy_sae over the first members."""
    from sae_lens.synthetic import train_toy_sae

    built = build_dgp(cfg.dgps[0], device)
    fd, gen = saelens_toy_data(built, seed=0)
    mbs = enumerate_members(cfg)
    # warm-up (CUDA context, kernels, SAELens imports)
    sae = _saelens_training_sae(cfg, mbs[0], built.d, device)
    train_toy_sae(
        sae, fd, gen, training_samples=warmup * cfg.batch_size, batch_size=cfg.batch_size, lr=cfg.lr, device=device
    )
    with Timer(device) as t:
        for mb in mbs[:n_members]:
            torch.manual_seed(mb.seed)
            sae = _saelens_training_sae(cfg, mb, built.d, device)
            train_toy_sae(
                sae,
                fd,
                gen,
                training_samples=steps * cfg.batch_size,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                device=device,
            )
    return {
        "members_timed": n_members,
        "steps_each": steps,
        "seconds": t.seconds,
        "sae_steps_per_s": n_members * steps / t.seconds,
    }


def bench_metrics(device: torch.device, quick: bool) -> dict:
    """Time P(W) for a Gemma-Scope-sized dictionary (65,536 x 2,304) against 16,384 concepts."""
    from sae_rdp_plugin.rdp.metrics import polysemanticity

    n, d, m = (2048, 64, 256) if quick else (65536, 2304, 16384)
    chunk = 256 if quick else 4096
    g = torch.Generator(device=device).manual_seed(0)
    w = torch.randn(n, d, device=device, generator=g)
    v = torch.randn(m, d, device=device, generator=g)
    polysemanticity(w[:256], v)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with Timer(device) as t:
        p = polysemanticity(w, v, chunk_size=chunk)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else None
    p_full = polysemanticity(w, v, chunk_size=n)  # one chunk = the unchunked table
    return {
        "n_features": n,
        "d": d,
        "m": m,
        "chunk_size": chunk,
        "seconds_chunked": t.seconds,
        "peak_mib": peak,
        "P": p,
        "abs_diff": abs(p - p_full),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench_sweep_out")))
    ap.add_argument("--baseline-members", type=int, default=None)
    ap.add_argument("--baseline-steps", type=int, default=None)
    ap.add_argument("--skip-full", action="store_true", help="only part A")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both sides
    args.out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    t_all = time.perf_counter()
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": quick,
    }
    try:
        import sae_lens

        meta["sae_lens"] = sae_lens.__version__
    except Exception:  # noqa: BLE001
        pass

    # ---- part A
    tcfg = throughput_config(quick)
    warm = 5 if quick else 50
    batched = bench_batched(tcfg, device, warmup=warm)
    nb = args.baseline_members or (1 if quick else 3)
    sb = args.baseline_steps or (10 if quick else 300)
    base = bench_baseline(tcfg, device, nb, sb, warmup=warm)
    G = batched["members"]
    grid_batched_s = G * tcfg.steps / batched["sae_steps_per_s"]
    grid_base_s = G * tcfg.steps / base["sae_steps_per_s"]
    part_a = {
        "grid": {
            "dgp": tcfg.dgps[0].__dict__,
            "architecture": "topk",
            "width": tcfg.widths[0],
            "ks": tcfg.ks,
            "seeds": len(tcfg.seeds),
            "members": G,
            "batch_size": tcfg.batch_size,
            "steps": tcfg.steps,
        },
        "batched": batched,
        "baseline_train_toy_sae": base,
        "baseline_note": f"baseline timed on {nb} member(s) x {sb} steps and extrapolated linearly to "
        f"{G} members x {tcfg.steps} steps",
        "grid_seconds_batched": grid_batched_s,
        "grid_seconds_baseline_extrapolated": grid_base_s,
        "speedup": batched["sae_steps_per_s"] / base["sae_steps_per_s"],
    }
    print(f"\n{'':28s}{'SAE-steps/s':>14s}{'grid time (s)':>16s}")
    print(f"{'batched sweep trainer':28s}{batched['sae_steps_per_s']:14.1f}{grid_batched_s:16.2f}")
    print(f"{'loop of train_toy_sae':28s}{base['sae_steps_per_s']:14.1f}{grid_base_s:16.2f}  (extrapolated)")
    print(
        f"speedup: {part_a['speedup']:.1f}x  ({G} TopK SAEs, width {tcfg.widths[0]}, d {tcfg.dgps[0].d}, "
        f"batch {tcfg.batch_size})"
    )
    result = {"meta": meta, "throughput": part_a}
    atomic_write_json(args.out / "bench_sweep_gpu.json", result)

    # ---- part C: polysemanticity of a large dictionary (chunked cosine table)
    try:
        result["metrics"] = bench_metrics(device, quick)
        mt = result["metrics"]
        print(
            f"\npolysemanticity of {mt['n_features']} x {mt['d']} vs {mt['m']} concepts: {mt['seconds_chunked']:.3f} s "
            f"(chunk {mt['chunk_size']}, peak extra {mt['peak_mib'] or 0:.0f} MiB); "
            f"|chunked - unchunked| = {mt['abs_diff']:.2e}"
        )
    except Exception as exc:  # noqa: BLE001  (never lose parts A/B to this add-on)
        result["metrics"] = {"error": f"{type(exc).__name__}: {exc}"}
    atomic_write_json(args.out / "bench_sweep_gpu.json", result)

    # ---- part B
    if not args.skip_full:
        fcfg = full_sweep_config(quick)
        n_members = len(enumerate_members(fcfg))
        fdir = args.out / "full_sweep"
        atomic_write_json(args.out / "full_sweep_config.json", fcfg.to_dict())
        with Timer(device) as t:
            res = train_sweep(fcfg, fdir, device=device, resume=True, progress=True)
        from sae_rdp_plugin.sweep.analysis import plot_sweep, summarize

        figs = plot_sweep(res, args.out, prefix="full_sweep")
        summ = summarize(res)
        base_full_est = n_members * fcfg.steps / base["sae_steps_per_s"]
        result["full_sweep"] = {
            "members": n_members,
            "steps": fcfg.steps,
            "batch_size": fcfg.batch_size,
            "seconds_wall": t.wall,
            "baseline_seconds_extrapolated": base_full_est,
            "baseline_note": "train_toy_sae loop time extrapolated from part A's per-SAE-step rate "
            "(its SAEs are larger, so this is an upper bound on its speed)",
            "files": [str(p.relative_to(args.out)) for p in figs] + ["full_sweep/results.json"],
            "summary": {k: {kk: vv for kk, vv in v.items() if kk != "pareto"} for k, v in summ.items()},
        }
        print(
            f"\nfull sweep: {n_members} SAEs x {fcfg.steps} steps (batch {fcfg.batch_size}) in {t.wall:.1f} s "
            f"(train_toy_sae loop, extrapolated: {base_full_est:.0f} s)"
        )
        print(f"{'dgp':16s}{'E|S|':>7s}{'max(E|S|-R-D)':>15s}{'P_dec there':>13s}{'frac below':>12s}")
        for k, v in summ.items():
            print(
                f"{k:16s}{v['expected_size']:7.3f}{v['premium_max']:15.3f}{v['premium_argmax_P_dec']:13.3f}{v['fraction_below_line']:12.2f}"
            )
    result["total_seconds"] = time.perf_counter() - t_all
    atomic_write_json(args.out / "bench_sweep_gpu.json", result)
    print(f"\nwrote {args.out / 'bench_sweep_gpu.json'} (total {result['total_seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: exhaustive exact frontier of the binary-atom toy model on ONE CPU core.

Default: m = 5 concepts, width 5 (all C(31, 5) = 169,911 dictionaries), every TopK K = 1..5, a pmf with
full support (all 32 active sets: pairs that co-occur, rho = 0.3, otherwise independent q = 0.1), binary
coefficients; also the growth with m at a fixed width. Prints a table and writes JSON.

    python benchmarks/theory_frontier/bench_theory_frontier.py [--out benchmarks/theory_frontier/bench_frontier.json]
        [--coefficients binary nnls]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"  # one core: set before numpy/torch are imported

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from sae_rdp_plugin.io import atomic_write_json  # noqa: E402
from sae_rdp_plugin.rdp.dgp import cooccurring_pairs  # noqa: E402
from sae_rdp_plugin.rdp.theory import (  # noqa: E402
    enumerate_codes,
    enumerate_encoders,
    monosemantic_points,
    pareto_front,
    rate_tax,
)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(m: int, width: int, k: int, coefficients: str) -> dict:
    pmf = cooccurring_pairs(m, rho=0.3, q=0.1).to_explicit()
    t0 = time.perf_counter()
    t = enumerate_codes(pmf, width, k, coefficients=coefficients)
    t_enum = time.perf_counter() - t0
    pf = pareto_front(t.rate, t.distortion, t.polysemanticity)
    mono = monosemantic_points(pmf, width, k, "topk")  # the class the committed timings used
    tax = rate_tax(t, mono, pmf)
    t_all = time.perf_counter() - t0
    return {
        "m": m,
        "width": width,
        "k": k,
        "coefficients": coefficients,
        "codes": len(t),
        "active_sets": int(pmf.support()[0].shape[0]),
        "pareto": int(pf.size),
        "max_rate_tax": tax["max_rate_tax"],
        "seconds_enumerate": round(t_enum, 3),
        "seconds_total": round(t_all, 3),
    }


def run_all_encoders(m: int, width: int, k: int) -> dict:
    """The unrestricted class (every encoder of every dictionary, one row per frontier point), binary."""
    pmf = cooccurring_pairs(m, rho=0.3, q=0.1).to_explicit()
    t0 = time.perf_counter()
    t = enumerate_encoders(pmf, width, k)
    t_enum = time.perf_counter() - t0
    tax = rate_tax(t, monosemantic_points(pmf, width, k), pmf)
    return {
        "m": m,
        "width": width,
        "k": k,
        "dictionaries": math.comb(2**m - 1, width),
        "frontier_rows": len(t),
        "max_rate_tax": tax["max_rate_tax"],
        "seconds_enumerate": round(t_enum, 3),
        "seconds_total": round(time.perf_counter() - t0, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/theory_frontier/bench_frontier.json"))
    ap.add_argument("--m", type=int, default=5)
    ap.add_argument("--width", type=int, default=5)
    ap.add_argument("--coefficients", nargs="+", default=["binary"], choices=["binary", "nnls", "lstsq"])
    ap.add_argument("--quick", action="store_true", help="m = 4, width 4 (seconds)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    m, width = (4, 4) if args.quick else (args.m, args.width)
    rows = []
    print(
        f"{'m':>2} {'width':>5} {'K':>2} {'coef':>7} {'codes':>8} {'sets':>5} {'pareto':>6} "
        f"{'enum s':>7} {'total s':>7}"
    )
    for coef in args.coefficients:
        t_sum = 0.0
        for k in range(1, width + 1):
            r = run(m, width, k, coef)
            rows.append(r)
            t_sum += r["seconds_total"]
            print(
                f"{m:2d} {width:5d} {k:2d} {coef:>7} {r['codes']:8d} {r['active_sets']:5d} {r['pareto']:6d} "
                f"{r['seconds_enumerate']:7.2f} {r['seconds_total']:7.2f}"
            )
        print(f"   every K ({coef}): {t_sum:.1f} s")
    # growth with m at a fixed width (K = width: the most subsets per code)
    growth = []
    gw = min(width, 4)
    for mm in (3, 4, 5):
        growth.append(run(mm, gw, gw, "binary"))
    print(
        f"growth with m at width {gw}, K={gw}: "
        + ", ".join(f"m={g['m']}: {g['codes']} codes {g['seconds_total']:.2f} s" for g in growth)
    )
    all_rows = [run_all_encoders(mm, ww, kk) for mm, ww, kk in ((3, 3, 1), (3, 3, 2), (4, 4, 1), (4, 4, 2))]
    print(
        "encoders all: "
        + ", ".join(
            f"m={a['m']} w={a['width']} K={a['k']}: {a['frontier_rows']} rows {a['seconds_total']:.2f} s"
            for a in all_rows
        )
    )
    per_k_total = {
        c: round(sum(r["seconds_total"] for r in rows if r["coefficients"] == c), 2) for c in args.coefficients
    }
    cost = {
        str(mm): {
            "codes": math.comb(2**mm - 1, width),
            "active_sets": 2**mm,
            "codes_x_sets": math.comb(2**mm - 1, width) * 2**mm,
        }
        for mm in range(3, 8)
    }
    res = {
        "description": f"exhaustive exact frontier, m={m}, width {width}, every K, one CPU core "
        "(torch.set_num_threads(1), BLAS 1 thread)",
        "machine": {
            "cpu": _cpu_name(),
            "arch": platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_1min_at_end": os.getloadavg()[0],
            "cpu_count": os.cpu_count(),
        },
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rows": rows,
        "seconds_every_k": per_k_total,
        "growth_with_m": growth,
        "encoders_all": all_rows,
        "cost_model": {
            "note": "work = C(2^m - 1, width) codes x (active sets, <= 2^m) x (subsets of <= K atoms per code, "
            "sum_{j<=K} C(width, j)); plus a table of sum_{j<=K} C(2^m - 1, j) subset errors",
            "per_m_at_this_width": cost,
            "m6_note": "m = 6 at width 5 is C(63, 5) = 7.0M codes x 64 sets (about 80x the m = 5 work) and a "
            "7.4M-row subset table: beyond the default limits (MAX_CODES, MAX_TABLE_ROWS)",
        },
    }
    atomic_write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

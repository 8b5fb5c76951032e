"""How concentrated is the WSAE weighting? For a saved run (or gamma file with its variance), report for
several alpha the share of sum(gamma^2) held by the top-5 dimensions and how many dimensions hold 90% of it.

    python experiments/wsae_gamma/concentration.py RUN_DIR --out experiments/wsae_gamma/NAME.json [--note TEXT]
"""

from __future__ import annotations

import argparse
import datetime
import platform

from sae_rdp_plugin.io import atomic_write_json
from sae_rdp_plugin.wsae.gamma import gamma_from_variance, load_gamma_file


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    gf = load_gamma_file(a.run)
    if gf.stats is None:
        raise SystemExit("error: the gamma file holds no variance")
    rows = []
    for alpha in a.alphas:
        g2 = gamma_from_variance(gf.stats.variance, alpha).pow(2).sort(descending=True).values
        frac = g2.cumsum(0) / g2.sum()
        rows.append(
            {
                "alpha": alpha,
                "top5_share": float(g2[:5].sum() / g2.sum()),
                "dims_for_90pct": int((frac < 0.9).sum()) + 1,
                "gamma_min": float(g2[-1].sqrt()),
                "gamma_max": float(g2[0].sqrt()),
            }
        )
        print(
            f"alpha {alpha}: top-5 dims hold {100 * rows[-1]['top5_share']:.1f}% of sum(gamma^2); "
            f"{rows[-1]['dims_for_90pct']} dims hold 90%"
        )
    atomic_write_json(
        a.out,
        {
            "run": a.run,
            "d_in": int(gf.gamma.shape[0]),
            "n_samples": gf.stats.n_samples,
            "note": a.note,
            "rows": rows,
            "machine": platform.machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    )


if __name__ == "__main__":
    main()

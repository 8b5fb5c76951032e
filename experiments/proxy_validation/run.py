"""Validating polysemanticity proxies where the truth is known (synthetic SAELens data, CPU, minutes).

A small TopK sweep (several K, three widths) is trained with ``sae_lens.synthetic.train_toy_sae`` on
SAELens synthetic activations: m orthonormal ground-truth features (``FeatureDictionary``), firing
with probability q, in pairs that co-occur (Gaussian-copula correlation ``corr`` inside each pair,
``ActivationGenerator``). For each SAE: rate R = E||z||_0 and distortion D = E||x - x_hat||^2 (held-out
sample), the true polysemanticity P (THEORY.md section 3, ``sae_rdp_plugin.rdp.metrics.polysemanticity`` of
the decoder rows against the true features) and candidate proxies that need no ground truth:

* ``dec_redundancy``: mean over live latents of max_{j' != j} |cos(w_j, w_j')| (decoder rows).
* ``coactivation``: mean over live latents j of max_{j' != j} Pr[z_j' > 0 | z_j > 0].
* ``enc_dec_misalignment``: mean over live latents of 1 - cos(encoder row j, decoder row j)
  (absorption / hedging makes the encoder subtract other features).
* ``ev_control``: -explained variance (a reconstruction-side control, not a proxy).

All are oriented "+" (higher = more polysemantic). Reported: Spearman(proxy, P) across the sweep, and the
audit V / rho (bootstrap intervals, permutation p-values) of each proxy and of P itself.

    python experiments/proxy_validation/run.py [--quick] [--out experiments/proxy_validation/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from sae_rdp_plugin.audit.stats import audit_proxy
from sae_rdp_plugin.io import atomic_save, atomic_write_json, atomic_write_text
from sae_rdp_plugin.rdp.metrics import polysemanticity, rate_distortion

PROXIES = ["dec_redundancy", "coactivation", "enc_dec_misalignment", "ev_control"]


def make_data(m: int, d: int, q: float, corr: float, seed: int):
    from sae_lens.synthetic import ActivationGenerator, FeatureDictionary, create_correlation_matrix_from_correlations

    fd = FeatureDictionary(num_features=m, hidden_dim=d, bias=False, seed=seed)
    cm = create_correlation_matrix_from_correlations(m, {(i, i + 1): corr for i in range(0, m - 1, 2)})
    torch.manual_seed(seed)
    gen = ActivationGenerator(
        num_features=m,
        firing_probabilities=q,
        std_firing_magnitudes=0.1,
        mean_firing_magnitudes=1.0,
        correlation_matrix=cm,
    )
    return fd, gen


def train_one(fd, gen, d: int, width: int, k: int, samples: int, seed: int):
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.synthetic import train_toy_sae

    torch.manual_seed(seed)
    cfg = TopKTrainingSAEConfig(d_in=d, d_sae=width, k=k, device="cpu")
    sae = TopKTrainingSAE(cfg)
    train_toy_sae(sae, fd, gen, training_samples=samples, batch_size=512, lr=3e-3)
    return sae


@torch.no_grad()
def measure(sae, x: torch.Tensor, concepts: torch.Tensor) -> dict:
    rd = rate_distortion(sae, x)
    z = sae.encode(x)
    live = (z > 0).any(0)
    wd = sae.W_dec.detach()[live]
    we = sae.W_enc.detach().T[live]
    un = torch.nn.functional.normalize(wd, dim=1)
    cos = (un @ un.T).abs()
    cos.fill_diagonal_(0)
    fire = (z[:, live] > 0).float()
    cnt = fire.sum(0).clamp_min(1)
    cond = (fire.T @ fire) / cnt[:, None]  # cond[j, j'] = Pr[z_j' > 0 | z_j > 0]
    cond.fill_diagonal_(0)
    ue = torch.nn.functional.normalize(we, dim=1)
    return {
        "rate": rd.rate,
        "distortion": rd.distortion,
        "explained_variance": rd.explained_variance,
        "dead_latents": rd.dead_latents,
        "P_true": polysemanticity(wd, concepts),
        "dec_redundancy": float(cos.max(1).values.mean()) if wd.shape[0] > 1 else 0.0,
        "coactivation": float(cond.max(1).values.mean()) if wd.shape[0] > 1 else 0.0,
        "enc_dec_misalignment": float((1 - (ue * un).sum(1)).mean()),
        "ev_control": -rd.explained_variance,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--quick", action="store_true", help="fewer SAEs and samples (a smoke test)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--analyse-only", action="store_true", help="re-analyse the SAEs stored in OUT/results.json")
    a = ap.parse_args()
    if a.analyse_only:
        obj = json.loads((a.out / "results.json").read_text())
        meta, rows = obj["meta"], obj["saes"]
        table = analyse(rows, meta["n_boot"], meta["seed"])
        atomic_write_json(a.out / "results.json", {"meta": meta, "saes": rows, "audit": table})
        atomic_write_text(a.out / "results.md", to_markdown(meta, rows, table))
        plot(a.out / "proxy_validation.png", rows, table)
        print(to_markdown(meta, rows, table))
        return
    torch.set_num_threads(1)  # tiny matmuls: one thread is ~10x faster than two on a shared CPU
    t0 = time.time()
    m, d, q, corr = 24, 32, 0.06, 0.7
    widths = [12, 24, 36] if not a.quick else [12, 24]
    ks = [1, 2, 3, 4, 6] if not a.quick else [1, 3]
    seeds = [0, 1] if not a.quick else [0]
    samples = 150_000 if not a.quick else 20_000
    fd, gen = make_data(m, d, q, corr, a.seed)
    torch.manual_seed(a.seed + 1)
    x = fd(gen.sample(20_000)).detach()
    concepts = fd.feature_vectors.detach()
    rows = []
    for w in widths:
        for k in ks:
            for sd in seeds:
                sae = train_one(fd, gen, d, w, k, samples, a.seed + 1000 * sd + 100 * w + k)
                r = {"width": w, "k": k, "seed": sd, **measure(sae, x, concepts)}
                rows.append(r)
                print(
                    f"width {w:3d} k {k} seed {sd}: R {r['rate']:.2f} D {r['distortion']:.4f} P {r['P_true']:.3f} "
                    f"[{time.time() - t0:.0f} s]",
                    flush=True,
                )
    nb = 1000 if not a.quick else 100
    table = analyse(rows, nb, a.seed)
    meta = {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} CPU, Python {platform.python_version()}, torch {torch.__version__}",
        "dgp": {"m": m, "d": d, "q": q, "pair_correlation": corr, "magnitudes": "1.0 +- 0.1", "orthogonal": True},
        "sweep": {
            "architecture": "topk (SAELens TopKTrainingSAE, train_toy_sae)",
            "widths": widths,
            "k": ks,
            "seeds": seeds,
            "training_samples": samples,
            "batch_size": 512,
            "lr": 3e-3,
        },
        "eval_samples": 20_000,
        "n_boot": nb,
        "n_perm": nb,
        "seed": a.seed,
        "seconds": round(time.time() - t0, 1),
    }
    atomic_write_json(a.out / "results.json", {"meta": meta, "saes": rows, "audit": table})
    atomic_write_text(a.out / "results.md", to_markdown(meta, rows, table))
    plot(a.out / "proxy_validation.png", rows, table)
    print(to_markdown(meta, rows, table))


def _audit_rows(rows, nb: int, seed: int, group: str) -> list[dict]:
    R = np.array([r["rate"] for r in rows])
    D = np.array([r["distortion"] for r in rows])
    P = np.array([r["P_true"] for r in rows])
    out = []
    for name in ["P_true"] + PROXIES:
        s = np.array([r[name] for r in rows])
        res = audit_proxy(R, D, s, n_boot=nb, n_perm=nb, seed=seed, allow_no_pairs=True)
        sp = spearmanr(s, P)
        out.append(
            {
                "group": group,
                "proxy": name,
                "spearman_with_P": None if name == "P_true" or not np.isfinite(sp.statistic) else float(sp.statistic),
                "spearman_p": None if name == "P_true" or not np.isfinite(sp.pvalue) else float(sp.pvalue),
                **{
                    k: v
                    for k, v in res.to_dict().items()
                    if k
                    in (
                        "n_saes",
                        "n_dominated_pairs",
                        "violation_rate",
                        "violation_rate_ci",
                        "rank_correlation",
                        "rank_correlation_ci",
                        "p_value_violation",
                        "p_value_rank_correlation",
                    )
                },
                "verdict": res.verdict(),
            }
        )
    return out


def analyse(rows: list[dict], nb: int, seed: int) -> list[dict]:
    """Audit every proxy and the true P on the whole sweep (widths pooled) and within each width."""
    table = _audit_rows(rows, nb, seed, "all widths")
    for w in sorted({r["width"] for r in rows}):
        table += _audit_rows([r for r in rows if r["width"] == w], nb, seed, f"width {w}")
    return table


def _f(x, s=".2f"):
    return "n/a" if x is None else format(x, s)


def to_markdown(meta, rows, table) -> str:
    lines = [
        "# Proxy validation on synthetic sweeps (true P known)\n",
        f"Generated {meta['generated']} on {meta['machine']}; {len(rows)} TopK SAEs (widths {meta['sweep']['widths']}, "
        f"K {meta['sweep']['k']}) on m={meta['dgp']['m']} orthonormal features in d={meta['dgp']['d']}, firing "
        f"q={meta['dgp']['q']}, pairs correlated {meta['dgp']['pair_correlation']}; {meta['seconds']} s.\n",
        "| SAEs | proxy | Spearman with true P | V [95% CI] | rho [95% CI] | p(V) | pairs | verdict |",
        "|---|---|---:|---|---|---:|---:|---|",
    ]
    for t in table:
        vci = t["violation_rate_ci"]
        rci = t["rank_correlation_ci"]
        v = _f(t["violation_rate"]) + ("" if not vci else f" [{vci[0]:.2f}, {vci[1]:.2f}]")
        rho = _f(t["rank_correlation"], "+.2f") + ("" if not rci else f" [{rci[0]:+.2f}, {rci[1]:+.2f}]")
        sp = (
            "(the truth)"
            if t["proxy"] == "P_true"
            else "n/a"
            if t["spearman_with_P"] is None
            else f"{t['spearman_with_P']:+.2f} (p={_f(t['spearman_p'], '.3f')})"
        )
        lines.append(
            f"| {t['group']} | {t['proxy']} | {sp} | {v} | {rho} | {_f(t['p_value_violation'], '.3f')} | "
            f"{t['n_dominated_pairs']} | {t['verdict']} |"
        )
    lines += [
        "",
        "| width | k | seed | R (L0) | D | EV | P true | dec_redundancy | coactivation | enc_dec_misalignment |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['width']} | {r['k']} | {r['seed']} | {r['rate']:.2f} | {r['distortion']:.4f} | "
            f"{r['explained_variance']:.3f} | "
            f"{r['P_true']:.3f} | {r['dec_redundancy']:.3f} | {r['coactivation']:.3f} | "
            f"{r['enc_dec_misalignment']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(path: Path, rows, table) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    P = np.array([r["P_true"] for r in rows])
    fig, axes = plt.subplots(1, len(PROXIES), figsize=(3.2 * len(PROXIES), 3.0))
    for ax, name in zip(axes, PROXIES):
        s = np.array([r[name] for r in rows])
        for w, mk in zip(sorted({r["width"] for r in rows}), "osd^"):
            sel = np.array([r["width"] == w for r in rows])
            ax.scatter(P[sel], s[sel], marker=mk, label=f"width {w}")
        t = next(t for t in table if t["proxy"] == name and t["group"] == "all widths")
        ax.set_title(f"{name}\nSpearman {_f(t['spearman_with_P'], '+.2f')}, V {_f(t['violation_rate'])}", fontsize=8)
        ax.set_xlabel("true P", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_save(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    main()

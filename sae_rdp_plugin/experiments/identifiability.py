"""The toy identifiability experiments of the WSAE paper (THEORY.md section 7), vectorised.

Toy model
---------
Ground-truth features x in R^n (n = 200): each coordinate is 0 with probability S, else Uniform(0, 1),
independently. The model sees the superposed x_p = W_p x in R^{n_p} (n_p = 20). A tied SAE with n_m
latents encodes x_m = sigma(W_m x_p) and reconstructs x_hat_p = W_m^T x_m; it is trained on

    L_SAE(W_m) = E || Gamma (x_p - W_m^T sigma(W_m x_p)) ||^2,     Gamma = diag(gamma),

with gamma = 1 (uniform SAE) or gamma_i = s_i^alpha, s_i = Var(x_p,i), mean(gamma^2) = 1 (WSAE).
CHOICE ``gamma_rule="inverse_variance"`` (toy only) uses gamma_i = s_i^(-alpha) instead: in this toy
model variance grows with superposition, so this is the paper's principle (larger weights on the
monosemantic dims) expressed through the same statistic.
sigma is one of: none (identity), relu, topk (k = ``topk_k``, ReLU on the kept values), jumprelu
(z * 1[z > threshold], fixed threshold), and relu_bias = ReLU(W_m x_p + b) with a learned encoder bias
(not in the paper's formulation; added because with n > 2 n_p the paper's non-positive-interference
assumption cannot hold, and a bias is what lets a ReLU latent ignore weakly aligned features).

W_p (CHOICE ``wp_init``): "random" (default) uses random unit columns; "tms" trains Elhage et al.'s
toy model of superposition, x' = ReLU(W^T W x + b), at sparsity ``tms_sparsity``. The paper assumes
non-positive interference W_p[:,i]^T W_p[:,j] <= 0 (i != j), but at most 2 n_p = 40 vectors in R^20
can have pairwise non-positive inner products, so with n = 200 it cannot hold for either choice
(TMS gives about 45% non-positive pairs, random about 50%). "mixed" makes half the input dims
monosemantic (dim i = feature i, i < n_p/2) and lets the other half superpose the remaining features:
the setting where per-dimension reweighting can matter (mcc_mono reports MCC on those n_p/2 features).
W_p is fixed per seed and shared by every S, sigma, n_m and alpha,
so that each comparison changes one thing.

Metrics (per trained SAE)
-------------------------
* feats_per_latent: for each latent j, the number of ground-truth features i whose one-hot input
  activates it, #{i : sigma(W_m W_p e_i)_j > tol}; averaged over live latents (count >= 1). Ideal 1.
  (For TopK it is mechanically about k n / live, since every input switches on k latents.)
* feats_per_latent_rel: the same count with "activates" meaning at least ``rel_tol`` (CHOICE 0.1) of
  that input's largest latent activation, which ignores TopK's and ReLU's weak secondary responses.
* mcc: ``sae_lens.synthetic.mean_correlation_coefficient`` between the rows of W_m (the SAE's atoms,
  tied) and the columns of W_p (true directions), Hungarian-matched mean |cos|.
* loss_sae: unweighted E||x_p - x_hat_p||^2 (and loss_sae_weighted with the SAE's own gamma).
* loss_gt: E||x - Pi x_m||^2, Pi the 0/1 matching of latents to features from the same Hungarian
  assignment (unmatched features predicted as 0). At W_m = W_p^T, Pi = I.
* gap: with e = x - sigma(W_p^T W_p x) (the SAE at W_m = W_p^T), Theorem 4/5 gives
  L_SAE - L_GT = E[e^T (W_p^T Gamma^2 W_p - I) e]. We estimate L_SAE - L_GT at W_m = W_p^T by Monte
  Carlo on one sample set and the closed-form expectation on an independent one, and also report the
  gap of the trained SAE, loss_sae_weighted - loss_gt.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.wsae.gamma import check_alpha, gamma_from_variance

ACTIVATIONS = ("none", "relu", "relu_bias", "topk", "jumprelu")


@dataclass
class ToyConfig:
    """One experiment grid. Every combination of (sparsities x activations x n_ms x alphas x seeds)
    is trained, vectorised within each (activation, n_m) group."""

    n: int = 200
    n_p: int = 20
    sparsities: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)
    activations: tuple[str, ...] = ACTIVATIONS
    n_ms: tuple[int, ...] = (200,)
    alphas: tuple[float, ...] = (0.0, 0.5, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 1500
    batch: int = 512
    lr: float = 3e-3
    topk_k: int = 2
    jumprelu_threshold: float = 0.1
    wp_init: str = "random"
    tms_sparsity: float = 0.99
    tms_steps: int = 2000
    eval_samples: int = 8192
    tol: float = 1e-6
    rel_tol: float = 0.1
    threads: int = 1
    gamma_rule: str = "variance"
    device: str = "cpu"

    def validate(self) -> None:
        for a in self.activations:
            if a not in ACTIVATIONS:
                raise SaeRdpError(f"unknown activation {a!r}; valid: {', '.join(ACTIVATIONS)}")
        for s in self.sparsities:
            if not 0 <= s < 1:
                raise SaeRdpError(f"sparsity S must be in [0, 1), got {s}")
        for a in self.alphas:
            check_alpha(a)
        if self.wp_init not in ("tms", "random", "mixed"):
            raise SaeRdpError(f"wp_init must be 'tms', 'random' or 'mixed', got {self.wp_init!r}")
        if min(self.n_ms) <= 0 or self.n <= 0 or self.n_p <= 0 or self.steps <= 0 or self.batch <= 0:
            raise SaeRdpError("n, n_p, n_ms, steps and batch must be positive")
        if self.gamma_rule not in ("variance", "inverse_variance"):
            raise SaeRdpError(f"gamma_rule must be 'variance' or 'inverse_variance', got {self.gamma_rule!r}")
        if self.topk_k <= 0:
            raise SaeRdpError(f"topk_k must be positive, got {self.topk_k}")


# ------------------------------------------------------------------------------------ data / model


def sample_features(
    sparsity: torch.Tensor, batch: int, n: int, gen: torch.Generator, device: str = "cpu"
) -> torch.Tensor:
    """x of shape [M, batch, n]: 0 with probability S_m, else Uniform(0, 1)."""
    M = sparsity.shape[0]
    p = (1 - sparsity).view(M, 1, 1)
    u = torch.rand(M, batch, n, generator=gen, device=device)
    # one uniform per entry: u < 1 - S fires, and then u / (1 - S) is Uniform(0, 1) and independent of firing
    return torch.where(u < p, u / p, torch.zeros((), device=device))


def apply_activation(z: torch.Tensor, kind: str, k: int = 2, threshold: float = 0.1) -> torch.Tensor:
    """sigma over the last dimension: none | relu | topk (top-k values, ReLU'd) | jumprelu (z 1[z>t])."""
    if kind == "none":
        return z
    if kind in ("relu", "relu_bias"):
        return torch.relu(z)
    if kind == "topk":
        kk = min(k, z.shape[-1])
        vals, idx = torch.topk(z, kk, dim=-1)
        return torch.zeros_like(z).scatter(-1, idx, torch.relu(vals))
    if kind == "jumprelu":
        return z * (z > threshold).to(z.dtype)
    raise SaeRdpError(f"unknown activation {kind!r}; valid: {', '.join(ACTIVATIONS)}")


def make_wp(seeds: list[int], cfg: ToyConfig) -> torch.Tensor:
    """W_p for each seed, shape [len(seeds), n_p, n] (see module docstring, CHOICE wp_init)."""
    M = len(seeds)
    ws = []
    for s in seeds:
        g = torch.Generator().manual_seed(10_000 + s)
        w = torch.randn(cfg.n_p, cfg.n, generator=g)
        ws.append(w / w.norm(dim=0, keepdim=True))
    W = torch.stack(ws).to(cfg.device)
    if cfg.wp_init == "random":
        return W
    if cfg.wp_init == "mixed":
        # half of the input dims are monosemantic (dim i carries feature i alone), the other half
        # superpose the remaining n - n_p/2 features with random unit columns
        h = cfg.n_p // 2
        Wm = torch.zeros_like(W)
        for j, s in enumerate(seeds):
            g = torch.Generator().manual_seed(30_000 + s)
            Wm[j, torch.arange(h), torch.arange(h)] = 1.0
            rest = torch.randn(cfg.n_p - h, cfg.n - h, generator=g)
            Wm[j, h:, h:] = rest / rest.norm(dim=0, keepdim=True)
        return Wm
    W = (W * 0.5).requires_grad_(True)
    b = torch.zeros(M, 1, cfg.n, device=cfg.device, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=1e-2)
    gen = torch.Generator(device=cfg.device).manual_seed(20_000 + sum(seeds))
    S = torch.full((M,), cfg.tms_sparsity, device=cfg.device)
    for _ in range(cfg.tms_steps):
        x = sample_features(S, 1024, cfg.n, gen, cfg.device)
        h = torch.bmm(x, W.transpose(1, 2))  # [M,B,n_p]
        xr = torch.relu(torch.bmm(h, W) + b)
        loss = (x - xr).pow(2).sum(-1).mean(-1).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return W.detach()


def wp_stats(W: torch.Tensor) -> dict[str, float]:
    """Column norms and the sign of the interference W_p[:,i]^T W_p[:,j] (i != j) of one W_p [n_p, n]."""
    G = W.T @ W
    n = G.shape[0]
    off = G[~torch.eye(n, dtype=torch.bool, device=G.device)]
    norms = W.norm(dim=0)
    return {
        "col_norm_mean": float(norms.mean()),
        "col_norm_min": float(norms.min()),
        "frac_cols_norm_gt_0.5": float((norms > 0.5).float().mean()),
        "frac_interference_nonpositive": float((off <= 1e-6).float().mean()),
        "mean_interference": float(off.mean()),
    }


def input_gamma(Wp: torch.Tensor, alpha: float, S: float, cfg: ToyConfig, gen: torch.Generator) -> torch.Tensor:
    """gamma_i = Var(x_p,i)^alpha normalised to mean(gamma^2) = 1, from eval_samples float64 samples."""
    x = sample_features(torch.tensor([S], device=cfg.device), cfg.eval_samples, cfg.n, gen, cfg.device)[0]
    xp = (x @ Wp.T).double()
    var = xp.var(0, unbiased=False)
    if cfg.gamma_rule == "inverse_variance":  # toy-only: gamma_i = s_i^(-alpha), the paper's principle when
        # variance measures superposition (more weight on the monosemantic, low-variance dims)
        var = 1.0 / var.clamp(min=1e-12)
    return gamma_from_variance(var.cpu(), alpha).to(torch.float32).to(cfg.device)


def train_tied_saes(
    Wp: torch.Tensor,
    S: torch.Tensor,
    gamma: torch.Tensor,
    init: torch.Tensor,
    cfg: ToyConfig,
    activation: str,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train M tied SAEs at once. Wp [M,n_p,n], S [M], gamma [M,n_p], init [M,n_m,n_p] -> (W_m [M,n_m,n_p],
    b [M,n_m]; b = 0 unless activation is relu_bias). The per-model losses are summed, so (Adam being
    elementwise) each model trains independently."""
    Wm = init.clone().requires_grad_(True)
    b = torch.zeros(init.shape[0], 1, init.shape[1], device=init.device, requires_grad=activation == "relu_bias")
    opt = torch.optim.Adam([Wm, b] if activation == "relu_bias" else [Wm], lr=cfg.lr)
    g2 = gamma.pow(2).unsqueeze(1)  # [M,1,n_p]
    for _ in range(cfg.steps):
        x = sample_features(S, cfg.batch, cfg.n, gen, cfg.device)
        xp = torch.bmm(x, Wp.transpose(1, 2))
        h = apply_activation(torch.baddbmm(b, xp, Wm.transpose(1, 2)), activation, cfg.topk_k, cfg.jumprelu_threshold)
        rec = torch.bmm(h, Wm)
        loss = (g2 * (xp - rec).pow(2)).sum(-1).mean(-1).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Wm.detach(), b.detach().squeeze(1)


# ------------------------------------------------------------------------------------ metrics


def feats_per_latent(
    Wm: torch.Tensor, Wp: torch.Tensor, activation: str, cfg: ToyConfig, b: torch.Tensor | None = None
) -> tuple[float, int, float]:
    """(mean over live latents of #features activating it, number of live latents, the same mean with
    the relative threshold rel_tol) for one SAE."""
    Z = (Wm @ Wp).T  # [n, n_m]: row i = pre-activations for input e_i
    if b is not None:
        Z = Z + b
    A = apply_activation(Z, activation, cfg.topk_k, cfg.jumprelu_threshold)
    counts = (A > cfg.tol).sum(0)  # per latent
    live = counts > 0
    if not bool(live.any()):
        return 0.0, 0, 0.0
    strong = A > cfg.rel_tol * A.max(dim=1, keepdim=True).values.clamp(min=cfg.tol)
    counts_rel = (strong & (A > cfg.tol)).sum(0)
    live_rel = counts_rel > 0
    return float(counts[live].float().mean()), int(live.sum()), float(counts_rel[live_rel].float().mean())


def _assignment(Wm: torch.Tensor, Wp: torch.Tensor) -> tuple[Any, Any]:
    from sae_lens.util import cosine_similarities
    from scipy.optimize import linear_sum_assignment

    cos = cosine_similarities(Wm.float().cpu(), Wp.T.float().cpu()).abs().numpy()
    return linear_sum_assignment(1 - cos)


@torch.no_grad()
def evaluate_sae(
    Wm: torch.Tensor,
    Wp: torch.Tensor,
    gamma: torch.Tensor,
    S: float,
    activation: str,
    cfg: ToyConfig,
    gen: torch.Generator,
    b: torch.Tensor | None = None,
) -> dict[str, float]:
    from sae_lens.synthetic import mean_correlation_coefficient

    fpl, n_live, fpl_rel = feats_per_latent(Wm, Wp, activation, cfg, b)
    mcc = mean_correlation_coefficient(Wm.float().cpu(), Wp.T.float().cpu())
    h = cfg.n_p // 2
    mcc_mono = (
        mean_correlation_coefficient(Wm.float().cpu(), Wp.T[:h].float().cpu())
        if cfg.wp_init == "mixed"
        else float("nan")
    )
    rgen = torch.Generator().manual_seed(99)
    mcc_random = mean_correlation_coefficient(torch.randn(Wm.shape, generator=rgen), Wp.T.float().cpu())
    rows, cols = _assignment(Wm, Wp)
    x = sample_features(torch.tensor([S], device=cfg.device), cfg.eval_samples, cfg.n, gen, cfg.device)[0].double()
    Wp64, Wm64, g2 = Wp.double(), Wm.double(), gamma.double().pow(2)
    xp = x @ Wp64.T
    pre = xp @ Wm64.T + (b.double() if b is not None else 0.0)
    xm = apply_activation(pre, activation, cfg.topk_k, cfg.jumprelu_threshold)
    rec = xm @ Wm64
    loss_sae = float((xp - rec).pow(2).sum(-1).mean())
    loss_sae_w = float((g2 * (xp - rec).pow(2)).sum(-1).mean())
    xhat = torch.zeros_like(x)
    xhat[:, torch.as_tensor(cols)] = xm[:, torch.as_tensor(rows)]
    loss_gt = float((x - xhat).pow(2).sum(-1).mean())
    return {
        "feats_per_latent": fpl,
        "feats_per_latent_rel": fpl_rel,
        "live_latents": n_live,
        "mcc": float(mcc),
        "mcc_random_baseline": float(mcc_random),
        **({"mcc_mono": float(mcc_mono)} if cfg.wp_init == "mixed" else {}),
        "loss_sae": loss_sae,
        "loss_sae_weighted": loss_sae_w,
        "loss_gt": loss_gt,
        "gap_trained": loss_sae_w - loss_gt,
    }


@torch.no_grad()
def gap_at_ground_truth(
    Wp: torch.Tensor, gamma: torch.Tensor, S: float, activation: str, cfg: ToyConfig, gen: torch.Generator
) -> dict[str, float]:
    """At W_m = W_p^T: measured L_SAE - L_GT (sample set 1) vs the closed form E[e^T (W_p^T G^2 W_p - I) e]
    (independent sample set 2), both float64 Monte Carlo with standard errors."""
    Wp64, g2 = Wp.double(), gamma.double().pow(2)
    out: dict[str, float] = {}
    for tag in ("measured", "closed_form"):
        x = sample_features(torch.tensor([S], device=cfg.device), cfg.eval_samples, cfg.n, gen, cfg.device)[0].double()
        xp = x @ Wp64.T
        xm = apply_activation(xp @ Wp64, activation, cfg.topk_k, cfg.jumprelu_threshold)  # W_m = W_p^T
        e = x - xm
        if tag == "measured":
            l_sae = (g2 * (xp - xm @ Wp64.T).pow(2)).sum(-1)
            l_gt = e.pow(2).sum(-1)
            d = l_sae - l_gt
            out["gt_loss_sae"] = float(l_sae.mean())
            out["gt_loss_gt"] = float(l_gt.mean())
        else:
            Mmat = Wp64.T @ torch.diag(g2) @ Wp64 - torch.eye(cfg.n, dtype=torch.float64, device=Wp.device)
            d = ((e @ Mmat) * e).sum(-1)
        out[f"gap_{tag}"] = float(d.mean())
        out[f"gap_{tag}_se"] = float(d.std() / math.sqrt(d.shape[0]))
    return out


# ------------------------------------------------------------------------------------ runner


def run_grid(cfg: ToyConfig, progress: bool = True, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Train and evaluate every SAE of the grid; returns {"config", "wp", "rows", "seconds"}."""
    cfg.validate()
    t0 = time.time()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run_grid(cfg, progress, t0, checkpoint)
    finally:
        torch.set_num_threads(old_threads)


def _run_grid(cfg: ToyConfig, progress: bool, t0: float, checkpoint: str | Path | None) -> dict[str, Any]:
    import json

    from sae_rdp_plugin.io import atomic_write_json

    done: dict[str, list[dict[str, Any]]] = {}
    if checkpoint is not None and Path(checkpoint).exists():
        ck = json.loads(Path(checkpoint).read_text())
        if ck.get("config") == json.loads(json.dumps(asdict(cfg))):
            done = ck["groups"]
    seeds = list(cfg.seeds)
    Wp_all = make_wp(seeds, cfg)
    wp_info = {str(s): wp_stats(Wp_all[i]) for i, s in enumerate(seeds)}
    # gamma per (S, seed, alpha) from an independent sample (shared by all activations / widths)
    ggen = torch.Generator(device=cfg.device).manual_seed(777)
    gammas: dict[tuple[float, int, float], torch.Tensor] = {}
    for S, (si, s), a in itertools.product(cfg.sparsities, enumerate(seeds), cfg.alphas):
        gammas[(S, s, a)] = input_gamma(Wp_all[si], a, S, cfg, ggen)
    rows: list[dict[str, Any]] = []
    groups = list(itertools.product(cfg.activations, cfg.n_ms))
    it = groups
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(groups, desc="identifiability groups (activation, n_m)")
    gap_cache: dict[tuple[float, int, float, str], dict[str, float]] = {}
    for activation, n_m in it:
        gkey = f"{activation}/{n_m}"
        if gkey in done:
            rows.extend(done[gkey])
            continue
        grows: list[dict[str, Any]] = []
        combos = list(itertools.product(cfg.sparsities, range(len(seeds)), cfg.alphas))
        S = torch.tensor([c[0] for c in combos], device=cfg.device)
        Wp = Wp_all[torch.tensor([c[1] for c in combos])]
        gamma = torch.stack([gammas[(c[0], seeds[c[1]], c[2])] for c in combos])
        inits = []
        for Sv, si, _a in combos:  # same init for every alpha of a (S, seed): paired comparison
            g = torch.Generator().manual_seed(
                int(round(Sv * 10_000)) * 1_000_003 + seeds[si] * 7919 + n_m * 31 + ACTIVATIONS.index(activation)
            )
            inits.append(torch.randn(n_m, cfg.n_p, generator=g) / math.sqrt(cfg.n_p))
        init = torch.stack(inits).to(cfg.device)
        tgen = torch.Generator(device=cfg.device).manual_seed(1234 + n_m + ACTIVATIONS.index(activation))
        Wm, bm = train_tied_saes(Wp, S, gamma, init, cfg, activation, tgen)
        egen = torch.Generator(device=cfg.device).manual_seed(4321)
        for m, (Sv, si, a) in enumerate(combos):
            met = evaluate_sae(
                Wm[m], Wp[m], gamma[m], Sv, activation, cfg, egen, bm[m] if activation == "relu_bias" else None
            )
            key = (Sv, si, a, activation)
            if key not in gap_cache:
                gap_cache[key] = gap_at_ground_truth(Wp[m], gamma[m], Sv, activation, cfg, egen)
            grows.append(
                {"activation": activation, "n_m": n_m, "S": Sv, "seed": seeds[si], "alpha": a, **met, **gap_cache[key]}
            )
        rows.extend(grows)
        done[gkey] = grows
        if checkpoint is not None:  # group-level checkpoint: a killed run resumes after the last group
            atomic_write_json(checkpoint, {"config": asdict(cfg), "groups": done})
    return {"config": asdict(cfg), "wp": wp_info, "rows": rows, "seconds": round(time.time() - t0, 1)}


def aggregate(
    rows: list[dict[str, Any]],
    metrics: tuple[str, ...] = (
        "feats_per_latent",
        "feats_per_latent_rel",
        "mcc",
        "loss_sae",
        "loss_gt",
        "gap_trained",
        "gap_measured",
        "gap_closed_form",
    ),
) -> list[dict[str, Any]]:
    """Mean and std over seeds for every (activation, n_m, S, alpha)."""
    keys = sorted(
        {(r["activation"], r["n_m"], r["S"], r["alpha"]) for r in rows},
        key=lambda k: (ACTIVATIONS.index(k[0]), k[1], k[2], k[3]),
    )
    out = []
    for k in keys:
        rs = [r for r in rows if (r["activation"], r["n_m"], r["S"], r["alpha"]) == k]
        agg: dict[str, Any] = {"activation": k[0], "n_m": k[1], "S": k[2], "alpha": k[3], "n_seeds": len(rs)}
        extra = tuple(m for m in ("mcc_random_baseline", "mcc_mono") if all(m in r for r in rs))
        for mname in metrics + extra:
            v = torch.tensor([float(r[mname]) for r in rs], dtype=torch.float64)
            agg[mname] = float(v.mean())
            agg[mname + "_std"] = float(v.std()) if len(rs) > 1 else 0.0
        out.append(agg)
    return out


QUICK = dict(
    sparsities=(0.6, 0.99),
    activations=("relu", "topk"),
    n_ms=(200,),
    alphas=(0.0, 1.0),
    seeds=(0, 1),
    steps=150,
    batch=128,
    eval_samples=1024,
)
#: the committed grids (experiments/identifiability): S sweep x 5 activations at n_m = n, and a width sweep
FULL_SPARSITY = dict(sparsities=(0.2, 0.5, 0.8, 0.9, 0.95, 0.99), steps=800, batch=128, eval_samples=4096)
MIXED_WP = dict(
    sparsities=(0.9, 0.99),
    activations=("relu_bias", "topk"),
    alphas=(0.0, 0.5, 1.0),
    wp_init="mixed",
    steps=800,
    batch=128,
    eval_samples=4096,
)
MIXED_WP_INVERSE = dict(MIXED_WP, gamma_rule="inverse_variance")
FULL_WIDTH = dict(
    sparsities=(0.9, 0.99),
    activations=("relu_bias", "topk"),
    n_ms=(50, 100, 200, 400),
    alphas=(0.0, 1.0),
    steps=800,
    batch=128,
    eval_samples=4096,
)


def grid_configs(quick: bool, only: list[str] | None = None) -> dict[str, ToyConfig]:
    if quick:
        if only:
            raise SaeRdpError(f"grid(s) {list(only)} do not apply to the quick grid: give one or the other")
        return {"quick": ToyConfig(**QUICK)}
    grids = {
        "sparsity_activation": ToyConfig(**FULL_SPARSITY),
        "width": ToyConfig(**FULL_WIDTH),
        "mixed_wp": ToyConfig(**MIXED_WP),
        "mixed_wp_inverse": ToyConfig(**MIXED_WP_INVERSE),
    }
    if only:
        bad = [g for g in only if g not in grids]
        if bad:
            raise SaeRdpError(f"unknown grid(s) {bad}; valid: {', '.join(grids)}")
        grids = {k: v for k, v in grids.items() if k in only}
    return grids


#: the metrics a grid's figures show (``<grid>_<metric>.png``, and ``<grid>_gap.png``)
PLOT_METRICS = ("feats_per_latent", "feats_per_latent_rel", "mcc", "mcc_mono", "loss_gt")


def _json_object(path: Path) -> dict[str, Any] | None:
    import json

    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _has_keys(path: Path, keys: tuple[str, ...]) -> bool:
    obj = _json_object(path)
    return obj is not None and all(k in obj for k in keys)


def output_files(names: list[str]) -> dict[str, Any]:
    """``{file name: test(folder, path) -> bool}`` for every file :func:`run_experiment` writes for the grids
    ``names``: the test says whether an existing file of that name is one this experiment wrote (by content)."""
    tag = "_".join(names)

    def grid_json(keys: tuple[str, ...]):
        return lambda folder, p: _has_keys(p, keys)

    def figure(name: str):
        def test(folder: Path, p: Path) -> bool:
            obj = _json_object(folder / f"{name}.json")
            with open(p, "rb") as f:
                png = f.read(8) == b"\x89PNG\r\n\x1a\n"
            return png and obj is not None and p.name in (obj.get("figures") or [])

        return test

    files: dict[str, Any] = {
        f"RESULTS_{tag}.md": lambda folder, p: p.read_text(errors="replace").startswith("# Identifiability toy"),
        f"summary_{tag}.json": grid_json(("machine", "date", "torch", "grids")),
    }
    for name in names:
        files[f"{name}.json"] = grid_json(("config", "wp", "rows", "seconds"))
        files[f".{name}.checkpoint.json"] = grid_json(("config", "groups"))
        for metric in (*PLOT_METRICS, "gap"):
            files[f"{name}_{metric}.png"] = figure(name)
    return files


def foreign_output_files(out: str | Path, names: list[str]) -> list[Path]:
    """The files in ``out`` that :func:`run_experiment` for the grids ``names`` would overwrite although it
    did not write them (a user's file of the same name)."""
    out = Path(out)
    bad = []
    for fname, ours in output_files(names).items():
        p = out / fname
        if p.exists() or p.is_symlink():
            if not p.is_file() or p.is_symlink() or not ours(out, p):
                bad.append(p)
    return bad


def is_experiment_output(out: str | Path, names: list[str]) -> bool:
    """Whether ``out`` is an earlier output of this experiment (the marker: a summary, grid result or grid
    checkpoint JSON of it, so an interrupted run can resume) in which a run of the grids ``names``
    overwrites only files the experiment wrote (other files are left alone)."""
    out = Path(out)
    marker = (
        any(_has_keys(p, ("machine", "date", "torch", "grids")) for p in out.glob("summary_*.json"))
        or any(_has_keys(p, ("config", "groups")) for p in out.glob(".*.checkpoint.json"))
        or any(_has_keys(p, ("config", "wp", "rows", "seconds")) for p in out.glob("*.json"))
    )
    return marker and not foreign_output_files(out, names)


def _plot(agg: list[dict[str, Any]], name: str, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sae_rdp_plugin.io import atomic_save

    files: list[str] = []
    acts = [a for a in ACTIVATIONS if any(r["activation"] == a for r in agg)]
    alphas = sorted({r["alpha"] for r in agg})
    n_ms = sorted({r["n_m"] for r in agg})
    styles = {
        0.0: ("k", "o", "uniform SAE"),
        0.5: ("tab:orange", "s", "WSAE alpha=0.5"),
        1.0: ("tab:blue", "^", "WSAE alpha=1"),
    }
    if "inverse" in name:
        styles = {0.0: styles[0.0], 0.5: ("tab:orange", "s", "gamma = s^-0.5"), 1.0: ("tab:blue", "^", "gamma = s^-1")}
    xkey = "S" if len({r["S"] for r in agg}) > 2 or len(n_ms) == 1 else "n_m"
    for metric, ylabel in (
        ("feats_per_latent", "true features per live latent (ideal 1)"),
        ("feats_per_latent_rel", "features per latent, >= 10% of max (ideal 1)"),
        ("mcc", "MCC vs true directions"),
        ("mcc_mono", "MCC on the monosemantic-dim features"),
        ("loss_gt", "ground-truth loss E||x - Pi x_m||^2"),
    ):
        if metric not in agg[0]:
            continue
        if xkey == "S":
            panels = [(a, n_ms[0], None) for a in acts]
        else:
            panels = [(a, None, S) for a in acts for S in sorted({r["S"] for r in agg})]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
        for ax, (a, nm, Sv) in zip(axes[0], panels):
            for al in alphas:
                rs = [
                    r
                    for r in agg
                    if r["activation"] == a
                    and r["alpha"] == al
                    and (nm is None or r["n_m"] == nm)
                    and (Sv is None or r["S"] == Sv)
                ]
                rs.sort(key=lambda r: r[xkey])
                c, mk, lab = styles.get(al, (None, "x", f"alpha={al}"))
                ax.errorbar(
                    [r[xkey] for r in rs],
                    [r[metric] for r in rs],
                    yerr=[r[metric + "_std"] for r in rs],
                    color=c,
                    marker=mk,
                    label=lab,
                    capsize=3,
                    ms=4,
                )
            ax.set_title(f"sigma={a}" + (f", S={Sv}" if Sv is not None else ""))
            ax.set_xlabel("sparsity S" if xkey == "S" else "SAE width n_m (n = 200)")
            if xkey == "n_m":
                ax.set_xscale("log")
                ax.minorticks_off()
                ax.set_xticks(n_ms)
                ax.set_xticklabels([str(v) for v in n_ms])
                ax.axvline(200, color="gray", lw=0.6, ls=":")
            if metric.startswith("feats_per_latent"):
                ax.set_yscale("log")
        axes[0][0].set_ylabel(ylabel)
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        fname = f"{name}_{metric}.png"
        atomic_save(out / fname, lambda p: fig.savefig(p, dpi=110, format="png"))
        plt.close(fig)
        files.append(fname)
    # gap: measured vs closed form at W_m = W_p^T
    fig, ax = plt.subplots(figsize=(4, 3.6))
    for al in alphas:
        rs = [r for r in agg if r["alpha"] == al]
        c, mk, lab = styles.get(al, (None, "x", f"alpha={al}"))
        ax.errorbar(
            [r["gap_closed_form"] for r in rs],
            [r["gap_measured"] for r in rs],
            color=c,
            marker=mk,
            ls="",
            label=lab,
            ms=4,
        )
    lims = [
        min(min(r["gap_closed_form"], r["gap_measured"]) for r in agg),
        max(max(r["gap_closed_form"], r["gap_measured"]) for r in agg),
    ]
    ax.plot(lims, lims, color="gray", lw=0.8)
    ax.set_xlabel("closed form E[e^T (W_p^T G^2 W_p - I) e]")
    ax.set_ylabel("measured L_SAE - L_GT at W_m = W_p^T")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fname = f"{name}_gap.png"
    atomic_save(out / fname, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    files.append(fname)
    return files


def _table(agg: list[dict[str, Any]]) -> str:
    lines = [
        "| sigma | n_m | S | alpha | feats/latent | feats/latent (rel.) | MCC | L_SAE | L_GT | gap (trained) | gap at "
        "W_p^T: measured | closed form |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in agg:
        lines.append(
            f"| {r['activation']} | {r['n_m']} | {r['S']} | {r['alpha']} | {r['feats_per_latent']:.2f} ± "
            f"{r['feats_per_latent_std']:.2f} | {r['feats_per_latent_rel']:.2f} ± {r['feats_per_latent_rel_std']:.2f} "
            "| "
            f"{r['mcc']:.3f} ± {r['mcc_std']:.3f}"
            + (f" (mono {r['mcc_mono']:.3f} ± {r['mcc_mono_std']:.3f})" if "mcc_mono" in r else "")
            + f" | {r['loss_sae']:.3f} | {r['loss_gt']:.3f} | {r['gap_trained']:.3f} | "
            f"{r['gap_measured']:.4f} | {r['gap_closed_form']:.4f} |"
        )
    return "\n".join(lines)


def run_experiment(
    out: str | Path,
    quick: bool = False,
    configs: dict[str, ToyConfig] | None = None,
    progress: bool = True,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Run the grid(s), write results JSON (raw rows + aggregates), figures and RESULTS.md to ``out``."""
    import datetime
    import platform

    from sae_rdp_plugin.io import atomic_write_json, atomic_write_text

    out = Path(out)
    configs = configs or grid_configs(quick, only)
    foreign = foreign_output_files(out, list(configs))
    if foreign:
        raise SaeRdpError(f"{foreign[0]} exists and was not written by this experiment; give another output folder")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, CPU)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "grids": {},
    }
    md = [
        f"# Identifiability toy experiments\n\nMachine: {summary['machine']}; date {summary['date']}; torch "
        f"{torch.__version__}.\n"
    ]
    for name, cfg in configs.items():
        res = run_grid(cfg, progress=progress, checkpoint=out / f".{name}.checkpoint.json")
        agg = aggregate(res["rows"])
        figs = _plot(agg, name, out)
        res["aggregate"] = agg
        res["figures"] = figs
        atomic_write_json(out / f"{name}.json", res)
        summary["grids"][name] = {
            "seconds": res["seconds"],
            "n_saes": len(res["rows"]),
            "figures": figs,
            "config": res["config"],
            "wp": res["wp"],
        }
        c = res["config"]
        md.append(
            f"## Grid `{name}` ({len(res['rows'])} SAEs, {res['seconds']} s)\n\n"
            f"n = {c['n']}, n_p = {c['n_p']}, S in {list(c['sparsities'])}, sigma in {list(c['activations'])}, "
            f"n_m in {list(c['n_ms'])}, alpha in {list(c['alphas'])}, seeds {list(c['seeds'])}; {c['steps']} Adam "
            "steps "
            f"(lr {c['lr']}, batch {c['batch']}), TopK k = {c['topk_k']} (a sample has n(1 - S) = "
            + ", ".join(f"{c['n'] * (1 - S):g}" for S in c["sparsities"])
            + " active features on average), JumpReLU threshold "
            f"{c['jumprelu_threshold']}, "
            f"W_p = {c['wp_init']} (TMS at S = {c['tms_sparsity']}, {c['tms_steps']} steps); metrics on "
            f"{c['eval_samples']} "
            f"fresh samples. Mean ± std over seeds.\n\n"
            + "W_p per seed: "
            + "; ".join(
                f"seed {s}: col. norm {v['col_norm_mean']:.2f} (min {v['col_norm_min']:.2f}), non-positive "
                f"interference {100 * v['frac_interference_nonpositive']:.0f}%"
                for s, v in res["wp"].items()
            )
            + "\n\n"
            + "\n".join(f"![{f}]({f})" for f in figs)
            + "\n\n"
            + _table(agg)
            + "\n"
        )
    tag = "_".join(configs)
    atomic_write_text(out / f"RESULTS_{tag}.md", "\n".join(md))
    atomic_write_json(out / f"summary_{tag}.json", summary)
    return summary


def replot(out: str | Path, name: str) -> list[str]:
    """Redraw the figures of a finished grid from its JSON (no retraining)."""
    import json

    out = Path(out)
    res = json.loads((out / f"{name}.json").read_text())
    return _plot(res["aggregate"], name, out)

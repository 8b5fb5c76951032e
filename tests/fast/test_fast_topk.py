"""The fast TopK/BatchTopK step against SAELens's own training SAEs + SAETrainer (the reference path)
and against float64 autograd. Small shapes, CPU."""

from __future__ import annotations

import copy

import pytest
import torch

import sae_rdp_plugin  # noqa: F401  (registers weighted_*)
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.fast.step import FastTopKTrainer, install_fast_step

sae_lens = pytest.importorskip("sae_lens")
from sae_lens import SAE  # noqa: E402
from sae_lens.config import SAETrainerConfig  # noqa: E402
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig  # noqa: E402
from sae_lens.saes.sae import TrainStepInput  # noqa: E402
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig  # noqa: E402
from sae_lens.training.sae_trainer import SAETrainer  # noqa: E402

from sae_rdp_plugin.wsae.architectures import (  # noqa: E402
    WeightedBatchTopKTrainingSAE,
    WeightedBatchTopKTrainingSAEConfig,
    WeightedTopKTrainingSAE,
    WeightedTopKTrainingSAEConfig,
)

D_IN, D_SAE, K = 12, 48, 4


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


def _make(kind: str, weighted: bool, dtype: str, rescale: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    kw = dict(d_in=D_IN, d_sae=D_SAE, k=K, dtype=dtype, rescale_acts_by_decoder_norm=rescale)
    if kind == "topk":
        sae = (
            WeightedTopKTrainingSAE(WeightedTopKTrainingSAEConfig(alpha=1.0, **kw))
            if weighted
            else TopKTrainingSAE(TopKTrainingSAEConfig(**kw))
        )
    else:
        sae = (
            WeightedBatchTopKTrainingSAE(WeightedBatchTopKTrainingSAEConfig(alpha=1.0, **kw))
            if weighted
            else BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**kw))
        )
    with torch.no_grad():  # move off the tied/normalised init so every gradient term is exercised
        sae.W_dec.mul_(torch.rand(D_SAE, 1, dtype=sae.W_dec.dtype) * 3 + 0.5)
        sae.b_enc.normal_(0, 0.05)
        sae.b_dec.normal_(0, 0.1)
    if weighted:
        sae.set_gamma(torch.rand(D_IN) + 0.2)
    return sae


def _ref_grads(sae, x, dead):
    sae.zero_grad()
    out = sae.training_forward_pass(
        TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False)
    )
    out.loss.backward()
    out.losses = {k: v.detach() for k, v in out.losses.items()}
    return out, [sae.W_enc.grad.t(), sae.b_enc.grad, sae.W_dec.grad, sae.b_dec.grad]


def _assert_bf16_close(sae, x, dead, **cfg) -> None:
    """The bf16 fast step's gradients, and SAELens's own under bf16 autocast, are both within 3e-2
    (relative) of SAELens's float64 gradients (the reference path is no closer in kind)."""
    _, ref64 = _ref_grads(copy.deepcopy(sae).to(torch.float64), x.double(), dead)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, refbf = _ref_grads(sae, x, dead)
    tr = FastTopKTrainer.from_training_sae(sae, bf16=True, **cfg)
    _, grads, _, _ = tr.loss_and_grads(x, dead)
    for g, r64, rbf in zip(grads, ref64, refbf):
        assert _rel(g, r64) < 3e-2
        assert _rel(rbf, r64) < 3e-2


@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("with_dead", [False, True])
@pytest.mark.parametrize("impl", ["embedding_bag", "csr"])
def test_grads_match_float64_autograd(kind, weighted, with_dead, impl):
    """float64 fast step == float64 SAELens autograd (to rounding); float32 fast step within 1e-5 of it."""
    sae = _make(kind, weighted, "float64")
    x = torch.randn(32, D_IN, dtype=torch.float64) * (torch.rand(D_IN, dtype=torch.float64) + 0.5)
    dead = None
    if with_dead:
        dead = torch.zeros(D_SAE, dtype=torch.bool)
        dead[torch.randperm(D_SAE)[:10]] = True
    ref_out, ref = _ref_grads(sae, x, dead)
    if with_dead:
        assert float(ref_out.losses["auxiliary_reconstruction_loss"]) > 0
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        tr = FastTopKTrainer.from_training_sae(sae, dtype=dtype, weight_grad_impl=impl)
        losses, grads, _, _ = tr.loss_and_grads(x.to(dtype), dead)
        assert abs(float(losses["mse_loss"]) - float(ref_out.losses["mse_loss"])) <= tol * float(
            ref_out.losses["mse_loss"]
        )
        if with_dead:
            ra = float(ref_out.losses["auxiliary_reconstruction_loss"])
            assert abs(float(losses["auxiliary_reconstruction_loss"]) - ra) <= tol * ra
        for name, g, r in zip(["W_enc", "b_enc", "W_dec", "b_dec"], grads, ref):
            assert _rel(g, r) < tol, (dtype, name, _rel(g, r))


@pytest.mark.parametrize("aux_impl", ["dense", "sparse"])
@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
@pytest.mark.parametrize("weighted", [False, True])
def test_aux_impls_match_float64_autograd(aux_impl, kind, weighted):
    """Both dead-latent aux-loss implementations (forced) == float64 SAELens autograd, with a few dead
    latents (k_aux = n_dead, scale < 1), many (k_aux = d_in/2 < n_dead) and all of them."""
    sae = _make(kind, weighted, "float64", seed=3)
    x = torch.randn(32, D_IN, dtype=torch.float64) * (torch.rand(D_IN, dtype=torch.float64) + 0.5)
    for n_dead in (3, 30, D_SAE):
        dead = torch.zeros(D_SAE, dtype=torch.bool)
        dead[torch.randperm(D_SAE)[:n_dead]] = True
        ref_out, ref = _ref_grads(sae, x, dead)
        ra = float(ref_out.losses["auxiliary_reconstruction_loss"])
        assert ra > 0
        tr = FastTopKTrainer.from_training_sae(sae, dtype=torch.float64, aux_impl=aux_impl)
        assert tr._aux_dense(min(n_dead, D_IN // 2)) == (aux_impl == "dense")
        losses, grads, _, _ = tr.loss_and_grads(x, dead)
        assert abs(float(losses["auxiliary_reconstruction_loss"]) - ra) <= 1e-10 * ra
        for name, g, r in zip(["W_enc", "b_enc", "W_dec", "b_dec"], grads, ref):
            assert _rel(g, r) < 1e-10, (n_dead, name, _rel(g, r))


@pytest.mark.parametrize("aux_impl", ["dense", "sparse"])
def test_bf16_aux_close_to_float64(aux_impl):
    """bf16 fast step with the aux loss (half the latents dead) vs float64 SAELens autograd and vs SAELens
    under bf16 autocast: gradients agree to bf16 accuracy."""
    sae = _make("topk", True, "float32", seed=4)
    x = torch.randn(64, D_IN)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[::2] = True
    _assert_bf16_close(sae, x, dead, aux_impl=aux_impl)


def test_no_rescale_and_no_b_dec_input():
    sae = _make("topk", True, "float64", rescale=False)
    sae.cfg.apply_b_dec_to_input = False
    x = torch.randn(16, D_IN, dtype=torch.float64)
    _, ref = _ref_grads(sae, x, None)
    tr = FastTopKTrainer.from_training_sae(sae, dtype=torch.float64)
    _, grads, _, _ = tr.loss_and_grads(x, None)
    for g, r in zip(grads, ref):
        assert _rel(g, r) < 1e-10


class _Provider:
    def __init__(self, batches):
        self.batches = batches
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b


@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
@pytest.mark.parametrize("weighted", [False, True])
def test_steps_match_saelens_trainer(kind, weighted):
    """Several full steps (loss, clip_grad_norm_, Adam, dead-latent stats, BatchTopK threshold) through
    SAELens's SAETrainer.step vs the fast step, float64, with dead latents after step 2."""
    sae = _make(kind, weighted, "float64")
    torch.manual_seed(1)
    batches = [torch.randn(32, D_IN, dtype=torch.float64) * 2 for _ in range(6)]
    fast_sae = copy.deepcopy(sae)
    tcfg = SAETrainerConfig(
        total_training_samples=32 * 6, train_batch_size_samples=32, lr=3e-3, lr_end=3e-3, dead_feature_window=1
    )
    trainer = SAETrainer(tcfg, sae, _Provider(batches))
    tr = FastTopKTrainer.from_training_sae(fast_sae, lr=3e-3, dead_feature_window=1, dtype=torch.float64)
    n_aux = 0
    for b in batches:
        ref = trainer.step(b)
        trainer.n_training_steps += 1
        out = tr.step(b)
        assert abs(float(out["loss"]) - float(ref.loss)) <= 1e-9 * float(ref.loss)
        n_aux += float(ref.losses["auxiliary_reconstruction_loss"]) > 0
        assert torch.equal(tr.n_forward_passes_since_fired, trainer.n_forward_passes_since_fired.double())
        # float64 rounding differences, amplified by Adam's 1/sqrt(v) in the first steps
        assert _rel(tr.W_encT.t(), sae.W_enc) < 1e-8
        assert _rel(tr.W_dec, sae.W_dec) < 1e-8
        assert _rel(tr.b_enc, sae.b_enc) < 1e-8
        assert _rel(tr.b_dec, sae.b_dec) < 1e-8
        if kind == "batchtopk":
            assert abs(float(tr.topk_threshold) - float(sae.topk_threshold)) < 1e-9
    assert n_aux >= 1  # the aux-loss path was exercised


def test_float32_steps_close_to_float64_reference():
    """fp32 fast training vs float64 SAELens trainer: relative parameter error after 5 steps."""
    sae = _make("topk", True, "float64")
    torch.manual_seed(2)
    batches = [torch.randn(32, D_IN, dtype=torch.float64) for _ in range(5)]
    fast_sae = copy.deepcopy(sae)
    tcfg = SAETrainerConfig(total_training_samples=160, train_batch_size_samples=32, lr=1e-3, lr_end=1e-3)
    trainer = SAETrainer(tcfg, sae, _Provider(batches))
    tr = FastTopKTrainer.from_training_sae(fast_sae, lr=1e-3)
    for b in batches:
        trainer.step(b)
        tr.step(b)
    assert _rel(tr.W_dec, sae.W_dec) < 1e-5
    assert _rel(tr.W_encT.t(), sae.W_enc) < 1e-5


@pytest.mark.parametrize("decoder_bf16", [False, True])
def test_bf16_close_to_saelens_autocast(decoder_bf16):
    """bf16 fast step vs SAELens under bf16 autocast and vs float64: same selection on a well-separated
    input; gradients agree to bf16 accuracy (rel. error < 3e-2)."""
    sae = _make("topk", False, "float32")
    x = torch.randn(64, D_IN)
    _assert_bf16_close(sae, x, None, decoder_bf16=decoder_bf16)


def test_batchtopk_candidate_fallback_is_exact():
    """A batch where one row holds far more than its share of the batch's top k*B: the candidate
    shortcut must detect it and fall back to the exact global selection."""
    sae = _make("batchtopk", False, "float64")
    tr = FastTopKTrainer.from_training_sae(sae, dtype=torch.float64)
    tr.cfg.batchtopk_candidates = 1.0
    x = torch.randn(16, D_IN, dtype=torch.float64) * 0.01
    x[3] *= 1000  # row 3 dominates the batch
    _, ref = _ref_grads(sae, x, None)
    _, grads, _, _ = tr.loss_and_grads(x, None)
    assert tr.n_inexact_batchtopk_fallbacks == 1
    for g, r in zip(grads, ref):
        assert _rel(g, r) < 1e-10


@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
def test_saved_sae_loads_in_stock_saelens(tmp_path, kind):
    """Train a few fast steps, write back, save_inference_model, SAE.load_from_disk (stock), and the
    loaded SAE reproduces the trained SAE's reconstruction."""
    sae = _make(kind, True, "float32")
    tr = FastTopKTrainer.from_training_sae(sae, lr=1e-2)
    torch.manual_seed(3)
    for _ in range(3):
        tr.step(torch.randn(32, D_IN))
    tr.write_to(sae)
    sae.save_inference_model(tmp_path / "sae")
    loaded = SAE.load_from_disk(tmp_path / "sae")
    assert loaded.cfg.architecture() == ("topk" if kind == "topk" else "jumprelu")
    x = torch.randn(20, D_IN)
    with torch.no_grad():
        if kind == "topk":
            # the training SAE's own encode/decode (rescaled acts) vs the stock inference SAE (norm folded)
            ref = sae.decode(sae.encode(x))
            assert _rel(loaded.decode(loaded.encode(x)), ref) < 1e-5
        else:
            # BatchTopK saves as JumpReLU with the learnt threshold: check weights and threshold
            assert torch.allclose(loaded.threshold, torch.full((D_SAE,), float(tr.topk_threshold)), rtol=1e-6)
            n = tr.W_dec.norm(dim=1)
            assert torch.allclose(loaded.W_dec, tr.W_dec / n[:, None], atol=1e-6)


def test_rejects_bad_input():
    sae = _make("topk", False, "float32")
    tr = FastTopKTrainer.from_training_sae(sae)
    with pytest.raises(SaeRdpError):
        tr.step(torch.randn(4, D_IN + 1))
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    with pytest.raises(SaeRdpError):
        FastTopKTrainer.from_training_sae(StandardTrainingSAE(StandardTrainingSAEConfig(d_in=4, d_sae=8)))


@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
def test_installed_fast_step_matches_saelens_fit(tmp_path, kind):
    """SAETrainer.fit() with install_fast_step (in-place, SAELens layout) == plain SAETrainer.fit(),
    float64, with dead latents, lr warm-up, a checkpoint (whose Adam state must be the fast one)."""
    sae_a = _make(kind, True, "float64")
    sae_b = copy.deepcopy(sae_a)
    torch.manual_seed(4)
    batches = [torch.randn(32, D_IN, dtype=torch.float64) for _ in range(8)]

    def cfg(path):
        return SAETrainerConfig(
            total_training_samples=32 * 8,
            train_batch_size_samples=32,
            lr=3e-3,
            lr_end=3e-3,
            lr_warm_up_steps=3,
            dead_feature_window=2,
            n_checkpoints=1,
            checkpoint_path=str(path),
        )

    ta = SAETrainer(cfg(tmp_path / "a"), sae_a, _Provider(batches))
    ta.fit()
    tb = SAETrainer(cfg(tmp_path / "b"), sae_b, _Provider(batches))
    ft = install_fast_step(tb)
    assert ft is not None
    tb.fit()
    for pa, pb in zip(
        [sae_a.W_enc, sae_a.b_enc, sae_a.W_dec, sae_a.b_dec], [sae_b.W_enc, sae_b.b_enc, sae_b.W_dec, sae_b.b_dec]
    ):
        assert _rel(pb, pa) < 1e-6  # float64 rounding amplified by Adam's 1/sqrt(v) over 8 steps
    assert torch.equal(ta.n_forward_passes_since_fired, tb.n_forward_passes_since_fired)
    assert torch.allclose(ta.act_freq_scores, tb.act_freq_scores)
    ck_a = next((tmp_path / "a").iterdir())
    ck_b = next((tmp_path / "b").iterdir())
    sa = torch.load(ck_a / "trainer_state.pt", weights_only=False)["optimizer"]["state"]
    sb = torch.load(ck_b / "trainer_state.pt", weights_only=False)["optimizer"]["state"]
    for i in sa:
        assert _rel(sb[i]["exp_avg"], sa[i]["exp_avg"]) < 1e-6
        assert float(sb[i]["step"]) == float(sa[i]["step"])


def test_install_declines_other_architectures():
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=4, d_sae=8))
    t = SAETrainer(
        SAETrainerConfig(total_training_samples=8, train_batch_size_samples=4, lr_end=3e-4),
        sae,
        _Provider([torch.randn(4, 4)]),
    )
    assert install_fast_step(t) is None


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
@pytest.mark.parametrize("impl", ["csr", "embedding_bag"])
def test_cuda_grads_match_saelens(kind, impl):
    """On CUDA: fp32 fast gradients == SAELens autograd (rel. < 1e-4, tf32 off), bf16 within 5e-2."""
    sae = _make(kind, True, "float32").to("cuda")
    x = torch.randn(256, D_IN, device="cuda")
    _, ref = _ref_grads(sae, x, None)
    for bf16, tol in ((False, 1e-4), (True, 5e-2)):
        tr = FastTopKTrainer.from_training_sae(sae, bf16=bf16, weight_grad_impl=impl)
        _, grads, _, _ = tr.loss_and_grads(x, None)
        for g, r in zip(grads, ref):
            assert _rel(g, r) < tol
        tr.step(x)  # the full step (fused Adam with grad_scale) runs


def test_train_synthetic_fast_equals_reference(tmp_path):
    """The integration block in training.train_synthetic: fast=True and fast=False train the same SAE."""
    from sae_rdp_plugin.train.saelens import train_synthetic

    kw = dict(k=4, alpha=1.0, tokens=2048, batch_size=256, lr=1e-3, seed=0, gamma_estimation_batches=2)
    a = train_synthetic("weighted_topk", 16, 64, tmp_path / "fast", fast=True, **kw)
    b = train_synthetic("weighted_topk", 16, 64, tmp_path / "ref", fast=False, **kw)
    assert abs(a.explained_variance - b.explained_variance) < 1e-4
    assert abs(a.mcc - b.mcc) < 1e-4
    sa = SAE.load_from_disk(tmp_path / "fast")
    sb = SAE.load_from_disk(tmp_path / "ref")
    assert _rel(sa.W_dec, sb.W_dec) < 1e-4


def test_train_cli_has_no_fast_flag():
    from sae_rdp_plugin.cli import build_parser

    args = build_parser().parse_args(
        ["train", "--synthetic", "--d-in", "8", "--d-sae", "16", "--tokens", "64", "--out", "x", "--no-fast"]
    )
    assert args.no_fast is True


def _deterministic_run(device: str, deterministic: bool, steps: int, bf16: bool, aux: bool = False) -> torch.Tensor:
    """The weights after ``steps`` steps; with ``aux``, the same half of the latents is dead at every step (the
    dead-latent aux loss runs)."""
    sae = _make("topk", True, "float32", seed=3).to(device)
    tr = FastTopKTrainer.from_training_sae(sae, bf16=bf16, deterministic=deterministic, lr=1e-3)
    g = torch.Generator(device=device).manual_seed(5)
    dead = None
    if aux:
        dead = torch.zeros(tr.cfg.d_sae, dtype=torch.bool, device=device)
        dead[: tr.cfg.d_sae // 2] = True
    for _ in range(steps):
        out = tr.step(torch.randn(512, D_IN, device=device, generator=g), dead=dead)
    if aux:
        assert float(out["auxiliary_reconstruction_loss"]) > 0  # the aux path ran
    return torch.cat([tr.W_encT.flatten(), tr.W_dec.flatten(), tr.b_enc, tr.b_dec])


@pytest.mark.parametrize("aux", [False, True])
def test_deterministic_mode_same_step_and_restores_torch_setting(aux):
    """deterministic=True changes which kernels run, not the maths: on CPU (deterministic anyway) the
    weights equal the default mode's exactly (with the aux loss too), and torch's global deterministic flag is
    left as it was."""
    assert not torch.are_deterministic_algorithms_enabled()
    a = _deterministic_run("cpu", True, 4, bf16=False, aux=aux)
    assert not torch.are_deterministic_algorithms_enabled()
    b = _deterministic_run("cpu", False, 4, bf16=False, aux=aux)
    assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("aux", [False, True])
def test_deterministic_mode_bit_identical_runs_on_cuda(aux):
    """Two bf16 runs with the same seed and data: bit-identical weights with deterministic=True (with the
    dead-latent aux loss running too)."""
    a = _deterministic_run("cuda", True, 200, bf16=True, aux=aux)
    b = _deterministic_run("cuda", True, 200, bf16=True, aux=aux)
    assert torch.equal(a, b)
    c = _deterministic_run("cuda", False, 200, bf16=True, aux=aux)
    d = _deterministic_run("cuda", False, 200, bf16=True, aux=aux)
    print(f"default mode (aux {aux}): max |diff| between two runs {float((c - d).abs().max()):.3g}")


def test_fields_from_sae_are_exactly_the_ones_install_fast_step_sets():
    """FIELDS_FROM_SAE (train_saes refuses them in fast_options) names the FastTopKConfig fields that
    install_fast_step / from_training_sae set from the SAE's and its trainer's configs: each as an override
    collides with that argument; every other field is accepted as an override and lands in the config."""
    import dataclasses

    from sae_rdp_plugin.fast.step import FIELDS_FROM_SAE, FastTopKConfig

    def trainer():
        sae = _make("topk", False, "float32")
        tcfg = SAETrainerConfig(total_training_samples=8, train_batch_size_samples=4, lr_end=3e-4)
        return SAETrainer(tcfg, sae, _Provider([torch.randn(4, D_IN)]))

    defaults = FastTopKConfig(d_in=4, d_sae=8, k=2)
    for f in dataclasses.fields(FastTopKConfig):
        value = getattr(defaults, f.name)
        if f.name in FIELDS_FROM_SAE:
            with pytest.raises(TypeError, match=f.name):
                install_fast_step(trainer(), **{f.name: value})
        else:
            assert getattr(install_fast_step(trainer(), **{f.name: value}).cfg, f.name) == value, f.name

"""The Triton kernels of the fast step (sae_rdp_plugin.fast.kernels) and the Triton step
(FastTopKTrainer with kernels="triton") against float64 PyTorch references and SAELens's own trainer.

On CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1); without
Triton installed these tests are skipped and the fast step uses its PyTorch kernels."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("triton")

from sae_lens.config import SAETrainerConfig  # noqa: E402
from sae_lens.training.sae_trainer import SAETrainer  # noqa: E402
from test_fast_topk import D_IN, D_SAE, _make, _Provider, _ref_grads, _rel  # noqa: E402

import sae_rdp_plugin  # noqa: E402,F401
from sae_rdp_plugin.errors import SaeRdpError  # noqa: E402
from sae_rdp_plugin.fast import kernels as fk  # noqa: E402
from sae_rdp_plugin.fast.step import FastTopKTrainer, install_fast_step  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    not fk.available(DEV), reason="Triton kernels unavailable (no CUDA, no TRITON_INTERPRET)"
)


def _codes(B: int, n: int, lens: list[int], seed: int):
    """Random sparse codes in row-CSR form with the given row lengths (distinct latents per row)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.cat([torch.randperm(n, generator=g)[:m] for m in lens]).to(DEV)
    vals = torch.rand(int(sum(lens)), generator=g).to(DEV)
    off = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), device=DEV)
    rows = torch.repeat_interleave(torch.arange(B, device=DEV), torch.tensor(lens, device=DEV))
    return idx, vals, off, rows


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
def test_decode_and_rowdot_match_float64(wdtype):
    B, n, d = 7, 61, 300  # d not a multiple of the block sizes; one empty row; a row longer than BE
    lens = [5, 0, 3, 40, 1, 8, 5]
    idx, vals, off, rows = _codes(B, n, lens, 0)
    W = torch.randn(n, d, device=DEV).to(wdtype)
    bias = torch.randn(d, device=DEV)
    Wd = W.double()
    ref = bias.double() + torch.zeros(B, d, dtype=torch.float64, device=DEV).index_add_(
        0, rows, vals.double()[:, None] * Wd[idx]
    )
    out = fk.decode(W, idx, vals, off, bias)
    assert out.dtype == torch.float32 and _rel(out, ref) < 1e-6
    r = torch.randn(B, d, device=DEV)
    g = fk.rowdot(W, idx, off, r)
    assert _rel(g, (r.double()[rows] * Wd[idx]).sum(1)) < 1e-6


def _csr(idx, rows, coef, n):
    order = torch.argsort(idx)
    crow = torch.searchsorted(idx[order], torch.arange(n + 1, device=idx.device))
    return crow, rows[order].contiguous(), coef[order].contiguous()


@pytest.mark.parametrize("layout", ["latent_major", "saelens"])
@pytest.mark.parametrize("with_x,with_hot", [(False, False), (True, False), (True, True), ("rows", True)])
def test_sparse_grad_norm_and_adam_match_torch_adam(layout, with_x, with_hot):
    """Pass 1 == ||G||^2 and pass 2 == torch.optim.Adam on clip * G (G = the sparse weight gradient,
    plus a dense extra term), in both parameter layouts; norms and the scaled bf16 copy of the result."""
    B, n, d = 9, 41, 70
    lens = [3, 7, 0, 2, 30, 4, 4, 1, 6]  # latent hit many times (hot rows), rows never hit
    idx, coef, _, rows = _codes(B, n, lens, 1)
    idx[:20] = 5  # one hot latent: 20 entries (repeats across rows are allowed in the latent CSR)
    coef = coef - 0.5
    S = torch.randn(B, d, device=DEV)
    G = torch.zeros(n, d, dtype=torch.float64, device=DEV).index_add_(0, idx, coef.double()[:, None] * S.double()[rows])
    X = None
    if with_x == "rows":  # the extra term at some rows only (RowsAt: the aux loss's compacted columns), in bf16
        at = torch.tensor([0, 5, 6, 17, 40], device=DEV)  # a hot row (5), rows never hit, the last row
        vals = torch.randn(5, d, device=DEV).bfloat16()
        X = fk.rows_at(at, vals, n)
        G = G.index_add(0, at, vals.double())
    elif with_x:
        X = torch.randn(d, n, device=DEV).t()  # a strided [n, d] view
        G = G + X.double()
    crow, tok, c = _csr(idx, rows, coef, n)
    hot = None
    if with_hot:  # the hot latent (20 entries) and the next busiest rows via the dense product
        hot = fk.hot_rows(crow, idx, rows, [coef], [S], max_hot=3, min_count=4)
        hot = (hot[0], hot[1][0])
        assert int(hot[0][5]) >= 0 and int((hot[0] >= 0).sum()) <= 3
    sq = fk.sparse_grad_sq(crow, tok, c, S, X, hot=hot)
    assert abs(float(sq) - float(G.square().sum())) <= 1e-5 * float(G.square().sum())

    def state():
        if layout == "saelens":  # [d, n] storage, used as its transpose (SAELens's W_enc layout)
            return torch.randn(d, n, device=DEV).t()
        return torch.randn(n, d, device=DEV)

    torch.manual_seed(2)
    P, M, V = state(), state() * 0.1, state().abs() * 0.01
    P0, M0, V0 = P.double().clone(), M.double().clone(), V.double().clone()
    lr, clip, t, b1, b2, eps = 1e-2, 0.6, 4, 0.9, 0.999, 1e-8
    hp = torch.tensor([lr / (1 - b1**t), (1 - b2**t) ** 0.5, clip], device=DEV)
    norm, scale = torch.empty(n, device=DEV), torch.rand(n, device=DEV) + 0.5
    lp = torch.empty(n, d, device=DEV, dtype=torch.bfloat16)
    fk.sparse_grad_adam(
        crow, tok, c, S, P, M, V, hp, betas=(b1, b2), eps=eps, X=X, norm_out=norm, scale=scale, lp_out=lp, hot=hot
    )
    p = P0.clone().requires_grad_()
    opt = torch.optim.Adam([p], lr=lr, betas=(b1, b2), eps=eps)
    opt.state[p] = {"step": torch.tensor(float(t - 1)), "exp_avg": M0.clone(), "exp_avg_sq": V0.clone()}
    p.grad = G * clip
    opt.step()
    assert _rel(P, p.detach()) < 1e-6
    assert _rel(M, opt.state[p]["exp_avg"]) < 1e-6
    assert _rel(V, opt.state[p]["exp_avg_sq"]) < 1e-6
    assert _rel(norm, p.detach().norm(dim=1)) < 1e-6
    assert _rel(lp, p.detach() * scale.double()[:, None]) < 5e-3  # bf16 rounding


@pytest.mark.parametrize("mode", ["sort", "topk"])
@pytest.mark.parametrize("n,H,top", [(50, 7, 30), (16384, 2048, 4096), (9, 9, 2)])  # top: small values, many ties
def test_hot_select_takes_the_largest(mode, n, H, top, monkeypatch):
    """hot_select (either mode) returns H distinct indices whose values are the H largest counts (as a multiset:
    which of the tied rows is free), with the values at those indices."""
    monkeypatch.setattr(fk, "HOT_SELECT", mode)
    counts = torch.randint(0, top, (n,), generator=torch.Generator().manual_seed(n)).to(DEV)
    cv, ci = fk.hot_select(counts, H)
    assert cv.dtype == counts.dtype and ci.shape == (H,) and cv.shape == (H,)
    assert ci.unique().numel() == H and torch.equal(counts[ci], cv)
    assert torch.equal(cv.sort().values, counts.sort().values[-H:])


@pytest.mark.parametrize("unique", [False, True])
def test_hot_rows_dense_product_matches_float64(unique):
    """hot_rows: the busiest latents (> min_count entries, at most max_hot) get slots and their gradient rows
    sum_b coef_b S_b; unique=True (plain scatter) is exact when no (latent, row) pair repeats (TopK codes)."""
    B, n, d = 40, 30, 17
    lens = [12] * B  # distinct latents per row: pairs unique
    idx, coef, _, rows = _codes(B, n, lens, 3)
    coef = coef - 0.5
    S = torch.randn(B, d, device=DEV)
    crow, _, _ = _csr(idx, rows, coef, n)
    G = torch.zeros(n, d, dtype=torch.float64, device=DEV).index_add_(0, idx, coef.double()[:, None] * S.double()[rows])
    slot, (gh,) = fk.hot_rows(crow, idx, rows, [coef], [S], max_hot=5, min_count=10, unique=unique)
    counts = (crow[1:] - crow[:-1]).cpu()
    hot = (slot >= 0).cpu()
    assert 0 < int(hot.sum()) <= 5 and bool((counts[hot] > 10).all())
    assert int(counts[~hot].max()) <= int(counts[hot].min())  # the busiest rows were taken
    for l in torch.nonzero(hot).flatten().tolist():
        assert _rel(gh[int(slot[l])], G[l]) < 1e-5


def test_sparse_grad_adam_rejects_mismatched_state_layout():
    crow = torch.zeros(3, dtype=torch.long, device=DEV)
    e = torch.zeros(0, dtype=torch.long, device=DEV)
    P = torch.zeros(2, 4, device=DEV)
    with pytest.raises(ValueError, match="strides"):
        fk.sparse_grad_adam(
            crow,
            e,
            e.float(),
            torch.zeros(1, 4, device=DEV),
            P,
            torch.zeros(4, 2, device=DEV).t(),
            P.clone(),
            torch.ones(3, device=DEV),
            betas=(0.9, 0.999),
            eps=1e-8,
        )


@pytest.mark.parametrize(
    "kind,weighted,rescale,hot_min",
    [
        ("topk", True, True, 64),
        ("batchtopk", False, True, 64),
        ("topk", False, False, 64),
        ("topk", True, True, 3),
        ("batchtopk", True, True, 3),
    ],
)
def test_triton_steps_match_float64_saelens_trainer(kind, weighted, rescale, hot_min):
    """float32 Triton steps vs SAELens's SAETrainer in float64 (loss, clip_grad_norm_, Adam, dead-latent
    aux loss after step 1): relative parameter error after 5 steps (fp32 rounding amplified by Adam)."""
    sae = _make(kind, weighted, "float64", rescale=rescale)
    torch.manual_seed(5)
    batches = [torch.randn(32, D_IN, dtype=torch.float64) * 2 for _ in range(5)]
    fast_sae = copy.deepcopy(sae).to(torch.float32)
    tcfg = SAETrainerConfig(
        total_training_samples=160, train_batch_size_samples=32, lr=3e-3, lr_end=3e-3, dead_feature_window=1
    )
    trainer = SAETrainer(tcfg, sae, _Provider(batches))
    tr = FastTopKTrainer.from_training_sae(
        fast_sae, lr=3e-3, dead_feature_window=1, kernels="triton", device=DEV, hot_rows=6, hot_min_count=hot_min
    )  # hot_min 3: busy latents take the dense-product path (hot_rows), 64: none do
    assert tr.use_triton
    n_aux = 0
    for b in batches:
        ref = trainer.step(b)
        trainer.n_training_steps += 1
        out = tr.step(b.float().to(DEV))
        n_aux += float(ref.losses["auxiliary_reconstruction_loss"]) > 0
        assert abs(float(out["loss"]) - float(ref.loss)) <= 1e-5 * float(ref.loss)
    assert n_aux >= 1
    assert _rel(tr.W_dec.cpu(), sae.W_dec) < 2e-5
    assert _rel(tr.W_encT.t().cpu(), sae.W_enc) < 2e-5
    assert _rel(tr.b_enc.cpu(), sae.b_enc) < 2e-5
    assert _rel(tr.b_dec.cpu(), sae.b_dec) < 2e-5


@pytest.mark.parametrize("aux_impl", ["dense", "sparse"])
def test_triton_step_equals_torch_step_fp32_with_aux(aux_impl):
    """Triton step == PyTorch-kernel step (float32, 3 steps, a third of the latents dead, both aux paths)."""
    sae = _make("topk", True, "float32", seed=6)
    a = FastTopKTrainer.from_training_sae(copy.deepcopy(sae), lr=1e-2, kernels="torch", aux_impl=aux_impl)
    b = FastTopKTrainer.from_training_sae(copy.deepcopy(sae), lr=1e-2, kernels="triton", aux_impl=aux_impl, device=DEV)
    dead = torch.arange(D_SAE) % 3 == 0
    for s in range(3):
        x = torch.randn(32, D_IN)
        la = a.step(x, dead=dead)
        lb = b.step(x.to(DEV), dead=dead.to(DEV))
        assert float(la["auxiliary_reconstruction_loss"]) > 0
        assert abs(float(la["loss"]) - float(lb["loss"])) <= 1e-5 * float(la["loss"])
    for pa, pb in zip(a.params, b.params):
        assert _rel(pb.cpu(), pa) < 1e-5


@pytest.mark.parametrize("kind,with_dead", [("topk", False), ("batchtopk", True)])
def test_triton_grads_match_float64_autograd(kind, with_dead):
    """The Triton step's gradients (materialised through the fused kernel) vs float64 SAELens autograd:
    float32 within 2e-5; bf16 no less accurate than the PyTorch-kernel bf16 step or SAELens's own bf16
    autocast (2x margin or 5e-2: at these tiny shapes the bf16 errors are dominated by the few TopK
    selections that flip near ties, which differ between implementations; the large-shape comparison is
    benchmarks/training_speed/bench_training_speed.py's on-device check)."""
    sae = _make(kind, True, "float32", seed=7)
    x = torch.randn(64, D_IN)
    dead = None
    if with_dead:
        dead = torch.zeros(D_SAE, dtype=torch.bool)
        dead[::2] = True
    _, ref64 = _ref_grads(copy.deepcopy(sae).to(torch.float64), x.double(), dead)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, refbf = _ref_grads(copy.deepcopy(sae), x, dead)
    for bf16, tol in ((False, 2e-5), (True, None)):
        tr = FastTopKTrainer.from_training_sae(copy.deepcopy(sae), bf16=bf16, kernels="triton", device=DEV)
        _, grads = tr.triton_loss_and_grads(x.to(DEV), None if dead is None else dead.to(DEV))
        torch_path = FastTopKTrainer.from_training_sae(copy.deepcopy(sae), bf16=bf16, kernels="torch")
        _, grads_t, _, _ = torch_path.loss_and_grads(x, dead)
        for name, g, gt, r64, rbf in zip(["W_enc", "b_enc", "W_dec", "b_dec"], grads, grads_t, ref64, refbf):
            e = _rel(g.cpu(), r64)
            if bf16:
                ref_e = max(_rel(gt, r64), _rel(rbf, r64))
                assert e < max(5e-2, 2 * ref_e), (name, e, ref_e)
            else:
                assert e < tol, (name, e)


def test_triton_bf16_steps_keep_the_low_precision_copies_current():
    """Under bf16 the fused Adam pass writes the next step's decoder norms and bf16 weight copies;
    after several steps they equal the ones recomputed from the fp32 parameters."""
    sae = _make("topk", True, "float32", seed=11)
    tr = FastTopKTrainer.from_training_sae(copy.deepcopy(sae), lr=1e-2, bf16=True, kernels="triton", device=DEV)
    for _ in range(3):
        tr.step(torch.randn(32, D_IN).to(DEV))
    c = tr._lp_cache
    n = tr.W_dec.norm(dim=1)
    assert _rel(c["n"], n) < 1e-6
    assert _rel(c["Wdec"].float(), tr.W_dec) < 5e-3
    assert _rel(c["Wenc"].float(), tr.W_encT * n[:, None]) < 5e-3


def test_triton_installed_in_saelens_trainer_in_place():
    """install_fast_step(kernels='triton') trains SAELens's own [d_in, d_sae] W_enc in place: equal to
    the float64 reference trainer within float32 accuracy; checkpointed Adam state is the fast one."""
    sae_ref = _make("batchtopk", True, "float64", seed=8)
    sae = copy.deepcopy(sae_ref).to(torch.float32).to(DEV)
    torch.manual_seed(9)
    batches = [torch.randn(32, D_IN, dtype=torch.float64) for _ in range(4)]
    cfg = dict(total_training_samples=128, train_batch_size_samples=32, lr=3e-3, lr_end=3e-3, dead_feature_window=2)
    ta = SAETrainer(SAETrainerConfig(**cfg), sae_ref, _Provider(batches))
    tb = SAETrainer(SAETrainerConfig(device=DEV, **cfg), sae, _Provider([b.float().to(DEV) for b in batches]))
    ft = install_fast_step(tb, kernels="triton")
    assert ft is not None and ft.use_triton and ft.in_place
    ta.fit()
    tb.fit()
    for pa, pb in zip(
        [sae_ref.W_enc, sae_ref.b_enc, sae_ref.W_dec, sae_ref.b_dec], [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    ):
        assert _rel(pb.cpu(), pa) < 2e-5


def test_cache_follows_in_place_parameter_changes():
    """The cached decoder norms / bf16 copies are rebuilt after an in-place change of the parameters."""
    sae = _make("topk", False, "float32", seed=10)
    tr = FastTopKTrainer.from_training_sae(copy.deepcopy(sae), lr=1e-3, kernels="triton", device=DEV)
    x = torch.randn(16, D_IN).to(DEV)
    tr.step(x)
    with torch.no_grad():
        tr.W_dec.mul_(2.0)  # bumps the version counter
    fresh = FastTopKTrainer.from_training_sae(copy.deepcopy(sae), lr=1e-3, kernels="triton", device=DEV)
    with torch.no_grad():
        for p, q in zip(fresh.params, tr.params):
            p.copy_(q)
    fresh.invalidate_cache()
    for st in ("exp_avg", "exp_avg_sq", "state_steps"):
        for p, q in zip(getattr(fresh, st), getattr(tr, st)):
            p.copy_(q)
    la, lb = tr.step(x), fresh.step(x)
    assert float(la["loss"]) == pytest.approx(float(lb["loss"]), rel=1e-6)
    for p, q in zip(tr.params, fresh.params):
        assert _rel(p, q) < 1e-6


def test_forced_triton_rejects_float64():
    sae = _make("topk", False, "float64")
    with pytest.raises(SaeRdpError, match="float32"):
        FastTopKTrainer.from_training_sae(sae, dtype=torch.float64, kernels="triton", device=DEV)
    with pytest.raises(SaeRdpError, match="kernels"):
        FastTopKTrainer.from_training_sae(sae, kernels="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("bf16", [False, True])
def test_cuda_graph_replay_equals_eager_steps(bf16):
    """TopK steps replayed from a captured CUDA graph (learning rate changed between steps, a batch of
    another shape in between) == the same steps run eagerly."""
    sae = _make("topk", True, "float32", seed=12)
    a = FastTopKTrainer.from_training_sae(
        copy.deepcopy(sae), lr=1e-3, bf16=bf16, kernels="triton", cuda_graph=True, device="cuda"
    )
    b = FastTopKTrainer.from_training_sae(
        copy.deepcopy(sae), lr=1e-3, bf16=bf16, kernels="triton", cuda_graph=False, device="cuda"
    )
    torch.manual_seed(13)
    for s in range(8):
        x = torch.randn(48 if s == 5 else 64, D_IN, device="cuda")
        for tr in (a, b):
            tr.set_lr(1e-3 * (1 + s))
        la, lb = a.step(x), b.step(x)
        assert float(la["loss"]) == pytest.approx(float(lb["loss"]), rel=1e-6)
        assert torch.equal(la["fired"], lb["fired"])
    assert a._graphs and a._graph_failed is None
    assert torch.equal(a.n_forward_passes_since_fired, b.n_forward_passes_since_fired)
    for p, q in zip(a.params, b.params):
        assert _rel(p, q) < 1e-6


@pytest.mark.gpu
def test_cuda_graph_through_saelens_trainer_equals_eager():
    """SAETrainer.fit with the installed fast step: graph replay (cuda_graph=True) == eager (False),
    including the steps after the dead-feature window (dead mask checked on the host)."""
    base = _make("topk", True, "float32", seed=14).to("cuda")
    torch.manual_seed(15)
    batches = [torch.randn(64, D_IN, device="cuda") for _ in range(10)]
    out = []
    for graph in (True, False):
        sae = copy.deepcopy(base)
        cfg = SAETrainerConfig(
            total_training_samples=640,
            train_batch_size_samples=64,
            lr=3e-3,
            lr_end=3e-3,
            lr_warm_up_steps=3,
            dead_feature_window=4,
            device="cuda",
        )
        t = SAETrainer(cfg, sae, _Provider(batches))
        ft = install_fast_step(t, kernels="triton", cuda_graph=graph)
        t.fit()
        out.append((sae, ft))
    (ga, fa), (gb, _) = out
    assert fa._graph_failed is None and fa._graphs
    for p, q in zip([ga.W_enc, ga.b_enc, ga.W_dec, ga.b_dec], [gb.W_enc, gb.b_enc, gb.W_dec, gb.b_dec]):
        assert _rel(p, q) < 1e-6


def test_block_sizes_round_trip_and_reject_unknown_groups():
    before = fk.get_blocks("ADAM")
    try:
        fk.set_blocks("ADAM", (4, 256, 4))
        assert fk.get_blocks("ADAM") == (4, 256, 4)
    finally:
        fk.set_blocks("ADAM", before)
    assert fk.get_blocks("ADAM") == before
    with pytest.raises(ValueError, match="group"):
        fk.set_blocks("ADAMX", (4, 256, 4))
    with pytest.raises(ValueError, match="3 ints"):
        fk.set_blocks("DEC", (4, 256))


def test_config_rejects_bad_hot_rows_and_kernel_names(monkeypatch):
    from sae_rdp_plugin.fast.step import FastTopKConfig

    with pytest.raises(SaeRdpError, match="hot_rows"):
        FastTopKConfig(d_in=4, d_sae=8, k=2, hot_rows=-2)
    monkeypatch.setenv("SAE_RDP_FAST_KERNELS", "cuda")
    with pytest.raises(SaeRdpError, match="SAE_RDP_FAST_KERNELS"):
        FastTopKConfig(d_in=4, d_sae=8, k=2)


def test_auto_hot_rows_capacity_bounds_the_gather_loop():
    """hot_rows=-1: H >= B*k/64 (bf16) or B*k/256 (float32), at least 256, at most d_sae; explicit values kept."""
    from sae_rdp_plugin.fast.step import FastTopKConfig, FastTopKTrainer

    def H(d_sae, k, bf16, B, **kw):
        tr = FastTopKTrainer.__new__(FastTopKTrainer)
        tr.cfg = FastTopKConfig(d_in=8, d_sae=d_sae, k=k, bf16=bf16, **kw)
        return tr._hot_rows(B)

    assert H(65536, 64, True, 4096) == 4096 and H(65536, 64, False, 4096) == 1024
    assert H(16384, 32, True, 4096) == 2048 and H(16384, 32, False, 4096) == 512
    assert H(65536, 8, True, 512) == 256 and H(100, 8, True, 4096) == 100
    assert H(65536, 64, True, 4096, hot_rows=7) == 7
    for d_sae, k, bf16, B in [(65536, 64, True, 4096), (16384, 32, False, 4096), (4096, 16, True, 1000)]:
        h = H(d_sae, k, bf16, B)
        # the (h+1)-th busiest of d_sae latents holding B*k entries has at most B*k/(h+1) of them
        assert h == d_sae or B * k / (h + 1) <= (64 if bf16 else 256)


def _small_topk_blocks(monkeypatch) -> None:
    """row_topk with small blocks, groups and scratch, so that the interpreter stays quick on whole steps."""
    from sae_rdp_plugin.fast import topk_kernel

    for name, value in (("_BLOCK_32", 64), ("_BLOCK_16", 64), ("_GROUPS", 16), ("_CB", 16), ("_CAP", 32)):
        monkeypatch.setattr(topk_kernel, name, value)


def test_row_topk_in_the_triton_step(monkeypatch):
    """The Triton step with the row_topk kernel (used on CUDA) gives the same loss and gradients as with
    torch.topk (float32, small blocks so the interpreter stays quick)."""
    from sae_rdp_plugin.fast import topk_kernel
    from sae_rdp_plugin.fast.step import FastTopKTrainer

    _small_topk_blocks(monkeypatch)
    calls = []
    orig = topk_kernel.row_topk
    monkeypatch.setattr(topk_kernel, "row_topk", lambda x, k: calls.append(k) or orig(x, k))
    sae = _make("topk", True, "float32")
    x = torch.randn(16, D_IN, device=DEV) * 2
    out = []
    for use in (False, True):
        # (cfg.row_topk switches it off on CUDA too, where the kernel is otherwise always used)
        tr = FastTopKTrainer.from_training_sae(sae, kernels="triton", device=DEV, row_topk=use)
        tr._row_topk_on_cpu = True
        losses, grads = tr.triton_loss_and_grads(x)
        out.append((float(losses["loss"]), grads))
        assert len(calls) == int(use)  # the kernel ran in the second step only
    assert abs(out[0][0] - out[1][0]) <= 1e-6 * abs(out[0][0])
    for a, b in zip(out[0][1], out[1][1]):
        assert _rel(a, b) < 1e-6


def _same_step_result(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two runs of the step's loss/gradients that differ only in how the aux selection's input was copied: equal
    bit for bit in Triton's CPU interpreter; on the GPU within float-sum reordering (the default mode's atomic
    index_add_ sums, bias gradients and aux loss among them, are not bit-reproducible from run to run: the
    card gave 2e-5 relative on an H100, 2026-12-07). The copies themselves are compared exactly on both
    (test_topk_kernel.py masked_copy cases)."""
    return torch.equal(a, b) if DEV == "cpu" else _rel(a, b) < 1e-4


@pytest.mark.parametrize("kind,bf16", [("topk", False), ("topk", True), ("batchtopk", False)])
def test_aux_masked_copy_from_the_main_topk(monkeypatch, kind, bf16):
    """With most latents dead the aux selection runs over all d_sae columns, and the main TopK's row_topk writes its
    masked copy (step.AUX_COPY_IN_TOPK): the same loss and gradients as the separate masked_fill (exactly in the
    interpreter: _same_step_result), and the kernel ran. Under bf16 the aux products take the step's bf16 decoder
    copy (the one the main path gathers), which the fused Adam writes: after two steps with the aux loss it is
    W_dec in bf16."""
    from sae_rdp_plugin.fast import step as fs
    from sae_rdp_plugin.fast import topk_kernel

    _small_topk_blocks(monkeypatch)
    calls = []
    orig = topk_kernel.row_topk_masked_copy
    spy = lambda x, k, keep, **kw: calls.append(k) or orig(x, k, keep, **kw)  # noqa: E731
    monkeypatch.setattr(topk_kernel, "row_topk_masked_copy", spy)
    sae = _make(kind, True, "float32", seed=3)  # BatchTopK: the copy comes from its per-row candidate TopK
    torch.manual_seed(4)
    x = torch.randn(16, D_IN, device=DEV) * 2
    dead = torch.zeros(D_SAE, dtype=torch.bool, device=DEV)
    dead[torch.randperm(D_SAE)[: D_SAE - 5]] = True  # 43 of 48 dead: more than the 3/4 bucket, all columns
    out = []
    for on in (False, True):
        monkeypatch.setattr(fs, "AUX_COPY_IN_TOPK", "full" if on else "off")
        # the copy feeds torch.topk (the default "auto" selects over all columns with topk_mask, no copy)
        tr = FastTopKTrainer.from_training_sae(sae, kernels="triton", device=DEV, bf16=bf16, aux_topk="torch")
        tr._row_topk_on_cpu = True
        assert tr._aux_n_pad_of(dead) == D_SAE
        losses, grads = tr.triton_loss_and_grads(x, dead)
        assert float(losses["auxiliary_reconstruction_loss"]) > 0
        out.append((losses, grads))
        assert len(calls) == int(on)
    for key in ("mse_loss", "auxiliary_reconstruction_loss"):
        assert _same_step_result(out[0][0][key], out[1][0][key]), key
    for a, b in zip(out[0][1], out[1][1]):
        assert _same_step_result(a, b)
    if bf16:
        for _ in range(2):
            tr.step(x, dead=dead)
        c = tr._lowp_weights()
        assert c["key"] == tr._cache_key()  # the copy the fused Adam wrote, not a fresh conversion
        if DEV == "cuda":  # Triton rounds to nearest even on the GPU, as torch does
            assert torch.equal(c["Wdec"], tr.W_dec.to(torch.bfloat16))
        else:  # Triton's CPU interpreter truncates: less than one bf16 step (2^-7 relative) from W_dec
            assert bool(((c["Wdec"].float() - tr.W_dec).abs() <= tr.W_dec.abs() * 2**-7).all())


@pytest.mark.parametrize("aux_impl", ["dense", "sparse"])
def test_aux_compacted_copy_from_the_main_topk(monkeypatch, aux_impl):
    """AUX_COPY_IN_TOPK "all": over compacted columns too, row_topk writes the selection's gather (dead latents
    first, live ones as padding at -inf) at positions: the same loss and gradients as index_select + masked_fill
    ("off"; exactly in the interpreter: _same_step_result), with the kernel called with positions; "full" leaves
    compacted selections to the separate gather."""
    from sae_rdp_plugin.fast import step as fs
    from sae_rdp_plugin.fast import topk_kernel

    _small_topk_blocks(monkeypatch)
    calls = []
    orig = topk_kernel.row_topk_masked_copy

    def spy(x, k, keep, pos=None, width=None):
        calls.append(width if pos is not None else None)
        return orig(x, k, keep, pos=pos, width=width)

    monkeypatch.setattr(topk_kernel, "row_topk_masked_copy", spy)
    sae = _make("topk", True, "float32", seed=5)
    torch.manual_seed(6)
    x = torch.randn(16, D_IN, device=DEV) * 2
    dead = torch.zeros(D_SAE, dtype=torch.bool, device=DEV)
    dead[torch.randperm(D_SAE)[:20]] = True  # 20 of 48 dead: the d_sae/2 bucket, 24 columns
    out = []
    for mode in ("off", "full", "all"):
        monkeypatch.setattr(fs, "AUX_COPY_IN_TOPK", mode)
        tr = FastTopKTrainer.from_training_sae(sae, kernels="triton", device=DEV, aux_impl=aux_impl)
        tr._row_topk_on_cpu = True
        n_pad = tr._aux_n_pad_of(dead)
        assert n_pad == D_SAE // 2
        out.append(tr.triton_loss_and_grads(x, dead))
    assert calls == [n_pad]  # "all" only, at positions, n_pad columns wide
    for losses, grads in out[1:]:
        assert float(losses["auxiliary_reconstruction_loss"]) > 0
        assert _same_step_result(losses["loss"], out[0][0]["loss"])
        for a, b in zip(grads, out[0][1]):
            assert _same_step_result(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("bf16", [False, True])
def test_cuda_graph_with_dead_latents_equals_eager(bf16):
    """With dead latents (aux loss active) the step is replayed from its second graph (static aux shapes,
    no host count of dead latents) and equals the eager steps, whether few (n_dead < d_in/2) or many
    latents are dead."""
    sae = _make("topk", True, "float32", seed=16)
    a = FastTopKTrainer.from_training_sae(
        copy.deepcopy(sae), lr=1e-3, bf16=bf16, kernels="triton", cuda_graph=True, device="cuda"
    )
    b = FastTopKTrainer.from_training_sae(
        copy.deepcopy(sae), lr=1e-3, bf16=bf16, kernels="triton", cuda_graph=False, device="cuda"
    )
    torch.manual_seed(17)
    d_sae = a.cfg.d_sae
    for s in range(8):
        x = torch.randn(64, D_IN, device="cuda")
        dead = torch.zeros(d_sae, dtype=torch.bool, device="cuda")
        dead[: (3 if s % 2 else d_sae - 5)] = True
        la, lb = a.step(x, dead=dead), b.step(x, dead=dead)
        assert float(lb["auxiliary_reconstruction_loss"]) > 0
        assert float(la["loss"]) == pytest.approx(float(lb["loss"]), rel=1e-5)
        assert float(la["auxiliary_reconstruction_loss"]) == pytest.approx(
            float(lb["auxiliary_reconstruction_loss"]), rel=1e-5
        )
    assert True in a._graphs and a._graph_failed is None
    for p, q in zip(a.params, b.params):
        assert _rel(p, q) < 1e-5


def test_rows_at_equals_the_dense_matrix_it_stands_for():
    """RowsAt (an extra term given at some rows) in sparse_grad and add_to: the same as the dense, zero-filled
    matrix with those rows (float64 reference)."""
    B, n, d = 6, 23, 19
    idx, coef, _, rows = _codes(B, n, [4, 1, 0, 6, 2, 3], 7)
    S = torch.randn(B, d, device=DEV)
    crow, tok, c = _csr(idx, rows, coef, n)
    at = torch.tensor([22, 3, 9], device=DEV)  # unordered, distinct
    vals = torch.randn(3, d, device=DEV)
    X = fk.rows_at(at, vals, n)
    assert X.slot.tolist() == [-1, -1, -1, 1, -1, -1, -1, -1, -1, 2] + [-1] * 12 + [0]
    dense = torch.zeros(n, d, device=DEV).index_copy_(0, at, vals)
    assert torch.equal(X.add_to(torch.zeros(n, d, device=DEV)), dense)
    ref = torch.zeros(n, d, dtype=torch.float64, device=DEV)
    ref.index_add_(0, idx, coef.double()[:, None] * S.double()[rows])
    G = fk.sparse_grad(crow, tok, c, S, X)
    assert _rel(G, ref + dense.double()) < 1e-6 and _rel(G, fk.sparse_grad(crow, tok, c, S, dense)) < 1e-7

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.rdp.metrics import (
    joint_polysemanticity,
    per_feature_polysemanticity,
    polysemanticity,
    rate_distortion,
    sae_polysemanticity,
)


def _orth(m, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q[:m].contiguous()


def _p_reference(w: np.ndarray, v: np.ndarray) -> float:
    """Independent float64 reference, loop over rows."""
    out = []
    for row in w:
        nr = np.linalg.norm(row)
        if nr <= 1e-8:
            continue
        cos = [abs(row @ c) / (nr * np.linalg.norm(c)) for c in v]
        out.append(1 - max(cos))
    return float(np.mean(out))


def test_aligned_dictionary_is_zero():
    v = _orth(5, 8)
    w = torch.cat([v, -2.5 * v[:3]])  # scaled and sign-flipped copies
    assert polysemanticity(w.float(), v.float()) == pytest.approx(0.0, abs=1e-6)
    assert joint_polysemanticity(w, w, v) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_spread_over_k_concepts(k):
    v = _orth(8, 12, seed=k)
    atom = v[:k].sum(0, keepdim=True)
    assert polysemanticity(atom, v) == pytest.approx(1 - 1 / math.sqrt(k), abs=1e-12)
    # squared-cosine CHOICE: 1 - 1/k
    assert polysemanticity(atom, v, use_abs=False) == pytest.approx(1 - 1 / k, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6), st.integers(0, 10_000))
def test_matches_float64_reference_and_rotation_invariant(n, m, seed):
    d = 7
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, d, generator=g, dtype=torch.float64)
    v = torch.randn(m, d, generator=g, dtype=torch.float64)
    p = polysemanticity(w, v)
    assert p == pytest.approx(_p_reference(w.numpy(), v.numpy()), abs=1e-10)
    r = _orth(d, d, seed=seed + 1)  # random rotation of both bases
    assert polysemanticity(w @ r, v @ r) == pytest.approx(p, abs=1e-10)
    # float32 close to float64
    assert polysemanticity(w.float(), v.float()) == pytest.approx(p, abs=1e-5)


def test_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1000, 32, generator=g)
    w[::7] = 0  # dead rows are skipped
    v = torch.randn(50, 32, generator=g)
    full = polysemanticity(w, v, chunk_size=10**6)
    for cs in (1, 7, 128, 999):
        assert polysemanticity(w, v, chunk_size=cs) == pytest.approx(full, abs=1e-7)
    assert joint_polysemanticity(w, w.flip(0), v, chunk_size=13) == pytest.approx(
        joint_polysemanticity(w, w.flip(0), v, chunk_size=10**6), abs=1e-7
    )


def test_zero_rows_excluded_and_reductions():
    v = _orth(3, 4)
    w = torch.stack([v[0], torch.zeros(4, dtype=torch.float64), (v[0] + v[1])])
    per, live = per_feature_polysemanticity(w, v)
    assert live.tolist() == [True, False, True]
    assert polysemanticity(w, v) == pytest.approx((0 + 1 - 1 / math.sqrt(2)) / 2)
    assert polysemanticity(w, v, reduction="sum") == pytest.approx(1 - 1 / math.sqrt(2))
    assert polysemanticity(w, v, reduction="max") == pytest.approx(1 - 1 / math.sqrt(2))


def test_joint_needs_same_concept():
    v = _orth(2, 3)
    # encoder aligned to concept 0, decoder to concept 1: each side is monosemantic, jointly not
    enc, dec = v[:1], v[1:2]
    assert polysemanticity(enc, v) == pytest.approx(0, abs=1e-12)
    assert polysemanticity(dec, v) == pytest.approx(0, abs=1e-12)
    assert joint_polysemanticity(enc, dec, v) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    "w, v, msg",
    [
        (torch.zeros(3, 4), torch.eye(4), "every row is zero"),
        (torch.ones(3, 4), torch.eye(5), "shape mismatch"),
        (torch.tensor([[float("nan"), 1.0]]), torch.eye(2), "NaN"),
        (torch.tensor([[float("inf"), 1.0]]), torch.eye(2), "NaN or Inf"),
        (torch.ones(3), torch.eye(3), "2-D"),
    ],
)
def test_errors(w, v, msg):
    with pytest.raises(SaeRdpError, match=msg):
        polysemanticity(w, v)


def test_joint_shape_errors():
    with pytest.raises(SaeRdpError, match="shape mismatch"):
        joint_polysemanticity(torch.ones(3, 4), torch.ones(2, 4), torch.eye(4))
    with pytest.raises(SaeRdpError, match="reduction"):
        polysemanticity(torch.ones(3, 4), torch.eye(4), reduction="median")


def test_saelens_sae_variants_and_rate_distortion():
    from sae_lens import StandardSAE, StandardSAEConfig

    d, n = 6, 4
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=n))
    v = _orth(4, d).float()
    with torch.no_grad():
        sae.W_dec.copy_(v)  # [d_sae, d_in]: decoder aligned
        sae.W_enc.copy_((v[[1, 0, 2, 3]] + v[[0, 1, 3, 2]]).T)  # [d_in, d_sae]: encoder spread over 2
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    p = sae_polysemanticity(sae, v)
    assert p["P_dec"] == pytest.approx(0, abs=1e-6)
    assert p["P_enc"] == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    assert p["P_ED"] == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)

    x = torch.randn(300, d, generator=torch.Generator().manual_seed(1))
    rd = rate_distortion(sae, x, batch_size=37)
    with torch.no_grad():
        z = sae.encode(x)
        xh = sae.decode(z)
    assert rd.rate == pytest.approx(float((z != 0).float().sum(1).mean()), rel=1e-6)
    assert rd.distortion == pytest.approx(float((x - xh).pow(2).sum(1).mean()), rel=1e-5)
    ev = 1 - (x - xh).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert rd.explained_variance == pytest.approx(float(ev), abs=1e-5)
    assert rd.dead_latents == int((~(z != 0).any(0)).sum())


@pytest.mark.gpu
def test_large_dictionary_on_gpu():
    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(65536, 2304, device="cuda", generator=g)
    v = torch.randn(16384, 2304, device="cuda", generator=g)
    p = polysemanticity(w, v, chunk_size=4096)
    p_small = polysemanticity(w[:4096].double(), v.double())
    assert 0 < p < 1 and abs(p - p_small) < 0.01

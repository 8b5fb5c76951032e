"""rdp_proxies SAEBench eval: compute_proxies against a float64 numpy brute force (full [N, d_sae] latent
matrix, full cosine matrix, scipy's entropy), hand-built SAEs with known answers, chunking invariance,
the written JSON (SAEBench's validators, our reader, the audit's orientation table) and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import entropy

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.evals.rdp_proxies.eval_config import RDPProxiesEvalConfig
from sae_rdp_plugin.evals.rdp_proxies.eval_output import RDPProxiesEvalOutput
from sae_rdp_plugin.evals.rdp_proxies.main import arg_parser, compute_proxies, main, run_eval

# ----------------------------------------------------------------------------------------------
# SAEs with set weights and the brute-force reference
# ----------------------------------------------------------------------------------------------


def make_sae(W_enc, b_enc, W_dec, b_dec=None, k=None, dtype="float32"):
    """A SAELens StandardSAE (k None) or TopKSAE with the given weights (numpy arrays)."""
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    d_in, d_sae = np.shape(W_enc)
    if k is None:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, dtype=dtype))
    else:
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype=dtype))
    with torch.no_grad():
        sae.W_enc.copy_(torch.as_tensor(np.asarray(W_enc, dtype=np.float64)))
        sae.b_enc.copy_(torch.as_tensor(np.asarray(b_enc, dtype=np.float64)))
        sae.W_dec.copy_(torch.as_tensor(np.asarray(W_dec, dtype=np.float64)))
        sae.b_dec.copy_(torch.as_tensor(np.zeros(d_in) if b_dec is None else np.asarray(b_dec, dtype=np.float64)))
    return sae


def reference(W_enc, b_enc, W_dec, b_dec, acts, ids, top_m, k=None):
    """The definitions, written out: z = act((x - b_dec) W_enc + b_enc) for all tokens at once; per active
    latent, its active positions sorted by (-z, position), the first top_m token ids, entropy in nats; the
    full |cos| matrix of the decoder rows with the diagonal left out."""
    x = np.asarray(acts, dtype=np.float64)
    pre = (x - b_dec) @ np.asarray(W_enc, np.float64) + b_enc
    if k is None:
        z = np.maximum(pre, 0.0)
    else:  # TopK: keep the k largest pre-activations of each token, then ReLU
        z = np.zeros_like(pre)
        for t in range(pre.shape[0]):
            top = np.argsort(-pre[t], kind="stable")[:k]
            z[t, top] = np.maximum(pre[t, top], 0.0)
    N, n = z.shape
    ents = []
    for i in range(n):
        pos = [t for t in range(N) if z[t, i] > 0]
        if not pos:
            continue
        pos = sorted(pos, key=lambda t: (-z[t, i], t))[:top_m]
        _, counts = np.unique(np.asarray(ids)[pos], return_counts=True)
        ents.append(entropy(counts))  # scipy normalises the counts; natural log
    W = np.asarray(W_dec, dtype=np.float64)
    norms = np.linalg.norm(W, axis=1)
    live = norms > 0
    Wn = np.where(live[:, None], W / np.where(live, norms, 1.0)[:, None], 0.0)
    C = np.abs(Wn @ Wn.T)
    mx = []
    for i in range(n):
        if live[i] and n > 1:
            mx.append(max(C[i, j] for j in range(n) if j != i))
    fired = (z > 0).any(0)
    return {
        "token_entropy": float(np.mean(ents)) if ents else math.nan,
        "decoder_max_cos": float(np.mean(mx)) if mx else math.nan,
        "l0": float((z > 0).sum() / N),
        "dead_fraction": float((~fired).mean()),
        "n_tokens": N,
        "top_m": top_m,
    }


def assert_close(got, want, tol):
    for key, w in want.items():
        g = got[key]
        if isinstance(w, float) and math.isnan(w):
            assert math.isnan(g), (key, g)
        else:
            assert g == pytest.approx(w, rel=tol, abs=tol), (key, g, w)


# ----------------------------------------------------------------------------------------------
# A hand-built SAE with known answers
# ----------------------------------------------------------------------------------------------

# latent 0 reads x[0], latent 1 reads x[1], latents 2 and 3 never fire (zero encoder column, b_enc = -1)
KNOWN_W_ENC = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
KNOWN_B_ENC = [0.0, 0.0, -1.0, -1.0]
# rows 0 and 1 are (anti)parallel: |cos| = 1; row 2 at 45 degrees to both; row 3 is zero (left out)
KNOWN_W_DEC = [[1.0, 0.0], [-3.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
KNOWN_ACTS = [[1, 0], [2, 0], [3, 0], [0, 1], [0, 2], [0, 3], [0, 4], [-1, -1]]
KNOWN_IDS = [7, 7, 7, 1, 2, 3, 4, 9]


def _known():
    sae = make_sae(KNOWN_W_ENC, KNOWN_B_ENC, KNOWN_W_DEC)
    return sae, torch.tensor(KNOWN_ACTS, dtype=torch.float32), torch.tensor(KNOWN_IDS)


@pytest.mark.parametrize(
    "top_m, ent1",
    [
        (16, math.log(4)),  # fewer active positions (4) than top_m: all of them
        (4, math.log(4)),
        (2, math.log(2)),  # the two largest activations of latent 1: ids 4 and 3
        (1, 0.0),
    ],
)
def test_known_answers(top_m, ent1):
    sae, acts, ids = _known()
    got = compute_proxies(sae, acts, ids, top_m=top_m, chunk=3)
    # latent 0 fires on id 7 only (entropy 0); latents 2, 3 never fire and are left out of the mean
    assert got["token_entropy"] == pytest.approx((0.0 + ent1) / 2, abs=1e-12)
    # rows 0, 1: max |cos| = 1 (with each other); row 2: 1/sqrt 2; row 3 (zero) left out
    assert got["decoder_max_cos"] == pytest.approx((1 + 1 + 2**-0.5) / 3, abs=1e-6)
    assert got["l0"] == pytest.approx(7 / 8)
    assert got["dead_fraction"] == pytest.approx(2 / 4)
    assert got["n_tokens"] == 8 and got["top_m"] == top_m
    assert got["n_entropy_latents"] == 2 and got["n_decoder_latents"] == 3
    assert_close(got, reference(KNOWN_W_ENC, KNOWN_B_ENC, KNOWN_W_DEC, 0.0, KNOWN_ACTS, KNOWN_IDS, top_m), 1e-6)


@pytest.mark.parametrize("chunk", [1, 2, 7, 8, 1000])
def test_chunk_invariance_including_ties(chunk):
    """Equal activations on different token ids at the top-m cut: the earlier positions win, whatever the
    chunk size (latent 0: value 5 on ids 5, 6, 6, 6 at positions 1-4; top 2 = ids 5 and 6 -> log 2)."""
    sae = make_sae(KNOWN_W_ENC, KNOWN_B_ENC, KNOWN_W_DEC)
    acts = torch.tensor([[1, 0], [5, 0], [5, 0], [5, 0], [5, 0], [0, 2], [0, 2], [0, 1]], dtype=torch.float32)
    ids = torch.tensor([0, 5, 6, 6, 6, 8, 9, 8])
    got = compute_proxies(sae, acts, ids, top_m=2, chunk=chunk)
    # latent 1: value 2 at positions 5, 6 (ids 8, 9) -> log 2
    assert got["token_entropy"] == pytest.approx(math.log(2), abs=1e-12)
    assert got["decoder_max_cos"] == pytest.approx((2 + 2**-0.5) / 3, abs=1e-6)


def test_chunk_sizes_agree_on_random_sae():
    rng = np.random.default_rng(0)
    N, d_in, n = 23, 5, 9
    W_enc, b_enc, W_dec = rng.normal(size=(d_in, n)), rng.normal(size=n) - 0.5, rng.normal(size=(n, d_in))
    acts, ids = rng.normal(size=(N, d_in)), rng.integers(0, 4, size=N)
    sae = make_sae(W_enc, b_enc, W_dec, dtype="float64")
    want = reference(W_enc, b_enc, W_dec, 0.0, acts, ids, 5)
    for chunk in (1, 7, N):
        assert_close(compute_proxies(sae, torch.tensor(acts), torch.tensor(ids), top_m=5, chunk=chunk), want, 1e-9)


def test_identical_decoder_rows_give_max_cos_one():
    W_dec = [[0.6, 0.8, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 2.0]]
    sae = make_sae(np.eye(3), np.zeros(3), W_dec)
    got = compute_proxies(sae, torch.eye(3), torch.arange(3), top_m=2, chunk=1)
    assert got["decoder_max_cos"] == pytest.approx((1 + 1 + 0) / 3, abs=1e-6)


def test_undefined_proxies_are_nan():
    # no latent ever active: token_entropy NaN (and every latent dead); d_sae = 1: no j != i
    sae = make_sae([[1.0]], [-10.0], [[1.0]])
    got = compute_proxies(sae, torch.ones(4, 1), torch.zeros(4, dtype=torch.long))
    assert math.isnan(got["token_entropy"]) and math.isnan(got["decoder_max_cos"])
    assert got["dead_fraction"] == 1.0 and got["l0"] == 0.0 and got["n_entropy_latents"] == 0
    sae = make_sae(np.eye(2), np.zeros(2), np.zeros((2, 2)))  # all decoder rows zero
    assert math.isnan(compute_proxies(sae, torch.eye(2), torch.arange(2))["decoder_max_cos"])


def test_topk_sae_matches_reference():
    rng = np.random.default_rng(3)
    N, d_in, n, k = 30, 4, 10, 3
    W_enc, b_enc, W_dec = rng.normal(size=(d_in, n)), rng.normal(size=n), rng.normal(size=(n, d_in))
    b_dec = rng.normal(size=d_in)
    acts, ids = rng.normal(size=(N, d_in)), rng.integers(0, 6, size=N)
    sae = make_sae(W_enc, b_enc, W_dec, b_dec, k=k, dtype="float64")
    got = compute_proxies(sae, torch.tensor(acts), torch.tensor(ids), top_m=4, chunk=7)
    assert_close(got, reference(W_enc, b_enc, W_dec, b_dec, acts, ids, 4, k=k), 1e-9)


@pytest.mark.parametrize(
    "acts, ids, kw, match",
    [
        (torch.ones(3, 4), torch.zeros(3, dtype=torch.long), {}, "shape mismatch"),
        (torch.ones(3, 2), torch.zeros(4, dtype=torch.long), {}, "mismatched lengths"),
        (torch.ones(3, 2), torch.zeros(3), {}, "integer tensor"),
        (torch.ones(3, 2), -torch.ones(3, dtype=torch.long), {}, ">= 0"),
        (torch.ones(0, 2), torch.zeros(0, dtype=torch.long), {}, "no tokens"),
        (torch.full((3, 2), math.nan), torch.zeros(3, dtype=torch.long), {}, "NaN"),
        (torch.ones(3, 2), torch.zeros(3, dtype=torch.long), {"top_m": 0}, "top_m"),
        (torch.ones(3, 2), torch.zeros(3, dtype=torch.long), {"chunk": 0}, "chunk"),
    ],
)
def test_bad_input(acts, ids, kw, match):
    sae = make_sae(np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(SaeRdpError, match=match):
        compute_proxies(sae, acts, ids, **kw)


# ----------------------------------------------------------------------------------------------
# Property test: random small shapes against the brute force
# ----------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    N=st.integers(1, 30),
    d_in=st.integers(1, 5),
    n=st.integers(1, 12),
    top_m=st.integers(1, 6),
    n_ids=st.integers(1, 5),
    chunk=st.integers(1, 40),
    k=st.one_of(st.none(), st.integers(1, 4)),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_brute_force(N, d_in, n, top_m, n_ids, chunk, k, seed):
    rng = np.random.default_rng(seed)
    W_enc = rng.normal(size=(d_in, n))
    b_enc = rng.normal(size=n) - rng.uniform(0, 2)  # some latents dead on the sample
    W_dec = rng.normal(size=(n, d_in)) * (rng.uniform(size=(n, 1)) > 0.2)  # some zero decoder rows
    if n > 1 and rng.uniform() < 0.3:
        W_dec[1] = -2.5 * W_dec[0]  # a parallel pair
    b_dec = rng.normal(size=d_in)
    acts, ids = rng.normal(size=(N, d_in)), rng.integers(0, n_ids, size=N)
    kk = None if k is None else min(k, n)
    sae = make_sae(W_enc, b_enc, W_dec, b_dec, k=kk, dtype="float64")
    got = compute_proxies(sae, torch.tensor(acts), torch.tensor(ids), top_m=top_m, chunk=chunk)
    assert_close(got, reference(W_enc, b_enc, W_dec, b_dec, acts, ids, top_m, k=kk), 1e-9)


# ----------------------------------------------------------------------------------------------
# SAEBench output, reader, audit orientation, CLI
# ----------------------------------------------------------------------------------------------


def test_output_validates_and_is_read_by_the_audit(tmp_path):
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_cli_interface, validate_eval_output_format_file

    from sae_rdp_plugin.audit.readers import read_results
    from sae_rdp_plugin.audit.stats import orientation_of

    sae, acts, ids = _known()
    dead = make_sae([[0.0, 0.0], [0.0, 0.0]], [-1.0, -1.0], np.eye(2))  # never active: token_entropy NaN
    cfg = RDPProxiesEvalConfig(model_name="toy", top_m=4, chunk=3)
    out = run_eval(cfg, [("known", sae), ("dead", dead)], acts, ids, str(tmp_path))
    assert len(out) == 2
    for path, res in out.items():
        validate_eval_output_format_file(path, RDPProxiesEvalOutput)
        assert path.endswith("_custom_sae_eval_results.json")
        assert res["eval_type_id"] == "rdp_proxies"
        assert set(res["eval_result_metrics"]) == {"proxies", "sample"}
        assert set(res["eval_result_metrics"]["sample"]) == {"l0", "dead_fraction", "n_tokens", "top_m"}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    validate_eval_cli_interface(arg_parser(), eval_config_cls=RDPProxiesEvalConfig)

    t = read_results(str(tmp_path), warn=False)
    assert t.keys == ["dead/custom_sae", "known/custom_sae"]
    ent = t.columns["rdp_proxies.proxies.token_entropy"]
    assert math.isnan(ent[0]) and ent[1] == pytest.approx(math.log(4) / 2)
    assert t.columns["rdp_proxies.proxies.decoder_max_cos"][1] == pytest.approx((2 + 2**-0.5) / 3, abs=1e-6)
    assert t.columns["rdp_proxies.sample.l0"][1] == pytest.approx(7 / 8)
    assert t.columns["rdp_proxies.sample.dead_fraction"].tolist() == [1.0, 0.5]
    assert any("rdp_proxies.proxies.token_entropy" in r for r in t.report)  # the NaN is reported missing

    for name in ("rdp_proxies.proxies.token_entropy", "rdp_proxies.proxies.decoder_max_cos"):
        o = orientation_of(name)
        assert (o.sign, o.role) == (+1, "proxy")
    assert orientation_of("rdp_proxies.sample.dead_fraction").role == "control"
    for name in ("rdp_proxies.sample.l0", "rdp_proxies.sample.n_tokens", "rdp_proxies.sample.top_m"):
        with pytest.raises(SaeRdpError, match="not an SAE polysemanticity proxy"):
            orientation_of(name)

    # existing outputs are kept unless force_rerun
    assert run_eval(cfg, [("known", sae)], acts, ids, str(tmp_path)) == {}
    assert len(run_eval(cfg, [("known", sae)], acts, ids, str(tmp_path), force_rerun=True)) == 1


def test_run_eval_refuses_bad_input_before_writing(tmp_path):
    sae, acts, ids = _known()
    with pytest.raises(SaeRdpError, match="top_m"):
        run_eval(RDPProxiesEvalConfig(top_m=0), [("x", sae)], acts, ids, str(tmp_path / "o"))
    with pytest.raises(SaeRdpError, match="mismatched lengths"):
        run_eval(RDPProxiesEvalConfig(), [("x", sae)], acts, ids[:3], str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_cli(tmp_path, fmt):
    from safetensors.torch import save_file

    sae, acts, ids = _known()
    sae.save_model(str(tmp_path / "sae_a"))
    f = tmp_path / f"heldout.{fmt}"
    if fmt == "pt":
        torch.save({"acts": acts, "token_ids": ids}, f)
    else:
        save_file({"acts": acts, "token_ids": ids}, str(f))
    out_dir = tmp_path / "out"
    argv = ["--sae_paths", str(tmp_path / "sae_a"), "--activations_path", str(f), "--output_folder", str(out_dir)]
    out = main([*argv, "--top_m", "2"])
    (path,) = out
    res = json.loads((out_dir / "sae_a_custom_sae_eval_results.json").read_text())
    assert res == out[path]
    assert res["eval_result_metrics"]["proxies"]["token_entropy"] == pytest.approx(math.log(2) / 2, abs=1e-12)
    assert res["eval_config"]["activations_path"] == str(f)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--top_m", "0"], "top_m must be"),
        (["--activations_path", "nope.pt"], "activations file not found"),
        (["--top_m", "x"], "invalid int value"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, match):
    from sae_rdp_plugin.cli import run_entry_point

    sae, acts, ids = _known()
    sae.save_model(str(tmp_path / "sae_a"))
    torch.save({"acts": acts, "token_ids": ids}, tmp_path / "a.pt")
    argv = ["--sae_paths", str(tmp_path / "sae_a"), "--activations_path", str(tmp_path / "a.pt"), *extra]
    argv += ["--output_folder", str(tmp_path / "out")]

    def entry():
        try:
            return main(argv)
        except SystemExit as e:  # argparse's exit(2), as run_entry_point's caller sees it
            return e.code

    assert run_entry_point(entry) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0]
    assert not (tmp_path / "out").exists()


def test_activations_file_without_keys(tmp_path):
    torch.save({"acts": torch.ones(2, 2)}, tmp_path / "a.pt")
    with pytest.raises(SaeRdpError, match="missing 'token_ids'"):
        main(["--sae_paths", str(tmp_path), "--activations_path", str(tmp_path / "a.pt")])


def test_reads_a_sae_rdp_cache_folder_and_its_shards(tmp_path):
    """What `sae-rdp cache` writes (shards holding 'activations' + 'token_ids', a manifest) is read as the
    held-out activations: the folder (shards concatenated in manifest order) and one shard file; both equal the
    hook's activations the cache stored (read back by the cache's own reader)."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from sae_rdp_plugin.evals.rdp_proxies.main import load_activations
    from sae_rdp_plugin.lm import activations as A

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, d_head=4, n_heads=4, d_mlp=32, n_ctx=16, d_vocab=50,
                                  act_fn="gelu", normalization_type="LN")  # fmt: skip
    tokens = np.random.default_rng(0).integers(2, 50, size=(6, 8)).astype(np.int32)
    tokens[:, 0] = 1  # BOS
    out = tmp_path / "cache"
    A.cache_activations(HookedTransformer(cfg), tokens, "blocks.1.hook_resid_post", out, rows_per_shard=4,
                        batch_rows=2, dtype="float32", bos_token_id=1, progress=False)  # fmt: skip
    acts, ids = load_activations(out)
    torch.testing.assert_close(acts, A.load_all(out))
    assert ids.shape == (acts.shape[0],) and (ids != 1).all()
    one, one_ids = load_activations(out / "shard_00000.safetensors")
    torch.testing.assert_close(one, load_file(str(out / "shard_00000.safetensors"))["activations"])
    assert torch.equal(one_ids, ids[: len(one_ids)]) and len(one) < len(acts)
    with pytest.raises(SaeRdpError, match="not found"):
        load_activations(tmp_path / "nope")

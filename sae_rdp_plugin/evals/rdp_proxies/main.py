"""``rdp_proxies``: ground-truth-free polysemanticity proxies of SAEs on held-out language-model
activations, in SAEBench's eval format, for ``sae-rdp audit`` over an SAE sweep.

For each selected SAE, on held-out activations ``acts`` [N, d_in] with their token ids [N] (latent i is
*active* at token t when z_ti > 0):

* ``token_entropy`` = mean over latents active on at least one token of H_i, where H_i is the Shannon
  entropy (nats) of the empirical distribution of the token ids at latent i's top_m highest active
  activations (all of its active positions if it has fewer than top_m; ties broken by earlier position).
  0 = the latent fires on one token type; higher = more polysemantic (lexically).
* ``decoder_max_cos`` = mean over latents i with a nonzero decoder row of max_{j != i} |cos(W_dec_i,
  W_dec_j)| (cos with a zero row counts as 0). Higher = more entangled / redundant.
* ``l0`` = mean active latents per token, ``dead_fraction`` = share of latents never active, ``n_tokens``,
  ``top_m``.

A proxy that is undefined (no active latent; no nonzero decoder row or d_sae = 1) is written as NaN, as
SAEBench's ``to_json`` writes it; ``sae_rdp_plugin.audit.readers`` then reads it as a missing value (named
in ``table.report``), so one degenerate SAE does not stop the eval of a sweep.

Python::

    from sae_rdp_plugin.evals.rdp_proxies.eval_config import RDPProxiesEvalConfig
    from sae_rdp_plugin.evals.rdp_proxies.main import compute_proxies, run_eval
    compute_proxies(sae, acts, token_ids, top_m=16)  # {"token_entropy": ..., "decoder_max_cos": ..., ...}
    run_eval(RDPProxiesEvalConfig(model_name="gemma-3-270m"), [("my_sae", sae)], acts, token_ids,
             "eval_results/rdp_proxies")

CLI (SAEBench's standard flags; the activations file holds ``acts`` and ``token_ids``)::

    python -m sae_rdp_plugin.evals.rdp_proxies.main --sae_paths DIR1 DIR2 \\
        --activations_path heldout.safetensors --output_folder eval_results/rdp_proxies
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from sae_rdp_plugin.cli import OneLineArgumentParser, run_entry_point
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.evals import sae_lens_version
from sae_rdp_plugin.evals.rdp_proxies.eval_config import RDPProxiesEvalConfig, check_count
from sae_rdp_plugin.evals.rdp_proxies.eval_output import (
    EVAL_TYPE_ID_RDP_PROXIES,
    RDPProxiesEvalOutput,
    RDPProxiesMetricCategories,
    RDPProxiesMetrics,
    RDPProxiesSampleMetrics,
)
from sae_rdp_plugin.evals.selection import add_selection_args, pending_saes, select_saes
from sae_rdp_plugin.io import atomic_write_text

#: the keys of compute_proxies' result that go into the "proxies" and "sample" categories
PROXY_KEYS = ("token_entropy", "decoder_max_cos")
SAMPLE_KEYS = ("l0", "dead_fraction", "n_tokens", "top_m")


def check_activations(acts: Any, token_ids: Any, d_in: int | None = None) -> None:
    """Raise SaeRdpError unless ``acts`` is a float tensor [N, d_in] (N >= 1) and ``token_ids`` an integer
    tensor [N] of ids >= 0."""
    if not isinstance(acts, torch.Tensor) or acts.ndim != 2 or not acts.is_floating_point():
        raise SaeRdpError(f"acts must be a 2-D float tensor [N, d_in], got {_describe(acts)}")
    if acts.shape[0] < 1:
        raise SaeRdpError("acts holds no tokens (N = 0)")
    if d_in is not None and acts.shape[1] != d_in:
        raise SaeRdpError(f"shape mismatch: SAE d_in={d_in} but acts has {acts.shape[1]} columns")
    if (
        not isinstance(token_ids, torch.Tensor)
        or token_ids.ndim != 1
        or token_ids.is_floating_point()
        or token_ids.is_complex()
        or token_ids.dtype == torch.bool
    ):
        raise SaeRdpError(f"token_ids must be a 1-D integer tensor [N], got {_describe(token_ids)}")
    if token_ids.shape[0] != acts.shape[0]:
        raise SaeRdpError(f"mismatched lengths: acts has {acts.shape[0]} tokens, token_ids {token_ids.shape[0]}")
    if bool((token_ids < 0).any()):
        raise SaeRdpError("token_ids must be >= 0")


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


@torch.no_grad()
def compute_proxies(
    sae: Any, acts: torch.Tensor, token_ids: torch.Tensor, top_m: int = 16, chunk: int = 4096
) -> dict[str, float | int]:
    """Polysemanticity proxies of ``sae`` on held-out activations (see the module docstring for the math).

    ``acts`` [N, d_in] is encoded with ``sae.encode`` ``chunk`` tokens at a time on the SAE's device, keeping
    a running top-``top_m`` (value, position) per latent, so no [N, d_sae] matrix exists; the cosine matrix of
    ``sae.W_dec`` is formed ``chunk`` rows at a time. Returns ``token_entropy``, ``decoder_max_cos`` (NaN
    where undefined), ``l0``, ``dead_fraction``, ``n_tokens``, ``top_m``, and the numbers of latents each
    proxy averages over (``n_entropy_latents``, ``n_decoder_latents``). Raises SaeRdpError on bad input or
    non-finite activations.
    """
    check_count("top_m", top_m)
    check_count("chunk", chunk)
    W = sae.W_dec.detach()
    n, dev = int(W.shape[0]), W.device
    check_activations(acts, token_ids, int(sae.cfg.d_in))
    N = int(acts.shape[0])

    # ---- stream over tokens: L0, fired latents, running top-m per latent
    fired = torch.zeros(n, dtype=torch.bool, device=dev)
    n_active = 0
    top_v: torch.Tensor | None = None  # [top_m, n], descending; -inf = no active position (yet)
    top_p = torch.zeros((top_m, n), dtype=torch.long, device=dev)  # their token positions
    for s in range(0, N, chunk):
        x = acts[s : s + chunk].to(device=dev, dtype=sae.dtype)
        if not bool(torch.isfinite(x).all()):
            raise SaeRdpError(f"acts contains NaN or Inf (in rows {s}..{s + x.shape[0] - 1})")
        z = sae.encode(x)
        if z.is_sparse:  # TopK SAEs with use_sparse_activations
            z = z.to_dense()
        if not bool(torch.isfinite(z).all()):
            raise SaeRdpError("SAE latents contain NaN or Inf")
        z = z.to(torch.promote_types(z.dtype, torch.float32))  # bf16 would create spurious ties
        act = z > 0
        n_active += int(act.sum())
        fired |= act.any(0)
        if top_v is None:
            top_v = torch.full((top_m, n), -math.inf, dtype=z.dtype, device=dev)
        # The buffer precedes the chunk and holds earlier positions, so a *stable* descending sort breaks ties
        # by earlier position: the top-m set is then independent of the chunk size (topk's tie order is not).
        cand = torch.cat([top_v, torch.where(act, z, torch.full_like(z, -math.inf))])
        vals, order = torch.sort(cand, dim=0, descending=True, stable=True)
        top_v, order = vals[:top_m], order[:top_m]
        from_buf = order < top_m
        top_p = torch.where(from_buf, top_p.gather(0, order.clamp(max=top_m - 1)), order - top_m + s)
    assert top_v is not None

    # ---- token entropy of each latent's top-m token ids
    valid = torch.isfinite(top_v).cpu()  # active positions among the top m
    ids = token_ids.detach().cpu().long()
    tok = torch.where(valid, ids[top_p.cpu()], torch.full_like(top_p.cpu(), -1))  # -1: below every id
    st = tok.T.contiguous().sort(dim=1).values  # [n, m]
    # occurrences of each entry's id among the latent's entries (sorted rows: two binary searches)
    cnt = torch.searchsorted(st, st, right=True) - torch.searchsorted(st, st)
    ok = st >= 0
    M = ok.sum(1)  # active positions used per latent (>= 1 exactly for the fired latents)
    Md = M.clamp_min(1).double()
    # H = -sum_id p log p with p = c/M = -(1/M) sum over the M entries of log(c_entry / M)
    logp = torch.where(ok, torch.log(cnt.double() / Md[:, None]), torch.zeros((), dtype=torch.float64))
    H = -logp.sum(1) / Md
    has = M > 0
    token_entropy = float(H[has].mean()) if bool(has.any()) else math.nan

    # ---- decoder max |cos|, chunk rows at a time (never the [n, n] matrix)
    Wd = W.double()
    norm = Wd.norm(dim=1)
    live = norm > 0
    ct = torch.promote_types(W.dtype, torch.float32)
    Wn = (Wd / torch.where(live, norm, torch.ones_like(norm))[:, None]).to(ct)  # zero rows stay zero
    mx = torch.empty(n, dtype=ct, device=dev)
    for s in range(0, n, chunk):
        c = (Wn[s : s + chunk] @ Wn.T).abs()
        r = torch.arange(c.shape[0], device=dev)
        c[r, r + s] = -1.0  # j != i (|cos| >= 0, so -1 never wins when another j exists)
        mx[s : s + c.shape[0]] = c.max(1).values.clamp(max=1.0)  # rounding can give 1 + eps
    n_dec = int(live.sum())
    decoder_max_cos = float(mx[live].double().mean()) if n > 1 and n_dec > 0 else math.nan

    return {
        "token_entropy": token_entropy,
        "decoder_max_cos": decoder_max_cos,
        "l0": n_active / N,
        "dead_fraction": float((~fired).sum()) / n,
        "n_tokens": N,
        "top_m": top_m,
        "n_entropy_latents": int(has.sum()),
        "n_decoder_latents": n_dec if n > 1 else 0,
    }


def load_activations(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """``(acts, token_ids)`` on the CPU from a ``.pt`` (a dict, loaded with weights_only) or ``.safetensors``
    file holding ``acts`` (or ``activations``, as a shard of ``sae-rdp cache`` names it) and ``token_ids``, or
    from a ``sae-rdp cache`` folder (its shards in manifest order, concatenated). Raises SaeRdpError on a
    missing file, another suffix or missing keys."""
    p = Path(path)
    if p.is_dir() and (p / "manifest.json").is_file():
        from sae_rdp_plugin.lm.activations import read_cache_manifest

        shards = read_cache_manifest(p).get("shards") or []
        if not shards:
            raise SaeRdpError(f"activation cache {p} has no shards")
        parts = [load_activations(p / s["file"]) for s in shards]
        return torch.cat([a for a, _ in parts]), torch.cat([t for _, t in parts])
    if not p.is_file():
        raise SaeRdpError(f"activations file not found: {p} (a .pt / .safetensors file or a sae-rdp cache folder)")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(p), device="cpu")
    elif suffix in (".pt", ".pth"):
        obj = torch.load(p, map_location="cpu", weights_only=True)
    else:
        raise SaeRdpError(f"activations file must be .pt or .safetensors, got {p.name}")
    if not isinstance(obj, dict):
        raise SaeRdpError(f"{p}: expected a dict with 'acts' and 'token_ids', got {type(obj).__name__}")
    if "acts" not in obj and "activations" in obj:  # a shard of sae-rdp cache
        obj = {**obj, "acts": obj["activations"]}
    missing = [k for k in ("acts", "token_ids") if k not in obj]
    if missing:
        raise SaeRdpError(f"{p}: missing {', '.join(repr(k) for k in missing)} (has {', '.join(map(str, obj))})")
    check_activations(obj["acts"], obj["token_ids"])
    return obj["acts"], obj["token_ids"]


def evaluate_sae(
    config: RDPProxiesEvalConfig, release: str, sae_id: str, sae: Any, acts: torch.Tensor, token_ids: torch.Tensor
) -> str:
    """The SAEBench JSON text (validated by :class:`RDPProxiesEvalOutput`) of one SAE's proxies on ``acts`` /
    ``token_ids``, under the given SAELens release and id (so that it joins the SAE's other eval outputs);
    an undefined proxy is written NaN (see the module docstring)."""
    from sae_bench.sae_bench_utils import get_eval_uuid, get_sae_bench_version

    m = compute_proxies(sae, acts, token_ids, top_m=config.top_m, chunk=config.chunk)
    out = RDPProxiesEvalOutput(
        eval_config=config,
        eval_id=get_eval_uuid(),
        datetime_epoch_millis=int(datetime.now().timestamp() * 1000),
        eval_result_metrics=RDPProxiesMetricCategories(
            proxies=RDPProxiesMetrics(**{k: m[k] for k in PROXY_KEYS}),
            sample=RDPProxiesSampleMetrics(**{k: m[k] for k in SAMPLE_KEYS}),
        ),
        eval_result_details=[],
        sae_bench_commit_hash=get_sae_bench_version(),
        sae_lens_id=sae_id,
        sae_lens_release_id=release,
        sae_lens_version=sae_lens_version(),
        sae_cfg_dict=sae.cfg.to_dict(),
        eval_result_unstructured={
            "n_entropy_latents": m["n_entropy_latents"],
            "n_decoder_latents": m["n_decoder_latents"],
        },
    )
    assert out.eval_type_id == EVAL_TYPE_ID_RDP_PROXIES
    return out.to_json()  # json.dumps: an undefined proxy is written NaN


def run_eval(
    config: RDPProxiesEvalConfig,
    selected_saes: Sequence[tuple[str, Any]],
    acts: torch.Tensor,
    token_ids: torch.Tensor,
    output_path: str,
    force_rerun: bool = False,
    device: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate each (release, sae_id) or (name, SAE object) pair as SAEBench does (objects get sae_id
    "custom_sae") on ``acts`` / ``token_ids``; write ``{output_path}/{release}_{sae_id}_eval_results.json``
    (atomically; existing files are kept unless ``force_rerun``). ``device``: where the SAEs run (None: SAE
    objects stay where they are, (release, sae_id) pairs load on the CPU); ``acts`` may stay on the CPU.
    Returns {file path: output dict}."""
    config.check()
    check_activations(acts, token_ids)  # before any work; d_in is checked per SAE
    os.makedirs(output_path, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for path, release, sae_id, sae in pending_saes(
        selected_saes, output_path, device or "cpu", force_rerun, "rdp_proxies"
    ):
        if device is not None:
            sae = sae.to(device)
        text = evaluate_sae(config, release, sae_id, sae, acts, token_ids)
        atomic_write_text(path, text)
        results[path] = json.loads(text)
    return results


def arg_parser() -> argparse.ArgumentParser:
    d = RDPProxiesEvalConfig()
    p = OneLineArgumentParser(
        description="Run the rdp_proxies eval (sae-rdp): token entropy and decoder max |cos| on held-out activations"
    )
    add_selection_args(p, "rdp_proxies")
    p.add_argument("--model_name", type=str, default=d.model_name, help="Label of the language model (metadata)")
    p.add_argument(
        "--activations_path",
        type=str,
        default="",
        help=".pt or .safetensors file with 'acts' (or 'activations') and 'token_ids', or a sae-rdp cache folder",
    )
    p.add_argument("--top_m", type=int, default=d.top_m, help="Top activations per latent for token_entropy")
    p.add_argument("--chunk", type=int, default=d.chunk, help="Tokens per forward pass / decoder rows per block")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    args = arg_parser().parse_args(argv)
    if not args.activations_path:
        raise SaeRdpError("give the held-out activations: --activations_path FILE (.pt or .safetensors)")
    config = RDPProxiesEvalConfig(
        model_name=args.model_name,
        activations_path=args.activations_path,
        sae_paths=args.sae_paths,
        top_m=args.top_m,
        chunk=args.chunk,
    ).check()  # before loading anything
    acts, token_ids = load_activations(args.activations_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for p in args.sae_paths:
        if not Path(p).is_dir():
            raise SaeRdpError(f"SAE folder not found: {p}")
    selected = select_saes(args.sae_paths, args.sae_regex_pattern, args.sae_block_pattern, device)
    if not selected:
        raise SaeRdpError("no SAE selected")
    t0 = time.time()
    out = run_eval(config, selected, acts, token_ids, args.output_folder, force_rerun=args.force_rerun, device=device)
    print(f"[rdp_proxies] {len(out)} file(s) in {time.time() - t0:.1f} s under {args.output_folder}")
    return out


if __name__ == "__main__":
    sys.exit(run_entry_point(main))

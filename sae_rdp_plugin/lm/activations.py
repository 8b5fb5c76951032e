"""Caching a model's activations at one hook to disk, resumably, and feeding them to SAELens.

Layout of a cache folder::

    manifest.json              written atomically after every shard (the resume point)
    shard_00000.safetensors    {"activations": [n_tokens, d_in], "token_ids": [n_tokens] int32}
    shard_00001.safetensors    ...

Shard ``i`` holds the activations of corpus rows ``[i * rows_per_shard, (i+1) * rows_per_shard)``,
flattened over (row, position), with BOS positions dropped when ``exclude_bos`` (the BOS residual of
Gemma is a ~100x-norm outlier that SAELens also excludes by default via ``exclude_special_tokens``).
A shard is written to a temporary file and renamed, then listed in the manifest; a killed run is
restarted with the same arguments and continues at the first shard missing from the manifest
(arguments that disagree with the manifest raise an error instead of mixing two caches).

Reading: :func:`iterate_batches` yields shuffled ``[batch, d_in]`` float tensors forever (epochs over
the cache, reshuffled each epoch), which is what ``sae_lens.training.sae_trainer.SAETrainer`` takes as
its ``data_provider``; :func:`load_all` concatenates the cache into one tensor (e.g. on the GPU).

Compatibility with SAELens's own cached-activations path: SAELens's ``CacheActivationsRunner`` writes
a Hugging Face ``datasets`` folder (arrow shards, one column named after the hook with
[context_size, d_in] per row, plus ``token_ids``) that ``ActivationsStore`` reads when
``use_cached_activations=True``. Our safetensors shards are **not** that format (they are flat
per-token, BOS-free, and resumable); :func:`to_saelens_dataset` converts a cache into SAELens's format
when every row kept all of its positions (``exclude_bos=False``).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.io import atomic_save, atomic_write_json, check_out_folder, folder_holds_only

MANIFEST = "manifest.json"
FORMAT = "sae-rdp activation cache v1"
_SHARD_RE = re.compile(r"shard_\d{5,}\.safetensors")  # (5 digits, more past 99,999 shards)


def layer_of_hook(hook_name: str) -> int | None:
    """``blocks.6.hook_resid_post`` -> 6 (None for hooks outside the blocks)."""
    parts = hook_name.split(".")
    if len(parts) >= 2 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


@torch.no_grad()
def hook_activations(model: Any, tokens: torch.Tensor, hook_name: str) -> torch.Tensor:
    """Activations [batch, pos, d] of ``model`` at ``hook_name``, running only the layers needed."""
    layer = layer_of_hook(hook_name)
    if hook_name not in model.hook_dict:
        raise SaeRdpError(f"hook {hook_name!r} not in model (e.g. blocks.0.hook_resid_post)")
    stop = None if layer is None else layer + 1
    _, cache = model.run_with_cache(tokens, names_filter=[hook_name], stop_at_layer=stop)
    return cache[hook_name]


def _read_manifest(out: Path) -> dict[str, Any] | None:
    p = out / MANIFEST
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise SaeRdpError(f"malformed activation-cache manifest {p}: {exc}") from exc
    if not isinstance(m, dict) or not isinstance(m.get("shards", []), list):
        raise SaeRdpError(f"{p} is not an activation-cache manifest (a JSON object with a list of shards)")
    return m


def is_cache_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is an activation cache :func:`cache_activations` wrote (complete or killed half-way):
    nothing but its manifest and shards, and the manifest, if there is one yet, is an activation-cache manifest."""
    folder = Path(folder)
    if not folder_holds_only(folder, lambda n: n == MANIFEST or bool(_SHARD_RE.fullmatch(n))):
        return False
    if not (folder / MANIFEST).exists():
        return True
    try:
        return (_read_manifest(folder) or {}).get("format") == FORMAT
    except (SaeRdpError, OSError):
        return False


def check_cache_out(out: str | Path, flag: str = "--out") -> Path:
    """``out`` as a Path if an activation cache may be written there: new, empty, or an earlier cache (resumed
    or, with other arguments, refused by :func:`cache_activations`); else SaeRdpError naming ``flag``."""
    return check_out_folder(out, is_cache_folder, flag)


def cache_activations(
    model: Any,
    tokens: np.ndarray,
    hook_name: str,
    out: str | Path,
    *,
    max_tokens: int | None = None,
    rows_per_shard: int = 64,
    batch_rows: int = 8,
    dtype: str = "bfloat16",
    exclude_bos: bool = True,
    bos_token_id: int | None = None,
    model_name: str = "",
    corpus_sha256: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``model`` over ``tokens`` [rows, ctx] and store its ``hook_name`` activations in ``out``
    as safetensors shards (see module docstring). Stops after ``max_tokens`` corpus tokens (rounded up
    to whole shards). Resumes an interrupted cache. Returns the manifest."""
    from safetensors.torch import save_file

    if tokens.ndim != 2:
        raise SaeRdpError(f"tokens must be [rows, context], got shape {tokens.shape}")
    check_cache_args(tokens.shape[0], max_tokens=max_tokens, rows_per_shard=rows_per_shard, batch_rows=batch_rows)
    if dtype not in ("bfloat16", "float16", "float32"):
        raise SaeRdpError(f"dtype must be bfloat16, float16 or float32, got {dtype!r}")
    if hook_name not in model.hook_dict:
        raise SaeRdpError(f"hook {hook_name!r} not in model (e.g. blocks.0.hook_resid_post)")
    out = check_cache_out(out)
    n_rows = tokens.shape[0]
    if max_tokens is not None:
        n_rows = min(n_rows, math.ceil(max_tokens / tokens.shape[1]))
    n_shards = math.ceil(n_rows / rows_per_shard)
    if bos_token_id is None and exclude_bos:
        bos_token_id = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    params = {
        "format": FORMAT,
        "model": model_name,
        "hook_name": hook_name,
        "d_in": int(model.cfg.d_model if "resid" in hook_name else 0) or None,
        "dtype": dtype,
        "context_size": int(tokens.shape[1]),
        "rows_per_shard": rows_per_shard,
        "exclude_bos": exclude_bos,
        "bos_token_id": bos_token_id,
        "corpus_sha256": corpus_sha256,
    }
    manifest = _read_manifest(out)
    if manifest is not None:
        for k, v in params.items():
            if k != "d_in" and manifest.get(k) != v:
                raise SaeRdpError(f"{out} holds a cache with {k}={manifest.get(k)!r}, not {v!r}; use another --out")
    else:
        manifest = {**params, "shards": [], "complete": False}
    out.mkdir(parents=True, exist_ok=True)
    done = {s["index"] for s in manifest["shards"]}
    device = next(model.parameters()).device
    tdtype = getattr(torch, dtype)
    t0 = time.time()
    for i in range(n_shards):
        if i in done:
            continue
        rows = tokens[i * rows_per_shard : min(n_rows, (i + 1) * rows_per_shard)]
        acts, ids = [], []
        for b in range(0, len(rows), batch_rows):
            tok = torch.as_tensor(rows[b : b + batch_rows], dtype=torch.long, device=device)
            a = hook_activations(model, tok, hook_name)
            a = a.reshape(-1, a.shape[-1])
            t = tok.reshape(-1)
            if exclude_bos and bos_token_id is not None:
                keep = t != bos_token_id
                a, t = a[keep], t[keep]
            if not torch.isfinite(a).all():
                raise SaeRdpError(f"non-finite activations at {hook_name} in shard {i}")
            acts.append(a.to(tdtype).cpu())
            ids.append(t.to(torch.int32).cpu())
        A, T = torch.cat(acts), torch.cat(ids)
        name = f"shard_{i:05d}.safetensors"
        atomic_save(out / name, lambda p, A=A, T=T: save_file({"activations": A.contiguous(), "token_ids": T}, str(p)))
        manifest["d_in"] = int(A.shape[1])
        manifest["shards"].append({"index": i, "file": name, "rows": int(len(rows)), "tokens": int(A.shape[0])})
        manifest["shards"].sort(key=lambda s: s["index"])
        manifest["total_tokens"] = int(sum(s["tokens"] for s in manifest["shards"]))
        manifest["complete"] = len(manifest["shards"]) == n_shards
        manifest["n_shards_planned"] = n_shards
        atomic_write_json(out / MANIFEST, manifest)
        if progress:
            el = time.time() - t0
            print(f"cache: shard {i + 1}/{n_shards} ({manifest['total_tokens']:,} tokens, {el:.0f}s)", flush=True)
    manifest["complete"] = True
    manifest["n_shards_planned"] = n_shards
    manifest["total_tokens"] = int(sum(s["tokens"] for s in manifest["shards"]))
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def check_cache_args(
    n_rows: int, *, max_tokens: int | None = None, rows_per_shard: int = 64, batch_rows: int = 8
) -> None:
    """The range checks of :func:`cache_activations` (before a model is loaded): SaeRdpError naming the flag."""
    if n_rows == 0:
        raise SaeRdpError("the corpus split has no rows (e.g. --split heldout of a corpus built without held-out text)")
    if max_tokens is not None and max_tokens <= 0:
        raise SaeRdpError(f"--tokens must be >= 1 (leave it out for all), got {max_tokens}")
    if rows_per_shard <= 0:
        raise SaeRdpError(f"--rows-per-shard must be >= 1, got {rows_per_shard}")
    if batch_rows <= 0:
        raise SaeRdpError(f"--batch-rows must be >= 1, got {batch_rows}")


def read_cache_manifest(cache_dir: str | Path) -> dict[str, Any]:
    m = _read_manifest(Path(cache_dir))
    if m is None:
        raise SaeRdpError(f"no activation cache at {cache_dir} (manifest.json missing)")
    if m.get("format") != FORMAT:
        raise SaeRdpError(f"{cache_dir}: not an sae-rdp activation cache (format {m.get('format')!r})")
    return m


def load_shard(cache_dir: str | Path, shard: dict[str, Any]) -> torch.Tensor:
    from safetensors.torch import load_file

    p = Path(cache_dir) / shard["file"]
    if not p.is_file():
        raise SaeRdpError(f"activation shard missing: {p}")
    return load_file(str(p))["activations"]


def load_all(cache_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
    """All cached activations [n_tokens, d_in] as one tensor on ``device``."""
    m = read_cache_manifest(cache_dir)
    parts = [load_shard(cache_dir, s).to(device=device, dtype=dtype) for s in m["shards"]]
    if not parts:
        raise SaeRdpError(f"activation cache {cache_dir} has no shards")
    return torch.cat(parts)


def iterate_batches(
    source: str | Path | torch.Tensor,
    batch_size: int,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    epochs: int | None = None,
) -> Iterator[torch.Tensor]:
    """Shuffled ``[batch_size, d_in]`` batches, epoch after epoch (forever if ``epochs`` is None).

    ``source``: a cache folder (loaded into memory once) or an in-memory tensor [n_tokens, d_in].
    Each epoch is a fresh permutation (seeded), the last partial batch of an epoch is dropped. This
    is a valid ``data_provider`` for SAELens's ``SAETrainer``."""
    acts = load_all(source) if not isinstance(source, torch.Tensor) else source
    n = acts.shape[0]
    if batch_size <= 0 or batch_size > n:
        raise SaeRdpError(f"batch_size must be in 1..{n} (cached tokens), got {batch_size}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    e = 0
    while epochs is None or e < epochs:
        perm = torch.randperm(n, generator=gen).to(acts.device)
        for b in range(0, n - batch_size + 1, batch_size):
            yield acts[perm[b : b + batch_size]].to(device=device, dtype=dtype, non_blocking=True)
        e += 1


def to_saelens_dataset(cache_dir: str | Path, out: str | Path) -> Path:
    """Write a cache as SAELens's cached-activations dataset (``datasets`` folder, column = hook name,
    [context_size, d_in] per row, plus ``token_ids``) so ``ActivationsStore(use_cached_activations=True,
    cached_activations_path=out)`` can read it. Needs a cache made with ``exclude_bos=False``."""
    import datasets

    m = read_cache_manifest(cache_dir)
    if m["exclude_bos"]:
        raise SaeRdpError("SAELens's cached format keeps every position: build the cache with exclude_bos=False")
    from safetensors.torch import load_file

    ctx, hook = m["context_size"], m["hook_name"]

    def gen() -> Iterator[dict[str, Any]]:
        for s in m["shards"]:
            f = load_file(str(Path(cache_dir) / s["file"]))
            a = f["activations"].float().reshape(-1, ctx, f["activations"].shape[-1])
            t = f["token_ids"].reshape(-1, ctx)
            for r in range(a.shape[0]):
                yield {hook: a[r].numpy(), "token_ids": t[r].numpy()}

    features = datasets.Features(
        {
            hook: datasets.Array2D(shape=(ctx, m["d_in"]), dtype="float32"),
            "token_ids": datasets.Sequence(datasets.Value("int32"), length=ctx),
        }
    )
    ds = datasets.Dataset.from_generator(gen, features=features)
    ds.save_to_disk(str(out))
    return Path(out)

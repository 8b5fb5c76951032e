#!/usr/bin/env python3
"""Run one training stage of ``plan.json`` on a device: train its SAEs, then evaluate each with SAEBench's core.

    python experiments/table2/run_stage.py --plan experiments/table2/plan.json --stage T-gemma3-270m-9-topk \\
        --model-path /tmp/t2/gemma-3-270m-q4_k_m.gguf --corpus /tmp/t2/shards --out $OUT/t2 --device cuda

Stages run here: ``T-*`` (the plan's SAEs of one model-layer and architecture), ``W-wsae`` (the WSAE arm) and
``C-*`` (calibration of ``l1_coefficient`` / ``l0_coefficient``: the recipe's grid, per width, short runs;
level ``calN`` = the coefficient interpolated (log-log) between the two grid values whose held-out L0 bracket
``target_l0[N]`` (else the grid value nearest on a log scale), written to
``OUT/calibration_<stage>.json``, which the ``T-*`` stage of that architecture reads) and ``E-<model>-<layer>``
(SAEBench's ``sparse_probing_sae_probes`` on every SAE trained so far for that model-layer, finals and
checkpoints, on ``probe_datasets.json``'s fixed subset: ``probing_stage.py``; with ``--evals absorption``
SAEBench's ``absorption_first_letter`` (absorption and feature splitting): ``absorption_stage.py``; JSONs in
``OUT/<eval type>/`` with the core JSONs' file names and ids).

Training: :func:`sae_rdp_plugin.train.lm.train_on_model`; the final SAEs of the stage that share a hook, a
batch size and a token budget are trained in lockstep from one activation stream, ``--group-size`` at a time.
A plan SAE with ``checkpoint_of_final`` (tokens = f x the final's) is the final run's SAELens checkpoint
(``n_checkpoints`` = the number of such fractions, evenly spaced: f = i / (n + 1)), evaluated as a separate SAE.
Resumable: an SAE whose folder holds ``train_summary.json`` is not trained again, nor (``--committed``, T-* and
W-* stages) one whose train summary is committed, so that a fresh machine goes on where the sweep stands; a core
JSON that exists is not recomputed (the library writes each SAE atomically; JSONs are written to a temporary file
and renamed).

Core eval: SAEBench's own code (``sae_bench.evals.core.main``: ``run_evals`` for CE loss recovered
``ce_loss_score = (CE_abl - CE_sae) / (CE_abl - CE_orig)``, KL score, explained variance, MSE, L0, L1, shrinkage;
``calculate_misc_metrics``; ``save_single_eval_result``, which builds the pydantic ``CoreEvalOutput``), with two
offline adaptations: the HookedTransformer is passed in (converted from the training model by
:func:`sae_rdp_plugin.lm.models.hooked_from_hf`) instead of loaded by name, and the tokens are the corpus's
held-out rows (a ``datasets.Dataset`` with a ``tokens`` column) instead of openwebtext; BOS / pad positions are
excluded (``ignore_tokens``). Per-feature details are computed (the misc metrics need them) but not stored
(``--keep-feature-details`` stores them; 16k latents make MB-sized files). Every SAE an eval here receives (core,
probing, absorption) has its decoder norms folded first, as SAEBench's loader folds an SAE it loads by name
(``saebench_fold.py``; reconstructions unchanged; the stage record's ``saebench_fold`` says which SAEs were).
``sae_lens_release_id`` is ``table2-<model>-<architecture>``, ``sae_lens_id``
``<hook>__w<width>_<level>_s<seed>_step_<final|N>`` (the audit reads ``_step_<N>`` as a checkpoint).

``OUT/stage_<ID>.json``: per device call (appended), the wall seconds, GPU seconds (wall time while the CUDA
device was in use: training + eval), the SAEs trained / skipped / evaluated, and the deviations from the recipe.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
from workers import host_snapshot

from sae_rdp_plugin.devices import memory_bytes, synchronize
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.lm.activations import layer_of_hook

HERE = Path(__file__).resolve().parent
SAES_DIR, CORE_DIR, PROBE_DIR, ABSORPTION_DIR = "saes", "core", "sparse_probing_sae_probes", "absorption_first_letter"
CORE_WORKERS_MARGIN_S = 20.0  # --core-workers: stopped this long before --time-budget (proxies, export)
PROXY_DIR = "rdp_proxies"  # our ground-truth-free proxies (sae_rdp_plugin.evals.rdp_proxies), next to core
EVAL_DIRS = (CORE_DIR, PROXY_DIR, PROBE_DIR, ABSORPTION_DIR)  # one JSON per SAE each, named by json_name
# sae-probes' LLM baseline results (per dataset; the same for every SAE of a model-layer): exported under this
# name so that stage.sh can put them back on a fresh machine and E-* skips recomputing them
BASELINE_DIR = "probe_baselines"
# a stage id naming its model-layer: C-/T-<model>-<layer>-<arch>, E-<model>-<layer> (W-wsae names none)
STAGE_ID = re.compile(r"^[CTE]-(?P<model>.+)-(?P<layer>\d+)(?:-[a-z_]+)?$")
ABSORPTION_CARRY_DIR = "absorption_probe"  # absorption_stage.CARRY_DIR: the first-letter probe, carried

# recipe settings TrainConfig has no field for (reported in every stage file; library change needed)
DEVIATIONS: list[str] = []
WARM_UP_STEPS = 1000  # recipe: 1,000 warm-up steps, then a linear decay over the last 20% of the steps
DECAY_FRACTION = 0.2


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def load_json(p: Path) -> dict:
    try:
        return json.loads(Path(p).read_text())
    except (OSError, ValueError) as exc:
        fail(f"cannot read {p}: {exc}")
    raise AssertionError


def atomic_json(p: Path, obj: Any) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, p)


# ------------------------------------------------------------------------------------ the stage's SAEs


def level_of(s: dict) -> tuple[str, Any]:
    """(sparsity field, level) of a plan SAE: k, l1_coefficient or l0_coefficient."""
    for f in ("k", "l1_coefficient", "l0_coefficient"):
        if f in s:
            return f, s[f]
    fail(f"plan SAE {s['id']} has no sparsity level")
    raise AssertionError


def family(s: dict) -> str:
    """The id of the final run an SAE belongs to (its checkpoints share it): the plan id without ``/t<f>``."""
    return re.sub(r"/t[0-9.]+$", "", s["id"])


def sae_dir(out: Path, fam: str) -> Path:
    return out / SAES_DIR / fam.replace("=", "-")


def sae_lens_id(s: dict, step: str) -> str:
    f, lev = level_of(s)
    if "level_name" in s:  # calibrated: two levels may resolve to one value, their ids must differ
        lev = f"{lev:g}_{s['level_name']}"
    extra = f"_alpha{s['alpha']:g}" if "alpha" in s else ""
    extra += f"_capq{s['variance_cap_quantile']:g}" if "variance_cap_quantile" in s else ""
    return f"{s['hook']}__w{s['width']}_{f}{lev}{extra}_s{s['seed']}_step_{step}"


def model_layer_of(s: dict) -> str:
    """``<model>-L<layer>`` of a plan SAE: its results folder's name (``results/<model>-L<layer>/``)."""
    return f"{s['model']}-L{s['hook'].split('.')[1]}"


def release_id(s: dict) -> str:
    """``table2-<model>-L<layer>-<architecture>``: one release per architecture and model-layer."""
    return f"table2-{model_layer_of(s)}-{s['architecture']}"


#: :func:`release_id`'s form, read back (collect.py, report.py)
RELEASE_ID = re.compile(r"^table2-(?P<model>.+)-L(?P<layer>\d+)-(?P<arch>[a-z_]+)$")
#: ``results/replicates/<model>-L<layer>-<architecture>-r<N>/``: an architecture's sweep trained again with the
#: same recipe and seed (bf16 training steps are not bit-reproducible run to run) and evaluated the same way
REPLICATE_NAME = re.compile(r"^(?P<ml>.+-L\d+)-(?P<arch>[a-z_]+)-r(?P<run>\d+)$")


def calibration_stage(stage: str) -> bool:
    return stage.startswith("C-")


def calibration_saes(recipe: dict, stage: str) -> list[dict]:
    """The grid SAEs of a calibration stage ``C-<model>-<layer>-<arch>``, as plan-style dicts."""
    for m in recipe["models"]:
        for hook in m["hooks"] + m.get("optional_hooks", []):
            for arch, a in recipe["architectures"].items():
                if stage != f"C-{m['model']}-{hook.split('.')[1]}-{arch}" or "calibration" not in a:
                    continue
                cal, field = a["calibration"], a["sparsity_field"]
                return [
                    {
                        "id": f"{m['model']}/{hook}/{arch}/w{w}/{field}={v:g}/s0/cal",
                        "model": m["model"],
                        "hook": hook,
                        "architecture": arch,
                        "width": w,
                        field: v,
                        "seed": 0,
                        "tokens": cal["tokens"],
                        "checkpoint_of_final": False,
                        "stage": stage,
                    }
                    for w in recipe["widths"]
                    for v in cal["grid"]
                ]
    fail(f"no calibration stage {stage!r} in the recipe")
    raise AssertionError


def stale_calibration(cal: dict, recipe: dict, architecture: str) -> str | None:
    """Why a calibration file no longer serves ``architecture`` (made on another input scale than the recipe now
    trains it with), or None."""
    # calibrations before this field existed ran on the training default
    made = cal.get("normalize_activations", recipe["training"]["normalize_activations"])
    if made != (now := normalization(recipe, architecture)):
        return f"was made with normalize_activations={made!r}, the recipe now trains {architecture} with {now!r}"
    return None


def resolve_levels(saes: list[dict], out: Path, recipe: dict) -> list[dict]:
    """Replace ``calN`` levels by the values the calibration stage chose (OUT/calibration_C-*.json)."""
    res = []
    for s in saes:
        f, lev = level_of(s)
        if isinstance(lev, str) and lev.startswith("cal"):
            stage = "C-" + s["stage"].removeprefix("T-")
            p = out / f"calibration_{stage}.json"
            if not p.is_file():
                fail(f"{s['id']} needs the calibration of stage {stage}: run it first ({p} missing)")
            cal = load_json(p)
            if (why := stale_calibration(cal, recipe, s["architecture"])) is not None:
                fail(f"{p.name} {why}: rerun stage {stage}")
            chosen = cal["levels"][str(s["width"])]
            s = {**s, f: chosen[lev], "level_name": lev}
        res.append(s)
    return res


# ------------------------------------------------------------------------------------ model and corpus


def load_corpus(path: Path) -> tuple[np.ndarray, np.ndarray, int | None, dict]:
    """(train rows, held-out rows, BOS id, build metadata) from a corpus folder (tokens.npz) or a shards folder
    (shards.json); the metadata holds the build's ``tokenizer`` and ``tokens_sha256`` when the folder says."""
    from sae_rdp_plugin.lm.corpus import load_tokens, read_manifest, read_shards

    if (path / "shards.json").is_file():
        arrs = read_shards(path)
        meta = load_json(path / "shards.json").get("meta") or {}
        return arrs["train"], arrs["heldout"], meta.get("bos_token_id"), meta
    if (path / "tokens.npz").is_file():
        meta = read_manifest(path) if (path / "manifest.json").is_file() else {}
        return load_tokens(path, "train"), load_tokens(path, "heldout"), meta.get("bos_token_id"), meta
    fail(f"--corpus {path}: neither a corpus folder (tokens.npz) nor a shards folder (shards.json)")
    raise AssertionError


def corpus_provenance(meta: dict, manifest: Path = HERE / "corpus_manifest.json") -> dict:
    """The corpus build a call trained on, against the committed build of the same tokenizer
    (``corpus_manifest.json``): ``matches_manifest`` is None when either side lacks a tokens hash. A rebuild
    differs when a registry no longer serves a pinned archive (Debian mirrors drop point releases; the fetch
    then takes the current version, with a warning), so the SAEs of different sessions may have seen slightly
    different text: the stage record says which."""
    sha = meta.get("tokens_sha256")
    tok = meta.get("tokenizer")
    committed = None
    if manifest.is_file():
        for b in load_json(manifest).get("builds", []):
            m = b.get("manifest") or {}
            if tok is not None and m.get("tokenizer") == tok:
                committed = m.get("tokens_sha256")
    same = None if sha is None or committed is None else sha == committed
    return {"tokenizer": tok, "tokens_sha256": sha, "manifest_tokens_sha256": committed, "matches_manifest": same}


def load_models(name: str, args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(HF causal LM for the activation pipeline, HookedTransformer with the same weights for SAEBench's core,
    tokenizer or None). ``tiny-gpt2`` / ``tiny-gpt_neox``: random tiny models for tests."""
    import torch

    from sae_rdp_plugin.lm.models import hf_model, hooked_from_hf

    hf, tok = hf_model(
        name, path=args.model_path, n_layers=args.n_layers, random_init=args.random_init, dtype="float32", device="cpu"
    )
    conv = name.removeprefix("tiny-") if name.startswith("tiny-") else name
    hooked = hooked_from_hf(conv, hf, tok, device=args.device, dtype=torch.float32)
    return hf.to(args.device), hooked, tok


# ------------------------------------------------------------------------------------ training


def arch_recipe(recipe: dict, arch: str) -> dict:
    """The recipe's entry for ``arch`` (a weighted_* architecture reads its stock one; {} if none)."""
    return recipe["architectures"].get(arch.removeprefix("weighted_"), {})


def normalization(recipe: dict, arch: str) -> str:
    """The input normalisation of ``arch``: the recipe's per-architecture ``normalize_activations`` where it
    gives one (standard: ``standardize``, FINDINGS.md), else the training default."""
    return arch_recipe(recipe, arch).get("normalize_activations", recipe["training"]["normalize_activations"])


def train_config(s: dict, d_in: int, recipe: dict, args: argparse.Namespace, n_ckpt: int) -> Any:
    from sae_rdp_plugin.train.config import TrainConfig

    tr = recipe["training"]
    f, lev = level_of(s)
    bs = args.batch_size or tr["batch_size_tokens"]
    tokens = max(bs, int(round(s["tokens"] * args.tokens_scale / bs)) * bs)
    kw: dict[str, Any] = {"k": lev} if f == "k" else {"sparsity_coefficient": float(lev)}
    if "alpha" in s:
        kw["alpha"] = float(s["alpha"])
    if "variance_cap_quantile" in s:  # the massive-activation safe WSAE variant
        kw["variance_cap_quantile"] = float(s["variance_cap_quantile"])
    return TrainConfig(
        architecture=s["architecture"],
        d_in=d_in,
        d_sae=s["width"],
        tokens=tokens,
        batch_size=bs,
        lr=tr["lr"],
        # the recipe's schedule, shrunk with the run for smoke runs (--tokens-scale)
        lr_warm_up_steps=min(WARM_UP_STEPS, int(0.5 * (tokens // bs))),
        lr_decay_steps=int(DECAY_FRACTION * (tokens // bs)),
        seed=s["seed"],
        n_checkpoints=n_ckpt,
        normalize_activations=normalization(recipe, s["architecture"]),
        threshold_lr_scale=float(arch_recipe(recipe, s["architecture"]).get("threshold_lr_scale", 1.0)),
        # SAELens config fields the recipe sets per architecture (e.g. JumpReLU's threshold settings)
        sae_kwargs=dict(arch_recipe(recipe, s["architecture"]).get("sae_kwargs", {})),
        b_dec_init=tr["b_dec_init"],  # "mean": the mean normalised activation (TrainConfig.b_dec_init)
        dead_feature_window=tr["dead_feature_window"],
        autocast=tr["autocast"] == "bf16" and args.device.startswith("cuda"),
        device=args.device,
        **kw,
    )


def checkpoint_count(fam_saes: list[dict]) -> int:
    final = [s for s in fam_saes if not s["checkpoint_of_final"]]
    if len(final) != 1:
        fail(f"{family(fam_saes[0])}: {len(final)} final SAEs in the plan (need 1)")
    n = len(fam_saes) - 1
    for i, s in enumerate(sorted((s for s in fam_saes if s["checkpoint_of_final"]), key=lambda s: s["tokens"])):
        if abs(s["tokens"] / final[0]["tokens"] - (i + 1) / (n + 1)) > 1e-9:
            fail(f"{s['id']}: checkpoints must be evenly spaced ({i + 1}/{n + 1} of the final's tokens)")
    return n


def longest_eval_s(eval_s: dict[str, tuple[float, float]], profiled: Collection[str]) -> float:
    """The longest (core + proxies) seconds of the call's evals so far (``eval_s``: id -> (core s, proxies s)),
    the next eval's allowance before ``--time-budget``: among those that ran without the profiler (a profiled core
    eval takes several times as long, its trace processed when it ends), all of them if every one was profiled;
    0 before the first."""
    timed = [v for k, v in eval_s.items() if k not in profiled] or list(eval_s.values())
    return max((c + q for c, q in timed), default=0.0)


def train_summary_name(sae_folder: Path) -> str:
    """The file name of an SAE's train summary in a bundle's and the committed ``train_summaries/``: its folder
    under ``OUT/saes/`` (``sae_folder``, relative) with / as __."""
    return f"{sae_folder.as_posix().replace('/', '__')}.json"


def committed_summary(results: Path, fam: str, s: dict) -> Path:
    """Where ``collect.py`` commits the train summary of family ``fam`` (plan SAE ``s`` one of its members):
    ``results/<model>-L<layer>/train_summaries/`` (:func:`train_summary_name`)."""
    name = train_summary_name(sae_dir(Path(), fam).relative_to(SAES_DIR))
    return results / model_layer_of(s) / "train_summaries" / name


def pick_todo(
    fams: dict[str, list[dict]],
    out: Path,
    widths: list[int] | None,
    max_saes: int | None,
    committed: Path | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """(to train this call, trained before here, committed) among a stage's families (final SAE + its
    checkpoints): those without a train summary under ``out`` nor, when ``committed`` (a results folder) is given,
    one committed there (:func:`committed_summary`: a fresh machine would otherwise train a sweep's first SAEs again)
    are to train, in plan order, only those of ``widths`` (None: all), at most ``max_saes`` of them; the rest are
    left for a later call. Exit 2 if ``widths`` names none of them."""
    if widths is not None:
        have = sorted({m[0]["width"] for m in fams.values()})
        if not set(widths) & set(have):
            fail(f"--widths {widths}: the stage has no SAEs of those widths (its widths: {have})")
    todo, done, kept = [], [], []
    for fam, members in fams.items():
        if (sae_dir(out, fam) / "train_summary.json").is_file():
            done.append(fam)
        elif committed is not None and committed_summary(committed, fam, members[0]).is_file():
            kept.append(fam)
        elif widths is None or members[0]["width"] in widths:
            todo.append(fam)
    return (todo if max_saes is None else todo[:max_saes]), done, kept


def trained_saes(out: Path, fams: dict[str, list[dict]]) -> list[tuple[dict, Path, str]]:
    """(plan SAE, folder, step) of every SAE trained so far: each trained family's checkpoints (step = the
    checkpoint's training tokens), then its final SAE (step ``final``)."""
    res = []
    for fam, members in fams.items():
        d = sae_dir(out, fam)
        if not (d / "train_summary.json").is_file():
            continue  # not trained yet (--max-saes)
        ckpts = sorted((p for p in (d / "checkpoints").glob("*") if p.is_dir()), key=lambda p: int(p.name))
        ck_members = sorted((s for s in members if s["checkpoint_of_final"]), key=lambda s: s["tokens"])
        if len(ckpts) != len(ck_members):
            fail(f"{d}: {len(ckpts)} checkpoints saved, the plan has {len(ck_members)}")
        res += [(s, p, p.name) for s, p in zip(ck_members, ckpts)]
        res.append((next(s for s in members if not s["checkpoint_of_final"]), d, "final"))
    return res


def eval_json_name(release: str, sae_id: str) -> str:
    """The file name of an SAE's SAEBench JSON, the same in every eval folder (``core/``, ``sparse_probing_...``):
    ``<architecture>__<sae_lens_id>.json`` (dots as underscores). The architecture (last field of the release
    ``table2-<model>-L<layer>-<architecture>``) is part of it because two architectures share SAE ids (TopK and
    BatchTopK at one width and k); collect.py names every JSON of a bundle from its ids with this function."""
    return f"{release.rsplit('-', 1)[-1]}__{sae_id}".replace(".", "_") + ".json"


def json_name(s: dict, step: str) -> str:
    """``eval_json_name`` of a plan SAE at ``step``."""
    return eval_json_name(release_id(s), sae_lens_id(s, step))


# ------------------------------------------------------------------------------------ core eval (SAEBench)


def load_sae(path: Path, device: str) -> Any:
    """A stock SAELens inference SAE from a final save, or from a SAETrainer checkpoint (a training SAE saved
    before the normalisation was folded: its activation_scaler.json scaling factor and whitening are folded
    here, as ``SAETrainer`` folds them at the end of training)."""
    from sae_lens import SAE
    from sae_lens.training.activation_scaler import ActivationScaler

    sae = SAE.load_from_disk(path, device=device)
    if (path / "activation_scaler.json").is_file():  # SAELens's own reader: scaling factor and whitening
        scaler = ActivationScaler()
        scaler.load(path / "activation_scaler.json")
        if scaler.scaling_factor is not None:
            sae.fold_activation_norm_scaling_factor(scaler.scaling_factor)
        if scaler.whitening is not None:  # normalize_activations "standardize" (diagonal) or covariance_whitening
            w = scaler.whitening
            sae.fold_activation_whitening(mean=w.mean, whitening_matrix=w.matrix, unwhitening_matrix=w.inverse_matrix)
    return sae


def saebench_compat(sae: Any, plan_sae: dict) -> None:
    """SAEBench 0.6's core reads SAELens-5 config fields (``cfg.hook_name``, ``hook_layer``, ``hook_head_index``,
    ``model_name``, ``architecture_str``, ``model_from_pretrained_kwargs``); SAELens 6 keeps them in
    ``cfg.metadata`` or has none. They are set on the config object (``to_dict`` does not write them)."""
    c = sae.cfg
    c.hook_name = plan_sae["hook"]
    c.hook_layer = layer_of_hook(plan_sae["hook"])
    c.hook_head_index = None
    c.model_name = plan_sae["model"]
    c.architecture_str = c.architecture()
    c.model_from_pretrained_kwargs = {}


def fast_deterministic() -> bool:
    """Whether the fast step trains in its deterministic mode here (``FastTopKConfig``'s default, read from
    ``SAE_RDP_FAST_DETERMINISTIC``)."""
    from sae_rdp_plugin.fast.step import FastTopKConfig

    return FastTopKConfig(d_in=1, d_sae=1, k=1).deterministic


def profiled(fn: Callable[[], Any], device: str, top: int = 15) -> tuple[Any, dict]:
    """``fn()`` under ``torch.profiler`` and what it saw (:func:`sae_rdp_plugin.devices.profile_summary`: GPU busy
    share, host syncs, the top ops); a profiler that fails leaves ``fn``'s result and records why."""
    from torch.profiler import ProfilerActivity, profile

    from sae_rdp_plugin.devices import profile_summary

    cuda = str(device).startswith("cuda")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    synchronize(device)
    t = time.perf_counter()
    with profile(activities=acts) as prof:
        out = fn()
        synchronize(device)
    wall = time.perf_counter() - t
    try:
        return out, profile_summary(prof, wall, top=top, cuda=cuda)
    except Exception as exc:  # noqa: BLE001 - a diagnostic: its failure must not lose the eval
        return out, {"error": f"{type(exc).__name__}: {exc}"}


def gib(n_bytes: int | None) -> float | None:
    """Bytes as GiB for a record, two decimals (None stays None)."""
    return None if n_bytes is None else round(n_bytes / 2**30, 2)


CORE_WORKER_OVERHEAD_BYTES = 1 << 30  # a spawned worker's own CUDA context and allocator slack, beyond its eval


def workers_that_fit(requested: int, eval_peak_bytes: int | None, free_bytes: int | None) -> int:
    """How many core-eval workers to start: ``requested``, capped by the device's free memory over one eval's
    measured peak (plus ``CORE_WORKER_OVERHEAD_BYTES`` each). The HookedTransformer is shared with the workers, so
    a worker needs only its eval's own memory: SAEBench's core holds several fp32 logit tensors of
    prompts x context x vocabulary (8 x 1024 x 262,144 x 4 B = 8 GiB each on Gemma-3: the eval's peak was over
    60 GiB on an 80 GB card). Without a measurement (CPU) the request stands."""
    if requested < 1:
        raise ValueError(f"requested workers must be >= 1, got {requested}")
    if eval_peak_bytes is None or free_bytes is None:
        return requested
    need = max(0, eval_peak_bytes) + CORE_WORKER_OVERHEAD_BYTES
    return max(0, min(requested, free_bytes // need))


def gpu_memory(device: str) -> tuple[int | None, int | None]:
    """(free, total) bytes of the CUDA device after releasing this process's cached blocks; (None, None) on CPU."""
    if not str(device).startswith("cuda"):
        return None, None
    import torch

    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return int(free), int(total)


def core_eval(
    sae: Any,
    hooked: Any,
    held: np.ndarray,
    ignore: set[int],
    plan_sae: dict,
    step: str,
    args: argparse.Namespace,
    phases: dict[str, float] | None = None,
) -> dict:
    """SAEBench's core output for one SAE (its own run_evals / calculate_misc_metrics / save_single_eval_result).
    ``phases``, when given, receives the wall seconds of each part (``store``: SAELens's ActivationsStore;
    ``run_evals``: SAEBench's batches; ``save``: misc metrics and the pydantic output), for planning."""
    import tempfile

    from datasets import Dataset
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.evals.core.main import (
        calculate_misc_metrics,
        replace_nans_with_negative_one,
        run_evals,
        save_single_eval_result,
    )
    from sae_bench.sae_bench_utils import get_eval_uuid, get_sae_bench_version, get_sae_lens_version
    from sae_lens.training.activations_store import ActivationsStore

    ctx = held.shape[1]
    bp = min(args.eval_batch_prompts, held.shape[0])
    n_batches = max(1, min(args.eval_batches, held.shape[0] // bp))
    md = sae.cfg.metadata
    md.hook_name, md.model_name, md.context_size = plan_sae["hook"], plan_sae["model"], ctx
    md.prepend_bos = False  # the corpus rows already start with BOS
    saebench_compat(sae, plan_sae)
    t0 = time.perf_counter()
    ds = Dataset.from_dict({"tokens": held.astype(np.int64)})
    store = ActivationsStore.from_sae(
        hooked,
        sae,
        dataset=ds,
        context_size=ctx,
        streaming=False,
        store_batch_size_prompts=bp,
        n_batches_in_buffer=2,
        train_batch_size_tokens=bp * ctx,
        device=args.device,
    )
    cfg = CoreEvalConfig(
        model_name=plan_sae["model"],
        batch_size_prompts=bp,
        n_eval_reconstruction_batches=n_batches,
        n_eval_sparsity_variance_batches=n_batches,
        exclude_special_tokens_from_reconstruction=True,
        dataset=f"table2 corpus held-out split ({args.corpus})",
        context_size=ctx,
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
        compute_featurewise_weight_based_metrics=True,
        llm_dtype="float32",
    )
    t1 = time.perf_counter()
    metrics, feature_metrics = run_evals(sae, store, hooked, cfg, ignore_tokens=ignore)
    synchronize(args.device)
    t2 = time.perf_counter()
    metrics["misc_metrics"] = calculate_misc_metrics(feature_metrics)
    result = replace_nans_with_negative_one(
        {
            "sae_set": release_id(plan_sae),
            "sae_id": sae_lens_id(plan_sae, step),
            "eval_cfg": cfg,
            "metrics": metrics,
            "feature_metrics": feature_metrics if args.keep_feature_details else {},
        }
    )
    with tempfile.TemporaryDirectory() as td:
        p = Path(td) / "core.json"
        save_single_eval_result(result, get_eval_uuid(), get_sae_lens_version(), get_sae_bench_version(), str(p), sae)
        obj = json.loads(p.read_text())
    if phases is not None:
        phases.update(store=t1 - t0, run_evals=t2 - t1, save=time.perf_counter() - t2)
    # where the SAE reads and its training architecture, at the top level as well (SAELens 6 keeps the first two
    # under "metadata"; a weighted_topk SAE is saved as a stock "topk" inference SAE)
    f, lev = level_of(plan_sae)
    obj["sae_cfg_dict"].update(model_name=plan_sae["model"], hook_name=plan_sae["hook"])
    obj["sae_cfg_dict"]["training_architecture"] = plan_sae["architecture"]
    obj["sae_cfg_dict"][f] = lev
    return obj


def proxy_sample(hooked: Any, held: np.ndarray, hook: str, ignore: set[int], rows: int) -> tuple[Any, Any]:
    """Held-out activations at ``hook`` of the first ``rows`` held-out rows and their token ids, special
    tokens (BOS, padding) dropped: the sample every SAE's ground-truth-free proxies are measured on."""
    import torch

    from sae_rdp_plugin.lm.activations import hook_activations

    toks = torch.as_tensor(held[:rows].astype(np.int64), device=hooked.cfg.device)
    acts = torch.cat(
        [hook_activations(hooked, toks[i : i + 8], hook).flatten(0, 1).float() for i in range(0, len(toks), 8)]
    )
    ids = toks.reshape(-1)
    keep = ~torch.isin(ids, torch.tensor(sorted(ignore), dtype=ids.dtype, device=ids.device))
    return acts[keep], ids[keep]


def proxies_eval(sae: Any, acts: Any, ids: Any, plan_sae: dict, step: str) -> str:
    """The ``rdp_proxies`` SAEBench JSON of one SAE (token entropy of each latent's top activations, decoder
    max |cos|; ``sae_rdp_plugin.evals.rdp_proxies``) under the release / id its core JSON has, so they join."""
    from sae_rdp_plugin.evals.rdp_proxies.eval_config import RDPProxiesEvalConfig
    from sae_rdp_plugin.evals.rdp_proxies.main import evaluate_sae

    cfg = RDPProxiesEvalConfig(model_name=plan_sae["model"])
    return evaluate_sae(cfg, release_id(plan_sae), sae_lens_id(plan_sae, step), sae, acts, ids)


def validate_core(obj: dict) -> None:
    """SAEBench's pydantic CoreEvalOutput accepts ``obj`` (raises otherwise)."""
    from sae_bench.evals.core.eval_output import CoreEvalOutput

    CoreEvalOutput(**obj)


# ------------------------------------------------------------------------------------ E-* stages (SAEBench evals)


#: the packages whose versions a call record lists (what produced its JSONs)
VERSIONED = ("sae-bench", "sae-lens", "transformer-lens", "sae-probes", "torch", "triton", "transformers")


def package_versions() -> dict[str, str | None]:
    """The installed versions of :data:`VERSIONED` (None where not installed), for a call record. SAEBench's JSONs
    carry no version of SAEBench itself: their ``sae_bench_commit_hash`` is ``git rev-parse HEAD`` of the working
    directory (SAEBench's ``get_sae_bench_version``), i.e. this repository's commit when the stage runs from its
    checkout, or "Unknown"."""
    from sae_rdp_plugin.evals import installed_versions

    return installed_versions(VERSIONED)


def eval_stage(stage: str) -> bool:
    return stage.startswith("E-")


def eval_stage_saes(plan: dict, stage: str, out: Path, recipe: dict) -> tuple[dict[str, list[dict]], list[str]]:
    """The families of plan SAEs that ``E-<model>-<layer>`` evaluates (every training stage of that model-layer,
    WSAE arm included), levels resolved; and the ids left out because their calibration file is missing or was
    made on another input scale than the recipe's (they cannot have been trained under this recipe)."""
    sel = [s for s in plan["saes"] if f"E-{s['model']}-{s['hook'].split('.')[1]}" == stage]
    if not sel:
        layers = sorted({f"E-{s['model']}-{s['hook'].split('.')[1]}" for s in plan["saes"]})
        fail(f"stage {stage!r} has no SAEs to evaluate (eval stages: {', '.join(layers)})")
    ok, uncalibrated = [], []
    for s in sel:
        lev = level_of(s)[1]
        cal = out / f"calibration_C-{s['stage'].removeprefix('T-')}.json"
        if (
            isinstance(lev, str)
            and lev.startswith("cal")
            and (not cal.is_file() or stale_calibration(load_json(cal), recipe, s["architecture"]) is not None)
        ):
            uncalibrated.append(s["id"])
        else:
            ok.append(s)
    fams: dict[str, list[dict]] = {}
    for s in resolve_levels(ok, out, recipe):
        fams.setdefault(family(s), []).append(s)
    return fams, uncalibrated


def load_probe_sae(path: Path, s: dict, device: str) -> Any:
    """The SAE at ``path`` (plan SAE ``s``) loaded like the core eval's, hook and model fields set; top-level so
    that a partial of it pickles into probing_stage's spawned SAE workers."""
    sae = load_sae(path, device)
    sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name = s["hook"], s["model"]
    saebench_compat(sae, s)
    return sae


def probe_item(s: dict, path: Path, step: str, folder: Path, device: str) -> Any:
    """A :class:`probing_stage.ProbeSAE` for one trained SAE: loaded like the core eval's, stored under
    ``folder`` (``OUT/<eval type>/``) with the core JSON's file name, release and SAE id."""
    from functools import partial

    from probing_stage import ProbeSAE

    load = partial(load_probe_sae, path, s, device)

    def finalize(d: dict) -> dict:
        # SAEBench names an SAE object passed in "custom_sae" under the release given: the core JSON's ids instead
        d["sae_lens_release_id"], d["sae_lens_id"] = release_id(s), sae_lens_id(s, step)
        f, lev = level_of(s)
        d["sae_cfg_dict"].update(model_name=s["model"], hook_name=s["hook"], training_architecture=s["architecture"])
        d["sae_cfg_dict"][f] = lev
        return d

    return ProbeSAE(s["id"], load, folder / json_name(s, step), finalize)


def run_eval_stage(args: argparse.Namespace, plan: dict, recipe: dict, t_call: float) -> int:
    """``E-<model>-<layer>``: SAEBench's sparse_probing_sae_probes (``probing_stage``) and / or absorption
    (``absorption_stage``) on every SAE trained so far for that model-layer (finals and checkpoints), resumable;
    one record per call in the stage file."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from probing_stage import probes_available, run_probing

    stage = args.stage
    why = probes_available()
    if why and "sparse_probing" in args.evals:
        fail(f"stage {stage} needs sae-probes: {why}")
    try:
        abs_cfg = json.loads(args.absorption_config)
        if not isinstance(abs_cfg, dict) or "model_name" in abs_cfg:
            raise ValueError("a JSON object of AbsorptionEvalConfig fields other than model_name")
        if "absorption" in args.evals:
            from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig

            AbsorptionEvalConfig(model_name="check", **abs_cfg)
    except Exception as exc:  # noqa: BLE001 - any invalid config is a bad input
        fail(f"--absorption-config: {str(exc).splitlines()[0]}")
    fams, uncalibrated = eval_stage_saes(plan, stage, args.out, recipe)
    subset = load_json(args.probe_datasets_file).get("subset")
    if not isinstance(subset, list) or not subset:
        fail(f"{args.probe_datasets_file}: no 'subset' list of datasets")
    if args.probe_datasets is not None and args.probe_datasets > len(subset):
        fail(f"--probe-datasets must be <= {len(subset)}, got {args.probe_datasets}")
    datasets = subset[: args.probe_datasets or len(subset)]
    where = {(s["model"], s["hook"]) for m in fams.values() for s in m}
    if len(where) > 1:
        fail(f"stage {stage} spans several hooks: {sorted(where)}")
    model_name, hook = where.pop() if where else (None, None)
    pairs = trained_saes(args.out, fams)
    if not pairs and not args.absorption_probe_only:
        fail(f"stage {stage}: no trained SAE under {args.out / SAES_DIR} (run the model-layer's T-* stages first)")
    if model_name is None:
        fail(f"stage {stage}: no SAE of the plan at that model-layer")
    hf, hooked, _tok = load_models(model_name, args)
    del hf
    if hooked.tokenizer is None:
        if args.tokenizer is None:
            fail(f"{model_name} has no tokenizer: give --tokenizer DIR (a saved Hugging Face tokenizer)")
        from transformers import AutoTokenizer

        from sae_rdp_plugin.lm.models import check_tokenizer

        tok = AutoTokenizer.from_pretrained(str(args.tokenizer))
        check_tokenizer(model_name, tok)  # the prompts of sparse probing and absorption are tokenized with it
        hooked.set_tokenizer(tok, default_padding_side="right")
    from sae_rdp_plugin.lm.models import tokenizer_provenance

    tokenizer = tokenizer_provenance(model_name, hooked.tokenizer)
    deadline = time.time() - (time.perf_counter() - t_call) + args.time_budget
    progress = ProgressExport(args.out, args.export, stage)
    recs: dict[str, dict] = {}
    if "sparse_probing" in args.evals:
        items = [probe_item(s, path, step, args.out / PROBE_DIR, args.device) for s, path, step in pairs]
        recs["sparse_probing"] = run_probing(
            hooked,
            model_name,
            hook,
            items,
            args.out / "probing",
            datasets,
            deadline=deadline,
            device=args.device,
            ks=tuple(args.probe_ks),
            workers=args.probe_workers,
            max_saes=args.max_saes,
            sae_workers=args.probe_sae_workers,
            on_result=progress,
        )
    # a vocabulary sample (smoke runs) is not SAEBench's eval: its JSONs and its probe go elsewhere, nothing carried
    tag = f"_vocab{args.absorption_vocab_sample}" if args.absorption_vocab_sample else ""
    carry = None if args.absorption_vocab_sample else args.out / ABSORPTION_CARRY_DIR
    if "absorption" in args.evals and args.absorption_probe_only:
        from absorption_stage import probe_only

        recs["absorption"] = probe_only(
            hooked,
            model_name,
            layer_of_hook(hook),
            args.out / f"absorption{tag}",
            device=args.device,
            config=abs_cfg,
            probe_batch=args.absorption_probe_batch,
            vocab_sample=args.absorption_vocab_sample,
            carry=carry,
            stage=stage,
        )
    elif "absorption" in args.evals:
        from absorption_stage import run_absorption

        items = [probe_item(s, path, step, args.out / f"{ABSORPTION_DIR}{tag}", args.device) for s, path, step in pairs]
        recs["absorption"] = run_absorption(
            hooked,
            model_name,
            items,
            args.out / f"absorption{tag}",
            deadline=deadline,
            device=args.device,
            config=abs_cfg,
            max_saes=args.max_saes,
            probe_batch=args.absorption_probe_batch,
            inline=args.absorption_inline,
            workers=args.absorption_workers,  # None: as many as fit in memory (absorption_stage.default_workers)
            vocab_sample=args.absorption_vocab_sample,
            on_result=progress if not args.absorption_vocab_sample else None,
            carry=carry,
            stage=stage,
        )
    cuda = args.device.startswith("cuda")
    import torch

    wall = time.perf_counter() - t_call
    rec_path = args.out / f"stage_{stage}.json"
    rec = load_json(rec_path) if rec_path.is_file() else {"stage": stage, "calls": []}
    rec["calls"].append(
        {
            "wall_s": round(wall, 2),
            # beside another stage's call (stage.sh trainprobe): the device time is that call's
            "gpu_s": round(wall, 2) if cuda and args.beside is None else 0.0,
            **({"beside": args.beside} if args.beside is not None else {}),
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "host_memory": {"start": args.host_at_start, "end": host_snapshot()},
            "versions": package_versions(),
            **recs,
            "tokenizer": tokenizer,
            "not_trained_uncalibrated": uncalibrated,
        }
    )
    rec["gpu_s_total"] = round(sum(c["gpu_s"] for c in rec["calls"]), 2)
    all_trained = len(pairs) == sum(len(m) for m in fams.values())
    rec["complete"] = merge_complete(rec.get("complete"), recs, all_trained)
    atomic_json(rec_path, rec)
    if args.export is not None:
        export(args.out, args.export, stage)
    done = "; ".join(
        f"{e} {len(r['evaluated'])} new, {len(r['existing'])} existing, {len(r['left'])} left" for e, r in recs.items()
    )
    print(f"stage {stage}: {done}; {len(pairs)} SAEs trained so far; {wall:.1f} s -> {rec_path}")
    errors = [f"{e}: {r['error']}" for e, r in recs.items() if "error" in r]
    if errors:  # recorded in the stage file; the traceback is in the log
        print(f"error: {'; '.join(errors)}", file=sys.stderr)
    return 1 if errors else 0


# ------------------------------------------------------------------------------------ the stage


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", type=Path, default=HERE / "plan.json")
    ap.add_argument("--recipe", type=Path, default=None, help="default: recipe.json next to --plan")
    ap.add_argument("--stage", required=True)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model-path", default=None, help="GGUF file of the plan's model")
    src.add_argument("--random-init", action="store_true", help="random weights (smoke runs)")
    ap.add_argument("--n-layers", type=int, default=None, help="first blocks only (deeper than the hook: wasted)")
    ap.add_argument("--corpus", type=Path, required=True, help="corpus folder (tokens.npz) or shards folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--max-saes", type=int, default=None, help="train at most N final SAEs (E-*: evaluate N new SAEs) this call"
    )
    ap.add_argument(
        "--widths", type=int, nargs="+", default=None, help="T-*, W-*: train only SAEs of these widths this call"
    )
    ap.add_argument(
        "--committed",
        type=Path,
        default=None,
        help="T-*, W-*: a committed results folder (experiments/table2/results); an SAE whose train summary is "
        "committed there (<model>-L<layer>/train_summaries/) is not trained again (stage.sh run passes it unless "
        "T2_RETRAIN=1 or T2_REPLICATE is set: a training-run replicate retrains on purpose; C-* and E-* ignore it)",
    )
    ap.add_argument("--tokens-scale", type=float, default=1.0, help="multiply every SAE's tokens (smoke runs)")
    ap.add_argument("--group-size", type=int, default=10, help="SAEs per lockstep activation stream")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the recipe's batch_size_tokens")
    ap.add_argument("--context-size", type=int, default=None, help="cut the corpus rows (smoke runs)")
    ap.add_argument("--heldout-batches", type=int, default=8)
    ap.add_argument("--eval-batches", type=int, default=16, help="SAEBench core batches (reconstruction, sparsity)")
    ap.add_argument(
        "--eval-batch-prompts",
        type=int,
        default=8,
        help="rows per SAEBench core batch (its fp32 logits: rows x context x vocabulary x 4 B, several at once)",
    )
    ap.add_argument("--keep-feature-details", action="store_true")
    ap.add_argument("--proxy-rows", type=int, default=32, help="held-out rows for the rdp_proxies sample")
    ap.add_argument(
        "--core-workers",
        type=int,
        default=1,
        help="core evals of up to N SAEs at once in spawned processes (core_workers.py; the same JSONs), started "
        "after the first in-process eval and capped by the GPU memory its peak leaves (workers_that_fit); 1: one at "
        "a time",
    )
    ap.add_argument(
        "--profile-core",
        type=int,
        default=0,
        help="profile the first N core evals of the call (torch.profiler; the stage record's core_profile: GPU "
        "busy share, host syncs, top ops; a profiled eval takes several times as long); 0: none",
    )
    ap.add_argument("--buffer-tokens", type=int, default=2**19, help="activation shuffle buffer (rows)")
    ap.add_argument("--no-eval", action="store_true", help="train only")
    ap.add_argument(
        "--probe-datasets-file", type=Path, default=HERE / "probe_datasets.json", help="E-*: the fixed subset"
    )
    ap.add_argument("--probe-datasets", type=int, default=None, help="E-*: the subset's first N (smoke runs)")
    ap.add_argument("--probe-ks", type=int, nargs="+", default=[1, 2, 5], help="E-*: SAEBench's ks")
    ap.add_argument("--probe-workers", type=int, default=8, help="E-*: CPU processes for LLM baselines (0: inline)")
    ap.add_argument(
        "--probe-sae-workers",
        type=int,
        default=max(0, min(14, (os.cpu_count() or 1) - 2)),
        help="E-*: processes probing SAEs in parallel (0: inline; default min(14, CPUs - 2))",
    )
    ap.add_argument(
        "--time-budget",
        type=float,
        default=540.0,
        help="seconds for this call, then stop and export (E-*: checked between SAEs; T-*, W-*: between the evals "
        "after training, the rest left for the next call)",
    )
    ap.add_argument("--tokenizer", type=Path, default=None, help="E-*: a saved HF tokenizer (tiny test models)")
    ap.add_argument(
        "--evals", nargs="+", choices=["sparse_probing", "absorption"], default=["sparse_probing"], help="E-*"
    )
    ap.add_argument(
        "--absorption-config", default="{}", help="E-*: JSON object of SAEBench AbsorptionEvalConfig fields"
    )
    ap.add_argument(
        "--absorption-probe-batch", type=int, default=1024, help="E-*: prompts per forward pass for the probe"
    )
    ap.add_argument(
        "--absorption-inline",
        action="store_true",
        help="E-*: absorption in this process (no hard deadline: --time-budget checked between SAEs only)",
    )
    ap.add_argument(
        "--absorption-vocab-sample",
        type=int,
        default=None,
        help="E-*: smoke runs on a CPU only: absorption on a fixed sample of N vocabulary words (not SAEBench's "
        "eval; JSONs in absorption_first_letter_vocabN/, never collected)",
    )
    ap.add_argument(
        "--absorption-probe-only",
        action="store_true",
        help="E-* with --evals absorption: make the first-letter probe only (carried or trained; no SAE needed or "
        "evaluated), e.g. alongside a T stage in the same call, so that the absorption calls after it skip it",
    )
    ap.add_argument(
        "--beside",
        default=None,
        metavar="STAGE",
        help="with --absorption-probe-only: the call runs on the GPU at the same time as STAGE's (stage.sh "
        "trainprobe); its record says so and counts no GPU seconds of its own (they are inside STAGE's call)",
    )
    ap.add_argument(
        "--absorption-workers",
        type=int,
        default=None,
        help="E-*: processes evaluating SAEs' absorption in parallel (default min(14, CPUs - 2) and no more than "
        "the host memory holds at SAEBench's k-sparse scoring peak; at least 1)",
    )
    ap.add_argument(
        "--export",
        type=Path,
        default=None,
        help="write <stage>.tar.xz (core JSONs, train summaries) and stage_<stage>.json here, e.g. $OUT",
    )
    args = ap.parse_args(argv)
    for name in (
        "max_saes",
        "group_size",
        "batch_size",
        "n_layers",
        "eval_batches",
        "eval_batch_prompts",
        "proxy_rows",
        "core_workers",
        "buffer_tokens",
        "probe_datasets",
        "absorption_probe_batch",
        "absorption_workers",
        "absorption_vocab_sample",
    ):
        v = getattr(args, name)
        if v is not None and v < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.absorption_probe_only and (args.evals != ["absorption"] or not args.stage.startswith("E-")):
        fail("--absorption-probe-only: an E-* stage with --evals absorption (alone)")
    if args.beside is not None and not args.absorption_probe_only:
        fail("--beside: only with --absorption-probe-only")
    if args.absorption_probe_only and args.absorption_inline:
        fail("--absorption-probe-only runs in this process: without --absorption-inline")
    if args.widths is not None and not args.stage.startswith(("T-", "W-")):
        fail(f"--widths selects SAEs to train: T-* and W-* stages only, got {args.stage}")
    if args.widths is not None and min(args.widths) < 1:
        fail(f"--widths must be >= 1, got {args.widths}")
    if args.committed is not None and not args.committed.is_dir():
        fail(f"--committed {args.committed}: not a folder (the committed results, experiments/table2/results)")
    if args.profile_core < 0:
        fail(f"--profile-core must be >= 0, got {args.profile_core}")
    if not args.tokens_scale > 0:
        fail(f"--tokens-scale must be > 0, got {args.tokens_scale}")
    if not args.time_budget > 0:
        fail(f"--time-budget must be > 0, got {args.time_budget}")
    try:
        memory_bytes("cpu")  # SAE_RDP_HOST_MEMORY_GIB, if set, read by the records and the absorption workers
    except SaeRdpError as e:
        fail(str(e))
    if args.probe_workers < 0 or any(k < 1 for k in args.probe_ks):
        fail("--probe-workers must be >= 0 and --probe-ks >= 1")
    if args.probe_sae_workers < 0:
        fail(f"--probe-sae-workers must be >= 0, got {args.probe_sae_workers}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    t_call = time.perf_counter()
    # the machine's memory at the start and end of the call (the device's MemTotal grows as RAM is used)
    args.host_at_start = host_snapshot()
    plan = load_json(args.plan)
    recipe = load_json(args.recipe or args.plan.parent / "recipe.json")
    stage = args.stage
    if eval_stage(stage):
        return run_eval_stage(args, plan, recipe, t_call)
    if stage == "E0":
        fail("stage E0 is an E-<model>-<layer> call: add --evals absorption --max-saes 2 (README section 5)")
    if calibration_stage(stage):
        saes = calibration_saes(recipe, stage)
    else:
        saes = [s for s in plan["saes"] if s["stage"] == stage]
        if not saes:
            stages = sorted({s["stage"] for s in plan["saes"]})
            fail(f"stage {stage!r} has no SAEs to train here (training stages: {', '.join(stages)}; C-* calibrate)")
        saes = resolve_levels(saes, args.out, recipe)
    models = {s["model"] for s in saes}
    if len(models) != 1:
        fail(f"stage {stage} spans models {sorted(models)}")
    (model_name,) = models
    if args.model_path is None and not args.random_init and not model_name.startswith("tiny-"):
        fail("give --model-path GGUF or --random-init")
    if args.random_init and not args.no_eval and not calibration_stage(stage):
        # TransformerLens's Gemma / SmolLM2 conversion reads the tokenizer, which random weights do not have
        fail("--random-init trains only: add --no-eval (SAEBench's core needs the real model and its tokenizer)")
    depth = {m["model"]: m["n_layers"] for m in recipe["models"]}.get(model_name)
    if args.n_layers is not None and depth is not None and args.n_layers < depth and not args.no_eval:
        # the core eval's CE loss runs the model to its logits: a truncated stack gives meaningless scores
        fail(
            f"--n-layers {args.n_layers} truncates {model_name} ({depth} blocks): SAEBench's CE loss needs them "
            "all; add --no-eval"
        )
    train, held, bos, corpus_meta = load_corpus(args.corpus)
    corpus = corpus_provenance(corpus_meta)
    if corpus["matches_manifest"] is False:
        print(
            f"warning: corpus build {corpus['tokens_sha256'][:12]} differs from corpus_manifest.json's "
            f"{corpus['manifest_tokens_sha256'][:12]} (a re-fetched archive version?): recorded in the stage file"
        )
    if args.context_size:
        train, held = train[:, : args.context_size], held[:, : args.context_size]

    fams: dict[str, list[dict]] = {}
    for s in saes:
        fams.setdefault(family(s), []).append(s)
    # a calibration's short runs are read back from this machine's run folder, so committed ones are run again
    committed = None if calibration_stage(stage) else args.committed
    todo, done, kept = pick_todo(fams, args.out, args.widths, args.max_saes, committed)

    import torch

    from sae_rdp_plugin.lm.pipeline import PipelineConfig
    from sae_rdp_plugin.train.lm import SAESpec, train_on_model

    hf, hooked, tok = load_models(model_name, args)
    d_in = hf.config.hidden_size
    pad = getattr(tok, "pad_token_id", None) if tok is not None else None
    specs = []
    for fam in todo:
        members = fams[fam]
        final = next(s for s in members if not s["checkpoint_of_final"])
        cfg = train_config(final, d_in, recipe, args, checkpoint_count(members))
        specs.append(SAESpec(final["hook"], cfg, sae_dir(args.out, fam), name=fam))
    groups: dict[tuple, list] = {}
    for sp in specs:
        groups.setdefault((sp.hook, sp.cfg.batch_size, sp.cfg.tokens), []).append(sp)
    trained = []
    cuda = args.device.startswith("cuda")
    for (hook, bs, _tokens), group in groups.items():
        for i in range(0, len(group), args.group_size):
            chunk = group[i : i + args.group_size]
            pcfg = PipelineConfig(
                hooks=[hook],
                context_size=train.shape[1],
                batch_size=bs,
                buffer_tokens=max(2 * bs, args.buffer_tokens),
                model_dtype="bfloat16" if cuda else "float32",
                device=args.device,
                seed=0,
            )
            res = train_on_model(
                hf,
                train,
                pcfg,
                chunk,
                heldout_tokens=held,
                bos_token_id=bos,
                pad_token_id=pad,
                progress=False,
                heldout_batches=args.heldout_batches,
                notes={"model": model_name, "stage": stage},
            )
            trained += [r["name"] for r in res]
            if cuda:
                torch.cuda.empty_cache()

    progress = ProgressExport(args.out, args.export, stage)
    if trained:
        progress()  # the trained SAEs' summaries, before the evals
    evaluated, eval_skipped, proxied, eval_left = [], [], [], []
    eval_s: dict[str, tuple[float, float]] = {}  # (core, proxies) seconds per evaluated SAE
    core_phases: dict[str, dict[str, float]] = {}  # where a core eval's seconds go (load, store, ...)
    core_profiles: dict[str, dict] = {}  # --profile-core: what the profiler saw in the first core evals
    par: dict[str, tuple[float, dict[str, float], dict]] = {}  # --core-workers: (seconds, parts, fold) per SAE
    core_workers_error = None  # why the workers stopped early (this process then evaluates the rest)
    core_workers_fit: dict | None = None  # --core-workers: requested, started, the measured eval peak, free memory
    core_peak: dict[str, int] = {}  # GPU bytes an in-process core eval allocated at its peak, above what was held
    core_oom: dict | None = None  # the in-process core eval that ran out of GPU memory (the rest left for later)
    in_process = 0  # core evals run in this process this call
    folds: dict[str, dict] = {}  # per SAE loaded for its evals: saebench_fold's record
    if not args.no_eval and not calibration_stage(stage):
        from saebench_fold import fold_for_saebench

        ignore = {t for t in (bos, pad) if t is not None}
        samples: dict[str, tuple[Any, Any]] = {}
        # --core-workers N > 1: the core evals in N processes first (the first --profile-core ones stay in this
        # process, profiled alone), then this loop does the proxies and whatever the workers left
        need = [
            (s, path, step, args.out / CORE_DIR / json_name(s, step))
            for s, path, step in trained_saes(args.out, fams)
            if not (args.out / CORE_DIR / json_name(s, step)).is_file()
        ]
        # --core-workers N > 1: the workers start after the first max(1, --profile-core) core evals of this
        # process, sized by the memory the first one measured (workers_that_fit); they take the SAEs left
        workers_pending = args.core_workers > 1 and len(need) > max(1, args.profile_core) + 1
        for s, path, step in trained_saes(args.out, fams):
            js = args.out / CORE_DIR / json_name(s, step)
            pj = args.out / PROXY_DIR / json_name(s, step)
            if js.is_file() and pj.is_file() and s["id"] not in par:
                eval_skipped.append(s["id"])
                continue
            # a call killed at the device's command limit brings nothing back: stop early and export instead
            longest = longest_eval_s(eval_s, core_profiles)  # to stop before --time-budget
            late = eval_s and time.perf_counter() - t_call + 1.3 * longest > args.time_budget
            if s["id"] not in par and (eval_left or late):  # (a worker's SAE needs its proxies only: 0.1 s)
                eval_left.append(s["id"])
                continue
            t_sae = time.perf_counter()
            sae = load_sae(path, args.device)
            # as SAEBench's loader folds an SAE it loads by name (core gets the object); the proxies are unchanged
            # by it (per-latent positive scales: top activations per latent, L0, decoder cosines)
            folds[s["id"]] = fold_for_saebench(sae)
            phases: dict[str, float] = {"load": time.perf_counter() - t_sae}
            if s["id"] in par:  # its core JSON came from a worker: that eval's seconds and parts
                evaluated.append(s["id"])
                t_sae = time.perf_counter() - par[s["id"]][0]
                phases = dict(par[s["id"]][1])
            elif not js.is_file():
                base = torch.cuda.memory_allocated() if cuda else 0
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                try:
                    if len(core_profiles) < args.profile_core:
                        obj, core_profiles[s["id"]] = profiled(
                            lambda: core_eval(sae, hooked, held, ignore, s, step, args, phases), args.device
                        )
                    else:
                        obj = core_eval(sae, hooked, held, ignore, s, step, args, phases)
                except torch.OutOfMemoryError as exc:  # record it and export what is done, not a lost call
                    del sae
                    free, total = gpu_memory(args.device)
                    core_oom = {
                        "sae": s["id"],
                        "error": str(exc).splitlines()[0][:300],
                        "free_gib_after": gib(free),
                        "total_gib": gib(total),
                    }
                    eval_left.append(s["id"])
                    continue
                if cuda:
                    core_peak[s["id"]] = torch.cuda.max_memory_allocated() - base
                validate_core(obj)
                atomic_json(js, obj)
                evaluated.append(s["id"])
                in_process += 1
                if workers_pending and in_process >= max(1, args.profile_core):
                    from core_workers import run_parallel

                    workers_pending = False
                    rest = [j for j in need if j[0]["id"] != s["id"] and not j[3].is_file()]
                    free, _total = gpu_memory(args.device)
                    n = workers_that_fit(args.core_workers, core_peak.get(s["id"]), free)
                    core_workers_fit = {
                        "requested": args.core_workers,
                        "started": n if n > 1 else 0,
                        "eval_peak_gib": gib(core_peak.get(s["id"])),
                        "free_gib": gib(free),
                    }
                    if n > 1:
                        left = args.time_budget - (time.perf_counter() - t_call) - CORE_WORKERS_MARGIN_S
                        par, core_workers_error = run_parallel(rest, hooked, held, ignore, args, time.time() + left, n)
            t_core = time.perf_counter()
            if not pj.is_file():
                if s["hook"] not in samples:
                    samples[s["hook"]] = proxy_sample(hooked, held, s["hook"], ignore, args.proxy_rows)
                atomic_json(pj, json.loads(proxies_eval(sae, *samples[s["hook"]], s, step)))
                proxied.append(s["id"])
            # per SAE, for planning the next calls (a core eval's cost varies with the width and architecture)
            eval_s[s["id"]] = (t_core - t_sae, time.perf_counter() - t_core)
            core_phases[s["id"]] = {k: round(v, 2) for k, v in phases.items()}
            progress()

    calibration = None
    if calibration_stage(stage):
        calibration = write_calibration(args.out, stage, fams, recipe)

    wall = time.perf_counter() - t_call
    rec_path = args.out / f"stage_{stage}.json"
    rec = load_json(rec_path) if rec_path.is_file() else {"stage": stage, "calls": []}
    rec["calls"].append(
        {
            "wall_s": round(wall, 2),
            "gpu_s": round(wall, 2) if cuda else 0.0,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "host_memory": {"start": args.host_at_start, "end": host_snapshot()},
            "versions": package_versions(),
            "trained": trained,
            "skipped_trained_before": done,
            "skipped_committed": kept,
            "left_for_later": [f for f in fams if f not in done and f not in todo and f not in kept],
            "core_evaluated": evaluated,
            "core_existing": eval_skipped,
            "proxies_evaluated": proxied,
            "evals_left_for_later": eval_left,
            "eval_seconds": {
                i: {"core": round(c, 2), "proxies": round(q, 2), "core_phases": core_phases.get(i, {})}
                for i, (c, q) in eval_s.items()
            },
            "saebench_fold": folds,
            "core_profile": core_profiles,
            "core_workers": (
                {**core_workers_fit, "evaluated": sorted(par), "error": core_workers_error}
                if core_workers_fit is not None
                else None
            ),
            "core_peak_gib": {i: gib(b) for i, b in core_peak.items()},
            "core_oom": core_oom,
            # SAE_RDP_FAST_DETERMINISTIC=1: the fast step's sorted sums (bit-identical reruns of the step on one
            # GPU), so that a later session's retraining can be checked against this one's core JSONs
            "fast_deterministic": fast_deterministic() if trained else None,
            "tokens_scale": args.tokens_scale,
            "corpus": corpus,
        }
    )
    rec["gpu_s_total"] = round(sum(c["gpu_s"] for c in rec["calls"]), 2)
    rec["deviations_from_recipe"] = DEVIATIONS
    if calibration is not None:
        rec["calibration"] = calibration
    atomic_json(rec_path, rec)
    if args.export is not None:
        export(args.out, args.export, stage)
    print(
        f"stage {stage}: trained {len(trained)}, skipped {len(done)} (+{len(kept)} committed), core JSONs "
        f"{len(evaluated)} new "
        f"({len(eval_skipped)} existing, {len(eval_left)} left for the next call), {wall:.1f} s -> {rec_path}"
    )
    if core_oom is not None:
        print(
            f"error: the core eval of {core_oom['sae']} ran out of GPU memory ({core_oom['free_gib_after']} of "
            f"{core_oom['total_gib']} GiB free after it): stop other processes on the GPU or lower "
            f"--eval-batch-prompts (the prompts per SAEBench batch, {args.eval_batch_prompts}); the SAEs left are "
            "in the record's evals_left_for_later",
            file=sys.stderr,
        )
        return 1
    return 0


def merge_complete(prev: Any, recs: dict[str, dict], all_trained: bool) -> dict[str, bool]:
    """An E stage file's ``complete``: per eval, whether every SAE of the plan is trained and has it; the evals
    this call ran (``recs``) are set from their records, the others keep their flag from the calls before."""
    base = prev if isinstance(prev, dict) else {}
    return {**base, **{e: bool(r.get("complete")) and all_trained for e, r in recs.items()}}


def export(out: Path, dest: Path, stage: str) -> Path:
    """What comes back from the device (at most 8 files per call): ``dest/<stage>.tar.xz`` holding every core,
    proxy, sparse-probing and absorption JSON (``core/``, ``rdp_proxies/``, ``sparse_probing_sae_probes/``,
    ``absorption_first_letter/``),
    the stage files and the calibrations of the stage's model-layer, each SAE's train_summary.json
    (``train_summaries/<family path with __>.json``) and sae-probes' LLM baseline results of the stage's model
    (``probe_baselines/``, as under ``probing/sae_probes/``; a stage id naming no model-layer, such as ``W-wsae``,
    exports every calibration and baseline in ``out``), the first-letter
    probe of SAEBench's absorption eval in its carried form when ``stage`` made it (``absorption_probe/<model>/
    layer_<L>/``: probe.pth and manifest.json, ~70 kB; absorption_stage.make_probe), plus a plain copy of
    ``stage_<stage>.json``. The weights stay.
    Unpack on the dev machine with ``tar -xJf <stage>.tar.xz -C <folder>``."""
    import shutil
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    # stage.sh run puts every model's committed calibrations and LLM baselines in OUT: a stage named by its
    # model-layer exports only its own (collect.py leaves the others out too); other stage ids (W-wsae) all of them
    m = STAGE_ID.match(stage)
    cal = f"calibration_C-{m['model']}-{m['layer']}-*.json" if m else "calibration_*.json"
    base = f"baseline_results_{m['model']}" if m else "baseline_results_*"
    tmp = dest / f".{stage}.{uuid.uuid4().hex[:8]}.tmp"
    with tarfile.open(tmp, "w:xz") as tar:
        jsons = [p for d in (CORE_DIR, PROXY_DIR, PROBE_DIR, ABSORPTION_DIR) for p in out.glob(f"{d}/*.json")]
        for p in sorted([*jsons, *out.glob("stage_*.json"), *out.glob(cal)]):
            tar.add(p, arcname=p.relative_to(out).as_posix())
        for p in sorted((out / SAES_DIR).glob("**/train_summary.json")):
            tar.add(p, arcname=f"train_summaries/{train_summary_name(p.parent.relative_to(out / SAES_DIR))}")
        probes = out / "probing" / "sae_probes"
        for p in sorted(probes.glob(f"{base}/**/*.json")):
            tar.add(p, arcname=f"{BASELINE_DIR}/{p.relative_to(probes).as_posix()}")
        for man in sorted((out / ABSORPTION_CARRY_DIR).glob("*/layer_*/manifest.json")):
            try:
                mine = json.loads(man.read_text()).get("stage") == stage
            except (OSError, ValueError, AttributeError):
                mine = False
            if mine:  # another model-layer's probe would land in this one's results folder
                for p in (man.parent / "probe.pth", man):
                    tar.add(p, arcname=p.relative_to(out).as_posix())
    bundle = dest / f"{stage}.tar.xz"
    os.replace(tmp, bundle)
    if (out / f"stage_{stage}.json").is_file():  # not yet, in a progress export of a stage's first call
        shutil.copyfile(out / f"stage_{stage}.json", dest / f"stage_{stage}.json")
    return bundle


class ProgressExport:
    """:func:`export` during a call, after a result was written, at most every ``interval`` seconds: a device call
    cut by the session's budget (which, unlike ``--time-budget``, the stage cannot see coming) then still brings
    back what it finished. The bundle lacks that call's record until the call's own final export."""

    def __init__(
        self,
        out: Path,
        dest: Path | None,
        stage: str,
        interval: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.out, self.dest, self.stage, self.interval, self.clock = out, dest, stage, interval, clock
        self.last: float | None = None
        self.n = 0

    def __call__(self) -> None:
        if self.dest is None:
            return
        now = self.clock()
        if self.last is not None and now - self.last < self.interval:
            return
        try:
            export(self.out, self.dest, self.stage)
        except Exception as exc:  # noqa: BLE001 - best effort: the call's own final export still runs (and raises)
            print(f"warning: progress export failed: {type(exc).__name__}: {exc}", flush=True)
            return
        self.last, self.n = now, self.n + 1


def calibrated_value(pts: list[tuple[float, float]], target: float) -> tuple[float, bool]:
    """The sparsity coefficient for a target L0 from calibration points (coefficient, held-out L0).

    Points sorted by coefficient; if two neighbours bracket the target (L0 decreasing or increasing), the value
    is interpolated linearly in (log coefficient, log L0) between them and rounded to 3 significant digits:
        log c = log c_a + (log t - log L_a) (log c_b - log c_a) / (log L_b - log L_a).
    Otherwise the grid value whose L0 is nearest the target on a log scale. Returns (value, bracketed)."""
    pts = sorted(pts)
    lt = math.log(target)
    for (ca, la), (cb, lb) in zip(pts, pts[1:]):
        if min(la, lb) <= target <= max(la, lb) and la != lb:
            lc = math.log(ca) + (lt - math.log(la)) * (math.log(cb) - math.log(ca)) / (math.log(lb) - math.log(la))
            return float(f"{math.exp(lc):.3g}"), True
    return min(pts, key=lambda p: abs(math.log(p[1]) - lt))[0], False


def write_calibration(out: Path, stage: str, fams: dict[str, list[dict]], recipe: dict) -> dict:
    """Per width, level calN = :func:`calibrated_value` for target_l0[N] / r, r = the calibration's
    ``final_over_calibration_l0`` (default 1: how much lower a final SAE's L0 ends than a short calibration
    run's at the same coefficient, measured on an earlier sweep); records the L0 aimed at, whether each aim was
    bracketed by the grid and whether the levels are distinct (a level shared by two targets is flagged)."""
    arch = stage.rsplit("-", 1)[1]
    a = recipe["architectures"][arch]
    field, targets = a["sparsity_field"], a["calibration"]["target_l0"]
    drift = float(a["calibration"].get("final_over_calibration_l0", 1.0))
    aims = [t / drift for t in targets]
    l0: dict[int, list[tuple[float, float]]] = {}
    for fam, (s,) in fams.items():
        p = sae_dir(out, fam) / "train_summary.json"
        if not p.is_file():
            return {"complete": False}
        v = json.loads(p.read_text()).get("heldout_l0")
        if v is not None and v > 0:
            l0.setdefault(s["width"], []).append((s[field], float(v)))
    levels: dict[str, dict[str, float]] = {}
    bracketed: dict[str, dict[str, bool]] = {}
    for w, pts in l0.items():
        got = [calibrated_value(pts, t) for t in aims]
        levels[str(w)] = {f"cal{i}": v for i, (v, _) in enumerate(got)}
        bracketed[str(w)] = {f"cal{i}": b for i, (_, b) in enumerate(got)}
    res = {"complete": True, "field": field, "normalize_activations": normalization(recipe, arch)}
    res |= {"target_l0": targets, "final_over_calibration_l0": drift, "aim_l0": aims}
    res |= {"heldout_l0": {str(w): p for w, p in l0.items()}}
    res["levels"] = levels
    res["bracketed"] = bracketed
    res["distinct"] = {w: len(set(v.values())) == len(v) for w, v in levels.items()}
    atomic_json(out / f"calibration_{stage}.json", {"stage": stage, **res})
    return res


if __name__ == "__main__":
    sys.exit(main())

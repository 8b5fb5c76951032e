"""Training weighted (and stock) SAEs with SAELens's own trainer.

Two entry points:

* :func:`train_synthetic` trains on synthetic activations from ``sae_lens.synthetic`` (a
  FeatureDictionary of ``n_features`` ground-truth directions in R^d_in and an ActivationGenerator
  with per-feature firing probabilities and magnitudes) by feeding SAELens's ``SAETrainer`` an iterator
  of activation tensors. For ``weighted_*`` architectures gamma is estimated first by a streaming
  float64 pass over ``gamma_estimation_batches`` fresh batches of the same generator.
* :func:`train_language_model` runs SAELens's ``LanguageModelSAETrainingRunner`` on a model layer
  (``override_model`` / ``override_dataset`` as in SAELens); for ``weighted_*`` architectures gamma is
  estimated from the runner's own ActivationsStore before training (or taken from the resume
  checkpoint / ``from_pretrained_path`` / ``gamma_path``).

Both are described by a :class:`~sae_rdp_plugin.train.config.TrainConfig` (:func:`runner_config` turns
one into the runner's config) and write a SAELens-loadable SAE (cfg.json + sae_weights.safetensors,
stock architecture name) and, for weighted architectures, ``gamma.safetensors`` next to it.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from sae_rdp_plugin.architectures import check_architecture, is_weighted
from sae_rdp_plugin.errors import SaeRdpError, exc_line
from sae_rdp_plugin.rdp.metrics import rate_distortion
from sae_rdp_plugin.train.config import TrainConfig, sae_config_dict
from sae_rdp_plugin.train.synthetic import MAGNITUDE_STD, make_synthetic_source
from sae_rdp_plugin.wsae.gamma import GAMMA_FILENAME

__all__ = [
    "check_architecture",
    "is_weighted",
    "sae_config_dict",
    "build_training_sae",
    "SyntheticTrainResult",
    "train_synthetic",
    "train_language_model",
    "tokens_dataset_from_text",
    "load_dataset_arg",
    "runner_config",
    "runner_model",
    "runner_dataset",
    "saelens_cli",
]


def build_training_sae(cfg_dict: dict[str, Any]) -> Any:
    """Build a SAELens TrainingSAE from a config dict (through SAELens's registry). Keys that are not
    fields of the architecture's config class raise SaeRdpError (SAELens would drop them silently)."""
    import sae_rdp_plugin.wsae.registry as arch

    arch.register_now()
    from sae_lens.registry import get_sae_training_class
    from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig

    cfg_cls = get_sae_training_class(check_architecture(cfg_dict.get("architecture")))[1]
    unknown = set(cfg_dict) - {f.name for f in fields(cfg_cls)} - {"architecture"}
    if unknown:
        raise SaeRdpError(f"unknown config fields for {cfg_dict['architecture']}: {sorted(unknown)}")
    return TrainingSAE.from_dict(TrainingSAEConfig.from_dict(cfg_dict).to_dict())


# ------------------------------------------------------------------------------------ synthetic


@dataclass
class SyntheticTrainResult:
    out: str
    architecture: str
    d_in: int
    d_sae: int
    k: float | None
    alpha: float | None
    tokens: int
    steps: int
    device: str
    seconds: float
    mcc: float
    explained_variance: float
    l0: float
    dead_latents: int
    gamma_file: str | None = None


def _save_synthetic_model(path: Path, fd: Any, gen: Any, seed: int) -> None:
    """The run's ground truth as a SAELens ``SyntheticModel`` folder (its feature vectors, bias and firing
    probabilities; magnitudes as :func:`~sae_rdp_plugin.train.synthetic.make_synthetic_source` draws them), so
    the SAE can be scored against the data it was trained on."""
    from sae_lens.synthetic import SyntheticModel, SyntheticModelConfig

    n, d = fd.feature_vectors.shape
    mcfg = SyntheticModelConfig(
        num_features=int(n),
        hidden_dim=int(d),
        std_firing_magnitudes=MAGNITUDE_STD,
        mean_firing_magnitudes=1.0,
        seed=seed,
    )
    SyntheticModel(mcfg, feature_dict=fd, activation_generator=gen, device=str(fd.feature_vectors.device)).save(path)


def train_synthetic(
    cfg: TrainConfig | str,
    *args: Any,
    n_features: int | None = None,
    firing_probability: float = 0.02,
    resume_from: str | Path | None = None,
    fast: bool = True,
    **train_fields: Any,
) -> SyntheticTrainResult:
    """Train an SAE on sae_lens.synthetic activations and save it (+ gamma) to ``out``.

    Called as ``train_synthetic(cfg, out)`` with a :class:`~sae_rdp_plugin.train.config.TrainConfig`, or
    as ``train_synthetic(architecture, d_in, d_sae, out, **train_fields)`` with TrainConfig's other
    fields as keywords (the same run). The data (:func:`~sae_rdp_plugin.train.synthetic.make_synthetic_source`,
    seeded by ``cfg.seed``) has ``n_features`` ground-truth directions (default ``2 * d_in``) firing with
    mean probability ``firing_probability``. For weighted architectures gamma is estimated first from
    ``cfg.gamma_estimation_batches`` batches (unless ``cfg.gamma_path`` or ``resume_from`` gives it).
    ``resume_from`` is a checkpoint folder; ``fast=False`` uses SAELens's reference step.

    ``out`` must be new, an empty folder or an earlier training run (:func:`check_run_folder`), checked
    before training. The run is written into a hidden sibling ``.<out>.<id>.partial`` (checkpoints
    included) and renamed to ``out`` at the end (:func:`sae_rdp_plugin.io.replace_dir`), so ``out`` only
    ever holds a complete run; a failed run leaves the sibling only if it holds checkpoints (resume from
    one of them: the run then continues in that sibling).

    Reports MCC of the decoder against the true directions, and the explained variance, L0 and dead
    latents of one fresh batch (:func:`sae_rdp_plugin.rdp.metrics.rate_distortion`)."""
    import shutil

    from sae_lens.synthetic import SyntheticActivationIterator, mean_correlation_coefficient
    from sae_lens.training.sae_trainer import SAETrainer

    from sae_rdp_plugin.devices import check_device
    from sae_rdp_plugin.io import atomic_write_json, replace_dir

    if isinstance(cfg, TrainConfig):
        if len(args) != 1 or train_fields:
            raise TypeError("train_synthetic(cfg, out): a TrainConfig and the output folder, nothing else")
        (out,) = args
    else:
        if len(args) != 3:
            raise TypeError("train_synthetic(architecture, d_in, d_sae, out, **train_fields)")
        d_in, d_sae, out = args
        cfg = TrainConfig(cfg, d_in, d_sae, **train_fields)
    cfg.require_zero_b_dec("train_synthetic (sae-rdp train --synthetic)")
    n_features = 2 * cfg.d_in if n_features is None else n_features
    check_device(cfg.device)
    out = check_run_folder(out)
    resume = _check_resume_dir(resume_from) if resume_from is not None else None
    staging = _resume_staging(resume, out) or out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.partial"
    reused = staging.exists()
    t0 = time.time()
    fd, gen = make_synthetic_source(
        cfg.d_in, n_features, firing_probability=firing_probability, seed=cfg.seed, device=cfg.device
    )
    data = SyntheticActivationIterator(fd, gen, batch_size=cfg.batch_size)
    sae_cfg = cfg.sae_config_dict()
    torch.manual_seed(cfg.seed)
    sae = build_training_sae(sae_cfg)
    weighted = cfg.arch.weighted
    ckpt_dir = staging / "checkpoints" if cfg.n_checkpoints > 0 else None
    trainer = SAETrainer(
        cfg=cfg.trainer_config(None if ckpt_dir is None else str(ckpt_dir)), sae=sae, data_provider=data
    )
    if resume is not None:
        _load_resume(trainer, sae, resume)
        if reused:  # continuing the interrupted run's own folder: its checkpoints after this one are void
            for ck in _checkpoints(staging, complete=False):
                if _step_of(ck) > (_step_of(resume) or 0):
                    shutil.rmtree(ck)
    elif weighted and not sae.gamma_is_set:
        sae.estimate_gamma(data, cfg.gamma_estimation_batches, progress=True)
    _checkpoint_errors_as_input_errors(trainer, out)
    try:
        # ---- BEGIN fast path (sae_rdp_plugin.fast.step): (weighted_)topk/batchtopk steps run sparse;
        # same loss/gradients/Adam as SAELens's step; fast=False (`--no-fast`) keeps the reference step.
        if fast:
            from sae_rdp_plugin.fast.step import install_fast_step

            install_fast_step(trainer)
        # ---- END fast path
        trainer.fit()
        if resume is not None and _step_of(resume) is not None and out.absolute() in resume.parents:
            # the run resumed from a checkpoint of the run in ``out``, which the publish replaces: keep it
            # and the earlier ones in the new run
            for ck in resume.parent.iterdir():
                if ck.is_dir() and _step_of(ck) is not None and _step_of(ck) <= _step_of(resume):
                    shutil.copytree(ck, staging / "checkpoints" / ck.name, dirs_exist_ok=True)
        staging.mkdir(parents=True, exist_ok=True)
        _drop_incomplete_checkpoints(staging)
        try:
            sae.save_inference_model(staging)
        except Exception as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0]
            raise SaeRdpError(f"cannot save the trained SAE for {out}: {reason}") from exc
        _save_synthetic_model(staging / SYNTHETIC_MODEL_DIR, fd, gen, cfg.seed)
        sae.eval()
        rd = rate_distortion(sae, next(data).to(cfg.device))
        mcc = mean_correlation_coefficient(sae.W_dec.detach().float().cpu(), fd.feature_vectors.detach().float().cpu())
        res = SyntheticTrainResult(
            out=str(out),
            architecture=cfg.architecture,
            d_in=cfg.d_in,
            d_sae=cfg.d_sae,
            k=sae_cfg.get("k"),
            alpha=sae_cfg.get("alpha"),
            tokens=int(cfg.tokens),
            steps=trainer.n_training_steps,
            device=cfg.device,
            seconds=round(time.time() - t0, 2),
            mcc=float(mcc),
            explained_variance=rd.explained_variance,
            l0=rd.rate,
            dead_latents=rd.dead_latents,
            gamma_file=str(out / GAMMA_FILENAME) if weighted else None,
        )
        atomic_write_json(staging / "train_summary.json", asdict(res))
        check_run_folder(out)  # again: the folder may have changed during training
        replace_dir(staging, out)
    except BaseException:
        _drop_incomplete_checkpoints(staging)
        if staging.exists() and not reused and not _checkpoints(staging):
            shutil.rmtree(staging, ignore_errors=True)  # ours, and nothing in it to resume from
        elif staging.exists():
            print(f"note: the checkpoints of this run are kept in {staging / 'checkpoints'}", file=sys.stderr)
        raise
    return res


#: SAELens's checkpoint files: the trainer state (a torch pickle) and the activation scaler
_TRAINER_STATE = "trainer_state.pt"
_SCALER = "activation_scaler.json"
_CHECKPOINT_FILES = ("sae_weights.safetensors", _TRAINER_STATE, _SCALER)


#: names a training command writes directly into a run folder: SAELens's saved SAE and checkpoints, gamma, our
#: summaries (``summary.json`` of a ``train --model`` grid, whose SAEs live in hook folders, :data:`_HOOK_DIR`)
RUN_NAMES = frozenset(
    {
        "cfg.json",
        "sae_weights.safetensors",
        "sparsity.safetensors",
        "runner_cfg.json",
        GAMMA_FILENAME,
        "train_summary.json",
        "summary.json",
        "checkpoints",
        "synthetic_model",
    }
)
#: where ``train --synthetic`` saves its ground truth (a SAELens SyntheticModel folder: rdp_synthetic's
#: ``--synthetic_model_path`` scores the SAE against it)
SYNTHETIC_MODEL_DIR = "synthetic_model"
#: a grid's hook folder (``train --model`` with several SAEs: ``out/<hook>/<sae name>/``)
_HOOK_DIR = re.compile(r"^blocks\.\d+\.hook_[A-Za-z0-9_]+$")


def _is_train_run(p: Path) -> bool:
    """A folder written by a sae-rdp training command (``train_summary.json``, or the ``summary.json``
    of a ``train --model`` grid) that holds nothing else than the names training writes (:data:`RUN_NAMES`):
    replacing it can then delete no file of the user's."""
    from sae_rdp_plugin.io import folder_holds_only

    marked = (p / "train_summary.json").is_file()
    entries = list(p.iterdir()) if p.is_dir() else []
    if not marked and entries and all(e.is_dir() and _HOOK_DIR.match(e.name) for e in entries):
        marked = True  # a train --model grid killed before its summary: only its hook folders (SAEs, .partial)
    if not marked:
        try:
            marked = str(json.loads((p / "summary.json").read_text()).get("format", "")).startswith("sae-rdp ")
        except (OSError, ValueError, AttributeError, RecursionError):
            marked = False
    try:
        return marked and folder_holds_only(p, lambda n: n in RUN_NAMES or bool(_HOOK_DIR.match(n)))
    except OSError:
        return False


is_train_run = _is_train_run


def check_out_path(out: str | Path, flag: str = "--out") -> Path:
    """``out`` as a Path unless it names no folder of its own: empty, ``.`` / ``..``, or the current folder
    or one above it (a run is written into a sibling and swapped in: the working folder cannot be replaced)."""
    text = str(out)
    p = Path(text)
    if not text.strip():
        raise SaeRdpError(f"{flag} is empty; give the path of a new or empty folder")
    if p.name in ("", ".", "..") or Path.cwd().resolve().is_relative_to(p.resolve()):
        raise SaeRdpError(f"{flag} {text!r} is the current folder or one above it; give a new or empty folder")
    return p


def check_run_folder(out: str | Path) -> Path:
    """``out`` as a Path if a training run may be written there: new, an empty folder, or an earlier
    sae-rdp training run holding only what training writes (replaced whole at the end, so no file of the old
    run survives next to the new SAE); its nearest existing parent, and ``out`` itself when it exists (it is
    moved aside by the swap), must be writable. Anything else raises SaeRdpError; nothing is written or
    deleted here."""
    from sae_rdp_plugin.io import check_out_folder

    p = check_out_folder(check_out_path(out), _is_train_run)
    if p.is_dir() and not p.is_symlink() and not os.access(p, os.W_OK | os.X_OK):
        raise SaeRdpError(f"--out {p}: no permission to write in {p} (it is replaced by the new run)")
    return p


def _step_of(ck: Path) -> int | None:
    return int(ck.name) if ck.name.isdigit() else None


def _checkpoints(run: Path, complete: bool = True) -> list[Path]:
    """The SAELens checkpoint folders (``checkpoints/<samples>``) of a run folder; ``complete``: only those
    holding every file a resume reads."""
    found = [ck for ck in (run / "checkpoints").glob("*") if ck.is_dir() and _step_of(ck) is not None]
    if complete:
        found = [ck for ck in found if all((ck / n).is_file() for n in _CHECKPOINT_FILES)]
    return sorted(found, key=_step_of)


def _drop_incomplete_checkpoints(run: Path) -> None:
    """Remove the checkpoint folders of our own run folder that a failure or a kill left half-written."""
    import shutil

    complete = set(_checkpoints(run))
    for ck in _checkpoints(run, complete=False):
        if ck not in complete:
            shutil.rmtree(ck, ignore_errors=True)


def _check_resume_dir(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise SaeRdpError(f"--resume {p}: no such checkpoint folder")
    missing = [n for n in _CHECKPOINT_FILES if not (p / n).is_file()]
    if missing:
        raise SaeRdpError(f"--resume {p} is not a SAELens training checkpoint (missing {', '.join(missing)})")
    return p.absolute()


def _resume_staging(resume: Path | None, out: Path) -> Path | None:
    """The staging folder of an earlier, interrupted run into ``out`` that ``resume`` is a checkpoint of."""
    if resume is None or resume.parent.name != "checkpoints" or _step_of(resume) is None:
        return None
    run = resume.parent.parent
    if run.parent == out.absolute().parent and run.name.startswith(f".{out.name}.") and run.name.endswith(".partial"):
        return out.parent / run.name
    return None


def _load_resume(trainer: Any, sae: Any, resume: Path) -> None:
    """Load a checkpoint into the trainer and SAE. The trainer state is first read by ``torch.load`` with
    ``weights_only=True`` (plain tensors and containers only: a crafted pickle is refused, never run);
    any unreadable or mismatched checkpoint is a SaeRdpError. Then the step count and the checkpoint
    schedule are set so that the resumed run counts every step once and writes only the checkpoints
    still due."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's note on the pickle protocol
            torch.load(resume / _TRAINER_STATE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SaeRdpError(
            f"--resume {resume}: {_TRAINER_STATE} holds objects other than tensors and plain containers; "
            "refused (loading it could run code)"
        ) from None
    except Exception as exc:
        raise SaeRdpError(f"--resume {resume}: {_TRAINER_STATE} is unreadable ({type(exc).__name__})") from None
    try:
        trainer.load_trainer_state(resume)
        sae.load_weights_from_checkpoint(resume)
    except Exception as exc:
        reason = exc_line(exc)
        raise SaeRdpError(f"--resume {resume}: cannot load the checkpoint ({reason})") from None
    # SAETrainer saves a checkpoint inside a step, after counting its samples but before counting the step
    trainer.n_training_steps = trainer.n_training_samples // trainer.cfg.train_batch_size_samples
    trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t >= trainer.n_training_samples]


def _checkpoint_errors_as_input_errors(trainer: Any, out: Path) -> None:
    """A checkpoint that cannot be written (full disk, permissions) stops training with one SaeRdpError."""
    save = trainer.save_checkpoint

    def save_checkpoint(*args: Any, **kwargs: Any) -> Any:
        try:
            return save(*args, **kwargs)
        except Exception as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0]
            raise SaeRdpError(f"cannot write a checkpoint of the run for {out}: {reason}") from exc

    trainer.save_checkpoint = save_checkpoint


# ------------------------------------------------------------------------------------ language models


def train_language_model(
    cfg: Any,
    override_model: Any = None,
    override_dataset: Any = None,
    gamma_progress: bool = True,
    fast: bool = True,
) -> Any:
    """Run SAELens's LanguageModelSAETrainingRunner with ``cfg`` (a LanguageModelSAERunnerConfig).

    For weighted architectures, before training: gamma comes from ``cfg.resume_from_checkpoint`` or
    ``cfg.from_pretrained_path`` (their gamma.safetensors, verbatim), from the SAE config's
    ``gamma_path``, or else from a streaming float64 pass over ``gamma_estimation_batches`` batches of
    the runner's own ActivationsStore. The final SAE is saved by SAELens to ``cfg.output_path`` with
    gamma.safetensors next to it. Without ``override_model``, a ``cfg.model_name`` of the plugin's models is
    loaded by :func:`runner_model`, any other by SAELens. Returns the trained SAE."""
    import sae_rdp_plugin.wsae.registry as arch

    arch.register_now()
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner

    from sae_rdp_plugin.wsae.architectures import WeightedSAEMixin

    if (cfg.n_batches_in_buffer * cfg.context_size) < cfg.train_batch_size_tokens:
        raise SaeRdpError(
            f"n_batches_in_buffer * context_size ({cfg.n_batches_in_buffer} * {cfg.context_size}) must be >= "
            f"train_batch_size_tokens ({cfg.train_batch_size_tokens})"
        )
    if override_model is None:  # model names SAELens cannot load (offline GGUF models, GPT-2 / Pythia): ours
        override_model = runner_model(cfg)
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=override_dataset, override_model=override_model)
    sae = runner.sae
    if isinstance(sae, WeightedSAEMixin):
        for src in (cfg.resume_from_checkpoint, cfg.from_pretrained_path):
            if src is not None and (Path(src) / GAMMA_FILENAME).exists():
                sae.load_gamma(Path(src) / GAMMA_FILENAME, verbatim=True)
                break
        if not sae.gamma_is_set:
            sae.estimate_gamma(runner.activations_store, progress=gamma_progress)
    # ---- BEGIN fast path (sae_rdp_plugin.fast.step; fast=False / `--no-fast` disables)
    if fast:
        from sae_rdp_plugin.fast.step import install_fast_step

        _run_trainer = runner.run_trainer_with_interruption_handling

        def _run_trainer_fast(trainer: Any) -> Any:
            install_fast_step(trainer)
            return _run_trainer(trainer)

        runner.run_trainer_with_interruption_handling = _run_trainer_fast
    # ---- END fast path
    return runner.run()


def tokens_dataset_from_text(text: str, tokenizer: Any, context_size: int) -> Any:
    """A datasets.Dataset with a "tokens" column: ``text`` tokenised and cut into context_size rows."""
    from datasets import Dataset

    ids = tokenizer(text, return_tensors=None)["input_ids"]
    n = len(ids) // context_size
    if n == 0:
        raise SaeRdpError(f"text has {len(ids)} tokens, fewer than one context of {context_size}")
    rows = [ids[i * context_size : (i + 1) * context_size] for i in range(n)]
    return Dataset.from_dict({"tokens": rows})


def load_dataset_arg(path: str, tokenizer: Any, context_size: int) -> Any:
    """--dataset: a directory saved with datasets' save_to_disk (with a "tokens" column), or a text file."""
    p = Path(path)
    if p.is_dir():
        from datasets import load_from_disk

        try:
            ds = load_from_disk(str(p))
        except (FileNotFoundError, ValueError) as exc:
            raise SaeRdpError(f"--dataset {p}: {str(exc).strip().splitlines()[0][:160]}") from None
        if "tokens" not in ds.column_names:
            raise SaeRdpError(f"dataset {p} has no 'tokens' column (columns: {ds.column_names})")
        return ds
    if p.is_file():
        from sae_rdp_plugin.io import check_text_file

        check_text_file(p, "--dataset")  # a binary file would be tokenised as replacement characters
        return tokens_dataset_from_text(p.read_text(encoding="utf-8", errors="replace"), tokenizer, context_size)
    raise SaeRdpError(f"dataset not found: {path} (give a text file or a datasets directory with a 'tokens' column)")


#: ``model_from_pretrained_kwargs`` keys :func:`runner_model` reads (``first_n_layers`` is TransformerLens's
#: name of ``n_layers``; ``d_model`` / ``n_heads`` resize a random GPT-2 / Pythia for tests)
RUNNER_MODEL_KWARGS = ("path", "n_layers", "first_n_layers", "random_init", "seed", "d_model", "n_heads")
#: TransformerLens's weight processing: the plugin's models load unprocessed (SAELens's
#: ``from_pretrained_no_processing``), so these are accepted only when false
_TL_PROCESSING = (
    "fold_ln",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
    "refactor_factored_attn_matrices",
)


def runner_model(cfg: Any) -> Any:
    """The HookedTransformer of ``cfg.model_name`` (a LanguageModelSAERunnerConfig) when the plugin loads that
    name, else None (SAELens loads it): the offline ``gemma3-270m`` / ``smollm2-135m`` and the GPT-2 / Pythia
    names, through :func:`sae_rdp_plugin.lm.models.load_model` (or ``random_model_like`` with ``random_init``).

    ``cfg.model_from_pretrained_kwargs`` may hold ``path`` (a GGUF file or a model folder), ``n_layers``
    (or ``first_n_layers``), and ``random_init`` with ``seed`` / ``d_model`` / ``n_heads`` (random weights of
    the architecture, no network). Other keys, and TransformerLens processing switched on, raise SaeRdpError."""
    from sae_rdp_plugin.lm.models import OFFLINE_MODELS, canonical_name, load_model, published_arch, random_model_like

    name = cfg.model_name
    if cfg.model_class_name != "HookedTransformer" or (
        canonical_name(name) not in OFFLINE_MODELS and published_arch(name) is None
    ):
        return None
    kw = dict(cfg.model_from_pretrained_kwargs or {})
    on = [k for k in _TL_PROCESSING if kw.pop(k, False)]
    if on:
        raise SaeRdpError(f"{name} loads unprocessed (as from_pretrained_no_processing): {', '.join(on)} must be false")
    unknown = sorted(set(kw) - set(RUNNER_MODEL_KWARGS))
    if unknown:
        raise SaeRdpError(
            f"model_from_pretrained_kwargs {unknown} not understood for {name}; use {list(RUNNER_MODEL_KWARGS)}"
        )
    if "n_layers" in kw and "first_n_layers" in kw:
        raise SaeRdpError("give n_layers or first_n_layers, not both")
    n_layers = kw.pop("n_layers", kw.pop("first_n_layers", None))
    device = cfg.llm_device or cfg.device
    if kw.pop("random_init", False):
        if "path" in kw:
            raise SaeRdpError("random_init builds random weights: it takes no path")
        return random_model_like(name, n_layers=n_layers, device=device, **kw)
    if {"seed", "d_model", "n_heads"} & set(kw):
        raise SaeRdpError("seed / d_model / n_heads only with random_init")
    return load_model(name, path=kw.get("path"), device=device, n_layers=n_layers)


def runner_dataset(dataset_path: str) -> Any:
    """A ``datasets`` folder written by ``save_to_disk`` (which SAELens's ``load_dataset`` cannot read) as a
    Dataset for ``override_dataset``; None for anything else (SAELens reads it)."""
    p = Path(dataset_path) if dataset_path else None
    if p is None or not p.is_dir() or not ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file()):
        return None
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(p))
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise SaeRdpError(f"dataset {p} has no 'train' split (splits: {list(ds)})")
        ds = ds["train"]
    return ds


def runner_config(
    cfg: TrainConfig,
    *,
    model_name: str,
    hook_name: str,
    out: str | Path,
    context_size: int = 128,
    n_batches_in_buffer: int = 16,
    store_batch_size_prompts: int = 8,
    model_from_pretrained_kwargs: dict[str, Any] | None = None,
) -> Any:
    """A LanguageModelSAERunnerConfig training ``cfg`` on ``hook_name`` of ``model_name``, for offline use
    (no wandb): ``cfg.tokens`` training tokens in batches of ``cfg.batch_size`` tokens, the SAE and trainer
    fields of :class:`~sae_rdp_plugin.train.config.TrainConfig`; the final SAE goes to ``out`` and
    checkpoints to ``out/checkpoints``. The buffer holds at least one training batch.
    ``model_from_pretrained_kwargs``: for the plugin's model names, what :func:`runner_model` reads."""
    import sae_rdp_plugin.wsae.registry as arch

    cfg.require_zero_b_dec("SAELens's runner (--saelens-store)")
    arch.register_now()
    from sae_lens.config import LanguageModelSAERunnerConfig, LoggingConfig
    from sae_lens.saes.sae import TrainingSAEConfig

    n_buf = max(n_batches_in_buffer, math.ceil(cfg.batch_size / context_size))
    return LanguageModelSAERunnerConfig(
        sae=TrainingSAEConfig.from_dict(cfg.sae_config_dict()),
        model_name=model_name,
        model_from_pretrained_kwargs=model_from_pretrained_kwargs,
        hook_name=hook_name,
        dataset_path="",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=context_size,
        training_tokens=int(cfg.tokens),
        train_batch_size_tokens=cfg.batch_size,
        store_batch_size_prompts=store_batch_size_prompts,
        n_batches_in_buffer=n_buf,
        lr=cfg.lr,
        lr_end=cfg.lr,
        lr_scheduler_name="constant",
        autocast=cfg.autocast,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=cfg.feature_sampling_window,
        n_batches_for_norm_estimate=cfg.n_batches_for_norm_estimate,
        device=cfg.device,
        seed=cfg.seed,
        output_path=str(out),
        checkpoint_path=str(Path(out) / "checkpoints"),
        n_checkpoints=cfg.n_checkpoints,
        logger=LoggingConfig(log_to_wandb=False),
        verbose=False,
    )


def check_wandb_login(what: str) -> None:
    """Raise SaeRdpError (naming ``what``, the option that turned wandb on) unless wandb is installed and can log
    in without asking: an API key in the environment or the netrc file, an identity token file, or WANDB_MODE
    offline / disabled. Checked before a run starts, instead of wandb's traceback at its end."""
    import netrc
    import os

    try:
        import wandb  # noqa: F401
    except ImportError:
        raise SaeRdpError(f"{what} needs wandb: pip install wandb") from None
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return
    if os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0].split(":")[0]
    try:
        if netrc.netrc(os.environ.get("NETRC")).authenticators(host):
            return
    except (OSError, netrc.NetrcParseError):
        pass
    raise SaeRdpError(
        f"{what}: wandb is not logged in (no WANDB_API_KEY, no netrc entry for {host}); run `wandb login`, or set "
        "WANDB_MODE=offline"
    )


def saelens_cli(argv: list[str] | None = None) -> Any:
    """SAELens's own runner CLI (``--architecture weighted_topk --alpha 0.5 --model_name ... ``) with the
    plugin registered and gamma estimated from the activation store before training:
    ``python -m sae_rdp_plugin.train.saelens --architecture weighted_topk --alpha 1 --d_in 768 ...``.
    ``--model_name gemma3-270m`` (or another of the plugin's models, :func:`runner_model`) loads that model,
    with ``--model_from_pretrained_kwargs '{"path": ..., "n_layers": ...}'``; ``--dataset_path`` may be a
    ``save_to_disk`` folder with a ``tokens`` column (:func:`runner_dataset`)."""
    import sys

    import sae_rdp_plugin.wsae.registry as arch

    arch.register_now()
    from sae_lens.llm_sae_training_runner import _parse_cfg_args

    cfg = _parse_cfg_args(sys.argv[1:] if argv is None else argv)
    if cfg.logger.log_to_wandb:  # SAELens's default: fail now, not after the gamma pass and training
        check_wandb_login("wandb logging (SAELens's default; --log_to_wandb False turns it off)")
    return train_language_model(
        cfg, override_model=runner_model(cfg), override_dataset=runner_dataset(cfg.dataset_path)
    )


if __name__ == "__main__":
    from sae_rdp_plugin.cli import run_entry_point

    raise SystemExit(run_entry_point(saelens_cli))

"""A generic reader of SAEBench results: one tidy table, one row per SAE, one column per metric.

Accepted inputs (files or folders, searched recursively for ``*.json``, ``*.jsonl`` and ``*.csv``):

* **Current SAEBench output** (``BaseEvalOutput`` JSON of *any* eval type, including ones SAEBench's
  own graphing code does not know, e.g. ``rdp_audit``): ``eval_result_metrics`` is
  ``{category: {metric: value}}`` and becomes columns ``<eval_type_id>.<category>.<metric>``, e.g.
  ``core.sparsity.l0`` or ``sparse_probing.sae.sae_top_1_test_accuracy``. A file may also hold a dict
  ``{name: BaseEvalOutput}`` (SAEBench's autointerp / unlearning acceptance files do).
* **The 2024 ``sae_bench_data`` format** (``{"sae_config_dictionary_learning": ..., "basic_eval_results":
  ...}``, dictionary_learning ``evaluate()``): fields are renamed to their SAEBench ``core``
  equivalents (:data:`BASIC_TO_CORE`; same definitions, measured on other tokens), the rest keep
  ``basic.<name>``.
* **The 2024 sparse-probing format** (``{"custom_eval_results": {key: {sae_top_1_test_accuracy ...}}}``):
  columns ``sparse_probing.sae.*`` / ``sparse_probing.llm.*`` as in the current format.
* **Plain CSV** with columns ``release`` and ``sae_id`` (the SAE), optional metadata columns
  (:data:`META_COLUMNS`) and numeric metric columns (empty cell = missing).
* **JSON lines** (``.jsonl``): one object of the formats above per line; a ``.jsonl`` file that is not
  is skipped with a warning naming it.

Model and layer come from ``sae_cfg_dict`` (pre-6.0 SAELens: ``model_name``, ``hook_layer``) or its
``metadata`` (SAELens 6: ``metadata.model_name``, ``metadata.hook_layer``, else the layer L of
``metadata.hook_name = blocks.L.*``); without a model there, from ``eval_config.model_name``. A model
name's organisation prefix is dropped (``EleutherAI/pythia-70m-deduped`` -> ``pythia-70m-deduped``).
A training checkpoint (``checkpoint`` = True) is an SAE whose id
ends in ``_step_<N>`` or whose old key sits under ``resid_post_layer_<L>_checkpoints/``; ``_step_final``
is the final SAE. rdp_audit's own outputs (``eval_type_id = "rdp_audit"`` and its summary JSON) are
skipped silently, so an audit written into the folder it reads can be re-run.

SAEs are joined on ``release/sae_id`` (SAELens release and id). Old dictionary_learning keys
``<sweep>/resid_post_layer_<L>/trainer_<i>`` are mapped to SAELens' names
(``sae_bench_<sweep>``, ``blocks.<L>.hook_resid_post__trainer_<i>``), so old and new files of the
same SAE join. Outputs without release and id are keyed by a hash of ``sae_cfg_dict``.

Errors name the file: unparsable JSON, a recognised format with a broken structure or non-numeric
metric, the same SAE metric with two different values in two files (a duplicate SAE). A file found by
searching a folder that is unreadable in that way is skipped with a warning naming it, and the rest of the
folder is read (a file given by name raises). JSON files in no known format are skipped and listed in
``table.report`` (``strict=True`` makes all of these errors). A metric
present for some SAEs but missing for others is listed in ``table.report`` (and warned), never
silently dropped: its column holds NaN for those SAEs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sae_rdp_plugin.errors import SaeRdpError

META_COLUMNS = (
    "release",
    "sae_id",
    "model",
    "layer",
    "d_sae",
    "architecture",
    "k",
    "l1_penalty",
    "checkpoint",
)

BASIC_TO_CORE = {
    "l0": "core.sparsity.l0",
    "l1_loss": "core.sparsity.l1",
    "frac_variance_explained": "core.reconstruction_quality.explained_variance",
    "cossim": "core.reconstruction_quality.cossim",
    "frac_recovered": "core.model_performance_preservation.ce_loss_score",
    "loss_reconstructed": "core.model_performance_preservation.ce_loss_with_sae",
    "loss_original": "core.model_performance_preservation.ce_loss_without_sae",
    "loss_zero": "core.model_performance_preservation.ce_loss_with_ablation",
    "l2_ratio": "core.shrinkage.l2_ratio",
    "relative_reconstruction_bias": "core.shrinkage.relative_reconstruction_bias",
}

_TRAINER_ARCH = {
    "TrainerTopK": "topk",
    "StandardTrainer": "standard",
    "GatedSAETrainer": "gated",
    "PAnnealTrainer": "p_anneal",
    "TrainerJumpRelu": "jumprelu",
}

#: eval_type_id of the rdp_audit eval's own result files (its eval_output.EVAL_TYPE_ID_RDP_AUDIT)
RDP_AUDIT_EVAL_TYPE_ID = "rdp_audit"
_RDP_AUDIT_SUMMARY_KEYS = {"rows", "skipped_sweeps", "reader_report"}  # and "files" since it lists them
_CHECKPOINT_ID = re.compile(r"_step_\d+$")
_HOOK_LAYER = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
CHECKPOINT_MODES = ("exclude", "only", "all")

_DL_KEY = re.compile(
    r"^(?P<sweep>[^/]+)/resid_post_layer_(?P<layer>\d+)(?P<ck>_checkpoints)?/trainer_(?P<t>\d+)(?P<step>_step_\d+)?$"
)


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------


@dataclass
class ResultsTable:
    """One row per SAE (``keys[i] = "release/sae_id"``); ``columns[name]`` is a float array with NaN
    for a missing value; ``meta[name]`` holds metadata (release, sae_id, layer, d_sae, architecture,
    k, checkpoint, ...); ``sources[i]`` the files a row came from; ``report`` lists skipped files and
    metrics missing for some SAEs."""

    keys: list[str]
    columns: dict[str, np.ndarray]
    meta: dict[str, list[Any]]
    sources: list[list[str]] = field(default_factory=list)
    report: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def metric_names(self) -> list[str]:
        return sorted(self.columns)

    def resolve(self, name: str) -> str:
        """The column called ``name``, or the one column ending with ``.name`` (``sparsity.l0``)."""
        if name in self.columns:
            return name
        hits = [c for c in self.columns if c.endswith("." + name)]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise SaeRdpError(f"no metric {name!r} in the results (have: {', '.join(sorted(self.columns)[:8])}, ...)")
        raise SaeRdpError(f"metric {name!r} is ambiguous: {', '.join(sorted(hits))}")

    def column(self, spec: str) -> np.ndarray:
        """A metric column; ``"1-NAME"`` gives 1 - column (e.g. ``1-explained_variance``)."""
        s = spec.replace(" ", "")
        if s.startswith("1-"):
            return 1.0 - self.columns[self.resolve(s[2:])]
        return self.columns[self.resolve(s)]

    def subset(self, rows: Sequence[int] | np.ndarray) -> ResultsTable:
        idx = np.asarray(rows)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise SaeRdpError(f"row mask has shape {idx.shape}, the table has {len(self)} rows")
            idx = np.flatnonzero(idx)
        idx = [int(i) for i in idx]
        bad = [i for i in idx if not -len(self) <= i < len(self)]
        if bad:
            raise SaeRdpError(f"row index {bad[0]} out of range for a table of {len(self)} rows")
        return ResultsTable(
            keys=[self.keys[i] for i in idx],
            columns={c: v[idx] for c, v in self.columns.items()},
            meta={c: [v[i] for i in idx] for c, v in self.meta.items()},
            sources=[self.sources[i] for i in idx] if self.sources else [],
            report=list(self.report),
        )

    def where(self, **conds: Any) -> ResultsTable:
        """Rows whose metadata equal the given values, e.g. ``where(layer=19, architecture="topk")``."""
        mask = np.ones(len(self), dtype=bool)
        for k, v in conds.items():
            if k not in self.meta:
                raise SaeRdpError(f"no metadata column {k!r}")
            mask &= np.array([x == v for x in self.meta[k]], dtype=bool)
        return self.subset(mask)

    def missing(self, name: str) -> list[str]:
        """SAEs that lack metric ``name``."""
        col = self.columns[self.resolve(name)]
        return [k for k, v in zip(self.keys, col) if not np.isfinite(v)]

    def to_rows(self, columns: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """One dict per SAE: its metadata and the metric ``columns`` (names as :meth:`resolve` takes them;
        default all), None for a missing value."""
        cols = [self.resolve(c) for c in columns] if columns is not None else sorted(self.columns)
        out = []
        for i in range(len(self)):
            row: dict[str, Any] = {m: self.meta[m][i] for m in self.meta}
            for c in cols:
                v = float(self.columns[c][i])
                row[c] = v if math.isfinite(v) else None
            out.append(row)
        return out

    def to_csv(self, path: str | Path, columns: Iterable[str] | None = None) -> Path:
        """Write the plain-CSV format :func:`read_results` reads back (atomically)."""
        from io import StringIO

        from sae_rdp_plugin.io import atomic_write_text

        cols = [self.resolve(c) for c in columns] if columns is not None else sorted(self.columns)
        meta = [m for m in META_COLUMNS if m in self.meta]
        buf = StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(meta + cols)
        for i in range(len(self)):
            vals = []
            for c in cols:
                v = float(self.columns[c][i])
                vals.append("" if not math.isfinite(v) else repr(v))
            w.writerow(["" if self.meta[m][i] is None else self.meta[m][i] for m in meta] + vals)
        return atomic_write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------------------------
# Parsing one file into records {key: (meta, metrics)}
# ----------------------------------------------------------------------------------------------

Record = tuple[dict[str, Any], dict[str, float]]


def _num(v: Any, where: str, path: Path) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SaeRdpError(f"{path}: {where} is not a number ({v!r})")
    return float(v)


def _meta_from_cfg(cfg: dict[str, Any] | None) -> dict[str, Any]:
    if not isinstance(cfg, dict):
        return {}
    arch = cfg.get("architecture")
    if cfg.get("activation_fn_str") == "topk" or "k" in (cfg.get("activation_fn_kwargs") or {}):
        arch = "topk"
    k = (cfg.get("activation_fn_kwargs") or {}).get("k", cfg.get("k"))
    md = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    layer = cfg.get("hook_layer", md.get("hook_layer"))
    if layer is None:
        m = _HOOK_LAYER.search(str(cfg.get("hook_name") or md.get("hook_name") or ""))
        layer = int(m[1]) if m else None
    return {
        "model": cfg.get("model_name") or md.get("model_name"),
        "layer": layer,
        "d_sae": cfg.get("d_sae"),
        "architecture": arch,
        "k": k,
    }


def _key_from_output(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    rel, sid = obj.get("sae_lens_release_id"), obj.get("sae_lens_id")
    if rel is None and sid is None:
        cfg = obj.get("sae_cfg_dict")
        if not isinstance(cfg, dict):
            return None, None
        h = hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return "custom", f"cfg_{h}"
    return str(rel), str(sid)


def _parse_eval_output(obj: dict[str, Any], path: Path, where: str = "") -> tuple[str, Record]:
    eid = obj.get("eval_type_id")
    metrics = obj.get("eval_result_metrics")
    if not isinstance(eid, str) or not eid:
        raise SaeRdpError(f"{path}: {where}eval_type_id is missing or not a string")
    if not isinstance(metrics, dict):
        raise SaeRdpError(f"{path}: {where}eval_result_metrics is not a {{category: {{metric: value}}}} object")
    out: dict[str, float] = {}
    for cat, ms in metrics.items():
        if not isinstance(ms, dict):
            raise SaeRdpError(f"{path}: {where}eval_result_metrics[{cat!r}] is not an object of metrics")
        for m, v in ms.items():
            x = _num(v, f"{where}metric {cat}.{m}", path)
            if x is not None:
                out[f"{eid}.{cat}.{m}"] = x
    rel, sid = _key_from_output(obj)
    if rel is None:
        raise SaeRdpError(f"{path}: {where}no sae_lens_release_id/sae_lens_id and no sae_cfg_dict to identify the SAE")
    meta = _meta_from_cfg(obj.get("sae_cfg_dict"))
    if meta.get("model") is None:  # SAEBench 0.6 outputs without a model in sae_cfg_dict name it here
        ec = obj.get("eval_config")
        meta["model"] = ec.get("model_name") if isinstance(ec, dict) else None
    if isinstance(meta.get("model"), str):
        meta["model"] = meta["model"].split("/")[-1]  # "EleutherAI/pythia-70m" and "pythia-70m": one model
    meta.update(release=rel, sae_id=sid, checkpoint=bool(_CHECKPOINT_ID.search(sid)))
    return f"{rel}/{sid}", (meta, out)


def _dl_key(key: str, release: str | None) -> tuple[str, str, dict[str, Any]]:
    """Map a dictionary_learning key to (release, sae_id, meta)."""
    m = _DL_KEY.match(key)
    if m:
        rel = release or f"sae_bench_{m['sweep']}"
        sid = f"blocks.{m['layer']}.hook_resid_post__trainer_{m['t']}" + (m["step"] or "")
        return rel, sid, {"layer": int(m["layer"]), "checkpoint": bool(m["ck"])}
    if release is None:
        raise SaeRdpError(f"cannot tell the SAELens release of key {key!r}")
    return release, key, {"checkpoint": bool(_CHECKPOINT_ID.search(key))}


def _parse_sae_bench_data(obj: dict[str, Any], path: Path) -> dict[str, Record]:
    res, cfgs = obj.get("basic_eval_results"), obj.get("sae_config_dictionary_learning", {})
    if not isinstance(res, dict) or not isinstance(cfgs, dict):
        raise SaeRdpError(f"{path}: basic_eval_results / sae_config_dictionary_learning must be objects")
    stem = path.stem
    release = stem[: -len("_data")] if stem.endswith("_data") else stem
    out: dict[str, Record] = {}
    for key, vals in res.items():
        if not isinstance(vals, dict):
            raise SaeRdpError(f"{path}: basic_eval_results[{key!r}] is not an object")
        m = _DL_KEY.match(key)
        rel, sid, meta = _dl_key(key, release if not m or not release.startswith("sae_bench_") else None)
        tr = (cfgs.get(key) or {}).get("trainer", {}) if isinstance(cfgs.get(key), dict) else {}
        meta.update(
            release=rel,
            sae_id=sid,
            model=str(tr.get("lm_name", "")).split("/")[-1] or None,
            layer=tr.get("layer", meta.get("layer")),
            d_sae=tr.get("dict_size"),
            architecture=_TRAINER_ARCH.get(tr.get("trainer_class"), tr.get("trainer_class")),
            k=tr.get("k"),
            l1_penalty=tr.get("l1_penalty") if tr.get("l1_penalty", -1) != -1 else None,
        )
        metrics: dict[str, float] = {}
        for name, v in vals.items():
            if name == "hyperparameters":
                continue
            x = _num(v, f"basic_eval_results[{key!r}].{name}", path)
            if x is not None:
                metrics[BASIC_TO_CORE.get(name, f"basic.{name}")] = x
        out[f"{rel}/{sid}"] = (meta, metrics)
    return out


def _parse_old_sparse_probing(obj: dict[str, Any], path: Path) -> dict[str, Record]:
    res, cfg = obj.get("custom_eval_results"), obj.get("custom_eval_config") or {}
    if not isinstance(res, dict):
        raise SaeRdpError(f"{path}: custom_eval_results must be an object")
    key_rel: dict[str, str] = {}
    for rel, keys in (cfg.get("selected_saes_dict") or {}).items():
        for k in keys:
            key_rel[k] = rel
    out: dict[str, Record] = {}
    for key, vals in res.items():
        if not isinstance(vals, dict):
            raise SaeRdpError(f"{path}: custom_eval_results[{key!r}] is not an object")
        rel_hint = key_rel.get(key)
        if rel_hint is None and not _DL_KEY.match(key):
            rel_hint = cfg.get("sae_release")
        rel, sid, meta = _dl_key(key, rel_hint)
        meta.update(release=rel, sae_id=sid, model=cfg.get("model_name"))
        if meta.get("layer") is None and cfg.get("layer") is not None:
            meta["layer"] = cfg["layer"]
        metrics = {}
        for name, v in vals.items():
            x = _num(v, f"custom_eval_results[{key!r}].{name}", path)
            if x is None:
                continue
            cat = "llm" if name.startswith("llm_") else "sae" if name.startswith("sae_") else "other"
            metrics[f"sparse_probing.{cat}.{name}"] = x
        out[f"{rel}/{sid}"] = (meta, metrics)
    return out


def _parse_csv(path: Path) -> dict[str, Record]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise SaeRdpError(f"{path}: not a text CSV file ({e.reason})") from None
    if not rows:
        raise SaeRdpError(f"{path}: empty CSV file")
    header = [h.strip() for h in rows[0]]
    if "release" not in header or "sae_id" not in header:
        raise SaeRdpError(f"{path}: CSV needs 'release' and 'sae_id' columns (has {header[:6]})")
    if len(set(header)) != len(header):
        raise SaeRdpError(f"{path}: repeated CSV column names")
    out: dict[str, Record] = {}
    for ln, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise SaeRdpError(f"{path}: line {ln} has {len(row)} fields, header has {len(header)}")
        meta: dict[str, Any] = {}
        metrics: dict[str, float] = {}
        for h, c in zip(header, row):
            c = c.strip()
            if h in META_COLUMNS:
                meta[h] = _meta_value(h, c, f"{path}: line {ln}, column {h!r}")
            elif c:
                try:
                    metrics[h] = float(c)
                except ValueError:
                    raise SaeRdpError(f"{path}: line {ln}, column {h!r}: {c!r} is not a number") from None
        if meta.get("checkpoint") is None:
            meta["checkpoint"] = bool(_CHECKPOINT_ID.search(str(meta.get("sae_id") or "")))
        key = f"{meta['release']}/{meta['sae_id']}"
        if key in out:
            raise SaeRdpError(f"{path}: duplicate SAE {key} (line {ln})")
        out[key] = (meta, metrics)
    return out


def _meta_value(name: str, c: str, where: str) -> Any:
    if c == "":
        return None
    if name in ("layer", "d_sae", "k"):
        try:
            v = float(c)
        except ValueError:
            v = math.nan
        if name == "k" and math.isfinite(v) and v > 0 and v != int(v):
            return v  # BatchTopK's k is a mean per row
        if not math.isfinite(v) or v != int(v) or v < 0:
            raise SaeRdpError(f"{where}: {c!r} is not a whole number >= 0")
        return int(v)
    if name == "l1_penalty":
        return float(c)
    if name == "checkpoint":
        return c.lower() in ("true", "1", "yes")
    return c


def is_rdp_audit_output(obj: Any) -> bool:
    """Whether a parsed JSON object is one of rdp_audit's own outputs (a per-sweep result or the summary)."""
    if not isinstance(obj, dict):
        return False
    keys = set(obj)
    return obj.get("eval_type_id") == RDP_AUDIT_EVAL_TYPE_ID or keys - {"files"} == _RDP_AUDIT_SUMMARY_KEYS


def parse_file(path: str | Path) -> dict[str, Record] | None:
    """Records ``{"release/sae_id": (meta, metrics)}`` of one file; None if it is JSON (lines) in no
    known format; ``{}`` for rdp_audit's own outputs. Raises SaeRdpError naming the file when it is
    unreadable or malformed."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return _parse_csv(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise SaeRdpError(f"{path}: not a UTF-8 JSON file ({e.reason})") from None
    if path.suffix.lower() == ".jsonl":
        return _parse_jsonl(text, path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise SaeRdpError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise SaeRdpError(f"{path}: JSON nested too deeply to be a result file") from None
    return _parse_object(obj, path)


def _parse_jsonl(text: str, path: Path) -> dict[str, Record] | None:
    """One object per line, each in a known format (None if a line is not JSON or in no known format)."""
    out: dict[str, Record] = {}
    for ln, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            return None
        except RecursionError:
            raise SaeRdpError(f"{path}: line {ln}: JSON nested too deeply to be a result") from None
        recs = _parse_object(obj, path, where=f"line {ln}: ")
        if recs is None:
            return None
        for key, rec in recs.items():
            if key in out:
                raise SaeRdpError(f"{path}: line {ln}: duplicate SAE {key}")
            out[key] = rec
    return out


def _parse_object(obj: Any, path: Path, where: str = "") -> dict[str, Record] | None:
    if not isinstance(obj, dict):
        return None
    if is_rdp_audit_output(obj):
        return {}
    if "eval_result_metrics" in obj:
        k, rec = _parse_eval_output(obj, path, where)
        return {k: rec}
    if "basic_eval_results" in obj:
        return _parse_sae_bench_data(obj, path)
    if "custom_eval_results" in obj:
        return _parse_old_sparse_probing(obj, path)
    if obj and all(isinstance(v, dict) and "eval_result_metrics" in v for v in obj.values()):
        out = {}
        for name, v in obj.items():
            if is_rdp_audit_output(v):
                continue
            k, rec = _parse_eval_output(v, path, where=f"{where}[{name!r}] ")
            out[k] = rec
        return out
    return None


def _expand(paths: str | Path | Sequence[str | Path]) -> list[tuple[Path, bool]]:
    """(file, found by searching a folder) for every input file."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[tuple[Path, bool]] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = (q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in (".json", ".jsonl", ".csv"))
            files += [(q, True) for q in sorted(found)]
        elif p.is_file():
            files.append((p, False))
        else:
            raise SaeRdpError(f"no such file or folder: {p}")
    return files


def check_checkpoint_mode(mode: str) -> str:
    """``mode`` itself if it is one of :data:`CHECKPOINT_MODES`; SaeRdpError otherwise."""
    if mode not in CHECKPOINT_MODES:
        raise SaeRdpError(f"unknown checkpoints mode {mode!r}; valid: {', '.join(CHECKPOINT_MODES)}")
    return mode


def filter_checkpoints(table: ResultsTable, mode: str) -> ResultsTable:
    """Rows by training-checkpoint status: "exclude" (final SAEs), "only" (checkpoints) or "all"."""
    if check_checkpoint_mode(mode) == "all":
        return table
    want = mode == "only"
    return table.subset([i for i, c in enumerate(table.meta["checkpoint"]) if bool(c) == want])


def read_results(
    paths: str | Path | Sequence[str | Path],
    *,
    strict: bool = False,
    include_checkpoints: bool = True,
    warn: bool = True,
    checkpoints: str | None = None,
) -> ResultsTable:
    """Read SAEBench result files/folders (any eval type, old formats, plain CSV) into one table.

    ``strict=True`` turns JSON files in no known format, and unreadable files in a folder, into errors
    (default: skipped and reported). ``checkpoints``: "exclude" (final SAEs), "only" (training
    checkpoints) or "all"; None = ``"all" if include_checkpoints else "exclude"``.
    """
    mode = check_checkpoint_mode(checkpoints or ("all" if include_checkpoints else "exclude"))
    files = _expand(paths)
    if not files:
        raise SaeRdpError(f"no .json, .jsonl or .csv files in {paths}")
    rows: dict[str, dict[str, Any]] = {}
    report: list[str] = []
    for f, in_folder in files:
        try:
            recs = parse_file(f)
        except SaeRdpError as e:
            if strict or not in_folder:
                raise
            msg = f"skipped {f}: {e}"
            report.append(msg)
            if warn:
                warnings.warn(msg, stacklevel=2)
            continue
        if recs is None:
            msg = f"skipped {f}: not a SAEBench result file in a known format" + (
                " (eval_type_id without eval_result_metrics: an older schema)" if _has_eval_type(f) else ""
            )
            if strict:
                raise SaeRdpError(msg)
            report.append(msg)
            if warn and f.suffix.lower() == ".jsonl":
                warnings.warn(msg, stacklevel=2)
            continue
        for key, (meta, metrics) in recs.items():
            row = rows.setdefault(key, {"meta": {}, "metrics": {}, "src": {}, "files": []})
            row["files"].append(str(f))
            for mk, mv in meta.items():
                if mv is not None and row["meta"].get(mk) is None:
                    row["meta"][mk] = mv
            for name, v in metrics.items():
                if name in row["metrics"] and not _same(row["metrics"][name], v):
                    raise SaeRdpError(
                        f"duplicate SAE {key}: {name} = {row['metrics'][name]!r} in {row['src'][name]} "
                        f"but {v!r} in {f}; read one of them"
                    )
                row["metrics"][name] = v
                row["src"][name] = str(f)
    keys = sorted(rows)
    if mode != "all":
        keys = [k for k in keys if bool(rows[k]["meta"].get("checkpoint")) == (mode == "only")]
    if not rows and report:
        more = f" (and {len(report) - 1} more file(s))" if len(report) > 1 else ""
        raise SaeRdpError(f"no SAE results read: {report[0]}{more}")
    if not keys:
        which = {"exclude": "final SAE", "only": "checkpoint", "all": "SAE"}[mode]
        raise SaeRdpError(f"no {which} results found in {', '.join(str(f) for f, _ in files[:3])}")
    names = sorted({n for k in keys for n in rows[k]["metrics"]})
    columns = {n: np.array([rows[k]["metrics"].get(n, np.nan) for k in keys], dtype=np.float64) for n in names}
    meta = {m: [rows[k]["meta"].get(m) for k in keys] for m in META_COLUMNS}
    for n in names:
        miss = [k for k, v in zip(keys, columns[n]) if not np.isfinite(v)]
        if miss:
            shown = ", ".join(miss[:5]) + (f", ... ({len(miss)} in all)" if len(miss) > 5 else "")
            report.append(f"metric {n} missing for {len(miss)} of {len(keys)} SAEs: {shown}")
    table = ResultsTable(keys, columns, meta, [rows[k]["files"] for k in keys], report)
    if warn and report:
        warnings.warn(f"{len(report)} reader note(s), first: {report[0]} (see table.report)", stacklevel=2)
    return table


def _has_eval_type(path: Path) -> bool:
    try:
        return "eval_type_id" in json.loads(path.read_text())
    except (Exception, RecursionError):
        return False


def _same(a: float, b: float) -> bool:
    return a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= 1e-9 * max(1.0, abs(a)))


# ----------------------------------------------------------------------------------------------
# The bundled real data
# ----------------------------------------------------------------------------------------------

BUNDLED_DIR = Path(__file__).parent / "data" / "saebench"
BUNDLED_CORE = "core_2024-09_final.csv"
BUNDLED_PROBING_RUNS = {
    "A": "sparse_probing_run_A.csv",
    "A2": "sparse_probing_run_A2.csv",
    "B": "sparse_probing_run_B.csv",
}


def bundled_path(name: str) -> Path:
    p = BUNDLED_DIR / name
    if not p.exists():
        raise SaeRdpError(f"bundled table {name} is missing from the installed package ({BUNDLED_DIR})")
    return p


def read_bundled(probing_run: str | None = "A", *, warn: bool = False) -> ResultsTable:
    """The shipped derived SAEBench tables (final SAEs; see ``data/saebench/PROVENANCE.md``): core
    metrics of the Gemma-2-2B and Pythia-70M sweeps (+ Gemma Scope), joined with one sparse-probing
    run (``"A"`` or ``"B"``; None = core only). Runs are separate evaluations of the same SAEs that
    disagree, so they are never mixed."""
    paths = [bundled_path(BUNDLED_CORE)]
    if probing_run is not None:
        if probing_run not in BUNDLED_PROBING_RUNS:
            raise SaeRdpError(f"unknown sparse-probing run {probing_run!r} (have {sorted(BUNDLED_PROBING_RUNS)})")
        paths.append(bundled_path(BUNDLED_PROBING_RUNS[probing_run]))
    return read_results(paths, warn=warn)

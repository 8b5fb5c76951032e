"""Which SAEs an eval module runs on, shared by the ``rdp_synthetic`` and ``rdp_proxies`` evals: the CLI's
selection (local SAELens folders, or SAEBench's release / id regexes) and the per-SAE iteration of
``run_eval`` (output file name, skip existing, SAEBench's loader for (release, sae_id) pairs)."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def add_selection_args(p: argparse.ArgumentParser, eval_name: str) -> None:
    """SAEBench's standard CLI arguments for choosing SAEs and where results go (``--sae_regex_pattern``,
    ``--sae_block_pattern``, ``--output_folder`` = ``eval_results/<eval_name>``, ``--force_rerun``) plus
    ``--sae_paths`` (local SAELens folders), read by :func:`select_saes`."""
    p.add_argument(
        "--sae_regex_pattern",
        type=str,
        default=".*",
        help="Regex on the SAE release (with --sae_paths: the folder name; PARENT__NAME where names repeat)",
    )
    p.add_argument("--sae_block_pattern", type=str, default=".*", help="Regex on the SAE id")
    p.add_argument("--output_folder", type=str, default=f"eval_results/{eval_name}", help="Output folder")
    p.add_argument("--force_rerun", action="store_true", help="Overwrite existing outputs")
    p.add_argument("--sae_paths", type=str, nargs="*", default=[], help="Local SAELens SAE folders")


def release_names(paths: list[str]) -> list[str]:
    """The release name of each local SAE folder in its output file name: the folder's name, or, when two
    folders share a name (``out/<hook>/<sae>/`` of a multi-hook run), its path below the folders' common
    parent with ``/`` written ``__``, so that no two SAEs write the same file."""
    ps = [Path(p).resolve() for p in paths]
    names = [p.name for p in ps]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([str(p.parent) for p in ps]))
    return ["__".join(p.relative_to(common).parts) for p in ps]


def select_saes(sae_paths: list[str], release_pattern: str, block_pattern: str, device: str) -> list[tuple[str, Any]]:
    """The CLI's SAEs: with ``sae_paths``, (release name, SAE loaded on ``device``) of each local folder whose
    release name matches ``release_pattern``; else SAEBench's (release, sae_id) pairs matching both regexes."""
    if sae_paths:
        from sae_lens import SAE

        return [
            (name, SAE.load_from_disk(p, device=device))
            for p, name in zip(sae_paths, release_names(sae_paths))
            if re.search(release_pattern, name)
        ]
    from sae_bench.sae_bench_utils.sae_selection_utils import get_saes_from_regex

    return list(get_saes_from_regex(release_pattern, block_pattern))


def pending_saes(
    selected: Sequence[tuple[str, Any]],
    output_path: str,
    load_device: str,
    force_rerun: bool,
    tag: str,
) -> Iterator[tuple[str, str, str, Any]]:
    """(output file, release, sae_id, SAE) of each selected (release, sae_id) or (name, SAE object) pair whose
    ``{output_path}/{release}_{sae_id}_eval_results.json`` does not exist yet (all with ``force_rerun``), as
    SAEBench's evals do: pairs load with SAEBench's loader on ``load_device``, objects get sae_id
    "custom_sae" (SAEBench's cfg standardisation of custom SAEs needs an LLM hook, so it is skipped)."""
    from sae_bench.sae_bench_utils.general_utils import get_results_filepath, load_and_format_sae

    for release, sae_obj in selected:
        path = get_results_filepath(output_path, release, "custom_sae" if not isinstance(sae_obj, str) else sae_obj)
        if os.path.exists(path) and not force_rerun:
            print(f"[{tag}] skipping {path} (exists; use force_rerun)")
            continue
        if isinstance(sae_obj, str):  # (release, sae_id): SAEBench's loader (SAELens pretrained directory)
            loaded = load_and_format_sae(release, sae_obj, load_device)
            assert loaded is not None
            sae_id, sae, _ = loaded
        else:
            sae_id, sae = "custom_sae", sae_obj
        yield path, release, sae_id, sae

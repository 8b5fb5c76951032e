#!/usr/bin/env python3
"""The fixed subset of sae-probes datasets for SAEBench's ``sparse_probing_sae_probes`` in table2.

sae-probes ships its data in its wheel: ``sae_probes/data/probing_datasets_MASTER.csv.zst`` lists every
dataset; the 113 rows whose ``Data type`` is ``Binary Classification`` are the tasks
``sparse_probing_sae_probes`` can run (``cleaned_data/<n>_<tag>.csv.zst``, columns ``prompt``, ``target``).
This script reads them from the installed package (without importing sae_probes, which imports xgboost),
records for every binary dataset its size, mean prompt length and share of the majority class, and writes
``probe_datasets.json`` next to this file with the subset ``SUBSET`` (24 datasets, fixed order).

Rule for the subset: the 16 datasets of ``experiments/gemma3_270m/probing.py`` (``PROBE_DATASETS``, chosen
there for short prompts and variety), then 8 more with short prompts (mean <= 200 characters) from
task families not yet covered: historical figures, news headlines (Trump), grammaticality (CoLA),
sentiment (SST-2, movie reviews), hate speech, ethics (virtue), time zones. Prompts are probed at their
last token, so short prompts keep the activation pass cheap.

    .venv/bin/python experiments/table2/probe_datasets.py          # rewrites probe_datasets.json
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUBSET: list[str] = [
    # experiments/gemma3_270m/probing.py PROBE_DATASETS, same order
    "22_headline_isobama",
    "117_us_state_FL",
    "96_spam_is",
    "154_athlete_sport_football",
    "105_click_bait",
    "148_twt_emotion_worry",
    "41_truthqa_tf",
    "59_wikidata_occupation_isjournalist",
    "133_context_type_Causality",
    "125_world_country_Italy",
    "95_toxic_is",
    "139_news_class_Politics",
    "129_arith_mc_A",
    "130_temp_cat_Frequency",
    "66_living-room",
    "114_nyc_borough_Manhattan",
    # added for table2
    "5_hist_fig_ismale",
    "21_headline_istrump",
    "87_glue_cola",
    "92_glue_sst2",
    "113_movie_sent",
    "106_hate_hate",
    "52_virtue_is",
    "120_us_timezone_Chicago",
]


def _read_zst_csv(path: Path) -> list[dict[str, str]]:
    import zstandard

    csv.field_size_limit(1 << 30)
    with open(path, "rb") as f:
        text = zstandard.ZstdDecompressor().stream_reader(f).read().decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def main() -> int:
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("sae_probes")
    if spec is None or not spec.submodule_search_locations:
        print("error: sae-probes is not installed (pip install 'sae-rdp[probes]')", file=sys.stderr)
        return 2
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    master = [r for r in _read_zst_csv(data / "probing_datasets_MASTER.csv.zst")]
    stats = []
    for r in master:
        if r["Data type"] != "Binary Classification":
            continue
        rel = r["Dataset save name"]
        rows = _read_zst_csv(data / (rel + ".zst"))
        counts: dict[str, int] = {}
        for x in rows:
            counts[x["target"]] = counts.get(x["target"], 0) + 1
        stats.append(
            {
                "dataset": rel.split("/")[-1].split(".")[0],
                "name": r["Dataset name"],
                "prompts": len(rows),
                "mean_prompt_chars": round(sum(len(x["prompt"]) for x in rows) / max(len(rows), 1), 1),
                "majority_share": round(max(counts.values()) / max(len(rows), 1), 3) if counts else None,
            }
        )
    names = {s["dataset"] for s in stats}
    missing = [d for d in SUBSET if d not in names]
    if missing:
        print(f"error: subset datasets not shipped by this sae-probes: {missing}", file=sys.stderr)
        return 2
    by = {s["dataset"]: s for s in stats}
    out = {
        "sae_probes_version": importlib.metadata.version("sae-probes"),
        "n_binary_datasets_shipped": len(stats),
        "subset": SUBSET,
        "subset_stats": [by[d] for d in SUBSET],
        "all_binary_datasets": stats,
    }
    (HERE / "probe_datasets.json").write_text(json.dumps(out, indent=1) + "\n")
    tot = sum(by[d]["prompts"] for d in SUBSET)
    print(f"{len(stats)} binary datasets shipped; subset of {len(SUBSET)} ({tot:,} prompts) -> probe_datasets.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

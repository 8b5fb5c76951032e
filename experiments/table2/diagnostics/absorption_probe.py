"""Is SAEBench's absorption eval evaluable at a model-layer? Its first-letter probe, on CPU, on a vocabulary sample.

SAEBench's ``absorption_first_letter`` eval writes no result for any SAE unless at least ``min_feats_for_eval``
(20) of the 26 letters have a ground-truth probe with F1 > ``min_GT_probe_f1`` (0.6) at the layer; which letters
pass depends on the model and layer only, not on the SAE. This script trains that probe with SAEBench's own code
(``common.create_and_train_probe`` with the arguments ``train_and_save_probes`` passes: prompts
``"{word} has the first letter:"`` with in-context examples, the residual at position -6, a 26-way linear probe,
batch 64, 50 epochs, lr 1e-2), inside ``absorption_stage.offline_absorption`` (the model passed in, activations
batched and stopped after the layer's block, left padding), and scores it as SAEBench's k-sparse-probing step
does: per letter, F1 of ``probe logit > 0`` on the test words.

The one difference from the eval: the vocabulary is a seeded random sample of ``--words`` of the model's
alphabetic tokens (listed in token-id order, as the eval's ``offline_absorption`` lists them; Gemma-3 has ~140k;
SAEBench uses all, 80% train / 20% test), because the model's forward runs on the CPU here (~650 tokens/s for
Gemma-3-270M cut after block 10 on 2 cores, prompts of ~88 tokens).
Fewer training words are expected to make the probe worse, so a letter that passes here should pass with the
whole vocabulary unless the smaller test set's noise put it there: the JSON gives each letter's test count.

Usage (from the repository root, ~20 minutes for 7,500 words):
    .venv/bin/python experiments/table2/diagnostics/absorption_probe.py --model gemma3-270m --layer 9 \
        --words 7500 --out experiments/table2/diagnostics/absorption_probe_gemma3-270m-L9.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # absorption_stage, probing_stage, run_stage

from run_stage import fail  # noqa: E402  (one line "error: ...", exit 2)

from sae_rdp_plugin.cli import OneLineArgumentParser  # noqa: E402
from sae_rdp_plugin.io import atomic_write_json  # noqa: E402

MODELS = ("gemma3-270m", "smollm2-135m")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--layer", type=int, required=True, help="blocks.LAYER.hook_resid_post")
    p.add_argument("--words", type=int, default=7500, help="vocabulary sample size (train + test words)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch", type=int, default=64, help="prompts per forward pass (activations only)")
    p.add_argument("--out", type=Path, required=True, help="JSON to write (not overwritten)")
    a = p.parse_args(argv)
    if a.words < 100:
        fail(f"--words must be at least 100 (got {a.words})")
    if a.layer < 0 or a.threads < 1 or a.batch < 1:
        fail("--layer must be >= 0, --threads and --batch >= 1")
    if a.out.exists():
        fail(f"{a.out} exists; not overwritten")
    if not a.out.parent.is_dir():
        fail(f"folder of --out does not exist: {a.out.parent}")
    return a


def letter_scores(logits, y, y_train) -> list[dict]:
    """SAEBench's ``build_metrics_df`` probe columns: per letter, F1 / precision / recall of ``logit > 0``."""
    from sae_bench.evals.absorption.vocab import LETTERS
    from sklearn import metrics

    out = []
    for i, letter in enumerate(LETTERS):
        yi, pred = (y == i), logits[:, i] > 0.0
        out.append(
            {
                "letter": letter,
                "n_train": int((y_train == i).sum()),
                "n_test": int(yi.sum()),
                "f1": float(metrics.f1_score(yi, pred, zero_division=0.0)),
                "precision": float(metrics.precision_score(yi, pred, zero_division=0.0)),
                "recall": float(metrics.recall_score(yi, pred, zero_division=0.0)),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    import numpy as np
    import torch
    from absorption_stage import IdOrderedVocab, offline_absorption, probe_folder
    from sae_bench.evals.absorption import common
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
    from sae_bench.evals.absorption.prompting import first_letter_formatter
    from sae_bench.evals.absorption.vocab import get_alpha_tokens

    from sae_rdp_plugin.lm.models import load_model

    torch.set_num_threads(a.threads)
    cfg = AbsorptionEvalConfig(model_name=a.model)
    t0 = time.time()
    model = load_model(a.model, n_layers=a.layer + 1)
    load_s = time.time() - t0
    # in token-id order: a fast tokenizer lists its vocab in an order that changes from call to call, which made
    # the seeded sample of the committed JSONs (made before this) irreproducible; reruns now draw the same sample
    vocab = get_alpha_tokens(IdOrderedVocab(model.tokenizer))
    if a.words > len(vocab):
        fail(f"--words {a.words} exceeds the model's {len(vocab)} alphabetic tokens")
    random.seed(a.seed)
    torch.manual_seed(a.seed)
    sample = random.sample(vocab, a.words)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t1 = time.time()
        with offline_absorption(model, a.model, work, probe_batch=a.batch):
            common.create_and_train_probe(
                model=model,
                formatter=first_letter_formatter(),
                hook_point=f"blocks.{a.layer}.hook_resid_post",
                probes_dir=work / "results" / "probes",
                vocab=sample,
                batch_size=64,
                num_epochs=50,
                lr=1e-2,
                device=torch.device("cpu"),
                base_template=cfg.prompt_template,
                pos_idx=cfg.prompt_token_pos,
            )
        probe_s = time.time() - t1
        folder = probe_folder(work, model, a.layer)
        probe = torch.load(folder / "probe.pth", weights_only=False)
        data = np.load(folder / "data.npz")
        with torch.no_grad():
            logits = probe(torch.from_numpy(data["X_test"]).float()).numpy()
        y_test, y_train = data["y_test"], data["y_train"]
    n_train = int(len(y_train))
    if not np.isfinite(logits).all():
        # SAEBench weighs each letter by negatives / positives: a letter without training words makes it inf
        missing = sorted(set(range(26)) - set(np.unique(y_train).tolist()))
        fail(f"the probe is not finite (letters without training words: {missing}); raise --words")
    letters = letter_scores(logits, y_test, y_train)
    n_pass = sum(r["f1"] > cfg.min_GT_probe_f1 for r in letters)
    result = {
        "what": "SAEBench absorption_first_letter ground-truth probe at one layer, on a vocabulary sample (CPU)",
        "model": a.model,
        "hook": f"blocks.{a.layer}.hook_resid_post",
        "alpha_vocab": len(vocab),
        "words": a.words,
        "seed": a.seed,
        "n_train": n_train,
        "n_test": int(len(y_test)),
        "min_GT_probe_f1": cfg.min_GT_probe_f1,
        "min_feats_for_eval": cfg.min_feats_for_eval,
        "letters_passing": n_pass,
        "evaluable_on_this_sample": n_pass >= cfg.min_feats_for_eval,
        "letters": letters,
        "seconds": {"model_load": round(load_s, 1), "probe": round(probe_s, 1)},
        "machine": f"{platform.machine()}, {a.threads} CPU threads, torch {torch.__version__}",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    atomic_write_json(a.out, result, indent=1)
    print(
        f"{a.model} {result['hook']}: {n_pass}/26 letters with probe F1 > {cfg.min_GT_probe_f1} "
        f"({n_train} train / {len(y_test)} test words); SAEBench needs {cfg.min_feats_for_eval}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

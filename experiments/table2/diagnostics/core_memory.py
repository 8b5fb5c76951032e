"""Peak memory of SAEBench's core eval per token, on the CPU: why one core eval fills an 80 GB GPU.

On the device the T stages' core eval (``run_stage.core_eval``: SAEBench's ``run_evals`` with the stage's config,
CE loss and KL included) peaked at 70.4-72.0 GiB of GPU memory above the model (batches of 8 prompts of the
corpus's 1,024 tokens, Gemma-3-270M, H100, 2026-12-06), so ``core_workers`` could start no second eval beside it.
This script runs the same ``core_eval`` on the CPU on a random TopK SAE for ``--prompts`` prompts of
``--context`` held-out tokens each (one batch), each size in a fresh process, and records the growth of the
process's peak resident memory (sampled every 5 ms) per token, and that over the bytes of one float32 row of the
model's vocabulary (how many logit-sized tensors per token the eval holds at its peak: the CE loss and KL over
Gemma-3's 262,144-token vocabulary).

    .venv/bin/python experiments/table2/diagnostics/core_memory.py --corpus .carry/corpus_table2_gemma3 \\
        --prompts 1 4 --context 128 --out experiments/table2/diagnostics/core_memory_gemma3-270m.json
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from sae_rdp_plugin.cli import OneLineArgumentParser  # noqa: E402
from sae_rdp_plugin.io import atomic_write_json  # noqa: E402

MODELS = {"gemma3-270m": "T-gemma3-270m-9-topk", "smollm2-135m": "T-smollm2-135m-15-topk"}

CHILD = r"""
import argparse, json, sys, threading, time
from pathlib import Path
here, root, model, stage, corpus, prompts, context = sys.argv[1:8]
sys.path[:0] = [here, root]
import torch
import run_stage as rs
from sae_lens import TopKSAE, TopKSAEConfig
plan = json.loads((Path(here) / "plan.json").read_text())
ps = next(s for s in plan["saes"] if s["stage"] == stage and not s.get("checkpoint_of_final"))
args = argparse.Namespace(model_path=None, n_layers=None, random_init=False, device="cpu", eval_batches=1,
                          eval_batch_prompts=int(prompts), corpus=Path(corpus), keep_feature_details=False)
_, hooked, tok = rs.load_models(model, args)
_, held, bos, _ = rs.load_corpus(Path(corpus))
held = held[: int(prompts), : int(context)]
torch.manual_seed(0)
sae = TopKSAE(TopKSAEConfig(d_in=hooked.cfg.d_model, d_sae=ps["width"], k=ps.get("k") or 32))
def rss():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) * 1024
peak, stop = [0], [False]
def sample():
    while not stop[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)
base = rss()
th = threading.Thread(target=sample, daemon=True)
th.start()
t = time.time()
rs.core_eval(sae, hooked, held, {x for x in (bos, tok.pad_token_id) if x is not None}, ps, None, args)
s = time.time() - t
stop[0] = True
th.join()
print(json.dumps({"prompts": int(prompts), "context": int(context), "tokens": int(held.size),
                  "peak_growth_bytes": peak[0] - base, "seconds": s, "vocab": int(hooked.cfg.d_vocab),
                  "grad_enabled": torch.is_grad_enabled()}))
"""


def corpus_meta(path: Path) -> dict | None:
    """The corpus folder's tokenizer (the model it was built for), held-out rows and row length, or None."""
    try:
        if (path / "shards.json").is_file():
            d = json.loads((path / "shards.json").read_text())
            tok = (d.get("meta") or {}).get("tokenizer")
            return {"tokenizer": tok, "heldout_rows": d["rows"]["heldout"], "context_size": d["context_size"]}
        if (path / "tokens.npz").is_file():
            m = json.loads((path / "manifest.json").read_text())
            return {
                "tokenizer": m.get("tokenizer"),
                "heldout_rows": m["heldout_rows"],
                "context_size": m["context_size"],
            }
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    ap = OneLineArgumentParser(prog="core_memory.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="gemma3-270m")
    ap.add_argument("--corpus", type=Path, required=True, help="the model's corpus folder (prepare.sh builds it)")
    ap.add_argument("--prompts", type=int, nargs="+", default=[1, 4], help="prompts per batch, one run each")
    ap.add_argument("--context", type=int, default=128, help="tokens per prompt (the corpus rows cut)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    bad = None
    meta = corpus_meta(args.corpus)
    if min(args.prompts) < 1 or args.context < 2:
        bad = "--prompts must be >= 1 and --context >= 2"
    elif meta is None:
        bad = f"--corpus {args.corpus}: no corpus there (shards.json, or tokens.npz with its manifest.json)"
    elif meta["tokenizer"] != args.model:
        bad = f"--corpus {args.corpus} was tokenized for {meta['tokenizer']!r}, not --model {args.model}"
    elif max(args.prompts) > meta["heldout_rows"] or args.context > meta["context_size"]:
        bad = (
            f"--prompts {max(args.prompts)} x --context {args.context}: the corpus holds {meta['heldout_rows']} "
            f"held-out rows of {meta['context_size']} tokens"
        )
    elif args.out.is_dir() or not args.out.parent.is_dir():
        bad = f"--out {args.out}: not a file in an existing folder"
    if bad is not None:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    runs = []
    for p in args.prompts:
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(HERE.parent), str(ROOT), args.model, MODELS[args.model],
             str(args.corpus), str(p), str(args.context)],
            capture_output=True, text=True,
        )  # fmt: skip
        if child.returncode != 0:  # nothing written; the child's last line says why
            why = (child.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"error: the measurement at --prompts {p} failed: {why}", file=sys.stderr)
            return 1
        runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
    per_token = [r["peak_growth_bytes"] / r["tokens"] for r in runs]
    rec = {
        "what": __doc__.split("\n\n")[0],
        "function": "experiments/table2/run_stage.core_eval (SAEBench core run_evals)",
        "model": args.model,
        "runs": runs,
        "bytes_per_token": per_token,
        "logit_rows_per_token": [b / (4 * runs[0]["vocab"]) for b in per_token],
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "date": dt.date.today().isoformat(),
    }
    atomic_write_json(args.out, rec, indent=1)
    print(json.dumps({"bytes_per_token": per_token, "logit_rows_per_token": rec["logit_rows_per_token"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

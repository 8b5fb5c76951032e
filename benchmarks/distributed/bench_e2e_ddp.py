"""End-to-end SAE training on a language-model layer over 1, 2, 4 (8) GPUs: weak scaling of
``sae-rdp train --model`` under torchrun (sae_rdp_plugin.train.lm.train_on_model with a DistContext).

Each point launches ``torchrun --standalone --nproc_per_node N -m sae_rdp_plugin train --model ...`` with a
fixed number of rows per GPU per step (the global batch is N x ``--rows-per-gpu``) and N x ``--tokens-per-gpu``
training tokens, reads the run's ``train_summary.json`` and reports tokens/s (the training loop's, all
ranks together), the scaling efficiency against one process

    efficiency(N) = tokens_per_s(N) / (N * tokens_per_s(1)),

and the held-out FVU (rank 0, the same held-out rows at every N). Over several ranks the fast step runs
with its PyTorch kernels and a gradient all-reduce (the Triton step forms no gradient to reduce), so N = 1
runs the same kernels (SAE_RDP_FAST_KERNELS=torch) to isolate the scaling, and a row ``gpus: 1,
kernels: triton`` gives the one-GPU default for reference.

Token rows are random ids (BOS first) unless ``--corpus DIR`` gives a corpus folder (tokens.npz). Writes
OUT/bench_e2e_ddp.json and prints a table last. NVLink multicast stays off (NCCL_NVLS_ENABLE=0 etc.).

    python benchmarks/distributed/bench_e2e_ddp.py --gpus 1 2 4 --out $OUT          # GPU machine
    python benchmarks/distributed/bench_e2e_ddp.py --quick --out /tmp/ddp           # CPU, gloo, 1 and 2
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sae_rdp_plugin.io import atomic_write_json

NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def random_corpus(folder: Path, rows: int, context: int, vocab: int, bos: int, seed: int = 0) -> Path:
    """A corpus folder (tokens.npz train/heldout + manifest.json) of random ids with BOS at each row start."""
    rng = np.random.default_rng(seed)
    t = rng.integers(4, vocab, size=(rows, context)).astype(np.int32)
    t[:, 0] = bos
    n_held = max(2, rows // 50)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "tokens.npz", train=t[n_held:], heldout=t[:n_held])
    manifest = {"format": "sae-rdp corpus v2", "bos_token_id": bos, "context_size": context}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def run_point(n: int, a: argparse.Namespace, corpus: Path, work: Path, kernels: str = "torch") -> dict:
    out = work / f"n{n}_{kernels}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]
    cmd += ["-m", "sae_rdp_plugin", "train", "--model", a.model, "--random-init", "--dataset", str(corpus)]
    cmd += ["--out", str(out), "--hook", a.hook, "--architecture", "topk", "--d-sae", str(a.d_sae), "--k", str(a.k)]
    cmd += ["--tokens", str(n * a.tokens_per_gpu), "--batch-size", str(n * a.rows_per_gpu), "--device", a.device]
    cmd += ["--n-layers", str(a.n_layers)] if a.n_layers else []
    cmd += a.extra
    env = {**os.environ, **NCCL_ENV, "TQDM_DISABLE": "1", "WANDB_MODE": "disabled"}
    env["SAE_RDP_FAST_KERNELS"] = kernels  # "torch": the kernels every N > 1 runs; "auto": Triton on one GPU
    if a.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        named = [ln for ln in lines if ln.startswith("error:")]  # a rank's one-line error, not torchrun's summary
        err = (named or lines or ["failed"])[-1][:300]
        return {"gpus": n, "kernels": kernels, "error": err}
    s = json.loads((out / "train_summary.json").read_text())
    return {
        "gpus": n,
        "kernels": kernels,
        "fast_step": s["fast_step"],
        "tokens": s["tokens"],
        "global_batch": n * a.rows_per_gpu,
        "tokens_per_s": s["tokens_per_s"],
        "heldout_fvu": s["heldout_fvu"],
        "forward_s": s["forward_s"],
        "sae_steps_s": s["sae_steps_s"],
        "wall_s": round(wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--out", default=os.environ.get("OUT", "out/e2e_ddp"))
    ap.add_argument("--quick", action="store_true", help="tiny model on CPU (gloo), 1 and 2 processes")
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--n-layers", type=int, default=7, help="blocks kept (the hook's block + 1)")
    ap.add_argument("--hook", default="blocks.6.hook_resid_post")
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--rows-per-gpu", type=int, default=4096)
    ap.add_argument("--tokens-per-gpu", type=int, default=20_000_000)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--timeout", type=int, default=540)
    a = ap.parse_args(argv)
    a.extra = []
    if a.quick:
        a.gpus, a.model, a.n_layers, a.hook, a.device = [1, 2], "tiny-gemma3", 0, "blocks.1.hook_resid_post", "cpu"
        a.d_sae, a.k, a.rows_per_gpu, a.tokens_per_gpu, a.context = 64, 4, 32, 1024, 33
        a.extra = ["--buffer-tokens", "256", "--model-dtype", "float32"]
    out = Path(a.out)
    work = out / "work"
    vocab = 512 if a.quick else 262_144
    n_rows = max(a.gpus) * a.tokens_per_gpu // (a.context - 1) + 64
    corpus = random_corpus(work / "corpus", n_rows, a.context, vocab, bos=2)
    rows = []
    for n in a.gpus:
        rows.append(run_point(n, a, corpus, work))
        print(json.dumps(rows[-1]), flush=True)
    if a.device.startswith("cuda"):
        rows.append(run_point(1, a, corpus, work, kernels="auto"))  # the one-GPU default (Triton step)
        print(json.dumps(rows[-1]), flush=True)
    one = next((r for r in rows if r["gpus"] == 1 and r["kernels"] == "torch" and "error" not in r), None)
    for r in rows:
        if one and "error" not in r and r["kernels"] == "torch":
            r["efficiency"] = r["tokens_per_s"] / (r["gpus"] * one["tokens_per_s"])
    res = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {k: v for k, v in vars(a).items() if k != "extra"},
        "rows": rows,
    }
    atomic_write_json(out / "bench_e2e_ddp.json", res)
    print("gpus  kernels  tokens/s     efficiency  held-out FVU  error")
    for r in rows:
        eff = f"{r['efficiency']:.3f}" if "efficiency" in r else "-"
        fvu = f"{r['heldout_fvu']:.4f}" if r.get("heldout_fvu") is not None else "-"
        tps = r.get("tokens_per_s", 0)
        print(f"{r['gpus']:4d}  {r['kernels']:7}  {tps:11,.0f}  {eff:>10}  {fvu:>12}  {r.get('error', '')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

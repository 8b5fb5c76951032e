"""End-to-end check of the fast step on a real language model (GPU): train the same weighted TopK SAE on
SmolLM2-135M activations three times through the documented command `sae-rdp train`, once per training
step implementation, then evaluate the saved SAEs with stock SAELens on held-out text.

    variants: triton  (default on CUDA: fast step with the Triton kernels, CUDA graph off)
              triton_graph (the same with CUDA-graph replay: SAE_RDP_FAST_CUDA_GRAPH=1)
              torch   (fast step, PyTorch kernels: SAE_RDP_FAST_KERNELS=torch)
              saelens (SAELens's own step: --no-fast)

Each run: `python -m sae_rdp_plugin train --model smollm2-135m --gguf GGUF --n-layers N --hook HOOK
--dataset CORPUS/train_dataset --architecture weighted_topk ... --device cuda` (wall time measured around
the command: model load, gamma pass and training). Evaluation (one process, after all runs): the model's
activations at HOOK on held-out rows (BOS positions dropped), each SAE loaded with
``sae_lens.SAE.load_from_disk`` (stock loader, no plugin import), FVU = sum ||x - x_hat||^2 /
sum ||x - mean x||^2, MSE, L0, and the fraction of latents never active on the held-out tokens.

Inputs (carried): the truncated GGUF (``sae-rdp models truncate``), the tokenizer folder
(``SAE_RDP_TOKENIZER_DIR``) and a corpus from ``sae-rdp corpus build --model smollm2-135m``.
Only ``tokens.npz`` of the corpus is needed: the ``train`` split is written as a datasets folder under
``--work``, where the SAEs are saved too (75 MB each at 576 x 16384: they stay on the device).
Writes ``OUT/smollm2_fast_train.json`` (atomically) and the run logs, and prints a table.

    python benchmarks/training_speed/gpu_smollm2_fast_train.py --gguf GGUF --corpus CORPUS --out $OUT
        [--tokens N] [--variants triton triton_graph torch saelens]
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

VARIANTS = {
    "triton": ({"SAE_RDP_FAST_KERNELS": "auto", "SAE_RDP_FAST_CUDA_GRAPH": "0"}, []),
    "triton_graph": ({"SAE_RDP_FAST_KERNELS": "auto", "SAE_RDP_FAST_CUDA_GRAPH": "1"}, []),
    "torch": ({"SAE_RDP_FAST_KERNELS": "torch"}, []),
    "saelens": ({}, ["--no-fast"]),
}


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def train(args: argparse.Namespace, name: str, out: Path) -> dict:
    env_extra, flags = VARIANTS[name]
    cmd = [
        sys.executable,
        "-m",
        "sae_rdp_plugin",
        "train",
        "--model",
        "smollm2-135m",
        "--gguf",
        args.gguf,
        "--n-layers",
        str(args.n_layers),
        "--hook",
        args.hook,
        "--dataset",
        str(Path(args.work) / "train_dataset"),
        "--architecture",
        "weighted_topk",
        "--d-sae",
        str(args.d_sae),
        "--k",
        str(args.k),
        "--alpha",
        str(args.alpha),
        "--tokens",
        str(args.tokens),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--context-size",
        "128",
        "--device",
        args.device,
        "--seed",
        "0",
        "--out",
        str(Path(args.work) / name),
        *flags,
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env={**os.environ, **env_extra}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / f"{name}.log").write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
    res = {"command": " ".join(cmd), "env": env_extra, "returncode": r.returncode, "wall_s": wall}
    if r.returncode != 0:
        res["error"] = (r.stderr.strip().splitlines() or ["?"])[-1][:300]
    return res


def evaluate(args: argparse.Namespace, out: Path, names: list[str]) -> dict:
    import numpy as np
    import torch
    from sae_lens import SAE

    from sae_rdp_plugin.lm.models import load_model

    model = load_model("smollm2-135m", path=args.gguf, device=args.device, n_layers=args.n_layers)
    with np.load(Path(args.corpus) / "tokens.npz") as z:
        held = torch.from_numpy(z["heldout"].astype(np.int64))
    held = held[: max(1, args.eval_tokens // held.shape[1])]
    acts = []
    with torch.no_grad():
        for i in range(0, len(held), 32):
            _, cache = model.run_with_cache(
                held[i : i + 32].to(args.device), names_filter=args.hook, stop_at_layer=args.n_layers
            )
            acts.append(cache[args.hook][:, 1:].reshape(-1, model.cfg.d_model).float())
    x = torch.cat(acts)
    var = (x - x.mean(0)).square().sum()
    res = {"eval_tokens": int(x.shape[0])}
    for name in names:
        sae = SAE.load_from_disk(str(Path(args.work) / name), device=args.device)
        with torch.no_grad():
            fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=args.device)
            se, l0 = 0.0, 0.0
            for xb in x.split(8192):
                f = sae.encode(xb)
                se += float((sae.decode(f) - xb).square().sum())
                l0 += float((f != 0).sum())
                fired |= (f != 0).any(0)
        res[name] = {
            "loaded_with": f"sae_lens.SAE.load_from_disk -> {type(sae).__name__} ({sae.cfg.architecture()})",
            "fvu": se / float(var),
            "mse": se / x.numel(),
            "l0": l0 / x.shape[0],
            "dead_on_heldout": float((~fired).float().mean()),
        }
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--n-layers", type=int, default=3)
    ap.add_argument("--hook", default="blocks.2.hook_resid_post")
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--tokens", type=int, default=10_000_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--eval-tokens", type=int, default=200_000)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--out", default=os.environ.get("OUT", "smollm2_out"))
    ap.add_argument("--work", default="/tmp/smollm2_work", help="datasets folder and saved SAEs")
    args = ap.parse_args(argv)
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"error: unknown variant {bad[0]!r} (choose from {', '.join(VARIANTS)})")
    for p in (args.gguf, Path(args.corpus) / "tokens.npz"):
        if not Path(p).exists():
            raise SystemExit(f"error: {p} not found")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    res = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "runs": {},
    }
    work = Path(args.work)
    if not (work / "train_dataset").is_dir():
        from sae_rdp_plugin.lm.corpus import load_corpus

        load_corpus(args.corpus)["train"].save_to_disk(str(work / "train_dataset"))
    for name in args.variants:
        res["runs"][name] = train(args, name, out)
        print(name, json.dumps(res["runs"][name]), flush=True)
        _write_json(out / "smollm2_fast_train.json", res)
    ok = [n for n in args.variants if res["runs"][n]["returncode"] == 0]
    res["eval"] = evaluate(args, out, ok) if ok else {}
    _write_json(out / "smollm2_fast_train.json", res)
    print(f"\n{'variant':<8} {'wall s':>7} {'tok/s(wall)':>11} {'FVU':>7} {'L0':>6} {'dead':>6}")
    for n in args.variants:
        r, e = res["runs"][n], res["eval"].get(n, {})
        if r["returncode"]:
            print(f"{n:<8} FAILED: {r.get('error')}")
            continue
        print(
            f"{n:<8} {r['wall_s']:7.1f} {args.tokens / r['wall_s']:11.0f} {e['fvu']:7.4f} {e['l0']:6.1f} "
            f"{e['dead_on_heldout']:6.3f}"
        )
    return 0 if len(ok) == len(args.variants) else 1


if __name__ == "__main__":
    raise SystemExit(main())

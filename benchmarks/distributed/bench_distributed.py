#!/usr/bin/env python
"""Multi-GPU scaling of sae_rdp_plugin.train.distributed, and the single- vs multi-process result check.

For each process count N (default: 1, 2, 4, 8 up to the visible GPU count) it launches
``torchrun --standalone --nproc_per_node N -m sae_rdp_plugin distributed ...`` and records:

* ``train``: one SAE, weak scaling (fixed rows per GPU, global batch = N x per-GPU batch):
  steady-state samples (tokens) / s after warm-up steps, and the efficiency
  ``throughput(N) / (N * throughput(1))``.
* ``sweep``: a sae_rdp_plugin.sweep grid split into equal groups (``max_group_size``): members / s
  (members / wall time of the slowest rank) and its efficiency.
* ``check``: the same SAE with the same *global* batch on 1 and on max(N) processes: max |dtheta|
  over all parameters after the run (DDP all-reduce vs one process: only the summation order differs);
  and the sweep's per-member metrics on 1 vs max(N) processes (should be identical).

Writes ``<out>/bench_distributed.json`` (machine, torch version, date, every run). ``--quick`` is a
tiny CPU/gloo configuration (1 and 2 processes) for checking the script itself.

    python benchmarks/distributed/bench_distributed.py --device cuda --out $OUT   # on a multi-GPU machine
    python benchmarks/distributed/bench_distributed.py --quick --device cpu --out /tmp/bd
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from sae_rdp_plugin.architectures import get_architecture
from sae_rdp_plugin.io import atomic_write_json


def torchrun(n: int, args: list[str], timeout: float, env_extra: dict[str, str]) -> tuple[int, str, float]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(n),
        "-m",
        "sae_rdp_plugin",
        "distributed",
        *args,
    ]
    env = {**os.environ, "TQDM_DISABLE": "1", **env_extra}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return 124, f"timeout after {timeout} s", time.perf_counter() - t0
    return p.returncode, (p.stdout + p.stderr)[-3000:], time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (NCCL) or cpu (gloo)")
    ap.add_argument("--nprocs", default=None, help="comma-separated process counts (default 1,2,4,8 <= GPUs)")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_distributed_out"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a CPU check of the script")
    ap.add_argument("--architecture", default="topk")
    ap.add_argument("--d-in", type=int, default=2304)
    ap.add_argument("--d-sae", type=int, default=65536)
    ap.add_argument("--k", type=float, default=64)
    ap.add_argument("--per-gpu-batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--sweep-groups", type=int, default=16, help="sweep groups (split evenly over ranks)")
    ap.add_argument("--timeout-s", type=float, default=900)
    a = ap.parse_args()

    cuda = a.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device", file=sys.stderr)
        return 2
    n_gpu = torch.cuda.device_count() if cuda else 2
    if a.quick:
        a.d_in, a.d_sae, a.k, a.per_gpu_batch, a.steps, a.warmup_steps, a.sweep_groups = 16, 64, 4, 64, 8, 2, 4
    counts = [int(x) for x in a.nprocs.split(",")] if a.nprocs else [n for n in (1, 2, 4, 8) if n <= max(n_gpu, 1)]
    if a.quick and not a.nprocs:
        counts = [1, 2]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = "cuda" if cuda else "cpu"
    env_extra = {} if cuda else {"OMP_NUM_THREADS": "1"}
    n_features = 4 * a.d_in
    common = [
        "--architecture",
        a.architecture,
        "--d-in",
        str(a.d_in),
        "--d-sae",
        str(a.d_sae),
        *(["--k", str(a.k)] if get_architecture(a.architecture).uses_k else []),  # (refused where it has no k)
        "--n-features",
        str(n_features),
        "--device",
        dev,
        "--no-resume",
    ]
    report: dict = {
        "script": "benchmarks/distributed/bench_distributed.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "visible_gpus": n_gpu if cuda else 0,
        "backend": "nccl" if cuda else "gloo",
        "quick": a.quick,
        "env": {k: os.environ.get(k) for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST")},
        "train": [],
        "sweep": [],
        "check": {},
    }

    def save() -> None:
        atomic_write_json(out / "bench_distributed.json", report)

    # -- one SAE, weak scaling ----------------------------------------------------------------------
    for n in counts:
        d = out / f"train_n{n}"
        shutil.rmtree(d, ignore_errors=True)
        args = [
            "train",
            "--out",
            str(d),
            *common,
            "--batch",
            str(a.per_gpu_batch * n),
            "--steps",
            str(a.steps),
            "--warmup-steps",
            str(a.warmup_steps),
            "--n-chunks",
            str(max(counts)),
        ]
        rc, log, wall = torchrun(n, args, a.timeout_s, env_extra)
        row = {"nprocs": n, "rc": rc, "launch_wall_s": wall, "global_batch": a.per_gpu_batch * n}
        if rc == 0:
            m = json.loads((d / "train_metrics.json").read_text())
            row.update({k: m[k] for k in ("samples_per_s", "steady_samples_per_s", "wall_s", "n_training_steps")})
        else:
            row["log_tail"] = log
        report["train"].append(row)
        print(json.dumps(row)[:400], flush=True)
        save()
    base = next((r for r in report["train"] if r["nprocs"] == 1 and r.get("steady_samples_per_s")), None)
    for r in report["train"]:
        if base and r.get("steady_samples_per_s"):
            r["speedup"] = r["steady_samples_per_s"] / base["steady_samples_per_s"]
            r["efficiency"] = r["speedup"] / r["nprocs"]

    # -- single vs multi: same global batch ------------------------------------------------------------
    nmax = max(counts)
    if nmax > 1:
        gb = a.per_gpu_batch * nmax
        states = {}
        for n in (1, nmax):
            d = out / f"check_n{n}"
            shutil.rmtree(d, ignore_errors=True)
            steps = min(a.steps, 20)
            args = [
                "train",
                "--out",
                str(d),
                *common,
                "--batch",
                str(gb),
                "--steps",
                str(steps),
                "--n-chunks",
                str(nmax),
                "--dead-feature-window",
                "5",
            ]
            rc, log, _ = torchrun(n, args, a.timeout_s, env_extra)
            if rc != 0:
                report["check"][f"train_n{n}_error"] = log
                break
            states[n] = torch.load(d / "training_state.pt")
        if len(states) == 2:
            diffs = {k: (states[1][k].double() - states[nmax][k].double()).abs().max().item() for k in states[1]}
            scale = {k: states[1][k].double().abs().max().item() for k in states[1]}
            report["check"]["train"] = {
                "nprocs": [1, nmax],
                "global_batch": gb,
                "steps": min(a.steps, 20),
                "max_abs_diff": diffs,
                "max_abs_param": scale,
                "max_abs_diff_overall": max(diffs.values()),
            }
        save()

    # -- sweep: members / s --------------------------------------------------------------------------
    w = 8 if a.quick else 64
    d = 16 if a.quick else 256
    sweep_cfg = {
        "dgps": [{"name": "p", "kind": "pairs", "m": 8 if a.quick else 64, "d": d, "rho": 0.5, "q": 0.05}],
        "architectures": ["topk"],
        "widths": [w],
        "ks": [2, 4],
        "seeds": list(range(2 * a.sweep_groups)),
        "max_group_size": 4,
        "steps": 10 if a.quick else 300,
        "batch_size": 64 if a.quick else 4096,
        "eval_samples": 500 if a.quick else 20000,
        "checkpoint_every": 1000000,
    }
    (out / "sweep_config.json").write_text(json.dumps(sweep_cfg, indent=1))
    n_members = 2 * len(sweep_cfg["seeds"])
    results = {}
    for n in counts:
        sd = out / f"sweep_n{n}"
        shutil.rmtree(sd, ignore_errors=True)
        rc, log, wall = torchrun(
            n,
            ["sweep", "--config", str(out / "sweep_config.json"), "--out", str(sd), "--device", dev, "--quiet"],
            a.timeout_s,
            env_extra,
        )
        row = {"nprocs": n, "rc": rc, "launch_wall_s": wall, "members": n_members}
        if rc == 0:
            r = json.loads((sd / "results.json").read_text())
            results[n] = r["members"]
            row.update(
                {
                    "seconds": r["seconds"],
                    "members_per_s": n_members / r["seconds"],
                    "rank_seconds": r.get("rank_seconds"),
                }
            )
        else:
            row["log_tail"] = log
        report["sweep"].append(row)
        print(json.dumps(row)[:400], flush=True)
        save()
    sbase = next((r for r in report["sweep"] if r["nprocs"] == 1 and r.get("members_per_s")), None)
    for r in report["sweep"]:
        if sbase and r.get("members_per_s"):
            r["speedup"] = r["members_per_s"] / sbase["members_per_s"]
            r["efficiency"] = r["speedup"] / r["nprocs"]
    if 1 in results and nmax in results and nmax > 1:
        worst = 0.0
        for x, y in zip(results[1], results[nmax]):
            for key, v in x.items():
                if isinstance(v, float) and isinstance(y.get(key), float):
                    worst = max(worst, abs(v - y[key]))
        report["check"]["sweep"] = {"nprocs": [1, nmax], "max_abs_diff_member_metrics": worst}
    save()
    print(
        json.dumps(
            {
                "out": str(out / "bench_distributed.json"),
                "check": {
                    k: (
                        v.get("max_abs_diff_overall", v.get("max_abs_diff_member_metrics"))
                        if isinstance(v, dict)
                        else v
                    )
                    for k, v in report["check"].items()
                },
            }
        )
    )
    ok = all(r["rc"] == 0 for r in report["train"] + report["sweep"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

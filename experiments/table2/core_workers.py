"""SAEBench core evals of several SAEs at once, in spawned processes (``run_stage.py --core-workers N``).

A T stage's core evals run SAEBench's ``run_evals`` SAE by SAE: 16 batches of 8 x 128 tokens each, about 10 s
per SAE on the H200 whatever its width, nearly all of it inside ``run_evals`` (the stage record's
``core_phases``). If those seconds are the host's (Python, kernel launches) rather than the GPU's (the record's
``core_profile`` tells), several SAEs evaluated at once in separate processes overlap them. Each process gets the
HookedTransformer (by CUDA IPC on a GPU, as the absorption workers do), the held-out rows and the stage's
arguments, takes SAEs from one queue and runs exactly the stage's own ``core_eval`` (``run_stage``): the same
code, so the same JSONs as one at a time (tested: identical but for SAEBench's eval id and date). Each JSON is
validated and written atomically by the worker; the parent gets (seconds, parts, fold record) per SAE and
terminates the workers at the deadline (an SAE cut there has no JSON and is evaluated by a later call).
The stage starts them after its own first core eval, as many as the GPU memory left by that eval's measured peak
allows (``run_stage.workers_that_fit``): on Gemma-3 one eval holds several 8 GiB fp32 logit tensors (rows x
1,024 x 262,144 vocabulary): on an 80 GB card, with four workers asked for and another process on the GPU, the
stage's first core eval ran out of memory (2026-12-05).
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback
from pathlib import Path
from typing import Any


def _child(
    hooked: Any, held: Any, ignore: set[int], args: Any, deadline: float, jobs: Any, results: Any, index: int
) -> None:
    """A worker: core evals of the SAEs it takes from ``jobs`` until None or too close to ``deadline``."""
    from run_stage import atomic_json, core_eval, load_sae, validate_core
    from saebench_fold import fold_for_saebench
    from workers import die_with_parent

    die_with_parent()
    longest = 0.0
    try:
        while True:
            job = jobs.get()
            if job is None or (longest and time.time() + 1.3 * longest > deadline):
                break
            plan_sae, path, step, dest = job
            t = time.perf_counter()
            sae = load_sae(Path(path), args.device)
            fold = fold_for_saebench(sae)
            phases: dict[str, float] = {"load": time.perf_counter() - t}
            obj = core_eval(sae, hooked, held, ignore, plan_sae, step, args, phases)
            validate_core(obj)
            atomic_json(Path(dest), obj)
            secs = time.perf_counter() - t
            longest = max(longest, secs)
            results.put(("done", index, plan_sae["id"], secs, phases, fold))
    except Exception:  # noqa: BLE001 - reported to the parent, which fails the stage with it
        results.put(("error", index, traceback.format_exc()))
    results.put(("end", index))


def run_parallel(
    jobs: list[tuple[dict, Path, str, Path]],
    hooked: Any,
    held: Any,
    ignore: set[int],
    args: Any,
    deadline: float,
    workers: int,
) -> tuple[dict[str, tuple[float, dict[str, float], dict]], str | None]:
    """Core evals of ``jobs`` ((plan SAE, SAE folder, step, JSON destination)) in ``workers`` spawned processes
    until ``deadline`` (time.time()): per SAE evaluated, (seconds, core parts, saebench_fold record); and None, or
    why the workers stopped early (a worker's exception, its last line; a worker that died), after which the
    caller evaluates what is left itself."""
    from workers import start_all

    ctx = mp.get_context("spawn")
    job_q, res_q = ctx.Queue(), ctx.Queue()
    n = max(1, min(workers, len(jobs)))
    for plan_sae, path, step, dest in jobs:
        job_q.put((plan_sae, str(path), step, str(dest)))
    for _ in range(n):
        job_q.put(None)
    procs = [ctx.Process(target=_child, args=(hooked, held, ignore, args, deadline, job_q, res_q, i)) for i in range(n)]
    done: dict[str, tuple[float, dict[str, float], dict]] = {}
    ended = [False] * n
    error = None
    try:
        start_all(procs)  # the children import at once (workers.start_all)
        while not all(ended) and error is None:
            left = deadline - time.time()
            if left <= 0:
                break
            try:
                ev = res_q.get(timeout=min(left, 1.0))
            except queue.Empty:
                dead = [i for i, p in enumerate(procs) if not ended[i] and p.exitcode not in (None, 0)]
                if dead:
                    error = f"core worker {dead[0]} exited with code {procs[dead[0]].exitcode}"
                continue
            if ev[0] == "done":
                done[ev[2]] = (ev[3], ev[4], ev[5])
            elif ev[0] == "error":
                error = ev[2].strip().splitlines()[-1]
            else:
                ended[ev[1]] = True
        while True:  # results already queued: a JSON written just before the deadline is counted
            try:
                ev = res_q.get_nowait()
            except queue.Empty:
                break
            if ev[0] == "done":
                done[ev[2]] = (ev[3], ev[4], ev[5])
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            if p.pid is not None:
                p.join(10)
                if p.is_alive():
                    p.kill()
                    p.join()
        job_q.cancel_join_thread()
        res_q.cancel_join_thread()
    return done, error

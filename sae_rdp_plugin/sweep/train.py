"""Training a sweep: every group of the grid (or the ones asked for), one after another, with checkpoints.

Folder layout of ``train_sweep(cfg, out_dir)``:

* ``state.json``: ``config`` (the JSON of the config), ``members`` (every member id of the grid -> its
  group id) and ``groups`` (group id -> ``{"status": "running" | "done", "step", ...}``, only for the
  groups this folder has started);
* ``groups/<gid>.safetensors``: the group's stacked weights, Adam moments, dead-latent counters and
  data-stream RNG state, written atomically every ``checkpoint_every`` steps and when the group
  finishes (``groups/<gid>.curve.json``: its training curve when ``record_every`` > 0);
* ``members/<member_id>.json``: a finished member's results (:func:`sae_rdp_plugin.sweep.evaluate.evaluate_group`);
* ``results.json``: ``config``, ``seconds`` (of the last call) and ``members`` (every member's results,
  grid order), written once every group of the grid is done.

``train_sweep(..., groups=ids)`` trains only those groups: the others stay absent from ``state.json``
and ``results.json`` waits until a later call has trained them. Group ``gi`` (its index in
:func:`sae_rdp_plugin.sweep.members.group_members`) seeds its data stream, so a grid trained in parts,
in any order, into one folder gives the same member results as one full run. ``resume=True`` skips done
groups and continues an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import torch

from sae_rdp_plugin.devices import check_device, check_fits_memory, memory_bytes
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.io import (
    FolderLock,
    atomic_save,
    atomic_write_json,
    is_temp_name,
    read_json_object,
    remove_stale_temps,
)
from sae_rdp_plugin.sweep.config import SweepConfig, json_safe
from sae_rdp_plugin.sweep.data import BuiltDGP, DataStream, build_dgp
from sae_rdp_plugin.sweep.evaluate import curve_point, evaluate_group
from sae_rdp_plugin.sweep.members import group_members
from sae_rdp_plugin.sweep.stacked import StackedSAEs, make_optimizer


def train_sweep(
    cfg: SweepConfig,
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[str, int], None] | None = None,
    groups: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Train the members of the grid, group by group; return one result dict per member (grid order).

    ``out_dir`` receives ``state.json``, ``groups/<gid>.safetensors`` (checkpoints / final weights),
    ``members/<member_id>.json`` and, once every group is done, ``results.json``. ``groups``: train only
    these group ids (of :func:`~sae_rdp_plugin.sweep.members.group_members`) and return only their
    members; None trains them all. With ``resume=True`` a previous run in ``out_dir`` (same config)
    continues: done groups are kept, an interrupted one restarts from its last checkpoint. Without it,
    a non-empty ``out_dir`` holding a sweep is an error.

    Everything that can be checked (config, device, DGPs, lr schedule, whether the largest group fits in
    the device's memory) is checked before anything is written. The folder is locked
    (:class:`~sae_rdp_plugin.io.FolderLock`) while training: a second process on it gets SaeRdpError.
    Temporary files a killed run left are removed. A new sweep needs a new or empty folder; if it fails
    before its first checkpoint, it removes what it wrote.
    """
    cfg.validate()
    device = check_device(device, flag="device")
    grid = group_members(cfg)
    if groups is None:
        selected = {gid for gid, _ in grid}
    else:
        selected = set(groups)
        unknown = sorted(selected - {gid for gid, _ in grid})
        if unknown:
            raise SaeRdpError(f"unknown sweep group id(s): {', '.join(unknown)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SaeRdpError(f"sweep output {out} exists and is not a folder")
    dtype = getattr(torch, cfg.dtype)
    _check_data_fits(cfg, device)
    dgps = {g.name: build_dgp(g, device, dtype=torch.float32 if dtype == torch.bfloat16 else dtype) for g in cfg.dgps}
    _check_schedule(cfg)
    _check_fits(cfg, grid, dgps, device)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with FolderLock(out):
            return _train_locked(cfg, out, device, dgps, grid, selected, resume, progress, on_step, groups)
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that failed before writing anything leaves no folder behind


def check_resume_out(out_dir: str | Path, flag: str = "--out") -> None:
    """``--resume`` continues a sweep: ``out_dir`` must be a folder holding one (its ``state.json``, or the rank
    folders of a ``distributed sweep`` killed before its merge). A missing or empty folder raises SaeRdpError
    instead of starting a new sweep there (a mistyped path would silently retrain everything from step 0).
    ``train_sweep(resume=True)`` itself still starts a new sweep in a new folder (resume-or-start)."""
    out = Path(out_dir)
    if not out.exists():
        raise SaeRdpError(
            f"--resume: {flag} {out} does not exist, so there is no sweep to resume; check the path, or leave out "
            "--resume to start a new sweep"
        )
    if not out.is_dir():
        raise SaeRdpError(f"--resume: {flag} {out} exists and is not a folder")
    if not (out / "state.json").is_file() and not (out / "ranks").is_dir():
        raise SaeRdpError(
            f"--resume: {flag} {out} holds no sweep to resume (no state.json); check the path, or leave out "
            "--resume to start a new sweep"
        )


def _train_locked(
    cfg: SweepConfig,
    out: Path,
    device: torch.device,
    dgps: dict[str, BuiltDGP],
    grid: list[tuple[str, list[Any]]],
    selected: set[str],
    resume: bool,
    progress: bool,
    on_step: Callable[[str, int], None] | None,
    groups: Collection[str] | None,
) -> list[dict[str, Any]]:
    state_path = out / "state.json"
    cfg_dict = json_safe(cfg.to_dict())
    fresh = not state_path.exists()
    if fresh and [p for p in out.iterdir() if p.name != FolderLock.NAME and not is_temp_name(p.name)]:
        raise SaeRdpError(f"{out} is a non-empty folder that holds no sweep; give a new or empty folder")
    if not fresh:
        if not resume:
            raise SaeRdpError(f"{out} already holds a sweep: pass --resume (resume=True) or use a new folder")
        state = read_json_object(state_path, "sweep state")
        if state.get("config") != cfg_dict:
            raise SaeRdpError(f"{out} holds a sweep with a different config; cannot resume")
    else:
        state = {"config": cfg_dict, "groups": {}}
    for sub in (out, out / "groups", out / "members"):
        remove_stale_temps(sub)  # we hold the lock: any temporary file here is a killed run's
    try:
        return _train_groups(cfg, out, device, dgps, grid, selected, resume, progress, on_step, groups, state)
    except BaseException:
        if fresh and not state["groups"]:
            # no checkpoint to resume from, and the folder held nothing before: leave it as it was
            for name in ("groups", "members"):
                shutil.rmtree(out / name, ignore_errors=True)
            state_path.unlink(missing_ok=True)
            remove_stale_temps(out)
        raise


def _train_groups(
    cfg: SweepConfig,
    out: Path,
    device: torch.device,
    dgps: dict[str, BuiltDGP],
    grid: list[tuple[str, list[Any]]],
    selected: set[str],
    resume: bool,
    progress: bool,
    on_step: Callable[[str, int], None] | None,
    groups: Collection[str] | None,
    state: dict[str, Any],
) -> list[dict[str, Any]]:
    state_path = out / "state.json"
    cfg_dict = state["config"]
    dtype = getattr(torch, cfg.dtype)
    state["members"] = {mb.member_id: gid for gid, mbs in grid for mb in mbs}
    atomic_write_json(state_path, state)  # first: a folder with our subfolders always has its state.json
    (out / "groups").mkdir(exist_ok=True)
    (out / "members").mkdir(exist_ok=True)
    todo = [
        (gi, gid, mbs)
        for gi, (gid, mbs) in enumerate(grid)
        if gid in selected and state["groups"].get(gid, {}).get("status") != "done"
    ]

    # held-out evaluation data: one fixed sample per DGP (seeded by its index in the config)
    needed = {mb.dgp for _, _, mbs in todo for mb in mbs}
    eval_data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for j, (name, bd) in enumerate(dgps.items()):
        if name in needed:
            g = torch.Generator(device=device).manual_seed(cfg.eval_seed + j)
            eval_data[name] = bd.sample(cfg.eval_samples, g)

    t_start = time.time()
    for gi, gid, mbs in todo:
        with _out_of_memory_as_error(gid, device):
            _train_group(cfg, out, device, dgps, gi, gid, mbs, resume, progress, on_step, state, eval_data, dtype)
    results, _ = _evaluated_members(out)
    if all(state["groups"].get(gid, {}).get("status") == "done" for gid, _ in grid):
        atomic_write_json(
            out / "results.json", {"config": cfg_dict, "seconds": time.time() - t_start, "members": results}
        )
    if groups is not None:
        results = [r for r in results if state["members"][r["member_id"]] in selected]
    return results


def _train_group(
    cfg: SweepConfig,
    out: Path,
    device: torch.device,
    dgps: dict[str, BuiltDGP],
    gi: int,
    gid: str,
    mbs: list[Any],
    resume: bool,
    progress: bool,
    on_step: Callable[[str, int], None] | None,
    state: dict[str, Any],
    eval_data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    dtype: torch.dtype,
) -> None:
    """Train one group from scratch or from its checkpoint, evaluate its members, mark it done."""
    state_path = out / "state.json"
    arch, width, d = mbs[0].architecture, mbs[0].width, dgps[mbs[0].dgp].d
    model = StackedSAEs(cfg, arch, width, d, mbs, {k: v.concepts for k, v in dgps.items()}, device)
    opt, sched = make_optimizer(cfg, model, device)
    used = sorted({mb.dgp for mb in mbs}, key=list(dgps).index)
    gens = {
        name: torch.Generator(device=device).manual_seed(
            (cfg.data_seed * 1_000_003 + 7919 * gi + list(dgps).index(name)) % 2**64
        )
        for name in used
    }
    streams = {name: DataStream(dgps[name], gens[name]) for name in used}
    ckpt = out / "groups" / f"{gid}.safetensors"
    step0 = 0
    if resume and ckpt.exists():
        step0 = _load_group_ckpt(ckpt, model, opt, streams)
        for _ in range(step0):
            sched.step()
    index = torch.tensor([used.index(mb.dgp) for mb in mbs], device=device)
    curve: list[dict[str, Any]] = []
    t0 = time.time()
    for step in range(step0, cfg.steps):
        xs = [streams[name].next_batch(cfg.batch_size)[0].to(dtype) for name in used]
        x = xs[0].unsqueeze(0).expand(len(mbs), -1, -1) if len(used) == 1 else torch.stack(xs)[index]
        loss, terms = model.loss(x, step)
        loss.sum().backward()
        if cfg.grad_clip_norm is not None:
            model.clip_grads_(cfg.grad_clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if cfg.record_every and ((step + 1) % cfg.record_every == 0 or step == step0):
            curve.append(curve_point(model, mbs, dgps, step + 1, terms))
        if on_step is not None:
            on_step(gid, step + 1)
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            _save_group_ckpt(ckpt, model, opt, step + 1, streams)
            state["groups"][gid] = {"status": "running", "step": step + 1}
            atomic_write_json(state_path, state)
        if progress and (step + 1) % max(cfg.steps // 4, 1) == 0:
            print(
                f"[sweep] {gid} ({len(mbs)} SAEs) step {step + 1}/{cfg.steps} "
                f"mse {terms['mse'].mean():.4f} ({time.time() - t0:.1f} s)",
                flush=True,
            )
    for r in evaluate_group(model, mbs, dgps, eval_data):
        atomic_write_json(out / "members" / f"{r['member_id']}.json", json_safe(r))
    if curve:
        atomic_write_json(out / "groups" / f"{gid}.curve.json", {"members": [m.member_id for m in mbs], "curve": curve})
    _save_group_ckpt(ckpt, model, opt, cfg.steps, streams)
    state["groups"][gid] = {"status": "done", "step": cfg.steps, "seconds": time.time() - t0}
    atomic_write_json(state_path, state)


def _check_schedule(cfg: SweepConfig) -> None:
    """Build the optimizer and SAELens's lr scheduler once on a dummy parameter: a schedule SAELens
    refuses (e.g. ``lr_decay_steps`` with ``lr_end`` 0) is an error before anything is written."""
    if cfg.lr_warm_up_steps + cfg.lr_decay_steps > cfg.steps:
        raise SaeRdpError(
            f"lr_warm_up_steps + lr_decay_steps ({cfg.lr_warm_up_steps} + {cfg.lr_decay_steps}) "
            f"exceed steps ({cfg.steps})"
        )
    try:
        make_optimizer(cfg, torch.nn.Linear(1, 1), torch.device("cpu"))
    except (ValueError, ZeroDivisionError) as exc:
        raise SaeRdpError(f"lr schedule {cfg.lr_scheduler_name!r}: {exc}") from None


def _check_data_fits(cfg: SweepConfig, device: torch.device) -> None:
    """Refuse, before any DGP is built, data that cannot fit in twice the device's memory
    (:func:`~sae_rdp_plugin.devices.check_fits_memory`): a DGP's concept vectors (m x d, built in float64) and
    data-stream chunks (64 batches of d + m values), and the held-out evaluation sample of every DGP
    (``eval_samples`` x (d + m) values)."""
    item = max(4, torch.finfo(getattr(torch, cfg.dtype)).bits // 8)
    eval_need = 0
    for g in cfg.dgps:
        d = g.input_dim
        try:
            m = int((g.saelens_config or {}).get("num_features", 0)) if g.kind == "saelens" else int(g.m)
        except (TypeError, ValueError):
            m = 0  # a bad saelens_config is refused when the DGP is built
        need = 8 * 3 * m * d + 64 * cfg.batch_size * (d + m) * item
        check_fits_memory(need, f"DGP {g.name!r} (m={m}, d={d})", "its d or m (or batch_size)", device)
        eval_need += cfg.eval_samples * (d + m) * item
    check_fits_memory(eval_need, f"the held-out data of eval_samples={cfg.eval_samples}", "eval_samples", device)


def group_bytes(cfg: SweepConfig, width: int, d: int, n_members: int, arch: str) -> int:
    """A rough estimate of a group's training memory in bytes: parameters, gradients and two Adam moments,
    4 G (2 n d + n + d) (+ G n JumpReLU thresholds), and one step's activations, G batch (6 n + 4 d)."""
    item = torch.finfo(getattr(torch, cfg.dtype)).bits // 8
    params = n_members * (2 * width * d + width + d + (width if arch == "jumprelu" else 0))
    acts = n_members * cfg.batch_size * (6 * width + 4 * d)
    return item * (4 * params + acts)


def _check_fits(
    cfg: SweepConfig, grid: list[tuple[str, list[Any]]], dgps: dict[str, BuiltDGP], device: torch.device
) -> None:
    """Refuse a grid whose largest group cannot fit in the device's memory (:func:`group_bytes`)."""
    total = memory_bytes(device)
    if total is None:
        return
    for gid, mbs in grid:
        need = group_bytes(cfg, mbs[0].width, dgps[mbs[0].dgp].d, len(mbs), mbs[0].architecture)
        if need > total:
            raise SaeRdpError(
                f"group {gid} ({len(mbs)} SAEs of width {mbs[0].width}) needs about {need / 2**30:,.1f} GiB, "
                f"more than the {total / 2**30:,.1f} GiB of {device}; lower widths, batch_size or max_group_size"
            )


@contextlib.contextmanager
def _out_of_memory_as_error(gid: str, device: torch.device) -> Iterator[None]:
    """An allocation failure while training a group becomes one SaeRdpError line."""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError) as exc:
        raise SaeRdpError(
            f"group {gid}: out of memory on {device}; lower widths, batch_size or max_group_size"
        ) from exc
    except RuntimeError as exc:
        if "allocate" not in str(exc) and "out of memory" not in str(exc):
            raise
        raise SaeRdpError(
            f"group {gid}: out of memory on {device}; lower widths, batch_size or max_group_size"
        ) from exc


def load_results(out_dir: str | Path, allow_partial: bool = False) -> list[dict[str, Any]]:
    """Per-member results of a sweep folder, in grid order.

    A sweep that has not finished (killed, or trained in parts with ``groups=``) lacks some members'
    results: that raises SaeRdpError naming how many are missing and the ``--resume`` command, so a part
    of the grid is never taken for the whole; ``allow_partial=True`` returns the members evaluated so far
    (with a warning on stderr when some are missing)."""
    out = Path(out_dir)
    res, n_members = _evaluated_members(out)
    missing = n_members - len(res)
    if missing:
        msg = (
            f"sweep {out} is incomplete: {missing} of {n_members} members have no results; "
            f"finish it with `sae-rdp sweep run --config CFG.json --out {out} --resume`"
        )
        if not allow_partial:
            raise SaeRdpError(msg + " (or pass --allow-partial / allow_partial=True)")
        print(f"warning: {msg}; using the {len(res)} finished members only", file=sys.stderr)
    return res


def _evaluated_members(out: Path) -> tuple[list[dict[str, Any]], int]:
    """(every member evaluated so far, grid order; the number of members in the grid)."""
    state_path = out / "state.json"
    if not state_path.exists():
        raise SaeRdpError(f"{out} is not a sweep folder (no state.json)")
    state = read_json_object(state_path, "sweep state")
    res = []
    for mid in state.get("members", {}):
        p = out / "members" / f"{mid}.json"
        if p.exists():
            res.append(read_json_object(p, "member result"))
    return res, len(state.get("members", {}))


def _save_group_ckpt(
    path: Path, model: StackedSAEs, opt: torch.optim.Optimizer, step: int, streams: dict[str, DataStream]
) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {
        f"param.{k}": v.detach().cpu().contiguous() for k, v in model.named_parameters()
    }
    tensors.update({f"buf.{k}": v.detach().cpu().contiguous() for k, v in model.named_buffers()})
    names = {id(p): k for k, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for sk in ("exp_avg", "exp_avg_sq"):
                if sk in st:
                    tensors[f"adam.{names[id(p)]}.{sk}"] = st[sk].detach().cpu().contiguous()
            if "step" in st:
                tensors[f"adam.{names[id(p)]}.step"] = torch.as_tensor(st["step"]).detach().cpu().reshape(1).float()
    for dn, stream in streams.items():
        # the state the stream's current chunk was drawn from and the rows used: a resume redraws that
        # chunk and continues inside it, so it sees the batches an uninterrupted run sees
        rng, pos = stream.position()
        tensors[f"rng.{dn}"] = rng.cpu()
        tensors[f"pos.{dn}"] = torch.tensor([pos], dtype=torch.int64)
    meta = {"step": str(step)}
    try:
        atomic_save(path, lambda p: save_file(tensors, str(p), metadata=meta))
    except (OSError, SafetensorError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        raise SaeRdpError(f"cannot write checkpoint {path}: {reason}") from None


def _load_group_ckpt(path: Path, model: StackedSAEs, opt: torch.optim.Optimizer, streams: dict[str, DataStream]) -> int:
    from safetensors import SafetensorError, safe_open

    try:
        return _read_group_ckpt(path, model, opt, streams, safe_open)
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as exc:
        raise SaeRdpError(
            f"checkpoint {path} is unreadable ({str(exc).splitlines()[0][:120]}); delete it to retrain its group"
        ) from None


def _read_group_ckpt(
    path: Path, model: StackedSAEs, opt: torch.optim.Optimizer, streams: dict[str, DataStream], safe_open: Any
) -> int:
    dev = model.W_enc.device
    with safe_open(str(path), framework="pt") as f:
        step = int(f.metadata()["step"])
        keys = set(f.keys())
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(f.get_tensor(f"param.{k}").to(dev))
            for k, b in model.named_buffers():
                b.copy_(f.get_tensor(f"buf.{k}").to(dev))
        names = {id(p): k for k, p in model.named_parameters()}
        for group in opt.param_groups:
            for p in group["params"]:
                k = names[id(p)]
                if f"adam.{k}.exp_avg" in keys:
                    st_step = f.get_tensor(f"adam.{k}.step").reshape(())
                    opt.state[p] = {
                        "step": st_step.to(dev) if group.get("fused") or group.get("capturable") else st_step,
                        "exp_avg": f.get_tensor(f"adam.{k}.exp_avg").to(dev),
                        "exp_avg_sq": f.get_tensor(f"adam.{k}.exp_avg_sq").to(dev),
                    }
        for dn, stream in streams.items():
            if f"pos.{dn}" in keys:
                stream.restore(f.get_tensor(f"rng.{dn}"), int(f.get_tensor(f"pos.{dn}")[0]))
            elif f"rng.{dn}" in keys:  # a checkpoint of an earlier version: the generator's state only
                stream.generator.set_state(f.get_tensor(f"rng.{dn}"))
    return step

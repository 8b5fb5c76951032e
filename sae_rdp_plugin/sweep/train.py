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

import json
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.io import atomic_save, atomic_write_json
from sae_rdp_plugin.sweep.config import SweepConfig, json_safe
from sae_rdp_plugin.sweep.data import DataStream, build_dgp
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
    """
    cfg.validate()
    device = torch.device(device)
    grid = group_members(cfg)
    if groups is None:
        selected = {gid for gid, _ in grid}
    else:
        selected = set(groups)
        unknown = sorted(selected - {gid for gid, _ in grid})
        if unknown:
            raise SaeRdpError(f"unknown sweep group id(s): {', '.join(unknown)}")
    out = Path(out_dir)
    state_path = out / "state.json"
    cfg_dict = json_safe(cfg.to_dict())
    if state_path.exists():
        if not resume:
            raise SaeRdpError(f"{out} already holds a sweep: pass --resume (resume=True) or use a new folder")
        state = json.loads(state_path.read_text())
        if state.get("config") != cfg_dict:
            raise SaeRdpError(f"{out} holds a sweep with a different config; cannot resume")
    else:
        state = {"config": cfg_dict, "groups": {}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "groups").mkdir(exist_ok=True)
    (out / "members").mkdir(exist_ok=True)
    dtype = getattr(torch, cfg.dtype)
    dgps = {g.name: build_dgp(g, device, dtype=torch.float32 if dtype == torch.bfloat16 else dtype) for g in cfg.dgps}
    state["members"] = {mb.member_id: gid for gid, mbs in grid for mb in mbs}
    atomic_write_json(state_path, state)
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
        arch, width, d = mbs[0].architecture, mbs[0].width, dgps[mbs[0].dgp].d
        model = StackedSAEs(cfg, arch, width, d, mbs, {k: v.concepts for k, v in dgps.items()}, device)
        opt, sched = make_optimizer(cfg, model, device)
        used = sorted({mb.dgp for mb in mbs}, key=list(dgps).index)
        gens = {
            name: torch.Generator(device=device).manual_seed(
                cfg.data_seed * 1_000_003 + 7919 * gi + list(dgps).index(name)
            )
            for name in used
        }
        ckpt = out / "groups" / f"{gid}.safetensors"
        step0 = 0
        if resume and ckpt.exists():
            step0 = _load_group_ckpt(ckpt, model, opt, gens)
            for _ in range(step0):
                sched.step()
        streams = {name: DataStream(dgps[name], gens[name]) for name in used}
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
                _save_group_ckpt(ckpt, model, opt, step + 1, gens)
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
            atomic_write_json(
                out / "groups" / f"{gid}.curve.json", {"members": [m.member_id for m in mbs], "curve": curve}
            )
        _save_group_ckpt(ckpt, model, opt, cfg.steps, gens)
        state["groups"][gid] = {"status": "done", "step": cfg.steps, "seconds": time.time() - t0}
        atomic_write_json(state_path, state)
    results, _ = _evaluated_members(out)
    if all(state["groups"].get(gid, {}).get("status") == "done" for gid, _ in grid):
        atomic_write_json(
            out / "results.json", {"config": cfg_dict, "seconds": time.time() - t_start, "members": results}
        )
    if groups is not None:
        results = [r for r in results if state["members"][r["member_id"]] in selected]
    return results


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
    state = json.loads(state_path.read_text())
    res = []
    for mid in state.get("members", {}):
        p = out / "members" / f"{mid}.json"
        if p.exists():
            res.append(json.loads(p.read_text()))
    return res, len(state.get("members", {}))


def _save_group_ckpt(
    path: Path, model: StackedSAEs, opt: torch.optim.Optimizer, step: int, gens: dict[str, torch.Generator]
) -> None:
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
    for dn, g in gens.items():
        tensors[f"rng.{dn}"] = g.get_state().cpu()
    meta = {"step": str(step)}
    atomic_save(path, lambda p: save_file(tensors, str(p), metadata=meta))


def _load_group_ckpt(
    path: Path, model: StackedSAEs, opt: torch.optim.Optimizer, gens: dict[str, torch.Generator]
) -> int:
    from safetensors import safe_open

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
        for dn, g in gens.items():
            if f"rng.{dn}" in keys:
                g.set_state(f.get_tensor(f"rng.{dn}"))
    return step

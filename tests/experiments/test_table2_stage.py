"""experiments/table2/run_stage.py end to end at tiny scale: a random tiny GPT-2, a random-token corpus folder, a
plan stage of three SAE runs (one with a half-way checkpoint kept as a fourth SAE). Trains, writes SAEBench core
JSONs, is skipped on a second call (resume), and the audit reads the JSONs.

Checked independently of the code under test: SAEBench's pydantic CoreEvalOutput accepts each file; the CE loss
without SAE equals a cross entropy computed with the transformers model itself (not the HookedTransformer the
eval runs); the L0 of the L1 SAE equals a count over the held-out activations taken from the transformers
model's hidden states; a checkpoint loaded for the eval (normalisation folded) equals the SAELens training SAE
fed normalised inputs."""

from __future__ import annotations

import importlib
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[2]
EXP = ROOT / "experiments" / "table2"
HOOK = "blocks.1.hook_resid_post"
BOS = 1


@pytest.fixture
def rs(monkeypatch):
    monkeypatch.syspath_prepend(str(EXP))
    return importlib.import_module("run_stage")


def tiny_corpus(tmp: Path) -> tuple[Path, np.ndarray]:
    """A corpus folder of random token rows (BOS first) in ``tmp`` with the recipe copied next to it;
    returns (the folder, its held-out rows)."""
    rng = np.random.default_rng(0)
    ctx = 32
    train = rng.integers(3, 512, size=(24, ctx)).astype(np.int32)
    held = rng.integers(3, 512, size=(8, ctx)).astype(np.int32)
    train[:, 0] = held[:, 0] = BOS
    corpus = tmp / "corpus"
    corpus.mkdir()
    np.savez_compressed(corpus / "tokens.npz", train=train, heldout=held)
    (corpus / "manifest.json").write_text(json.dumps({"format": "sae-rdp corpus v2", "bos_token_id": BOS}))
    (tmp / "recipe.json").write_text((EXP / "recipe.json").read_text())
    return corpus, held


def plan_entry(arch: str, field: str, lev: float, frac: float, width: int = 128) -> dict:
    """One SAE of a tiny plan (stage T-tiny): ``frac`` of the final's 512 tokens (< 1: a checkpoint)."""
    return {
        "id": f"tiny-gpt2/{HOOK}/{arch}/w{width}/{field}={lev:g}/s0/t{frac:g}",
        "model": "tiny-gpt2",
        "hook": HOOK,
        "architecture": arch,
        "width": width,
        field: lev,
        "seed": 0,
        "tokens": int(512 * frac),
        "checkpoint_of_final": frac < 1,
        "stage": "T-tiny",
    }


def _setup(tmp: Path) -> tuple[Path, Path, np.ndarray]:
    corpus, held = tiny_corpus(tmp)
    sae = plan_entry
    saes = [sae("topk", "k", 4, 0.5), sae("topk", "k", 4, 1.0), sae("topk", "k", 8, 1.0)]
    saes += [sae("standard", "l1_coefficient", 2.0, 1.0), {**sae("topk", "k", 2, 1.0), "stage": "T-other"}]
    saes += [sae("jumprelu", "l0_coefficient", 1.0, 1.0)]  # standardised inputs, threshold at 100 x lr (recipe)
    (tmp / "plan.json").write_text(json.dumps({"saes": saes}))
    return tmp / "plan.json", corpus, held


def _argv(plan: Path, corpus: Path, out: Path, export: Path) -> list[str]:
    return [
        "--plan", str(plan), "--stage", "T-tiny", "--corpus", str(corpus), "--out", str(out), "--n-layers", "2",
        "--batch-size", "64", "--buffer-tokens", "128", "--eval-batches", "2", "--eval-batch-prompts", "4",
        "--export", str(export),
    ]  # fmt: skip


def test_stage_end_to_end_resume_and_audit(rs, tmp_path, capsys):
    from sae_bench.evals.core.eval_output import CoreEvalOutput
    from sae_lens import SAE, TrainingSAE

    from sae_rdp_plugin.cli import main as cli_main
    from sae_rdp_plugin.lm.models import hf_model

    plan, corpus, held = _setup(tmp_path)
    out, export = tmp_path / "out", tmp_path / "export"
    assert rs.main(_argv(plan, corpus, out, export)) == 0
    rec = json.loads((out / "stage_T-tiny.json").read_text())
    (call,) = rec["calls"]
    assert len(call["trained"]) == 4 and call["skipped_trained_before"] == [] and len(call["core_evaluated"]) == 5
    assert call["fast_deterministic"] is (os.environ.get("SAE_RDP_FAST_DETERMINISTIC", "0") == "1")
    # the versions of what produced the JSONs (SAEBench's own JSONs carry none of SAEBench itself)
    import importlib.metadata as md

    assert call["versions"]["sae-bench"] == md.version("sae-bench") and call["versions"]["sae-lens"] == md.version(
        "sae-lens"
    )
    # the machine's memory at the call's start and end (the device's MemTotal grows as RAM is used): this
    # process's peak resident memory only grows, and a stage that trained and evaluated holds > 100 MiB
    hm = call["host_memory"]
    assert hm["start"]["limit_source"] and hm["end"]["memtotal_bytes"] > 0 and hm["end"]["used_bytes"] > 0
    assert hm["end"]["process_peak_rss_bytes"] >= hm["start"]["process_peak_rss_bytes"] > 100 << 20, hm
    # every SAE's decoder norms folded before SAEBench's core, as its loader folds an SAE loaded by name
    assert sorted(call["saebench_fold"]) == sorted(call["core_evaluated"])
    assert all(f["folded"] is True for f in call["saebench_fold"].values())
    # the tiny corpus's manifest names no tokenizer and no hash: nothing to compare, and the record says so
    assert call["corpus"] == {
        "tokenizer": None, "tokens_sha256": None, "manifest_tokens_sha256": None, "matches_manifest": None
    }  # fmt: skip
    files = sorted((out / "core").glob("*.json"))
    assert len(files) == 5
    objs = {f.name: json.loads(f.read_text()) for f in files}
    for o in objs.values():
        CoreEvalOutput(**o)  # SAEBench's own schema
        assert o["eval_type_id"] == "core"
        cfg = o["sae_cfg_dict"]
        assert cfg["model_name"] == "tiny-gpt2" and cfg["hook_name"] == HOOK and cfg["d_sae"] == 128
        assert o["sae_lens_release_id"] == f"table2-tiny-gpt2-L1-{cfg['training_architecture']}"
    ids = sorted(o["sae_lens_id"] for o in objs.values())
    assert sum(i.endswith("_step_final") for i in ids) == 4 and sum(i.endswith("_step_320") for i in ids) == 1
    for o in objs.values():
        m = o["eval_result_metrics"]
        if "k" in o["sae_cfg_dict"] and o["sae_cfg_dict"]["architecture"] == "topk":
            assert 0 < m["sparsity"]["l0"] <= o["sae_cfg_dict"]["k"]

    # independent references from the transformers model (same seed as the runner's tiny-gpt2)
    hf, _ = hf_model("tiny-gpt2", n_layers=2, dtype="float32")
    ids_t = torch.as_tensor(held, dtype=torch.long)
    grab = []  # output of block 1 (its last hidden state is taken after the final norm)
    hf.transformer.h[1].register_forward_hook(lambda m, i, o: grab.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        o_hf = hf(ids_t)
    logp = torch.log_softmax(o_hf.logits[:, :-1].double(), -1)
    nll = -logp.gather(-1, ids_t[:, 1:, None])[..., 0]
    ce_ref = nll[:, 1:].mean().item()  # the loss at the BOS input position is excluded (ignore_tokens)
    x = grab[0][:, 1:].reshape(-1, hf.config.hidden_size)  # blocks.1.hook_resid_post, BOS dropped
    for o in objs.values():
        got = o["eval_result_metrics"]["model_performance_preservation"]["ce_loss_without_sae"]
        assert got == pytest.approx(ce_ref, rel=1e-4)
    (std,) = [o for o in objs.values() if o["sae_cfg_dict"]["architecture"] == "standard"]
    std_dir = out / "saes" / f"tiny-gpt2/{HOOK}/standard/w128/l1_coefficient-2/s0"
    sae = SAE.load_from_disk(std_dir)
    with torch.no_grad():
        l0_ref = (sae.encode(x) != 0).float().sum(-1).mean().item()
    assert std["eval_result_metrics"]["sparsity"]["l0"] == pytest.approx(l0_ref, rel=1e-2)
    assert 0 < l0_ref < 128
    # JumpReLU: trained on standardised inputs (folded: the saved SAE reads raw x), threshold at 100 x lr
    (jr,) = [o for o in objs.values() if o["sae_cfg_dict"]["architecture"] == "jumprelu"]
    jr_sae = SAE.load_from_disk(out / "saes" / f"tiny-gpt2/{HOOK}/jumprelu/w128/l0_coefficient-1/s0")
    assert jr_sae.cfg.normalize_activations == "none"
    summ = json.loads(
        (out / "saes" / f"tiny-gpt2/{HOOK}/jumprelu/w128/l0_coefficient-1/s0/train_summary.json").read_text()
    )
    assert summ["normalize_activations"] == "standardize" and summ["threshold_lr_scale"] == 100
    with torch.no_grad():
        jr_l0 = (jr_sae.encode(x) != 0).float().sum(-1).mean().item()
    assert jr["eval_result_metrics"]["sparsity"]["l0"] == pytest.approx(jr_l0, rel=1e-2)

    # the checkpoint as evaluated = the training SAE on normalised inputs, mapped back
    ck = next((out / "saes" / f"tiny-gpt2/{HOOK}/topk/w128/k-4/s0/checkpoints").iterdir())
    sf = json.loads((ck / "activation_scaler.json").read_text())["scaling_factor"]
    with torch.no_grad():
        a = rs.load_sae(ck, "cpu")(x)
        b = TrainingSAE.load_from_disk(ck, device="cpu")(x * sf) / sf
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4) and sf != pytest.approx(1.0)

    # our ground-truth-free proxies: one rdp_proxies JSON per core JSON, same file name, release and id
    pfiles = sorted((out / "rdp_proxies").glob("*.json"))
    assert [f.name for f in pfiles] == [f.name for f in files] and len(call["proxies_evaluated"]) == 5
    prox = {f.name: json.loads(f.read_text()) for f in pfiles}
    for name, o in prox.items():
        assert o["eval_type_id"] == "rdp_proxies"
        assert (o["sae_lens_release_id"], o["sae_lens_id"]) == (
            objs[name]["sae_lens_release_id"],
            objs[name]["sae_lens_id"],
        )
    (pstd,) = [o for n, o in prox.items() if objs[n]["sae_cfg_dict"]["architecture"] == "standard"]
    wd = sae.W_dec.detach().double()
    cos = (wd / wd.norm(dim=1, keepdim=True)) @ (wd / wd.norm(dim=1, keepdim=True)).T
    cos.fill_diagonal_(0.0)
    assert pstd["eval_result_metrics"]["proxies"]["decoder_max_cos"] == pytest.approx(
        cos.abs().max(1).values.mean().item(), rel=1e-5
    )
    n_ref = int((np.asarray(held[:32]) != BOS).sum())  # BOS dropped (no padding in this corpus)
    assert n_ref == held.size - len(held)
    assert pstd["eval_result_metrics"]["sample"]["n_tokens"] == n_ref

    # what comes back from the device: one bundle + the stage file
    with tarfile.open(export / "T-tiny.tar.xz") as tar:
        names = tar.getnames()
    assert sum(n.startswith("core/") for n in names) == 5 and sum(n.startswith("train_summaries/") for n in names) == 4
    assert sum(n.startswith("rdp_proxies/") for n in names) == 5
    assert (export / "stage_T-tiny.json").is_file()

    # resume: nothing trained or evaluated again, files untouched
    mtimes = {f: f.stat().st_mtime_ns for f in [*files, *pfiles, *out.glob("saes/**/sae_weights.safetensors")]}
    assert rs.main(_argv(plan, corpus, out, export)) == 0
    rec = json.loads((out / "stage_T-tiny.json").read_text())
    second = rec["calls"][1]
    assert second["trained"] == [] and len(second["skipped_trained_before"]) == 4
    assert second["core_evaluated"] == [] and len(second["core_existing"]) == 5 and second["proxies_evaluated"] == []
    assert all(f.stat().st_mtime_ns == t for f, t in mtimes.items())

    # a fresh machine after the bundle was committed (collect.py, as after a session): with --committed nothing is
    # trained again, and the record names what was skipped as committed
    results = tmp_path / "results"
    (results / "tiny-gpt2-L1").mkdir(parents=True)
    col = load_script("t2_collect", "experiments/table2/collect.py")
    assert col.main([str(export / "T-tiny.tar.xz"), "--into", str(results / "tiny-gpt2-L1")]) == 0
    fresh = tmp_path / "fresh"
    assert rs.main([*_argv(plan, corpus, fresh, tmp_path / "export2"), "--committed", str(results)]) == 0
    (third,) = json.loads((fresh / "stage_T-tiny.json").read_text())["calls"]
    assert third["trained"] == [] and third["skipped_committed"] == call["trained"] and third["core_evaluated"] == []
    assert not list(fresh.glob("saes/**/sae_weights.safetensors"))

    # --time-budget: after the first SAE's evals, stop when the next would not fit, export, leave the rest
    gone = sorted(objs)[:3]
    for name in gone:
        (out / "core" / name).unlink()
        (out / "rdp_proxies" / name).unlink()
    (export / "T-tiny.tar.xz").unlink()
    assert rs.main([*_argv(plan, corpus, out, export), "--time-budget", "1e-6", "--profile-core", "1"]) == 0
    third = json.loads((out / "stage_T-tiny.json").read_text())["calls"][2]
    assert len(third["core_evaluated"]) == 1 and len(third["evals_left_for_later"]) == 2
    assert len(third["core_existing"]) == 2 and (export / "T-tiny.tar.xz").is_file()
    ((sid, secs),) = third["eval_seconds"].items()
    assert sid in third["core_evaluated"] and secs["core"] > 0 and secs["proxies"] > 0
    # the core eval's parts: each measured, together within the core eval's seconds
    assert set(secs["core_phases"]) == {"load", "store", "run_evals", "save"}
    assert all(v >= 0 for v in secs["core_phases"].values()) and secs["core_phases"]["run_evals"] > 0
    assert sum(secs["core_phases"].values()) <= secs["core"] + 0.05
    assert third["fast_deterministic"] is None  # nothing trained in that call
    # --profile-core 1: the call's first core eval under the profiler (CPU here: no GPU share)
    ((pid, prof),) = third["core_profile"].items()
    assert pid == sid and prof["gpu_busy_fraction"] is None and prof["top"] and prof["host_syncs_per_step"] > 0
    assert 0 < prof["wall_ms_per_step"] / 1e3 <= secs["core"] + 0.05
    assert sum(not (out / "core" / n).is_file() for n in gone) == 2
    assert rs.main(_argv(plan, corpus, out, export)) == 0  # the next call does the rest
    fourth = json.loads((out / "stage_T-tiny.json").read_text())["calls"][3]
    assert len(fourth["core_evaluated"]) == 2 and fourth["evals_left_for_later"] == []
    assert not fourth.get("core_profile")  # none by default
    assert all((out / "core" / n).is_file() and (out / "rdp_proxies" / n).is_file() for n in gone)

    # the audit groups the JSONs (checkpoints included, pooled) and runs
    capsys.readouterr()
    rc = cli_main(
        ["audit", "run", "--results", str(out / "core"), "--out", str(tmp_path / "audit"), "--group-by",
         "--include-checkpoints", "--n-boot", "20", "--n-perm", "20", "--no-plots", "--proxy",
         "core.model_behavior_preservation.kl_div_score:-"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert any((tmp_path / "audit").iterdir())


def test_bad_inputs_exit_2_before_writing(rs, tmp_path, capsys):
    plan, corpus, _ = _setup(tmp_path)
    out = tmp_path / "out"
    cases = [
        (["--stage", "T-nope"], "has no SAEs to train here"),
        (["--stage", "E-nope"], "has no SAEs to evaluate"),
        (["--stage", "E0"], "--evals absorption"),
        (["--stage", "T-tiny", "--time-budget", "0"], "--time-budget must be > 0"),
        (["--stage", "T-tiny", "--group-size", "0"], "--group-size must be >= 1"),
        (["--stage", "T-tiny", "--proxy-rows", "0"], "--proxy-rows must be >= 1"),
        (["--stage", "T-tiny", "--tokens-scale", "0"], "--tokens-scale must be > 0"),
        (["--stage", "T-tiny", "--corpus", str(tmp_path)], "neither a corpus folder"),
        (["--stage", "C-gemma3-270m-9-topk"], "no calibration stage"),
        (["--stage", "T-tiny", "--random-init"], "--random-init trains only"),
        (["--stage", "T-tiny", "--widths", "64"], "no SAEs of those widths (its widths: [128])"),
        (["--stage", "T-tiny", "--widths", "0"], "--widths must be >= 1"),
        (["--stage", "E-tiny", "--widths", "128"], "T-* and W-* stages only"),
        (["--stage", "T-tiny", "--committed", str(tmp_path / "no_results")], "no_results: not a folder"),
        (["--stage", "C-gemma3-270m-9-standard", "--model-path", "m.gguf", "--n-layers", "10"], "add --no-eval"),
    ]
    for extra, msg in cases:
        argv = ["--plan", str(plan), "--corpus", str(corpus), "--out", str(out), *extra]
        with pytest.raises(SystemExit) as e:
            rs.main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith("error: ") and msg in err and "\n" not in err, err
    # the machine's memory as stage.sh names it, unreadable: one line naming the variable, nothing written
    with pytest.MonkeyPatch.context() as m:
        m.setenv("SAE_RDP_HOST_MEMORY_GIB", "128GB")
        with pytest.raises(SystemExit) as e:
            rs.main(["--plan", str(plan), "--corpus", str(corpus), "--out", str(out), "--stage", "T-tiny"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == "error: SAE_RDP_HOST_MEMORY_GIB='128GB' is not a positive number of GiB", err
    assert not out.exists()


def test_pick_todo_by_width_and_count(rs, tmp_path):
    """--widths trains only SAEs of those widths (plan order), --max-saes caps them, trained ones are skipped:
    a fresh machine retrains the first widths' SAEs unless told which (as 2026-12-03's JumpReLU call did)."""
    fams = {f"f{i}": [{"width": w}] for i, w in enumerate([4, 4, 16, 16, 16])}
    done_dir = rs.sae_dir(tmp_path, "f2")
    done_dir.mkdir(parents=True)
    (done_dir / "train_summary.json").write_text("{}")
    assert rs.pick_todo(fams, tmp_path, None, None) == (["f0", "f1", "f3", "f4"], ["f2"], [])
    assert rs.pick_todo(fams, tmp_path, [16], None) == (["f3", "f4"], ["f2"], [])
    assert rs.pick_todo(fams, tmp_path, [16, 4], 3) == (["f0", "f1", "f3"], ["f2"], [])
    assert rs.pick_todo(fams, tmp_path, None, 1) == (["f0"], ["f2"], [])


def test_pick_todo_skips_committed_families(rs, tmp_path):
    """With --committed, a family whose train summary collect.py committed (results/<model>-L<layer>/
    train_summaries/, the SAE folder's path with / as __) is not trained again: a fresh machine's --max-saes 2
    takes the first two not committed (2026-12-07 retrained four committed ReLU-L1 SAEs without it)."""
    fam = "m1/blocks.15.hook_resid_post/standard/w{w}/l1_coefficient=cal{c}/s0"
    fams = {fam.format(w=w, c=c): [{"width": w, "model": "m1", "hook": "blocks.15.hook_resid_post"}]
            for w in (4, 16) for c in range(3)}  # fmt: skip
    names = list(fams)
    summaries = tmp_path / "results" / "m1-L15" / "train_summaries"
    summaries.mkdir(parents=True)
    for f in names[:4]:  # as collect.py names them (hand-written here)
        (summaries / (f.replace("=", "-").replace("/", "__") + ".json")).write_text("{}")
    (summaries / "m1__blocks.15.hook_resid_post__standard__w16__l1_coefficient-cal2__s0__cal.json").write_text("{}")
    out = tmp_path / "run"
    assert rs.pick_todo(fams, out, None, 2, tmp_path / "results") == (names[4:], [], names[:4])
    assert rs.pick_todo(fams, out, None, 2) == (names[:2], [], [])  # without it: the plan's first two
    assert rs.pick_todo(fams, out, [4], None, tmp_path / "results") == ([], [], names[:4])
    other = tmp_path / "other"
    (other / "m1-L9" / "train_summaries").mkdir(parents=True)  # another layer's folder: nothing committed here
    assert rs.pick_todo(fams, out, None, None, other) == (names, [], [])


def _interp_ref(pts, t):
    """Reference: scan every pair of grid neighbours; the first bracketing pair gives the log-log line through
    it evaluated at t (solved as a 2x2 linear system, not the closed form used by the code)."""
    pts = sorted(pts)
    for (ca, la), (cb, lb) in zip(pts, pts[1:]):
        if min(la, lb) <= t <= max(la, lb) and la != lb:
            slope, icpt = np.linalg.solve([[np.log(la), 1.0], [np.log(lb), 1.0]], [np.log(ca), np.log(cb)])
            return float(f"{np.exp(slope * np.log(t) + icpt):.3g}"), True
    return sorted(pts, key=lambda p: (np.log(p[1]) - np.log(t)) ** 2)[0][0], False


def test_calibration_choice(rs, tmp_path):
    """calN = log-log interpolation between the bracketing grid points, else the nearest on a log scale."""
    recipe = json.loads((EXP / "recipe.json").read_text())
    recipe["architectures"]["standard"]["calibration"].pop("final_over_calibration_l0", None)  # aim = target
    stage = "C-gemma3-270m-9-standard"
    saes = rs.calibration_saes(recipe, stage)
    grid = recipe["architectures"]["standard"]["calibration"]["grid"]
    assert len(saes) == len(grid) * len(recipe["widths"])
    fams = {rs.family(s): [s] for s in saes}
    rng = np.random.default_rng(1)
    l0s = {}
    for fam, (s,) in fams.items():
        d = rs.sae_dir(tmp_path, fam)
        d.mkdir(parents=True)
        # decreasing in the coefficient (as an L1 penalty does), with noise; the widest width never reaches 16
        floor = 30.0 if s["width"] == max(recipe["widths"]) else 5.0
        l0s[fam] = float(floor + 4000.0 / s["l1_coefficient"] ** 1.2 * rng.uniform(0.9, 1.1))
        (d / "train_summary.json").write_text(json.dumps({"heldout_l0": l0s[fam]}))
    res = rs.write_calibration(tmp_path, stage, fams, recipe)
    targets = recipe["architectures"]["standard"]["calibration"]["target_l0"]
    for w in recipe["widths"]:
        pts = [(s["l1_coefficient"], l0s[f]) for f, (s,) in fams.items() if s["width"] == w]
        for i, t in enumerate(targets):
            want, bracketed = _interp_ref(pts, t)
            assert res["levels"][str(w)][f"cal{i}"] == pytest.approx(want, rel=1e-9)
            assert res["bracketed"][str(w)][f"cal{i}"] == bracketed
    assert not all(res["bracketed"][str(max(recipe["widths"]))].values())  # 16 below the floor: nearest value
    plan_saes = [
        s for s in json.loads((EXP / "plan.json").read_text())["saes"] if s["stage"] == "T-gemma3-270m-9-standard"
    ]
    resolved = rs.resolve_levels(plan_saes, tmp_path, recipe)
    assert len(resolved) == 20
    assert all(s["l1_coefficient"] == res["levels"][str(s["width"])][s["level_name"]] for s in resolved)
    # a recipe that expects final SAEs to end at r x the short runs' L0 aims the calibration at target / r
    drifted = json.loads(json.dumps(recipe))
    drifted["architectures"]["standard"]["calibration"]["final_over_calibration_l0"] = 0.25
    res = rs.write_calibration(tmp_path, stage, fams, drifted)
    assert res["aim_l0"] == [t / 0.25 for t in targets] and res["final_over_calibration_l0"] == 0.25
    for w in recipe["widths"]:
        pts = [(s["l1_coefficient"], l0s[f]) for f, (s,) in fams.items() if s["width"] == w]
        for i, t in enumerate(targets):
            assert res["levels"][str(w)][f"cal{i}"] == pytest.approx(_interp_ref(pts, t / 0.25)[0], rel=1e-9)


def test_calibrated_value_cases(rs):
    pts = [(10.0, 400.0), (20.0, 100.0), (40.0, 10.0)]
    assert rs.calibrated_value(pts, 200.0) == (float(f"{10 * 2**0.5:.3g}"), True)  # halfway in log L0
    assert rs.calibrated_value(pts, 100.0) == (20.0, True)
    assert rs.calibrated_value(pts, 5.0) == (40.0, False) and rs.calibrated_value(pts, 900.0) == (10.0, False)
    # the measured Gemma-3-270M curve (2M tokens, 4k wide): 45 -> 371, 64 -> 14; 256 lies in between
    v, ok = rs.calibrated_value([(32.0, 755.0), (45.0, 370.8), (64.0, 14.1)], 256.0)
    assert ok and 45 < v < 64


def test_calibration_made_with_another_normalisation_is_refused(rs, tmp_path, capsys):
    """A calibration file records the normalisation it was made with (older ones: the training default); the T
    stage refuses levels calibrated on another input scale than the recipe now trains with."""
    recipe = json.loads((EXP / "recipe.json").read_text())
    assert rs.normalization(recipe, "standard") == "standardize"
    assert rs.normalization(recipe, "topk") == recipe["training"]["normalize_activations"]
    plan_saes = [
        s for s in json.loads((EXP / "plan.json").read_text())["saes"] if s["stage"] == "T-gemma3-270m-9-standard"
    ]
    levels = {str(w): {f"cal{i}": 1.0 + i for i in range(5)} for w in recipe["widths"]}
    cal = tmp_path / "calibration_C-gemma3-270m-9-standard.json"
    cal.write_text(json.dumps({"stage": "C-gemma3-270m-9-standard", "complete": True, "levels": levels}))
    with pytest.raises(SystemExit) as e:
        rs.resolve_levels(plan_saes, tmp_path, recipe)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "expected_average_only_in" in err[0] and "rerun stage" in err[0]
    cal.write_text(json.dumps({"stage": "x", "normalize_activations": "standardize", "levels": levels}))
    assert len(rs.resolve_levels(plan_saes, tmp_path, recipe)) == 20


def test_eval_stage_leaves_out_saes_of_a_stale_calibration(rs, tmp_path):
    """E-* evaluates what can have been trained: an architecture whose calibration was made on another input scale
    is left out by id (its T stage refuses to train), not a reason to refuse the whole eval stage."""
    recipe = json.loads((EXP / "recipe.json").read_text())
    plan = json.loads((EXP / "plan.json").read_text())
    levels = {str(w): {f"cal{i}": 1.0 + i for i in range(5)} for w in recipe["widths"]}
    stale = {"stage": "C-gemma3-270m-9-jumprelu", "normalize_activations": "expected_average_only_in", "levels": levels}
    (tmp_path / "calibration_C-gemma3-270m-9-jumprelu.json").write_text(json.dumps(stale))
    (tmp_path / "calibration_C-gemma3-270m-9-standard.json").write_text(
        json.dumps({"stage": "C-gemma3-270m-9-standard", "normalize_activations": "standardize", "levels": levels})
    )
    fams, left_out = rs.eval_stage_saes(plan, "E-gemma3-270m-9", tmp_path, recipe)
    want_out = {s["id"] for s in plan["saes"] if s["stage"] == "T-gemma3-270m-9-jumprelu"}
    assert want_out and set(left_out) == want_out
    archs = {s["architecture"] for members in fams.values() for s in members}
    assert "standard" in archs and "jumprelu" not in archs
    l1 = [s["l1_coefficient"] for m in fams.values() for s in m if "l1_coefficient" in s]
    assert l1 and set(l1) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_load_sae_folds_a_standardised_checkpoint(rs, tmp_path):
    """A checkpoint of a normalize_activations="standardize" run, loaded for the eval (whitening folded by
    SAELens), equals the training SAE fed standardised inputs, mapped back."""
    from sae_lens import TrainingSAE
    from safetensors.torch import load_file

    from sae_rdp_plugin.train.config import TrainConfig
    from sae_rdp_plugin.train.lm import SAESpec, train_saes

    g = torch.Generator().manual_seed(0)
    d, b = 12, 64
    scale = torch.ones(d)
    scale[2] = 50.0  # one dimension with most of the variance
    data = [{"h": torch.randn(b, d, generator=g) * scale + 3.0} for _ in range(10)]
    cfg = TrainConfig(
        "standard", d_in=d, d_sae=24, batch_size=b, tokens=6 * b, n_checkpoints=1, n_batches_for_norm_estimate=2,
        normalize_activations="standardize", seed=0,
    )  # fmt: skip
    train_saes(iter(data), [SAESpec("h", cfg, tmp_path / "s")], tokens=6 * b, fast=False, progress=False)
    (ck,) = [p for p in (tmp_path / "s" / "checkpoints").iterdir() if p.is_dir()]
    w = load_file(str(ck / "activation_whitening.safetensors"))
    x = torch.cat([t["h"] for t in data[8:]])
    with torch.no_grad():
        a = rs.load_sae(ck, "cpu")(x)
        z = (x - w["mean"].float()) @ w["matrix"].float()
        ref = TrainingSAE.load_from_disk(ck, device="cpu")(z) @ w["inverse_matrix"].float() + w["mean"].float()
    assert torch.allclose(a, ref, atol=1e-3, rtol=1e-4) and (a - x).abs().mean() < x.abs().mean()


def test_train_config_takes_the_recipes_per_architecture_settings(rs):
    import argparse

    recipe = json.loads((EXP / "recipe.json").read_text())
    recipe["architectures"]["jumprelu"]["sae_kwargs"] = {"jumprelu_bandwidth": 0.1}
    args = argparse.Namespace(batch_size=None, tokens_scale=1.0, device="cpu")
    base = {"model": "m", "hook": HOOK, "width": 256, "seed": 0, "tokens": 8192 * 4, "checkpoint_of_final": False}
    jr = rs.train_config({**base, "architecture": "jumprelu", "l0_coefficient": 2.0}, 64, recipe, args, 0)
    a = recipe["architectures"]["jumprelu"]
    assert jr.sae_config_dict()["jumprelu_bandwidth"] == 0.1
    assert jr.normalize_activations == a.get("normalize_activations", recipe["training"]["normalize_activations"])
    assert jr.threshold_lr_scale == a.get("threshold_lr_scale", 1.0) != 1.0
    st = rs.train_config({**base, "architecture": "standard", "l1_coefficient": 2.0}, 64, recipe, args, 0)
    assert st.normalize_activations == "standardize" and st.sae_kwargs == {}
    assert st.sae_config_dict()["normalize_activations"] == "covariance_whitening"  # SAELens's path, ours inside


def test_wsae_stage_trains_weighted_saes_with_the_variance_cap(rs, tmp_path):
    """W-wsae: weighted_topk SAEs at alpha 0 / 1 and the capped variant, each with a core and an rdp_proxies JSON
    under the weighted release; the cap reaches the saved gamma (alpha 1 with and without it differ only there)
    and is recorded in the train summary."""
    from safetensors.torch import load_file

    corpus, _ = tiny_corpus(tmp_path)
    saes = []
    for alpha, cap in ((0.0, None), (1.0, None), (1.0, 0.5)):
        e = {**plan_entry("weighted_topk", "k", 4, 1.0), "alpha": alpha, "stage": "W-wsae"}
        e["id"] = f"tiny-gpt2/{HOOK}/weighted_topk/w128/alpha={alpha}" + (f"/capq={cap}" if cap else "") + "/s0"
        saes += [{**e, "variance_cap_quantile": cap} if cap else e]
    (tmp_path / "plan.json").write_text(json.dumps({"saes": saes}))
    out = tmp_path / "out"
    argv = ["--plan", str(tmp_path / "plan.json"), "--stage", "W-wsae", "--corpus", str(corpus), "--out", str(out),
            "--n-layers", "2", "--batch-size", "64", "--buffer-tokens", "128", "--eval-batches", "2",
            "--eval-batch-prompts", "4"]  # fmt: skip
    assert rs.main(argv) == 0
    core = {json.loads(f.read_text())["sae_lens_id"]: f.name for f in (out / "core").glob("*.json")}
    prox = sorted(f.name for f in (out / "rdp_proxies").glob("*.json"))
    assert len(core) == 3 and prox == sorted(core.values())
    assert {json.loads(f.read_text())["sae_lens_release_id"] for f in (out / "core").glob("*.json")} == {
        "table2-tiny-gpt2-L1-weighted_topk"
    }
    base = out / "saes" / f"tiny-gpt2/{HOOK}/weighted_topk/w128"
    summ = json.loads((base / "alpha-1.0/capq-0.5/s0/train_summary.json").read_text())
    assert summ["variance_cap_quantile"] == 0.5 and summ["alpha"] == 1.0
    g_cap = load_file(str(base / "alpha-1.0/capq-0.5/s0/gamma.safetensors"))
    g_raw = load_file(str(base / "alpha-1.0/s0/gamma.safetensors"))
    var = g_raw["variance"]
    cap = torch.quantile(var, 0.5)
    # gamma ~ min(var, cap)^alpha, normalised: the ratio of two dimensions above the cap is 1, below it var_i/var_j
    hi, lo = var >= cap, var < cap
    assert hi.sum() >= 2 and lo.sum() >= 2
    gc = g_cap["gamma"]
    assert torch.allclose(gc[hi], gc[hi][0].expand(int(hi.sum())), rtol=1e-6)
    assert not torch.allclose(g_raw["gamma"][hi], g_raw["gamma"][hi][0].expand(int(hi.sum())), rtol=1e-3)


def test_eval_json_names_unique_across_the_plan(rs):
    """Every SAE of the committed plan (checkpoints at their token step) has its own eval JSON name, in particular
    TopK and BatchTopK at one width and k (they share an SAE id and differ in release only)."""
    plan = json.loads((EXP / "plan.json").read_text())
    names = {}
    for s in plan["saes"]:
        step = str(s["tokens"]) if s["checkpoint_of_final"] else "final"
        name = rs.json_name(s, step)  # calibrated levels stay "calN" in the plan; still one name per SAE
        assert name not in names, (s["id"], names.get(name))
        names[name] = s["id"]
    archs = {n.split("__", 1)[0] for n in names}
    assert {"topk", "batchtopk"} <= archs and len(names) > 100
    same_id = [n for n in names if n.startswith("topk__") and "batchtopk__" + n.removeprefix("topk__") in names]
    assert same_id  # the collision this name prevents exists in the plan
    name = rs.eval_json_name("table2-gemma3-270m-L9-batchtopk", "blocks.9.hook_resid_post__w16384_k16_s0_step_final")
    assert name == "batchtopk__blocks_9_hook_resid_post__w16384_k16_s0_step_final.json"


def test_corpus_provenance_against_the_committed_build(rs, tmp_path):
    """A call's corpus build is compared with the committed build of the same tokenizer (a rebuild differs when a
    registry stopped serving a pinned archive); another tokenizer's build or a missing hash compares as None."""
    man = tmp_path / "corpus_manifest.json"
    builds = [
        {"manifest": {"tokenizer": "m1", "tokens_sha256": "aa"}},
        {"manifest": {"tokenizer": "m2", "tokens_sha256": "bb"}},
    ]
    man.write_text(json.dumps({"builds": builds}))
    assert rs.corpus_provenance({"tokenizer": "m1", "tokens_sha256": "aa"}, man)["matches_manifest"] is True
    got = rs.corpus_provenance({"tokenizer": "m2", "tokens_sha256": "aa"}, man)
    assert got == {"tokenizer": "m2", "tokens_sha256": "aa", "manifest_tokens_sha256": "bb", "matches_manifest": False}
    assert rs.corpus_provenance({"tokenizer": "m3", "tokens_sha256": "aa"}, man)["matches_manifest"] is None
    assert rs.corpus_provenance({"tokenizer": "m1"}, man)["matches_manifest"] is None
    assert (
        rs.corpus_provenance({"tokenizer": "m1", "tokens_sha256": "aa"}, tmp_path / "none.json")["matches_manifest"]
        is None
    )
    # the committed manifest holds both models' builds
    committed = rs.corpus_provenance({"tokenizer": "gemma3-270m", "tokens_sha256": "x"})
    assert committed["matches_manifest"] is False and len(committed["manifest_tokens_sha256"]) == 64


def test_merge_complete_keeps_the_evals_a_call_did_not_run(rs):
    """An absorption-only E call leaves sparse probing's flag as the calls before set it (it once dropped it)."""
    prev = {"sparse_probing": False}
    assert rs.merge_complete(prev, {"absorption": {"complete": True}}, True) == {
        "sparse_probing": False,
        "absorption": True,
    }
    assert rs.merge_complete(prev, {"sparse_probing": {"complete": True}}, False) == {"sparse_probing": False}
    assert rs.merge_complete(None, {"sparse_probing": {"complete": True}}, True) == {"sparse_probing": True}


def test_progress_export_during_a_call(rs, tmp_path):
    """ProgressExport: a bundle after a result, at most one per interval, also before the stage file exists (a
    stage's first call); nothing without --export."""
    out, dest = tmp_path / "out", tmp_path / "x"
    (out / "core").mkdir(parents=True)
    (out / "core" / "a.json").write_text("{}")
    now = [100.0]
    p = rs.ProgressExport(out, dest, "T-x", interval=20.0, clock=lambda: now[0])
    p()
    with tarfile.open(dest / "T-x.tar.xz") as tar:
        assert tar.getnames() == ["core/a.json"]
    assert not (dest / "stage_T-x.json").exists() and p.n == 1
    (out / "core" / "b.json").write_text("{}")
    now[0] = 110.0
    p()  # within the interval: no new bundle
    with tarfile.open(dest / "T-x.tar.xz") as tar:
        assert tar.getnames() == ["core/a.json"]
    now[0] = 121.0
    (out / "stage_T-x.json").write_text('{"calls": []}')
    p()
    with tarfile.open(dest / "T-x.tar.xz") as tar:
        assert sorted(tar.getnames()) == ["core/a.json", "core/b.json", "stage_T-x.json"]
    assert (dest / "stage_T-x.json").is_file() and p.n == 2
    none = rs.ProgressExport(out, None, "T-x")
    none()
    assert none.n == 0


def test_core_workers_give_the_same_jsons(rs, tmp_path):
    """--core-workers 2: the core evals in spawned processes (but the first, profiled here) give the JSONs of one
    at a time, but for SAEBench's eval id and date; the record names the SAEs the workers evaluated."""
    import shutil

    plan, corpus, _ = _setup(tmp_path)
    out, export = tmp_path / "out", tmp_path / "export"
    assert rs.main(_argv(plan, corpus, out, export)) == 0

    def jsons() -> dict[str, dict]:
        got = {}
        for f in sorted((out / "core").glob("*.json")):
            d = json.loads(f.read_text())
            del d["eval_id"], d["datetime_epoch_millis"]
            got[f.name] = d
        return got

    one = jsons()
    assert len(one) == 5
    shutil.rmtree(out / "core")
    shutil.rmtree(out / "rdp_proxies")
    assert rs.main([*_argv(plan, corpus, out, export), "--core-workers", "2"]) == 0
    assert jsons() == one
    call = json.loads((out / "stage_T-tiny.json").read_text())["calls"][-1]
    assert call["trained"] == [] and len(call["core_evaluated"]) == 5 and len(call["proxies_evaluated"]) == 5
    first = call["core_evaluated"][0]
    want = {
        "requested": 2, "started": 2, "eval_peak_gib": None, "free_gib": None,  # no GPU: the request stands
        "evaluated": sorted(set(call["core_evaluated"]) - {first}), "error": None,
    }  # fmt: skip
    assert call["core_workers"] == want
    assert not call["core_profile"]  # --profile-core 0 by default: the first in-process eval unprofiled
    for sid in call["core_workers"]["evaluated"]:  # the workers' seconds and parts reach the record
        secs = call["eval_seconds"][sid]
        assert secs["core"] > 0 and secs["core_phases"]["run_evals"] > 0
        assert sorted(call["saebench_fold"]) == sorted(call["core_evaluated"])


@pytest.mark.parametrize(
    ("requested", "peak_gib", "free_gib", "want"),
    [
        (4, None, None, 4),  # CPU: nothing measured, the request stands
        (4, 60, 70, 1),  # Gemma-3's core eval on an 80 GB card: one fits (61 GiB with the overhead)
        (4, 60, 130, 2),  # the same on the H200
        (4, 60, 50, 0),  # not even one: the stage's own process evaluates (and may run out itself)
        (2, 1, 100, 2),  # a small model: the request caps it
        (3, 0, 2.5, 2),  # the per-worker overhead alone (1 GiB) counts
    ],
)
def test_workers_that_fit(rs, requested, peak_gib, free_gib, want):
    g = 2**30
    peak = None if peak_gib is None else int(peak_gib * g)
    free = None if free_gib is None else int(free_gib * g)
    assert rs.workers_that_fit(requested, peak, free) == want
    with pytest.raises(ValueError):
        rs.workers_that_fit(0, peak, free)


def test_core_eval_out_of_gpu_memory_is_recorded_and_exported(rs, tmp_path, monkeypatch, capsys):
    """A core eval that runs out of GPU memory (an 80 GB card beside another GPU process, 2026-12-05) no longer
    loses the call: the JSONs done so far, the record (``core_oom``, the SAEs left) and the bundle are written,
    the call exits 1 with one error line naming the knob, and the next call evaluates the rest."""
    plan, corpus, _ = _setup(tmp_path)
    out, export = tmp_path / "out", tmp_path / "export"
    real = rs.core_eval
    calls = []

    def oom_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB.")
        return real(*a, **k)

    monkeypatch.setattr(rs, "core_eval", oom_on_second)
    assert rs.main(_argv(plan, corpus, out, export)) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]  # (SAELens's tqdm too)
    assert len(err) == 1 and err[0].startswith("error: the core eval of ") and "--eval-batch-prompts" in err[0]
    call = json.loads((out / "stage_T-tiny.json").read_text())["calls"][-1]
    assert call["core_oom"]["sae"] in call["evals_left_for_later"] and "out of memory" in call["core_oom"]["error"]
    assert len(call["core_evaluated"]) == 1 and len(call["evals_left_for_later"]) == 4, call
    assert len(list((out / "core").glob("*.json"))) == 1
    with tarfile.open(export / "T-tiny.tar.xz") as tar:
        names = tar.getnames()
    assert "stage_T-tiny.json" in names and sum(n.startswith("core/") for n in names) == 1
    monkeypatch.setattr(rs, "core_eval", real)
    assert rs.main(_argv(plan, corpus, out, export)) == 0  # the next call: the four left
    call = json.loads((out / "stage_T-tiny.json").read_text())["calls"][-1]
    assert len(call["core_evaluated"]) == 4 and call["core_oom"] is None
    assert len(list((out / "core").glob("*.json"))) == 5


def test_core_worker_failure_is_reported_not_raised(rs, tmp_path, monkeypatch):
    """A worker whose core eval raises: run_parallel returns what was done and the worker's last error line (the
    stage then evaluates the rest itself), and its processes are gone."""
    import argparse
    import time

    monkeypatch.syspath_prepend(str(Path(rs.__file__).parent))
    import core_workers

    plan_sae = {"id": "m/h/topk/w4/k=1/s0", "hook": "blocks.0.hook_resid_post", "model": "m"}
    args = argparse.Namespace(device="cpu")
    job = (plan_sae, tmp_path / "no_such_sae", "final", tmp_path / "core" / "x.json")
    done, err = core_workers.run_parallel([job, job], None, None, set(), args, time.time() + 120, 2)
    assert done == {} and err is not None and err.startswith("FileNotFoundError") and "no_such_sae" in err, err
    assert not (tmp_path / "core").exists()


def test_longest_eval_leaves_out_profiled_evals(rs):
    """The allowance for the next eval before --time-budget: the longest unprofiled (core + proxies) seconds; a
    profiled eval counts only while every eval so far was profiled."""
    eval_s = {"a": (76.5, 0.3), "b": (10.6, 0.1), "c": (11.2, 0.4)}
    assert rs.longest_eval_s(eval_s, {"a"}) == pytest.approx(11.6)
    assert rs.longest_eval_s(eval_s, set()) == pytest.approx(76.8)
    assert rs.longest_eval_s({"a": (76.5, 0.3)}, {"a"}) == pytest.approx(76.8)
    assert rs.longest_eval_s({}, set()) == 0.0


def test_export_leaves_out_other_models_calibrations_and_baselines(rs, tmp_path):
    """stage.sh run copies every model's committed calibrations and LLM baselines into OUT: a SmolLM2 stage's bundle
    holds SmolLM2's only; a stage id without a model-layer (W-wsae) keeps them all."""
    out = tmp_path / "out"
    (out / "core").mkdir(parents=True)
    (out / "core" / "a.json").write_text("{}")
    for ml in ("gemma3-270m-9", "smollm2-135m-15"):
        (out / f"calibration_C-{ml}-standard.json").write_text("{}")
    for model, layer in (("gemma3-270m", 9), ("smollm2-135m", 15)):
        f = out / "probing/sae_probes" / f"baseline_results_{model}/normal_setting/ds_blocks.{layer}_logreg.json"
        f.parent.mkdir(parents=True)
        f.write_text("{}")
    with tarfile.open(rs.export(out, tmp_path / "x", "T-smollm2-135m-15-topk")) as tar:
        names = sorted(tar.getnames())
    assert names == [
        "calibration_C-smollm2-135m-15-standard.json",
        "core/a.json",
        "probe_baselines/baseline_results_smollm2-135m/normal_setting/ds_blocks.15_logreg.json",
    ]
    with tarfile.open(rs.export(out, tmp_path / "y", "W-wsae")) as tar:
        assert len([n for n in tar.getnames() if "gemma3" in n or "smollm2" in n]) == 4

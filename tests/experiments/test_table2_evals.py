"""The E-* stage of experiments/table2/run_stage.py: SAEBench's own sparse_probing_sae_probes on every SAE a
T-* stage trained (finals and a checkpoint), on a random tiny GPT-2 with a byte-level tokenizer, offline, one
sae-probes dataset. Resumable across calls (a short time budget leaves SAEs for the next call).

Checked independently of the code under test: SAEBench's validator accepts each JSON; the file names, release
and SAE ids equal those of the core JSONs the T-* stage wrote for the same SAEs; sae-probes kept one results
folder per SAE (a shared one would silently reuse the first SAE's probes); the activations sae-probes probed
are the transformers model's own last-token hidden state at the hook (not the HookedTransformer's); the second
call evaluates only what the first left and leaves the first call's files untouched. SAEs probed in spawned
workers give the in-process JSONs (all fields but the run's uuid and time)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_gemma3_probing import _char_tokenizer
from test_table2_stage import plan_entry, tiny_corpus

ROOT = Path(__file__).resolve().parents[2]
EXP = ROOT / "experiments" / "table2"
HOOK = "blocks.1.hook_resid_post"
DS = "117_us_state_FL"  # 1,000 prompts of ~14 characters: the cheapest forward pass

_missing = [m for m in ("sae_probes", "zstandard", "sae_bench") if importlib.util.find_spec(m) is None]
needs_probes = pytest.mark.skipif(bool(_missing), reason=f"{_missing} not installed (extra [probes])")


@pytest.fixture
def rs(monkeypatch):
    monkeypatch.syspath_prepend(str(EXP))
    return importlib.import_module("run_stage")


def _word_tokenizer(n_per_letter: int = 10):
    """A word-level HF fast tokenizer: the absorption prompt's words, the 52 letters and n_per_letter random
    lowercase words per first letter (SAEBench's absorption draws its words from the vocabulary)."""
    import random
    import string

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    words = ["<pad>", "<bos>", "<eos>", "<unk>", ":", "has", "the", "first", "letter"]
    words += [*string.ascii_uppercase, *string.ascii_lowercase]
    for c in string.ascii_lowercase:
        while sum(w[0] == c and len(w) > 1 for w in words) < n_per_letter:
            w = c + "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 6)))
            if w not in words:
                words.append(w)
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def _setup(tmp: Path) -> tuple[Path, Path, Path, Path]:
    corpus, _ = tiny_corpus(tmp)

    def sae(arch: str, field: str, lev: float, frac: float) -> dict:
        return plan_entry(arch, field, lev, frac, width=64)

    saes = [sae("topk", "k", 4, 0.5), sae("topk", "k", 4, 1.0), sae("standard", "l1_coefficient", 2.0, 1.0)]
    (tmp / "plan.json").write_text(json.dumps({"saes": saes}))
    (tmp / "probes.json").write_text(json.dumps({"subset": [DS, "96_spam_is"]}))
    tok_dir = tmp / "tok"
    _char_tokenizer().save_pretrained(str(tok_dir))
    return tmp / "plan.json", corpus, tmp / "probes.json", tok_dir


def _no_hub(*a, **k):
    raise AssertionError("a model was requested from the hub")


@pytest.fixture(scope="module")
def seq(tmp_path_factory):
    """The T stage, then the E stage with SAEs probed in process (``--probe-sae-workers 0``) in two calls: the
    first with a budget too short for more than one unit of each phase, the second for the rest and the bundle.
    Returns the paths, the E arguments (``--out`` last) and the first call's JSON and its mtime."""
    from transformer_lens import HookedTransformer

    tmp = tmp_path_factory.mktemp("seq")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(EXP))
        rs = importlib.import_module("run_stage")
        # sae-probes imports xgboost at module level (only its unused xgboost baseline needs it)
        importlib.import_module("probing_stage").gemma_probing().install_xgboost_stub()
        mp.setattr(HookedTransformer, "from_pretrained_no_processing", staticmethod(_no_hub))
        mp.setattr(HookedTransformer, "from_pretrained", staticmethod(_no_hub))
        plan, corpus, probes, tok_dir = _setup(tmp)
        out = tmp / "out"
        common = ["--plan", str(plan), "--corpus", str(corpus), "--n-layers", "2"]
        train = ["--stage", "T-tiny", "--batch-size", "64", "--buffer-tokens", "128", "--eval-batches", "1"]
        assert rs.main([*common, "--out", str(out), *train, "--eval-batch-prompts", "4"]) == 0
        ev = [*common, "--stage", "E-tiny-gpt2-1", "--probe-datasets-file", str(probes), "--probe-datasets", "1"]
        ev += ["--probe-ks", "1", "2", "--probe-workers", "0", "--tokenizer", str(tok_dir)]
        assert rs.main([*ev, "--probe-sae-workers", "0", "--time-budget", "0.001", "--out", str(out)]) == 0
        first = sorted((out / "sparse_probing_sae_probes").glob("*.json"))
        mtime = [f.stat().st_mtime_ns for f in first]
        assert rs.main([*ev, "--probe-sae-workers", "0", "--export", str(tmp / "export"), "--out", str(out)]) == 0
    return {"rs": rs, "tmp": tmp, "out": out, "tok_dir": tok_dir, "ev": ev, "first": first, "mtime": mtime}


@needs_probes
def test_eval_stage_sparse_probing_resumable(seq, tmp_path):
    from sae_bench.evals.sparse_probing_sae_probes.eval_output import SparseProbingSaeProbesEvalOutput
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

    from sae_rdp_plugin.lm.models import hf_model

    out, tok_dir, first = seq["out"], seq["tok_dir"], seq["first"]
    assert len(first) == 1
    rec = json.loads((out / "stage_E-tiny-gpt2-1.json").read_text())
    c1, c2 = (c["sparse_probing"] for c in rec["calls"])
    assert len(c1["evaluated"]) == 1 and len(c1["left"]) == 2 and not c1["complete"]
    assert c2["existing"] == c1["evaluated"] and sorted(c2["evaluated"]) == sorted(c1["left"]) and c2["complete"]
    assert (
        rec["complete"] == {"sparse_probing": True}
        and rec["gpu_s_total"] == 0.0
        and all(c["wall_s"] > 0 for c in rec["calls"])
    )
    assert first[0].stat().st_mtime_ns == seq["mtime"][0]

    files = sorted((out / "sparse_probing_sae_probes").glob("*.json"))
    core = sorted((out / "core").glob("*.json"))
    assert [f.name for f in files] == [f.name for f in core] and len(files) == 3
    for f, cf in zip(files, core):
        validate_eval_output_format_file(str(f), SparseProbingSaeProbesEvalOutput)
        d, c = json.loads(f.read_text()), json.loads(cf.read_text())
        assert d["eval_type_id"] == "sparse_probing_sae_probes"
        assert (d["sae_lens_release_id"], d["sae_lens_id"]) == (c["sae_lens_release_id"], c["sae_lens_id"])
        assert d["sae_cfg_dict"]["training_architecture"] == c["sae_cfg_dict"]["training_architecture"]
        assert d["eval_config"]["dataset_names"] == [DS] and d["eval_config"]["ks"] == [1, 2]
        (det,) = d["eval_result_details"]
        assert det["dataset_name"] == DS and 0 <= det["llm_test_accuracy"] <= 1
        assert all(0 <= det[f"sae_top_{k}_test_accuracy"] <= 1 for k in (1, 2))
    # one sae-probes results folder per SAE (a shared folder would reuse the first SAE's probes)
    per_sae = [p for p in (out / "probing" / "sae_probes").iterdir() if p.name.endswith("_custom_sae")]
    assert len(per_sae) == 3
    with tarfile.open(seq["tmp"] / "export" / "E-tiny-gpt2-1.tar.xz") as tar:
        assert sum(n.startswith("sparse_probing_sae_probes/") for n in tar.getnames()) == 3

    # the audit joins both folders per SAE (no duplicate-SAE conflict) and audits the probing proxy
    from sae_rdp_plugin.cli import main as cli_main

    proxy = "sparse_probing_sae_probes.sae.sae_top_1_test_accuracy"
    rc = cli_main(
        ["audit", "run", "--results", str(out / "core"), str(out / "sparse_probing_sae_probes"), "--out",
         str(tmp_path / "audit"), "--group-by", "--include-checkpoints", "--n-boot", "20", "--n-perm", "20",
         "--no-plots", "--proxy", f"{proxy}:-"]
    )  # fmt: skip
    assert rc == 0
    pooled = json.loads((tmp_path / "audit" / "rdp_audit_pooled_eval_results.json").read_text())
    assert pooled["eval_result_metrics"]["sweep"]["n_saes"] == 3
    assert [d["proxy"] for d in pooled["eval_result_details"]] == [proxy]

    # the activations sae-probes probed: the transformers model's block-1 output at each prompt's last token
    import pandas as pd
    from sae_probes.constants import DATA_PATH
    from transformers import AutoTokenizer

    acts = torch.load(out / "probing" / "model_acts" / "model_activations_tiny-gpt2" / f"{DS}_{HOOK}.pt")
    prompts = pd.read_csv(DATA_PATH / "cleaned_data" / f"{DS}.csv.zst", compression="zstd")["prompt"].tolist()
    hf, _ = hf_model("tiny-gpt2", n_layers=2, dtype="float32")
    # the saved tokenizer the stage read (ByteLevel.alphabet()'s order differs between builds)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert acts.shape == (len(prompts), hf.config.hidden_size)
    grab = []
    hf.transformer.h[1].register_forward_hook(lambda m, i, o: grab.append(o[0] if isinstance(o, tuple) else o))
    for i in (0, 5, len(prompts) - 1):
        with torch.no_grad():
            hf(tok(prompts[i], return_tensors="pt")["input_ids"])
        torch.testing.assert_close(acts[i], grab[-1][0, -1], atol=1e-4, rtol=1e-4)


@needs_probes
def test_eval_stage_sae_workers_equal_sequential(seq, tmp_path):
    """SAEs probed in 2 spawned workers: JSONs equal to those probed in process (``seq``) in every field but
    the run's uuid and time; a deadline hit leaves no JSON for the SAEs not finished, the next call completes
    them, and a per-dataset result a killed call left in an SAE's sae-probes folder is not reused."""
    src, out = seq["out"], tmp_path / "out"
    shutil.copytree(src, out)
    shutil.rmtree(out / "sparse_probing_sae_probes")
    shutil.rmtree(out / "probing" / "saebench_out")
    for d in (out / "probing" / "sae_probes").glob("*_custom_sae"):
        shutil.rmtree(d)
    (out / "stage_E-tiny-gpt2-1.json").unlink()
    ev = [*seq["ev"], "--probe-sae-workers", "2", "--out", str(out)]
    dest = out / "sparse_probing_sae_probes"

    # activations and baselines exist: the SAE phase starts past the deadline, 2 SAEs start, the first one
    # done ends the call
    assert seq["rs"].main([*ev, "--time-budget", "0.001"]) == 0
    c1 = json.loads((out / "stage_E-tiny-gpt2-1.json").read_text())["calls"][0]["sparse_probing"]
    assert c1["sae_workers"] == 2 and 1 <= len(c1["evaluated"]) <= 2 and not c1["complete"]
    assert c1["existing"] == [] and len(c1["evaluated"] + c1["left"]) == 3
    assert sorted(c1["sae_s"]) == sorted(c1["evaluated"])
    # only the finished SAEs' JSONs, no temporary file
    names = [p.name for p in dest.iterdir()]
    assert len(names) == len(c1["evaluated"]) and all(n.endswith(".json") and n[0] != "." for n in names)
    # what a worker killed mid-SAE may leave: a per-dataset result (here with impossible accuracies) for each
    # SAE without a JSON; sae-probes would skip that dataset and report it
    planted = 0
    for core in sorted((out / "core").glob("*.json")):
        if (dest / core.name).is_file():
            continue
        for f in (src / "probing" / "sae_probes" / f"{core.stem}_custom_sae").rglob("*.json"):
            g = out / f.relative_to(src)
            g.parent.mkdir(parents=True, exist_ok=True)
            g.write_text(json.dumps([{**e, "test_acc": -1.0} for e in json.loads(f.read_text())]))
            planted += 1
    assert planted == len(c1["left"])

    assert seq["rs"].main(ev) == 0
    c2 = json.loads((out / "stage_E-tiny-gpt2-1.json").read_text())["calls"][1]["sparse_probing"]
    assert sorted(c2["evaluated"]) == sorted(c1["left"]) and c2["complete"] and c2["sae_workers"] == 2
    ref = sorted((src / "sparse_probing_sae_probes").glob("*.json"))
    assert [f.name for f in sorted(dest.glob("*.json"))] == [f.name for f in ref] and len(ref) == 3
    for f in ref:
        # the eval config holds the work folder's paths
        a = json.loads(f.read_text())
        b = json.loads((dest / f.name).read_text().replace(str(out), str(src)))
        for d in (a, b):
            del d["eval_id"], d["datetime_epoch_millis"]
        assert a == b, f.name


@needs_probes
def test_eval_stage_bad_inputs_exit_2_before_writing(rs, tmp_path, capsys):
    plan, corpus, probes, _ = _setup(tmp_path)
    out = tmp_path / "out"
    base = ["--plan", str(plan), "--corpus", str(corpus), "--out", str(out), "--stage", "E-tiny-gpt2-1"]
    cases = [
        ([], "no trained SAE"),
        (["--probe-datasets-file", str(probes), "--probe-datasets", "3"], "--probe-datasets must be <= 2"),
        (["--probe-workers", "-1"], "--probe-workers must be >= 0"),
        (["--probe-sae-workers", "-1"], "--probe-sae-workers must be >= 0"),
        (["--evals", "absorption", "--absorption-config", '{"min_feats_for_eval": 0}'], "--absorption-config"),
        (["--evals", "absorption", "--absorption-config", "[1]"], "--absorption-config"),
        (["--stage", "E-tiny-gpt2-7"], "has no SAEs to evaluate"),
    ]
    for extra, msg in cases:
        with pytest.raises(SystemExit) as e:
            rs.main([*base, *extra])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith("error: ") and msg in err and "\n" not in err, err
    assert not out.exists()


def test_eval_stage_absorption_offline(rs, tmp_path, monkeypatch):
    """SAEBench's absorption eval through the E stage: nothing written outside OUT (site-packages, working
    directory), grad mode restored, no hub model; an SAE-independent 'not evaluable' stop writes nothing."""
    from sae_bench.evals.absorption import common
    from sae_bench.evals.absorption.eval_output import AbsorptionEvalOutput
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file
    from transformer_lens import HookedTransformer

    def no_hub(*a, **k):
        raise AssertionError("a model was requested from the hub")

    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", staticmethod(no_hub))
    monkeypatch.setattr(HookedTransformer, "from_pretrained", staticmethod(no_hub))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    site_artifacts = common.RESULTS_DIR
    existed = site_artifacts.exists()
    plan, corpus, _, _ = _setup(tmp_path)
    wtok = tmp_path / "wtok"
    _word_tokenizer().save_pretrained(str(wtok))
    out = tmp_path / "out"
    common_args = ["--plan", str(plan), "--corpus", str(corpus), "--out", str(out), "--n-layers", "2"]
    train = ["--stage", "T-tiny", "--batch-size", "64", "--buffer-tokens", "128", "--eval-batches", "1"]
    assert rs.main([*common_args, *train, "--eval-batch-prompts", "4"]) == 0
    ev = [*common_args, "--stage", "E-tiny-gpt2-1", "--evals", "absorption", "--tokenizer", str(wtok)]
    cfg = {"min_GT_probe_f1": 0.0, "k_sparse_probe_num_epochs": 2, "max_k_value": 3}

    # SAEBench writes nothing when too few letters have a good probe (27 > 26 letters): recorded, no file
    assert rs.main([*ev, "--absorption-config", json.dumps({**cfg, "min_feats_for_eval": 27})]) == 0
    rec = json.loads((out / "stage_E-tiny-gpt2-1.json").read_text())
    a = rec["calls"][0]["absorption"]
    assert "fewer than 27" in a["not_evaluable"] and a["evaluated"] == [] and len(a["left"]) == 3
    assert not list(out.glob("absorption_first_letter/*.json"))
    grad = torch.is_grad_enabled()
    assert rs.main([*ev, "--absorption-config", json.dumps({**cfg, "min_feats_for_eval": 2})]) == 0
    assert torch.is_grad_enabled() == grad
    rec = json.loads((out / "stage_E-tiny-gpt2-1.json").read_text())
    assert rec["complete"] == {"absorption": True} and len(rec["calls"][1]["absorption"]["evaluated"]) == 3

    files = sorted((out / "absorption_first_letter").glob("*.json"))
    core = sorted((out / "core").glob("*.json"))
    assert [f.name for f in files] == [f.name for f in core] and len(files) == 3
    for f, cf in zip(files, core):
        validate_eval_output_format_file(str(f), AbsorptionEvalOutput)
        d, c = json.loads(f.read_text()), json.loads(cf.read_text())
        assert d["eval_type_id"] == "absorption_first_letter" and d["eval_config"]["model_name"] == "tiny-gpt2"
        assert (d["sae_lens_release_id"], d["sae_lens_id"]) == (c["sae_lens_release_id"], c["sae_lens_id"])
        det = d["eval_result_details"]
        assert 2 <= len(det) <= 26 and len({x["first_letter"] for x in det}) == len(det)
        m = d["eval_result_metrics"]["mean"]
        assert m["mean_num_split_features"] == pytest.approx(np.mean([x["num_split_features"] for x in det]))
        assert 0 <= m["mean_absorption_fraction_score"] <= 1 and 0 <= m["mean_full_absorption_score"] <= 1
    # nothing written to site-packages or to the working directory
    assert site_artifacts.exists() == existed and list(cwd.iterdir()) == []
    assert (out / "absorption" / "results" / "probes").is_dir()

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
import time
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
    # each call records the tokenizer the prompts went through (tiny-gpt2 has no probe sentence: not checked)
    assert all(c["tokenizer"]["class"] and c["tokenizer"]["probe_ok"] is None for c in rec["calls"])
    assert all(c["host_memory"]["end"]["used_bytes"] > 0 for c in rec["calls"])  # the machine's memory recorded
    assert all(c["versions"]["sae-probes"] and c["versions"]["sae-bench"] for c in rec["calls"])
    assert c2["existing"] == c1["evaluated"] and sorted(c2["evaluated"]) == sorted(c1["left"]) and c2["complete"]
    # each SAE's decoder norms folded before SAEBench's run_eval, as its loader folds an SAE loaded by name
    for c in (c1, c2):
        assert sorted(c["saebench_fold"]) == sorted(c["evaluated"])
        assert all(f["folded"] is True for f in c["saebench_fold"].values())
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
        # the LLM baseline travels back (stage.sh puts it on the next fresh machine), under sae-probes' own path
        base = [n for n in tar.getnames() if n.startswith("probe_baselines/")]
        assert base == [f"probe_baselines/baseline_results_tiny-gpt2/normal_setting/{DS}_{HOOK}_logreg.json"]
        assert (
            tar.extractfile(base[0]).read()
            == (out / "probing" / "sae_probes" / base[0].removeprefix("probe_baselines/")).read_bytes()
        )

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
    assert sorted(c1["sae_s"]) == sorted(c1["evaluated"]) == sorted(c1["saebench_fold"])  # fold record from workers
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
        (["--evals", "absorption", "--absorption-probe-batch", "0"], "--absorption-probe-batch must be >= 1"),
        (["--evals", "absorption", "--absorption-workers", "0"], "--absorption-workers must be >= 1"),
        (["--evals", "absorption", "--absorption-vocab-sample", "0"], "--absorption-vocab-sample must be >= 1"),
        (["--stage", "E-tiny-gpt2-7"], "has no SAEs to evaluate"),
        (["--absorption-probe-only"], "--absorption-probe-only: an E-* stage with --evals absorption (alone)"),
        (["--evals", "absorption", "sparse_probing", "--absorption-probe-only"], "with --evals absorption (alone)"),
        (["--stage", "T-tiny", "--evals", "absorption", "--absorption-probe-only"], "an E-* stage"),
        (["--evals", "absorption", "--absorption-probe-only", "--absorption-inline"], "without --absorption-inline"),
        (["--evals", "absorption", "--beside", "T-tiny"], "--beside: only with --absorption-probe-only"),
    ]
    for extra, msg in cases:
        with pytest.raises(SystemExit) as e:
            rs.main([*base, *extra])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith("error: ") and msg in err and "\n" not in err, err
    assert not out.exists()


def _tiny_hooked(rs, tok_dir: Path, n_layers: int = 2):
    """The E stage's HookedTransformer of the tiny test model (random GPT-2), with the saved tokenizer."""
    import argparse

    from transformers import AutoTokenizer

    args = argparse.Namespace(model_path=None, n_layers=n_layers, random_init=False, device="cpu")
    _, hooked, _ = rs.load_models("tiny-gpt2", args)
    hooked.set_tokenizer(AutoTokenizer.from_pretrained(str(tok_dir)), default_padding_side="right")
    return hooked


class _JumpingClock:
    """absorption_stage's ``time`` in tests that cut a call at its deadline without waiting for one: the time
    module's functions, with ``time()`` moved forward once :meth:`jump` is called (the parent then sees its
    deadline passed; the spawned workers keep the real clock)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __getattr__(self, name: str):
        return getattr(time, name)

    def time(self) -> float:
        return time.time() + self.offset

    def jump(self) -> None:
        self.offset = 7200.0


def _absorption_setup(rs, tmp_path: Path):
    """The T-tiny stage trained under tmp_path/out (3 SAEs: finals and a checkpoint), the word tokenizer saved,
    the tiny HookedTransformer with it, and the E-tiny-gpt2-1 stage's (SAE, path, step) triples."""
    import types

    plan, corpus, _, _ = _setup(tmp_path)
    wtok = tmp_path / "wtok"
    _word_tokenizer().save_pretrained(str(wtok))
    out = tmp_path / "out"
    common_args = ["--plan", str(plan), "--corpus", str(corpus), "--out", str(out), "--n-layers", "2"]
    train = ["--stage", "T-tiny", "--batch-size", "64", "--buffer-tokens", "128", "--eval-batches", "1"]
    assert rs.main([*common_args, *train, "--eval-batch-prompts", "4"]) == 0
    fams, _ = rs.eval_stage_saes(json.loads(plan.read_text()), "E-tiny-gpt2-1", out, {})
    return types.SimpleNamespace(
        out=out, wtok=wtok, common_args=common_args, hooked=_tiny_hooked(rs, wtok), trained=rs.trained_saes(out, fams)
    )


def test_absorption_probe_batching_changes_nothing(rs, tmp_path):
    """The first-letter probe's activations gathered as the stage does (1,024 or 64 prompts per pass, left
    padding, the pass stopped after the hook's block) equal each prompt's own unpadded forward pass at position
    -6, on prompts of unequal token lengths; SAEBench's gathering with the tokenizer's right padding does not
    (so the test can fail). The probes' minibatch loader trains the same probe bit for bit."""
    import random

    from sae_bench.evals.absorption import common, probing
    from sae_bench.evals.absorption.prompting import SpellingPrompt

    ab = importlib.import_module("absorption_stage")
    tok_dir = tmp_path / "wtok"
    _word_tokenizer().save_pretrained(str(tok_dir))
    model = _tiny_hooked(rs, tok_dir, n_layers=3)
    hook = "blocks.1.hook_resid_post"
    rng = random.Random(0)
    words = [w for w in model.tokenizer.get_vocab() if len(w) > 2 and w.isalpha() and w.islower()]
    words = [w for w in words if w not in ("has", "the", "first", "letter")]

    def prompt() -> tuple:
        w, ex = rng.choice(words), rng.sample(words, rng.randint(1, 8))  # 1 to 8 ICL examples: unequal lengths
        base = "".join(f"\n{e} has the first letter: {e[0].upper()}" for e in ex) + f"\n{w} has the first letter:"
        return SpellingPrompt(base, f" {w[0].upper()}", w), ord(w[0]) - ord("a")

    data = [prompt() for _ in range(150)]
    assert len({len(model.to_tokens(p.base)[0]) for p, _ in data}) == 8
    with torch.no_grad():
        ref = torch.stack([model.run_with_cache(p.base, names_filter=[hook])[1][hook][0, -6] for p, _ in data])

    def gather(path: Path) -> torch.Tensor:
        kw = dict(train_dataset=data, test_dataset=data[:2], path=path, hook_point=hook, batch_size=64)
        return torch.from_numpy(np.array(common.gen_and_save_df_acts_probing(model=model, **kw, position_idx=-6)[2]))

    last_block = []
    handle = model.blocks[2].register_forward_hook(lambda *a: last_block.append(1))
    for batch in (1024, 64):
        with ab.offline_absorption(model, "tiny-gpt2", tmp_path / f"w{batch}", probe_batch=batch):
            acts = gather(tmp_path / f"p{batch}")
        torch.testing.assert_close(acts, ref, atol=1e-5, rtol=1e-5)
    assert not last_block and model.tokenizer.padding_side == "right"
    handle.remove()
    own = gather(tmp_path / "own")  # SAEBench's own: 64 per pass, right padding
    assert not torch.allclose(own, ref, atol=1e-3)

    # SAEBench's absorption calculator refuses prompts of unequal lengths (right padding would misread them);
    # with left padding it accepts them when the tokens after the word position agree
    from sae_bench.evals.absorption.feature_absorption_calculator import FeatureAbsorptionCalculator

    calc = FeatureAbsorptionCalculator(model=model, icl_word_list=words, word_token_pos=-6)
    prompts = [p for p, _ in data[:20]]
    odd = SpellingPrompt(prompts[0].base.replace("first ", ""), "", "")  # one token less after the word
    with pytest.raises(ValueError, match="same token length"):
        calc._validate_prompts_are_same_length(prompts)
    with ab.offline_absorption(model, "tiny-gpt2", tmp_path / "w", probe_batch=8):
        calc._validate_prompts_are_same_length(prompts)
        with pytest.raises(ValueError, match="same token length"):
            calc._validate_prompts_are_same_length([*prompts, odd])

    x, y = torch.randn(300, 8), torch.nn.functional.one_hot(torch.randint(0, 26, (300,)), 26)

    def train() -> torch.Tensor:
        torch.manual_seed(0)
        probe = probing.train_multi_probe(x, y, batch_size=64, num_epochs=3, show_progress=False, device="cpu")
        return probe.weights.detach().clone()

    w_own = train()
    with ab.offline_absorption(model, "tiny-gpt2", tmp_path / "w", probe_batch=8):
        assert probing.DataLoader is not torch.utils.data.DataLoader
        w_ours = train()
    assert torch.equal(w_own, w_ours)


def test_eval_stage_absorption_offline(rs, tmp_path, monkeypatch):
    """SAEBench's absorption eval through the E stage: nothing written outside OUT (site-packages, working
    directory), grad mode restored, no hub model; an SAE-independent 'not evaluable' stop writes nothing.
    Hard deadline: a call cut before the probe is trained, and one cut while an SAE blocks, return at the
    deadline and leave no JSON and no partial probe; the next calls complete (an existing JSON is skipped)."""
    import dataclasses
    import functools
    import time

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
    t = _absorption_setup(rs, tmp_path)
    out, hooked = t.out, t.hooked
    ev = [*t.common_args, "--stage", "E-tiny-gpt2-1", "--evals", "absorption", "--tokenizer", str(t.wtok)]
    cfg = {"min_GT_probe_f1": 0.0, "k_sparse_probe_num_epochs": 2, "max_k_value": 3}
    dest = out / "absorption_first_letter"
    ab = importlib.import_module("absorption_stage")
    items = [rs.probe_item(s, p, step, dest, "cpu") for s, p, step in t.trained]
    work = out / "absorption"

    # cut before the probe is trained (the child barely starts); a temporary probe folder a cut call left is removed
    (work / "results" / ".probes_tmp_cut").mkdir(parents=True)
    t = time.time()
    r = ab.run_absorption(hooked, "tiny-gpt2", items, work, t + 1.0, "cpu", config=cfg, log=lambda m: None)
    assert time.time() - t < 6 and r["cut"]["ran_s"] >= 0 and r["evaluated"] == [] and not r["complete"]
    assert not (work / "results" / ".probes_tmp_cut").exists() and not dest.exists()
    probe = ab.probe_folder(work, hooked, 1)
    assert not probe.exists() or {"probe.pth", "data.npz"} <= {f.name for f in probe.iterdir()}

    # SAEBench writes nothing when too few letters have a good probe (27 > 26 letters): recorded, no file
    assert rs.main([*ev, "--absorption-config", json.dumps({**cfg, "min_feats_for_eval": 27})]) == 0
    rec = json.loads((out / "stage_E-tiny-gpt2-1.json").read_text())
    a = rec["calls"][0]["absorption"]
    assert "fewer than 27" in a["not_evaluable"] and a["evaluated"] == [] and len(a["left"]) == 3
    assert a["mode"] == "child" and a["probe_batch"] == 1024 and a["child_start_s"] > 0
    # no --absorption-workers: as many as the host memory holds at the batched scoring's peak (here: plenty)
    wm = a["workers_memory"]
    assert wm["eval_rows_estimate"] > 0 and wm["workers"] == wm["without_the_memory_cap"] >= 1, wm
    assert wm["scoring"] == "batched" and wm["worker_peak_bytes_estimate"] == ab.worker_peak_bytes(
        wm["eval_rows_estimate"], cfg.get("max_k_value", 10), "batched"
    ), wm
    assert a["config"]["llm_batch_size"] == 256 and a["config"]["k_sparse_probe_batch_size"] == 4096
    assert (probe / "probe.pth").is_file() and not list((work / "results").glob(".probes_tmp_*"))
    assert not list(dest.glob("*.json"))
    if "probe_s" in a:  # not when the first cut call finished the probe
        parts = a["probe_parts_s"]
        assert {"vocabulary", "activations", "probe_training", "probe_save"} <= set(parts), parts
        assert 0 < sum(parts.values()) <= a["probe_s"] + 0.05  # (each rounded to 0.01 s)

    # cut while an SAE blocks: back once the deadline passed, no JSON, no temporary file. The parent's clock
    # (absorption_stage's ``time``) jumps past the deadline as soon as the child reports loading the blocked SAE,
    # so the test does not wait out a real deadline
    cfg2 = {**cfg, "min_feats_for_eval": 2}
    blocked = dataclasses.replace(items[1], load=functools.partial(time.sleep, 600))
    clock = _JumpingClock()
    supervise = ab._supervise

    def supervise_seen(common_, jobs, n, vocab_sample, deadline, handle, *rest):
        def seen(i: int, ev: tuple) -> None:
            handle(i, ev)
            if ev[0] == "sae_load":
                clock.jump()

        return supervise(common_, jobs, n, vocab_sample, deadline, seen, *rest)

    t = time.time()
    with monkeypatch.context() as mp:
        mp.setattr(ab, "time", clock)
        mp.setattr(ab, "_supervise", supervise_seen)
        r = ab.run_absorption(hooked, "tiny-gpt2", [blocked], work, t + 3600, "cpu", config=cfg2, log=lambda m: None)
    assert clock.offset > 0 and time.time() - t < 3 * a["child_start_s"] + 30  # margins for a loaded machine
    assert r["cut"]["phase"] == "loading" and r["cut"]["sae"] == blocked.name and r["left"] == [blocked.name]
    assert not dest.exists() or not list(dest.iterdir())

    ev2 = [*ev, "--absorption-config", json.dumps(cfg2)]
    assert rs.main([*ev2, "--max-saes", "1"]) == 0
    grad = torch.is_grad_enabled()
    assert rs.main([*ev2, "--absorption-inline"]) == 0
    assert torch.is_grad_enabled() == grad
    rec = json.loads((out / "stage_E-tiny-gpt2-1.json").read_text())
    c2, c3 = rec["calls"][1]["absorption"], rec["calls"][2]["absorption"]
    assert len(c2["evaluated"]) == 1 and list(c2["sae_s"]) == c2["evaluated"] and "probe_s" not in c2
    assert c3["existing"] == c2["evaluated"] and sorted(c3["evaluated"]) == sorted(c2["left"]) and c3["complete"]
    assert c3["mode"] == "inline" and rec["complete"] == {"absorption": True}
    for c in (c2, c3):  # decoder norms folded before SAEBench's run_eval (a worker's record, an inline one)
        assert sorted(c["saebench_fold"]) == sorted(c["evaluated"])
        assert all(f["folded"] is True for f in c["saebench_fold"].values())

    files = sorted(dest.glob("*.json"))
    core = sorted((out / "core").glob("*.json"))
    assert [f.name for f in files] == [f.name for f in core] and len(files) == 3 == len(list(dest.iterdir()))
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


@needs_probes
def test_absorption_vocabulary_in_id_order_and_the_smoke_sample(rs, tmp_path):
    """Inside offline_absorption SAEBench lists the alphabetic vocabulary in token-id order (a fast tokenizer's
    own listing changes from call to call); ``vocab_sample`` (CPU smoke runs) cuts it to the same N words each
    time, still in id order; outside, SAEBench's function is back."""
    import types

    from sae_bench.evals.absorption import vocab

    ab = importlib.import_module("absorption_stage")
    tok = _word_tokenizer()
    ids = tok.get_vocab()
    model = types.SimpleNamespace(tokenizer=tok)
    orig = vocab.get_tokens
    with ab.offline_absorption(model, "m", tmp_path / "w"):
        full = vocab.get_alpha_tokens(tok)
    assert full == vocab.get_alpha_tokens(ab.IdOrderedVocab(tok)) and len(full) > 200
    assert [ids[w] for w in full] == sorted(ids[w] for w in full)
    with ab.offline_absorption(model, "m", tmp_path / "w", vocab_sample=20):
        a, b = vocab.get_alpha_tokens(tok), vocab.get_alpha_tokens(tok)
    assert a == b and len(a) == 20 and set(a) <= set(full)
    assert [ids[w] for w in a] == sorted(ids[w] for w in a)
    assert vocab.get_tokens is orig


@needs_probes
def test_absorption_in_workers_and_in_any_order_gives_the_same_jsons(rs, tmp_path, monkeypatch):
    """SAEBench's absorption draws from unseeded global generators (probe split, ICL prompts, probe init and
    minibatches); seeded per SAE, an SAE's JSON is the same in process in one order, in process in the reverse
    order (after other SAEs drew from the generators), and in 2 spawned workers sharing the queue with a probe
    trained by one of them (every field but the run's uuid and time), and without the k-sparse probes' activation
    cache (absorption_stage.CachedSaeActs; its k-sparse probing files byte for byte too). The caller's generators
    are untouched."""
    import random

    t = _absorption_setup(rs, tmp_path)
    hooked, trained = t.hooked, t.trained
    ab = importlib.import_module("absorption_stage")
    cfg = {"min_GT_probe_f1": 0.0, "k_sparse_probe_num_epochs": 2, "max_k_value": 3, "min_feats_for_eval": 2}

    def run(name: str, order: list, **kw) -> tuple[list[dict], dict]:
        dest = tmp_path / name
        items = [rs.probe_item(s, p, step, dest, "cpu") for s, p, step in trained]
        items = [items[i] for i in order]
        r = ab.run_absorption(
            hooked,
            "tiny-gpt2",
            items,
            tmp_path / f"w_{name}",
            time.time() + 600,
            "cpu",
            config=cfg,
            log=lambda m: None,
            **kw,
        )
        assert r["complete"] and sorted(r["evaluated"]) == sorted(s.name for s in items), r
        got = []
        for f in sorted(dest.glob("*.json")):
            d = json.loads(f.read_text())
            del d["eval_id"], d["datetime_epoch_millis"]
            got.append(d)
        return got, r

    def ksp(name: str) -> dict[str, str]:
        """SAEBench's k-sparse probing metrics per SAE (F1 per letter and k), left in the run's work folder."""
        import pandas as pd

        root = tmp_path / f"w_{name}"
        return {f.parent.name: pd.read_parquet(f).to_csv() for f in sorted(root.rglob("*_metrics.parquet"))}

    made = []  # the k-sparse probes' activation caches made in this process

    class Recorded(ab.CachedSaeActs):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(ab, "CachedSaeActs", Recorded)
    # Python's garbage collector is off during SAEBench's k-sparse scoring (and on again after the eval)
    import gc

    import sae_bench.evals.absorption.k_sparse_probing as ksp_mod

    scoring, collecting = ksp_mod.eval_probe_and_sae_k_sparse_raw_scores, []

    def scoring_seen(*a, **k):
        collecting.append(gc.isenabled())
        return scoring(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(ksp_mod, "eval_probe_and_sae_k_sparse_raw_scores", scoring_seen)
        forward, rec_forward = run("forward", [0, 1, 2], inline=True)
    assert collecting == [False] * 3 and gc.isenabled()
    assert ksp_mod.eval_probe_and_sae_k_sparse_raw_scores is scoring  # SAEBench's function back in place
    assert len(forward) == 3
    # the k-sparse probes took their SAE activations from the cache: one encoding per SAE, the other calls sliced
    # (26 letters x max_k_value 3 calls per SAE); the test split's calls without ids went to SAEBench's function
    # (counted per SAE: the stage record's ksp_cache; the counts restart with each SAE)
    assert len(made) == 1 and sorted(rec_forward["ksp_cache"]) == sorted(rec_forward["sae_s"]), rec_forward
    for counts in rec_forward["ksp_cache"].values():
        assert counts["builds"] == 1 and counts["over_cap"] == 0 and counts["hits"] == 26 * 3 - 1, counts
        assert counts["plain"] > 0, counts
    # the SAEs' results differ (else equality below would prove little): with decoder norms folded (saebench_fold)
    # the tiny SAEs' absorption JSONs can coincide (no absorption, one split feature each), so the per-SAE k-sparse
    # probes behind them are compared too
    ksp_forward = ksp("forward")
    assert len(ksp_forward) == 3 and len(set(ksp_forward.values())) >= 2
    # without the cache (SAEBench's _get_sae_acts): the same JSONs and the same k-sparse probing files, byte for
    # byte (the probes' weights and the test split's scores in the metadata and raw results, the metrics)
    with monkeypatch.context() as m:
        m.setattr(ab, "KSP_CACHE_NNZ", 0)
        got_nc, rec_nc = run("nocache", [0, 1, 2], inline=True)
        assert got_nc == forward and len(made) == 1 and "ksp_cache" not in rec_nc

    def ksp_files(name: str) -> dict[str, bytes]:
        root = tmp_path / f"w_{name}" / "results" / "k_sparse_probing"
        return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*.parquet"))}

    assert len(ksp_files("forward")) == 9 and ksp_files("nocache") == ksp_files("forward")
    # (captured once SAEBench's modules are imported: importing them draws from the generators)
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    assert run("reverse", [2, 1, 0], inline=True)[0] == forward
    assert ksp("reverse") == ksp_forward
    assert random.getstate() == state[0] and torch.equal(torch.get_rng_state(), state[2])
    assert np.array_equal(np.random.get_state()[1], state[1][1])
    got, rec = run("workers", [1, 2, 0], workers=2)
    assert got == forward and rec["workers"] == 2 and rec["mode"] == "child" and "probe_s" in rec
    assert sorted(rec["ksp_cache"]) == sorted(rec["sae_s"]), rec  # the counts come back from the workers too
    assert all(c["builds"] == 1 and c["over_cap"] == 0 and c["hits"] > 0 for c in rec["ksp_cache"].values())
    assert ksp("workers") == ksp_forward
    # the timed parts of SAEBench's eval: the probe phase's and each SAE's (within the times they are parts of)
    assert 0 < rec["probe_parts_s"]["probe_training"] and sum(rec["probe_parts_s"].values()) <= rec["probe_s"] + 0.05
    assert sorted(rec["sae_parts_s"]) == sorted(rec["sae_s"]), rec["sae_parts_s"]
    for name, parts in rec["sae_parts_s"].items():
        assert {"k_sparse_probing", "absorption_experiment"} <= set(parts)
        assert sum(v for p, v in parts.items() if "." not in p) <= rec["sae_s"][name] + 0.05
        # the k-sparse probes' training and scoring, the probe data's loads, the raw results' parquet files and the
        # metrics are parts of the k-sparse probing, none counted twice
        names = ["training", "scoring", "data", "save", "metrics"]
        assert all(f"k_sparse_probing.{n}" in parts for n in names), parts
        inner = sum(parts[f"k_sparse_probing.{n}"] for n in names)
        assert parts["k_sparse_probing.training"] > 0 and parts["k_sparse_probing.save"] >= 0, parts
        assert 0 < inner <= parts["k_sparse_probing"] + 0.05, parts

    # the model cannot reach the workers (here it does not pickle; on a GPU, CUDA IPC could fail): the same JSONs,
    # evaluated in this process, and the record says why
    import threading

    hooked._unpicklable = threading.Lock()
    try:
        got, rec_f = run("fallback", [0, 1, 2], workers=2)
    finally:
        del hooked._unpicklable
    assert got == forward and rec_f["mode"] == "inline (the workers failed to start)", rec_f
    assert "pickle" in rec_f["workers_failed"] and "child_start_s" not in rec_f and "error" not in rec_f

    # 2 workers, 3 SAEs, the first blocking one worker: the other worker evaluates the other two, and the deadline
    # passes while the parent handles the first of their results (a slow export) and the second finishes meanwhile:
    # its queued result is still taken, and the call names the cut SAE. A relative work folder (the children work
    # inside it; the probe exists there). The parent's clock (absorption_stage's ``time``) jumps past the deadline
    # at the end of the slow export, so the call ends as at a real deadline without waiting for one.
    import dataclasses
    import functools

    monkeypatch.chdir(tmp_path)
    dest = tmp_path / "cut"
    items = [rs.probe_item(s, p, step, dest, "cpu") for s, p, step in trained]
    items[0] = dataclasses.replace(items[0], load=functools.partial(time.sleep, 600))
    clock = _JumpingClock()
    monkeypatch.setattr(ab, "time", clock)
    # margins for a loaded machine: the free worker evaluates the second SAE while the first one's export waits
    wait = 3 * max(rec["sae_s"].values()) + 5
    exports = []

    def slow_export() -> None:
        exports.append(time.time())
        if len(exports) == 1:
            time.sleep(wait)
            clock.jump()  # the deadline below has passed, for the parent

    t = time.time()
    r = ab.run_absorption(
        hooked,
        "tiny-gpt2",
        items,
        Path("w_workers"),
        t + 3600,
        "cpu",
        config=cfg,
        log=lambda m: None,
        workers=2,
        on_result=slow_export,
    )
    free = sorted(s.name for s in items[1:])
    assert time.time() - t < wait + 60 and r["workers"] == 2 and sorted(r["evaluated"]) == free, r
    assert r["cut"]["phase"] == "loading" and r["cut"]["sae"] == items[0].name and r["cut"]["saes"] == [items[0].name]
    assert sorted(f.name for f in dest.iterdir()) == sorted(s.dest.name for s in items[1:]) and len(exports) == 2
    assert r["left"] == [items[0].name] and not r["complete"]


@needs_probes
def test_absorption_probe_only_before_the_saes_exist(rs, tmp_path):
    """``--absorption-probe-only`` makes the first-letter probe of an E stage before any SAE is trained (as a
    call does alongside its T stage), writes its carried form, and records it; the absorption call after the
    training finds it in place (no probe phase) and writes the JSON that a call training the probe itself writes
    (every field but the run's uuid and time); a second probe-only call finds it present and does nothing."""
    import shutil

    plan, corpus, _, _ = _setup(tmp_path)
    wtok = tmp_path / "wtok"
    _word_tokenizer().save_pretrained(str(wtok))
    out = tmp_path / "out"
    common = ["--plan", str(plan), "--corpus", str(corpus), "--out", str(out), "--n-layers", "2"]
    cfg = json.dumps(
        {"min_GT_probe_f1": 0.0, "k_sparse_probe_num_epochs": 2, "max_k_value": 3, "min_feats_for_eval": 2}
    )
    ev = [*common, "--stage", "E-tiny-gpt2-1", "--evals", "absorption", "--tokenizer", str(wtok)]
    ev += ["--absorption-config", cfg]
    assert rs.main([*ev, "--absorption-probe-only", "--beside", "T-tiny"]) == 0  # no SAE trained yet
    (call,) = json.loads((out / "stage_E-tiny-gpt2-1.json").read_text())["calls"]
    assert call["beside"] == "T-tiny" and call["gpu_s"] == 0.0  # its device time is inside T-tiny's call
    a = call["absorption"]
    assert a["probe_only"] and a["probe_source"] == "trained" and a["evaluated"] == [] and not a["complete"], a
    assert a["probe_s"] > 0 and {"activations", "probe_training"} <= set(a["probe_parts_s"]), a
    ab = importlib.import_module("absorption_stage")
    hooked = _tiny_hooked(rs, wtok)
    assert ab._probe_ready(ab.probe_folder((out / "absorption").resolve(), hooked, 1))
    assert len(list((out / "absorption_probe").rglob("manifest.json"))) == 1  # the carried form, for the bundle
    assert not (out / "absorption_first_letter").exists()

    train = ["--stage", "T-tiny", "--batch-size", "64", "--buffer-tokens", "128", "--eval-batches", "1"]
    assert rs.main([*common, *train, "--eval-batch-prompts", "4"]) == 0
    assert rs.main([*ev, "--max-saes", "1", "--absorption-inline"]) == 0
    calls = json.loads((out / "stage_E-tiny-gpt2-1.json").read_text())["calls"]
    b = calls[-1]["absorption"]
    assert len(b["evaluated"]) == 1 and "probe_s" not in b, b  # the probe was in place
    (got,) = (out / "absorption_first_letter").glob("*.json")

    # the same SAE in a fresh work folder, its probe trained by the eval itself
    fams, _ = rs.eval_stage_saes(json.loads(plan.read_text()), "E-tiny-gpt2-1", out, {})
    trained = {rs.probe_item(s, p, step, tmp_path / "ref", "cpu").name: (s, p, step) for s, p, step in
               rs.trained_saes(out, fams)}  # fmt: skip
    item = rs.probe_item(*trained[b["evaluated"][0]], tmp_path / "ref", "cpu")
    r = ab.run_absorption(hooked, "tiny-gpt2", [item], tmp_path / "w_ref", time.time() + 600, "cpu",
                          config=json.loads(cfg), log=lambda m: None, inline=True)  # fmt: skip
    assert r["probe_source"] == "trained" and r["evaluated"] == [item.name], r
    want, have = json.loads(item.dest.read_text()), json.loads(got.read_text())
    for d in (want, have):
        del d["eval_id"], d["datetime_epoch_millis"]
    assert have == want

    shutil.rmtree(out / "absorption_probe")
    assert rs.main([*ev, "--absorption-probe-only"]) == 0
    c = json.loads((out / "stage_E-tiny-gpt2-1.json").read_text())["calls"][-1]["absorption"]
    assert c["probe_present"] and "probe_s" not in c and not (out / "absorption_probe").exists()


@needs_probes
def test_absorption_memory_guard_stops_one_worker(rs, tmp_path):
    """Host memory over the guard's limit from the start while 2 workers evaluate 3 SAEs (the probe trained by the
    first): one worker evaluating an SAE is stopped
    (the guard's cooldown lets it stop only one here), its SAE is left without a JSON, the other worker evaluates
    the other two, and the record says what the guard saw; the real readings of the children's memory come
    back. Under the limit nothing is stopped."""
    t = _absorption_setup(rs, tmp_path)
    ab = importlib.import_module("absorption_stage")
    wk = importlib.import_module("workers")
    cfg = {"min_GT_probe_f1": 0.0, "k_sparse_probe_num_epochs": 2, "max_k_value": 3, "min_feats_for_eval": 2}

    def run(name: str, used: int) -> tuple[dict, list]:
        dest = tmp_path / name
        items = [rs.probe_item(s, p, step, dest, "cpu") for s, p, step in t.trained]
        guard = wk.MemoryGuard(1 << 40, used=lambda: used, interval_s=0.05, cooldown_s=1e9)
        r = ab.run_absorption(
            t.hooked, "tiny-gpt2", items, tmp_path / "w", time.time() + 240, "cpu", config=cfg,
            log=lambda m: None, workers=2, guard=guard,
        )  # fmt: skip
        return r, items

    r, items = run("over", 1 << 41)
    # the worker training the probe (the first, still loading its SAE until the probe is in place) is never the
    # one stopped: stopping it would leave the other waiting for the probe until the deadline
    assert r["probe_source"] == "trained" and "cut" not in r, r
    # stopped by its signal (it unwound its SAE and ended), not killed: a kill can leave the shared event queue's
    # lock held, and the other worker's events stuck behind it (seen: this test hung so before the signal)
    assert "memory_killed" not in r and "error" not in r, r
    hm = r["host_memory"]
    assert len(hm["stopped"]) == 1 and hm["stopped"][0]["sae"] in [s.name for s in items], r
    if "memory_stop_missed" in r:
        # the SAE the guard aimed at finished before the signal landed (seen once on a loaded 2-core machine, when
        # the guard read a phase behind the queued events): nothing unwound, the worker went on, every SAE done
        assert "memory_stopped" not in r and r["complete"] and len(r["memory_stop_missed"]) == 1, r
        return
    stopped = hm["stopped"][0]["sae"]
    assert r["memory_stopped"] == [stopped] and r["left"] == [stopped] and not r["complete"], r
    assert sorted(r["evaluated"]) == sorted(s.name for s in items if s.name != stopped), r
    assert sorted(f.name for f in (tmp_path / "over").iterdir()) == sorted(
        s.dest.name for s in items if s.name != stopped
    )
    assert hm["limit_bytes"] == 1 << 40 and hm["peak_used_bytes"] == 1 << 41 and hm["samples"] >= 1
    assert set(hm["worker_peak_rss_bytes"]) <= {"0", "1"} and all(
        b > 50 << 20 for b in hm["worker_peak_rss_bytes"].values()
    )  # a child with torch and SAEBench imported holds more than 50 MiB
    r, items = run("under", 1 << 30)
    assert r["complete"] and "memory_stopped" not in r and r["host_memory"]["stopped"] == [], r


def test_memory_stop_signal_raises_only_inside_an_sae_eval(rs):
    """The guard's stop signal raises MemoryStop inside an SAE's eval only; landing outside it (the aimed SAE already
    finished) it is noted, reported once as ``memory_stop_missed`` and otherwise ignored, so that it can never end
    a worker outside its try block (where it had no handler)."""
    ab = importlib.import_module("absorption_stage")
    sent: list[tuple] = []
    ab._raise_memory_stop(0, None)  # outside: no exception
    ab._report_missed_stop(sent.append)
    ab._report_missed_stop(sent.append)  # once
    assert sent == [("memory_stop_missed",)]
    with pytest.raises(ab.MemoryStop), ab._stop_armed():
        ab._raise_memory_stop(0, None)
    ab._raise_memory_stop(0, None)  # disarmed again on the way out of the block
    ab._report_missed_stop(sent.append)
    assert sent == [("memory_stop_missed",)] * 2


@needs_probes
def test_absorption_probe_diagnostic_on_a_tiny_model(rs, tmp_path, monkeypatch, capsys):
    """diagnostics/absorption_probe.py trains SAEBench's first-letter probe on a vocabulary sample (here the tiny
    word-level model's own alphabetic tokens): the JSON's per-letter counts add up to the sample's 80/20 split
    (SAEBench's), F1 is in [0, 1] and the passing count is the number of letters above the threshold; an
    existing --out is refused with exit 2 and left as it was."""
    import sae_rdp_plugin.lm.models as models

    monkeypatch.syspath_prepend(str(EXP / "diagnostics"))
    ap = importlib.import_module("absorption_probe")
    tok_dir = tmp_path / "wtok"
    _word_tokenizer(n_per_letter=12).save_pretrained(str(tok_dir))
    model = _tiny_hooked(rs, tok_dir, n_layers=3)
    monkeypatch.setattr(models, "load_model", lambda name, n_layers: model)
    out = tmp_path / "p.json"
    argv = ["--model", "gemma3-270m", "--layer", "1", "--words", "300", "--batch", "50", "--out", str(out)]
    assert ap.main(argv) == 0
    d = json.loads(out.read_text())
    assert (d["n_train"], d["n_test"], d["words"]) == (240, 60, 300)
    assert sum(r["n_train"] for r in d["letters"]) == 240 and sum(r["n_test"] for r in d["letters"]) == 60
    assert [r["letter"] for r in d["letters"]] == list("abcdefghijklmnopqrstuvwxyz")
    assert all(0.0 <= r["f1"] <= 1.0 for r in d["letters"])
    assert d["letters_passing"] == sum(r["f1"] > 0.6 for r in d["letters"])
    assert d["evaluable_on_this_sample"] == (d["letters_passing"] >= 20)
    before = out.read_text()
    capsys.readouterr()  # the run's progress bars
    with pytest.raises(SystemExit) as e:
        ap.main(["--model", "gemma3-270m", "--layer", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "exists; not overwritten" in err
    assert out.read_text() == before
    big = tmp_path / "big.json"  # more words than the tiny vocabulary holds: one line, exit 2, nothing written
    with pytest.raises(SystemExit) as e:
        ap.main(["--model", "gemma3-270m", "--layer", "1", "--words", "100000", "--out", str(big)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "exceeds the model's" in err and not big.exists()
    with pytest.raises(SystemExit) as e:  # an argument error: one line too, not argparse's usage block
        ap.main(["--model", "gpt2", "--layer", "1", "--out", str(tmp_path / "q.json")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "--model" in err


@needs_probes
def test_absorption_probe_carried_to_a_fresh_machine(rs, tmp_path, monkeypatch, capsys):
    """The first-letter probe trained by one E call travels as the device's would (written under
    OUT/absorption_probe, exported in the stage's bundle, collected into results/<model>-L<layer>/, copied onto a
    fresh OUT as stage.sh does): there the activations are recomputed, the csvs match the carried fingerprints,
    probe training does not run, and the SAE's JSON, data.npz, the csvs and probe.pth equal the first machine's.
    A tampered probe.pth, or csv fingerprints that differ from the recomputed ones, are refused with one line and
    the probe is trained (the same JSON). Another stage's bundle does not carry the probe; a bundle whose probe
    does not match its manifest is refused by collect.py (exit 2, one line)."""
    import hashlib

    from sae_bench.evals.absorption import common

    t = _absorption_setup(rs, tmp_path)
    ab = importlib.import_module("absorption_stage")
    col = importlib.import_module("collect")
    assert rs.ABSORPTION_CARRY_DIR == ab.CARRY_DIR
    cfg = {"min_GT_probe_f1": 0.0, "k_sparse_probe_num_epochs": 2, "max_k_value": 3, "min_feats_for_eval": 2}
    stage = "E-tiny-gpt2-1"
    sae, path, step = t.trained[0]

    def run(out: Path) -> tuple[dict, dict]:
        item = rs.probe_item(sae, path, step, out / "absorption_first_letter", "cpu")
        r = ab.run_absorption(
            t.hooked,
            "tiny-gpt2",
            [item],
            out / "absorption",
            time.time() + 600,
            "cpu",
            config=cfg,
            log=lambda m: None,
            inline=True,
            carry=out / "absorption_probe",
            stage=stage,
        )
        assert r["complete"], r
        d = json.loads(item.dest.read_text())
        del d["eval_id"], d["datetime_epoch_millis"]
        return r, d

    def probe_files(out: Path) -> dict:
        p = ab.probe_folder(out / "absorption", t.hooked, 1)
        npz = np.load(p / "data.npz")
        return {
            **{f: (p / f).read_bytes() for f in ("probe.pth", "train_df.csv", "test_df.csv")},
            **{k: npz[k] for k in ("X_train", "X_test", "y_train", "y_test")},
        }

    m1 = tmp_path / "m1"
    r1, d1 = run(m1)
    assert r1["probe_source"] == "trained" and "probe_refused" not in r1 and r1["probe_parts_s"]["probe_training"] > 0
    carried = ab.carry_folder(m1 / "absorption_probe", t.hooked, 1)
    assert r1["probe_carry"] == str(carried.resolve())
    assert sorted(f.name for f in carried.iterdir()) == ["manifest.json", "probe.pth"]
    man = json.loads((carried / "manifest.json").read_text())
    f1 = probe_files(m1)
    # the fingerprints are those of the files SAEBench wrote
    for name in ("train_df.csv", "test_df.csv"):
        assert man["csvs"][name]["sha256"] == hashlib.sha256(f1[name]).hexdigest()
    assert man["files"]["probe.pth"] == hashlib.sha256(f1["probe.pth"]).hexdigest()
    assert man["stage"] == stage and man["saebench_version"] and man["probe_config"]["num_epochs"] == 50

    # the bundle -> collect.py -> the committed folder -> a fresh OUT (stage.sh: cp -rn results/*/absorption_probe/.)
    (m1 / f"stage_{stage}.json").write_text(json.dumps({"stage": stage, "calls": []}))
    bundle = rs.export(m1, tmp_path / "x", stage)
    with tarfile.open(bundle) as tar:
        assert {"absorption_probe/gpt2/layer_1/probe.pth", "absorption_probe/gpt2/layer_1/manifest.json"} <= set(
            tar.getnames()
        )
    with tarfile.open(rs.export(m1, tmp_path / "y", "E-other-3")) as tar:
        assert not [n for n in tar.getnames() if n.startswith("absorption_probe")]
    results = tmp_path / "results"
    col.collect(bundle, into=results / "tiny-gpt2-L1", results=results)
    committed = results / "tiny-gpt2-L1" / "absorption_probe"
    assert (committed / "gpt2" / "layer_1" / "probe.pth").read_bytes() == f1["probe.pth"]

    def fresh(name: str) -> Path:
        out = tmp_path / name
        shutil.copytree(committed, out / "absorption_probe")
        return out

    def no_training(*a, **k):
        raise AssertionError("the probe was trained")

    m2 = fresh("m2")
    with monkeypatch.context() as mp:
        mp.setattr(common, "train_linear_probe_for_task", no_training)
        r2, d2 = run(m2)
    assert r2["probe_source"] == "carried" and r2["activations_match"] is True and "probe_refused" not in r2, r2
    assert "probe_training" not in r2["probe_parts_s"] and {"activations", "probe_load", "probe_save"} <= set(
        r2["probe_parts_s"]
    )
    assert d2 == d1
    f2 = probe_files(m2)
    assert f2.keys() == f1.keys() and all(np.array_equal(f2[k], f1[k]) for k in f1 if k.startswith(("X", "y")))
    assert all(f2[k] == f1[k] for k in ("probe.pth", "train_df.csv", "test_df.csv"))

    # a tampered probe: refused before any activation, trained (the same probe and JSON), its carry rewritten
    m3 = fresh("m3")
    pth = ab.carry_folder(m3 / "absorption_probe", t.hooked, 1) / "probe.pth"
    pth.write_bytes(pth.read_bytes() + b"\0")
    r3, d3 = run(m3)
    assert r3["probe_source"] == "trained" and r3["probe_refused"] == "probe.pth: sha256 differs from the manifest's"
    assert d3 == d1 and pth.read_bytes() == f1["probe.pth"]

    # carried csvs that are not the recomputed ones: refused after the activations, trained in the same pass
    m4 = fresh("m4")
    mf = ab.carry_folder(m4 / "absorption_probe", t.hooked, 1) / "manifest.json"
    bad = json.loads(mf.read_text())
    fp = bad["csvs"]["train_df.csv"]
    fp["sha256"], fp["columns"]["prompt"], fp["blocks"][0] = "0" * 64, "1" * 64, "2" * 64
    mf.write_text(json.dumps(bad))
    r4, d4 = run(m4)
    why = r4["probe_refused"]
    assert r4["probe_source"] == "trained" and "\n" not in why and "train_df.csv" in why, r4
    assert "column(s) prompt differ, first in rows 0-4095" in why and r4["probe_parts_s"]["probe_training"] > 0
    assert d4 == d1

    # collect.py refuses a bundle whose carried probe does not match its manifest
    work = tmp_path / "bad_bundle"
    shutil.copytree(m1 / "absorption_probe", work / "absorption_probe")
    (work / f"stage_{stage}.json").write_text(json.dumps({"stage": stage, "calls": []}))
    pth = ab.carry_folder(work / "absorption_probe", t.hooked, 1) / "probe.pth"
    pth.write_bytes(b"x" + pth.read_bytes())
    capsys.readouterr()
    assert col.main([str(rs.export(work, tmp_path / "z", stage)), "--into", str(tmp_path / "r2" / "tiny-gpt2-L1")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "sha256 differs from its manifest" in err
    assert not (tmp_path / "r2").exists()

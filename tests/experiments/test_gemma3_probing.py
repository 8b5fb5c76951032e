"""The sparse-probing step of experiments/gemma3_270m/run.py (its probing.py): SAEBench's own
sparse_probing_sae_probes run_eval on a weighted TopK SAE saved for inference and re-loaded with stock
SAELens, with a tiny random HookedTransformer standing in for Gemma (no hub access: the test fails if
sae-probes tries to load a model by name). Checked against SAEBench's validator and against an
independent recomputation of the LLM baseline's input (the cached activations equal our model's).

The probing test needs the optional ``probes`` extra (sae-probes, zstandard); skipped otherwise.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

needs_probes = pytest.mark.skipif(
    importlib.util.find_spec("sae_probes") is None or importlib.util.find_spec("zstandard") is None,
    reason="sae-probes / zstandard not installed (scripts/setup.sh; extra [probes])",
)

ROOT = Path(__file__).resolve().parents[2]
EXP = ROOT / "experiments" / "gemma3_270m"
STAGE = "experiments/gemma3_270m/stage.sh"  # the device command, relative to the repository root


@pytest.fixture
def gp(monkeypatch):
    """experiments/gemma3_270m/probing.py, imported by name as run.py imports it (its folder on sys.path:
    the spawned baseline workers inherit sys.path and re-import the module by that name)."""
    monkeypatch.syspath_prepend(str(EXP))
    return importlib.import_module("probing")


def _char_tokenizer():
    """A byte-level HF fast tokenizer built in memory (ids 4.. for bytes; BOS 1, EOS 2, PAD 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for i, ch in enumerate(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = 4 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def _tiny_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=16,
        n_ctx=64,
        d_head=8,
        n_heads=2,
        d_mlp=32,
        d_vocab=260,
        act_fn="gelu",
        normalization_type="LN",
        device="cpu",
    )
    model = HookedTransformer(cfg)
    model.tokenizer = _char_tokenizer()
    model.eval()
    return model


@needs_probes
def test_sparse_probing_step_runs_saebench_eval_on_weighted_sae(gp, tmp_path, monkeypatch):
    gp.install_xgboost_stub()  # sae-probes imports xgboost at module level (only its xgboost baseline uses it)
    from sae_bench.evals.sparse_probing_sae_probes.eval_output import SparseProbingSaeProbesEvalOutput
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_rdp_plugin.train.saelens import build_training_sae, sae_config_dict

    def no_hub(*a, **k):
        raise AssertionError("sae-probes tried to load a model from the hub")

    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", staticmethod(no_hub))
    monkeypatch.setattr(HookedTransformer, "from_pretrained", staticmethod(no_hub))
    model = _tiny_model()
    hook = "blocks.0.hook_resid_post"
    cfg = sae_config_dict("weighted_topk", 16, 32, device="cpu", k=4, alpha=0.5)
    sae = build_training_sae(cfg)
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.model_name = "tiny"
    sae.set_gamma(torch.linspace(0.5, 2.0, 16))
    sae.save_inference_model(str(tmp_path / "sae"))
    out = tmp_path / "out"
    out.mkdir()
    ds = gp.PROBE_DATASETS[1]  # 117_us_state_FL: 1,000 short prompts
    rec = gp.run_sparse_probing(
        model,
        [("w", lambda: SAE.load_from_disk(str(tmp_path / "sae"), device="cpu"))],
        hook,
        tmp_path / "work",
        out,
        [ds],
        budget_s=600,
        device="cpu",
        model_name="tiny",
        ks=(1, 2),
    )
    assert rec["datasets_run"] == [ds]
    s = rec["saes"]["w"]
    assert s["validated"]
    f = out / s["saebench_json"]
    validate_eval_output_format_file(str(f), SparseProbingSaeProbesEvalOutput)
    d = json.loads(f.read_text())
    assert d["eval_config"]["dataset_names"] == [ds] and d["eval_config"]["ks"] == [1, 2]
    for k in (1, 2):
        acc = s[f"sae_top_{k}_test_accuracy"]
        assert acc is not None and 0.0 <= acc <= 1.0
    assert 0.0 <= s["llm_test_accuracy"] <= 1.0
    # the activations sae-probes probed are our model's: last-token resid at the hook, recomputed here
    import pandas as pd
    from sae_probes.constants import DATA_PATH

    acts = torch.load(tmp_path / "work" / "probing" / "model_acts" / "model_activations_tiny" / f"{ds}_{hook}.pt")
    prompts = pd.read_csv(DATA_PATH / "cleaned_data" / f"{ds}.csv.zst", compression="zstd")["prompt"].tolist()
    assert acts.shape == (len(prompts), 16)
    for i in (0, 7, len(prompts) - 1):
        ids = model.tokenizer(prompts[i], return_tensors="pt")["input_ids"][:, -64:]
        _, cache = model.run_with_cache(ids, names_filter=[hook])
        torch.testing.assert_close(acts[i], cache[hook][0, -1], atol=1e-4, rtol=1e-4)
    # the tokenizer's sides are restored after sae-probes changed them
    assert model.tokenizer.padding_side == "right" and model.tokenizer.truncation_side == "right"


def test_dataset_subset_is_fixed_prefix(gp):
    assert gp.dataset_names(3) == gp.PROBE_DATASETS[:3]
    assert len(set(gp.PROBE_DATASETS)) == len(gp.PROBE_DATASETS) >= gp.DEFAULT_N_DATASETS
    with pytest.raises(ValueError):
        gp.dataset_names(len(gp.PROBE_DATASETS) + 1)


def test_prepare_plans_the_probes_call(tmp_path):
    """prepare.py: the probes wheels get their own call, after the model pieces and before
    run, within the size limit; without them (--no-probes) the run call turns the step off."""
    import subprocess

    MIB = 1 << 20
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"\0" * (30 * MIB))
    whl, corpus, pw = tmp_path / "whl", tmp_path / "corpus", tmp_path / "pw"
    for d in (whl, corpus, pw):
        d.mkdir()
    (whl / "a-1-py3-none-any.whl").write_bytes(b"x" * MIB)
    (corpus / "tokens.npz").write_bytes(b"t" * 1000)
    (corpus / "manifest.json").write_text("{}")
    for n in (
        "sae_probes-0.4.2-py3-none-any.whl",
        "sae_bench-0.6.0-py3-none-any.whl",
        "zstandard-0.25.0-cp312-cp312-x.whl",
    ):
        (pw / n).write_bytes(b"w" * (2 * MIB))
    # the calls carry the repository's working tree too: a limit 10 MiB above it, whatever its size now
    spec = importlib.util.spec_from_file_location("g3_prepare", EXP / "prepare.py")
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    limit = prep.tree_bytes() / MIB + 12.0  # default margin 2 MiB: 10 MiB of room per call
    base = [
        sys.executable,
        str(EXP / "prepare.py"),
        "--gguf",
        str(gguf),
        "--whl",
        str(whl),
        "--corpus",
        str(corpus),
        "--limit-mib",
        f"{limit:.3f}",
        "--probes-whl",
        str(pw),
    ]
    out = tmp_path / "g3"
    subprocess.run([*base, "--out", str(out), "--run-args=--skip-sweep"], check=True, capture_output=True)
    plan = json.loads((out / "plan.json").read_text())
    cmds = [c["command"] for c in plan["calls"]]
    assert (ROOT / STAGE).is_file()
    assert cmds[-2:] == [f"bash {STAGE} probes", f"bash {STAGE} run --skip-sweep"]
    assert plan["calls"][-2]["carry"] == [f"{out}/call_probes"]
    assert sorted(p.name for p in (out / "call_probes").iterdir()) == sorted(p.name for p in pw.iterdir())
    assert all(c["total_with_tree_mib"] <= limit - 2.0 + 0.01 for c in plan["calls"])
    pieces = sorted(out.glob("call*/m.gguf.piece*"))
    assert sum(p.stat().st_size for p in pieces) == 30 * MIB
    out2 = tmp_path / "g3b"
    subprocess.run([*base, "--out", str(out2), "--no-probes"], check=True, capture_output=True)
    cmds = [c["command"] for c in json.loads((out2 / "plan.json").read_text())["calls"]]
    assert f"bash {STAGE} probes" not in cmds and cmds[-1].endswith("--probe-datasets 0")

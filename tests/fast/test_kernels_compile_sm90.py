"""The fast step's Triton kernels compile for Hopper (sm_90) on a machine without a GPU: Triton's compiler and
ptxas (shipped in the triton wheel) run ahead of time, outside the interpreter the other kernel tests use, so
code that only the interpreter accepts (it is far more lenient about types and constexpr use) fails here instead
of on the device, where it would cost a GPU session. Compiled in child processes with a fresh Triton cache.

* the top-k kernels at the block sizes of real rows (16,384 columns), written out by hand;
* every kernel specialisation the fast step launches (argument types, constexpr flags, warps), recorded from
  whole steps run in Triton's CPU interpreter over the step's configurations (aux loss dense or sparse,
  compacted or not, aux gradients as rows or dense, each aux top-k, hot rows, bf16 or fp32, TopK or
  BatchTopK), so a new flag combination is compiled as soon as the step can take it. The recorded steps are
  small; the constexprs of these kernels are module constants except the top-k kernels' blocks, which the
  first test and the topk_mask block sizes below cover at real row widths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from sae_rdp_plugin.fast import topk_kernel as tk

    def build(fn, sig, const, warps):
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=const)
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})

    for dt, kb, dig, blk in (("bf16", 16, (8, 8, 0, 0), 2048), ("fp32", 32, (8, 8, 8, 8), 1024)):
        digits = {"KEY_BITS": kb, "D0": dig[0], "D1": dig[1], "D2": dig[2], "D3": dig[3], "NBINS": 256, "BLOCK": blk}
        base = {"X": f"*{dt}", "stride_x": "i32", "VAL": f"*{dt}", "IDX": "*i64"}
        for has_mask in (True, False):
            sig = {**base, "MASK": "*u8", "n": "i32", "k": "i32", "HAS_MASK": "constexpr"}
            sig |= {c: "constexpr" for c in digits}
            assert build(tk._radix_topk_kernel, sig, {"HAS_MASK": has_mask, **digits}, 4).asm["cubin"]
        sig = {**base, "SCR": "*i32", "n": "i32", "k": "i32"}
        extra = {"G": 256, "USE_BOUND": True, "CAP": 1024, "CB": 128}
        sig |= {c: "constexpr" for c in [*digits, *extra]}
        assert build(tk._row_topk_kernel, sig, {**digits, **extra}, 2).asm["cubin"]
    print("compiled")
    """
)

# Runs whole fast steps in Triton's CPU interpreter and writes every distinct kernel launch as
# [module, kernel, {arg: type}, {constexpr: value}, {option: value}] (JSON) to argv[1].
RECORD = textwrap.dedent(
    """
    import json, math, sys, time
    sys.path.insert(0, sys.argv[2])
    import triton_interp
    assert triton_interp.enable()
    import torch
    import triton.runtime.interpreter as interp
    from sae_rdp_plugin.fast import step as step_mod
    from sae_rdp_plugin.fast.step import FastTopKConfig, FastTopKTrainer

    TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "i32",
             torch.int64: "i64", torch.uint8: "u8", torch.int8: "i8", torch.bool: "i1", torch.float64: "fp64"}
    seen = {}
    run = interp.InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kw):
        names = self.arg_names
        bound = {**dict(zip(names, args)), **{k: v for k, v in kw.items() if k in names}}
        ann = getattr(self.fn, "__annotations__", {})
        sig, const = {}, {}
        for n in names:
            v = bound[n]
            if "constexpr" in str(ann.get(n, "")):
                const[n] = v
            elif isinstance(v, torch.Tensor):
                sig[n] = "*" + TYPES[v.dtype]
            elif isinstance(v, bool):
                sig[n] = "i1"
            elif isinstance(v, int):
                sig[n] = "i32" if -2**31 <= v < 2**31 else "i64"
            elif isinstance(v, float):
                sig[n] = "fp32"
            else:
                raise TypeError(f"{self.fn.__name__}: argument {n} of type {type(v)}")
        opts = {k: v for k, v in kw.items() if k not in names}
        rec = [self.fn.__module__, self.fn.__name__, sig, const, opts]
        seen[json.dumps(rec, sort_keys=True)] = rec
        return run(self, *args, grid=grid, warmup=warmup, **kw)

    interp.InterpretedFunction.run = recording_run

    d_in, d_sae, k, B = 16, 128, 2, 16
    g = torch.Generator().manual_seed(0)
    CASES = [
        {},
        {"aux_topk": "radix"},
        {"aux_topk": "mask"},
        {"aux_compact": "off"},
        {"aux_compact": "off", "aux_topk": "mask"},
        {"aux_impl": "sparse"},
        {"bf16": False},
        {"bf16": False, "aux_topk": "mask"},
        {"rescale_acts_by_decoder_norm": False, "gamma": False},
        {"kind": "batchtopk"},
        {"kind": "batchtopk", "bf16": False},
        {"grad_rows": "dense"},
        {"dead": False},
    ]
    for case in CASES:
        t0 = time.time()
        case = dict(case)
        gamma = case.pop("gamma", True)
        with_dead = case.pop("dead", True)
        step_mod.AUX_GRAD_ROWS = case.pop("grad_rows", "rows")
        # row_topk (slow in the interpreter; its real-width compilation is the first test's) in the first case only
        opts = {"bf16": True, "aux_impl": "dense", "hot_min_count": 2, "row_topk": not seen, **case}
        cfg = FastTopKConfig(d_in=d_in, d_sae=d_sae, k=k, kernels="triton", cuda_graph=False, **opts)
        tr = FastTopKTrainer(
            cfg,
            torch.randn(d_in, d_sae, generator=g) / math.sqrt(d_in),
            torch.randn(d_sae, generator=g) * 0.1,
            torch.randn(d_sae, d_in, generator=g) / math.sqrt(d_in),
            torch.randn(d_in, generator=g) * 0.1,
            gamma=torch.rand(d_in, generator=g) + 0.3 if gamma else None,
            dtype=torch.float32,
            device="cpu",
        )
        tr._row_topk_on_cpu = True  # the CUDA selection kernels (row_topk, radix, mask) in the interpreter
        dead = None
        if with_dead:
            dead = torch.zeros(d_sae, dtype=torch.bool)
            dead[torch.randperm(d_sae, generator=g)[:30]] = True
        out = tr.step(torch.randn(B, d_in, generator=g), dead=dead)
        assert all(torch.isfinite(v).all() for v in out.values() if v.is_floating_point()), case
        print(case, f"{time.time() - t0:.1f} s", file=sys.stderr)
    json.dump(list(seen.values()), open(sys.argv[1], "w"))
    """
)

# Compiles every recorded launch (argv[1]) for sm_90; topk_mask also at the blocks of real aux widths.
COMPILE = textwrap.dedent(
    """
    import importlib, json, sys
    import triton
    from triton.backends.compiler import GPUTarget

    specs = json.load(open(sys.argv[1]))
    extra = []
    for mod, name, sig, const, opts in specs:
        if name == "_topk_mask_kernel":  # the block is the row width's power of two: the aux widths' blocks
            for block in (4096, 8192, 16384):
                warps = max(4, min(16, block // 1024))  # topk_mask's rule
                extra.append([mod, name, sig, {**const, "BLOCK": block}, {**opts, "num_warps": warps}])
    done = []
    for mod, name, sig, const, opts in specs + extra:
        fn = getattr(importlib.import_module(mod), name)
        src = triton.compiler.ASTSource(fn=fn, signature={**sig, **{c: "constexpr" for c in const}}, constexprs=const)
        out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": opts.get("num_warps", 4)})
        assert out.asm["cubin"], name
        done.append(name)
    print("compiled", json.dumps(sorted(set(done))), len(done))
    """
)


def _env(tmp_path: Path, interpret: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return env


def _skip_without_ptxas(r: subprocess.CompletedProcess) -> None:
    if r.returncode != 0 and "ptxas" in r.stderr and "not found" in r.stderr.lower():
        pytest.skip("this triton install has no ptxas")


def test_topk_kernels_compile_for_sm90(tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", CHILD], env=_env(tmp_path, False), capture_output=True, text=True, timeout=600
    )
    _skip_without_ptxas(r)
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]


def test_every_kernel_the_fast_step_launches_compiles_for_sm90(tmp_path):
    specs = tmp_path / "specs.json"
    r = subprocess.run(
        [sys.executable, "-c", RECORD, str(specs), str(ROOT / "tests")],
        env=_env(tmp_path, True),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    recorded = json.loads(specs.read_text())
    names = {rec[1] for rec in recorded}
    # the fused gradient/Adam kernel with the aux gradients as rows (RowsAt: X_MAPPED) and without, the decoder
    # gathers, and each selection kernel the step can choose
    assert {"_sparse_adam_kernel", "_decode_kernel", "_row_topk_kernel", "_radix_topk_kernel"} <= names, names
    assert "_topk_mask_kernel" in names, names
    mapped = {rec[3]["X_MAPPED"] for rec in recorded if rec[1] == "_sparse_adam_kernel"}
    assert mapped == {True, False}, mapped
    assert any(rec[3]["HAS_HOT"] for rec in recorded if rec[1] == "_sparse_adam_kernel")
    r = subprocess.run(
        [sys.executable, "-c", COMPILE, str(specs)],
        env=_env(tmp_path, False),
        capture_output=True,
        text=True,
        timeout=900,
    )
    _skip_without_ptxas(r)
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]

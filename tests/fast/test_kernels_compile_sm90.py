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
        # without / with the masked copy (row_topk_masked_copy), at the same columns or at positions (compacted)
        for copy, keep, has_pos in ((False, "*i32", False), (True, "*u8", False), (True, "*u8", True)):
            sig = {**base, "SCR": "*i32", "n": "i32", "k": "i32"}
            extra = {"G": 256, "USE_BOUND": True, "CAP": 1024, "CB": 128}
            sig |= {c: "constexpr" for c in [*digits, *extra]}
            sig |= {"KEEP": keep, "XM": f"*{dt}", "POS": "*i32", "width": "i32", "COPY": "constexpr"}
            sig |= {"HAS_POS": "constexpr"}
            const = {**digits, **extra, "COPY": copy, "HAS_POS": has_pos}
            assert build(tk._row_topk_kernel, sig, const, 2).asm["cubin"]
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


def _python(tmp_path: Path, script: str, *args: str, interpret: bool, timeout: int) -> subprocess.CompletedProcess:
    """``script`` run by this interpreter with ``args``, in :func:`_env` (the Triton interpreter or not)."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=_env(tmp_path, interpret),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _skip_without_ptxas(r: subprocess.CompletedProcess) -> None:
    if r.returncode != 0 and "ptxas" in r.stderr and "not found" in r.stderr.lower():
        pytest.skip("this triton install has no ptxas")


def test_topk_kernels_compile_for_sm90(tmp_path):
    r = _python(tmp_path, CHILD, interpret=False, timeout=600)
    _skip_without_ptxas(r)
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]


def test_every_kernel_the_fast_step_launches_compiles_for_sm90(tmp_path):
    specs = tmp_path / "specs.json"
    r = _python(tmp_path, RECORD, str(specs), str(ROOT / "tests"), interpret=True, timeout=600)
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
    r = _python(tmp_path, COMPILE, str(specs), interpret=False, timeout=900)
    _skip_without_ptxas(r)
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]


# Runs one fast step at each padded aux width (fresh trainers, so the width is the bucket of the dead count) in
# Triton's CPU interpreter and writes, per configuration, the launch keys Triton would compile on CUDA (the
# argument types with Triton's value specialisation: integers divisible by 16 or equal to 1, 16-byte aligned
# pointers, do_not_specialize honoured; constexprs; options) of each width's step and of
# FastTopKTrainer.precompile_aux_selection (JSON, argv[1]).
WIDTHS = textwrap.dedent(
    """
    import inspect, json, math, sys
    sys.path.insert(0, sys.argv[2])
    import triton_interp
    assert triton_interp.enable()
    import torch
    import triton.runtime.interpreter as interp
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import KernelParam, create_function_from_signature
    from sae_rdp_plugin.fast.step import FastTopKConfig, FastTopKTrainer, aux_pad_width

    binders, keys = {}, set()
    run = interp.InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kw):
        if self.fn not in binders:  # the binder JITFunction.run uses on CUDA: its specialisation is the cache key
            sig = inspect.signature(self.fn)
            dns = list(self.kwargs.get("do_not_specialize") or [])
            dna = list(self.kwargs.get("do_not_specialize_on_alignment") or [])
            params = [
                KernelParam(i, p, i in dns or p.name in dns, i in dna or p.name in dna)
                for i, p in enumerate(sig.parameters.values())
            ]
            binders[self.fn] = create_function_from_signature(sig, params, CUDABackend)
        _, spec, opts = binders[self.fn](*args, **kw)
        keys.add(json.dumps([self.fn.__name__, spec, sorted(opts.items())], default=str))
        return run(self, *args, grid=grid, warmup=warmup, **kw)

    interp.InterpretedFunction.run = recording_run

    d_in, d_sae, k, B = 16, 256, 2, 8
    CASES = {
        "bf16 dense in_place": {"aux_impl": "dense", "in_place": True},
        "bf16 dense mask in_place": {"aux_impl": "dense", "aux_topk": "mask", "in_place": True},
        "bf16 dense radix": {"aux_impl": "dense", "aux_topk": "radix"},
        "bf16 sparse": {"aux_impl": "sparse"},
        "fp32 auto (dense from 1/20)": {"bf16": False, "aux_dense_min_density": 1 / 20},
        "fp32 dense mask": {"bf16": False, "aux_impl": "dense", "aux_topk": "mask"},
    }

    def trainer(opts):
        g = torch.Generator().manual_seed(0)
        opts = {"bf16": True, "row_topk": False, "hot_min_count": 2, **opts}
        in_place = opts.pop("in_place", False)
        cfg = FastTopKConfig(d_in=d_in, d_sae=d_sae, k=k, kernels="triton", cuda_graph=False, **opts)
        tr = FastTopKTrainer(
            cfg,
            (torch.randn(d_in, d_sae, generator=g) / math.sqrt(d_in)).contiguous(),
            torch.randn(d_sae, generator=g) * 0.1,
            torch.randn(d_sae, d_in, generator=g) / math.sqrt(d_in),
            torch.randn(d_in, generator=g) * 0.1,
            dtype=torch.float32,
            device="cpu",
            in_place=in_place,
        )
        tr._row_topk_on_cpu = True  # the CUDA selection kernels (radix, mask) in the interpreter
        return tr, g

    out = {}
    for name, opts in CASES.items():
        tr, _ = trainer(opts)
        keys.clear()
        pre_widths = tr.precompile_aux_selection()
        res = {"pre": sorted(keys), "pre_widths": pre_widths, "widths": {}}
        for width in tr.aux_widths():
            tr, g = trainer(opts)
            n_dead = width - 2
            assert aux_pad_width(n_dead, d_sae, tr._k_aux()) == width, (width, n_dead)
            dead = torch.zeros(d_sae, dtype=torch.bool)
            dead[torch.randperm(d_sae, generator=g)[:n_dead]] = True
            keys.clear()
            tr.step(torch.randn(B, d_in, generator=g), dead=dead)
            res["widths"][width] = sorted(keys)
        out[name] = res
        print(name, file=sys.stderr)
    json.dump(out, open(sys.argv[1], "w"))
    """
)


def test_no_aux_width_compiles_a_kernel_another_width_does_not(tmp_path):
    """The e2e run of 2026-12-05 (H200, cold Triton cache) spent 1.2-2.5 s in the first step at some aux widths
    (12288, 16384 of d_sae 16384; every width with aux_topk "mask"): kernels compiled inside the timed steps.
    Each width's step must launch the same Triton specialisations as every other width's (as Triton keys them
    on CUDA), apart from those FastTopKTrainer.precompile_aux_selection compiles before the first step."""
    out = tmp_path / "widths.json"
    r = _python(tmp_path, WIDTHS, str(out), str(ROOT / "tests"), interpret=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for name, res in json.loads(out.read_text()).items():
        pre = set(res["pre"])
        widths = {int(w): set(k) for w, k in res["widths"].items()}
        assert len(widths) == 5, (name, sorted(widths))  # d_sae/8, /4, /2, 3/4 and d_sae
        first = min(widths)
        for w, ks in widths.items():
            extra, missing = (ks - pre) - (widths[first] - pre), (widths[first] - pre) - (ks - pre)
            assert not extra and not missing, (name, w, first, sorted(extra), sorted(missing))
        if "mask" in name:
            # topk_mask's block follows the width: the precompile is what covers it (else this test is vacuous)
            assert res["pre_widths"] == sorted(widths), (name, res["pre_widths"])
            assert len({frozenset(k) for k in widths.values()}) > 1, name
        elif "radix" in name or "sparse" in name:
            assert not pre, (name, res["pre"])
        else:  # aux_topk "auto" (the default): topk_mask over all d_sae columns only, in the dense aux products
            # only (the fp32 case's density rule takes the sparse gathers there), precompiled at that width
            expected = [max(widths)] if name == "bf16 dense in_place" else []
            assert res["pre_widths"] == expected, (name, res["pre_widths"])

"""The top-k kernels compile for Hopper (sm_90) on a machine without a GPU: Triton's compiler and ptxas (shipped in
the triton wheel) run ahead of time, outside the interpreter the other kernel tests use, so code that only the
interpreter accepts (it is far more lenient about types and constexpr use) fails here instead of on the device.
Compiled in a child process with a fresh Triton cache (the interpreter is switched on for this one)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

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


def test_topk_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and "ptxas" in r.stderr and "not found" in r.stderr.lower():
        pytest.skip("this triton install has no ptxas")
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]

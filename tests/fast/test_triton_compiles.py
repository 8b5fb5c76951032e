"""fast.step.triton_compiles: the Triton kernels compiled inside a block, through Triton's own compile hooks (no GPU
here, so the hooks are called the way triton.runtime.jit calls them around a compilation)."""

import time

import pytest

triton = pytest.importorskip("triton")
knobs = pytest.importorskip("triton.knobs")

from sae_rdp_plugin.fast.step import triton_compiles  # noqa: E402


class _Fn:  # what triton passes as ``fn`` (JitFunctionInfo: module, name, jit_function)
    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


def _compile(key: str, fn: _Fn, seconds: float) -> bool:
    """One compilation as JITFunction._do_compile brackets it: pre hook (a true answer skips it), post hook."""
    rt = knobs.runtime
    kw = {"key": key, "repr": fn.name, "fn": fn, "compile": {}, "is_manual_warmup": False, "already_compiled": False}
    if rt.jit_cache_hook is not None and rt.jit_cache_hook(**kw):
        return False
    time.sleep(seconds)
    if rt.jit_post_compile_hook is not None:
        rt.jit_post_compile_hook(**kw)
    return True


def test_records_each_compilation_with_its_seconds_in_order():
    with triton_compiles() as found:
        _compile("k1", _Fn("sae_rdp_plugin.fast.kernels", "_sparse_adam_kernel"), 0.02)
        _compile("k2", _Fn("sae_rdp_plugin.fast.topk_kernel", "_topk_mask_kernel"), 0.0)
    assert [f["name"] for f in found] == [
        "sae_rdp_plugin.fast.kernels._sparse_adam_kernel",
        "sae_rdp_plugin.fast.topk_kernel._topk_mask_kernel",
    ]
    assert found[0]["s"] >= 0.02 and 0 <= found[1]["s"] < 0.02
    assert knobs.runtime.jit_cache_hook is None and knobs.runtime.jit_post_compile_hook is None  # restored
    assert _compile("k3", _Fn("m", "f"), 0.0) and len(found) == 2  # outside the block: not recorded


def test_hooks_set_before_are_called_and_restored_and_may_still_skip_a_compilation():
    calls = []

    def pre(**kw):
        calls.append(("pre", kw["key"]))
        return kw["key"] == "skip"  # a true answer: triton skips the compilation

    def post(**kw):
        calls.append(("post", kw["key"]))

    knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook = pre, post
    try:
        with triton_compiles() as found:
            assert _compile("a", _Fn("m", "f"), 0.0)
            assert not _compile("skip", _Fn("m", "g"), 0.0)
        assert calls == [("pre", "a"), ("post", "a"), ("pre", "skip")]
        assert [f["name"] for f in found] == ["m.f"]
        assert knobs.runtime.jit_cache_hook is pre and knobs.runtime.jit_post_compile_hook is post
    finally:
        knobs.runtime.jit_cache_hook = knobs.runtime.jit_post_compile_hook = None


def test_hooks_restored_when_the_block_raises():
    with pytest.raises(RuntimeError), triton_compiles():
        raise RuntimeError("step failed")
    assert knobs.runtime.jit_cache_hook is None and knobs.runtime.jit_post_compile_hook is None

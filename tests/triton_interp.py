"""Run Triton kernels on CPU through Triton's interpreter (TRITON_INTERPRET=1) in the tests.

Imported by conftest.py before anything imports triton, when no CUDA device is present. It also works
around one interpreter incompatibility with numpy >= 2.4: the interpreter turns a loaded scalar (a
1-element array) into a Python int with ``int(array)``, which numpy 2.4 rejects for arrays of ndim > 0
(dynamic loop bounds such as ``range(start, end)`` hit it)."""

from __future__ import annotations

import os


def enable() -> bool:
    """Set TRITON_INTERPRET=1 (unless already set) and patch the interpreter; False without triton."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        import numpy as np
        import triton.runtime.interpreter as interp
    except Exception:  # noqa: BLE001
        return False
    orig = getattr(interp, "_patch_lang_tensor", None)
    if orig is None or getattr(orig, "_sae_rdp_patched", False):
        return True

    def patched(tensor, scope):  # type: ignore[no-untyped-def]
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    patched._sae_rdp_patched = True  # type: ignore[attr-defined]
    interp._patch_lang_tensor = patched
    return True

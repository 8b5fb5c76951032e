"""Registration of the weighted SAE (WSAE) training architectures with SAELens.

``import sae_rdp_plugin`` calls :func:`register`. SAELens has no plugin discovery and importing it
takes several seconds, so registration is lazy: if ``sae_lens`` is already imported the four
``weighted_*`` architectures are registered at once, otherwise a one-shot import hook registers them
the moment ``sae_lens`` finishes importing. Either way, after ``import sae_rdp_plugin`` any code that
uses SAELens (its registry, ``LanguageModelSAERunnerConfig``, ``LanguageModelSAETrainingRunner``, the
runner CLI) sees ``weighted_standard``, ``weighted_topk``, ``weighted_jumprelu`` and
``weighted_batchtopk``. Registration is idempotent (SAELens itself raises on a second registration).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading

from sae_rdp_plugin.architectures import WEIGHTED_NAMES

_lock = threading.RLock()
_ARCHITECTURES_MODULE = "sae_rdp_plugin.wsae.architectures"


def register_now() -> None:
    """Import SAELens and register the ``weighted_*`` training architectures (idempotent).

    Registration itself is done by :mod:`sae_rdp_plugin.wsae.architectures` when it is imported; if that
    module is the one importing sae_lens right now (half-initialised), it registers at its own end."""
    with _lock:
        module = sys.modules.get(_ARCHITECTURES_MODULE)
        if module is not None and not hasattr(module, "register_with_saelens"):
            return  # mid-import: the module registers when it finishes
        importlib.import_module(_ARCHITECTURES_MODULE).register_with_saelens()


class _RegisterAfterSaeLensImport(importlib.abc.MetaPathFinder):
    """One-shot finder: wraps sae_lens's loader so registration runs right after sae_lens executes."""

    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != "sae_lens":
            return None
        _remove_hook()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original_exec = spec.loader.exec_module

        def exec_module(module):  # type: ignore[no-untyped-def]
            original_exec(module)
            register_now()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_hook: _RegisterAfterSaeLensImport | None = None


def _remove_hook() -> None:
    global _hook
    with _lock:
        if _hook is not None and _hook in sys.meta_path:
            sys.meta_path.remove(_hook)
        _hook = None


def register() -> None:
    """Register ``weighted_*`` architectures with SAELens's registries (idempotent).

    Registers immediately when ``sae_lens`` is already imported, otherwise as soon as it is imported.
    Call :func:`register_now` to force it (imports SAELens)."""
    global _hook
    with _lock:
        if "sae_lens" in sys.modules:
            register_now()
            return
        if _hook is None:
            _hook = _RegisterAfterSaeLensImport()
            sys.meta_path.insert(0, _hook)


def is_registered() -> bool:
    if "sae_lens" not in sys.modules:
        return False
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    return all(n in SAE_TRAINING_CLASS_REGISTRY for n in WEIGHTED_NAMES)

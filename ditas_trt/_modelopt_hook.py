"""Register the ``ditas`` ModelOpt mode without importing ModelOpt up front.

``import modelopt.torch.quantization`` takes seconds, and most of ditas-trt (the CLI, sampling, engines) never
needs it. Yet ``mto.restore`` of a DiTAS checkpoint in a fresh process must find the mode. So importing
:mod:`ditas_trt` installs a ``sys.meta_path`` finder that waits for ``modelopt.torch.quantization`` to finish
importing and then imports :mod:`ditas_trt.quant.mode` (which registers the mode); if ModelOpt's quantization
package is already imported, the mode is registered at once.
"""
from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings

TRIGGER = "modelopt.torch.quantization"
MODE_MODULE = "ditas_trt.quant.mode"


def _register() -> None:
    try:
        importlib.import_module(MODE_MODULE)
    except Exception as exc:  # a broken optional integration must not break ModelOpt itself
        warnings.warn(f"ditas-trt could not register its ModelOpt 'ditas' mode: {exc}", stacklevel=2)


class _Loader(importlib.abc.Loader):
    """Runs the real loader of the trigger module, then registers the mode."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _uninstall()
        _register()

    def __getattr__(self, name):  # resource readers etc. of the wrapped loader
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TRIGGER:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


_FINDER = _Finder()


def _uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def install() -> None:
    """Idempotent: register now if ModelOpt quantization is imported, else when it gets imported."""
    module = sys.modules.get(TRIGGER)
    if module is not None:
        spec = getattr(module, "__spec__", None)
        if getattr(spec, "_initializing", False):  # mid-import: let the finder's loader finish the job
            return
        _register()
        return
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)

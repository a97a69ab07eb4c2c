"""One door to TensorRT: the enterprise ``tensorrt`` package (GPU machines, NGC images) or TensorRT-RTX
(``tensorrt_rtx`` / ``tensorrt_rtx_bindings`` from PyPI, builds engines on a CPU-only machine).

TensorRT-RTX's ONNX parser ``dlopen``s ``libtensorrt_rtx.so`` (unversioned) when it meets a plugin node, but the
wheel ships only ``libtensorrt_rtx.so.1``; the failed load happens on a ``noexcept`` path and the process dies with
``terminate called without an active exception``. Both wheel libraries carry ``DT_RPATH=$ORIGIN``, so a symlink
next to them is found by that ``dlopen``: :func:`ensure_rtx_parser_library` creates it (atomically) the first time.
Where the package folder is read-only it uses a private folder and, for the CLI, re-executes the command once with
``LD_LIBRARY_PATH`` pointing there (the loader reads that variable only at process start).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Optional

from ditas_trt.errors import DitasError

FLAVOURS = ("tensorrt", "tensorrt-rtx")
RTX_MODULES = ("tensorrt_rtx", "tensorrt_rtx_bindings")
REEXEC_ENV = "DITAS_TRT_REEXECED"
PRIVATE_LIB_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ditas-trt" / "trt-rtx-lib"
PARSER_LINK = "libtensorrt_rtx.so"


@dataclass
class TensorRT:
    """The imported TensorRT module and what it is."""

    module: ModuleType
    flavour: str  # "tensorrt" | "tensorrt-rtx"
    version: str
    notes: list = field(default_factory=list)

    @property
    def is_rtx(self) -> bool:
        return self.flavour == "tensorrt-rtx"

    def describe(self) -> dict:
        return {"flavour": self.flavour, "version": self.version, "module": self.module.__name__}


def _import_rtx() -> Optional[ModuleType]:
    for name in RTX_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def import_tensorrt(flavour: Optional[str] = None, *, allow_reexec: bool = False) -> TensorRT:
    """``tensorrt`` when importable, else TensorRT-RTX; ``flavour`` (or ``$DITAS_TRT_FLAVOUR``) forces one."""
    flavour = flavour or os.environ.get("DITAS_TRT_FLAVOUR") or "auto"
    if flavour not in ("auto", *FLAVOURS):
        raise DitasError(f"unknown TensorRT flavour {flavour!r}; choose auto, {' or '.join(FLAVOURS)}")
    if flavour in ("auto", "tensorrt"):
        try:
            import tensorrt as trt  # noqa: PLC0415 (lazy: heavy, optional)

            if hasattr(trt, "Builder"):  # the PyPI `tensorrt` meta package without libraries has no Builder
                return TensorRT(trt, "tensorrt", trt.__version__)
        except ImportError:
            pass
        if flavour == "tensorrt":
            raise DitasError("TensorRT (`import tensorrt`) is not installed here; use an NGC TensorRT image "
                             "(docker/Dockerfile.build) or --flavour tensorrt-rtx")
    trt = _import_rtx()
    if trt is None:
        raise DitasError("neither TensorRT nor TensorRT-RTX is installed; "
                         "pip install -c constraints.txt -e '.[trt]' (tensorrt-rtx-cu13-bindings/-libs)")
    found = TensorRT(trt, "tensorrt-rtx", trt.__version__)
    ensure_rtx_parser_library(found, allow_reexec=allow_reexec)
    return found


def _loaded_library(stem: str) -> Optional[Path]:
    """Path of a shared library this process has mapped (``/proc/self/maps``), e.g. ``libtensorrt_rtx.so``."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if len(line.split()) >= 6 else ""
        if Path(path).name.startswith(stem + ".") and Path(path).is_file():
            return Path(path)
    return None


def _rtx_library_dir() -> tuple[Path, Path]:
    """(folder of the ONNX parser library, the real ``libtensorrt_rtx.so.N``)."""
    real = _loaded_library(PARSER_LINK)
    parser = _loaded_library("libtensorrt_onnxparser_rtx.so")
    if real is None:
        try:
            import tensorrt_rtx_libs  # noqa: PLC0415

            folder = Path(tensorrt_rtx_libs.__file__).parent
            real = next(iter(sorted(folder.glob(PARSER_LINK + ".*"))), None)
        except ImportError:
            pass
    if real is None:
        raise DitasError("TensorRT-RTX is imported but libtensorrt_rtx.so.* was not found in this process")
    return (parser.parent if parser else real.parent), real


def ensure_rtx_parser_library(trt: Optional[TensorRT] = None, *, allow_reexec: bool = False) -> Path:
    """Make ``libtensorrt_rtx.so`` resolvable for the RTX ONNX parser; returns the link's path."""
    folder, real = _rtx_library_dir()
    link = folder / PARSER_LINK
    if link.exists():
        return link
    tmp = folder / f".{PARSER_LINK}.{os.getpid()}.tmp"
    try:
        target = real.name if real.parent == folder else str(real)
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, link)  # atomic: a concurrent process doing the same is harmless
        if trt is not None:
            trt.notes.append(f"created {link} -> {target} (needed by the TensorRT-RTX ONNX parser)")
        return link
    except OSError:  # read-only install: fall back to a private folder
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    PRIVATE_LIB_DIR.mkdir(parents=True, exist_ok=True)
    private = PRIVATE_LIB_DIR / PARSER_LINK
    if not private.exists():
        private.unlink(missing_ok=True)
        os.symlink(str(real), private)
    if str(PRIVATE_LIB_DIR) in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        return private
    if allow_reexec and not os.environ.get(REEXEC_ENV):
        env = dict(os.environ, **{REEXEC_ENV: "1"})
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(PRIVATE_LIB_DIR), env.get("LD_LIBRARY_PATH")]))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    raise DitasError(f"{folder} is read-only and the TensorRT-RTX ONNX parser needs {PARSER_LINK}; "
                     f"run with LD_LIBRARY_PATH={PRIVATE_LIB_DIR}")


# ---------------------------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------------------------
def make_logger(trt: TensorRT, verbose: bool = False):
    """An ``ILogger`` that keeps every warning and error (for one-line DitasErrors) and prints them when verbose."""
    mod = trt.module

    class CollectingLogger(mod.ILogger):
        def __init__(self):
            mod.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity, msg):
            if severity in (mod.ILogger.INTERNAL_ERROR, mod.ILogger.ERROR):
                self.errors.append(msg)
            elif severity == mod.ILogger.WARNING:
                self.warnings.append(msg)
            if verbose:  # errors reach the user through the DitasError that quotes the last one
                print(f"[{trt.flavour}] {msg}", file=sys.stderr)

        def last_error(self, default: str = "no error message") -> str:
            return (self.errors[-1] if self.errors else default).strip().replace("\n", " ")

    return CollectingLogger()

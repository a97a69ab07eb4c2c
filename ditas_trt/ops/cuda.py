"""CUDA implementations of the ``ditas_trt`` ops, from ``libditas_kernels.so`` (``plugins/w4a8LoraGemm``) via ctypes.

Notation
--------
M rows (batch x tokens), K input features, N output features, G weight group size, r LoRA rank.

The library is found and loaded lazily, on the first CUDA call, never at import: ``$DITAS_TRT_KERNELS`` if set
(only that path is tried), else ``plugins/build/libditas_kernels.so`` in the source checkout, else
``ditas_trt/_lib/libditas_kernels.so`` (package data). Build it with ``scripts/build_plugins.sh``. Without it the
CPU reference keeps working; a CUDA call raises :class:`~ditas_trt.errors.DitasError` naming the paths tried.

The kernels (fp16/fp32 in and out) are called on ``torch.cuda.current_stream()``; other float dtypes go through
fp32 exactly as the reference does (``x.float()``, ``y.to(out_dtype)``).
"""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Optional

import torch

from ditas_trt.errors import DitasError
from ditas_trt.ops import _check_gemm_args, _check_quantize_args

__all__ = [
    "ENV_VAR", "LIB_NAME", "BUILD_COMMAND", "PATHS", "library_candidates", "load_library", "is_available",
    "build_info", "quantize_act", "gemm", "gemm_accumulators", "last_path",
]

ENV_VAR = "DITAS_TRT_KERNELS"
LIB_NAME = "libditas_kernels.so"
BUILD_COMMAND = "scripts/build_plugins.sh"
API_VERSION = 1

# DITAS_PATH_* of ditasKernels.h
PATHS = {"auto": 0, "sm80-large": 1, "sm80-small": 2, "sm90-cutlass": 3, "generic": 4, "fast": 5}
_PATH_NAMES = {v: k for k, v in PATHS.items()}
_DTYPE_CODES = {torch.float16: 0, torch.float32: 1}
_CUDA_ERROR_INVALID_VALUE = 1

_P = ctypes.c_void_p
_I = ctypes.c_int
# name -> (restype, argtypes); tests/test_kernels.py checks these against the prototypes in ditasKernels.h
SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "ditasKernelsApiVersion": (_I, []),
    "ditasKernelsBuildInfo": (ctypes.c_char_p, []),
    "ditasGetLastErrorString": (ctypes.c_char_p, []),
    "ditasLastPath": (_I, []),
    "ditasQuantizeAct": (_I, [_P, _I, _P, _P, _P, _I, _P, _P, _P, _I, _I, _I, _P]),
    "ditasW4A8Gemm": (_I, [_P, _P, _I, _P, _P, _I, _P, _P, _P, _I, _P, _I, _I, _I, _I, _I, _P]),
    "ditasW8A8Gemm": (_I, [_P, _P, _I, _P, _P, _I, _P, _P, _P, _I, _P, _I, _I, _I, _I, _I, _P]),
    "ditasW4A8GemmAccumulators": (_I, [_P, _P, _P, _I, _I, _I, _I, _P]),
    "ditasW8A8GemmAccumulators": (_I, [_P, _P, _P, _I, _I, _I, _I, _P]),
}

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None


# ---------------------------------------------------------------------------------------------------------------
# Library
# ---------------------------------------------------------------------------------------------------------------
def library_candidates() -> list[Path]:
    """Where the library is looked for, in order."""
    env = os.environ.get(ENV_VAR)
    if env:
        return [Path(env)]
    here = Path(__file__).resolve()
    return [here.parents[2] / "plugins" / "build" / LIB_NAME, here.parents[1] / "_lib" / LIB_NAME]


def _missing_message(tried: list[Path]) -> str:
    where = ", ".join(str(p) for p in tried)
    return (f"CUDA kernels library {LIB_NAME} not found (tried {where}); build it with `{BUILD_COMMAND}` "
            f"or set {ENV_VAR} to its path")


def load_library() -> ctypes.CDLL:
    """Load (once) and return the kernels library; :class:`DitasError` if it is missing or unusable."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        tried = library_candidates()
        path = next((p for p in tried if p.is_file()), None)
        if path is None:
            raise DitasError(_missing_message(tried))
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise DitasError(f"cannot load {path}: {exc}; rebuild it with `{BUILD_COMMAND}`") from exc
        for name, (restype, argtypes) in SIGNATURES.items():
            try:
                fn = getattr(lib, name)
            except AttributeError as exc:
                raise DitasError(f"{path} lacks {name}; rebuild it with `{BUILD_COMMAND}`") from exc
            fn.restype = restype
            fn.argtypes = argtypes
        version = lib.ditasKernelsApiVersion()
        if version != API_VERSION:
            raise DitasError(f"{path} has kernels API version {version}, this ditas-trt needs {API_VERSION}; "
                             f"rebuild it with `{BUILD_COMMAND}`")
        _lib = lib
        return lib


def is_available() -> bool:
    """True when CUDA is usable and the kernels library loads."""
    if not torch.cuda.is_available():
        return False
    try:
        load_library()
    except DitasError:
        return False
    return True


def build_info() -> str:
    """The library's build description (API version, CUDA architectures, whether the SM90 CUTLASS GEMM is in)."""
    return load_library().ditasKernelsBuildInfo().decode()


def last_path() -> str:
    """Kernel family the last successful call on this thread ran ("sm80-large", "sm90-cutlass", ...)."""
    return _PATH_NAMES.get(load_library().ditasLastPath(), "?")


def _check_rc(lib: ctypes.CDLL, rc: int, what: str) -> None:
    if rc == 0:
        return
    message = lib.ditasGetLastErrorString().decode() or f"CUDA error {rc}"
    if rc == _CUDA_ERROR_INVALID_VALUE:
        raise DitasError(f"{what}: {message}")
    raise RuntimeError(f"{what}: {message}")


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _on(t: Optional[torch.Tensor], device: torch.device, dtype: torch.dtype, name: str) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if t.device != device:
        raise DitasError(f"{name} is on {t.device}, expected {device}")
    return t.to(dtype).contiguous()


def _path_code(path: str) -> int:
    if path not in PATHS:
        raise DitasError(f"unknown kernel path {path!r}; one of {sorted(PATHS)}")
    return PATHS[path]


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


# ---------------------------------------------------------------------------------------------------------------
# Launch wrappers (also used by bench/gemm.py to force a kernel path)
# ---------------------------------------------------------------------------------------------------------------
def quantize_act(
    x: torch.Tensor,
    act_scale: Optional[torch.Tensor] = None,
    act_prescale: Optional[torch.Tensor] = None,
    lora_down: Optional[torch.Tensor] = None,
    *,
    path: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CUDA ``quantize_act``: x fp16/fp32 [M, K] -> x_q int8 [M, K], x_scale fp32 [1] | [M], lora_act fp32 [M, r]."""
    _check_quantize_args(x, act_scale, act_prescale, lora_down)
    lib = load_library()
    device = x.device
    if x.dtype not in _DTYPE_CODES:
        x = x.float()  # the reference quantizes float32(x)
    x = x.contiguous()
    m, k = x.shape
    act_scale = _on(act_scale, device, torch.float32, "act_scale")
    act_prescale = _on(act_prescale, device, torch.float32, "act_prescale")
    lora_down = _on(lora_down, device, torch.float16, "lora_down")
    rank = 0 if lora_down is None else lora_down.shape[1]
    x_q = torch.empty((m, k), dtype=torch.int8, device=device)
    x_scale = torch.empty((1 if act_scale is not None else m,), dtype=torch.float32, device=device)
    lora_act = torch.empty((m, rank), dtype=torch.float32, device=device)
    with torch.cuda.device(device):
        rc = lib.ditasQuantizeAct(
            x.data_ptr(), _DTYPE_CODES[x.dtype], _ptr(act_scale), _ptr(act_prescale), _ptr(lora_down), rank,
            x_q.data_ptr(), x_scale.data_ptr(), lora_act.data_ptr() if rank else None, m, k, _path_code(path),
            _stream(device))
    _check_rc(lib, rc, "ditas_trt::quantize_act (CUDA)")
    return x_q, x_scale, lora_act


def gemm(
    bits: int,
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    qweight: torch.Tensor,
    w_scale: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    lora_act: Optional[torch.Tensor] = None,
    lora_up: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.float16,
    *,
    path: str = "auto",
) -> torch.Tensor:
    """CUDA ``w4a8_gemm`` (bits=4) / ``w8a8_gemm`` (bits=8): y ``out_dtype`` [M, N]."""
    name = f"w{bits}a8_gemm"
    _check_gemm_args(name, bits, x_q, x_scale, qweight, w_scale, bias, lora_act, lora_up)
    lib = load_library()
    device = x_q.device
    m, k = x_q.shape
    n = qweight.shape[0]
    x_q = x_q.contiguous()
    if qweight.device != device:
        raise DitasError(f"{name}: qweight is on {qweight.device}, expected {device}")
    qweight = qweight.contiguous()
    x_scale = _on(x_scale, device, torch.float32, "x_scale")
    w_scale = _on(w_scale, device, torch.float32, "w_scale")
    bias = _on(bias, device, torch.float32, "bias")
    use_lora = lora_up is not None and lora_act is not None and lora_act.shape[1] > 0
    rank = lora_act.shape[1] if use_lora else 0
    lora_act = _on(lora_act, device, torch.float32, "lora_act") if use_lora else None
    lora_up = _on(lora_up, device, torch.float16, "lora_up") if use_lora else None
    kernel_dtype = out_dtype if out_dtype in _DTYPE_CODES else torch.float32
    y = torch.empty((m, n), dtype=kernel_dtype, device=device)
    fn = lib.ditasW4A8Gemm if bits == 4 else lib.ditasW8A8Gemm
    per_row = 1 if (x_scale.numel() == m and m != 1) else 0
    with torch.cuda.device(device):
        rc = fn(x_q.data_ptr(), x_scale.data_ptr(), per_row, qweight.data_ptr(), w_scale.data_ptr(), w_scale.shape[1],
                _ptr(bias), _ptr(lora_act), _ptr(lora_up), rank, y.data_ptr(), _DTYPE_CODES[kernel_dtype], m, n, k,
                _path_code(path), _stream(device))
    _check_rc(lib, rc, f"ditas_trt::{name} (CUDA)")
    return y if kernel_dtype == out_dtype else y.to(out_dtype)


def gemm_accumulators(bits: int, x_q: torch.Tensor, qweight: torch.Tensor, *, path: str = "auto") -> torch.Tensor:
    """Test hook: the raw INT32 sums ``x_q @ codes.T`` over all K, int32 [M, N] (no scales)."""
    lib = load_library()
    device = x_q.device
    m, k = x_q.shape
    n = qweight.shape[0]
    x_q = x_q.contiguous()
    qweight = qweight.contiguous()
    acc = torch.empty((m, n), dtype=torch.int32, device=device)
    fn = lib.ditasW4A8GemmAccumulators if bits == 4 else lib.ditasW8A8GemmAccumulators
    with torch.cuda.device(device):
        rc = fn(x_q.data_ptr(), qweight.data_ptr(), acc.data_ptr(), m, n, k, _path_code(path), _stream(device))
    _check_rc(lib, rc, f"w{bits}a8 accumulators (CUDA)")
    return acc


# ---------------------------------------------------------------------------------------------------------------
# Registration under the reference ops' names (nothing is loaded until a CUDA tensor arrives)
# ---------------------------------------------------------------------------------------------------------------
def _quantize_act_kernel(x, act_scale, act_prescale, lora_down):
    return quantize_act(x, act_scale, act_prescale, lora_down)


def _w4a8_gemm_kernel(x_q, x_scale, qweight, w_scale, bias, lora_act, lora_up, out_dtype):
    return gemm(4, x_q, x_scale, qweight, w_scale, bias, lora_act, lora_up, out_dtype)


def _w8a8_gemm_kernel(x_q, x_scale, qweight, w_scale, bias, lora_act, lora_up, out_dtype):
    return gemm(8, x_q, x_scale, qweight, w_scale, bias, lora_act, lora_up, out_dtype)


torch.library.register_kernel("ditas_trt::quantize_act", "cuda", _quantize_act_kernel)
torch.library.register_kernel("ditas_trt::w4a8_gemm", "cuda", _w4a8_gemm_kernel)
torch.library.register_kernel("ditas_trt::w8a8_gemm", "cuda", _w8a8_gemm_kernel)

"""The calibration folder ``calib/<name>/``, written atomically, and how to read it back.

=========================  ===================================================================================
file                       content
=========================  ===================================================================================
``modelopt.pth``           the ModelOpt checkpoint (``mto.save``): quantizers, pre-quant scales, LoRA buffers
``quantized.safetensors``  the packed model (:func:`ditas_trt.quant.packed.save_quantized`) + ``.json`` sidecar
``ditas.json``             recipe, calibration settings, α per layer, search losses, LoRA errors, timings
=========================  ===================================================================================

The folder is built under a hidden temporary name next to it and renamed at the end: a failure leaves nothing.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Union

import torch

from ditas_trt.artifacts import write_json_atomic
from ditas_trt.errors import DitasError

MODELOPT_FILE = "modelopt.pth"
REPORT_FILE = "ditas.json"


def check_destination(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DitasError(f"{out}: exists and is not a folder")
    if out.exists() and not force:
        raise DitasError(f"{out}: already exists (pass --force to replace it, or choose another --name)")


def write_calibration_dir(result, out: Union[str, Path], force: bool = False) -> Path:
    """Write a :class:`QuantizeResult` to ``out`` (see the module docstring)."""
    import modelopt.torch.opt as mto

    from ditas_trt.quant.packed import save_quantized

    out = Path(out)
    check_destination(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the folder from a Triton or Docker user reading it
    old = None
    try:
        mto.save(result.model, tmp / MODELOPT_FILE)
        recipe = {**result.report["recipe"], "calibration": result.report["calibration"]}
        save_quantized(result.packed, tmp, recipe=recipe, extra_sidecar={"modelopt_checkpoint": MODELOPT_FILE})
        write_json_atomic(tmp / REPORT_FILE, result.report)
        if out.exists():
            check_destination(out, force)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists() and (old / out.name).exists():
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def load_modelopt(path: Union[str, Path]) -> torch.nn.Module:
    """The ModelOpt fake-quant model of a calibration folder (a fresh DiT + ``mto.restore``)."""
    import modelopt.torch.opt as mto

    from ditas_trt.models.dit import DiTConfig
    from ditas_trt.models.loading import build_dit
    from ditas_trt.quant.packed import read_quantized_sidecar

    path = Path(path)
    file = path / MODELOPT_FILE
    if not file.is_file():
        raise DitasError(f"{path}: no {MODELOPT_FILE} (not a folder written by ditas-trt quantize)")
    config = DiTConfig(**read_quantized_sidecar(path)["model_config"])
    import ditas_trt.quant.mode  # noqa: F401  (the ditas mode must be known before restore)

    return mto.restore(build_dit(config), str(file)).eval()

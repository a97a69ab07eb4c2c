"""Quantize a DiT with DiTAS: checked ``mtq.quantize`` and the whole job (trajectories -> ModelOpt -> packed).

:func:`quantize` is ``mtq.quantize`` with two checks ModelOpt does not make: every quant_cfg entry that enables
quantizers must match at least one quantizer of the model (a typo would otherwise quantize nothing), and the
``ditas`` algorithm config is validated up front. Both fail with :class:`DitasError`.
"""
from __future__ import annotations

import contextlib
import fnmatch
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ditas_trt.errors import DitasError
from ditas_trt.quant.calibration import CalibrationSettings, Trajectories, load_or_record, replay_loop
from ditas_trt.quant.config import QuantRecipe


def _pydantic_message(exc) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc)
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', '')} (got {first.get('input')!r})"


def check_algorithm(algorithm) -> None:
    """Validate a ``{"method": "ditas", ...}`` algorithm config (other algorithms are left to ModelOpt)."""
    from pydantic import ValidationError

    from ditas_trt.quant.mode import DitasConfig

    if isinstance(algorithm, dict) and algorithm.get("method") == "ditas":
        try:
            DitasConfig(**algorithm)
        except ValidationError as exc:
            raise DitasError(f"invalid ditas algorithm config: {_pydantic_message(exc)}") from None


def check_quant_cfg(model: torch.nn.Module, quant_cfg) -> None:
    """Every entry that enables or configures quantizers must match one; raise DitasError naming the first that does not."""
    from modelopt.torch.quantization.config import normalize_quant_cfg_list
    from modelopt.torch.quantization.nn import QuantModuleRegistry, SequentialQuantizer, TensorQuantizer

    names = [n for n, m in model.named_modules() if isinstance(m, (TensorQuantizer, SequentialQuantizer))]
    for entry in normalize_quant_cfg_list(quant_cfg):
        pattern = entry["quantizer_name"]
        if not isinstance(pattern, str) or not entry.get("enable", True):
            continue
        parent = entry.get("parent_class")
        parent_cls = QuantModuleRegistry[parent] if parent else None
        if not any(fnmatch.fnmatch(n, pattern) and (parent_cls is None or isinstance(
                model.get_submodule(n.rpartition(".")[0]), parent_cls)) for n in names):
            where = f" (parent class {parent})" if parent else ""
            raise DitasError(f"quant_cfg pattern {pattern!r}{where} matches no quantizer of this model; "
                             "check the layer names (e.g. 'blocks.0.attn.qkv')")


def quantize(model: torch.nn.Module, config: dict, forward_loop: Optional[Callable] = None) -> torch.nn.Module:
    """``mtq.quantize(model, config, forward_loop)`` in place, with the checks above and ModelOpt's prints silenced."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.opt.conversion import apply_mode
    from modelopt.torch.quantization.mode import QuantizeModeRegistry
    from modelopt.torch.quantization.utils import is_quantized

    if not isinstance(config, dict) or "quant_cfg" not in config:
        raise DitasError("a quantization config is a dict with 'quant_cfg' and 'algorithm'")
    check_algorithm(config.get("algorithm"))
    with contextlib.redirect_stdout(io.StringIO()):
        if not is_quantized(model):
            model = apply_mode(model, mode=[("quantize", dict(config))], registry=QuantizeModeRegistry)
        check_quant_cfg(model, config["quant_cfg"])
        return mtq.quantize(model, config, forward_loop)


def check_recipe(model: torch.nn.Module, recipe: QuantRecipe, settings: CalibrationSettings) -> None:
    """The checks :func:`quantize` would make later, done before any trajectory is sampled or file written."""
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for pattern in recipe.layers:
        if not any(fnmatch.fnmatch(n, pattern) for n in linears):
            raise DitasError(f"layer pattern {pattern!r} matches no linear layer of this model "
                             f"(e.g. {', '.join(linears[:3])})")
    if recipe.smooth and recipe.timestep_stats == "single" and recipe.stats_step >= settings.steps:
        raise DitasError(f"stats-step {recipe.stats_step} is not one of the {settings.steps} calibration timesteps")


# ---------------------------------------------------------------------------------------------------------------
# The whole job on one DiT
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class QuantizeResult:
    model: torch.nn.Module  # the ModelOpt model (mto.save-able)
    packed: torch.nn.Module  # DiT with QuantLinear layers (save_quantized-able)
    trajectories: Trajectories
    report: dict = field(default_factory=dict)


def quantize_dit(
    model: torch.nn.Module,
    recipe: QuantRecipe,
    settings: CalibrationSettings,
    cache_dir: Optional[Path] = None,
    batch_size: int = 64,
    progress: bool = True,
    trajectories: Optional[Trajectories] = None,
) -> QuantizeResult:
    """Calibrate ``model`` (modified in place into the ModelOpt model) and pack it; timings in the report."""
    from ditas_trt.quant.export import export_packed
    from ditas_trt.quant.mode import REPORT_ATTR

    recipe.validate()
    settings.validate(model.config.num_classes)
    check_recipe(model, recipe, settings)
    model.eval()
    start = time.perf_counter()
    traj = trajectories or load_or_record(model, settings, cache_dir, batch_size, progress)
    traj_seconds = 0.0 if (trajectories is not None or traj.reused) else time.perf_counter() - start
    t0 = time.perf_counter()
    qmodel = quantize(model, recipe.to_modelopt(), replay_loop(traj, progress))
    calib_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    packed = export_packed(qmodel)
    export_seconds = time.perf_counter() - t0
    calib = getattr(qmodel, REPORT_ATTR, {})
    num_classes = model.config.num_classes
    report: dict[str, Any] = {
        "recipe": recipe.to_dict(),
        "calibration": {**settings.resolved(num_classes), "samples": len(settings.labels(num_classes)),
                        "timesteps": traj.steps, "trajectories": {k: v for k, v in traj.meta.items() if k != "settings"},
                        "trajectories_reused": traj.reused},
        "timings": {"trajectories_s": round(traj_seconds, 3), "calibration_s": round(calib_seconds, 3),
                    "export_s": round(export_seconds, 3), **{f"calib_{k}": v for k, v in calib.get("timings", {}).items()}},
        "alpha": {name: info.get("alpha") for name, info in calib.get("layers", {}).items()},
        "folds": getattr(packed, "ditas_folds", {}),
        "layers": calib.get("layers", {}),
        "model_config": model.config.to_dict(),
    }
    return QuantizeResult(model=qmodel, packed=packed, trajectories=traj, report=report)


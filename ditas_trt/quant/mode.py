"""DiTAS as a ModelOpt calibration algorithm: ``DitasConfig``, ``ditas_calibrate`` and the registered mode.

``mtq.quantize(model, DITAS_W4A8_CFG, forward_loop)`` converts the model's linears to ModelOpt quantized linears
(quant_cfg) and then runs :func:`ditas_calibrate` (``algorithm={"method": "ditas", ...}``):

1. One replay of ``forward_loop`` on the FP model (all quantizers off) records, for every DiTAS layer, the
   per-channel max |x| of every call (= timestep) and a few seeded random rows per call; layers outside DiTAS but
   quantized are max-calibrated in the same pass. Inputs that do not fit ``cache_mb`` are collected in further
   replays, so the number of passes is ``ceil(cache / budget)`` whatever the number of layers.
2. Per layer, independently (no error propagation, as in the reference): TAS statistics, α grid search
   (:mod:`.search`), ``W' = W·diag(s)``, training-free LoRA (:mod:`.lora`).
3. The result is stored the ModelOpt way: ``input_quantizer.pre_quant_scale = 1/s``, ``weight`` = the tensor
   whose INT grid is ``Q`` (``W' - L_prev·R_prev``), weight amax from it, static input amax ``max_j a_j / s_j``,
   LoRA on ``SVDQuantLinear`` buffers (``svdquant_lora_a = R`` [r, K], ``svdquant_lora_b = L`` [N, r], values
   rounded to fp16 as deployed). :mod:`.export` folds ``1/s`` into the DiT and packs the shared format.

Importing :mod:`ditas_trt` registers the mode as soon as ModelOpt's quantization package is imported (see
``ditas_trt/_modelopt_hook.py``); :func:`register` is idempotent.
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import io
import time
import warnings
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from pydantic import field_validator
from tqdm.auto import tqdm

warnings.filterwarnings("ignore", message="Cannot find transformers package")  # ModelOpt's HF exporter; unused here

from modelopt.torch.opt.config import ModeloptField
from modelopt.torch.quantization.config import QuantizeAlgorithmConfig
from modelopt.torch.quantization.conversion import create_and_replace_svdquant_linear_on_the_fly, restore_quantizer_state
from modelopt.torch.quantization.mode import BaseCalibrateModeDescriptor, CalibrateModeRegistry
from modelopt.torch.quantization.model_calib import max_calibrate
from modelopt.torch.quantization.nn import TensorQuantizer
from modelopt.torch.quantization.utils import is_quantized_linear

from ditas_trt.errors import DitasError
from ditas_trt.quant import config as qc
from ditas_trt.quant.lora import alternate
from ditas_trt.quant.search import fake_quantize_weights, search_alpha
from ditas_trt.quant.smoothing import InputRecorder, smoothing_scale, weight_channel_amax

METHOD = "ditas"
MODE_NAME = f"{METHOD}_calibrate"
REPORT_ATTR = "ditas_calibration"  # the per-layer report is left on the model under this attribute


def _field(name: str, default):
    limit = qc.LIMITS[name]
    return ModeloptField(default=default, ge=int(limit.lo), le=int(limit.hi), title=limit.title)


class DitasConfig(QuantizeAlgorithmConfig):
    """DiTAS: temporal-aggregated smoothing, layer-wise α grid search and training-free LoRA."""

    method: Literal["ditas"] = ModeloptField("ditas")
    alpha_grid: list[float] = ModeloptField(
        default=list(qc.alpha_grid()), title="smoothing strengths searched per layer (each in [0, 1])")
    smooth: bool = ModeloptField(default=True, title="smooth activations (False: round-to-nearest, no smoothing)")
    timestep_stats: Literal["all", "single"] = ModeloptField(
        default="all", title="'all': max |x| over every timestep (TAS); 'single': one timestep's statistics")
    stats_step: int = _field("stats_step", -1)
    lowrank: int = _field("lowrank", 32)
    lora_iters: int = _field("lora_iters", 10)
    search_lora: Literal["none", "cheap", "full"] = ModeloptField(
        default="cheap", title="LoRA inside the alpha search: none, cheap (one truncated SVD), full (the alternation)")
    tokens_per_step: int = _field("tokens_per_step", 64)
    cache_mb: int = _field("cache_mb", 2048)
    seed: int = _field("seed", 0)
    weight_group_size: Optional[int] = ModeloptField(
        default=None, ge=0, title="expected weight group size (0 = per output channel); None accepts the quant_cfg's")
    act_mode: Optional[Literal["static", "dynamic"]] = ModeloptField(
        default=None, title="expected activation mode; None accepts the quant_cfg's")
    layers: list[str] = ModeloptField(
        default=["*"], title="fnmatch patterns of the quantized linears DiTAS smooths (others: max calibration)")

    @field_validator("alpha_grid")
    @classmethod
    def _check_grid(cls, value):
        try:
            return list(qc.check_alpha_grid(value))
        except DitasError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, value):
        if not value or any(not p for p in value):
            raise ValueError("layers must be a non-empty list of non-empty patterns")
        return value


# ---------------------------------------------------------------------------------------------------------------
# Quantizer formats the shared quantized-linear format can hold
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerFormat:
    bits: int
    group_size: int  # 0 = per output channel
    act_mode: str  # static | dynamic


def layer_format(name: str, module) -> LayerFormat:
    """Read (and check) a quantized linear's formats: INT4/INT8 weights per channel or group, INT8 activations."""
    wq, iq = module.weight_quantizer, module.input_quantizer
    bits = wq.num_bits
    if not isinstance(wq, TensorQuantizer) or not isinstance(bits, int) or bits not in (4, 8):
        raise DitasError(f"{name}: weight quantizer must be INT4 or INT8 (got num_bits={bits!r})")
    block = wq.block_sizes
    if block and block.get(-1):
        if block.get("type", "static") != "static":
            raise DitasError(f"{name}: weight groups must be static block quantization, got {block}")
        group = int(block[-1])
    elif wq.axis in (0, (0,), -2, (-2,)):
        group = 0
    else:
        raise DitasError(f"{name}: weights must be quantized per output channel (axis 0) or in groups along K, "
                         f"got axis={wq.axis}, block_sizes={block}")
    if not isinstance(iq, TensorQuantizer) or not iq.is_enabled or iq.num_bits != 8:
        raise DitasError(f"{name}: DiTAS layers need an enabled INT8 input quantizer (W{bits}A8)")
    if getattr(iq, "_dynamic", False):
        act = "dynamic"
    elif iq.axis is None and not iq.block_sizes:
        act = "static"
    else:
        raise DitasError(f"{name}: activations must be static per-tensor or dynamic per-token, "
                         f"got axis={iq.axis}, block_sizes={iq.block_sizes}")
    return LayerFormat(bits, group, act)


# ---------------------------------------------------------------------------------------------------------------
# The algorithm
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    """What DiTAS decided for one layer; applied to the module after every replay pass is done."""

    scale: Optional[torch.Tensor]  # s [K] (None: no smoothing)
    base: torch.Tensor  # quantizes to Q
    act_amax: Optional[torch.Tensor]
    lora_l: Optional[torch.Tensor] = None
    lora_r: Optional[torch.Tensor] = None
    info: dict = field(default_factory=dict)


@contextlib.contextmanager
def _quantizers_disabled(modules):
    quantizers = [q for m in modules for q in m.modules() if isinstance(q, TensorQuantizer) and q.is_enabled]
    for q in quantizers:
        q.disable()
    try:
        yield
    finally:
        for q in quantizers:
            q.enable()


def _calibrate_weight(module) -> None:
    wq = module.weight_quantizer
    wq.reset_amax()
    wq.disable_quant()
    wq.enable_calib()
    wq(module.weight)
    wq.load_calib_amax()
    wq.enable_quant()
    wq.disable_calib()


def _plan_passes(targets: dict, rows: int, calls: Optional[int], budget: int) -> list[list[str]]:
    """Group layers so that each replay's cached inputs fit the budget (unknown call count: one group)."""
    if calls is None:
        return [list(targets)]
    groups, current, used = [], [], 0
    for name, (module, _) in targets.items():
        need = calls * rows * module.in_features * 2
        if current and used + need > budget:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += need
    return groups + [current] if current else groups


@torch.no_grad()
def ditas_calibrate(model, forward_loop=None, **config):
    """The ``_calib_func`` of the ``ditas`` mode (see the module docstring); ``config``: :class:`DitasConfig` fields."""
    cfg = DitasConfig(**config)
    if forward_loop is None:
        raise DitasError("DiTAS calibrates on the model's own trajectories: forward_loop is required")
    progress = getattr(forward_loop, "progress", True)  # replay_loop(progress=False) silences the layer bar too
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if cfg.lowrank:
        with contextlib.redirect_stdout(io.StringIO()):
            create_and_replace_svdquant_linear_on_the_fly(model)
    targets = {}
    for name, module in model.named_modules():
        if not is_quantized_linear(module) or not module.weight_quantizer.is_enabled:
            continue
        if module.input_quantizer.is_enabled and any(fnmatch.fnmatch(name, p) for p in cfg.layers):
            layer_fmt = layer_format(name, module)
            if cfg.weight_group_size is not None and layer_fmt.group_size != cfg.weight_group_size:
                raise DitasError(f"{name}: quant_cfg quantizes weights with group size {layer_fmt.group_size}, "
                                 f"the algorithm expects {cfg.weight_group_size}")
            if cfg.act_mode is not None and layer_fmt.act_mode != cfg.act_mode:
                raise DitasError(f"{name}: quant_cfg quantizes activations {layer_fmt.act_mode}, "
                                 f"the algorithm expects {cfg.act_mode}")
            targets[name] = (module, layer_fmt)
    if not targets:
        raise DitasError("no quantized linear has both a weight and an INT8 input quantizer enabled (check quant_cfg "
                         "and the algorithm's layer patterns)")
    search = cfg.smooth and len(cfg.alpha_grid) > 1
    rows = cfg.tokens_per_step if search else 0
    calls = getattr(forward_loop, "calls", None)
    groups = _plan_passes(targets, rows, calls, cfg.cache_mb << 20) if search else [list(targets)]
    target_modules = [m for m, _ in targets.values()]
    recorders: dict[str, InputRecorder] = {}
    plans: dict[str, _Plan] = {}
    timings["replay"] = timings["search"] = timings["lora"] = 0.0
    layer_bar = tqdm(total=len(targets), desc="DiTAS layers", disable=not progress, leave=False)
    for pass_index, group in enumerate(groups):
        t0 = time.perf_counter()
        hooks = []
        for index, (name, (module, _)) in enumerate(targets.items()):
            if pass_index == 0:
                recorders[name] = InputRecorder(module.in_features, rows if name in group else 0,
                                                cfg.seed * 100_003 + index)
            elif name in group:
                recorders[name].rows_per_call = rows
                recorders[name].call_amax.clear()
            if pass_index == 0 or name in group:
                hooks.append(module.register_forward_pre_hook(recorders[name]))
        try:
            # Every replay is FP: the first max-calibrates the quantizers outside DiTAS (they pass values through
            # while collecting), later ones run with every quantizer off, so they see exactly what the first saw.
            if pass_index == 0:
                with _quantizers_disabled(target_modules), contextlib.redirect_stdout(io.StringIO()):
                    max_calibrate(model, forward_loop)
            else:
                with _quantizers_disabled([model]):
                    forward_loop(model)
        finally:
            for hook in hooks:
                hook.remove()
        timings["replay"] += time.perf_counter() - t0
        for name in group:
            module, layer_fmt = targets[name]
            plans[name] = _plan_layer(name, module, layer_fmt, recorders[name], cfg, timings)
            recorders[name].rows.clear()
            layer_bar.update()
    layer_bar.close()
    for name, plan in plans.items():
        _apply_plan(targets[name][0], targets[name][1], plan)
    timings["passes"] = len(groups)
    timings["total"] = time.perf_counter() - start
    setattr(model, REPORT_ATTR, {
        "layers": {name: plan.info for name, plan in plans.items()},
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "calls": next(iter(recorders.values())).calls,
    })


def _plan_layer(name: str, module, layer_fmt: LayerFormat, rec: InputRecorder, cfg: DitasConfig,
                timings: dict) -> _Plan:
    if rec.calls == 0:
        raise DitasError(f"{name}: no calibration input reached this layer")
    weight = module.weight.detach().float().cpu()  # the recorder keeps its statistics on the CPU too
    a_all = rec.amax("all")
    info: dict = {"format": f"W{layer_fmt.bits}A8 g{layer_fmt.group_size} {layer_fmt.act_mode}"}
    grid = cfg.alpha_grid
    scale = None
    if cfg.smooth:
        try:
            a_smooth = rec.amax(cfg.timestep_stats, cfg.stats_step)
        except IndexError as exc:
            raise DitasError(f"stats-step: {exc}") from None
        t0 = time.perf_counter()
        if len(grid) > 1:
            result = search_alpha(rec.inputs(), weight, a_smooth, grid, static_amax=a_all, bits=layer_fmt.bits,
                                  group_size=layer_fmt.group_size, act_mode=layer_fmt.act_mode, lowrank=cfg.lowrank,
                                  search_lora=cfg.search_lora, lora_iters=cfg.lora_iters)
            scale, alpha = result.scale, result.alpha
            info["losses"] = [round(v, 9) for v in result.losses]
            info["relative_loss"] = result.losses[grid.index(alpha)] / max(result.reference_power, 1e-30)
        else:
            alpha = grid[0]
            scale = smoothing_scale(a_smooth, weight_channel_amax(weight), alpha)
        timings["search"] += time.perf_counter() - t0
        info["alpha"] = alpha
    smoothed = weight * scale[None, :] if scale is not None else weight
    act_amax = None
    if layer_fmt.act_mode == "static":
        act_amax = (a_all / scale).amax() if scale is not None else a_all.amax()
    plan = _Plan(scale=scale, base=smoothed, act_amax=act_amax, info=info)
    if cfg.lowrank:
        t0 = time.perf_counter()
        rank = min(cfg.lowrank, *weight.shape)
        quant = functools.partial(fake_quantize_weights, bits=layer_fmt.bits, group_size=layer_fmt.group_size)
        result = alternate(smoothed, rank, cfg.lora_iters, quant)
        plan.base, plan.lora_l, plan.lora_r = result.base, result.lora_l, result.lora_r
        info["weight_error"] = [round(e, 6) for e in result.errors]
        info["lora_best_iteration"] = result.best_iteration
        timings["lora"] += time.perf_counter() - t0
    else:
        q = fake_quantize_weights(smoothed, layer_fmt.bits, layer_fmt.group_size)
        info["weight_error"] = [round(float((smoothed - q).norm() / smoothed.norm().clamp(min=1e-30)), 6)]
    return plan


def _apply_plan(module, layer_fmt: LayerFormat, plan: _Plan) -> None:
    """Write a plan (computed on the CPU) into the module, on the module's device and in its dtype."""
    like = dict(device=module.weight.device, dtype=module.weight.dtype)
    module.weight.data.copy_(plan.base.to(**like))
    _calibrate_weight(module)
    iq = module.input_quantizer
    if plan.scale is not None:
        iq._enable_pre_quant_scale = True
        iq.pre_quant_scale = (1.0 / plan.scale).to(**like)
    if layer_fmt.act_mode == "static":
        iq.amax = plan.act_amax.to(**like).reshape(())
    if plan.lora_l is not None:
        # fp16-representable values: the deployed branch stores fp16 factors (format.lora_down / lora_up)
        module.weight_quantizer.svdquant_lora_a = plan.lora_r.half().to(**like)
        module.weight_quantizer.svdquant_lora_b = plan.lora_l.half().to(**like)


# ---------------------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------------------
def _restore_ditas(model, config, metadata):
    """Rebuild SVDQuantLinear modules (LoRA buffers) before the quantizer state is loaded."""
    if config.get("lowrank", 0):
        with contextlib.redirect_stdout(io.StringIO()):
            create_and_replace_svdquant_linear_on_the_fly(model)
    return restore_quantizer_state(model, config, metadata)


class DitasModeDescriptor(BaseCalibrateModeDescriptor):
    """Mode ``ditas_calibrate``: ``mtq.quantize``/``mtq.calibrate`` resolve ``{"method": "ditas"}`` to it."""

    _calib_func = ditas_calibrate
    _supports_layerwise = False  # one replay serves every layer; it needs the whole model

    @property
    def config_class(self):
        return DitasConfig

    @property
    def restore(self):
        return _restore_ditas


def register() -> bool:
    """Register the ``ditas`` mode with ModelOpt once per process; True when this call registered it."""
    if MODE_NAME in CalibrateModeRegistry:
        return False
    CalibrateModeRegistry.register_mode(DitasModeDescriptor)
    return True


register()

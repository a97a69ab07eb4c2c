"""ModelOpt-quantized DiT -> folded FP DiT with :class:`QuantLinear` layers (the shared quantized-linear format).

Per quantized linear the ModelOpt model holds: ``weight`` (the tensor whose INT grid is ``Q``), the weight
quantizer's format, the input quantizer's ``pre_quant_scale`` (= 1/s) and static amax, and the LoRA factors
``svdquant_lora_a`` (R [r, K], applied to ``x * pre_quant_scale``) / ``svdquant_lora_b`` (L [N, r]).

Export folds ``1/s`` where :func:`smoothing.fold_target` says it can (adaLN rows, V rows of qkv) and otherwise keeps
it as the format's ``act_prescale``, with ``lora_down = diag(1/s)·Rᵀ`` so that the LoRA branch reads the raw op
input. The V-row fold of ``attn.proj`` into a quantized qkv is exact: the codes of qkv stay as they are and the
V rows of ``w_scale``, bias and ``lora_up`` are multiplied by ``1/s`` (each output row has its own scales).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from ditas_trt.errors import DitasError
from ditas_trt.models.dit import DiT
from ditas_trt.models.loading import build_dit
from ditas_trt.quant.format import QuantLinearTensors
from ditas_trt.quant.linear import QuantLinear, replace_module
from ditas_trt.quant.smoothing import fold_inverse_scale, fold_target


@dataclass
class _Layer:
    weight: torch.Tensor  # fp32 [N, K], quantizes to the codes
    bias: Optional[torch.Tensor]
    bits: int
    group_size: int
    act_amax: Optional[torch.Tensor]
    prescale: Optional[torch.Tensor]  # 1/s [K] still to be applied to the input
    lora_r: Optional[torch.Tensor]  # [r, K] (acts on x * pre_quant_scale)
    lora_l: Optional[torch.Tensor]  # [N, r]
    row_scale: torch.Tensor  # [N] output-row factors from folds into this layer (V rows)
    placed: str = ""


def _host(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """fp32 copy on the CPU, where the packed model is built (the ModelOpt model may live on a GPU)."""
    return None if tensor is None else tensor.detach().float().cpu()


def _read_layer(name: str, module) -> _Layer:
    from ditas_trt.quant.mode import layer_format

    fmt_ = layer_format(name, module)
    iq, wq = module.input_quantizer, module.weight_quantizer
    act_amax = None
    if fmt_.act_mode == "static":
        if iq.amax is None or iq.amax.numel() != 1:
            raise DitasError(f"{name}: static activation quantizer has no per-tensor amax (not calibrated?)")
        act_amax = _host(iq.amax).reshape(1)
    pqs = iq.pre_quant_scale
    weight = _host(module.weight)
    return _Layer(
        weight=weight,
        bias=_host(module.bias),
        bits=fmt_.bits,
        group_size=fmt_.group_size,
        act_amax=act_amax,
        prescale=None if pqs is None else _host(pqs).reshape(-1),
        lora_r=_host(getattr(wq, "svdquant_lora_a", None)),
        lora_l=_host(getattr(wq, "svdquant_lora_b", None)),
        row_scale=torch.ones(weight.shape[0]),
    )


def _fp_state(qmodel: nn.Module, dit: DiT) -> None:
    source = qmodel.state_dict()
    missing = [k for k in dit.state_dict() if k not in source]
    if missing:
        raise DitasError(f"the quantized model lacks DiT tensors {missing[:3]}... (not a quantized DiT?)")
    with torch.no_grad():
        for key, tensor in dit.state_dict().items():
            tensor.copy_(source[key].to(tensor.dtype))


@torch.no_grad()
def export_packed(qmodel: nn.Module) -> DiT:
    """The deployable model: FP DiT (smoothing folded) whose quantized linears are :class:`QuantLinear` modules."""
    from modelopt.torch.quantization.utils import is_quantized_linear

    config = getattr(qmodel, "config", None)
    if config is None:
        raise DitasError("export needs a quantized ditas-trt DiT (the model has no DiT config)")
    dit = build_dit(config).eval()
    _fp_state(qmodel, dit)
    layers: dict[str, _Layer] = {}
    for name, module in qmodel.named_modules():
        if not is_quantized_linear(module):
            continue
        w_on, i_on = module.weight_quantizer.is_enabled, module.input_quantizer.is_enabled
        if w_on:
            if not isinstance(dit.get_submodule(name), nn.Linear):
                raise DitasError(f"{name}: only nn.Linear layers can be packed")
            layers[name] = _read_layer(name, module)
        elif i_on:
            raise DitasError(f"{name}: activation-only quantization is not part of the packed W4A8/W8A8 format")
    if not layers:
        raise DitasError("the model has no enabled weight quantizers; nothing to pack")
    names = {n for n, _ in dit.named_modules()}
    for name, layer in layers.items():
        if layer.prescale is None:
            layer.placed = "none"
            continue
        target = fold_target(name, names)
        if target is None or (target.kind == "modulation" and target.module in layers):
            layer.placed = "act_prescale"
            continue
        if target.kind == "v_rows" and target.module in layers:  # into the quantized qkv's output rows
            qkv = layers[target.module]
            qkv.row_scale[target.rows(qkv.weight.shape[0])] *= layer.prescale
        else:
            fold_inverse_scale(dit, target, layer.prescale)
        layer.placed = f"{target.kind}:{target.module}"
        layer.prescale = None
    for name, layer in layers.items():
        tensors = pack_layer(name, layer)
        replace_module(dit, name, QuantLinear.from_tensors(tensors))
    dit.ditas_folds = {name: layer.placed for name, layer in layers.items()}
    return dit.eval()


def pack_layer(name: str, layer: _Layer) -> QuantLinearTensors:
    lora_down = lora_up = None
    if layer.lora_r is not None:
        lora_down = layer.lora_r.T  # [K, r]
        if layer.prescale is not None:
            lora_down = lora_down * layer.prescale[:, None]  # the branch reads the raw op input
        lora_up = layer.lora_l.T  # [r, N]
    return QuantLinearTensors.from_float(
        layer.weight,
        layer.bias,
        weight_bits=layer.bits,
        group_size=layer.group_size,
        act_amax=layer.act_amax,
        act_prescale=layer.prescale,
        lora_down=lora_down,
        lora_up=lora_up,
        output_scale=layer.row_scale,
        name=name,
    )

"""Linear-layer emitters: the only place where the plugin, Q/DQ and FP graphs differ.

* :func:`float_linear` — ``MatMul`` + ``Add`` in the graph dtype (every ``nn.Linear``).
* :func:`plugin_linear` — one ``trt.plugins::W4A8LoraGemm`` node per :class:`QuantLinear` (contract in
  :mod:`.plugin_spec`): the activation quantization, LoRA down/up, GEMM, scales and bias all happen inside it.
* :func:`qdq_linear` — standard ONNX ops that onnxruntime runs on the CPU::

      x' = x * act_prescale                                   (Mul, when present)
      x_dq = DequantizeLinear(QuantizeLinear(x', s_x), s_x)   (INT8; static per-tensor s_x, or dynamic per-token
                                                               s_x = max(ReduceMax|x'|, floor) / 127, blocked Q/DQ)
      W = DequantizeLinear(qweight INT4 [N, K], w_scale)      (per-axis, or blocked along K)
      y = x_dq · Wᵀ + bias + (x · lora_down) · lora_up

Every tensor value comes from :mod:`ditas_trt.quant.format` objects; nothing is re-quantized here.
"""
from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper

from ditas_trt.export import plugin_spec
from ditas_trt.export.graph import GraphBuilder
from ditas_trt.quant.format import ACT_AMAX_FLOOR, INT8_MAX, QuantLinearTensors
from ditas_trt.quant.linear import QuantLinear


def _np(t: torch.Tensor, dtype=None) -> np.ndarray:
    array = t.detach().cpu().numpy()
    return array if dtype is None else array.astype(dtype)


def float_linear(g: GraphBuilder, name: str, module: torch.nn.Module, x: str) -> str:
    if isinstance(module, QuantLinear):
        raise ValueError(f"{name} is quantized; the FP graph needs an FP checkpoint")
    y = g.node("MatMul", [x, g.initializer(f"{name}.weight_t", _np(module.weight.t(), g.dtype))], f"{name}/matmul")
    if module.bias is None:
        return y
    return g.node("Add", [y, g.weight(f"{name}.bias", module.bias)], name)


def weight_initializer(g: GraphBuilder, name: str, layer: QuantLinearTensors) -> str:
    """The packed weight as an ONNX tensor: INT4 [N, K] whose raw data are the format's bytes, or INT8 [N, K]."""
    cfg = layer.config
    n, k = cfg.out_features, cfg.in_features
    raw = layer.qweight.detach().cpu().contiguous().numpy().tobytes()
    data_type = TensorProto.INT4 if cfg.weight_bits == 4 else TensorProto.INT8
    return g.tensor(helper.make_tensor(f"{name}.qweight", data_type, [n, k], raw, raw=True))


def _static_scale(layer: QuantLinearTensors) -> float:
    return float(layer.act_scale.reshape(-1)[0]) if layer.act_scale is not None else 0.0


def plugin_linear(g: GraphBuilder, name: str, module: torch.nn.Module, x: str) -> str:
    if not isinstance(module, QuantLinear):
        return float_linear(g, name, module, x)
    layer = module.tensors()
    cfg = layer.config
    inputs = [x, weight_initializer(g, name, layer), g.initializer(f"{name}.w_scale", _np(layer.w_scale, np.float32))]
    if cfg.act_mode == "static":
        inputs.append(g.initializer(f"{name}.act_scale", _np(layer.act_scale, np.float32).reshape(1)))
    if cfg.has_prescale:
        inputs.append(g.initializer(f"{name}.act_prescale", _np(layer.act_prescale, np.float32)))
    if cfg.rank:
        inputs += [g.initializer(f"{name}.lora_down", _np(layer.lora_down, np.float16)),
                   g.initializer(f"{name}.lora_up", _np(layer.lora_up, np.float16))]
    if cfg.has_bias:
        inputs.append(g.initializer(f"{name}.bias", _np(layer.bias, np.float32)))
    attrs = plugin_spec.attributes_for(cfg)
    return g.node(plugin_spec.OP_TYPE, inputs, name, domain=plugin_spec.DOMAIN, **attrs)


def qdq_linear(g: GraphBuilder, name: str, module: torch.nn.Module, x: str) -> str:
    if not isinstance(module, QuantLinear):
        return float_linear(g, name, module, x)
    layer = module.tensors()
    cfg = layer.config
    k = cfg.in_features
    xs = x
    if cfg.has_prescale:
        xs = g.node("Mul", [x, g.initializer(f"{name}.act_prescale", _np(layer.act_prescale, g.dtype))], f"{name}/prescale")
    if cfg.act_mode == "static":
        scale = g.initializer(f"{name}.act_scale", np.asarray(_static_scale(layer), g.dtype))
        zero = g.const(0, np.int8)
        x_q = g.node("QuantizeLinear", [xs, scale, zero], f"{name}/act_quant")
        x_dq = g.node("DequantizeLinear", [x_q, scale, zero], f"{name}/act_dequant")
    else:  # per token: one block of K along the last axis, scale computed in the graph
        amax = g.node("ReduceMax", [g.node("Abs", [xs], f"{name}/act_abs"), g.ints([-1])], f"{name}/act_amax", keepdims=1)
        amax = g.node("Max", [amax, g.const(ACT_AMAX_FLOOR)], f"{name}/act_amax_floor")
        scale = g.node("Div", [amax, g.const(float(INT8_MAX))], f"{name}/act_scale")
        x_q = g.node("QuantizeLinear", [xs, scale], f"{name}/act_quant", axis=-1, block_size=k, output_dtype=TensorProto.INT8)
        x_dq = g.node("DequantizeLinear", [x_q, scale], f"{name}/act_dequant", axis=-1, block_size=k)

    w_scale = _np(layer.w_scale, g.dtype)  # [N, K/G]
    qweight = weight_initializer(g, name, layer)
    if w_scale.shape[1] == 1:
        w = g.node("DequantizeLinear", [qweight, g.initializer(f"{name}.w_scale", w_scale[:, 0])], f"{name}/weight_dequant", axis=0)
    else:
        w = g.node("DequantizeLinear", [qweight, g.initializer(f"{name}.w_scale", w_scale)], f"{name}/weight_dequant",
                   axis=1, block_size=k // w_scale.shape[1])
    y = g.node("MatMul", [x_dq, g.node("Transpose", [w], f"{name}/weight_t", perm=[1, 0])], f"{name}/matmul")
    if cfg.has_bias:
        y = g.node("Add", [y, g.initializer(f"{name}.bias", _np(layer.bias, g.dtype))], f"{name}/bias")
    if cfg.rank:
        down = g.node("MatMul", [x, g.initializer(f"{name}.lora_down", _np(layer.lora_down, g.dtype))], f"{name}/lora_down")
        up = g.node("MatMul", [down, g.initializer(f"{name}.lora_up", _np(layer.lora_up, g.dtype))], f"{name}/lora_up")
        y = g.node("Add", [y, up], f"{name}/lora_add")
    return g.node("Identity", [y], name)


EMITTERS = {"plugin": plugin_linear, "qdq": qdq_linear, "fp16": float_linear, "fp32": float_linear}

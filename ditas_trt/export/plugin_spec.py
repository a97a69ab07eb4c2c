"""The contract of the ``W4A8LoraGemm`` plugin node, shared by the exporter, the engine builder and the tests.

The C++ plugin (``plugins/w4a8LoraGemm/w4a8LoraGemmPlugin.cpp``) declares the same fields; a test loads the
compiled library and compares its creator's field names with :data:`FIELDS`. Changing a field means bumping
:data:`VERSION` here and ``kPLUGIN_VERSION`` there.

One node is one whole quantized linear (format in :mod:`ditas_trt.quant.format`)::

    y[..., N] = W4A8LoraGemm(x[..., K], qweight, w_scale, [act_scale], [act_prescale], [lora_down, lora_up], [bias])

Inputs, in this order (the bracketed ones only when the matching field says so):

==============  ======================  ===================================================================
input           type, shape             meaning
==============  ======================  ===================================================================
x               fp16 or fp32 [..., K]   raw op input, any leading dims (M = their product)
qweight         INT4 [N, K] | INT8      the packed format bytes as an INT4 initializer (``weight_bits`` 4),
                [N, K]                  or INT8 codes (``weight_bits`` 8)
w_scale         fp32 [N, K/G]           per output channel (G = K) or per group of G along K
act_scale       fp32 [1]                static per-tensor INT8 scale, when ``act_dynamic`` = 0
act_prescale    fp32 [K]                when ``has_prescale`` = 1
lora_down       fp16 [K, r]             when ``rank`` > 0 (applied to the raw ``x``)
lora_up         fp16 [r, N]             when ``rank`` > 0
bias            fp32 [N]                when ``has_bias`` = 1
==============  ======================  ===================================================================

Output: ``y`` with the dtype of ``x``, shape ``[..., N]``.
"""
from __future__ import annotations

OP_TYPE = "W4A8LoraGemm"
DOMAIN = "trt.plugins"
VERSION = "1"
NAMESPACE = ""

# name -> (ONNX attribute kind, default). The parser turns ONNX ints into INT32 fields, floats into FLOAT32.
FIELDS: dict[str, tuple[str, object]] = {
    "weight_bits": ("int", 4),      # 4 (INT4 weights) or 8 (INT8 weights, the W8A8 comparison point)
    "group_size": ("int", 0),       # 0: one scale per output channel; else G, dividing K
    "act_dynamic": ("int", 0),      # 0: static per-tensor scale (input act_scale); 1: dynamic per-token scales
    "has_prescale": ("int", 0),     # 1: input act_prescale present
    "rank": ("int", 0),             # LoRA rank r; 0: no lora_down / lora_up inputs
    "has_bias": ("int", 0),         # 1: input bias present
}


def input_names(act_dynamic: bool, has_prescale: bool, rank: int, has_bias: bool) -> tuple[str, ...]:
    names = ["x", "qweight", "w_scale"]
    if not act_dynamic:
        names.append("act_scale")
    if has_prescale:
        names.append("act_prescale")
    if rank:
        names += ["lora_down", "lora_up"]
    if has_bias:
        names.append("bias")
    return tuple(names)


def attributes_for(config) -> dict:
    """Node attributes for a :class:`~ditas_trt.quant.format.QuantLinearConfig` (``plugin_version`` included)."""
    return {
        "weight_bits": int(config.weight_bits),
        "group_size": int(config.group_size if config.group_size not in (None, config.in_features) else 0),
        "act_dynamic": int(config.act_mode == "dynamic"),
        "has_prescale": int(bool(config.has_prescale)),
        "rank": int(config.rank),
        "has_bias": int(bool(config.has_bias)),
        "plugin_version": VERSION,
    }

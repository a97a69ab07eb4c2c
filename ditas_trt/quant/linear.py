"""`QuantLinear`: an nn.Module holding one quantized linear in the shared format and running it through the ops."""
from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn as nn

from ditas_trt.quant.format import TENSOR_NAMES, QuantLinearConfig, QuantLinearTensors


class QuantLinear(nn.Module):
    """Drop-in replacement of ``nn.Linear`` whose buffers are the format's tensors (``qweight``, ``w_scale``, ...)."""

    def __init__(self, config: QuantLinearConfig):
        super().__init__()
        self.config = config.validate()
        self.in_features = config.in_features
        self.out_features = config.out_features
        expected = config.expected_shapes()
        for name in TENSOR_NAMES:
            if name in expected:
                shape, dtype = expected[name]
                self.register_buffer(name, torch.zeros(shape, dtype=dtype))
            else:
                self.register_buffer(name, None)

    @classmethod
    def from_tensors(cls, layer: QuantLinearTensors) -> "QuantLinear":
        module = cls(layer.config)
        for name, tensor in layer.tensors().items():
            getattr(module, name).copy_(tensor)
        return module

    def tensors(self) -> QuantLinearTensors:
        return QuantLinearTensors(config=self.config, **{n: getattr(self, n) for n in TENSOR_NAMES})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ditas_trt import ops

        return ops.quantized_linear(x, self)

    def extra_repr(self) -> str:
        c = self.config
        return (f"in={c.in_features}, out={c.out_features}, W{c.weight_bits}A8 {c.act_mode}, "
                f"group={c.group_size or 'channel'}, lora_rank={c.rank}")


def quant_layer_configs(model: nn.Module) -> dict[str, dict]:
    return {name: asdict(m.config) for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)

"""Test inputs for the TensorRT path: a round-to-nearest quantized DiT in the shared format (no DiTAS needed).

Covers every feature of the format: static and dynamic activation scales, per-channel and grouped INT4 weights,
one INT8-weight layer, LoRA factors and an ``act_prescale``.
"""
from __future__ import annotations

import torch

from ditas_trt.quant.format import QuantLinearTensors
from ditas_trt.quant.linear import QuantLinear, replace_module


def calibration_amax(model, names, batches=2, batch=4, seed=0) -> dict:
    """Per-layer input amax over a few forward passes with random inputs and timesteps."""
    cfg = model.config
    amax = {n: torch.zeros(()) for n in names}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, inp, out, n=n: amax.__setitem__(n, torch.maximum(amax[n], inp[0].detach().abs().amax())))
        for n in names]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(batches):
            x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen)
            t = torch.randint(0, 1000, (batch,), generator=gen)
            y = torch.randint(0, cfg.num_classes + 1, (batch,), generator=gen)
            model(x, t, y)
    for h in hooks:
        h.remove()
    return amax


def rtn_quantize(model, rank: int = 4, seed: int = 0):
    """Quantize every linear inside the blocks in place (RTN); returns the model."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("blocks.")]
    amax = calibration_amax(model, names)
    gen = torch.Generator().manual_seed(seed)
    for i, name in enumerate(names):
        linear = model.get_submodule(name)
        n, k = linear.weight.shape
        dynamic = name.endswith("mlp.fc1")  # one dynamic per-token layer kind
        prescale = name.endswith("mlp.fc2")  # the un-foldable smoothing of fc2
        bits = 8 if name == names[-1] else 4
        group = 32 if name.endswith("attn.proj") and k % 32 == 0 else 0
        lora = rank and not name.endswith("adaLN_modulation.1")
        pre = (0.5 + torch.rand(k, generator=gen)) if prescale else None
        down = torch.randn(k, rank, generator=gen) * 0.02 if lora else None
        up = torch.randn(rank, n, generator=gen) * 0.02 if lora else None
        act_amax = None if dynamic else amax[name] * (pre.max() if prescale else 1)
        layer = QuantLinearTensors.from_float(linear.weight, linear.bias, weight_bits=bits, group_size=group,
                                              act_amax=act_amax, act_prescale=pre, lora_down=down, lora_up=up, name=name)
        replace_module(model, name, QuantLinear.from_tensors(layer))
    return model.eval()


def make_quantized_dir(model, out, rank: int = 4):
    from ditas_trt.quant.packed import save_quantized

    rtn_quantize(model, rank)
    save_quantized(model, out, recipe={"method": "rtn-test", "rank": rank})
    return out

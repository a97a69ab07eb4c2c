"""Exact CPU reference of the W4A8/W8A8 + LoRA kernels (integer accumulation, then scales, bias, LoRA)."""
from __future__ import annotations

from typing import Optional

import torch

from ditas_trt.quant import format as fmt


def group_sums(x_q: torch.Tensor, codes: torch.Tensor, groups: int) -> torch.Tensor:
    """INT32 partial sums ``acc[m, n, g] = Σ_{k in g} x_q[m, k] * codes[n, k]``, computed exactly.

    A float matmul of small integers is exact while every partial sum fits the mantissa, so float32 BLAS is used
    when ``128 * max|code| * G < 2**24`` and float64 otherwise.
    """
    m, k = x_q.shape
    n = codes.shape[0]
    g = k // groups
    bound = 128 * max(1, int(codes.abs().max()) if codes.numel() else 1) * g
    dtype = torch.float32 if bound < (1 << 24) else torch.float64
    xg = x_q.to(dtype).reshape(m, groups, g).transpose(0, 1)  # (groups, M, G)
    wg = codes.to(dtype).reshape(n, groups, g).permute(1, 2, 0)  # (groups, G, N)
    return torch.bmm(xg, wg).permute(1, 2, 0).to(torch.int32)  # (M, N, groups)


def quantize_act(
    x: torch.Tensor,
    act_scale: Optional[torch.Tensor],
    act_prescale: Optional[torch.Tensor],
    lora_down: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x_q, x_scale = fmt.quantize_activation(x, act_scale, act_prescale)
    if lora_down is None:
        lora_act = x.new_empty((x.shape[0], 0), dtype=torch.float32)
    else:
        lora_act = x.float() @ lora_down.float()
    return x_q, x_scale, lora_act


def gemm(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    codes: torch.Tensor,
    w_scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    lora_act: Optional[torch.Tensor],
    lora_up: Optional[torch.Tensor],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    acc = group_sums(x_q, codes, w_scale.shape[1])
    y = (acc.float() * w_scale.float().unsqueeze(0)).sum(dim=-1) * x_scale.float().reshape(-1, 1)
    if bias is not None:
        y = y + bias.float()
    if lora_up is not None and lora_act is not None and lora_act.shape[1]:
        y = y + lora_act.float() @ lora_up.float()
    return y.to(out_dtype)

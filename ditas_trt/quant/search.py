"""Layer-wise α grid search: pick the smoothing strength that minimises the quantized layer's output error.

For each α of the grid: ``s = smoothing_scale(a, w, α)``, ``W' = W·diag(s)`` is **re-quantized** (per output
channel / group along K the rounding of ``W'`` depends on ``s`` -- the reference code's column-group quantizer
made it equivariant, deployable formats do not), the cached inputs become ``X' = X / s`` and are INT8-quantized the
way the deployed layer will do it (static: ``amax = max_j a_j / s_j`` over all timesteps; dynamic: per row), and

    loss(α) = mean over cached rows and outputs of ``(Q8(X')·(Q4(W') + LoRA)ᵀ - X·Wᵀ)²``

The cache holds the same number of rows from every calibration timestep, so this is the paper's sum over
timesteps up to a constant. Ties go to the smaller α. The grid is evaluated in batches of α (one ``bmm``) sized to a
memory budget. LoRA inside the search: ``none``; ``cheap`` = one truncated SVD of ``W' - Q(W')`` (the first
alternation); ``full`` = the whole alternation for every α (slow; for studies).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from ditas_trt.quant import format as fmt
from ditas_trt.quant.lora import alternate, low_rank
from ditas_trt.quant.smoothing import smoothing_scale, weight_channel_amax

CHUNK_BYTES = 256 << 20
SEARCH_POWER_ITERS = 2  # randomized SVD inside the search (large layers only): ranking alphas needs less precision


def fake_quantize_activation(x: torch.Tensor, amax: Optional[torch.Tensor]) -> torch.Tensor:
    """INT8 quantize-dequantize of rows ``x`` [M, K] with the format's arithmetic (``amax`` None: per row)."""
    return fmt.fake_quantize_activation(x, None if amax is None else fmt.activation_scale_from_amax(amax.reshape(1)))


def fake_quantize_weights(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Quantize-dequantize of [.., N, K] weights (groups are per output row, so batches flatten into rows)."""
    shape = w.shape
    return fmt.fake_quantize_weight(w.reshape(-1, shape[-1]).float(), bits, group_size).reshape(shape)


@dataclass
class SearchResult:
    alpha: float
    scale: torch.Tensor  # s [K]
    losses: list[float] = field(default_factory=list)  # per grid value
    reference_power: float = 0.0  # mean(Y²): losses / this = relative error


@torch.no_grad()
def search_alpha(
    inputs: torch.Tensor,
    weight: torch.Tensor,
    act_amax: torch.Tensor,
    grid,
    *,
    static_amax: Optional[torch.Tensor] = None,
    bits: int = 4,
    group_size: int = 0,
    act_mode: str = "static",
    lowrank: int = 0,
    search_lora: str = "none",
    lora_iters: int = 10,
    chunk_bytes: int = CHUNK_BYTES,
) -> SearchResult:
    """Grid search over ``grid`` for one linear: ``inputs`` X [M, K], ``weight`` W [N, K].

    ``act_amax`` [K] are the statistics the smoothing factors come from; ``static_amax`` [K] (default: the same)
    the per-channel maxima over all calibration data that set the static INT8 range of ``X / s``.
    """
    x = inputs.float()
    w = weight.detach().float()
    m, k = x.shape
    n = w.shape[0]
    reference = x @ w.T  # [M, N]
    w_amax = weight_channel_amax(w)
    grid = [float(a) for a in grid]
    losses: list[float] = []
    per_alpha = 4 * (3 * n * k + 2 * m * k + 2 * m * n)
    chunk = max(1, min(len(grid), chunk_bytes // max(per_alpha, 1)))
    rank = min(lowrank, n, k) if search_lora != "none" else 0
    for start in range(0, len(grid), chunk):
        alphas = grid[start : start + chunk]
        s = smoothing_scale(act_amax, w_amax, torch.tensor(alphas))  # [A, K]
        w_s = w.unsqueeze(0) * s.unsqueeze(1)  # [A, N, K]
        if rank and search_lora == "full":
            w_q = torch.stack([_alternated(w_s[i], rank, lora_iters, bits, group_size) for i in range(len(alphas))])
        else:
            w_q = fake_quantize_weights(w_s, bits, group_size)
            if rank:
                lora_l, lora_r = low_rank(w_s - w_q, rank, power_iters=SEARCH_POWER_ITERS)
                w_q = w_q + lora_l @ lora_r
        x_s = x.unsqueeze(0) / s.unsqueeze(1)  # [A, M, K]
        if act_mode == "static":
            amax = ((act_amax if static_amax is None else static_amax).float().unsqueeze(0) / s).amax(dim=1)  # [A]
            x_q = torch.stack([fake_quantize_activation(x_s[i], amax[i]) for i in range(len(alphas))])
        else:
            x_q = fake_quantize_activation(x_s.reshape(-1, k), None).reshape(x_s.shape)
        err = torch.bmm(x_q, w_q.transpose(1, 2)) - reference.unsqueeze(0)
        losses += err.pow(2).mean(dim=(1, 2)).tolist()
    best = min(range(len(grid)), key=lambda i: (losses[i] if math.isfinite(losses[i]) else math.inf, i))
    return SearchResult(alpha=grid[best], scale=smoothing_scale(act_amax, w_amax, grid[best]), losses=losses,
                        reference_power=float(reference.pow(2).mean()))


def _alternated(w_s: torch.Tensor, rank: int, iters: int, bits: int, group_size: int) -> torch.Tensor:
    result = alternate(w_s, rank, iters, lambda t: fake_quantize_weights(t, bits, group_size))
    return fake_quantize_weights(result.base, bits, group_size) + result.lora_l @ result.lora_r

"""Training-free LoRA: a rank-r FP branch ``L·R`` that carries what INT quantization of ``W'`` loses.

Alternation (LoftQ-style, as in the DiTAS code): start from ``L·R = 0`` and repeat
``Q = quant(W' - L·R)``, ``L·R = SVD_r(W' - Q)``; the layer then computes ``x·(Q + L·R)ᵀ``. The iteration with
the smallest ``‖W' - Q - L·R‖`` is kept (the error usually falls monotonically; keeping the best guards the
rare uptick). ``L = U_r·sqrt(S_r)`` [N, r] and ``R = sqrt(S_r)·V_rᵀ`` [r, K].

Truncated SVD: exact when ``min(N, K) <= EXACT_SVD_MAX``, else randomized (``torch.svd_lowrank``, r + 16 columns,
4 power iterations) -- on DiT-XL/2 shapes an exact decomposition per iteration would dominate the calibration time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

EXACT_SVD_MAX = 768
OVERSAMPLE = 16
POWER_ITERS = 4


def low_rank(
    matrix: torch.Tensor, rank: int, exact: bool | None = None, power_iters: int = POWER_ITERS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors ``(L [.., N, r], R [.., r, K])`` of ``matrix`` [.., N, K] (batched allowed).

    Exact: eigen-decomposition of the float64 Gram matrix of the smaller side (same subspace as the SVD, much
    cheaper than LAPACK's SVD for these thin shapes). Balanced factors: ``L = U_r·sqrt(S_r)``, ``R = sqrt(S_r)·V_rᵀ``.
    """
    m = matrix.float()
    n, k = m.shape[-2:]
    rank = min(rank, n, k)
    if exact is None:
        exact = min(n, k) <= EXACT_SVD_MAX
    if not exact:
        q = min(rank + OVERSAMPLE, n, k)
        u, s, v = torch.svd_lowrank(m, q=q, niter=power_iters)
        root = s[..., :rank].clamp(min=0).sqrt()
        return u[..., :rank] * root.unsqueeze(-2), root.unsqueeze(-1) * v[..., :rank].transpose(-1, -2)
    transpose = k > n
    md = m.double().transpose(-1, -2) if transpose else m.double()  # [.., big, small]
    evals, evecs = torch.linalg.eigh(md.transpose(-1, -2) @ md)  # ascending
    v = evecs[..., -rank:].flip(-1)  # right singular vectors [.., small, r]
    sing = evals[..., -rank:].flip(-1).clamp(min=0).sqrt()
    root = sing.sqrt()
    keep = sing > sing[..., :1].clamp(min=1e-300) * 1e-12  # drop numerically zero directions
    left = (md @ v) / torch.where(keep, root, torch.ones_like(root)).unsqueeze(-2) * keep.unsqueeze(-2)
    right = (root * keep).unsqueeze(-1) * v.transpose(-1, -2)
    if transpose:  # factors of mᵀ = left·right  ->  m = rightᵀ·leftᵀ
        left, right = right.transpose(-1, -2), left.transpose(-1, -2)
    return left.float(), right.float()


@dataclass
class LoraResult:
    """``base`` quantizes to the kept ``Q`` (``base = W' - L_prev·R_prev``); ``errors[i]`` = ‖W' - Q - L·R‖_F /
    ‖W'‖_F after iteration i (entry 0: plain quantization without LoRA)."""

    base: torch.Tensor
    lora_l: torch.Tensor
    lora_r: torch.Tensor
    errors: list[float] = field(default_factory=list)
    best_iteration: int = 0


@torch.no_grad()
def alternate(
    weight: torch.Tensor, rank: int, iters: int, fake_quant: Callable[[torch.Tensor], torch.Tensor]
) -> LoraResult:
    """Run the alternation on a smoothed weight ``W'`` [N, K]; ``fake_quant`` maps a weight to its dequantized INT grid."""
    w = weight.float()
    norm = w.norm().clamp(min=1e-30)
    n, k = w.shape
    lora_l, lora_r = w.new_zeros(n, rank), w.new_zeros(rank, k)
    errors = [float((w - fake_quant(w)).norm() / norm)]
    best = None
    for it in range(iters):
        base = w - lora_l @ lora_r
        q = fake_quant(base)
        lora_l, lora_r = low_rank(w - q, rank)
        err = float((w - q - lora_l @ lora_r).norm() / norm)
        errors.append(err)
        if best is None or err < best[0]:
            best = (err, base, lora_l, lora_r, it + 1)
    _, base, lora_l, lora_r, best_it = best
    return LoraResult(base=base, lora_l=lora_l, lora_r=lora_r, errors=errors, best_iteration=best_it)

"""Temporal-aggregated smoothing (TAS): activation statistics over timesteps, smoothing factors, and folding.

Notation: a linear ``y = x Wᵀ + b`` with ``W`` [N, K]; smoothing by ``s`` [K] rewrites it as
``y = (x / s)(W·diag(s))ᵀ + b``. The ``1/s`` on the input is folded where the DiT allows it at no run-time cost:

============================  ==============================================================================
layer                         where ``1/s`` goes
============================  ==============================================================================
``blocks.i.attn.qkv``         rows of shift_msa / scale_msa in ``blocks.i.adaLN_modulation.1``
``blocks.i.mlp.fc1``          rows of shift_mlp / scale_mlp in ``blocks.i.adaLN_modulation.1``
``final_layer.linear``        rows of shift / scale in ``final_layer.adaLN_modulation.1``
``blocks.i.attn.proj``        V rows (and bias) of ``blocks.i.attn.qkv``: attention is linear in V per channel
anything else (``mlp.fc2``)   the format's ``act_prescale`` (multiplied in the activation-quantize step)
============================  ==============================================================================

Modulation fold: the layer's input is ``LN(x)(1 + scale) + shift``; dividing it by ``s`` means
``shift' = shift / s`` (weight rows and bias ÷ s) and ``1 + scale' = (1 + scale) / s`` (weight rows ÷ s,
bias ``(b + 1 - s) / s``). Both chunks feed only that layer, so the fold is exact.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from ditas_trt.quant.linear import replace_module

SCALE_MIN, SCALE_MAX = 1e-4, 1e4
AMAX_FLOOR = 1e-5

# (layer regex, modulation linear, shift chunk, scale chunk, chunks) -- chunk order of DiTBlock / FinalLayer.
_MODULATION_FOLDS = (
    (re.compile(r"^(?P<p>(?:.*\.)?blocks\.\d+)\.attn\.qkv$"), "{p}.adaLN_modulation.1", 0, 1, 6),
    (re.compile(r"^(?P<p>(?:.*\.)?blocks\.\d+)\.mlp\.fc1$"), "{p}.adaLN_modulation.1", 3, 4, 6),
    (re.compile(r"^(?P<p>(?:.*\.)?final_layer)\.linear$"), "{p}.adaLN_modulation.1", 0, 1, 2),
)
_V_ROWS_FOLD = re.compile(r"^(?P<p>(?:.*\.)?blocks\.\d+\.attn)\.proj$")


# ---------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------
class InputRecorder:
    """Forward pre-hook of one linear: per-channel max |x| of every call, and a few input rows of every call.

    ``rows_per_call`` rows are drawn at random (seeded) from all batch x token rows of a call, so the cache is
    ``calls x rows_per_call x K`` (stored fp16) however large the batch; 0 keeps statistics only.
    """

    def __init__(self, in_features: int, rows_per_call: int, seed: int):
        self.in_features = in_features
        self.rows_per_call = rows_per_call
        self.generator = torch.Generator().manual_seed(seed)
        self.call_amax: list[torch.Tensor] = []
        self.rows: list[torch.Tensor] = []

    def __call__(self, module, args):
        x = args[0].detach().reshape(-1, self.in_features)
        self.call_amax.append(x.abs().amax(dim=0).float().cpu())
        if self.rows_per_call:
            keep = x if x.shape[0] <= self.rows_per_call else x[
                torch.randperm(x.shape[0], generator=self.generator)[: self.rows_per_call].to(x.device)]
            self.rows.append(keep.to(torch.float16).cpu())

    @property
    def calls(self) -> int:
        return len(self.call_amax)

    def amax(self, timestep_stats: str = "all", step: int = -1) -> torch.Tensor:
        """TAS: max over every call (= every timestep); 'single': one call's statistics (-1 = the middle one)."""
        if not self.call_amax:
            raise RuntimeError("no calibration input reached this layer")
        if timestep_stats == "all":
            return torch.stack(self.call_amax).amax(dim=0)
        index = self.calls // 2 if step < 0 else step
        if index >= self.calls:
            raise IndexError(f"statistics step {index} >= {self.calls} calibration calls")
        return self.call_amax[index]

    def inputs(self) -> torch.Tensor:
        return torch.cat(self.rows).float()

    def cache_bytes(self) -> int:
        return sum(r.numel() * r.element_size() for r in self.rows)


def smoothing_scale(act_amax: torch.Tensor, weight_amax: torch.Tensor, alpha) -> torch.Tensor:
    """``s_j = max|X_j|^α / max|W_j|^(1-α)``, clamped to [1e-4, 1e4]; ``alpha`` a float or a [A] tensor -> [A, K]."""
    a = act_amax.float().clamp(min=AMAX_FLOOR)
    w = weight_amax.float().clamp(min=AMAX_FLOOR)
    alpha_t = torch.as_tensor(alpha, dtype=torch.float32)
    if alpha_t.dim() == 0:
        return (a.pow(alpha_t) / w.pow(1 - alpha_t)).clamp(SCALE_MIN, SCALE_MAX)
    alpha_t = alpha_t.reshape(-1, 1)
    return (a.unsqueeze(0).pow(alpha_t) / w.unsqueeze(0).pow(1 - alpha_t)).clamp(SCALE_MIN, SCALE_MAX)


def weight_channel_amax(weight: torch.Tensor) -> torch.Tensor:
    """max_n |W[n, j]| per input channel j: [K]."""
    return weight.detach().float().abs().amax(dim=0)


# ---------------------------------------------------------------------------------------------------------------
# Folding
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FoldTarget:
    """Where a layer's input scaling ``1/s`` can be folded: a modulation linear's chunks or V rows of qkv."""

    kind: str  # "modulation" | "v_rows"
    module: str
    shift_chunk: int = 0
    scale_chunk: int = 0
    chunks: int = 0

    def rows(self, out_features: int) -> slice:
        """The V rows of qkv (its last third) that a ``v_rows`` fold scales."""
        assert self.kind == "v_rows", "modulation folds touch two chunks; use fold_into_modulation"
        third = out_features // 3
        return slice(2 * third, 3 * third)


def fold_target(layer_name: str, module_names: set[str]) -> Optional[FoldTarget]:
    """Where ``layer_name``'s smoothing folds in a DiT with modules ``module_names`` (None: use a pre-scale)."""
    for pattern, target, shift, scale, chunks in _MODULATION_FOLDS:
        match = pattern.match(layer_name)
        if match:
            name = target.format(p=match["p"])
            return FoldTarget("modulation", name, shift, scale, chunks) if name in module_names else None
    match = _V_ROWS_FOLD.match(layer_name)
    if match and f"{match['p']}.qkv" in module_names:
        return FoldTarget("v_rows", f"{match['p']}.qkv")
    return None


@torch.no_grad()
def fold_into_modulation(linear: nn.Linear, target: FoldTarget, inv_s: torch.Tensor) -> None:
    """Make the modulated input come out multiplied by ``inv_s`` (= 1/s): see the module docstring."""
    d = linear.out_features // target.chunks
    inv = inv_s.to(linear.weight.dtype)
    shift = slice(target.shift_chunk * d, (target.shift_chunk + 1) * d)
    scale = slice(target.scale_chunk * d, (target.scale_chunk + 1) * d)
    if inv.shape[0] != d:
        raise ValueError(f"smoothing has {inv.shape[0]} channels, modulation chunks have {d}")
    linear.weight[shift] *= inv[:, None]
    linear.weight[scale] *= inv[:, None]
    if linear.bias is not None:
        linear.bias[shift] *= inv
        linear.bias[scale] = (linear.bias[scale] + 1) * inv - 1


@torch.no_grad()
def fold_into_rows(linear: nn.Linear, rows: slice, inv_s: torch.Tensor) -> None:
    """Scale some output rows of an FP linear (weight and bias) by ``inv_s``."""
    inv = inv_s.to(linear.weight.dtype)
    linear.weight[rows] *= inv[:, None]
    if linear.bias is not None:
        linear.bias[rows] *= inv


@torch.no_grad()
def fold_inverse_scale(model: nn.Module, target: FoldTarget, inv_s: torch.Tensor) -> None:
    """Fold ``inv_s`` (= 1/s) into the FP linear ``target`` names: its modulation chunks or its V rows."""
    linear = model.get_submodule(target.module)
    linear = linear.linear if isinstance(linear, PreScale) else linear
    if target.kind == "modulation":
        fold_into_modulation(linear, target, inv_s)
    else:
        fold_into_rows(linear, target.rows(linear.out_features), inv_s)


class PreScale(nn.Module):
    """An FP linear whose input is multiplied by a fixed vector first (smoothing that could not be folded)."""

    def __init__(self, linear: nn.Linear, prescale: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.register_buffer("prescale", prescale.detach().to(linear.weight.dtype).clone())

    def forward(self, x):
        return self.linear(x * self.prescale)


@torch.no_grad()
def smooth_fp_model(model: nn.Module, scales: dict[str, torch.Tensor]) -> dict[str, str]:
    """Apply smoothing ``s`` to named FP linears of a DiT without quantizing: ``W·diag(s)`` plus the fold of
    ``1/s`` (or a :class:`PreScale` wrapper). Returns ``{layer: where its 1/s went}``. The outputs are unchanged
    up to float rounding, which is what the folding test checks."""
    names = {name for name, _ in model.named_modules()}
    placed = {}
    for name, s in scales.items():
        linear = model.get_submodule(name)
        linear.weight.mul_(s.to(linear.weight.dtype)[None, :])
        inv = 1.0 / s.float()
        target = fold_target(name, names)
        if target is None:
            replace_module(model, name, PreScale(linear, inv))
        else:
            fold_inverse_scale(model, target, inv)
        placed[name] = "prescale" if target is None else f"{target.kind}:{target.module}"
    return placed

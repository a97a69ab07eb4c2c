"""Typed DiTAS recipes and the ModelOpt presets built from them (``DITAS_W4A8_CFG``, ``DITAS_W8A8_CFG``).

A :class:`QuantRecipe` is everything that defines one quantization: the quantizer format (weight bits, group size,
activation mode, which layers) and the knobs of the ``ditas`` calibration algorithm. ``recipe.to_modelopt()`` is
the config ``mtq.quantize`` takes: an ordered, list-style ``quant_cfg`` plus ``algorithm={"method": "ditas", ...}``.
The bounds of every algorithm knob live in :data:`LIMITS`, shared by :meth:`QuantRecipe.validate` (CLI, no ModelOpt
import) and the pydantic ``DitasConfig`` of :mod:`.mode`.

This module imports neither torch nor ModelOpt, so the CLI can build and check recipes cheaply.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

from ditas_trt.errors import DitasError

# The four linears of every DiT block (attention in/out, MLP in/out); other layers stay FP unless added.
DEFAULT_LAYERS = ("*blocks.*.attn.qkv", "*blocks.*.attn.proj", "*blocks.*.mlp.fc1", "*blocks.*.mlp.fc2")
ACT_MODES = ("static", "dynamic")
TIMESTEP_STATS = ("all", "single")
SEARCH_LORA = ("none", "cheap", "full")


def alpha_grid(step: float = 0.05) -> tuple[float, ...]:
    """0, step, ..., 1 (rounded to 6 decimals); the paper's grid is step 0.05 (21 values)."""
    if not 0 < step <= 1:
        raise DitasError(f"alpha step must be in (0, 1], got {step}")
    n = int(round(1 / step))
    if abs(n * step - 1) > 1e-9:
        raise DitasError(f"alpha step {step} does not divide 1")
    return tuple(round(i * step, 6) for i in range(n + 1))


@dataclass(frozen=True)
class Limit:
    lo: float
    hi: float
    title: str


# name -> allowed closed range and the one-line meaning (also the ModeloptField title).
LIMITS = {
    "lowrank": Limit(0, 1024, "rank r of the training-free LoRA branch (0 = no LoRA)"),
    "lora_iters": Limit(1, 100, "alternations Q = quant(W' - LR), LR = SVD_r(W' - Q)"),
    "tokens_per_step": Limit(1, 1 << 20, "activation rows kept per layer and calibration timestep for the alpha search"),
    "stats_step": Limit(-1, 100_000, "calibration call whose statistics 'single' smoothing uses (-1 = the middle one)"),
    "cache_mb": Limit(16, 1 << 20, "memory budget of the cached layer inputs; more layers than fit -> more replay passes"),
    "group_size": Limit(0, 1 << 16, "INT weight group size along K (0 = one scale per output channel)"),
    "seed": Limit(0, 2**31 - 1, "seed of the token subsampling"),
}


def check_limit(name: str, value, flag: Optional[str] = None) -> None:
    limit = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not limit.lo <= value <= limit.hi:
        shown = flag or name
        raise DitasError(f"{shown} must be an integer in [{int(limit.lo)}, {int(limit.hi)}] ({limit.title}), got {value!r}")


def check_alpha_grid(grid) -> tuple[float, ...]:
    values = tuple(float(a) for a in grid)
    if not values:
        raise DitasError("the alpha grid is empty")
    if len(values) > 101:
        raise DitasError(f"the alpha grid has {len(values)} values; at most 101 are allowed")
    bad = [a for a in values if not 0.0 <= a <= 1.0]
    if bad:
        raise DitasError(f"alpha values must lie in [0, 1], got {bad}")
    if len(set(values)) != len(values):
        raise DitasError(f"the alpha grid has repeated values: {list(values)}")
    return values


@dataclass
class QuantRecipe:
    """A DiTAS quantization: quantizer format + algorithm knobs (defaults: the paper's W4A8 with LoRA)."""

    # quantizer format (shared quantized-linear format: INT4/INT8 symmetric weights, INT8 activations)
    weight_bits: int = 4
    group_size: int = 0  # 0: per output channel
    act_mode: str = "static"  # static per-tensor (calibrated) | dynamic per-token
    layers: tuple[str, ...] = DEFAULT_LAYERS
    # the ditas algorithm
    smooth: bool = True  # False: round-to-nearest without smoothing (the naive baseline)
    alpha_grid: tuple[float, ...] = field(default_factory=alpha_grid)
    timestep_stats: str = "all"  # all: TAS (max over every timestep); single: one timestep's statistics
    stats_step: int = -1
    lowrank: int = 32
    lora_iters: int = 10
    search_lora: str = "cheap"  # LoRA inside the alpha search: none | cheap (one randomized SVD) | full
    tokens_per_step: int = 64
    cache_mb: int = 2048
    seed: int = 0

    def validate(self) -> "QuantRecipe":
        if self.weight_bits not in (4, 8):
            raise DitasError(f"weight bits must be 4 or 8, got {self.weight_bits}")
        check_limit("group_size", self.group_size, "group size")
        if self.group_size and self.group_size % 2:
            raise DitasError(f"group size must be even (INT4 packs two codes per byte), got {self.group_size}")
        if self.act_mode not in ACT_MODES:
            raise DitasError(f"activation mode must be one of {ACT_MODES}, got {self.act_mode!r}")
        if not self.layers or any(not isinstance(p, str) or not p.strip() for p in self.layers):
            raise DitasError(f"layer patterns must be non-empty strings, got {list(self.layers)}")
        self.alpha_grid = check_alpha_grid(self.alpha_grid)
        if self.timestep_stats not in TIMESTEP_STATS:
            raise DitasError(f"timestep statistics must be one of {TIMESTEP_STATS}, got {self.timestep_stats!r}")
        if self.search_lora not in SEARCH_LORA:
            raise DitasError(f"search LoRA mode must be one of {SEARCH_LORA}, got {self.search_lora!r}")
        for name in ("lowrank", "lora_iters", "tokens_per_step", "stats_step", "cache_mb", "seed"):
            check_limit(name, getattr(self, name), name.replace("_", "-"))
        self.layers = tuple(self.layers)
        return self

    # -- ModelOpt view -----------------------------------------------------------------------------------------
    def weight_quantizer_cfg(self) -> dict:
        if self.group_size:
            return {"num_bits": self.weight_bits, "block_sizes": {-1: self.group_size, "type": "static"}}
        return {"num_bits": self.weight_bits, "axis": 0}

    def input_quantizer_cfg(self) -> dict:
        if self.act_mode == "dynamic":
            return {"num_bits": 8, "type": "dynamic", "block_sizes": {-1: None}}  # one scale per token (row)
        return {"num_bits": 8, "axis": None}

    def quant_cfg(self) -> list[dict]:
        entries: list[dict] = [{"quantizer_name": "*", "enable": False}]
        for pattern in self.layers:
            entries.append({"quantizer_name": f"{pattern}.weight_quantizer", "parent_class": "nn.Linear",
                            "cfg": self.weight_quantizer_cfg()})
            entries.append({"quantizer_name": f"{pattern}.input_quantizer", "parent_class": "nn.Linear",
                            "cfg": self.input_quantizer_cfg()})
        return entries

    def algorithm(self) -> dict:
        return {
            "method": "ditas",
            "alpha_grid": list(self.alpha_grid),
            "smooth": self.smooth,
            "timestep_stats": self.timestep_stats,
            "stats_step": self.stats_step,
            "lowrank": self.lowrank,
            "lora_iters": self.lora_iters,
            "search_lora": self.search_lora,
            "tokens_per_step": self.tokens_per_step,
            "cache_mb": self.cache_mb,
            "seed": self.seed,
            "weight_group_size": self.group_size,
            "act_mode": self.act_mode,
        }

    def to_modelopt(self) -> dict[str, Any]:
        """The ``config`` argument of ``mtq.quantize`` / :func:`ditas_trt.quant.quantize`."""
        self.validate()
        return {"quant_cfg": self.quant_cfg(), "algorithm": self.algorithm()}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layers"] = list(self.layers)
        data["alpha_grid"] = list(self.alpha_grid)
        return data

    @property
    def label(self) -> str:
        group = f"g{self.group_size}" if self.group_size else "per-channel"
        return f"W{self.weight_bits}A8 ({group}, {self.act_mode} activations, LoRA r={self.lowrank})"


PRESETS = {
    "w4a8": QuantRecipe(),
    # 8-bit weights barely lose anything to rounding; the same smoothing and alpha search, no LoRA branch.
    "w8a8": QuantRecipe(weight_bits=8, lowrank=0, search_lora="none"),
}


def preset(name: str, **changes) -> QuantRecipe:
    if name not in PRESETS:
        raise DitasError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **changes).validate()


DITAS_W4A8_CFG = PRESETS["w4a8"].to_modelopt()
DITAS_W8A8_CFG = PRESETS["w8a8"].to_modelopt()

"""The quantized-linear format: the one definition of packed weights, scales, activation quantization and LoRA factors.

Every path (torch op, CUDA kernels, ONNX exporters, TensorRT plugin, tests) imports this module; no other file
packs nibbles or computes a scale.

Notation
--------
M  rows of the activation (batch x tokens)      K  input features       N  output features
G  weight group size along K (G == K: one scale per output channel)     r  LoRA rank

Tensors of one quantized linear (``y = x Wᵀ + b`` with ``W`` of shape [N, K], as in ``nn.Linear``)
--------------------------------------------------------------------------------------------------
============  =====  ===========  ==========================================================================
name          dtype  shape        meaning
============  =====  ===========  ==========================================================================
qweight       uint8  [N, K/2]     4-bit: two's-complement INT4, two per byte along K, low nibble = even k
                                  (exactly the bytes of an ONNX / TensorRT INT4 tensor of shape [N, K])
              int8   [N, K]       8-bit weights (the W8A8 comparison format)
w_scale       fp32   [N, K/G]     ``W[n, k] ≈ q[n, k] * w_scale[n, k // G]``
act_scale     fp32   [1]          static per-tensor INT8 scale; absent means dynamic per-token scales
act_prescale  fp32   [K]          optional; the input is multiplied by it before quantization (smoothing that
                                  could not be folded into the previous layer)
lora_down     fp16   [K, r]       optional low-rank branch, applied to the op input ``x`` (pre-scale folded in)
lora_up       fp16   [r, N]
bias          fp32   [N]          optional
============  =====  ===========  ==========================================================================

Arithmetic (exact reference; kernels must agree bit-for-bit on ``x_q`` and the INT32 group sums)
-------------------------------------------------------------------------------------------------
``x' = float32(x) * act_prescale``;  ``s_x = act_scale`` or ``max(max_k |x'[m, k]|, ACT_AMAX_FLOOR) / 127`` per row;
``x_q = clamp(round_half_even(x' / s_x), -128, 127)`` (IEEE float32 division);
``acc[m, n, g] = Σ_{k in group g} x_q[m, k] * q[n, k]`` in INT32;
``y = Σ_g float32(acc[m, n, g]) * w_scale[n, g] * s_x[m] + bias[n] + (x · lora_down) · lora_up``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from ditas_trt.errors import DitasError

INT4_MIN, INT4_MAX = -8, 7
INT8_MIN, INT8_MAX = -128, 127
ACT_AMAX_FLOOR = 1e-6
WEIGHT_AMAX_FLOOR = 1e-8
FORMAT_VERSION = 1
TENSOR_NAMES = ("qweight", "w_scale", "act_scale", "act_prescale", "lora_down", "lora_up", "bias")


def qmax(bits: int) -> int:
    if bits not in (4, 8):
        raise DitasError(f"weight bits must be 4 or 8, got {bits}")
    return (1 << (bits - 1)) - 1


def resolve_group_size(in_features: int, group_size: Optional[int]) -> int:
    """0 or None means one group per output channel; otherwise the group size must divide K."""
    if not group_size:
        return in_features
    if group_size < 0 or in_features % group_size:
        raise DitasError(f"group size {group_size} does not divide the {in_features} input features")
    return group_size


# ---------------------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------------------
def weight_scale(weight: torch.Tensor, bits: int = 4, group_size: Optional[int] = None) -> torch.Tensor:
    """Symmetric scales ``amax / qmax`` of a [N, K] weight, per output channel and group: fp32 [N, K/G]."""
    n, k = weight.shape
    g = resolve_group_size(k, group_size)
    amax = weight.detach().float().reshape(n, k // g, g).abs().amax(dim=-1)
    return amax.clamp(min=WEIGHT_AMAX_FLOOR) / qmax(bits)


def quantize_weight(
    weight: torch.Tensor, bits: int = 4, group_size: Optional[int] = None, scale: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest symmetric quantization of a [N, K] weight: (int8 [N, K] codes, fp32 [N, K/G] scales)."""
    n, k = weight.shape
    g = resolve_group_size(k, group_size)
    if scale is None:
        scale = weight_scale(weight, bits, g)
    limit = qmax(bits)
    w = weight.detach().float().reshape(n, k // g, g)
    q = torch.round(w / scale.unsqueeze(-1)).clamp(-limit - 1, limit)
    return q.reshape(n, k).to(torch.int8), scale.float()


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 [N, K] from int8 codes [N, K] and scales [N, K/G]."""
    n, k = q.shape
    groups = scale.shape[1]
    return (q.float().reshape(n, groups, k // groups) * scale.float().unsqueeze(-1)).reshape(n, k)


def fake_quantize_weight(weight: torch.Tensor, bits: int = 4, group_size: Optional[int] = None) -> torch.Tensor:
    """Quantize-dequantize in float (the weight the packed format represents)."""
    q, s = quantize_weight(weight, bits, group_size)
    return dequantize_weight(q, s).to(weight.dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 codes in [-8, 7], shape [..., K] with K even -> uint8 [..., K/2], low nibble = even index."""
    if q.shape[-1] % 2:
        raise DitasError(f"INT4 packing needs an even number of input features, got {q.shape[-1]}")
    if q.numel() and (int(q.min()) < INT4_MIN or int(q.max()) > INT4_MAX):
        raise DitasError("INT4 codes must lie in [-8, 7]")
    nib = (q.to(torch.int16) & 0xF).to(torch.uint8)
    return nib[..., 0::2] | (nib[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K/2] -> int8 codes [..., K] (sign-extended nibbles, low nibble first)."""
    p = packed.to(torch.int16)
    low, high = p & 0xF, (p >> 4) & 0xF
    codes = torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)
    return torch.where(codes >= 8, codes - 16, codes).to(torch.int8)


def weight_codes(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 [N, K] codes from the stored weight tensor of either format."""
    return unpack_int4(qweight) if bits == 4 else qweight.to(torch.int8)


# ---------------------------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------------------------
def activation_scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    return amax.float().clamp(min=ACT_AMAX_FLOOR) / INT8_MAX


def quantize_activation(
    x: torch.Tensor, act_scale: Optional[torch.Tensor] = None, act_prescale: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """INT8 codes [M, K] and fp32 scales ([1] static, [M] dynamic per-token) of a 2-D activation."""
    xf = x.float()
    if act_prescale is not None:
        xf = xf * act_prescale.float()
    if act_scale is None:
        scale = activation_scale_from_amax(xf.abs().amax(dim=-1))
        q = torch.round(xf / scale.unsqueeze(-1))
    else:
        scale = act_scale.float().reshape(1).clone()
        q = torch.round(xf / scale)
    return q.clamp(INT8_MIN, INT8_MAX).to(torch.int8), scale


def fake_quantize_activation(x: torch.Tensor, act_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Quantize-dequantize in float32 of a 2-D activation (the values its INT8 codes and scales stand for)."""
    q, scale = quantize_activation(x, act_scale)
    return q.float() * (scale if act_scale is not None else scale.unsqueeze(-1))


# ---------------------------------------------------------------------------------------------------------------
# One quantized linear, as stored
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class QuantLinearConfig:
    """What is fixed about a quantized linear besides its tensors."""

    in_features: int
    out_features: int
    weight_bits: int = 4
    group_size: int = 0  # 0: per output channel
    act_mode: str = "static"  # "static" per-tensor or "dynamic" per-token
    rank: int = 0
    has_bias: bool = True
    has_prescale: bool = False
    format_version: int = FORMAT_VERSION

    def validate(self) -> "QuantLinearConfig":
        qmax(self.weight_bits)
        resolve_group_size(self.in_features, self.group_size)
        if self.act_mode not in ("static", "dynamic"):
            raise DitasError(f"activation mode must be 'static' or 'dynamic', got {self.act_mode!r}")
        if self.weight_bits == 4 and self.in_features % 2:
            raise DitasError(f"INT4 weights need an even number of input features, got {self.in_features}")
        if self.rank < 0:
            raise DitasError(f"LoRA rank must be >= 0, got {self.rank}")
        return self

    @property
    def groups(self) -> int:
        return self.in_features // resolve_group_size(self.in_features, self.group_size)

    def expected_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        k, n, r = self.in_features, self.out_features, self.rank
        shapes = {
            "qweight": ((n, k // 2), torch.uint8) if self.weight_bits == 4 else ((n, k), torch.int8),
            "w_scale": ((n, self.groups), torch.float32),
        }
        if self.act_mode == "static":
            shapes["act_scale"] = ((1,), torch.float32)
        if self.has_prescale:
            shapes["act_prescale"] = ((k,), torch.float32)
        if r:
            shapes["lora_down"] = ((k, r), torch.float16)
            shapes["lora_up"] = ((r, n), torch.float16)
        if self.has_bias:
            shapes["bias"] = ((n,), torch.float32)
        return shapes


@dataclass
class QuantLinearTensors:
    """The tensors of one quantized linear, checked against its config."""

    config: QuantLinearConfig
    qweight: torch.Tensor
    w_scale: torch.Tensor
    act_scale: Optional[torch.Tensor] = None
    act_prescale: Optional[torch.Tensor] = None
    lora_down: Optional[torch.Tensor] = None
    lora_up: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    name: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self.config.validate()
        expected = self.config.expected_shapes()
        for key in TENSOR_NAMES:
            tensor = getattr(self, key)
            if key not in expected:
                if tensor is not None:
                    raise DitasError(f"{self.name or 'quantized linear'}: unexpected tensor '{key}' for {self.config}")
                continue
            shape, dtype = expected[key]
            if tensor is None:
                raise DitasError(f"{self.name or 'quantized linear'}: missing tensor '{key}'")
            if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                raise DitasError(
                    f"{self.name or 'quantized linear'}: '{key}' is {tuple(tensor.shape)} {tensor.dtype}, "
                    f"expected {shape} {dtype}"
                )

    def tensors(self) -> dict[str, torch.Tensor]:
        return {key: getattr(self, key) for key in TENSOR_NAMES if getattr(self, key) is not None}

    def codes(self) -> torch.Tensor:
        return weight_codes(self.qweight, self.config.weight_bits)

    def dequantized_weight(self) -> torch.Tensor:
        """The fp32 [N, K] weight the codes and scales stand for (LoRA and pre-scale not included)."""
        return dequantize_weight(self.codes(), self.w_scale)

    @classmethod
    def from_float(
        cls,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        *,
        weight_bits: int = 4,
        group_size: int = 0,
        act_amax: Optional[torch.Tensor] = None,
        act_prescale: Optional[torch.Tensor] = None,
        lora_down: Optional[torch.Tensor] = None,
        lora_up: Optional[torch.Tensor] = None,
        output_scale: Optional[torch.Tensor] = None,
        name: str = "",
    ) -> "QuantLinearTensors":
        """Round-to-nearest packing of a float weight; ``act_amax`` given means static activation scale.

        ``output_scale`` [N] multiplies output row n of the layer (``w_scale``, ``bias`` and ``lora_up`` rows, in
        fp32 before any fp16 rounding) while the codes stay those of ``weight``: how a factor folded into these
        rows (the next layer's ``1/s`` in the V rows of qkv) is applied exactly.
        """
        n, k = weight.shape
        config = QuantLinearConfig(
            in_features=k,
            out_features=n,
            weight_bits=weight_bits,
            group_size=group_size,
            act_mode="dynamic" if act_amax is None else "static",
            rank=0 if lora_down is None else lora_down.shape[1],
            has_bias=bias is not None,
            has_prescale=act_prescale is not None,
        ).validate()
        q, scale = quantize_weight(weight, weight_bits, group_size)
        if output_scale is not None:
            rows = output_scale.detach().float().reshape(n)
            scale = scale * rows[:, None]
            bias = None if bias is None else bias.detach().float() * rows
            lora_up = None if lora_up is None else lora_up.detach().float() * rows[None, :]
        return cls(
            config=config,
            qweight=pack_int4(q) if weight_bits == 4 else q,
            w_scale=scale,
            act_scale=None if act_amax is None else activation_scale_from_amax(act_amax.reshape(1)),
            act_prescale=None if act_prescale is None else act_prescale.detach().float().reshape(k),
            lora_down=None if lora_down is None else lora_down.detach().to(torch.float16),
            lora_up=None if lora_up is None else lora_up.detach().to(torch.float16),
            bias=None if bias is None else bias.detach().float(),
            name=name,
        )


LAYERS_METADATA_KEY = "ditas_quant_layers"


def layers_metadata(configs: dict[str, QuantLinearConfig]) -> dict[str, str]:
    """safetensors metadata naming every quantized layer's :class:`QuantLinearConfig` and the format version."""
    layers = {prefix: asdict(config) for prefix, config in configs.items()}
    return {LAYERS_METADATA_KEY: json.dumps(layers, sort_keys=True), "format_version": str(FORMAT_VERSION)}


def layer_configs_from_metadata(metadata: Optional[dict[str, str]], source: str = "") -> dict[str, QuantLinearConfig]:
    """Inverse of :func:`layers_metadata`; a missing, unreadable or other-version entry is a :class:`DitasError`."""
    where = f"{source}: " if source else ""
    metadata = metadata or {}
    if LAYERS_METADATA_KEY not in metadata:
        raise DitasError(f"{where}no quantized-layer metadata (not written by ditas-trt quantize)")
    try:
        version = int(metadata.get("format_version", -1))
        layers = json.loads(metadata[LAYERS_METADATA_KEY])
        configs = {prefix: QuantLinearConfig(**cfg) for prefix, cfg in layers.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise DitasError(f"{where}quantized-layer metadata is not readable ({exc})") from None
    if version != FORMAT_VERSION:
        raise DitasError(f"{where}quantized format version {version}, this ditas-trt reads version {FORMAT_VERSION}")
    return configs


def state_dict_entries(layers: dict[str, QuantLinearTensors]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flatten named layers into safetensors tensors (``<layer>.<tensor>``) and string metadata."""
    tensors = {f"{prefix}.{key}": value.contiguous() for prefix, layer in layers.items()
               for key, value in layer.tensors().items()}
    return tensors, layers_metadata({prefix: layer.config for prefix, layer in layers.items()})


def layers_from_state_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: str = "") -> dict[str, QuantLinearTensors]:
    """Inverse of :func:`state_dict_entries`; every mismatch is a :class:`DitasError` naming the layer."""
    where = f"{source}: " if source else ""
    return {prefix: QuantLinearTensors(config=config, name=f"{where}{prefix}",
                                       **{key: tensors.get(f"{prefix}.{key}") for key in TENSOR_NAMES})
            for prefix, config in layer_configs_from_metadata(metadata, source).items()}

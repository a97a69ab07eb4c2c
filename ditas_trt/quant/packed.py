"""The packed quantized DiT on disk: one safetensors file (FP tensors + format tensors) and a JSON sidecar.

Layout of ``<dir>/quantized.safetensors``: every tensor of the DiT state dict under its original name, where each
quantized linear ``<layer>`` contributes ``<layer>.qweight``, ``<layer>.w_scale``, ... (see :mod:`.format`) instead
of ``<layer>.weight``/``<layer>.bias``. Metadata: the DiT config, every layer's :class:`QuantLinearConfig`, the format
version and the quantization recipe. Smoothing is already folded into the FP tensors and the packed weights.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch

from ditas_trt.artifacts import atomic_path, environment_versions, file_sha256, read_json, sidecar_path, write_json_atomic
from ditas_trt.errors import DitasError
from ditas_trt.models.dit import DiT, DiTConfig
from ditas_trt.models.loading import CONFIG_METADATA_KEY, build_dit, load_state_into, read_safetensors
from ditas_trt.quant.format import FORMAT_VERSION, QuantLinearConfig, layer_configs_from_metadata, layers_metadata
from ditas_trt.quant.linear import QuantLinear, replace_module

QUANTIZED_FILE = "quantized.safetensors"
RECIPE_KEY = "ditas_recipe"


def quantized_file(path: Union[str, Path]) -> Path:
    path = Path(path)
    return path / QUANTIZED_FILE if path.is_dir() else path


def save_quantized(model: DiT, out: Union[str, Path], recipe: dict, extra_sidecar: Optional[dict] = None) -> Path:
    """Write a DiT containing :class:`QuantLinear` modules to ``out`` (a folder) atomically, with its sidecar."""
    from safetensors.torch import save_file

    layers = {name: m.config for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not layers:
        raise DitasError("the model has no quantized linear layers to save")
    out = Path(out)
    path = out / QUANTIZED_FILE
    metadata = {
        CONFIG_METADATA_KEY: json.dumps(model.config.to_dict()),
        **layers_metadata(layers),
        RECIPE_KEY: json.dumps(recipe, sort_keys=True, default=str),
    }
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    sidecar = {
        "artifact": QUANTIZED_FILE,
        "sha256": file_sha256(path),
        "model_config": model.config.to_dict(),
        "recipe": recipe,
        "quantized_layers": len(layers),
        "format_version": FORMAT_VERSION,
        "versions": environment_versions(),
        **(extra_sidecar or {}),
    }
    write_json_atomic(sidecar_path(path), sidecar)
    return path


def quantize_layers_in_place(model: DiT, layer_configs: dict[str, QuantLinearConfig]) -> DiT:
    """Swap the named ``nn.Linear`` modules for empty :class:`QuantLinear` ones (to be filled by a state dict)."""
    for name, config in layer_configs.items():
        try:
            original = model.get_submodule(name)
        except AttributeError:
            raise DitasError(f"quantized layer {name!r} does not exist in this DiT") from None
        if not isinstance(original, torch.nn.Linear) or (original.in_features, original.out_features) != (
            config.in_features, config.out_features
        ):
            raise DitasError(f"quantized layer {name!r} ({config.in_features}->{config.out_features}) does not fit {original}")
        replace_module(model, name, QuantLinear(config))
    return model


def load_quantized(path: Union[str, Path], expect_config: Optional[DiTConfig] = None) -> DiT:
    """Load a quantized DiT written by :func:`save_quantized` (a folder or the .safetensors file)."""
    file = quantized_file(path)
    if not file.is_file():
        raise DitasError(f"{path}: no {QUANTIZED_FILE} found (run `ditas-trt quantize` first)")
    tensors, metadata = read_safetensors(file)
    if CONFIG_METADATA_KEY not in metadata:
        raise DitasError(f"{file}: not a ditas-trt quantized model (no DiT config in its metadata)")
    layer_configs = layer_configs_from_metadata(metadata, str(file))
    config = DiTConfig(**json.loads(metadata[CONFIG_METADATA_KEY]))
    if expect_config is not None and config != expect_config:
        raise DitasError(f"{file}: quantized from a different model ({config}) than expected ({expect_config})")
    model = quantize_layers_in_place(build_dit(config), layer_configs)
    load_state_into(model, tensors, str(file))  # copy_ keeps each buffer's integer / fp16 dtype, values exact
    model.ditas_recipe = json.loads(metadata.get(RECIPE_KEY, "{}"))
    return model.eval()


def read_quantized_sidecar(path: Union[str, Path]) -> dict:
    return read_json(sidecar_path(quantized_file(path)), "quantized-model sidecar")

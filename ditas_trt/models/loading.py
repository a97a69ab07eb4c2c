"""Load DiT checkpoints: original `.pt` (plain or training `{"model", "ema"}`), `.safetensors`, diffusers layout.

The configuration comes from, in order: the ``model`` argument, the checkpoint's own metadata (ditas-trt files),
a diffusers ``config.json``, or the tensor shapes.
"""
from __future__ import annotations

import json
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Optional, Union

import torch

from ditas_trt.artifacts import load_torch_file
from ditas_trt.errors import DitasError
from ditas_trt.models.dit import _SIZES, DiT, DiT_models, DiTConfig

CONFIG_METADATA_KEY = "dit_config"
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
ModelSpec = Union[None, str, DiTConfig, dict]


# ---------------------------------------------------------------------------------------------------------------
# Reading raw tensors
# ---------------------------------------------------------------------------------------------------------------
def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DitasError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None
    return tensors, metadata


def _pick_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "ema" in obj and isinstance(obj["ema"], dict):
        obj = obj["ema"]  # training checkpoints of the original keep the EMA weights used for sampling
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DitasError(f"{path}: not a DiT checkpoint (expected a state dict or a dict with 'model'/'ema')")
    return {re.sub(r"^(module\.|_orig_mod\.)", "", k): v for k, v in obj.items()}


def _diffusers_files(path: Path) -> Optional[tuple[Path, Optional[Path]]]:
    folder = path / "transformer" if (path / "transformer").is_dir() else path
    for name in DIFFUSERS_WEIGHTS:
        if (folder / name).is_file():
            config = folder / "config.json"
            return folder / name, config if config.is_file() else None
    return None


def read_checkpoint(path: Union[str, Path]) -> tuple[dict[str, torch.Tensor], dict]:
    """Return (state dict in whatever layout the file has, extra info: metadata / diffusers config)."""
    path = Path(path)
    if path.is_dir():
        found = _diffusers_files(path)
        if found is None:
            raise DitasError(f"{path}: folder holds no diffusers transformer weights ({' or '.join(DIFFUSERS_WEIGHTS)})")
        weights, config = found
        info = {"diffusers_config": json.loads(config.read_text())} if config else {}
        tensors = read_safetensors(weights)[0] if weights.suffix == ".safetensors" else _pick_state_dict(load_torch_file(weights), weights)
        return tensors, info
    if not path.is_file():
        raise DitasError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        tensors, metadata = read_safetensors(path)
        info = {}
        if CONFIG_METADATA_KEY in metadata:
            info["config"] = json.loads(metadata[CONFIG_METADATA_KEY])
        return tensors, info
    return _pick_state_dict(load_torch_file(path), path), {}


# ---------------------------------------------------------------------------------------------------------------
# diffusers DiTTransformer2DModel layout -> original layout
# ---------------------------------------------------------------------------------------------------------------
def is_diffusers_layout(state: dict[str, torch.Tensor]) -> bool:
    return "pos_embed.proj.weight" in state and any(k.startswith("transformer_blocks.") for k in state)


def convert_diffusers_state_dict(state: dict[str, torch.Tensor], config: DiTConfig) -> dict[str, torch.Tensor]:
    """Map diffusers parameter names to the original's (the timestep/label embedders are shared by all blocks)."""
    from ditas_trt.models.dit import get_2d_sincos_pos_embed

    out = {
        "x_embedder.proj.weight": state["pos_embed.proj.weight"],
        "x_embedder.proj.bias": state["pos_embed.proj.bias"],
        "final_layer.adaLN_modulation.1.weight": state["proj_out_1.weight"],
        "final_layer.adaLN_modulation.1.bias": state["proj_out_1.bias"],
        "final_layer.linear.weight": state["proj_out_2.weight"],
        "final_layer.linear.bias": state["proj_out_2.bias"],
    }
    emb = "transformer_blocks.0.norm1.emb."
    for key in [k for k in state if k.startswith(emb)]:
        for i in range(1, config.depth):
            if not torch.equal(state[key], state[key.replace("blocks.0.", f"blocks.{i}.", 1)]):
                raise DitasError(f"diffusers DiT has different timestep/label embedders in block {i} ({key}); "
                                 "the original DiT shares one, so it cannot be converted")
    out["t_embedder.mlp.0.weight"] = state[emb + "timestep_embedder.linear_1.weight"]
    out["t_embedder.mlp.0.bias"] = state[emb + "timestep_embedder.linear_1.bias"]
    out["t_embedder.mlp.2.weight"] = state[emb + "timestep_embedder.linear_2.weight"]
    out["t_embedder.mlp.2.bias"] = state[emb + "timestep_embedder.linear_2.bias"]
    out["y_embedder.embedding_table.weight"] = state[emb + "class_embedder.embedding_table.weight"]
    for i in range(config.depth):
        src, dst = f"transformer_blocks.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            out[f"{dst}adaLN_modulation.1.{part}"] = state[f"{src}norm1.linear.{part}"]
            out[f"{dst}attn.qkv.{part}"] = torch.cat([state[f"{src}attn1.to_{n}.{part}"] for n in "qkv"], dim=0)
            out[f"{dst}attn.proj.{part}"] = state[f"{src}attn1.to_out.0.{part}"]
            out[f"{dst}mlp.fc1.{part}"] = state[f"{src}ff.net.0.proj.{part}"]
            out[f"{dst}mlp.fc2.{part}"] = state[f"{src}ff.net.2.{part}"]
    grid = config.input_size // config.patch_size
    out["pos_embed"] = torch.from_numpy(get_2d_sincos_pos_embed(config.hidden_size, grid)).float().unsqueeze(0)
    return out


def config_from_diffusers(state: dict[str, torch.Tensor], diffusers_config: Optional[dict]) -> DiTConfig:
    cfg = diffusers_config or {}
    proj = state["pos_embed.proj.weight"]
    hidden, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = len({k.split(".")[1] for k in state if k.startswith("transformer_blocks.")})
    out_features = state["proj_out_2.weight"].shape[0]
    heads = cfg.get("num_attention_heads") or _heads_for(hidden, depth)
    table = state["transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"].shape[0]
    return DiTConfig(
        input_size=cfg.get("sample_size", 32),
        patch_size=patch,
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        mlp_ratio=state["transformer_blocks.0.ff.net.0.proj.weight"].shape[0] / hidden,
        class_dropout_prob=0.1,
        num_classes=table - 1,
        learn_sigma=out_features == patch * patch * in_channels * 2,
        timestep_freq_shift=1,
        mlp_norm_eps=cfg.get("norm_eps", 1e-5),
    )


# ---------------------------------------------------------------------------------------------------------------
# Configuration inference
# ---------------------------------------------------------------------------------------------------------------
def _heads_for(hidden: int, depth: int) -> int:
    by_shape = {(d, h): n for d, h, n in _SIZES.values()}
    by_hidden = {h: n for _, h, n in _SIZES.values()}
    heads = by_shape.get((depth, hidden), by_hidden.get(hidden))
    if heads is None:
        raise DitasError(f"cannot infer the number of attention heads for hidden size {hidden}; pass the model name or config")
    return heads


def infer_config(state: dict[str, torch.Tensor]) -> DiTConfig:
    """DiT constructor arguments from the tensors of an original-layout state dict."""
    required = ("x_embedder.proj.weight", "pos_embed", "final_layer.linear.weight", "y_embedder.embedding_table.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise DitasError(f"not a DiT state dict: missing {', '.join(missing)}")
    proj = state["x_embedder.proj.weight"]
    if proj.dim() != 4 or proj.shape[2] != proj.shape[3]:
        raise DitasError(f"not a DiT state dict: x_embedder.proj.weight has shape {tuple(proj.shape)}")
    hidden, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    num_patches = state["pos_embed"].shape[1]
    grid = int(round(num_patches ** 0.5))
    if grid * grid != num_patches:
        raise DitasError(f"not a DiT state dict: pos_embed holds {num_patches} positions, not a square grid")
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    if depth == 0:
        raise DitasError("not a DiT state dict: no transformer blocks")
    out_features = state["final_layer.linear.weight"].shape[0]
    if out_features not in (patch * patch * in_channels, patch * patch * in_channels * 2):
        raise DitasError(f"not a DiT state dict: final layer has {out_features} outputs for patch {patch}, {in_channels} channels")
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    return DiTConfig(
        input_size=grid * patch,
        patch_size=patch,
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        num_heads=_heads_for(hidden, depth),
        mlp_ratio=(fc1.shape[0] / hidden) if fc1 is not None else 4.0,
        class_dropout_prob=0.1,  # the null-class row is present in every DiT trained for guidance
        num_classes=state["y_embedder.embedding_table.weight"].shape[0] - 1,
        learn_sigma=out_features == patch * patch * in_channels * 2,
    )


def resolve_config(model: ModelSpec, inferred: DiTConfig) -> DiTConfig:
    """Turn the ``model`` argument into a config; a model name keeps the sizes the checkpoint implies."""
    if model is None:
        return inferred
    if isinstance(model, DiTConfig):
        return model
    if isinstance(model, dict):
        known = {f.name for f in fields(DiTConfig)}
        unknown = sorted(set(model) - known)
        if unknown:
            raise DitasError(f"unknown DiT config keys: {', '.join(unknown)}")
        return DiTConfig(**model)
    if model not in DiT_models:
        raise DitasError(f"unknown model {model!r}; choose one of {', '.join(DiT_models)}")
    named = DiT_models[model](
        input_size=inferred.input_size, in_channels=inferred.in_channels, num_classes=inferred.num_classes,
        learn_sigma=inferred.learn_sigma,
    ).config
    return replace(named, timestep_freq_shift=inferred.timestep_freq_shift, mlp_norm_eps=inferred.mlp_norm_eps)


# ---------------------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------------------
def build_dit(config: DiTConfig) -> DiT:
    return DiT(**config.to_dict())


def load_state_into(model: DiT, state: dict[str, torch.Tensor], source: str) -> DiT:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (first: {unexpected[0]})")
    if mismatched:
        problems.append(f"shape mismatch: {mismatched[0]}")
    if problems:
        raise DitasError(f"{source}: does not fit {model.config}: {'; '.join(problems)}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def load_dit(path: Union[str, Path], model: ModelSpec = None) -> DiT:
    """Load a DiT checkpoint in any supported layout, inferring its config unless ``model`` is given.

    ``model`` may be a name from ``DiT_models`` (e.g. ``"DiT-XL/2"``), a :class:`DiTConfig` or a dict of its fields.
    The returned model is in eval mode, float32, on the CPU.
    """
    state, info = read_checkpoint(path)
    if is_diffusers_layout(state):
        try:
            inferred = config_from_diffusers(state, info.get("diffusers_config"))
            config = resolve_config(model, inferred)
            state = convert_diffusers_state_dict(state, config)
        except KeyError as exc:
            raise DitasError(f"{path}: diffusers DiT weights are incomplete: missing {exc}") from None
    elif "config" in info:
        config = resolve_config(model, DiTConfig(**info["config"]))
    else:
        config = resolve_config(model, infer_config(state))
    try:
        net = build_dit(config)
    except (AssertionError, RuntimeError, ValueError) as exc:
        raise DitasError(f"{path}: invalid DiT config {config}: {exc}") from None
    return load_state_into(net, state, str(path))


def save_dit(model: DiT, path: Union[str, Path], extra_metadata: Optional[dict[str, str]] = None) -> None:
    """Write a DiT as safetensors with its config in the metadata (atomically)."""
    from safetensors.torch import save_file

    from ditas_trt.artifacts import atomic_path

    metadata = {CONFIG_METADATA_KEY: json.dumps(model.config.to_dict()), **(extra_metadata or {})}
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)

"""Data-free calibration inputs: the FP model's own sampling trajectories, cached on disk, replayed for ModelOpt.

One sampling pass (per batch of samples) records the denoiser's input ``(x_t, t, y)`` at every step, CFG halves
included, exactly as the quantized layers will see them at inference. The trajectories are stored under
``<cache>/trajectories/<key>.safetensors`` with a JSON sidecar (model hash + settings); the same settings on the
same weights reuse the file. :func:`replay_loop` turns them into ModelOpt's ``forward_loop``: one model call per
timestep with every sample of that timestep, so calibration call *i* is timestep *i* of the sampler.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from ditas_trt.artifacts import atomic_path, read_json, sidecar_path, write_json_atomic
from ditas_trt.diffusion.sampling import SamplingOptions, sample, seeded_noise
from ditas_trt.errors import DitasError

# The 16 ImageNet labels of the DiTAS code (the first 8 are DiT's sample.py demo labels).
DITAS_IMAGENET_LABELS = (207, 360, 387, 974, 88, 979, 417, 279, 27, 336, 177, 594, 748, 718, 447, 613)
TRAJECTORY_FORMAT = 1


def default_classes(num_classes: int) -> list[int]:
    """All classes of small label sets, DiTAS's 16 labels for ImageNet, else 16 evenly spaced labels."""
    if num_classes <= 16:
        return list(range(num_classes))
    if num_classes == 1000:
        return list(DITAS_IMAGENET_LABELS)
    return sorted({round(i * (num_classes - 1) / 15) for i in range(16)})


@dataclass
class CalibrationSettings:
    """Which trajectories to sample (defaults after DiTAS: CFG 1.5, DDPM, steps = the evaluation steps)."""

    classes: Optional[list[int]] = None  # None: default_classes(num_classes)
    per_class: int = 2
    steps: int = 50
    sampler: str = "ddpm"
    cfg_scale: float = 1.5
    eta: float = 0.0
    seed: int = 0  # sample i starts from seed + i (evaluation uses other seeds)

    def validate(self, num_classes: Optional[int] = None) -> "CalibrationSettings":
        self.options.validate()
        if self.per_class < 1:
            raise DitasError(f"calibration samples per class must be >= 1, got {self.per_class}")
        if self.classes is not None:
            if not self.classes:
                raise DitasError("the calibration class list is empty")
            if num_classes is not None:
                bad = [c for c in self.classes if not 0 <= c < num_classes]
                if bad:
                    raise DitasError(f"calibration classes {bad} outside [0, {num_classes - 1}]")
        return self

    @property
    def options(self) -> SamplingOptions:
        return SamplingOptions(steps=self.steps, sampler=self.sampler, cfg_scale=self.cfg_scale, eta=self.eta)

    def labels(self, num_classes: int) -> torch.Tensor:
        classes = self.classes if self.classes is not None else default_classes(num_classes)
        return torch.tensor(classes, dtype=torch.long).repeat_interleave(self.per_class)

    def resolved(self, num_classes: int) -> dict:
        data = asdict(self)
        data["classes"] = self.labels(num_classes)[:: self.per_class].tolist()
        return data


@dataclass
class Trajectories:
    """Denoiser inputs of every sampling step: x (S, B, C, H, W), t (S, B), y (S, B)."""

    x: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor
    meta: dict = field(default_factory=dict)
    reused: bool = False

    @property
    def steps(self) -> int:
        return self.x.shape[0]

    @property
    def batch(self) -> int:
        return self.x.shape[1]


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model's config and every tensor of its state dict (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        digest.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@torch.no_grad()
def record_trajectories(
    model: torch.nn.Module, settings: CalibrationSettings, batch_size: int = 64, progress: bool = True
) -> Trajectories:
    """Sample with the FP model and keep its input at every step (bounded passes: one per batch of samples)."""
    config = model.config
    settings.validate(config.num_classes)
    model.eval()
    labels = settings.labels(config.num_classes)
    seeds = [settings.seed + i for i in range(len(labels))]
    shape = (config.in_channels, config.input_size, config.input_size)
    device = next(model.parameters()).device
    batch_size = max(1, batch_size)
    passes: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []  # per sampling pass: (x, t, y) per step
    start = time.perf_counter()
    for first in tqdm(range(0, len(labels), batch_size), desc="calibration trajectories", disable=not progress,
                      leave=False):
        idx = slice(first, first + batch_size)
        calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

        def recording_forward(x, t, y):
            calls.append((x.detach().cpu().float().clone(), t.detach().cpu().clone(), y.detach().cpu().clone()))
            return model(x, t, y)

        noise, generators = seeded_noise(seeds[idx], shape, device=device)
        sample(recording_forward, labels[idx].to(device), in_channels=config.in_channels, input_size=config.input_size,
               num_classes=config.num_classes, options=settings.options, noise=noise, generator=generators,
               learn_sigma=config.learn_sigma)
        passes.append(calls)
    steps = list(zip(*passes))  # per step: the (x, t, y) of every pass
    x, t, y = (torch.stack([torch.cat([call[i] for call in step]) for step in steps]) for i in range(3))
    meta = {"seconds": round(time.perf_counter() - start, 3), "samples": len(labels)}
    return Trajectories(x=x, t=t.long(), y=y.long(), meta=meta)


def trajectory_key(fingerprint: str, settings: dict) -> str:
    blob = json.dumps({"model": fingerprint, "settings": settings, "format": TRAJECTORY_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _cached_trajectories(path: Path, meta: dict) -> Optional[Trajectories]:
    """What an identical run stored at ``path``, else None; a damaged entry is recorded again (with a warning)."""
    from ditas_trt.models.loading import read_safetensors

    if not (path.is_file() and sidecar_path(path).is_file()):
        return None
    try:
        stored = read_json(sidecar_path(path), "trajectory sidecar")
        if any(stored.get(k) != v for k, v in meta.items()):
            return None
        tensors = read_safetensors(path)[0]
        return Trajectories(**{k: tensors[k] for k in ("x", "t", "y")}, meta={**stored, "path": str(path)}, reused=True)
    except (DitasError, KeyError) as exc:
        warnings.warn(f"cached trajectories unreadable: {exc}; recording them again", stacklevel=3)
        return None


def load_or_record(
    model: torch.nn.Module,
    settings: CalibrationSettings,
    cache_dir: Optional[Path],
    batch_size: int = 64,
    progress: bool = True,
) -> Trajectories:
    """Trajectories for ``model`` and ``settings``, from ``cache_dir`` when an identical run left them there."""
    from safetensors.torch import save_file

    num_classes = model.config.num_classes
    settings.validate(num_classes)
    resolved = settings.resolved(num_classes)
    if cache_dir is None:
        traj = record_trajectories(model, settings, batch_size, progress)
        traj.meta.update(settings=resolved)
        return traj
    fingerprint = model_fingerprint(model)
    key = trajectory_key(fingerprint, resolved)
    path = Path(cache_dir) / f"{key}.safetensors"
    meta = {"model_sha256": fingerprint, "settings": resolved, "format": TRAJECTORY_FORMAT, "key": key}
    cached = _cached_trajectories(path, meta)
    if cached is not None:
        return cached
    traj = record_trajectories(model, settings, batch_size, progress)
    meta.update(traj.meta, path=str(path), steps=traj.steps, batch=traj.batch)
    with atomic_path(path) as tmp:
        save_file({"x": traj.x.contiguous(), "t": traj.t.contiguous(), "y": traj.y.contiguous()}, str(tmp),
                  metadata={"ditas_trajectories": json.dumps(meta, sort_keys=True)})
    write_json_atomic(sidecar_path(path), meta)
    traj.meta = meta
    return traj


def replay_loop(traj: Trajectories, progress: bool = True, desc: str = "calibration replay"):
    """ModelOpt ``forward_loop``: one call per recorded timestep with all of that timestep's samples."""

    def forward_loop(model):
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            for step in tqdm(range(traj.steps), desc=desc, disable=not progress, leave=False):
                model(traj.x[step].to(device=device, dtype=dtype), traj.t[step].to(device), traj.y[step].to(device))

    forward_loop.calls = traj.steps  # lets the calibration plan its input cache before the first replay
    forward_loop.progress = progress
    return forward_loop


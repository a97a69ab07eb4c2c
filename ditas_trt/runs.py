"""Sample sets on disk: a PNG grid and an .npz with images, labels, seeds and how they were made."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ditas_trt.artifacts import atomic_path
from ditas_trt.errors import DitasError
from ditas_trt.eval.images import save_grid


def save_samples(out: Path, stem: str, images: torch.Tensor, labels: torch.Tensor, seeds, nrow=None, meta=None):
    out.mkdir(parents=True, exist_ok=True)
    npz = out / f"{stem}.npz"
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, images=images.float().numpy(), labels=labels.numpy(), seeds=np.asarray(seeds),
                                meta=np.asarray(json.dumps(meta or {}, default=str)))
    png = save_grid(images, out / f"{stem}.png", nrow=nrow)
    return png, npz


def load_samples(path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    path = Path(path)
    if not path.is_file():
        raise DitasError(f"{path}: sample file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = torch.from_numpy(data["images"]), torch.from_numpy(data["labels"])
            meta = json.loads(str(data["meta"])) if "meta" in data else {}
    except (OSError, ValueError, KeyError) as exc:
        raise DitasError(f"{path}: not a samples .npz written by ditas-trt sample ({exc})") from None
    if images.dim() != 4 or labels.shape != (images.shape[0],):
        raise DitasError(f"{path}: images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
    return images, labels, meta

"""Sample grids as PNG (no torchvision needed)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ditas_trt.artifacts import atomic_path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def grid_image(images: torch.Tensor, nrow: Optional[int] = None, padding: int = 2, scale: int = 4) -> np.ndarray:
    pixels = to_uint8(images)
    n, h, w, c = pixels.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        canvas[top : top + h, left : left + w] = pixels[i]
    canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    return canvas[..., 0] if c == 1 else canvas


def save_grid(images: torch.Tensor, path, nrow: Optional[int] = None) -> Path:
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(grid_image(images, nrow)).save(tmp, format="PNG")
    return path

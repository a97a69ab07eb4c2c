"""The digits data set the embedded model and classifier are trained on (scikit-learn's 8x8 digits, upsampled)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

DIGITS_SIZE = 16
DIGITS_CLASSES = 10


def load_digits(size: int = DIGITS_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as images in [-1, 1] of shape (N, 1, size, size) and their labels (N,)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.clamp(0, 1) * 2 - 1, torch.from_numpy(bunch.target).long()


def train_test_split(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(n * test_fraction)
    return order[n_test:], order[:n_test]

"""A small CNN digit classifier; its penultimate features feed the Fréchet distance of generated samples."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ditas_trt.data import DIGITS_CLASSES, DIGITS_SIZE

CLASSIFIER_PATH = Path(__file__).parent / "embedded" / "digits_classifier.safetensors"
FEATURE_DIM = 64


class DigitClassifier(nn.Module):
    """(N, 1, 16, 16) images in [-1, 1] -> (N, 10) logits; ``features`` gives the (N, 64) penultimate layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 32, 8, 8)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 64, 4, 4)
            nn.Flatten(), nn.Linear(64 * (DIGITS_SIZE // 4) ** 2, FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, DIGITS_CLASSES)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def load_classifier(path: Path = CLASSIFIER_PATH) -> DigitClassifier:
    from safetensors.torch import load_file

    from ditas_trt.errors import DitasError

    if not path.is_file():
        raise DitasError(f"{path}: digit classifier not found (run scripts/train_embedded.py)")
    model = DigitClassifier()
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval()

"""The embedded default model: a small class-conditional pixel-space DiT trained on scikit-learn's digits.

Trained by ``python scripts/train_embedded.py``; samples are 16x16 grey digits in [-1, 1].
"""
from __future__ import annotations

from pathlib import Path

EMBEDDED_NAME = "embedded"
EMBEDDED_PATH = Path(__file__).parent / "digits_dit.safetensors"
EMBEDDED_CONFIG = dict(input_size=16, patch_size=4, in_channels=1, hidden_size=128, depth=6, num_heads=4,
                       mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True)


def resolve_checkpoint(checkpoint) -> Path:
    """``"embedded"`` (or nothing) names the embedded model; anything else is a path."""
    if checkpoint in (None, "", EMBEDDED_NAME):
        return EMBEDDED_PATH
    return Path(checkpoint)

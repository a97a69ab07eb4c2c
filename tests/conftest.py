import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, os.cpu_count() or 1))

# For the error a command gives when it is asked for a GPU that is not there
without_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def perturbed(model, std: float = 0.05):
    """``model`` in eval mode with noise on its trainable weights: DiT's zero-initialized adaLN and final layers
    would hide bugs."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * std)
    return model.eval()


def make_tiny_dit():
    """A small random DiT (8x8 latents, 2 blocks, 6 classes), the same one on every call."""
    from ditas_trt.models import DiT

    torch.manual_seed(0)
    return perturbed(DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=128, depth=2, num_heads=4,
                         num_classes=6))


@pytest.fixture
def tiny_dit():
    return make_tiny_dit()


def run_cli(*args, cwd=None, env=None):
    """Run the real `ditas-trt` entry point in a subprocess."""
    return subprocess.run([sys.executable, "-m", "ditas_trt", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=900)

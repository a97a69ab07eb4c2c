"""Denoiser backends behind one interface: FP checkpoint, quantized model (torch ops), TensorRT engine, ONNX."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ditas_trt.diffusion.sampling import SamplingOptions, sample, seeded_noise
from ditas_trt.errors import DitasError
from ditas_trt.models.dit import DiTConfig


def resolve_device(name: str, *, must_be_visible: bool = True) -> torch.device:
    """``--device`` ("auto", "cpu", "cuda", "cuda:N") as a torch device; DitasError when it is malformed or, with
    ``must_be_visible``, names a GPU this process cannot see (a generated Triton repository may target another host)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DitasError(f"--device {name!r}: not a device (cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise DitasError(f"--device {name!r}: only cpu and cuda devices are supported")
    if must_be_visible and device.type == "cuda":
        if not torch.cuda.is_available():
            raise DitasError(f"--device {name}: no CUDA GPU is visible")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DitasError(f"--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return device


@dataclass
class Denoiser:
    """A DiT forward ``(x, t, y) -> output`` with the config it was built for."""

    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    config: DiTConfig
    name: str
    device: torch.device = torch.device("cpu")

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor,
        seeds: Sequence[int],
        options: SamplingOptions,
        batch_size: int = 64,
        progress: bool = False,
    ) -> torch.Tensor:
        """Images (N, C, H, W) for ``labels``; sample i depends only on ``seeds[i]`` (not on batching)."""
        if len(seeds) != len(labels):
            raise DitasError(f"{len(seeds)} seeds for {len(labels)} labels")
        c = self.config
        shape = (c.in_channels, c.input_size, c.input_size)
        chunks = []
        for start in tqdm(range(0, len(labels), batch_size), desc=f"sampling ({self.name})", disable=not progress, leave=False):
            idx = slice(start, start + batch_size)
            noise, generators = seeded_noise(seeds[idx], shape, device=self.device)
            chunks.append(sample(self.forward, labels[idx].to(self.device), in_channels=c.in_channels, input_size=c.input_size,
                                 num_classes=c.num_classes, options=options, noise=noise, generator=generators,
                                 learn_sigma=c.learn_sigma).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, *shape)


def torch_denoiser(model: torch.nn.Module, name: str, device="cpu", dtype: torch.dtype = torch.float32) -> Denoiser:
    model = model.to(device=device, dtype=dtype).eval()

    def forward(x, t, y):
        return model(x.to(dtype), t, y).float()

    return Denoiser(forward=forward, config=model.config, name=name, device=torch.device(device))


def load_denoiser(
    checkpoint: Optional[str] = "embedded",
    model: Optional[str] = None,
    *,
    quantized: Optional[str] = None,
    engine: Optional[str] = None,
    onnx: Optional[str] = None,
    plugin_lib: Optional[str] = None,
    device: str = "cpu",
    expect_config: Optional[DiTConfig] = None,
) -> Denoiser:
    """The FP model of ``checkpoint``, the quantized model in folder ``quantized``, a TensorRT plan ``engine``
    (CUDA; ``device`` "cpu" means the first GPU) or an exported ``onnx`` graph (onnxruntime, CPU)."""
    from ditas_trt.models import load_dit
    from ditas_trt.models.embedded import resolve_checkpoint

    if engine is not None:
        from ditas_trt.engine.runtime import engine_denoiser

        return engine_denoiser(engine, device="cuda" if device == "cpu" else device, plugin_lib=plugin_lib)
    if onnx is not None:
        from ditas_trt.export.ort import onnx_denoiser

        return onnx_denoiser(onnx)
    if quantized is not None:
        from ditas_trt.quant.packed import load_quantized

        # expect_config: the model the folder must have been quantized from (an explicit checkpoint)
        return torch_denoiser(load_quantized(quantized, expect_config=expect_config), f"quantized:{quantized}", device)
    return torch_denoiser(load_dit(resolve_checkpoint(checkpoint), model), "fp32", device)

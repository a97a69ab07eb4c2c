"""Class-conditional sampling with classifier-free guidance over any denoiser backend (torch, quantized, engine)."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ditas_trt.errors import DitasError

SAMPLERS = ("ddpm", "ddim")
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t, y) -> model output


TRAINING_STEPS = 1000  # the diffusion every DiT here was trained with (create_diffusion's default)


@functools.lru_cache(maxsize=1)
def ddim_step_counts() -> frozenset[int]:
    """The step counts DDIM's fixed integer stride can give (``space_timesteps(..., "ddimN")``)."""
    return frozenset(len(range(0, TRAINING_STEPS, stride)) for stride in range(1, TRAINING_STEPS))


@dataclass
class SamplingOptions:
    steps: int = 50
    sampler: str = "ddpm"
    cfg_scale: float = 1.5
    eta: float = 0.0

    def validate(self) -> "SamplingOptions":
        if self.sampler not in SAMPLERS:
            raise DitasError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if not 2 <= self.steps <= TRAINING_STEPS:  # one step leaves no posterior variance (as in the original)
            raise DitasError(f"steps must be between 2 and {TRAINING_STEPS}, got {self.steps}")
        if self.sampler == "ddim":
            counts = ddim_step_counts()
            if self.steps not in counts:
                below = max(c for c in counts if c < self.steps)
                above = min(c for c in counts if c > self.steps)
                raise DitasError(f"ddim cannot take exactly {self.steps} steps with an integer stride over "
                                 f"{TRAINING_STEPS} timesteps; the nearest counts are {below} and {above}")
        if not 1.0 <= self.cfg_scale < math.inf:  # also refuses NaN
            raise DitasError(f"cfg scale must be a finite number >= 1 (1 disables guidance), got {self.cfg_scale}")
        if not 0.0 <= self.eta <= 1.0:
            raise DitasError(f"eta must be in [0, 1], got {self.eta}")
        if self.sampler == "ddpm" and self.eta:
            raise DitasError("eta applies to the ddim sampler only")
        return self

    @property
    def respacing(self) -> str:
        return f"ddim{self.steps}" if self.sampler == "ddim" else str(self.steps)


def guided(forward: Denoiser, guided_channels: int, cfg_scale: float) -> Denoiser:
    """Classifier-free guidance around a batched forward; the batch is [conditional half, unconditional half].

    Same arithmetic as ``DiT.forward_with_cfg`` so that engine backends (which export ``forward``) guide alike.
    """

    def forward_with_cfg(x, t, y):
        half = x[: len(x) // 2]
        model_out = forward(torch.cat([half, half], dim=0), t, y)
        eps, rest = model_out[:, :guided_channels], model_out[:, guided_channels:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)

    return forward_with_cfg


def seeded_noise(seeds: Sequence[int], shape: Sequence[int], device="cpu") -> tuple[torch.Tensor, list[torch.Generator]]:
    """Initial noise with one CPU generator per sample; the generators then feed the per-step noise, so a
    sample depends only on its own seed, not on what else is in the batch."""
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    noise = torch.cat([torch.randn((1, *shape), generator=g) for g in generators]).to(device)
    return noise, generators


def sample(
    forward: Denoiser,
    labels: torch.Tensor,
    *,
    in_channels: int,
    input_size: int,
    num_classes: int,
    options: SamplingOptions,
    noise: Optional[torch.Tensor] = None,
    generator=None,
    progress: bool = False,
    learn_sigma: bool = True,
) -> torch.Tensor:
    """Sample images (N, C, H, W) for ``labels`` (N,) with a DiT-style ``forward(x, t, y)``.

    ``noise`` fixes x_T; ``generator`` (one or a list, one per sample) fixes the DDPM step noise. With cfg scale
    above 1 the batch is doubled with the null label, as in DiT's sample.py. ``learn_sigma`` is the model's
    (``DiTConfig.learn_sigma``): False samples with the fixed variance of DiT's ``create_diffusion(learn_sigma=False)``.
    """
    from ditas_trt.diffusion import create_diffusion

    options.validate()
    labels = labels.long()
    n = labels.shape[0]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DitasError(f"class labels must be in [0, {num_classes - 1}], got {labels.tolist()}")
    shape = (n, in_channels, input_size, input_size)
    if noise is None:
        noise = torch.randn(shape, generator=generator if isinstance(generator, torch.Generator) else None)
    if tuple(noise.shape) != shape:
        raise DitasError(f"initial noise must have shape {shape}, got {tuple(noise.shape)}")
    diffusion = create_diffusion(options.respacing, learn_sigma=learn_sigma)
    x, y, model = noise, labels.to(noise.device), forward
    if options.cfg_scale > 1.0:
        x = torch.cat([noise, noise], dim=0)
        y = torch.cat([y, torch.full_like(y, num_classes)], dim=0)
        model = guided(forward, min(3, in_channels), options.cfg_scale)
        if isinstance(generator, (list, tuple)):
            generator = list(generator) * 2  # the unconditional half's noise is discarded with it

    def model_fn(xt, t):
        return model(xt, t, y)

    kwargs = dict(noise=x, clip_denoised=False, progress=progress, generator=generator, device=x.device)
    if options.sampler == "ddim":
        out = diffusion.ddim_sample_loop(model_fn, x.shape, eta=options.eta, **kwargs)
    else:
        out = diffusion.p_sample_loop(model_fn, x.shape, **kwargs)
    return out[:n] if options.cfg_scale > 1.0 else out

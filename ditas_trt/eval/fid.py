"""FID with the Inception-v3 pool features (2048-d) of the usual FID network, from LOCAL weights only.

Why not torch-fidelity / clean-fid / pytorch-fid directly: all three declare torchvision, and PyPI's torchvision
(0.28, the build for torch 2.13) does not import beside the CPU torch build this project pins ("operator
torchvision::nms does not exist"); torch-fidelity's package ``__init__`` imports torchvision, clean-fid loads a
TorchScript network, and torch-fidelity / pytorch-fid would download weights when none are given. So:

- the statistics and the Fréchet distance come from **torchmetrics** (``FrechetInceptionDistance``, which accepts
  any feature module and has no torchvision dependency);
- the feature network is :class:`FIDInceptionV3` below: Inception-v3 with the FID-specific blocks (average pools
  that do not count padding; max pool in the last block's pool branch), written here, with the parameter names of
  the TensorFlow-ported FID weights that pytorch-fid distributes as ``pt_inception-2015-12-05-6726825d.pth``;
- those weights are read only from the path the user gives, with ``torch.load(weights_only=True)`` — never
  downloaded. Precomputed reference statistics (``mu``, ``sigma`` in an .npz, as in ADM's reference batches) use
  the same network for the samples and :func:`frechet_distance_psd`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ditas_trt.errors import DitasError

FEATURES = 2048
INPUT_SIZE = 299
IGNORED_PREFIXES = ("fc.", "AuxLogits.")  # classifier heads of the weight files; FID uses the pool features


# ---------------------------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------------------------
class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3, as in the TensorFlow graph) + ReLU; names `conv`, `bn`."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class MixedA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg3(x))], 1)


class ReductionB(nn.Module):
    """35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class MixedC(nn.Module):
    """17x17 block with factorized 7x7 convolutions."""

    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class ReductionD(nn.Module):
    """17 -> 8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class MixedE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs; the last one pools with max instead of average (FID network)."""

    def __init__(self, cin, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Images (N, 3, H, W) — uint8 0..255 or float 0..1 — to (N, 2048) pool features in float32."""

    num_features = FEATURES

    def __init__(self, input_size: int = INPUT_SIZE):
        super().__init__()
        self.input_size = input_size  # 299 for real FID; tests may shrink it (>= 75)
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = MixedA(192, 32)
        self.Mixed_5c = MixedA(256, 64)
        self.Mixed_5d = MixedA(288, 64)
        self.Mixed_6a = ReductionB(288)
        self.Mixed_6b = MixedC(768, 128)
        self.Mixed_6c = MixedC(768, 160)
        self.Mixed_6d = MixedC(768, 160)
        self.Mixed_6e = MixedC(768, 192)
        self.Mixed_7a = ReductionD(768)
        self.Mixed_7b = MixedE(1280, max_pool=False)
        self.Mixed_7c = MixedE(2048, max_pool=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0  # (N, 3, 299, 299) in [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)  # (N, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # (N, 2048)


def load_inception(path: Union[str, Path], input_size: int = INPUT_SIZE) -> FIDInceptionV3:
    """The FID network with weights from a local state-dict file (``weights_only=True``; never downloads)."""
    from ditas_trt.artifacts import load_torch_file

    path = Path(path)
    obj = load_torch_file(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DitasError(f"{path}: not a state dict of tensors (expected the FID Inception weights, e.g. pytorch-fid's "
                         "pt_inception-2015-12-05-6726825d.pth)")
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    net = FIDInceptionV3(input_size)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise DitasError(f"{path}: does not fit the FID Inception-v3 ({len(missing)} missing tensors, e.g. "
                         f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise DitasError(f"{path}: tensor {wrong[0]} is {tuple(state[wrong[0]].shape)}, the FID Inception-v3 needs "
                         f"{tuple(expected[wrong[0]].shape)}")
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval()


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) float in [-1, 1] (ditas-trt samples) or uint8 -> uint8 (N, 3, H, W)."""
    if images.dim() != 4:
        raise DitasError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    channels = images.shape[1]
    if channels == 1:
        images = images.repeat(1, 3, 1, 1)
    elif channels != 3:
        raise DitasError(f"FID needs grey or RGB images, got {channels} channels (latent samples must be decoded "
                         "with the VAE first)")
    return images


def load_reference(path: Union[str, Path]) -> dict:
    """{"images": uint8 (N, 3, H, W)} or {"mu": (2048,), "sigma": (2048, 2048)} from an .npz.

    Accepted: ``mu`` + ``sigma`` (precomputed statistics); ``arr_0`` uint8 (N, H, W, C) (ADM reference batches);
    ``images`` (N, C, H, W) in [-1, 1] (``ditas-trt sample`` output).
    """
    path = Path(path)
    if not path.is_file():
        raise DitasError(f"{path}: reference file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            if {"mu", "sigma"} <= keys:
                mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
                if mu.shape != (FEATURES,) or sigma.shape != (FEATURES, FEATURES):
                    raise DitasError(f"{path}: mu/sigma must be ({FEATURES},) and ({FEATURES}, {FEATURES}), got "
                                     f"{mu.shape} and {sigma.shape}")
                return {"mu": mu, "sigma": sigma}
            if "arr_0" in keys:
                arr = data["arr_0"]
                if arr.dtype != np.uint8 or arr.ndim != 4:
                    raise DitasError(f"{path}: arr_0 must be uint8 (N, H, W, C), got {arr.dtype} {arr.shape}")
                return {"images": to_uint8_rgb(torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous())}
            if "images" in keys:
                return {"images": to_uint8_rgb(torch.from_numpy(data["images"]))}
    except (OSError, ValueError) as exc:
        raise DitasError(f"{path}: not a readable .npz ({exc})") from None
    raise DitasError(f"{path}: no mu/sigma, arr_0 or images array in it")


# ---------------------------------------------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def inception_features(net: FIDInceptionV3, images: torch.Tensor, batch_size: int = 50, device="cpu") -> np.ndarray:
    net = net.to(device)
    feats = [net(chunk.to(device)).double().cpu() for chunk in images.split(batch_size)]
    return torch.cat(feats).numpy()


def frechet_distance_psd(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||² + Tr(S1) + Tr(S2) - 2 Tr((S1^½ S2 S1^½)^½), with symmetric eigendecompositions only.

    Tr((S1 S2)^½) equals the trace of the symmetric square root above; two ``eigh`` of 2048 x 2048 take a
    fraction of the time of a general matrix square root.
    """
    s1 = (sigma1 + sigma1.T) / 2
    s2 = (sigma2 + sigma2.T) / 2
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root @ s2 @ root)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


@torch.no_grad()
def compute_fid(samples: torch.Tensor, reference: dict, net: FIDInceptionV3, batch_size: int = 50,
                device: Union[str, torch.device] = "cpu") -> dict:
    """FID of ``samples`` (N, C, H, W) against ``reference`` (from :func:`load_reference`)."""
    samples = to_uint8_rgb(samples)
    if samples.shape[0] < 2:
        raise DitasError("FID needs at least 2 samples")
    if "mu" in reference:
        feats = inception_features(net, samples, batch_size, device)
        value = frechet_distance_psd(feats.mean(axis=0), np.cov(feats, rowvar=False), reference["mu"],
                                     reference["sigma"])
        return {"fid": value, "samples": int(samples.shape[0]), "reference": "precomputed mu/sigma",
                "implementation": "ditas_trt FIDInceptionV3 + symmetric-eigendecomposition Fréchet distance"}
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as exc:
        raise DitasError(f"FID against reference images needs torchmetrics ({exc}); pip install torchmetrics") from None
    ref = reference["images"]
    if ref.shape[0] < 2:
        raise DitasError("FID needs at least 2 reference images")
    metric = FrechetInceptionDistance(feature=net.to(device), normalize=False, reset_real_features=True).to(device)
    for chunk in ref.split(batch_size):
        metric.update(chunk.to(device), real=True)
    for chunk in samples.split(batch_size):
        metric.update(chunk.to(device), real=False)
    import torchmetrics

    return {"fid": float(metric.compute()), "samples": int(samples.shape[0]), "reference_images": int(ref.shape[0]),
            "implementation": f"torchmetrics {torchmetrics.__version__} FrechetInceptionDistance over ditas_trt "
                              "FIDInceptionV3"}


def fid_from_files(samples_path, reference_path, weights_path, batch_size: int = 50, device="cpu",
                   input_size: int = INPUT_SIZE) -> dict:
    from ditas_trt.runs import load_samples

    images, _, _ = load_samples(samples_path)
    reference = load_reference(reference_path)
    net = load_inception(weights_path, input_size)
    result = compute_fid(images, reference, net, batch_size, device)
    result["weights"] = str(weights_path)
    return result


__all__ = ["FIDInceptionV3", "load_inception", "load_reference", "compute_fid", "fid_from_files"]

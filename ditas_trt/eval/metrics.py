"""Offline quality metrics for generated digits: class accuracy, Fréchet distance of classifier features, PSNR/MSE."""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import numpy as np
import torch

from ditas_trt.eval.classifier import DigitClassifier, load_classifier


@lru_cache(maxsize=1)
def default_classifier() -> DigitClassifier:
    return load_classifier()


@torch.no_grad()
def classifier_outputs(images: torch.Tensor, classifier: Optional[DigitClassifier] = None, batch: int = 512):
    """(features (N, 64) float64 numpy, predicted labels (N,)) for images in [-1, 1]."""
    classifier = classifier or default_classifier()
    feats, preds = [], []
    for chunk in images.float().clamp(-1, 1).split(batch):
        f = classifier.features(chunk)
        feats.append(f.double())
        preds.append(classifier.head(f).argmax(dim=1))
    return torch.cat(feats).numpy(), torch.cat(preds)


@lru_cache(maxsize=1)
def real_feature_stats() -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the classifier features of all real digits (the reference distribution)."""
    from ditas_trt.data import load_digits

    feats, _ = classifier_outputs(load_digits()[0])
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½), with the usual jitter when the product is near singular."""
    import warnings

    from scipy import linalg

    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-singular products are handled below
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def feature_frechet_distance(features: np.ndarray) -> float:
    mu_r, sigma_r = real_feature_stats()
    return frechet_distance(features.mean(axis=0), np.cov(features, rowvar=False), mu_r, sigma_r)


def psnr(images: torch.Tensor, reference: torch.Tensor, data_range: float = 2.0) -> float:
    mse = float(((images.float() - reference.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * float(np.log10(data_range**2 / mse))


def reference_metrics(images: torch.Tensor, reference: torch.Tensor) -> dict:
    """MSE and PSNR against FP samples from the same noise (any model, any image shape)."""
    return {"mse_vs_fp": float(((images.float() - reference.float()) ** 2).mean()), "psnr_vs_fp": psnr(images, reference)}


def evaluate_samples(images: torch.Tensor, labels: torch.Tensor, reference: Optional[torch.Tensor] = None) -> dict:
    """Metrics of generated digits; ``reference`` = FP samples from the same noise for PSNR/MSE."""
    feats, preds = classifier_outputs(images)
    result = {
        "samples": int(images.shape[0]),
        "class_accuracy": float((preds == labels.cpu()).float().mean()),
        "frechet_distance": feature_frechet_distance(feats),
    }
    if reference is not None:
        result.update(reference_metrics(images, reference))
    return result

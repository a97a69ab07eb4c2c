"""Quality metrics of generated samples (offline proxies; Inception FID only with user-supplied weights)."""
from ditas_trt.eval.metrics import evaluate_samples, frechet_distance, psnr, reference_metrics

__all__ = ["evaluate_samples", "frechet_distance", "psnr", "reference_metrics"]

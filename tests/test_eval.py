import numpy as np
import torch

from ditas_trt.data import load_digits
from ditas_trt.eval import evaluate_samples, frechet_distance, psnr
from ditas_trt.eval.metrics import classifier_outputs


def test_frechet_distance_properties():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 8))
    b = rng.normal(size=(500, 8)) + 1.0
    mu_a, s_a = a.mean(0), np.cov(a, rowvar=False)
    mu_b, s_b = b.mean(0), np.cov(b, rowvar=False)
    assert abs(frechet_distance(mu_a, s_a, mu_a, s_a)) < 1e-6
    assert frechet_distance(mu_a, s_a, mu_b, s_b) > 7  # mean shift of 1 in 8 dimensions
    assert abs(frechet_distance(mu_a, s_a, mu_b, s_b) - frechet_distance(mu_b, s_b, mu_a, s_a)) < 1e-6


def test_psnr():
    x = torch.zeros(2, 1, 4, 4)
    assert psnr(x, x) == float("inf")
    assert abs(psnr(x + 0.02, x) - 10 * np.log10(4 / 0.0004)) < 1e-6


def test_classifier_recognises_real_digits_and_real_data_scores_well():
    images, labels = load_digits()
    _, preds = classifier_outputs(images)
    assert (preds == labels).float().mean() > 0.97
    subset = torch.arange(0, len(labels), 3)
    metrics = evaluate_samples(images[subset], labels[subset], reference=images[subset])
    # ~600 real digits against all of them: the small-sample bias of a 64-d Fréchet distance is about 4.5
    assert metrics["class_accuracy"] > 0.97 and metrics["frechet_distance"] < 8.0 and metrics["mse_vs_fp"] == 0
    noise = evaluate_samples(torch.rand(300, 1, 16, 16) * 2 - 1, labels[:300])
    assert noise["frechet_distance"] > 50 * metrics["frechet_distance"]

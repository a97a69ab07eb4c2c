"""FID: the Inception-v3 FID network with fake (random) weights at a small input size; weights only from a local
file with weights_only=True; torchmetrics statistics; precomputed mu/sigma path; the CLI's fallback."""
import json

import numpy as np
import pytest
import torch

from ditas_trt.errors import DitasError
from ditas_trt.eval.fid import FEATURES, FIDInceptionV3, compute_fid, load_inception, load_reference
from tests.conftest import run_cli

SMALL = 75  # smallest input Inception-v3 accepts; 299 in real use


@pytest.fixture(autouse=True)
def one_thread():
    """2048 x 2048 eigendecompositions with 2 threads on a busy 2-core machine spin for tens of seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    net = FIDInceptionV3()
    state = net.state_dict()  # default init: kaiming convs, identity batch norms
    state["fc.weight"] = torch.randn(1008, FEATURES)  # like pytorch-fid's file: a classifier head we ignore
    state["fc.bias"] = torch.randn(1008)
    path = tmp_path_factory.mktemp("fid") / "fake_inception.pth"
    torch.save(state, path)
    return path


def _images(seed, n=6, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 16, 16, generator=g) * 2 - 1 + shift).clamp(-1, 1)


def test_fid_zero_for_same_set_positive_otherwise(weights):
    pytest.importorskip("torchmetrics")
    net = load_inception(weights, SMALL)
    a, b = _images(1), _images(2, shift=0.6)
    ref = {"images": ((a + 1) * 127.5).round().to(torch.uint8).repeat(1, 3, 1, 1)}
    same = compute_fid(a, ref, net, batch_size=4)["fid"]
    other = compute_fid(b, ref, net, batch_size=4)
    assert abs(same) < 1e-3 * other["fid"] and other["fid"] > 0
    assert "torchmetrics" in other["implementation"]
    # precomputed statistics of the same reference give the same value (symmetric eigendecompositions)
    from ditas_trt.eval.fid import inception_features

    feats = inception_features(net, ref["images"])
    stats = {"mu": feats.mean(axis=0), "sigma": np.cov(feats, rowvar=False)}
    via_stats = compute_fid(b, stats, net)["fid"]
    assert via_stats == pytest.approx(other["fid"], rel=1e-3)
    from ditas_trt.eval.fid import frechet_distance_psd
    from ditas_trt.eval.metrics import frechet_distance

    rng = np.random.default_rng(0)
    f1, f2 = rng.normal(size=(40, 16)), rng.normal(1.0, 2.0, size=(40, 16))
    args = (f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert frechet_distance_psd(*args) == pytest.approx(frechet_distance(*args), rel=1e-6)


class Payload:
    """Any non-tensor object: a checkpoint holding one must be refused by weights_only=True."""


def test_weights_only_and_shape_checks(weights, tmp_path):
    torch.save({"x": Payload()}, tmp_path / "code.pth")
    with pytest.raises(DitasError, match="refused to load"):
        load_inception(tmp_path / "code.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(DitasError, match="does not fit the FID Inception"):
        load_inception(tmp_path / "other.pth")
    state = torch.load(weights, weights_only=True)
    state["Conv2d_1a_3x3.conv.weight"] = torch.zeros(32, 3, 5, 5)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(DitasError, match="Conv2d_1a_3x3.conv.weight"):
        load_inception(tmp_path / "shape.pth")
    with pytest.raises(DitasError, match="not found"):
        load_inception(tmp_path / "missing.pth")


def test_reference_formats(tmp_path):
    np.savez(tmp_path / "adm.npz", arr_0=np.zeros((3, 8, 8, 3), np.uint8))
    assert load_reference(tmp_path / "adm.npz")["images"].shape == (3, 3, 8, 8)
    np.savez(tmp_path / "stats.npz", mu=np.zeros(FEATURES), sigma=np.eye(FEATURES))
    assert load_reference(tmp_path / "stats.npz")["sigma"].shape == (FEATURES, FEATURES)
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(DitasError, match="mu/sigma must be"):
        load_reference(tmp_path / "bad.npz")
    np.savez(tmp_path / "latent.npz", images=np.zeros((2, 4, 8, 8), np.float32))
    with pytest.raises(DitasError, match="decoded with the VAE"):
        load_reference(tmp_path / "latent.npz")


def test_fid_cli(weights, tmp_path):
    from ditas_trt.runs import save_samples

    labels = torch.arange(6) % 10
    save_samples(tmp_path, "s", _images(3), labels, list(range(6)))
    np.savez(tmp_path / "ref.npz", arr_0=np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8))
    r = run_cli("fid", tmp_path / "s.npz", "--reference", tmp_path / "ref.npz", "--inception-weights",
                tmp_path / "nope.pth")
    assert r.returncode == 2 and "nope.pth: file not found" in r.stderr
    r = run_cli("fid", tmp_path / "s.npz", "--inception-weights", weights)
    assert r.returncode == 2 and "needs --reference" in r.stderr
    r = run_cli("fid", tmp_path / "s.npz", "--reference", tmp_path / "s.npz")  # no weights: the offline proxies
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["fid"] is None and "class_accuracy" in result and result["psnr_vs_fp"] == float("inf")

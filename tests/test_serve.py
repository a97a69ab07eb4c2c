"""Triton serving on loopback: the generated repository, the server started from the test, HTTP and gRPC.

Starts nvidia-pytriton's tritonserver (CPU, Python backend) on free 127.0.0.1 ports once for the module and stops
it after; every load loop is bounded in requests and time. Model: a tiny W4A8+LoRA DiT (8x8, 2 blocks).
"""
import json
import threading

import numpy as np
import pytest
import torch

from tests.conftest import run_cli

pytest.importorskip("pytriton")
pytest.importorskip("tritonclient.http")
pytest.importorskip("tritonclient.grpc")

from ditas_trt.errors import DitasError  # noqa: E402
from ditas_trt.serve.repository import RepoOptions, write_repository  # noqa: E402

NUM_CLASSES = 10


def make_quantized(path):
    """A tiny random DiT whose block linears are W4A8 + LoRA (round-to-nearest; quality is irrelevant here)."""
    from ditas_trt.models import DiT
    from ditas_trt.quant.format import QuantLinearTensors
    from ditas_trt.quant.linear import QuantLinear, replace_module
    from ditas_trt.quant.packed import save_quantized

    torch.manual_seed(0)
    model = DiT(input_size=8, patch_size=4, in_channels=1, hidden_size=64, depth=2, num_heads=4,
                num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and name.startswith("blocks."):
            layer = QuantLinearTensors.from_float(module.weight, module.bias, weight_bits=4,
                                                  lora_down=torch.randn(module.in_features, 4) * 0.01,
                                                  lora_up=torch.randn(4, module.out_features) * 0.01)
            replace_module(model, name, QuantLinear.from_tensors(layer))
    save_quantized(model, path, recipe={"method": "rtn-test"})
    return path


@pytest.fixture(scope="module")
def quantized_dir(tmp_path_factory):
    return make_quantized(tmp_path_factory.mktemp("tinyq"))


@pytest.fixture(scope="module")
def server(quantized_dir, tmp_path_factory):
    from ditas_trt.serve.server import TritonServer

    repo = tmp_path_factory.mktemp("serve") / "repo"
    write_repository(RepoOptions(out=str(repo), quantized=str(quantized_dir), threads=1))
    srv = TritonServer(repo, log_path=repo.parent / "server.log")
    srv.start(timeout=240)
    yield srv
    srv.stop()


def fake_engine(folder, flavour="tensorrt", embedded=False):
    """A plan file + sidecar shaped like `ditas-trt build` output (the generator never deserializes the plan)."""
    from ditas_trt.artifacts import file_sha256, write_json_atomic

    plan = folder / "x.plan"
    plan.write_bytes(b"not a real plan")
    lib = folder / "libditas_trt_plugin.so"
    lib.write_bytes(b"not a real library")
    config = {"input_size": 32, "patch_size": 2, "in_channels": 4, "hidden_size": 1152, "depth": 28, "num_heads": 16,
              "mlp_ratio": 4.0, "class_dropout_prob": 0.1, "num_classes": 1000, "learn_sigma": True}
    write_json_atomic(folder / "x.plan.json", {
        "sidecar_version": 1, "artifact": "x.plan", "sha256": file_sha256(plan),
        "tensorrt": {"flavour": flavour, "version": "10.14.1"},
        "profile": {"batch": {"min": 1, "opt": 16, "max": 64}},
        "inputs": {"x": {"shape": [-1, 4, 32, 32], "dtype": "float32"}, "t": {"shape": [-1], "dtype": "float32"},
                   "y": {"shape": [-1], "dtype": "int32"}},
        "outputs": {"out": {"shape": [-1, 8, 32, 32], "dtype": "float32"}},
        "model_config": config,
        "plugin": {"library": str(lib), "sha256": file_sha256(lib), "embedded": embedded},
    })
    return plan, lib


# ---------------------------------------------------------------------------------------------------------------
# Repository generator (no server)
# ---------------------------------------------------------------------------------------------------------------
def test_engine_repository_uses_tensorrt_backend_and_plugin(tmp_path):
    plan, lib = fake_engine(tmp_path)
    out, side = write_repository(RepoOptions(out=str(tmp_path / "repo"), engine=str(plan)))
    config = (out / "denoiser" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in config and "max_batch_size: 64" in config
    assert 'name: "t" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] }' in config  # per-sample timestep
    assert "dynamic_batching" in config and "KIND_GPU" in config
    assert (out / "denoiser" / "1" / "model.plan").read_bytes() == plan.read_bytes()
    assert (out / "plugins" / lib.name).is_file()
    assert "--backend-config=tensorrt,plugins=" in (out / "launch.sh").read_text()
    assert "LD_PRELOAD" in (out / "README.md").read_text()
    assert side["denoiser_backend"] == "tensorrt_plan" and side["plugin_lib"] == f"plugins/{lib.name}"
    sampler = (out / "sampler" / "config.pbtxt").read_text()
    assert 'name: "latent"' in sampler and 'name: "image"' not in sampler  # latent DiT: no pixel output
    with pytest.raises(DitasError, match="not empty"):
        write_repository(RepoOptions(out=str(out), engine=str(plan)))
    with pytest.raises(DitasError, match="exceeds the engine profile"):
        write_repository(RepoOptions(out=str(tmp_path / "r2"), engine=str(plan), max_batch=128))
    with pytest.raises(DitasError, match="no TensorRT backend"):  # pytriton's server has the Python backend only
        from ditas_trt.serve.server import TritonServer

        TritonServer(out)


def test_engine_repository_checks_the_plugin_library(tmp_path):
    plan, lib = fake_engine(tmp_path)
    lib.write_bytes(b"rebuilt since")
    with pytest.raises(DitasError, match="not the plugin library x.plan was built with"):
        write_repository(RepoOptions(out=str(tmp_path / "repo"), engine=str(plan)))
    lib.unlink()
    with pytest.raises(DitasError, match="needs plugin library .* which is missing"):
        write_repository(RepoOptions(out=str(tmp_path / "repo"), engine=str(plan)))
    assert not (tmp_path / "repo").exists()


def test_rtx_engine_becomes_python_denoiser(tmp_path):
    plan, _ = fake_engine(tmp_path, flavour="tensorrt-rtx", embedded=True)
    out, side = write_repository(RepoOptions(out=str(tmp_path / "repo"), engine=str(plan)))
    assert side["denoiser_backend"] == "python" and side["notes"]
    assert 'backend: "python"' in (out / "denoiser" / "config.pbtxt").read_text()
    readme = (out / "README.md").read_text()  # no Triton TensorRT backend flags for a Python denoiser
    assert "embeds its plugin library; the Python denoiser" in readme and "version-compatible" not in readme
    with pytest.raises(DitasError, match="enterprise TensorRT plans only"):
        write_repository(RepoOptions(out=str(tmp_path / "r2"), engine=str(plan), denoiser_backend="tensorrt_plan"))


def test_repository_cli_errors(tmp_path, quantized_dir):
    r = run_cli("triton-repo", "--quantized", quantized_dir, "--checkpoint", "embedded", "--out", tmp_path / "r")
    assert r.returncode == 2 and "exactly one of" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("triton-repo", "--quantized", tmp_path / "missing", "--out", tmp_path / "r")
    assert r.returncode == 2 and "no quantized model" in r.stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    r = run_cli("triton-repo", "--quantized", quantized_dir, "--out", tmp_path / "busy", "--force")
    assert r.returncode == 2 and "not a repository written by triton-repo" in r.stderr


def test_load_generator_without_a_server_is_a_one_line_error():
    from ditas_trt.serve.client import SamplerClient, run_load
    from ditas_trt.serve.server import free_ports

    with pytest.raises(DitasError, match="as host:port, without a scheme"):
        SamplerClient("http://127.0.0.1:8000", "http")
    url = f"127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    for protocol in ("http", "grpc"):
        with pytest.raises(DitasError, match=f"serving 'sampler' and 'denoiser' answers over {protocol}"):
            run_load(url, protocol, concurrency=1, requests_per_client=1)


# ---------------------------------------------------------------------------------------------------------------
# Served
# ---------------------------------------------------------------------------------------------------------------
def test_same_seed_same_image_http_grpc_and_in_process(server, quantized_dir):
    from ditas_trt.backends import load_denoiser
    from ditas_trt.diffusion.sampling import SamplingOptions
    from ditas_trt.serve.client import SamplerClient

    http, grpc = SamplerClient(server.http_url, "http"), SamplerClient(server.grpc_url, "grpc")
    try:
        a = http.generate([3], [5], steps=4, cfg_scale=1.5, outputs=("latent", "image"))
        b = http.generate([3], [5], steps=4, cfg_scale=1.5)
        g = grpc.generate([3], [5], steps=4, cfg_scale=1.5)
        ddim = grpc.generate([1, 7], [11, 12], steps=4, cfg_scale=2.0, sampler="ddim")
    finally:
        http.close(), grpc.close()
    assert np.array_equal(a["latent"], b["latent"]) and np.array_equal(a["latent"], g["latent"])
    assert a["image"].shape == (1, 8, 8, 1) and a["image"].dtype == np.uint8
    denoiser = load_denoiser(None, quantized=str(quantized_dir))
    ref = denoiser.generate(torch.tensor([3]), [5], SamplingOptions(steps=4, cfg_scale=1.5)).numpy()
    np.testing.assert_array_equal(a["latent"], ref)
    ref = denoiser.generate(torch.tensor([1, 7]), [11, 12], SamplingOptions(steps=4, sampler="ddim", cfg_scale=2.0))
    np.testing.assert_allclose(ddim["latent"], ref.numpy(), rtol=0, atol=1e-5)


def test_64_concurrent_clients_no_failures_and_denoiser_batches(server):
    from ditas_trt.serve.client import run_load

    report = run_load(server.http_url, "http", concurrency=64, requests_per_client=2, steps=3, num_classes=NUM_CLASSES,
                      time_limit_s=240)
    assert report["failed"] == 0 and report["ok"] == 128, report["errors"]
    den, smp = report["server"]["denoiser"], report["server"]["sampler"]
    # every sampler execution makes one BLS call per step; fewer denoiser executions = calls merged in its queue
    assert den["execution_count"] < 3 * smp["execution_count"], json.dumps(report["server"])
    assert max(den["batch_stats"]) > 2  # batches of more than one guided sample
    report = run_load(server.grpc_url, "grpc", concurrency=8, requests_per_client=1, steps=2, num_classes=NUM_CLASSES,
                      time_limit_s=120)
    assert report["failed"] == 0 and report["ok"] == 8


def _bad_requests(module):
    from ditas_trt.serve.client import sampler_inputs

    good = dict(labels=[1], seeds=[0], steps=2, cfg_scale=1.5)
    cases = {
        "unknown class": sampler_inputs(module, **{**good, "labels": [NUM_CLASSES]}),
        "negative class": sampler_inputs(module, **{**good, "labels": [-1]}),
        "steps 0": sampler_inputs(module, **{**good, "steps": 0}),
        "steps -3": sampler_inputs(module, **{**good, "steps": -3}),
        "too many steps": sampler_inputs(module, **{**good, "steps": 5000}),
        "cfg below 1": sampler_inputs(module, **{**good, "cfg_scale": 0.5}),
        "unknown sampler": sampler_inputs(module, **good, sampler="euler"),
        "one step": sampler_inputs(module, **{**good, "steps": 1}),
        "cfg not a number": sampler_inputs(module, **{**good, "cfg_scale": float("nan")}),
    }
    wrong_dtype = sampler_inputs(module, **good)
    wrong_dtype[0] = module.InferInput("class_label", [1, 1], "FP32")
    wrong_dtype[0].set_data_from_numpy(np.array([[1.0]], np.float32))
    cases["wrong dtype"] = wrong_dtype
    wrong_shape = sampler_inputs(module, **good)
    wrong_shape[1] = module.InferInput("seed", [1, 2], "INT64")
    wrong_shape[1].set_data_from_numpy(np.array([[0, 1]], np.int64))
    cases["wrong shape"] = wrong_shape
    cases["missing input"] = sampler_inputs(module, **good)[:3]
    return cases


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_get_errors_and_server_keeps_serving(server, protocol):
    from tritonclient.utils import InferenceServerException

    from ditas_trt.serve.client import SamplerClient

    url = server.http_url if protocol == "http" else server.grpc_url
    client = SamplerClient(url, protocol)
    try:
        for what, inputs in _bad_requests(client.module).items():
            with pytest.raises(InferenceServerException):
                client.infer(inputs)
        # a bad request racing good ones in the same sampler batch fails alone
        results = {}

        def send(key, inputs):
            c = SamplerClient(url, protocol)
            try:
                results[key] = c.infer(inputs).as_numpy("latent")
            except InferenceServerException as exc:
                results[key] = exc
            finally:
                c.close()

        from ditas_trt.serve.client import sampler_inputs

        threads = [threading.Thread(target=send, args=(k, sampler_inputs(client.module, [k % NUM_CLASSES], [k], 2, 1.5)))
                   for k in range(4)]
        threads.append(threading.Thread(target=send, args=("bad", sampler_inputs(client.module, [99], [0], 2, 1.5))))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert isinstance(results["bad"], InferenceServerException) and "class_label" in str(results["bad"])
        assert all(isinstance(results[k], np.ndarray) for k in range(4))
        assert client.client.is_server_live() and client.client.is_model_ready("sampler")
        out = client.generate([2], [0], steps=2, cfg_scale=1.0)
        assert out["latent"].shape == (1, 1, 8, 8) and np.isfinite(out["latent"]).all()
    finally:
        client.close()


def test_serve_cli_check(tmp_path, quantized_dir):
    from ditas_trt.serve.server import free_ports

    repo = tmp_path / "repo"
    r = run_cli("triton-repo", "--quantized", quantized_dir, "--out", repo, "--sampler-instances", "1", "--threads", "1")
    assert r.returncode == 0, r.stderr
    http_port, grpc_port = free_ports(2)
    r = run_cli("serve", "--repo", repo, "--http-port", http_port, "--grpc-port", grpc_port, "--check")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "HTTP  http://127.0.0.1:" in r.stdout and "check: one 2-step request -> latent (1, 1, 8, 8)" in r.stdout
    r = run_cli("serve", "--repo", tmp_path, "--check")
    assert r.returncode == 2 and "not a model repository" in r.stderr
    r = run_cli("serve", "--repo", repo, "--http-port", http_port, "--grpc-port", http_port)
    assert r.returncode == 2 and "must differ" in r.stderr


def test_server_is_stopped_when_start_fails_or_is_interrupted(tmp_path, monkeypatch):
    """tritonserver runs in its own session (Ctrl-C does not reach it): start() must stop it on any failure."""
    from ditas_trt.serve.server import TritonServer

    binary = tmp_path / "tritonserver"
    binary.write_text("#!/bin/sh\nexec sleep 600\n")  # never becomes ready
    binary.chmod(0o755)
    (tmp_path / "repo.json").write_text("{}")
    server = TritonServer(tmp_path, tritonserver=str(binary), log_path=tmp_path / "log")
    assert server.http_port != server.grpc_port
    with pytest.raises(DitasError, match="not ready after 1 s"):
        server.start(timeout=1)
    assert server.process.poll() is not None

    def interrupted(timeout):
        raise KeyboardInterrupt

    monkeypatch.setattr(server, "_wait_ready", interrupted)
    with pytest.raises(KeyboardInterrupt):
        server.start()
    assert server.process.poll() is not None

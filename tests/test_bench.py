"""`ditas-trt bench` end to end on a tiny DiT (short: 2 steps, 1-2 repetitions); GPU-only variants are n/a here."""
import json

import pytest
import torch

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from ditas_trt.models import DiT, save_dit

    torch.manual_seed(0)
    model = DiT(input_size=8, patch_size=4, in_channels=1, hidden_size=64, depth=2, num_heads=4, num_classes=10)
    path = tmp_path_factory.mktemp("bench") / "tiny.safetensors"
    save_dit(model, path)
    return path


def test_bench_writes_json_markdown_and_plots(tiny_checkpoint, tmp_path):
    r = run_cli("bench", "--checkpoint", tiny_checkpoint, "--variants", "fp32", "w4a8_lora", "trt_fp16", "quantized",
                "--batches", "1", "2", "--steps", "2", "--warmup", "0", "--reps", "2", "--loop-warmup", "0",
                "--loop-reps", "1", "--threads", "1", "--out", tmp_path, "--name", "t")
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "t.json").read_text())
    variants = {v["name"]: v for v in data["variants"]}
    assert variants["fp32"]["status"] == "ok" and variants["w4a8_lora"]["status"] == "ok"
    for name in ("fp32", "w4a8_lora"):
        for batch in ("1", "2"):
            res = variants[name]["batches"][batch]
            assert res["images_per_s"] > 0 and res["step_ms"]["p50"] > 0 and res["loop_ms"]["n"] == 1
        assert variants[name]["weights_mb"] > 0 and variants[name]["peak_memory_mb"] > 0
    assert variants["w4a8_lora"]["weights_mb"] < variants["fp32"]["weights_mb"]
    assert "exact CPU reference" in variants["w4a8_lora"]["path"]
    if not torch.cuda.is_available():
        assert variants["trt_fp16"]["status"] == "n/a" and "CUDA GPU" in variants["trt_fp16"]["reason"]
    assert variants["quantized"]["status"] == "n/a" and "--quantized" in variants["quantized"]["reason"]
    assert data["device"]["name"] and data["device"]["type"] in ("cpu", "cuda")
    md = (tmp_path / "t.md").read_text()
    assert "| W4A8+LoRA (ditas_trt ops) | 1 |" in md and "n/a" in md and "images/s" in md
    assert (tmp_path / "t_images_per_s.png").stat().st_size > 1000
    assert (tmp_path / "t_step_latency.png").stat().st_size > 1000


def test_bench_argument_errors(tmp_path):
    r = run_cli("bench", "--random-weights", "--out", tmp_path)
    assert r.returncode == 2 and "--random-weights needs --model" in r.stderr
    r = run_cli("bench", "--batches", "0", "--out", tmp_path)
    assert r.returncode == 2 and "batches must be >= 1" in r.stderr
    r = run_cli("bench", "--random-weights", "--model", "DiT-S/8", "--triton", "auto", "--out", tmp_path)
    assert r.returncode == 2 and "not --random-weights" in r.stderr and "[bench]" not in r.stdout  # before any sweep
    r = run_cli("bench", "--triton", "127.0.0.1:1", "--out", tmp_path)  # nothing listens on port 1
    assert r.returncode == 2 and "no Triton server" in r.stderr and "[bench]" not in r.stdout
    r = run_cli("bench", "--engine-fp16", tmp_path / "missing.plan", "--out", tmp_path)
    assert r.returncode == 2 and "--engine-fp16" in r.stderr and "not found" in r.stderr and "[bench]" not in r.stdout
    from ditas_trt.bench.variants import rtn_quantize
    from ditas_trt.models import DiT
    from ditas_trt.quant.packed import save_quantized

    other = DiT(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=1, num_heads=2, num_classes=10)
    save_quantized(rtn_quantize(other, 4), tmp_path / "other", recipe={"method": "rtn-test"})
    r = run_cli("bench", "--quantized", tmp_path / "other", "--out", tmp_path)  # the embedded model is benchmarked
    assert r.returncode == 2 and "quantized from another model" in r.stderr and "[bench]" not in r.stdout


def test_triton_rows_compare_with_bare_only_for_the_same_work():
    from types import SimpleNamespace

    from ditas_trt.bench.report import triton_rows

    level = {"concurrency": 8, "images_per_s": 9.0, "failed": 0,
             "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0},
             "server": {"denoiser": {"mean_batch": 4.0, "batch_stats": {"4": 2}}}}
    fp32 = {"name": "fp32", "status": "ok", "batches": {8: {"images_per_s": 10.0}}}
    triton = {"server": "pytriton tritonserver, repository from fp32", "protocol": "http", "steps": 10,
              "requests_per_client": 4, "levels": [level]}
    result = SimpleNamespace(triton=triton, config={"steps": 10}, variants=[fp32])
    assert triton_rows(result)[-1].endswith("| 10.00 | 0.90 |")
    result.config["steps"] = 50  # --triton-steps 10 against a 50-step variant sweep
    assert triton_rows(result)[-1].endswith("| n/a | — |")
    result.config["steps"], result.triton = 10, {k: v for k, v in triton.items() if k != "server"}  # a URL
    assert triton_rows(result)[-1].endswith("| n/a | — |")


@pytest.mark.slow
def test_pipeline_bench_and_triton_stages(tiny_checkpoint, tmp_path):
    pytest.importorskip("pytriton")
    r = run_cli("pipeline", "--checkpoint", tiny_checkpoint, "--stages", "model", "bench", "triton", "--per-class", "1",
                "--runs-dir", tmp_path, "--name", "p", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    report = (tmp_path / "p" / "report.md").read_text()
    assert "## Benchmark (short)" in report and "| torch FP32 eager | 1 |" in report
    assert "## Triton model repository" in report and "(bit-exact)" in report and ", 0 failed," in report
    assert (tmp_path / "p" / "model_repo" / "sampler" / "config.pbtxt").is_file()
    assert (tmp_path / "p" / "bench" / "bench.json").is_file()

import json

from conftest import run_cli


def test_pipeline_end_to_end_on_the_embedded_model(tmp_path):
    result = run_cli("pipeline", "--runs-dir", tmp_path, "--name", "e2e", "--per-class", "3", "--steps", "10")
    assert result.returncode == 0, result.stderr[-3000:]
    report = tmp_path / "e2e" / "report.md"
    assert f"report: {report}" in result.stdout
    text = report.read_text()
    assert "## FP samples" in text and "class accuracy" in text
    data = json.loads((tmp_path / "e2e" / "report.json").read_text())
    fp = data["sections"]["FP samples"]
    assert fp["samples"] == 30 and 0.0 <= fp["class_accuracy"] <= 1.0
    assert (tmp_path / "e2e" / "fp_samples.png").is_file()
    quantized = data["sections"]["Quantized samples (DiTAS W4A8, torch op)"]["quantized"]
    assert quantized["samples"] == 30 and quantized["psnr_vs_fp"] > 15  # same noise as FP, W4A8 + LoRA
    assert (tmp_path / "e2e" / "calib" / "ditas_w4a8" / "quantized.safetensors").is_file()
    assert data["sections"]["Quantize (DiTAS W4A8)"]["calibration"]["steps"] == 10  # calibrated like it samples


def test_pipeline_rejects_bad_options(tmp_path):
    result = run_cli("pipeline", "--runs-dir", tmp_path, "--name", "bad", "--steps", "0")
    assert result.returncode == 2 and "steps" in result.stderr
    assert not (tmp_path / "bad" / "report.md").exists()

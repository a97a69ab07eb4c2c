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


def test_pipeline_on_another_model_reports_what_applies(tmp_path):
    """A latent-space checkpoint without learned sigma: no digit classifier, but PSNR against its FP samples."""
    import torch

    from conftest import perturbed
    from ditas_trt.models import DiT, save_dit

    torch.manual_seed(0)
    save_dit(perturbed(DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4,
                           num_classes=4, learn_sigma=False)), tmp_path / "latent.safetensors")
    result = run_cli("pipeline", "--checkpoint", tmp_path / "latent.safetensors", "--runs-dir", tmp_path, "--name",
                     "other", "--per-class", "2", "--steps", "4", "--stages", "model", "fp", "quantize", "quantized")
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "other" / "report.json").read_text())
    fp = data["sections"]["FP samples"]
    assert fp["samples"] == 8 and "class_accuracy" not in fp
    quantized = data["sections"]["Quantized samples (DiTAS W4A8, torch op)"]["quantized"]
    assert quantized["samples"] == 8 and quantized["psnr_vs_fp"] > 5
    assert "| model | psnr_vs_fp | sampling_seconds |" in (tmp_path / "other" / "report.md").read_text()

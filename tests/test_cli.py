import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import run_cli, without_gpu


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ditas-trt: error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_lists_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ["info", "sample", "eval", "pipeline"]:
        assert name in result.stdout


def test_version():
    import ditas_trt

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"ditas-trt {ditas_trt.__version__}"
    assert ditas_trt.__version__[0].isdigit()


def test_info_on_the_embedded_model():
    result = run_cli("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["config"]["hidden_size"] == 128 and info["parameters"] > 1_000_000


def test_bad_files_give_one_line_and_exit_2(tmp_path, tiny_dit):
    assert_one_line_error(run_cli("info", tmp_path / "missing.pt"), "missing.pt", "not found")
    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    assert_one_line_error(run_cli("info", tmp_path / "trunc.safetensors"), "trunc.safetensors")
    save_file({"encoder.weight": torch.zeros(4, 4)}, str(tmp_path / "other.safetensors"))
    assert_one_line_error(run_cli("info", tmp_path / "other.safetensors"), "not a DiT")
    torch.save(tiny_dit.state_dict(), tmp_path / "tiny.pt")
    assert_one_line_error(run_cli("info", tmp_path / "tiny.pt", "--model", "DiT-B/2"), "does not fit")
    assert_one_line_error(run_cli("info", tmp_path / "tiny.pt", "--model", "DiT-Z/9"), "unknown model")
    (tmp_path / "junk.pt").write_text("junk\n")
    assert_one_line_error(run_cli("info", tmp_path / "junk.pt"), "junk.pt", "not a readable PyTorch checkpoint")


def test_unwritable_outputs_give_one_line_and_exit_2(tmp_path):
    (tmp_path / "file").write_text("")  # a file where a folder should be: mkdir fails, even for root
    assert_one_line_error(run_cli("export", "embedded", "--kind", "fp16", "--out", tmp_path / "file" / "x.onnx"),
                          "x.onnx", "cannot write there")
    assert_one_line_error(run_cli("sample", "--steps", "2", "--classes", "1", "--per-class", "1",
                                  "--out", tmp_path / "file" / "run"), "file")


@pytest.mark.parametrize("args,fragment", [
    (["--steps", "0"], "steps"),
    (["--sampler", "euler"], "invalid choice"),
    (["--classes", "12"], "outside [0, 9]"),
    (["--cfg-scale", "0.2"], "cfg scale"),
    (["--cfg-scale", "nan"], "cfg scale"),
    (["--per-class", "0"], "per-class"),
    (["--batch-size", "0"], "batch-size"),
    (["--steps", "many"], "invalid int value"),
    (["--device", "gpu"], "not a device"),
    (["--device", "meta"], "only cpu and cuda"),
    pytest.param(["--device", "cuda"], "no CUDA GPU is visible", marks=without_gpu),
])
def test_bad_sampling_values_write_nothing(tmp_path, args, fragment):
    out = tmp_path / "out"
    assert_one_line_error(run_cli("sample", "--out", out, *args), fragment)
    assert not out.exists()


def test_sample_then_eval(tmp_path):
    out = tmp_path / "s"
    result = run_cli("sample", "--classes", "3", "7", "--per-class", "2", "--steps", "5", "--out", out)
    assert result.returncode == 0, result.stderr
    assert (out / "samples.png").is_file() and (out / "samples.npz").is_file()
    metrics = run_cli("eval", out / "samples.npz", "--reference", out / "samples.npz", "--json", tmp_path / "m.json")
    assert metrics.returncode == 0, metrics.stderr
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["samples"] == 4 and data["mse_vs_fp"] == 0.0
    assert_one_line_error(run_cli("eval", tmp_path / "m.json"), "m.json")

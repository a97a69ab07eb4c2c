"""`ditas-trt quantize`: one-line errors that leave calib/ untouched, and a real run read back by `sample`."""
import json

import pytest

from conftest import perturbed, run_cli, without_gpu
from test_cli import assert_one_line_error

FAST = ["--steps", "3", "--per-class", "1", "--alpha", "0.2", "0.6", "--lowrank", "4", "--lora-iters", "2",
        "--tokens-per-step", "32", "--quiet"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from ditas_trt.models import DiT, save_dit

    torch.manual_seed(0)
    model = perturbed(DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=4))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_dit(model, path)
    return path


@pytest.mark.parametrize("args,fragment", [
    (["--alpha", "1.5"], "[0, 1]"),
    (["--alpha-step", "0.3"], "does not divide 1"),
    (["--lowrank", "-1"], "lowrank"),
    (["--group-size", "3"], "even"),
    (["--act-mode", "sometimes"], "invalid choice"),
    (["--steps", "0"], "steps"),
    (["--classes", "7"], "outside [0, 3]"),
    (["--layers", "*blocks.*.attn.qkvv"], "matches no linear"),
    (["--timestep-stats", "single", "--stats-step", "9", "--steps", "3"], "stats-step 9"),
    (["--name", "a/b"], "plain folder name"),
    (["--name", "trajectories"], "trajectory cache"),
    (["--device", "cuda:x"], "not a device"),
    pytest.param(["--device", "cuda"], "no CUDA GPU is visible", marks=without_gpu),
])
def test_bad_options_exit_2_and_write_nothing(tmp_path, tiny_checkpoint, args, fragment):
    calib = tmp_path / "calib"
    argv = ["quantize", tiny_checkpoint, "--calib-dir", calib]
    if "--name" not in args:
        argv += ["--name", "q"]
    assert_one_line_error(run_cli(*argv, *args), fragment)
    assert not calib.exists() or not any(calib.rglob("*"))


def test_quantize_then_sample_and_refusals(tmp_path, tiny_checkpoint):
    calib = tmp_path / "calib"
    first = run_cli("quantize", tiny_checkpoint, "--name", "q", "--calib-dir", calib, *FAST)
    assert first.returncode == 0, first.stderr[-3000:]
    out = calib / "q"
    assert f"wrote {out}" in first.stdout
    assert {p.name for p in out.iterdir()} == {"ditas.json", "modelopt.pth", "quantized.safetensors",
                                               "quantized.safetensors.json"}
    report = json.loads((out / "ditas.json").read_text())
    assert report["recipe"]["lowrank"] == 4 and set(report["alpha"].values()) <= {0.2, 0.6}
    assert len(list((calib / "trajectories").glob("*.safetensors"))) == 1

    assert_one_line_error(run_cli("quantize", tiny_checkpoint, "--name", "q", "--calib-dir", calib, *FAST),
                          "already exists")
    again = run_cli("quantize", tiny_checkpoint, "--name", "q", "--calib-dir", calib, "--force", *FAST)
    assert again.returncode == 0 and "(cached)" in again.stdout, again.stderr[-3000:]
    assert sorted(p.name for p in calib.iterdir()) == ["q", "trajectories"]  # no temporary folders left

    samples = run_cli("sample", "--quantized", out, "--classes", "1", "2", "--per-class", "1", "--steps", "3",
                      "--out", tmp_path / "s")
    assert samples.returncode == 0, samples.stderr[-3000:]
    assert (tmp_path / "s" / "samples.png").is_file()
    # a folder quantized from another model is refused
    from ditas_trt.models import DiT, save_dit

    save_dit(DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=4),
             tmp_path / "other.safetensors")
    assert_one_line_error(run_cli("sample", tmp_path / "other.safetensors", "--quantized", out, "--steps", "3",
                                  "--out", tmp_path / "s2"), "different model")
    assert not (tmp_path / "s2").exists()

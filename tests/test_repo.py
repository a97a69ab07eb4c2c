"""Guards on the repository itself: the README's commands and CI stay in step."""
import re

from conftest import REPO


def readme_commands():
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.strip() for line in block.strip().splitlines()]


def test_readme_opens_with_two_setup_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("ditas-trt pipeline")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    """The README's Python tour, run as written on a DiT-XL/2-wide one-block stand-in saved under the name it loads
    (fewer steps, so that the test stays short)."""
    import torch

    from conftest import perturbed
    from ditas_trt.models import DiT

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    stand_in = perturbed(DiT(input_size=32, patch_size=8, in_channels=4, hidden_size=1152, depth=1, num_heads=16,
                             num_classes=1000), std=0.02)
    torch.save(stand_in.state_dict(), "DiT-XL-2-256x256.pt")
    for i, block in enumerate(blocks):
        assert "steps=50" in block
        scope: dict = {}
        exec(compile(block.replace("steps=50", "steps=4"), f"README.md python block {i}", "exec"), scope)
    assert (tmp_path / "calib" / "xl" / "quantized.safetensors").is_file()
    assert scope["images"].shape == (2, 4, 32, 32) and scope["y"].shape == (4, 4608)

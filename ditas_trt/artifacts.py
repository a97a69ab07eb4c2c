"""Atomic artifact writes, JSON sidecars and safe checkpoint reads shared by every stage."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ditas_trt.errors import DitasError

SIDECAR_SUFFIX = ".json"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it over `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise DitasError(f"{path}: cannot write there ({exc.strerror or exc})") from None
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, artifact_mode())  # mkstemp makes 0600
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def artifact_mode() -> int:
    """The usual file permissions (0666 less the umask): plans and graphs are read by Triton or Docker as another user."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def sidecar_path(artifact: str | os.PathLike) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SIDECAR_SUFFIX)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise DitasError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DitasError(f"{path}: {what} is not valid JSON ({exc})") from None


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def environment_versions() -> dict[str, str]:
    """Versions of the libraries that shape an artifact, for its sidecar."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("ditas-trt", "torch", "nvidia-modelopt", "onnx", "tensorrt", "tensorrt-rtx-cu13-bindings"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


def load_torch_file(path: str | os.PathLike) -> Any:
    """`torch.load` that never runs code from the file and names the file in every error."""
    import argparse
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise DitasError(f"{path}: file not found")
    try:
        # The original DiT's training checkpoints store their argparse.Namespace; it holds data only.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling failed"
        raise DitasError(f"{path}: refused to load (weights_only=True): {first}") from None
    except Exception as exc:  # noqa: BLE001 (a corrupt pickle fails with KeyError, IndexError, struct.error, ...)
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DitasError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                         f"{type(exc).__name__} {why}".rstrip()) from None

"""Run an exported graph (Q/DQ or FP) in onnxruntime on the CPU, as a sampling backend."""
from __future__ import annotations

from pathlib import Path
from typing import Union

from ditas_trt.errors import DitasError


class OnnxRunner:
    """``forward(x, t, y)`` over an onnxruntime session; torch tensors in and out."""

    def __init__(self, path: Union[str, Path], threads: int = 0):
        import onnxruntime as ort

        from ditas_trt.export import read_onnx_metadata

        self.path = Path(path)
        if not self.path.is_file():
            raise DitasError(f"{self.path}: ONNX file not found (write it with `ditas-trt export`)")
        self.meta = read_onnx_metadata(self.path)
        if self.meta.get("kind") == "plugin":
            raise DitasError(f"{self.path}: the plugin graph runs only in TensorRT; export --kind qdq for onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 (onnxruntime raises its own exception types)
            raise DitasError(f"{self.path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None

    def __call__(self, x, t, y):
        import torch

        feeds = {"x": x.detach().float().cpu().numpy(), "t": t.detach().float().cpu().numpy(),
                 "y": y.detach().cpu().numpy().astype("int32")}
        out = self.session.run(["out"], feeds)[0]
        return torch.from_numpy(out).to(x.device)


def onnx_denoiser(path: Union[str, Path], threads: int = 0):
    from ditas_trt.backends import Denoiser
    from ditas_trt.models.dit import DiTConfig

    runner = OnnxRunner(path, threads)
    if "dit_config" not in runner.meta:
        raise DitasError(f"{path}: no ditas_trt metadata (not written by `ditas-trt export`)")
    return Denoiser(forward=runner, config=DiTConfig(**runner.meta["dit_config"]), name=f"onnx:{Path(path).stem}")

"""Run a built plan from torch: sidecar checks, torch CUDA tensors bound as I/O, one CUDA graph per batch size.

    runner = EngineRunner("engines/digits_w4a8.plan")     # refuses another GPU / TensorRT with one clear line
    out = runner(x, t, y)                                # like DiT.forward; x (B, C, H, W) CUDA, t (B,), y (B,)

Before anything touches the GPU the sidecar is checked against the machine: TensorRT flavour and exact version,
the GPU's compute capability against the plan's targets, the plugin library (embedded, or the same file by
sha256). Each batch size gets static I/O buffers and, after two warm-up runs, a captured CUDA graph that later
calls replay (``cuda_graphs=False`` runs ``execute_async_v3`` each time instead).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Union

from ditas_trt.engine import metadata as md
from ditas_trt.errors import DitasError

INPUTS = ("x", "t", "y")
OUTPUT = "out"


def _torch_dtype(trt_module, dtype):
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "INT8": torch.int8, "BOOL": torch.bool}
    name = str(dtype).rsplit(".", 1)[-1].upper()
    if name not in table:
        raise DitasError(f"engine I/O type {dtype} is not supported by the runtime")
    return table[name]


class EngineRunner:
    """A deserialized plan with an execution context; callable like ``DiT.forward``."""

    def __init__(self, plan: Union[str, Path], *, plugin_lib: Optional[Union[str, Path]] = None, device: str = "cuda",
                 cuda_graphs: bool = True, verbose: bool = False):
        import torch

        from ditas_trt.engine.builder import load_plugin_library
        from ditas_trt.engine.tensorrt import import_tensorrt, make_logger

        self.plan = Path(plan)
        self.meta = md.read_engine_sidecar(self.plan)
        if not torch.cuda.is_available():
            raise DitasError(f"{self.plan}: running a TensorRT engine needs a CUDA GPU and none is visible")
        self.device = torch.device(device)
        flavour = self.meta["tensorrt"]["flavour"]
        trt = import_tensorrt(flavour)
        md.check_compat(self.meta, trt.flavour, trt.version, torch.cuda.get_device_capability(self.device),
                        torch.cuda.get_device_name(self.device))
        self.trt = trt
        self.logger = make_logger(trt, verbose)
        runtime = trt.module.Runtime(self.logger)
        if (self.meta.get("plugin") or {}).get("embedded") and hasattr(runtime, "engine_host_code_allowed"):
            runtime.engine_host_code_allowed = True  # the plan carries the plugin .so
        lib = md.external_plugin_library(self.meta, self.plan, plugin_lib)
        if lib is not None:
            load_plugin_library(trt, lib, self.logger)
        torch.cuda.set_device(self.device)
        self.engine = runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise DitasError(f"{self.plan}: {trt.flavour} {trt.version} cannot deserialize it: {self.logger.last_error()}")
        self.context = self.engine.create_execution_context()
        self._runtime = runtime  # keep alive as long as the engine
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        missing = [n for n in (*INPUTS, OUTPUT) if n not in names]
        if missing:
            raise DitasError(f"{self.plan}: engine has I/O tensors {names}, missing {missing} (not a ditas-trt DiT engine)")
        self.dtypes = {n: _torch_dtype(trt.module, self.engine.get_tensor_dtype(n)) for n in names}
        self.cuda_graphs = cuda_graphs
        self._buffers: dict[int, dict] = {}
        self._graphs: dict[int, object] = {}
        self._shape_batch: Optional[int] = None

    @property
    def device_memory_bytes(self) -> int:
        """The activation memory TensorRT allocates for the execution context (outside torch's allocator)."""
        for name in ("device_memory_size_v2", "device_memory_size"):
            value = getattr(self.engine, name, None)
            if value is not None:
                return int(value)
        return 0

    # -----------------------------------------------------------------------------------------------------------
    def _buffers_for(self, batch: int) -> dict:
        import torch

        if batch not in self._buffers:
            bufs = {}
            for name in (*INPUTS, OUTPUT):
                shape = list(self.meta["inputs"][name]["shape"] if name in INPUTS else self.meta["outputs"][name]["shape"])
                shape[0] = batch
                bufs[name] = torch.zeros(shape, dtype=self.dtypes[name], device=self.device)
            self._buffers[batch] = bufs
        return self._buffers[batch]

    def _bind(self, batch: int) -> None:
        bufs = self._buffers_for(batch)
        for name in INPUTS:
            if not self.context.set_input_shape(name, tuple(bufs[name].shape)):
                raise DitasError(f"{self.plan}: cannot set input '{name}' to shape {tuple(bufs[name].shape)}")
        for name, tensor in bufs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        self._shape_batch = batch

    def _execute(self, stream) -> None:
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise DitasError(f"{self.plan}: enqueue failed: {self.logger.last_error()}")

    def _capture(self, batch: int):
        """Capture ``batch``'s graph (the context is bound to ``batch``); None, and graphs off, if TensorRT refuses."""
        import torch

        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # lazy initialization and TensorRT-RTX's just-in-time kernels happen here
                self._execute(stream)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=stream):
                self._execute(stream)
        except RuntimeError as exc:
            warnings.warn(f"{self.plan.name}: CUDA graph capture failed ({exc}); running without graphs", stacklevel=2)
            self.cuda_graphs = False
            return None
        return graph

    def __call__(self, x, t, y):
        import torch

        batch = int(x.shape[0])
        md.check_batch(self.meta, batch)
        bufs = self._buffers_for(batch)
        if tuple(x.shape[1:]) != tuple(bufs["x"].shape[1:]):
            raise DitasError(f"{self.plan.name} takes x of shape (batch, {', '.join(map(str, bufs['x'].shape[1:]))}), "
                             f"got {tuple(x.shape)}")
        for name, value in zip(INPUTS, (x, t, y)):
            bufs[name].copy_(value.to(device=self.device, dtype=self.dtypes[name]).reshape(bufs[name].shape))
        # One context serves every batch size, so it is bound to this batch before a graph replays too (as Triton's
        # TensorRT backend does): the shapes it holds are those of the last batch bound, not of the graph.
        if self._shape_batch != batch:
            self._bind(batch)
        if self.cuda_graphs and batch not in self._graphs:
            graph = self._capture(batch)
            if graph is not None:
                self._graphs[batch] = graph
        if self.cuda_graphs:
            self._graphs[batch].replay()
        else:
            self._execute(torch.cuda.current_stream(self.device))
        return bufs[OUTPUT].clone().float()


def engine_denoiser(plan: Union[str, Path], *, device: str = "cuda", plugin_lib=None, cuda_graphs: bool = True):
    """A :class:`~ditas_trt.backends.Denoiser` running the plan (its model config comes from the sidecar)."""
    import torch

    from ditas_trt.backends import Denoiser
    from ditas_trt.models.dit import DiTConfig

    runner = EngineRunner(plan, plugin_lib=plugin_lib, device=device, cuda_graphs=cuda_graphs)
    config = DiTConfig(**runner.meta["model_config"])
    denoiser = Denoiser(forward=runner, config=config, name=f"engine:{Path(plan).stem}", device=torch.device(device))
    denoiser.engine = runner
    return denoiser

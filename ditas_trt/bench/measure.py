"""Timing, memory and device description for the benchmark: host clocks on a CPU, CUDA events on a GPU.

On a GPU, eager torch forwards can run as captured CUDA graphs (one per input shape), which removes the Python
and launch overhead the way TensorRT engines (``EngineRunner``) and ``torch.compile(mode="reduce-overhead")`` do.
"""
from __future__ import annotations

import os
import platform
import re
import time
from typing import Callable

import numpy as np
import torch


def percentiles(values_ms) -> dict:
    a = np.asarray(values_ms, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "mean": float(a.mean()),
            "n": int(a.size)}


class Timer:
    """Milliseconds of ``fn()``: CUDA events around it on a GPU (device time), ``perf_counter`` on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.clock = "cuda events" if self.cuda else "time.perf_counter"

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1000.0


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the peak resident set size (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _status_kb(field: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def current_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return _status_kb("VmRSS") / 1024


def peak_memory_mb(device: torch.device) -> float:
    """Peak since :func:`reset_peak_memory`: CUDA allocator peak on a GPU, the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _status_kb("VmHWM") / 1024


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> dict:
    info = {"type": device.type, "torch": torch.__version__, "python": platform.python_version(),
            "cpu": cpu_name(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), compute_capability=f"{props.major}.{props.minor}",
                    memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        info["name"] = f"CPU: {info['cpu']} ({info['cpu_cores']} cores), no GPU"
    return info


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


class CudaGraphForward:
    """``forward(x, t, y)`` replayed from a CUDA graph captured per input shape (static buffers, output cloned)."""

    def __init__(self, forward: Callable):
        self.forward = forward
        self.graphs: dict = {}

    def __call__(self, x, t, y):
        key = (tuple(x.shape), x.dtype, t.dtype, y.dtype)
        if key not in self.graphs:
            static = [x.clone(), t.clone(), y.clone()]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self.forward(*static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.forward(*static)
            self.graphs[key] = (graph, static, out)
        graph, static, out = self.graphs[key]
        for buffer, value in zip(static, (x, t, y)):
            buffer.copy_(value)
        graph.replay()
        return out.clone()

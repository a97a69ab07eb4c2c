"""Throughput and latency benchmark of the denoiser variants, bare and behind Triton (``ditas-trt bench``).

:mod:`.variants` builds each variant (torch FP32/FP16/compile, onnxruntime Q/DQ, TensorRT engines, the W8A8 /
W4A8 / W4A8+LoRA torch ops) or says why it cannot run here; :mod:`.runner` measures them; :mod:`.report` writes
JSON, markdown and PNG plots; :mod:`.measure` holds the clocks (CUDA events on a GPU) and memory probes.
"""
from ditas_trt.bench.runner import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]

"""Triton Inference Server deployment: model-repository generator, Python-backend models, server launcher, clients.

=============================  =================================================================================
module                         what it does
=============================  =================================================================================
:mod:`.repository`             ``ditas-trt triton-repo``: writes ``denoiser`` (TensorRT plan or Python backend) and
                               ``sampler`` (Python backend, BLS loop with classifier-free guidance) + launch files
:mod:`.templates`              the text of the generated ``model.py`` stubs, ``launch.sh`` and ``README.md``
:mod:`.python_models`          the ``TritonPythonModel`` classes that run inside Triton's Python-backend stub
:mod:`.server`                 finds ``tritonserver`` (the one in ``nvidia-pytriton`` works on a CPU), prepares its
                               Python backend, starts/stops it on loopback ports
:mod:`.client`                 tritonclient helpers (HTTP and gRPC) and the bounded load generator
=============================  =================================================================================

The I/O contract shared by every denoiser variant (so the sampler never cares which one it talks to):
inputs ``x`` FP32 [C, H, W], ``t`` FP32 [1] (per-sample timestep, so requests at different steps share a batch),
``y`` INT32 [1] (class label; ``num_classes`` = the null label of classifier-free guidance); output ``out`` FP32
[C_out, H, W]; the batch dimension is Triton's (``max_batch_size`` > 0, dynamic batching).
"""
from ditas_trt.serve.repository import DENOISER, SAMPLER, RepoOptions, write_repository

__all__ = ["DENOISER", "SAMPLER", "RepoOptions", "write_repository"]

"""Write a Triton model repository: a dynamically batched `denoiser` and a BLS `sampler` (DDPM/DDIM + CFG).

The denoiser is a `tensorrt_plan` model for an enterprise-TensorRT engine (plugin library copied into
OUT/plugins/ and loaded with --backend-config=tensorrt,plugins=... by OUT/launch.sh), or a Python-backend model
over the quantized torch model, the FP checkpoint, an onnxruntime graph or a TensorRT-RTX plan. Every variant
has the same I/O (x, per-sample t, y -> out), so requests at different denoising steps share a batch.

Examples:
  ditas-trt triton-repo --quantized calib/digits --out model_repo          # CPU: W4A8 torch ops
  ditas-trt triton-repo --engine engines/xl_w4a8.plan --out model_repo     # GPU: Triton's TensorRT backend
  ditas-trt triton-repo --checkpoint embedded --out model_repo --sampler-instances 8
  ditas-trt serve --repo model_repo
"""
from __future__ import annotations


def add_arguments(parser):
    from ditas_trt.serve.repository import BACKENDS

    src = parser.add_argument_group("denoiser source (exactly one)")
    src.add_argument("--engine", default=None, metavar="PLAN", help="TensorRT plan written by `ditas-trt build`")
    src.add_argument("--quantized", default=None, metavar="DIR", help="quantized model folder (`ditas-trt quantize`)")
    src.add_argument("--checkpoint", default=None, help="FP DiT checkpoint ('embedded' = the built-in digits model)")
    src.add_argument("--onnx", default=None, metavar="ONNX", help="Q/DQ or FP graph from `ditas-trt export` (onnxruntime)")
    src.add_argument("--model", default=None, help="DiT config name when a checkpoint's cannot be inferred")
    src.add_argument("--plugin-lib", default=None, metavar="PATH", help="plugin library of an engine that does not embed it")
    parser.add_argument("--out", required=True, help="repository folder to write")
    parser.add_argument("--force", action="store_true", help="replace a repository written earlier by triton-repo")
    tune = parser.add_argument_group("serving")
    tune.add_argument("--denoiser-backend", choices=BACKENDS, default="auto",
                      help="auto: tensorrt_plan for enterprise-TensorRT engines, python otherwise")
    tune.add_argument("--max-batch", type=int, default=None,
                      help="denoiser max_batch_size in forward rows (default: the engine profile max, else 64)")
    tune.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batching queue delay (default 2000)")
    tune.add_argument("--denoiser-instances", type=int, default=1)
    tune.add_argument("--sampler-instances", type=int, default=4, help="concurrent sampling loops (default 4)")
    tune.add_argument("--sampler-max-batch", type=int, default=8, help="images one sampler execution may take (default 8)")
    tune.add_argument("--threads", type=int, default=0, help="torch/onnxruntime threads of a Python denoiser (0 = default)")
    tune.add_argument("--device", default="cpu", help="device of a Python denoiser over torch (cpu, cuda)")
    tune.add_argument("--cuda-graphs", action="store_true", help="tensorrt_plan: enable Triton's CUDA graphs")
    tune.add_argument("--max-steps", type=int, default=1000, help="largest step count a request may ask for")


def run(args):
    from ditas_trt.backends import resolve_device
    from ditas_trt.serve.repository import RepoOptions, write_repository

    resolve_device(args.device, must_be_visible=False)  # the repository may be served on another host
    opts = RepoOptions(out=args.out, engine=args.engine, quantized=args.quantized, checkpoint=args.checkpoint,
                       onnx=args.onnx, model=args.model, plugin_lib=args.plugin_lib,
                       denoiser_backend=args.denoiser_backend, max_batch=args.max_batch,
                       queue_delay_us=args.queue_delay_us, denoiser_instances=args.denoiser_instances,
                       sampler_instances=args.sampler_instances, sampler_max_batch=args.sampler_max_batch,
                       threads=args.threads, device=args.device, cuda_graphs=args.cuda_graphs,
                       max_steps=args.max_steps, force=args.force)
    out, side = write_repository(opts)
    for note in side["notes"]:
        print(f"note: {note}")
    print(f"wrote {out}: denoiser ({side['denoiser_backend']}, {side['source']['kind']}, max batch {side['max_batch']}) "
          f"+ sampler (BLS); start it with `ditas-trt serve --repo {out}` or `bash {out}/launch.sh`")
    return 0

"""Benchmark denoiser variants: images/s by batch, p50/p90 per step and per image, peak memory, weights size.

Variants: torch FP32/FP16 eager, torch.compile, onnxruntime Q/DQ, TensorRT FP16 and W4A8+LoRA engines, and the
W8A8 / W4A8 / W4A8+LoRA torch ops (CPU: exact reference; GPU: CUDA kernels); what cannot run on this machine is
listed as n/a with the reason. On a GPU: CUDA graphs and CUDA-event timing. --triton adds a concurrency sweep with
the tritonclient load generator (a running server's URL, or 'auto' to start pytriton's server on loopback).
Writes OUT/NAME.json, NAME.md and NAME_*.png (default name: model and device).

Examples:
  ditas-trt bench --steps 10 --triton auto                               # embedded model, this machine
  ditas-trt bench --model DiT-XL/2 --random-weights --batches 1 8 32     # DiT-XL/2-shaped speed run (GPU)
  ditas-trt bench --model DiT-XL/2 --random-weights --engine-fp16 engines/xl_fp16.plan \\
                  --engine-w4a8 engines/xl_w4a8.plan --quantized calib/xl
  ditas-trt bench --variants fp32 w4a8_lora --triton 127.0.0.1:8000
"""
from __future__ import annotations


def add_arguments(parser):
    from ditas_trt.bench.variants import VARIANTS
    from ditas_trt.cli.common import add_checkpoint_args

    add_checkpoint_args(parser, positional=False)
    parser.add_argument("--random-weights", action="store_true", help="random weights of --model's shape (speed only)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), metavar="VARIANT",
                        help=f"which variants (default all: {' '.join(VARIANTS)})")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="images per batch (default 1 8 32)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps of the timed loop (default 50)")
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm")
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    rep = parser.add_argument_group("repetitions")
    rep.add_argument("--warmup", type=int, default=3, help="untimed forwards before timing steps (default 3)")
    rep.add_argument("--reps", type=int, default=10, help="timed forwards (default 10)")
    rep.add_argument("--loop-warmup", type=int, default=1, help="untimed sampling loops (default 1)")
    rep.add_argument("--loop-reps", type=int, default=3, help="timed sampling loops (default 3)")
    rep.add_argument("--time-limit", type=float, default=1800.0, help="seconds for the variant sweep (default 1800)")
    dev = parser.add_argument_group("device and inputs")
    dev.add_argument("--device", default="auto", help="auto (cuda if visible), cpu, cuda, cuda:1")
    dev.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", help="GPU: run eager launches")
    dev.add_argument("--threads", type=int, default=0, help="torch / onnxruntime CPU threads (0 = default)")
    dev.add_argument("--engine-fp16", default=None, metavar="PLAN", help="TensorRT FP16 plan of the same model")
    dev.add_argument("--engine-w4a8", default=None, metavar="PLAN", help="TensorRT W4A8+LoRA plan (plugin)")
    dev.add_argument("--onnx", default=None, metavar="ONNX", help="Q/DQ graph for onnxruntime (default: exported now)")
    dev.add_argument("--quantized", default=None, metavar="DIR", help="a quantized folder (ditas-trt quantize)")
    tri = parser.add_argument_group("Triton")
    tri.add_argument("--triton", default=None, metavar="URL|auto", help="sweep concurrency against a server")
    tri.add_argument("--triton-protocol", choices=("http", "grpc"), default="http")
    tri.add_argument("--triton-concurrency", type=int, nargs="+", default=[1, 8, 32])
    tri.add_argument("--triton-requests", type=int, default=4, help="requests per client per level (default 4)")
    tri.add_argument("--triton-steps", type=int, default=None, help="steps per request (default --steps)")
    tri.add_argument("--triton-source", choices=("fp32", "quantized"), default="fp32",
                     help="what --triton auto serves (default the FP32 checkpoint)")
    parser.add_argument("--out", default="bench/results", help="output folder (default bench/results)")
    parser.add_argument("--name", default=None, help="file stem (default dit_<model>_<device>)")
    parser.add_argument("--seed", type=int, default=0)


def run(args):
    from ditas_trt.bench import BenchConfig, run_bench

    cfg = BenchConfig(checkpoint=args.checkpoint, model=args.model, random_weights=args.random_weights,
                      variants=args.variants, batches=args.batches, steps=args.steps, sampler=args.sampler,
                      cfg_scale=args.cfg_scale, warmup=args.warmup, reps=args.reps, loop_warmup=args.loop_warmup,
                      loop_reps=args.loop_reps, device=args.device, cuda_graphs=args.cuda_graphs, threads=args.threads,
                      engine_fp16=args.engine_fp16, engine_w4a8=args.engine_w4a8, onnx=args.onnx,
                      quantized=args.quantized, time_limit_s=args.time_limit, triton=args.triton,
                      triton_protocol=args.triton_protocol, triton_concurrency=args.triton_concurrency,
                      triton_requests=args.triton_requests, triton_steps=args.triton_steps,
                      triton_source=args.triton_source, name=args.name, out=args.out, seed=args.seed)
    _, paths = run_bench(cfg, progress=lambda line: print(line, flush=True))
    print(f"wrote {paths['markdown']}, {paths['json']} and {len(paths['plots'])} plots")
    return 0

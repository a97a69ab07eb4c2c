"""Start Triton Inference Server on a repository written by `ditas-trt triton-repo` (loopback by default).

Uses the tritonserver inside nvidia-pytriton (runs on a CPU; Python backend only) unless --tritonserver or
$TRITONSERVER names another. Prepares pytriton's Python backend (copies the stub for this Python into the wheel's
own backends/python/) and tells the stub where ditas_trt, torch and numpy live (DITAS_TRT_PYTHONPATH). Runs in
the foreground until Ctrl-C; --check starts, sends one request, and stops.

Examples:
  ditas-trt serve --repo model_repo
  ditas-trt serve --repo model_repo --http-port 8000 --grpc-port 8001 --metrics-port 8002
  ditas-trt serve --repo model_repo --check
"""
from __future__ import annotations


def add_arguments(parser):
    parser.add_argument("--repo", required=True, help="model repository folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics port (default 0: off)")
    parser.add_argument("--tritonserver", default=None, metavar="PATH", help="tritonserver binary to run")
    parser.add_argument("--log", default=None, help="server log file (default: a temporary file)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the models to load")
    parser.add_argument("--check", action="store_true", help="start, run one sampler request, stop")


def run(args):
    import time

    from ditas_trt.errors import DitasError
    from ditas_trt.serve.server import TritonServer

    for name in ("http_port", "grpc_port", "metrics_port"):
        port = getattr(args, name)
        if not 0 <= port <= 65535 or (port == 0 and name != "metrics_port"):
            raise DitasError(f"--{name.replace('_', '-')} must be a port number (1-65535), got {port}")
    ports = [p for p in (args.http_port, args.grpc_port, args.metrics_port) if p]
    if len(set(ports)) != len(ports):
        raise DitasError(f"--http-port, --grpc-port and --metrics-port must differ, got {' '.join(map(str, ports))}")
    server = TritonServer(args.repo, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port or None, tritonserver=args.tritonserver, log_path=args.log)
    print(f"starting {server.install.binary} (log: {server.log_path})", flush=True)
    server.start(timeout=args.timeout)
    try:
        print(f"Triton is serving {server.repo}\n  HTTP  http://{server.http_url}  (tritonclient.http, "
              f"curl http://{server.http_url}/v2/models/sampler/config)\n  gRPC  {server.grpc_url}"
              + (f"\n  metrics http://{args.host}:{args.metrics_port}/metrics" if args.metrics_port else ""), flush=True)
        if args.check:
            from ditas_trt.serve.client import SamplerClient

            client = SamplerClient(server.http_url, "http")
            try:
                start = time.perf_counter()
                out = client.generate([0], [0], steps=2, cfg_scale=1.5)
                print(f"check: one 2-step request -> latent {out['latent'].shape} in "
                      f"{(time.perf_counter() - start) * 1000:.0f} ms")
            finally:
                client.close()
            return 0
        print("Ctrl-C stops it.", flush=True)
        while server.process.poll() is None:
            time.sleep(1.0)
        raise DitasError(f"tritonserver exited with code {server.process.returncode}: {server.log_tail()}")
    finally:
        server.stop()

"""tritonclient helpers for the generated repository (HTTP or gRPC) and a bounded load generator.

    client = SamplerClient("127.0.0.1:8000", "http")
    out = client.generate([3, 7], seeds=[0, 1], steps=50, cfg_scale=1.5)   # {"latent": (2, C, H, W), "image": ...}
    report = run_load("127.0.0.1:8000", "http", concurrency=16, requests_per_client=4, steps=10)

perf_analyzer is the usual tool but its wheels need a newer glibc than the dev machine has; this load generator
(one client per thread, a fixed number of requests each, a wall-clock limit) reports the same quantities:
images/s, latency percentiles, and the server's own view (queue and compute time, the denoiser's batch sizes).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ditas_trt.errors import DitasError

PROTOCOLS = ("http", "grpc")


def client_module(protocol: str):
    if protocol not in PROTOCOLS:
        raise DitasError(f"unknown protocol {protocol!r}; choose http or grpc")
    try:
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
    except ImportError as exc:
        raise DitasError(f"tritonclient[{protocol}] is not installed ({exc}); pip install 'ditas-trt[serve]'") from None
    return module


def _column(module, name: str, values, dtype, triton_type: str):
    array = np.asarray(values, dtype=dtype).reshape(-1, 1)
    tensor = module.InferInput(name, list(array.shape), triton_type)
    tensor.set_data_from_numpy(array)
    return tensor


def sampler_inputs(module, labels, seeds, steps, cfg_scale, sampler: Optional[str] = None, eta: Optional[float] = None):
    """InferInputs of one sampler request: one row per image, scalars repeated on every row."""
    n = len(labels)
    if len(seeds) != n:
        raise DitasError(f"{len(seeds)} seeds for {n} labels")
    inputs = [_column(module, "class_label", labels, np.int32, "INT32"),
              _column(module, "seed", seeds, np.int64, "INT64"),
              _column(module, "steps", [steps] * n, np.int32, "INT32"),
              _column(module, "cfg_scale", [cfg_scale] * n, np.float32, "FP32")]
    if sampler is not None:
        inputs.append(_column(module, "sampler", [sampler.encode()] * n, object, "BYTES"))
    if eta is not None:
        inputs.append(_column(module, "eta", [eta] * n, np.float32, "FP32"))
    return inputs


def _int(value) -> int:
    return int(value or 0)


def normalize_statistics(raw: dict, model: str) -> dict:
    """One model's statistics from the HTTP or gRPC JSON (field names and int64-as-string differ)."""
    stats = [s for s in raw.get("model_stats", []) if s.get("name") == model]
    if not stats:
        return {"inference_count": 0, "execution_count": 0, "batch_stats": {}, "compute_infer_ns": 0, "queue_ns": 0,
                "success_count": 0}
    s = stats[0]
    inf = s.get("inference_stats", {})
    batches = {}
    for b in s.get("batch_stats", []):
        batches[_int(b.get("batch_size"))] = _int(b.get("compute_infer", {}).get("count"))
    return {
        "inference_count": _int(s.get("inference_count")),
        "execution_count": _int(s.get("execution_count")),
        "batch_stats": batches,
        "success_count": _int(inf.get("success", {}).get("count")),
        "compute_infer_ns": _int(inf.get("compute_infer", {}).get("ns")),
        "queue_ns": _int(inf.get("queue", {}).get("ns")),
    }


def statistics_delta(before: dict, after: dict) -> dict:
    out = {k: after[k] - before.get(k, 0) for k in after if k != "batch_stats"}
    sizes = set(after["batch_stats"]) | set(before.get("batch_stats", {}))
    delta = {b: after["batch_stats"].get(b, 0) - before.get("batch_stats", {}).get(b, 0) for b in sorted(sizes)}
    out["batch_stats"] = {b: n for b, n in delta.items() if n}
    return out


class SamplerClient:
    """One connection to the server (tritonclient objects are not shared between threads)."""

    def __init__(self, url: str, protocol: str = "http", model: str = "sampler", network_timeout: float = 600.0):
        if "://" in url:  # tritonclient refuses it from a half-built client
            raise DitasError(f"{url}: give the Triton address as host:port, without a scheme")
        self.module = client_module(protocol)
        self.protocol = protocol
        self.model = model
        try:
            if protocol == "http":
                self.client = self.module.InferenceServerClient(url, connection_timeout=network_timeout,
                                                                network_timeout=network_timeout)
            else:
                self.client = self.module.InferenceServerClient(url)
        except Exception as exc:  # noqa: BLE001 - tritonclient's own exception types
            raise DitasError(f"{url}: not a Triton {protocol} address: {exc}") from None
        self.timeout = network_timeout

    def infer(self, inputs, outputs: Sequence[str] = ("latent",), model: Optional[str] = None):
        requested = [self.module.InferRequestedOutput(name) for name in outputs]
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        return self.client.infer(model or self.model, inputs, outputs=requested, **kwargs)

    def generate(self, labels, seeds, steps: int = 50, cfg_scale: float = 1.5, sampler: Optional[str] = None,
                 eta: Optional[float] = None, outputs: Sequence[str] = ("latent",)) -> dict:
        result = self.infer(sampler_inputs(self.module, labels, seeds, steps, cfg_scale, sampler, eta), outputs)
        return {name: result.as_numpy(name) for name in outputs}

    def statistics(self, model: str) -> dict:
        return normalize_statistics(self.client.get_inference_statistics(model, as_json=True) if self.protocol == "grpc"
                                    else self.client.get_inference_statistics(model), model)

    def close(self) -> None:
        self.client.close()


def _statistics(client: SamplerClient, url: str, models: Sequence[str]) -> dict:
    try:
        return {m: client.statistics(m) for m in models}
    except Exception as exc:  # noqa: BLE001 - connection refused, unknown model, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DitasError(f"{url}: no Triton server serving {' and '.join(map(repr, models))} answers over "
                         f"{client.protocol} ({first})") from None


def check_server(url: str, protocol: str = "http", models: Sequence[str] = ("sampler", "denoiser")) -> None:
    """A one-line DitasError unless a Triton server at ``url`` serves ``models``."""
    client = SamplerClient(url, protocol)
    try:
        _statistics(client, url, models)
    finally:
        client.close()


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    ok: int
    failed: int
    images: int
    seconds: float
    latencies_ms: list
    errors: list

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        return {"concurrency": self.concurrency, "requests": self.requests, "ok": self.ok, "failed": self.failed,
                "images": self.images, "seconds": round(self.seconds, 3),
                "images_per_s": self.images / self.seconds if self.seconds > 0 else 0.0,
                "latency_ms": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                               "p99": float(np.percentile(lat, 99)), "mean": float(lat.mean())},
                "errors": self.errors[:5]}


def run_load(url: str, protocol: str = "http", *, concurrency: int = 8, requests_per_client: int = 4,
             steps: int = 10, cfg_scale: float = 1.5, sampler: Optional[str] = None, images_per_request: int = 1,
             num_classes: int = 10, seed: int = 0, time_limit_s: float = 600.0, model: str = "sampler",
             denoiser: str = "denoiser") -> dict:
    """``concurrency`` threads, each sending ``requests_per_client`` requests back to back (stopping early at
    ``time_limit_s``); returns throughput, latency percentiles and the server-side statistics of the run."""
    if concurrency < 1 or requests_per_client < 1 or images_per_request < 1:
        raise DitasError("concurrency, requests per client and images per request must be >= 1")
    lock = threading.Lock()
    latencies, errors = [], []
    counts = {"ok": 0, "failed": 0, "images": 0, "sent": 0}
    deadline = time.monotonic() + time_limit_s
    released = []  # when every client is connected: the clock starts there, not at thread start
    barrier = threading.Barrier(concurrency, action=lambda: released.append(time.perf_counter()))

    def worker(index: int) -> None:
        try:
            client = SamplerClient(url, protocol, model)
        except Exception as exc:  # noqa: BLE001 - counted as a failure of every request of this client
            with lock:
                counts["failed"] += requests_per_client
                counts["sent"] += requests_per_client
                errors.append(f"connect: {exc}")
            barrier.abort()
            return
        try:
            barrier.wait(timeout=60)
        except threading.BrokenBarrierError:
            pass
        try:
            for r in range(requests_per_client):
                if time.monotonic() > deadline:
                    break
                base = seed + (index * requests_per_client + r) * images_per_request
                seeds = list(range(base, base + images_per_request))
                labels = [s % num_classes for s in seeds]
                start = time.perf_counter()
                try:
                    client.generate(labels, seeds, steps, cfg_scale, sampler)
                except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                    with lock:
                        counts["failed"] += 1
                        counts["sent"] += 1
                        errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                    continue
                elapsed = (time.perf_counter() - start) * 1000
                with lock:
                    counts["ok"] += 1
                    counts["sent"] += 1
                    counts["images"] += images_per_request
                    latencies.append(elapsed)
        finally:
            client.close()

    stats_client = SamplerClient(url, protocol, model)
    try:
        before = _statistics(stats_client, url, (model, denoiser))
        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, deadline - time.monotonic() + 120))
        seconds = time.perf_counter() - (released[0] if released else start)
        after = {m: stats_client.statistics(m) for m in (model, denoiser)}
    finally:
        stats_client.close()
    result = LoadResult(concurrency, counts["sent"], counts["ok"], counts["failed"], counts["images"], seconds,
                        latencies, errors).summary()
    server = {}
    for m in (model, denoiser):
        d = statistics_delta(before[m], after[m])
        executions = max(d["execution_count"], 1)
        server[m] = {"inference_count": d["inference_count"], "execution_count": d["execution_count"],
                     "mean_batch": d["inference_count"] / executions, "batch_stats": d["batch_stats"],
                     # Triton accumulates queue and compute time per request, not per batch
                     "compute_ms_per_request": d["compute_infer_ns"] / max(d["success_count"], 1) / 1e6,
                     "queue_ms_per_request": d["queue_ns"] / max(d["success_count"], 1) / 1e6}
    result["server"] = server
    result.update({"protocol": protocol, "steps": steps, "cfg_scale": cfg_scale, "images_per_request": images_per_request,
                   "requests_per_client": requests_per_client})
    return result

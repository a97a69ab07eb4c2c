"""Start and stop ``tritonserver`` on loopback ports; prepare the Python backend of nvidia-pytriton's build.

nvidia-pytriton ships a full Triton server (``pytriton/tritonserver/bin/tritonserver``) whose Python backend runs
on a CPU. Two things make it serve our repositories:

1. its ``backends/python/`` folder lacks the stub process binary; the one for this Python version is copied there
   from ``python_backend_stubs/<major.minor>/`` (inside the wheel's own folder: a copy elsewhere breaks the stub's
   rpath to the bundled CUDA runtime);
2. the stub ignores the server's PYTHONPATH, so ``DITAS_TRT_PYTHONPATH`` tells the generated ``model.py`` files
   where ditas_trt, torch and numpy (< 2) live.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ditas_trt.errors import DitasError

LOOPBACK = "127.0.0.1"
STUB = "triton_python_backend_stub"
EXIT_TIMEOUT_S = 10  # how long a stopping server waits for open client connections


@dataclass
class TritonInstall:
    binary: Path
    backend_dir: Optional[Path]  # None: the server's default (/opt/tritonserver/backends)
    pytriton: Optional[Path] = None

    @property
    def backends(self) -> set[str]:
        root = self.backend_dir or Path("/opt/tritonserver/backends")
        return {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()


def find_tritonserver(explicit: Optional[str] = None) -> TritonInstall:
    """``explicit`` or $TRITONSERVER, else the server inside nvidia-pytriton, else ``tritonserver`` on PATH."""
    path = explicit or os.environ.get("TRITONSERVER")
    if path:
        binary = Path(path)
        if not binary.is_file():
            raise DitasError(f"{binary}: tritonserver binary not found")
        backends = binary.resolve().parent.parent / "backends"
        return TritonInstall(binary, backends if backends.is_dir() else None)
    try:
        import pytriton
    except ImportError:
        pytriton = None
    if pytriton is not None:
        root = Path(pytriton.__file__).parent / "tritonserver"
        binary = root / "bin" / "tritonserver"
        if binary.is_file():
            return TritonInstall(binary, root / "backends", pytriton=root)
    found = shutil.which("tritonserver")
    if found:
        return find_tritonserver(found)
    raise DitasError("no tritonserver found: pip install 'ditas-trt[serve]' (nvidia-pytriton ships one that runs on "
                     "a CPU), or pass --tritonserver PATH")


def prepare_python_backend(install: TritonInstall) -> None:
    """Copy the Python-stub binary for this Python into pytriton's backends/python/ (once; atomic)."""
    if install.pytriton is None:
        return
    target = install.pytriton / "backends" / "python" / STUB
    if target.is_file():
        return
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    source = install.pytriton / "python_backend_stubs" / version / STUB
    if not source.is_file():
        raise DitasError(f"nvidia-pytriton has no Python-backend stub for Python {version} ({source} missing)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{STUB}.", dir=target.parent)
        os.close(fd)
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except OSError as exc:
        raise DitasError(f"cannot install the Python-backend stub into {target.parent} ({exc}); run: "
                         f"cp {source} {target}") from None


def stub_pythonpath() -> str:
    """DITAS_TRT_PYTHONPATH for the stub: this checkout of ditas_trt and this interpreter's site-packages."""
    from ditas_trt.serve.templates import python_paths

    return os.pathsep.join(python_paths())


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct free ports (their sockets are open together, so no port comes back twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]


def _ready(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback health check
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


class TritonServer:
    """A ``tritonserver`` child process on ``host`` (loopback by default); a context manager that always stops it.

    Ports left as ``None`` are picked free; ``metrics_port=None`` disables metrics.
    """

    def __init__(self, repo, *, host: str = LOOPBACK, http_port: Optional[int] = None, grpc_port: Optional[int] = None,
                 metrics_port: Optional[int] = None, tritonserver: Optional[str] = None, log_path=None,
                 extra_args: Sequence[str] = (), log_verbose: int = 0):
        from ditas_trt.serve.repository import read_repo_sidecar

        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise DitasError(f"{repo}: model repository not found (write it with `ditas-trt triton-repo`)")
        self.sidecar = read_repo_sidecar(self.repo)
        self.install = find_tritonserver(tritonserver)
        self.host = host
        picked = [p for p in free_ports(3, host) if p not in (http_port, grpc_port)]
        self.http_port = http_port or picked.pop()
        self.grpc_port = grpc_port or picked.pop()
        self.metrics_port = metrics_port
        self.extra_args = list(extra_args)
        self.log_verbose = log_verbose
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="tritonserver.", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.process: Optional[subprocess.Popen] = None
        self._check_backends()

    def _check_backends(self) -> None:
        backend = self.sidecar.get("denoiser_backend")
        available = self.install.backends
        if backend == "tensorrt_plan" and available and "tensorrt" not in available:
            raise DitasError(f"{self.install.binary} has no TensorRT backend (it has {', '.join(sorted(available))}); "
                             "serve this repository with the NGC tritonserver image (bash launch.sh there), or "
                             "regenerate it with --denoiser-backend python")

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        cmd = [str(self.install.binary), f"--model-repository={self.repo}",
               f"--http-address={self.host}", f"--http-port={self.http_port}",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
               f"--exit-timeout-secs={EXIT_TIMEOUT_S}"]
        if self.metrics_port:
            cmd += [f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]
        else:
            cmd.append("--allow-metrics=false")
        if self.install.backend_dir is not None:
            cmd.append(f"--backend-directory={self.install.backend_dir}")
        plugin = self.sidecar.get("plugin_lib")
        if plugin and self.sidecar.get("denoiser_backend") == "tensorrt_plan":
            cmd.append(f"--backend-config=tensorrt,plugins={self.repo / plugin}")
        if self.log_verbose:
            cmd.append(f"--log-verbose={self.log_verbose}")
        return cmd + self.extra_args

    def environment(self) -> dict:
        env = dict(os.environ)
        env["DITAS_TRT_PYTHONPATH"] = os.pathsep.join(p for p in (stub_pythonpath(), env.get("DITAS_TRT_PYTHONPATH")) if p)
        return env

    def start(self, timeout: float = 300.0) -> "TritonServer":
        """Start the server and wait until its models are ready; on any failure, Ctrl-C included, it is stopped
        (it runs in its own session, so nothing else would stop it)."""
        prepare_python_backend(self.install)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            try:
                self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                                env=self.environment(), start_new_session=True)
            except OSError as exc:
                raise DitasError(f"cannot run {self.install.binary}: {exc}") from None
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DitasError(f"tritonserver exited with code {self.process.returncode} while starting: "
                                 f"{self.log_tail()}")
            if _ready(url):
                return
            time.sleep(0.5)
        raise DitasError(f"tritonserver not ready after {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        errors = [line for line in text if line[:1] in "EW" or "rror" in line]
        return " | ".join((errors or text)[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the server's own process group (it and its backend stubs), SIGKILL if it does not exit."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if proc is not None:
            try:  # stubs left behind in the group (the server normally reaps them)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

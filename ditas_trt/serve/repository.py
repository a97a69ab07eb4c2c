"""Write a Triton model repository for one DiT: ``denoiser`` (dynamically batched) + ``sampler`` (BLS loop).

Layout written by :func:`write_repository`::

    OUT/
      denoiser/config.pbtxt       tensorrt_plan (enterprise TensorRT engine) or python (torch / onnxruntime / TRT-RTX)
      denoiser/1/model.plan       engine  |  model.py + the weights (checkpoint, quantized folder or .onnx)
      sampler/config.pbtxt        python backend; inputs class_label, seed, steps, cfg_scale (+ sampler, eta)
      sampler/1/model.py          DDPM/DDIM with classifier-free guidance (ditas_trt.diffusion), one BLS call a step
      plugins/*.so                the TensorRT plugin library when the plan does not embed it
      launch.sh, README.md        how to start it (plugin loading included), I/O tables, a client example
      repo.json                   sidecar: source, hashes, DiT config, options, versions

The wording of model.py, launch.sh and README.md lives in :mod:`.templates`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from ditas_trt.artifacts import environment_versions, file_sha256, write_json_atomic
from ditas_trt.diffusion.sampling import TRAINING_STEPS
from ditas_trt.errors import DitasError

DENOISER = "denoiser"
SAMPLER = "sampler"
REPO_SIDECAR = "repo.json"
BACKENDS = ("auto", "tensorrt_plan", "python")
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int32": "TYPE_INT32",
                "int64": "TYPE_INT64"}
PIXEL_CHANNELS = (1, 3)  # pixel-space DiTs also get a uint8 `image` output; latent DiTs return latents only


@dataclass
class RepoOptions:
    """What ``ditas-trt triton-repo`` writes; exactly one of engine / quantized / checkpoint / onnx."""

    out: str = "model_repo"
    engine: Optional[str] = None
    quantized: Optional[str] = None
    checkpoint: Optional[str] = None
    onnx: Optional[str] = None
    model: Optional[str] = None  # DiT config name for a checkpoint whose config cannot be inferred
    plugin_lib: Optional[str] = None
    denoiser_backend: str = "auto"
    max_batch: Optional[int] = None  # denoiser max_batch_size (forward rows); engine: its profile max
    queue_delay_us: int = 2000
    denoiser_instances: int = 1
    sampler_instances: int = 4
    sampler_max_batch: int = 8
    threads: int = 0  # torch / onnxruntime threads of a Python denoiser (0 = library default)
    device: str = "cpu"  # Python denoiser over torch: cpu or cuda
    cuda_graphs: bool = False  # tensorrt_plan: optimization { cuda { graphs: true } }
    max_steps: int = 1000
    force: bool = False

    def validate(self) -> "RepoOptions":
        sources = [k for k in ("engine", "quantized", "checkpoint", "onnx") if getattr(self, k) is not None]
        if len(sources) != 1:
            raise DitasError("give exactly one of --engine, --quantized, --checkpoint, --onnx"
                             + (f" (got {', '.join('--' + s for s in sources)})" if sources else ""))
        if self.denoiser_backend not in BACKENDS:
            raise DitasError(f"unknown denoiser backend {self.denoiser_backend!r}; choose from {', '.join(BACKENDS)}")
        if self.denoiser_backend == "tensorrt_plan" and self.engine is None:
            raise DitasError("--denoiser-backend tensorrt_plan needs --engine")
        for name in ("denoiser_instances", "sampler_instances", "sampler_max_batch"):
            if getattr(self, name) < 1:
                raise DitasError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_batch is not None and self.max_batch < 2:
            raise DitasError(f"--max-batch must be >= 2 (one guided sample is 2 rows), got {self.max_batch}")
        if not 0 <= self.queue_delay_us <= 10_000_000:
            raise DitasError(f"--queue-delay-us must be in [0, 1e7], got {self.queue_delay_us}")
        if not 2 <= self.max_steps <= TRAINING_STEPS:  # a request needs at least 2 steps (SamplingOptions)
            raise DitasError(f"--max-steps must be in [2, {TRAINING_STEPS}], got {self.max_steps}")
        if self.threads < 0:
            raise DitasError(f"--threads must be >= 0, got {self.threads}")
        return self

    @property
    def source_kind(self) -> str:
        return next(k for k in ("engine", "quantized", "checkpoint", "onnx") if getattr(self, k) is not None)


# ---------------------------------------------------------------------------------------------------------------
# Sources: what the denoiser runs, its DiT config and I/O types
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class DenoiserSource:
    kind: str  # engine | quantized | checkpoint | onnx
    path: Path
    backend: str  # tensorrt_plan | python
    dit_config: dict
    io_dtypes: dict  # x, t, y, out -> numpy-style dtype name
    max_batch: int
    engine_meta: Optional[dict] = None
    plugin_lib: Optional[Path] = None
    notes: tuple = ()

    @property
    def plugin_embedded(self) -> bool:
        return bool(self.engine_meta and (self.engine_meta.get("plugin") or {}).get("embedded"))


def _default_io() -> dict:
    return {"x": "float32", "t": "float32", "y": "int32", "out": "float32"}


def inspect_source(opts: RepoOptions) -> DenoiserSource:
    """Read (and check) the source without loading weights where possible."""
    kind = opts.source_kind
    if kind == "engine":
        return _engine_source(opts)
    if kind == "quantized":
        from ditas_trt.quant.packed import quantized_file, read_quantized_sidecar

        path = Path(opts.quantized)
        file = quantized_file(path)
        if not file.is_file():
            raise DitasError(f"{path}: no quantized model there (run `ditas-trt quantize` first)")
        config = read_quantized_sidecar(path)["model_config"]
    elif kind == "onnx":
        from ditas_trt.export import read_onnx_metadata

        path = Path(opts.onnx)
        if not path.is_file():
            raise DitasError(f"{path}: ONNX file not found (write it with `ditas-trt export`)")
        meta = read_onnx_metadata(path)
        if meta.get("kind") == "plugin":
            raise DitasError(f"{path}: the plugin graph runs only in TensorRT; build an engine from it or export "
                             "--kind qdq for onnxruntime")
        if "dit_config" not in meta:
            raise DitasError(f"{path}: no ditas_trt metadata (not written by `ditas-trt export`)")
        config = meta["dit_config"]
    else:
        from ditas_trt.models import load_dit
        from ditas_trt.models.embedded import resolve_checkpoint

        path = resolve_checkpoint(opts.checkpoint)
        config = load_dit(path, opts.model).config.to_dict()  # also proves the checkpoint loads
    return DenoiserSource(kind=kind, path=path, backend="python", dit_config=config, io_dtypes=_default_io(),
                          max_batch=opts.max_batch or 64)


def _engine_source(opts: RepoOptions) -> DenoiserSource:
    from ditas_trt.engine.metadata import external_plugin_library, read_engine_sidecar

    path = Path(opts.engine)
    meta = read_engine_sidecar(path)
    flavour = meta["tensorrt"]["flavour"]
    notes = []
    backend = opts.denoiser_backend
    if backend == "auto":
        backend = "tensorrt_plan" if flavour == "tensorrt" else "python"
        if flavour != "tensorrt":
            notes.append(f"{path.name} is a {flavour} plan: Triton's TensorRT backend links enterprise TensorRT and "
                         "cannot load it, so the denoiser is a Python-backend model running it (ditas_trt EngineRunner)")
    elif backend == "tensorrt_plan" and flavour != "tensorrt":
        raise DitasError(f"{path} was built with {flavour}; Triton's TensorRT backend loads enterprise TensorRT plans only "
                         "(use --denoiser-backend python, or rebuild with enterprise TensorRT)")
    io = _default_io()
    for name, spec in {**meta.get("inputs", {}), **meta.get("outputs", {})}.items():
        if name in io:
            io[name] = spec.get("dtype", io[name])
    unknown = sorted(d for d in io.values() if d not in TRITON_TYPES)
    if unknown:
        raise DitasError(f"{path}: engine I/O types {unknown} have no Triton type here")
    profile_max = int(meta["profile"]["batch"]["max"])
    max_batch = opts.max_batch or profile_max
    if max_batch > profile_max:
        raise DitasError(f"--max-batch {max_batch} exceeds the engine profile max {profile_max} "
                         "(rebuild with `ditas-trt build --batch`)")
    plugin_lib = external_plugin_library(meta, path, opts.plugin_lib)
    if not meta.get("model_config"):
        raise DitasError(f"{path}: the sidecar has no model_config (not built by `ditas-trt build`)")
    return DenoiserSource(kind="engine", path=path, backend=backend, dit_config=meta["model_config"], io_dtypes=io,
                          max_batch=max_batch, engine_meta=meta, plugin_lib=plugin_lib, notes=tuple(notes))


# ---------------------------------------------------------------------------------------------------------------
# config.pbtxt
# ---------------------------------------------------------------------------------------------------------------
def _dims(values) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def _param(key: str, value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return f'  {{ key: "{key}" value: {{ string_value: {json.dumps(text)} }} }}'


def _preferred_batches(max_batch: int) -> list[int]:
    """Powers of two from 4 to max_batch (engines are tuned for such sizes; CPU batching is size-agnostic)."""
    out, b = [], 4
    while b <= max_batch:
        out.append(b)
        b *= 2
    return out or [max_batch]


def denoiser_config(src: DenoiserSource, opts: RepoOptions) -> str:
    c = src.dit_config
    channels, size = c["in_channels"], c["input_size"]
    out_channels = channels * 2 if c.get("learn_sigma", True) else channels
    ty = {k: TRITON_TYPES[v] for k, v in src.io_dtypes.items()}
    scalar = " reshape: { shape: [ ] }" if src.backend == "tensorrt_plan" else ""
    lines = [f"# Generated by `ditas-trt triton-repo` from {src.kind} {src.path.name}; see ../README.md.",
             f'name: "{DENOISER}"']
    lines.append('platform: "tensorrt_plan"' if src.backend == "tensorrt_plan" else 'backend: "python"')
    lines += [
        f"max_batch_size: {src.max_batch}",
        "input [",
        f'  {{ name: "x" data_type: {ty["x"]} dims: {_dims([channels, size, size])} }},',
        f'  {{ name: "t" data_type: {ty["t"]} dims: [ 1 ]{scalar} }},',
        f'  {{ name: "y" data_type: {ty["y"]} dims: [ 1 ]{scalar} }}',
        "]",
        f'output [ {{ name: "out" data_type: {ty["out"]} dims: {_dims([out_channels, size, size])} }} ]',
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {opts.queue_delay_us}",
        f"  preferred_batch_size: {_dims(_preferred_batches(src.max_batch))}",
        "}",
    ]
    gpu = src.backend == "tensorrt_plan" or src.kind == "engine" or opts.device.startswith("cuda")
    lines.append(f"instance_group [ {{ count: {opts.denoiser_instances} kind: {'KIND_GPU' if gpu else 'KIND_CPU'} }} ]")
    if src.backend == "tensorrt_plan":
        if opts.cuda_graphs:
            lines.append("optimization { cuda { graphs: true } }")
    else:
        params = {"source_kind": src.kind, "source": _source_name(src), "threads": str(opts.threads),
                  "device": "cuda" if src.kind == "engine" else opts.device,
                  "model": opts.model or "", "dit_config": c}
        if src.plugin_lib is not None:
            params["plugin_lib"] = f"../../plugins/{src.plugin_lib.name}"
        lines += ["parameters ["] + [",\n".join(_param(k, v) for k, v in params.items())] + ["]"]
    return "\n".join(lines) + "\n"


def sampler_config(src: DenoiserSource, opts: RepoOptions) -> str:
    c = src.dit_config
    channels, size = c["in_channels"], c["input_size"]
    outputs = [f'  {{ name: "latent" data_type: TYPE_FP32 dims: {_dims([channels, size, size])} }}']
    if channels in PIXEL_CHANNELS:
        outputs.append(f'  {{ name: "image" data_type: TYPE_UINT8 dims: {_dims([size, size, channels])} }}')
    params = {"denoiser_model": DENOISER, "denoiser_max_batch": str(src.max_batch), "dit_config": c,
              "denoiser_io": src.io_dtypes, "max_steps": str(opts.max_steps)}
    lines = [
        "# Generated by `ditas-trt triton-repo`: DDPM/DDIM loop with classifier-free guidance, one BLS call to",
        f'# "{DENOISER}" per denoising step; see ../README.md.',
        f'name: "{SAMPLER}"',
        'backend: "python"',
        f"max_batch_size: {opts.sampler_max_batch}",
        "input [",
        '  { name: "class_label" data_type: TYPE_INT32 dims: [ 1 ] },',
        '  { name: "seed" data_type: TYPE_INT64 dims: [ 1 ] },',
        '  { name: "steps" data_type: TYPE_INT32 dims: [ 1 ] },',
        '  { name: "cfg_scale" data_type: TYPE_FP32 dims: [ 1 ] },',
        '  { name: "sampler" data_type: TYPE_STRING dims: [ 1 ] optional: true },',
        '  { name: "eta" data_type: TYPE_FP32 dims: [ 1 ] optional: true }',
        "]",
        "output [",
        ",\n".join(outputs),
        "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {opts.queue_delay_us} }}",
        f"instance_group [ {{ count: {opts.sampler_instances} kind: KIND_CPU }} ]",
        "parameters [",
        ",\n".join(_param(k, v) for k, v in params.items()),
        "]",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------
def _source_name(src: DenoiserSource) -> str:
    """The source's name inside denoiser/1/."""
    if src.kind == "engine":
        return "model.plan"
    if src.kind == "quantized":
        return "quantized"
    return src.path.name


LINK_BYTES = 256 * 2**20  # files this large are hard-linked when on the same filesystem (DiT-XL/2 checkpoints)


def _place(src: Path, dst: Path) -> None:
    """Copy; hard-link large files when possible (the source must then not be edited in place)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.stat().st_size >= LINK_BYTES:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def _copy_source(src: DenoiserSource, version_dir: Path) -> list[Path]:
    from ditas_trt.artifacts import sidecar_path

    placed = []
    name = _source_name(src)
    if src.kind == "engine":
        _place(src.path, version_dir / name)
        placed.append(version_dir / name)
        # the sidecar travels with it (EngineRunner checks it); its sha256 still matches the copied plan
        _place(sidecar_path(src.path), sidecar_path(version_dir / name))
    elif src.kind == "quantized":
        from ditas_trt.quant.packed import quantized_file

        file = quantized_file(src.path)
        for f in (file, sidecar_path(file)):
            if f.is_file():
                _place(f, version_dir / name / f.name)
        placed.append(version_dir / name / file.name)
    elif src.path.is_dir():  # a diffusers folder
        shutil.copytree(src.path, version_dir / name)
        placed.append(version_dir / name)
    else:
        for f in (src.path, sidecar_path(src.path), src.path.with_name(src.path.name + ".data")):
            if f.is_file():
                _place(f, version_dir / f.name)
        placed.append(version_dir / name)
    return placed


def write_repository(opts: RepoOptions) -> tuple[Path, dict]:
    """Write the repository described by ``opts``; returns (folder, sidecar)."""
    from ditas_trt.serve import templates

    opts.validate()
    src = inspect_source(opts)
    out = Path(opts.out)
    if out.exists():
        if not out.is_dir():
            raise DitasError(f"{out}: exists and is not a folder")
        if any(out.iterdir()):
            if not opts.force:
                raise DitasError(f"{out}: not empty (pass --force to replace a repository written by triton-repo)")
            if not (out / REPO_SIDECAR).is_file():
                raise DitasError(f"{out}: not a repository written by triton-repo (no {REPO_SIDECAR}); refusing to "
                                 "replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the repository from a server running as another user
    try:
        version = tmp / DENOISER / "1"
        version.mkdir(parents=True)
        placed = _copy_source(src, version)
        if src.backend == "python":
            (version / "model.py").write_text(templates.model_py("denoiser", "DenoiserModel"))
        if src.plugin_lib is not None:
            _place(src.plugin_lib, tmp / "plugins" / src.plugin_lib.name)
        (tmp / DENOISER / "config.pbtxt").write_text(denoiser_config(src, opts))
        (tmp / SAMPLER / "1").mkdir(parents=True)
        (tmp / SAMPLER / "1" / "model.py").write_text(templates.model_py("sampler", "SamplerModel"))
        (tmp / SAMPLER / "config.pbtxt").write_text(sampler_config(src, opts))
        launch = tmp / "launch.sh"
        launch.write_text(templates.launch_sh(src))
        launch.chmod(0o755)
        (tmp / "README.md").write_text(templates.readme(src, opts))
        sidecar = {
            "artifact": "triton model repository",
            "source": {"kind": src.kind, "path": str(src.path.resolve()),
                       "sha256": file_sha256(placed[0]) if placed[0].is_file() else None},
            "denoiser_backend": src.backend,
            "models": [DENOISER, SAMPLER],
            "model_config": src.dit_config,
            "io_dtypes": src.io_dtypes,
            "max_batch": src.max_batch,
            "plugin_lib": None if src.plugin_lib is None else f"plugins/{src.plugin_lib.name}",
            "options": asdict(opts),
            "notes": list(src.notes),
            "versions": environment_versions(),
        }
        write_json_atomic(tmp / REPO_SIDECAR, sidecar)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out, sidecar


def read_repo_sidecar(repo) -> dict:
    from ditas_trt.artifacts import read_json

    path = Path(repo) / REPO_SIDECAR
    if not path.is_file():
        raise DitasError(f"{repo}: not a model repository written by `ditas-trt triton-repo` (no {REPO_SIDECAR})")
    return read_json(path, "model-repository sidecar")



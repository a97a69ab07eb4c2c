"""Build ``engines/<name>.plan`` from an exported ONNX file with TensorRT or TensorRT-RTX.

One code path for both: strongly typed network, one optimization profile over the batch dimension
(:data:`~ditas_trt.engine.metadata.PROFILE_MEANING`), the plugin library loaded before parsing and embedded in the
plan (``plugins_to_serialize``; TensorRT-RTX default) or recorded by path and hash (enterprise TensorRT default:
the runtime / Triton loads it). Differences:

=====================  ==========================================  ==========================================
                       TensorRT-RTX (``tensorrt_rtx``)              TensorRT (``tensorrt``)
=====================  ==========================================  ==========================================
needs a GPU to build   no (CPU-only ahead-of-time build)           yes
targets                ``--targets sm80 sm86 ...`` or the default  the GPU it builds on (``current``) or
                       portable set; no sm_90                      ``ampere+`` (hardware compatibility)
timing cache           not used (it makes the AOT step query a      ``<out-dir>/timing.cache``, reused
                       GPU, disabling CPU-only builds)
=====================  ==========================================  ==========================================

Failures raise :class:`DitasError` naming the ONNX node and TensorRT's message; nothing is written unless the whole
build succeeds (plan and sidecar are each written atomically, plan first; the sidecar holds the plan's sha256).
"""
from __future__ import annotations

import ctypes
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from ditas_trt.artifacts import environment_versions, file_sha256, sidecar_path, write_bytes_atomic, write_json_atomic
from ditas_trt.engine import metadata as md
from ditas_trt.engine.tensorrt import TensorRT, import_tensorrt, make_logger
from ditas_trt.errors import DitasError

NATIVE_DOMAINS = ("", "ai.onnx", "trt")  # "trt": TensorRT's own ops (e.g. trt::DequantizeLinear from ModelOpt)
PLUGIN_LIBRARY_NAME = "libditas_trt_plugin.so"
PLUGIN_BUILD_HINT = "build it with `scripts/build_plugins.sh` (writes plugins/build/libditas_trt_plugin.so)"
_LOADED_LIBRARIES: dict[str, object] = {}


@dataclass
class BuildResult:
    plan: Path
    sidecar: dict


def default_plugin_library() -> Optional[Path]:
    """``$DITAS_TRT_PLUGIN_LIB``, else the repository's build output (editable installs), else None."""
    env = os.environ.get("DITAS_TRT_PLUGIN_LIB")
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parents[2] / "plugins" / "build" / PLUGIN_LIBRARY_NAME
    return candidate if candidate.is_file() else None


def plugin_library_info(path: Path) -> dict:
    """What the library says about itself (``ditasTrtPluginInfo``: plugin versions, TensorRT headers, CUDA archs)."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise DitasError(f"{path}: cannot be loaded ({str(exc).splitlines()[0]}); {PLUGIN_BUILD_HINT}") from None
    fn = getattr(lib, "ditasTrtPluginInfo", None)
    if fn is None:
        return {}
    fn.restype = ctypes.c_char_p
    try:
        return json.loads(fn().decode())
    except (ValueError, UnicodeDecodeError):
        return {}


def custom_nodes(onnx_path: Path) -> list[tuple[str, str, str, str, str]]:
    """(node name, domain, op type, plugin version, plugin namespace) of every node TensorRT must find a plugin for."""
    import onnx

    from ditas_trt.export import load_onnx_graph

    proto = load_onnx_graph(onnx_path)
    found = []
    for node in proto.graph.node:
        if node.domain in NATIVE_DOMAINS:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        version = attrs.get("plugin_version", b"1")
        namespace = attrs.get("plugin_namespace", b"")
        found.append((node.name or node.output[0], node.domain, node.op_type,
                      version.decode() if isinstance(version, bytes) else str(version),
                      namespace.decode() if isinstance(namespace, bytes) else str(namespace)))
    return found


def load_plugin_library(trt: TensorRT, path: Path, logger) -> dict:
    """Register the library's creators (once per process); returns its info plus hash."""
    path = Path(path)
    if not path.is_file():
        raise DitasError(f"plugin library {path} not found; {PLUGIN_BUILD_HINT}")
    info = plugin_library_info(path)
    headers = str(info.get("tensorrt_headers", ""))
    if trt.flavour == "tensorrt" and headers and headers.split(".")[0] != trt.version.split(".")[0]:
        raise DitasError(f"{path} was built against TensorRT {headers} headers, this is TensorRT {trt.version}; "
                         f"rebuild it with -DTENSORRT_INCLUDE_DIR pointing at this TensorRT's headers")
    key = str(path.resolve())
    if key not in _LOADED_LIBRARIES:
        handle = trt.module.get_plugin_registry().load_library(key)
        if handle is None:
            raise DitasError(f"{trt.flavour} {trt.version} could not load plugin library {path} "
                             f"({logger.last_error('no getCreators/setLoggerFinder, or built for another TensorRT')})")
        _LOADED_LIBRARIES[key] = handle
    return {"library": key, "sha256": file_sha256(path), "bytes": path.stat().st_size, "info": info}


def check_plugins_available(trt: TensorRT, onnx_path: Path, nodes, plugin: dict) -> None:
    """Every custom node must have a registered creator before the parser sees it (the RTX parser aborts otherwise)."""
    registry = trt.module.get_plugin_registry()
    for name, domain, op, version, namespace in nodes:
        creator = registry.get_creator(op, version, namespace) or registry.get_creator(op, version, domain)
        if creator is None:
            have = sorted({f"{c.name} v{c.plugin_version}" for c in registry.all_creators if c.name == op})
            raise DitasError(f"{onnx_path}: node '{name}' ({domain}::{op} v{version}) has no plugin in "
                             f"{plugin['library']}" + (f" (it provides {', '.join(have)})" if have else "")
                             + "; unknown custom node or plugin version mismatch")


def dtype_name(dtype) -> str:
    """TensorRT DataType -> numpy-style name ('DataType.HALF' -> 'float16')."""
    name = str(dtype).rsplit(".", 1)[-1].upper()
    return {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16"}.get(name, name.lower())


def _parse(trt: TensorRT, builder, logger, onnx_path: Path):
    mod = trt.module
    if trt.is_rtx:
        network = builder.create_network(0)  # strongly typed is TensorRT-RTX's only mode
    else:
        network = builder.create_network(1 << int(mod.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = mod.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            node = e.node_name() or (f"#{e.node()}" if e.node() >= 0 else "?")
            errors.append(f"node '{node}' ({e.node_operator() or 'graph'}): {e.desc()}")
        raise DitasError(f"{onnx_path}: TensorRT cannot parse " + ("; ".join(errors[:3]) or logger.last_error()))
    return network, parser


def _network_summary(trt: TensorRT, network) -> dict:
    mod = trt.module
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    plugin_types = {getattr(mod.LayerType, n) for n in ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN") if hasattr(mod.LayerType, n)}
    tensor = lambda t: {"shape": list(t.shape), "dtype": dtype_name(t.dtype)}  # noqa: E731
    return {
        "layers": len(layers),
        "plugin_layers": [layer.name for layer in layers if layer.type in plugin_types],
        "inputs": {network.get_input(i).name: tensor(network.get_input(i)) for i in range(network.num_inputs)},
        "outputs": {network.get_output(i).name: tensor(network.get_output(i)) for i in range(network.num_outputs)},
    }


def _profile(builder, network, batch: tuple[int, int, int]):
    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        if not dims or dims[0] != -1 or any(d < 0 for d in dims[1:]):
            raise DitasError(f"network input '{tensor.name}' has shape {dims}; expected a dynamic batch dimension "
                             "first and fixed other dimensions (export with `ditas-trt export`)")
        shapes[tensor.name] = [[b, *dims[1:]] for b in batch]
        profile.set_shape(tensor.name, *shapes[tensor.name])
    return profile, shapes


def _current_gpu() -> tuple[str, str]:
    import torch

    if not torch.cuda.is_available():
        raise DitasError("enterprise TensorRT builds engines on a GPU and none is visible here; use TensorRT-RTX "
                         "(--flavour tensorrt-rtx) for CPU-only builds")
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}", torch.cuda.get_device_name()


def _configure_targets(trt: TensorRT, config, targets: Optional[Sequence[str]]) -> dict:
    mod = trt.module
    if trt.is_rtx:
        chosen = md.rtx_targets(targets)
        if chosen:
            config.num_compute_capabilities = len(chosen)
            for i, cc in enumerate(chosen):
                config.set_compute_capability(getattr(mod.ComputeCapability, md.RTX_TARGETS[cc]), i)
            return {"compute_capabilities": chosen, "portable_default": False, "minimum_only": False}
        return {"compute_capabilities": list(md.RTX_DEFAULT_TARGETS), "portable_default": True, "minimum_only": False}
    wanted = [t.lower() for t in (targets or ["current"])]
    if wanted == ["ampere+"]:
        config.hardware_compatibility_level = mod.HardwareCompatibilityLevel.AMPERE_PLUS
        cc, gpu = _current_gpu()
        return {"compute_capabilities": ["8.0"], "minimum_only": True, "built_on": {"gpu": gpu, "compute_capability": cc}}
    if wanted != ["current"]:
        raise DitasError(f"enterprise TensorRT builds for the GPU it runs on: --targets current or ampere+, got {targets}")
    cc, gpu = _current_gpu()
    return {"compute_capabilities": [cc], "minimum_only": False, "gpus": [gpu]}


def build_engine(
    onnx_path: Union[str, Path],
    name: Optional[str] = None,
    *,
    batch: Sequence[int] = (1, 16, 128),
    plugin_lib: Optional[Union[str, Path]] = None,
    targets: Optional[Sequence[str]] = None,
    out_dir: Union[str, Path] = "engines",
    flavour: Optional[str] = None,
    embed_plugin: Optional[bool] = None,
    timing_cache: Optional[Union[str, Path]] = "auto",
    verbose: bool = False,
    allow_reexec: bool = False,
) -> BuildResult:
    from ditas_trt.export import read_onnx_metadata

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise DitasError(f"{onnx_path}: ONNX file not found (write it with `ditas-trt export`)")
    batch = md.validate_batch(batch)
    name = name or onnx_path.stem
    if not name or "/" in name or name.startswith("."):
        raise DitasError(f"engine name must be a plain file stem, got {name!r}")
    plan = Path(out_dir) / f"{name}.plan"
    nodes = custom_nodes(onnx_path)
    onnx_meta = read_onnx_metadata(onnx_path)
    dynamic = sorted(n for n, c in (onnx_meta.get("quant_layers") or {}).items() if c.get("act_mode") == "dynamic")
    if onnx_meta.get("kind") == "qdq" and dynamic:
        raise DitasError(f"{onnx_path}: the Q/DQ graph has per-token activation scales computed in the graph "
                         f"({dynamic[0]}{' and more' if len(dynamic) > 1 else ''}); TensorRT needs constant Q/DQ "
                         "scales — build the plugin graph (--kind plugin) instead")

    trt = import_tensorrt(flavour, allow_reexec=allow_reexec)
    mod = trt.module
    logger = make_logger(trt, verbose)
    builder = mod.Builder(logger)  # before load_library, or its errors are not logged
    plugin = None
    if nodes:
        lib = Path(plugin_lib) if plugin_lib else default_plugin_library()
        if lib is None:
            first = nodes[0]
            raise DitasError(f"{onnx_path}: node '{first[0]}' ({first[1]}::{first[2]}) needs the plugin library; "
                             f"pass --plugin-lib ({PLUGIN_BUILD_HINT})")
        plugin = load_plugin_library(trt, lib, logger)
        check_plugins_available(trt, onnx_path, nodes, plugin)

    network, _parser = _parse(trt, builder, logger, onnx_path)
    summary = _network_summary(trt, network)
    config = builder.create_builder_config()
    profile, shapes = _profile(builder, network, batch)
    config.add_optimization_profile(profile)
    target_info = _configure_targets(trt, config, targets)
    embed = (trt.is_rtx if embed_plugin is None else embed_plugin) and plugin is not None
    if embed:
        config.plugins_to_serialize = [plugin["library"]]
    cache_path = None
    if not trt.is_rtx and timing_cache:
        cache_path = Path(out_dir) / "timing.cache" if timing_cache == "auto" else Path(timing_cache)
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            # written by another GPU or TensorRT, or damaged: start a new one (it replaces the file after the build)
            warnings.warn(f"{cache_path}: timing cache not usable here; building with a new one", stacklevel=2)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise DitasError(f"{onnx_path}: {trt.flavour} {trt.version} engine build failed: {logger.last_error()}")
    data = bytes(serialized)
    write_bytes_atomic(plan, data)

    sidecar = {
        "sidecar_version": md.SIDECAR_VERSION,
        "artifact": plan.name,
        "name": name,
        "sha256": file_sha256(plan),
        "bytes": len(data),
        "build_seconds": round(seconds, 2),
        "onnx": {"path": str(onnx_path.resolve()), "sha256": file_sha256(onnx_path), "kind": onnx_meta.get("kind"),
                 "dtype": onnx_meta.get("dtype")},
        "model_config": onnx_meta.get("dit_config"),
        "quant_layer_configs": onnx_meta.get("quant_layers", {}),
        "recipe": onnx_meta.get("recipe", {}),
        "tensorrt": trt.describe(),
        "profile": {"batch": dict(zip(("min", "opt", "max"), batch)), "shapes": shapes, "meaning": md.PROFILE_MEANING},
        "inputs": summary["inputs"],
        "outputs": summary["outputs"],
        "layers": summary["layers"],
        "plugin_layers": summary["plugin_layers"],
        "plugin": None if plugin is None else {**plugin, "embedded": embed},
        "targets": target_info,
        "timing_cache": None if cache_path is None else str(cache_path),
        "notes": trt.notes + ([] if not trt.is_rtx else ["timing cache not used: on TensorRT-RTX it makes the "
                                                          "ahead-of-time build query a GPU"]),
        "versions": environment_versions(),
    }
    write_json_atomic(sidecar_path(plan), sidecar)
    cache = config.get_timing_cache() if cache_path is not None else None
    if cache is not None:  # after the sidecar: the plan is complete whatever happens to the cache
        write_bytes_atomic(cache_path, bytes(cache.serialize()))
    return BuildResult(plan, sidecar)

"""Engine sidecars (``engines/<name>.plan.json``) and the checks a plan must pass before it runs.

The optimization profile's batch is the engine's batch: the DiT forward batch. With classifier-free guidance
(cfg scale > 1) the sampler runs the conditional and the unconditional half together, so sampling ``n`` images at
once needs an engine batch of ``2 n``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from ditas_trt.artifacts import file_sha256, read_json, sidecar_path
from ditas_trt.errors import DitasError

SIDECAR_VERSION = 1
PROFILE_MEANING = ("engine batch = DiT forward batch; with classifier-free guidance (cfg scale > 1) "
                   "sampling n images runs batch 2n")
# TensorRT-RTX ahead-of-time targets (its ComputeCapability enum); there is no Hopper (sm_90) target.
RTX_TARGETS = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120", "12.1": "SM121"}
# What TensorRT-RTX builds for when no target is set (its CPU-only AOT default, per its documentation).
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0")
HOPPER_HINT = "build Hopper engines with enterprise TensorRT (docker/Dockerfile.build)"


def normalize_target(target: str) -> str:
    """'sm86', 'SM_86', '86', '8.6', 'sm_90a' -> '8.6' / '9.0'."""
    t = target.strip().lower().replace("sm_", "").replace("sm", "").rstrip("a")
    if "." in t:
        major, minor = t.split(".", 1)
    elif t.isdigit() and len(t) >= 2:
        major, minor = t[:-1], t[-1]
    else:
        raise DitasError(f"cannot read compute capability {target!r} (use e.g. sm86 or 8.6)")
    if not (major.isdigit() and minor.isdigit()):
        raise DitasError(f"cannot read compute capability {target!r} (use e.g. sm86 or 8.6)")
    return f"{int(major)}.{int(minor)}"


def rtx_targets(targets: Optional[Sequence[str]]) -> list[str]:
    """Validated TensorRT-RTX targets; empty means the portable default."""
    out = []
    for target in targets or []:
        cc = normalize_target(target)
        if cc not in RTX_TARGETS:
            extra = f"; {HOPPER_HINT}" if cc.startswith("9.") or cc.startswith("10.") else ""
            raise DitasError(f"TensorRT-RTX cannot target compute capability {cc} (it targets "
                             f"{', '.join(RTX_TARGETS)}){extra}")
        if cc not in out:
            out.append(cc)
    return out


def validate_batch(batch: Sequence[int]) -> tuple[int, int, int]:
    if len(batch) != 3:
        raise DitasError(f"--batch takes MIN OPT MAX, got {list(batch)}")
    lo, opt, hi = (int(b) for b in batch)
    if not 1 <= lo <= opt <= hi:
        raise DitasError(f"--batch must satisfy 1 <= MIN <= OPT <= MAX, got {lo} {opt} {hi}")
    return lo, opt, hi


# ---------------------------------------------------------------------------------------------------------------
# Reading and checking
# ---------------------------------------------------------------------------------------------------------------
def read_engine_sidecar(plan: Union[str, Path], verify_hash: bool = True) -> dict:
    plan = Path(plan)
    if plan.suffix == ".onnx":
        raise DitasError(f"{plan}: an ONNX graph, not a TensorRT plan (build one with `ditas-trt build {plan}`)")
    if not plan.is_file():
        raise DitasError(f"{plan}: engine file not found (build it with `ditas-trt build`)")
    side = sidecar_path(plan)
    if not side.is_file():
        raise DitasError(f"{plan}: no sidecar {side.name}; rebuild the engine with `ditas-trt build`")
    meta = read_json(side, "engine sidecar")
    if meta.get("sidecar_version") != SIDECAR_VERSION:
        raise DitasError(f"{side}: sidecar version {meta.get('sidecar_version')}, this ditas-trt reads {SIDECAR_VERSION}")
    if verify_hash and meta.get("sha256") != file_sha256(plan):
        raise DitasError(f"{plan}: does not match its sidecar (sha256 differs); the plan was replaced or truncated")
    return meta


def check_batch(meta: dict, batch: int) -> None:
    prof = meta["profile"]["batch"]
    if not prof["min"] <= batch <= prof["max"]:
        raise DitasError(f"batch {batch} is outside the engine profile [{prof['min']}, {prof['max']}] of "
                         f"{meta['artifact']} ({PROFILE_MEANING}); rebuild with --batch or lower --batch-size")


def external_plugin_library(meta: dict, plan: Union[str, Path], plugin_lib=None) -> Optional[Path]:
    """The plugin library a plan loads beside it: None when it has no plugin or embeds it; else ``plugin_lib`` or the
    recorded path, which must be the library the plan was built with (same sha256)."""
    plugin = meta.get("plugin")
    if not plugin or plugin.get("embedded"):
        return None
    lib = Path(plugin_lib or plugin["library"])
    if not lib.is_file():
        raise DitasError(f"{plan} needs plugin library {lib}, which is missing; pass --plugin-lib")
    if file_sha256(lib) != plugin["sha256"]:
        raise DitasError(f"{lib} is not the plugin library {Path(plan).name} was built with (sha256 differs); "
                         "pass the matching --plugin-lib or rebuild the engine")
    return lib


def supported_compute_capabilities(meta: dict) -> tuple[list[str], bool]:
    """(capabilities, minimum_only): the GPUs the plan was built for; ``minimum_only`` for hardware-compatible plans."""
    targets = meta["targets"]
    return list(targets["compute_capabilities"]), bool(targets.get("minimum_only"))


def check_compat(meta: dict, flavour: str, version: str, compute_capability: tuple[int, int], gpu_name: str = "") -> None:
    """Refuse a plan built for another TensorRT (flavour or version) or another GPU, with one clear line."""
    built = meta["tensorrt"]
    name = meta.get("artifact", "engine")
    if built["flavour"] != flavour:
        raise DitasError(f"{name} was built with {built['flavour']} {built['version']}; this machine runs {flavour} "
                         f"{version} — rebuild the engine here")
    if built["version"] != version:
        raise DitasError(f"{name} was built with {flavour} {built['version']}, this machine has {version}; "
                         f"TensorRT plans only load in the version that built them — rebuild the engine here")
    cc = f"{compute_capability[0]}.{compute_capability[1]}"
    allowed, minimum_only = supported_compute_capabilities(meta)
    ok = (float(cc) >= min(float(c) for c in allowed)) if minimum_only else cc in allowed
    if not ok:
        gpu = f"{gpu_name} (sm_{cc.replace('.', '')})" if gpu_name else f"compute capability {cc}"
        hint = f"; {HOPPER_HINT}" if flavour == "tensorrt-rtx" and cc.startswith(("9.", "10.")) else "; rebuild it for this GPU"
        raise DitasError(f"{name} targets compute capabilities {', '.join(allowed)}"
                         f"{' and newer' if minimum_only else ''}, not this {gpu}{hint}")

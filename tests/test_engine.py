"""Engines: real TensorRT-RTX builds on the CPU (FP16 and W4A8+LoRA with the C++ plugin) for the embedded model,
inspected without deserializing; build errors; sidecar checks against GPU / TensorRT; GPU run (marker gpu)."""
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, perturbed, run_cli
from trt_helpers import rtn_quantize

pytest.importorskip("onnx")

from ditas_trt.engine import metadata as md  # noqa: E402
from ditas_trt.engine.builder import build_engine, default_plugin_library  # noqa: E402
from ditas_trt.errors import DitasError  # noqa: E402
from ditas_trt.export import export_onnx, plugin_spec  # noqa: E402

BUILD_HINT = "run scripts/build_plugins.sh (CMake: plugins/build/libditas_trt_plugin.so)"
BATCH = (1, 8, 32)


def _rtx():
    from ditas_trt.engine.tensorrt import import_tensorrt

    try:
        return import_tensorrt("tensorrt-rtx")
    except DitasError as exc:
        pytest.skip(f"TensorRT-RTX not available: {exc}")


def _plugin_lib() -> Path:
    lib = default_plugin_library()
    if lib is None or not lib.is_file():
        pytest.skip(f"plugin library not built: {BUILD_HINT}")
    return lib


def _embedded_model():
    """The embedded digits DiT (its config with random weights until the trained file is committed)."""
    from ditas_trt.models import build_dit, load_dit
    from ditas_trt.models.dit import DiTConfig
    from ditas_trt.models.embedded import EMBEDDED_CONFIG, EMBEDDED_PATH

    if EMBEDDED_PATH.is_file():
        return load_dit(EMBEDDED_PATH)
    torch.manual_seed(0)
    return perturbed(build_dit(DiTConfig(**EMBEDDED_CONFIG)))


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    from ditas_trt.quant.packed import save_quantized

    root = tmp_path_factory.mktemp("engines")
    fp = _embedded_model()
    fp16 = export_onnx(None, "fp16", root / "digits_fp16.onnx", torch_model=fp).path
    quantized = rtn_quantize(_embedded_model(), rank=16)
    save_quantized(quantized, root / "quantized", recipe={"method": "rtn-test"})
    plugin = export_onnx(root / "quantized", "plugin", root / "digits_w4a8.onnx").path
    return {"root": root, "fp16": fp16, "plugin": plugin, "quantized": quantized, "fp": fp}


@pytest.fixture(scope="module")
def fp16_engine(onnx_files):
    _rtx()
    return build_engine(onnx_files["fp16"], "digits_fp16", batch=BATCH, out_dir=onnx_files["root"] / "out")


@pytest.fixture(scope="module")
def w4a8_engine(onnx_files):
    _rtx()
    return build_engine(onnx_files["plugin"], "digits_w4a8", batch=BATCH, plugin_lib=_plugin_lib(),
                        out_dir=onnx_files["root"] / "out")


# ---------------------------------------------------------------------------------------------------------------
# Real CPU builds, inspected
# ---------------------------------------------------------------------------------------------------------------
def test_rtx_parser_library_is_arranged_by_the_package():
    from ditas_trt.engine.tensorrt import ensure_rtx_parser_library

    _rtx()
    link = ensure_rtx_parser_library()
    assert link.name == "libtensorrt_rtx.so" and link.exists()
    assert Path(os.path.realpath(link)).name.startswith("libtensorrt_rtx.so.")


def test_parser_library_fallback_for_read_only_installs(tmp_path, monkeypatch):
    from ditas_trt.engine import tensorrt as trt_mod

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    real = pkg / "libtensorrt_rtx.so.1"
    real.write_bytes(b"")
    monkeypatch.setattr(trt_mod, "_rtx_library_dir", lambda: (pkg, real))
    monkeypatch.setattr(trt_mod, "PRIVATE_LIB_DIR", tmp_path / "private")
    assert trt_mod.ensure_rtx_parser_library() == pkg / "libtensorrt_rtx.so"  # writable: a relative link
    assert os.readlink(pkg / "libtensorrt_rtx.so") == real.name
    (pkg / "libtensorrt_rtx.so").unlink()
    symlink = os.symlink

    def read_only(src, dst):
        if Path(dst).parent == pkg:
            raise PermissionError("read-only file system")
        symlink(src, dst)

    monkeypatch.setattr(trt_mod.os, "symlink", read_only)
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    with pytest.raises(DitasError, match="read-only .* LD_LIBRARY_PATH="):
        trt_mod.ensure_rtx_parser_library(allow_reexec=False)
    assert os.readlink(tmp_path / "private" / "libtensorrt_rtx.so") == str(real)
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path / "private"))
    assert trt_mod.ensure_rtx_parser_library() == tmp_path / "private" / "libtensorrt_rtx.so"


def _check_common(result, onnx_files):
    from ditas_trt.engine.inspect import inspect_plan

    side = result.sidecar
    cfg = onnx_files["fp"].config
    report = inspect_plan(result.plan)
    assert result.plan.is_file() and report["bytes"] == side["bytes"] > 0
    assert side["tensorrt"]["flavour"] == "tensorrt-rtx"
    assert side["model_config"] == cfg.to_dict()
    assert side["profile"]["batch"] == {"min": 1, "opt": 8, "max": 32}
    assert side["profile"]["shapes"]["x"] == [[b, cfg.in_channels, cfg.input_size, cfg.input_size] for b in BATCH]
    assert side["inputs"] == {"x": {"shape": [-1, 1, 16, 16], "dtype": "float32"},
                              "t": {"shape": [-1], "dtype": "float32"}, "y": {"shape": [-1], "dtype": "int32"}}
    assert side["outputs"] == {"out": {"shape": [-1, 2, 16, 16], "dtype": "float32"}}
    assert side["targets"]["compute_capabilities"] == list(md.RTX_DEFAULT_TARGETS)
    return report


def test_fp16_engine_built_on_cpu(fp16_engine, onnx_files):
    report = _check_common(fp16_engine, onnx_files)
    assert fp16_engine.sidecar["plugin"] is None and report["plugin_layers"] == 0
    assert fp16_engine.sidecar["onnx"]["kind"] == "fp16"


def test_w4a8_engine_built_on_cpu_with_the_cpp_plugin(w4a8_engine, onnx_files):
    from ditas_trt.quant.linear import quant_layer_configs

    report = _check_common(w4a8_engine, onnx_files)
    side = w4a8_engine.sidecar
    layers = quant_layer_configs(onnx_files["quantized"])
    assert sorted(side["plugin_layers"]) == sorted(layers)  # one plugin layer per quantized linear, named after it
    assert side["quant_layer_configs"] == layers
    assert report["plugin_type_in_plan"] and report["plugin_embedded"] is True  # the .so bytes are inside the plan
    assert side["plugin"]["embedded"] and side["plugin"]["info"]["plugins"] == {plugin_spec.OP_TYPE: plugin_spec.VERSION}


def test_info_reads_graphs_and_plans_without_loading_them(w4a8_engine, onnx_files, tmp_path):
    import json

    from ditas_trt.quant.linear import quant_layer_configs

    layers = len(quant_layer_configs(onnx_files["quantized"]))
    params = sum(p.numel() for p in onnx_files["fp"].parameters())
    graph = json.loads(run_cli("info", onnx_files["plugin"], "--json").stdout)
    assert graph["kind"] == "onnx" and graph["graph"] == "plugin (fp16)" and graph["quantized_layers"] == layers
    assert graph["parameters"] == params and graph["config"] == onnx_files["fp"].config.to_dict()
    plan = json.loads(run_cli("info", w4a8_engine.plan, "--json").stdout)
    assert plan["kind"] == "plan" and plan["plugin layers"] == layers and plan["tensorrt"].startswith("tensorrt-rtx")
    assert plan["batch profile"] == "/".join(map(str, BATCH)) and plan["parameters"] == params
    res = run_cli("sample", "--engine", onnx_files["plugin"], "--out", tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "not a TensorRT plan" in res.stderr


def test_cpp_creator_declares_the_spec_fields(w4a8_engine):
    trt = _rtx()
    creator = trt.module.get_plugin_registry().get_creator(plugin_spec.OP_TYPE, plugin_spec.VERSION, plugin_spec.NAMESPACE)
    assert creator is not None
    assert [f.name for f in creator.field_names] == list(plugin_spec.FIELDS)


def test_plugin_contract_host_test():
    lib = default_plugin_library()
    exe = (lib.parent if lib else REPO / "plugins" / "build") / "ditas_trt_plugin_test"
    if not exe.is_file():
        pytest.skip(f"plugin contract test not built: {BUILD_HINT}")
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rtx_targets(onnx_files, tmp_path):
    _rtx()
    result = build_engine(onnx_files["fp16"], "sm86", batch=(1, 2, 4), targets=["sm86", "8.9"], out_dir=tmp_path)
    assert result.sidecar["targets"]["compute_capabilities"] == ["8.6", "8.9"]
    with pytest.raises(DitasError, match="no Hopper|Hopper engines"):
        build_engine(onnx_files["fp16"], "h100", batch=(1, 2, 4), targets=["sm90a"], out_dir=tmp_path)
    assert not (tmp_path / "h100.plan").exists()


# ---------------------------------------------------------------------------------------------------------------
# Build errors: one clear line, no plan file
# ---------------------------------------------------------------------------------------------------------------
def _edited(src, dst, edit):
    import onnx

    proto = onnx.load(str(src))
    edit(proto)
    onnx.save(proto, str(dst))
    return dst


def test_unknown_custom_node(onnx_files, tmp_path):
    _rtx()

    def rename(proto):
        proto.graph.node[[n.domain for n in proto.graph.node].index(plugin_spec.DOMAIN)].op_type = "FancyGemm"

    path = _edited(onnx_files["plugin"], tmp_path / "unknown.onnx", rename)
    with pytest.raises(DitasError, match=r"node '.*' \(trt.plugins::FancyGemm v1\) has no plugin"):
        build_engine(path, "unknown", batch=BATCH, plugin_lib=_plugin_lib(), out_dir=tmp_path)
    assert not list(tmp_path.glob("*.plan*"))


def test_qdq_graph_with_per_token_scales_is_refused(onnx_files, tmp_path):
    _rtx()
    qdq = export_onnx(onnx_files["root"] / "quantized", "qdq", tmp_path / "qdq.onnx", dtype="fp16").path
    with pytest.raises(DitasError, match="per-token activation scales .*--kind plugin"):
        build_engine(qdq, "qdq", batch=BATCH, out_dir=tmp_path)
    assert not list(tmp_path.glob("*.plan*"))


def test_plugin_version_mismatch_and_bad_field(onnx_files, tmp_path):
    import onnx

    _rtx()

    def bump(proto):
        for node in proto.graph.node:
            for a in node.attribute:
                if a.name == "plugin_version":
                    a.s = b"2"

    with pytest.raises(DitasError, match=r"v2\) has no plugin .*provides W4A8LoraGemm v1"):
        build_engine(_edited(onnx_files["plugin"], tmp_path / "v2.onnx", bump), "v2", batch=BATCH,
                     plugin_lib=_plugin_lib(), out_dir=tmp_path)

    def bad_bits(proto):
        node = next(n for n in proto.graph.node if n.domain == plugin_spec.DOMAIN)
        for a in node.attribute:
            if a.name == "weight_bits":
                a.CopyFrom(onnx.helper.make_attribute("weight_bits", 5))

    with pytest.raises(DitasError, match="cannot parse node"):
        build_engine(_edited(onnx_files["plugin"], tmp_path / "bits.onnx", bad_bits), "bits", batch=BATCH,
                     plugin_lib=_plugin_lib(), out_dir=tmp_path)
    assert not list(tmp_path.glob("*.plan*"))


def test_plugin_library_missing_or_foreign(onnx_files, tmp_path, monkeypatch):
    import ctypes.util

    from ditas_trt.engine import builder

    _rtx()
    with monkeypatch.context() as m:
        m.setattr(builder, "default_plugin_library", lambda: None)
        with pytest.raises(DitasError, match=r"node '.*' \(trt.plugins::W4A8LoraGemm\) needs the plugin library; pass"):
            build_engine(onnx_files["plugin"], "x", batch=BATCH, out_dir=tmp_path)
    with pytest.raises(DitasError, match="plugin library .* not found; build it"):
        build_engine(onnx_files["plugin"], "x", batch=BATCH, plugin_lib=tmp_path / "nope.so", out_dir=tmp_path)
    foreign = ctypes.util.find_library("z") or ctypes.util.find_library("m")
    foreign = next((p for p in (Path("/lib/x86_64-linux-gnu") / foreign, Path("/usr/lib/x86_64-linux-gnu") / foreign)
                    if p.is_file()), None) if foreign else None
    if foreign is not None:  # a library without getCreators / setLoggerFinder
        with pytest.raises(DitasError, match="could not load plugin library"):
            build_engine(onnx_files["plugin"], "x", batch=BATCH, plugin_lib=foreign, out_dir=tmp_path)
    assert not list(tmp_path.glob("*.plan*"))


def test_cli_build(onnx_files, tmp_path):
    _rtx()
    res = run_cli("build", onnx_files["fp16"], "--name", "cli", "--batch", "1", "2", "4", "--out-dir", tmp_path)
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and (tmp_path / "cli.plan").is_file() and (tmp_path / "cli.plan.json").is_file()
    res = run_cli("build", onnx_files["fp16"], "--name", "bad", "--batch", "4", "2", "1", "--out-dir", tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "MIN <= OPT <= MAX" in res.stderr
    assert not (tmp_path / "bad.plan").exists()


# ---------------------------------------------------------------------------------------------------------------
# Runtime checks that need no GPU
# ---------------------------------------------------------------------------------------------------------------
def _meta(flavour="tensorrt-rtx", version="1.7.1.116", ccs=("8.0", "8.6", "8.9", "12.0"), minimum_only=False):
    return {"artifact": "x.plan", "tensorrt": {"flavour": flavour, "version": version},
            "targets": {"compute_capabilities": list(ccs), "minimum_only": minimum_only},
            "profile": {"batch": {"min": 1, "opt": 8, "max": 32}}}


def test_engine_compat_checks():
    md.check_compat(_meta(), "tensorrt-rtx", "1.7.1.116", (8, 9), "RTX 4090")
    with pytest.raises(DitasError, match="Hopper"):
        md.check_compat(_meta(), "tensorrt-rtx", "1.7.1.116", (9, 0), "NVIDIA H100")
    with pytest.raises(DitasError, match="built with tensorrt-rtx .* this machine runs tensorrt"):
        md.check_compat(_meta(), "tensorrt", "10.14.1", (9, 0))
    with pytest.raises(DitasError, match="only load in the version that built them"):
        md.check_compat(_meta(), "tensorrt-rtx", "1.8.0.1", (8, 9))
    with pytest.raises(DitasError, match="targets compute capabilities 9.0, not this"):
        md.check_compat(_meta("tensorrt", "10.14.1", ["9.0"]), "tensorrt", "10.14.1", (8, 0), "A100")
    md.check_compat(_meta("tensorrt", "10.14.1", ["8.0"], True), "tensorrt", "10.14.1", (9, 0))
    md.check_batch(_meta(), 32)
    with pytest.raises(DitasError, match=r"batch 64 is outside the engine profile \[1, 32\].*2n"):
        md.check_batch(_meta(), 64)
    assert md.normalize_target("sm_90a") == "9.0" and md.normalize_target("120") == "12.0"


def test_runner_binds_the_context_to_the_batch_whose_graph_replays():
    """One execution context serves every captured batch size; replaying batch 1 after batch 4 rebinds it to 1."""
    from ditas_trt.engine.runtime import EngineRunner

    class Context:
        batch = None

        def set_input_shape(self, name, shape):
            self.batch = shape[0]
            return True

        def set_tensor_address(self, name, address):
            pass

    replays = []

    class Graph:
        def __init__(self, batch):
            self.batch = batch

        def replay(self):
            replays.append((self.batch, runner.context.batch))

    runner = EngineRunner.__new__(EngineRunner)  # the bookkeeping only: no plan, no GPU
    runner.plan, runner.device, runner.context, runner.cuda_graphs = Path("x.plan"), torch.device("cpu"), Context(), True
    runner.meta = {**_meta(), "inputs": {"x": {"shape": [-1, 1, 4, 4]}, "t": {"shape": [-1]}, "y": {"shape": [-1]}},
                   "outputs": {"out": {"shape": [-1, 2, 4, 4]}}}
    runner.dtypes = {"x": torch.float32, "t": torch.float32, "y": torch.int32, "out": torch.float32}
    runner._buffers, runner._graphs, runner._shape_batch = {}, {}, None
    runner._capture = Graph
    for batch in (1, 4, 1, 1):
        runner(torch.zeros(batch, 1, 4, 4), torch.zeros(batch), torch.zeros(batch, dtype=torch.long))
    assert replays == [(1, 1), (4, 4), (1, 1), (1, 1)]
    with pytest.raises(DitasError, match=r"takes x of shape \(batch, 1, 4, 4\), got \(2, 16\)"):
        runner(torch.zeros(2, 16), torch.zeros(2), torch.zeros(2, dtype=torch.long))  # same numel, not reshaped


def test_sample_with_engine_refuses_clearly(fp16_engine, tmp_path):
    res = run_cli("sample", "--engine", fp16_engine.plan, "--batch-size", "64", "--out", tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "outside the engine profile" in res.stderr
    if not torch.cuda.is_available():
        res = run_cli("sample", "--engine", fp16_engine.plan, "--batch-size", "4", "--out", tmp_path)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "needs a CUDA GPU" in res.stderr
    tampered = tmp_path / "t.plan"
    tampered.write_bytes(fp16_engine.plan.read_bytes()[:-1])
    (tmp_path / "t.plan.json").write_text((fp16_engine.plan.parent / "digits_fp16.plan.json").read_text())
    with pytest.raises(DitasError, match="does not match its sidecar"):
        md.read_engine_sidecar(tampered)


# ---------------------------------------------------------------------------------------------------------------
# GPU: engine output vs the torch reference (skips unless a TensorRT that targets this GPU is importable)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["fp16", "w4a8"])
def test_engine_matches_torch_on_gpu(kind, onnx_files, tmp_path):
    from ditas_trt.engine.runtime import EngineRunner
    from ditas_trt.engine.tensorrt import import_tensorrt

    try:
        trt = import_tensorrt()
    except DitasError as exc:
        pytest.skip(str(exc))
    cc = torch.cuda.get_device_capability()
    if trt.is_rtx and f"{cc[0]}.{cc[1]}" not in md.RTX_TARGETS:
        pytest.skip(f"{trt.flavour} has no target for compute capability {cc} ({md.HOPPER_HINT})")
    onnx_path = onnx_files["fp16" if kind == "fp16" else "plugin"]
    plan = build_engine(onnx_path, kind, batch=BATCH, plugin_lib=None if kind == "fp16" else _plugin_lib(),
                        out_dir=tmp_path, flavour=trt.flavour).plan
    ref_model = onnx_files["fp" if kind == "fp16" else "quantized"]
    gen = torch.Generator().manual_seed(0)
    for cuda_graphs in (False, True):
        runner = EngineRunner(plan, cuda_graphs=cuda_graphs)
        for batch in (1, 7, 32, 1):  # back to batch 1: its graph replays after the context ran batch 32
            x = torch.randn(batch, 1, 16, 16, generator=gen)
            t = torch.randint(0, 1000, (batch,), generator=gen)
            y = torch.randint(0, 11, (batch,), generator=gen)
            with torch.no_grad():
                ref = ref_model(x, t, y).numpy()
            got = runner(x.cuda(), t.cuda(), y.cuda()).cpu().numpy()
            got2 = runner(x.cuda(), t.cuda(), y.cuda()).cpu().numpy()  # graph replay == first run
            assert np.array_equal(got, got2)
            tolerance = 2e-2 if kind == "fp16" else 5e-2  # FP16 network around the plugin: more INT8 rounding flips
            assert np.abs(got - ref).max() / np.abs(ref).max() < tolerance, (kind, batch, cuda_graphs)


# ---------------------------------------------------------------------------------------------------------------
# Pipeline stages
# ---------------------------------------------------------------------------------------------------------------
def test_pipeline_export_and_engine_stages(onnx_files, tmp_path):
    from ditas_trt.engine.stages import engines_stage, export_stage
    from ditas_trt.models import save_dit
    from ditas_trt.pipeline import PipelineConfig, PipelineContext, StageSkipped, write_report

    save_dit(onnx_files["fp"], tmp_path / "fp.safetensors")
    ctx = PipelineContext(PipelineConfig(checkpoint=str(tmp_path / "fp.safetensors"), name="t", runs_dir=str(tmp_path),
                                         per_class=1, steps=2, batch_size=16))
    with pytest.raises(StageSkipped, match="quantize"):
        export_stage(ctx)
    ctx.artifacts["quantized_dir"] = onnx_files["root"] / "quantized"
    export_stage(ctx)
    data = ctx.sections[-1].data
    assert [r["kind"] for r in data["graphs"]] == ["fp16", "plugin", "qdq"]
    assert data["qdq_vs_torch_max_rel_diff"] < 2e-2 and data["qdq_onnxruntime"]["class_accuracy"] >= 0
    try:
        engines_stage(ctx)
    except StageSkipped as why:
        pytest.skip(f"engines stage skipped: {why}")
    rows = ctx.sections[-1].data["engines"]
    assert rows[0]["precision"] == "FP16" and rows[0]["MB"] > 0
    if default_plugin_library() is not None:
        assert rows[1]["plugin layers"] > 0 and rows[1]["plugin in plan"] == "embedded"
    text = write_report(ctx, 1.0).read_text()
    assert "## ONNX export" in text and "## Engines (tensorrt-rtx" in text

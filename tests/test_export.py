"""ONNX export: FP graph == torch, Q/DQ graph in onnxruntime == torch quantized model, plugin graph structure."""
import numpy as np
import pytest
import torch

from conftest import make_tiny_dit, run_cli
from trt_helpers import make_quantized_dir

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from ditas_trt.errors import DitasError  # noqa: E402
from ditas_trt.export import export_onnx, plugin_spec, read_onnx_metadata  # noqa: E402
from ditas_trt.export.graph import GraphBuilder, build_dit_graph, make_model  # noqa: E402
from ditas_trt.export.linears import float_linear, qdq_linear  # noqa: E402
from ditas_trt.export.ort import onnx_denoiser  # noqa: E402
from ditas_trt.quant.format import QuantLinearTensors  # noqa: E402
from ditas_trt.quant.linear import QuantLinear  # noqa: E402

# Stated tolerances (max abs error relative to the reference's max abs value):
FP32_GRAPH_RTOL = 1e-5     # fp32 graph vs torch fp32: the same arithmetic, op by op
QDQ_LAYER_ATOL = 1e-5      # one Q/DQ linear vs the exact CPU reference op
QDQ_MODEL_RTOL = 2e-2      # whole Q/DQ DiT vs torch quantized DiT: rare INT8 rounding flips (x/s at .5) propagate
FP16_GRAPH_RTOL = 1e-2     # fp16 graph in onnxruntime vs torch fp32


def _inputs(cfg, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, cfg.num_classes + 1, (batch,), generator=g)
    return x, t, y


def _run(model_or_path, x, t, y):
    src = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(["out"], {"x": x.numpy(), "t": t.float().numpy(), "y": y.int().numpy()})[0]


def _rel(a, ref):
    return float(np.abs(a - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def quantized_dir(tmp_path_factory):
    return make_quantized_dir(make_tiny_dit(), tmp_path_factory.mktemp("q") / "quantized")


def test_fp32_graph_matches_torch(tiny_dit):
    graph = make_model(build_dit_graph(tiny_dit, float_linear, np.float32))
    onnx.checker.check_model(graph, full_check=True)
    for batch in (1, 5):  # dynamic batch
        x, t, y = _inputs(tiny_dit.config, batch)
        ref = tiny_dit(x, t, y).detach().numpy()
        assert _rel(_run(graph, x, t, y), ref) < FP32_GRAPH_RTOL


@pytest.mark.parametrize("kwargs", [
    dict(act_amax=torch.tensor(3.0)),
    dict(),  # dynamic per-token scales: ReduceMax + blocked Q/DQ with a runtime scale
    dict(group_size=32, act_amax=torch.tensor(3.0)),
    dict(weight_bits=8),
    dict(act_prescale=torch.rand(128) + 0.5, act_amax=torch.tensor(4.0), lora_down=torch.randn(128, 4) * 0.1,
         lora_up=torch.randn(4, 96) * 0.1),
], ids=["static", "dynamic", "group32", "w8", "prescale_lora"])
def test_qdq_linear_matches_reference_op(kwargs):
    from onnx import TensorProto, helper

    from ditas_trt import ops

    torch.manual_seed(0)
    layer = QuantLinear.from_tensors(QuantLinearTensors.from_float(torch.randn(96, 128) * 0.1, torch.randn(96), **kwargs))
    g = GraphBuilder(np.float32)
    out = qdq_linear(g, "lin", layer, "x")
    graph = helper.make_graph(g.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 128])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["B", "T", 96])], g.initializers)
    model = make_model(graph)
    onnx.checker.check_model(model, full_check=True)
    x = torch.randn(3, 16, 128)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert np.abs(got - ops.quantized_linear(x, layer).numpy()).max() < QDQ_LAYER_ATOL


def test_qdq_graph_matches_torch_quantized_model(quantized_dir, tmp_path):
    from ditas_trt.quant.packed import load_quantized

    path = export_onnx(quantized_dir, "qdq", tmp_path / "q.onnx").path
    model = load_quantized(quantized_dir)
    for batch, seed in ((1, 0), (6, 1)):
        x, t, y = _inputs(model.config, batch, seed)
        ref = model(x, t, y).detach().numpy()
        assert _rel(_run(path, x, t, y), ref) < QDQ_MODEL_RTOL
    meta = read_onnx_metadata(path)
    assert meta["kind"] == "qdq" and meta["dit_config"] == model.config.to_dict()


def test_plugin_graph_structure(quantized_dir, tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from ditas_trt.quant.packed import load_quantized

    result = export_onnx(quantized_dir, "plugin", tmp_path / "p.onnx")
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto)
    model = load_quantized(quantized_dir)
    quant = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    nodes = [n for n in proto.graph.node if n.domain == plugin_spec.DOMAIN]
    assert {n.name for n in nodes} == set(quant) and all(n.op_type == plugin_spec.OP_TYPE for n in nodes)
    assert result.sidecar["plugin"]["nodes"] == len(quant) == result.sidecar["quantized_layers"]
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
    inits = {t.name: t for t in proto.graph.initializer}
    for node in nodes:
        layer = quant[node.name]
        cfg = layer.config
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {**plugin_spec.attributes_for(cfg), "plugin_version": plugin_spec.VERSION.encode()}
        assert set(attrs) - {"plugin_version"} == set(plugin_spec.FIELDS)
        expected = plugin_spec.input_names(cfg.act_mode == "dynamic", cfg.has_prescale, cfg.rank, cfg.has_bias)
        assert [i.rsplit(".", 1)[-1] for i in node.input[1:]] == list(expected[1:])  # the order the plugin reads
        w = inits[node.input[1]]
        assert list(w.dims) == [cfg.out_features, cfg.in_features]
        assert w.data_type == (TensorProto.INT4 if cfg.weight_bits == 4 else TensorProto.INT8)
        assert w.raw_data == layer.qweight.numpy().tobytes()  # the packed bytes ARE the INT4 tensor
        assert np.array_equal(numpy_helper.to_array(inits[node.input[2]]), layer.w_scale.numpy())
    # everything outside the plugin nodes is FP16 (only the fp32 timestep features and the plugin's scales are not)
    plugin_inputs = {i for n in nodes for i in n.input}
    float_inits = [t for t in proto.graph.initializer if t.name not in plugin_inputs
                   and t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert {t.name for t in float_inits if t.data_type == TensorProto.FLOAT} == {"t_embedder.frequencies"}


def test_fp16_graph_runs_in_onnxruntime(tiny_dit, tmp_path):
    from ditas_trt.models import save_dit

    ckpt = tmp_path / "fp.safetensors"
    save_dit(tiny_dit, ckpt)
    result = export_onnx(ckpt, "fp16", tmp_path / "fp16.onnx")
    assert result.sidecar["plugin"] is None and "QuantizeLinear" not in result.sidecar["node_counts"]
    x, t, y = _inputs(tiny_dit.config, 3)
    assert _rel(_run(result.path, x, t, y), tiny_dit(x, t, y).detach().numpy()) < FP16_GRAPH_RTOL


def test_large_graph_weights_go_to_a_data_file(tiny_dit, tmp_path, monkeypatch):
    """Past protobuf's 2 GB the weights live in <name>.onnx.data; a re-export replaces it (onnx refuses to)."""
    import ditas_trt.export as export

    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)
    out = tmp_path / "xl.onnx"
    sizes = []
    for _ in range(2):
        export_onnx(None, "fp16", out, dtype="fp32", torch_model=tiny_dit)
        sizes.append((tmp_path / "xl.onnx.data").stat().st_size)
    assert sizes[0] == sizes[1] > 0 and out.stat().st_size < sizes[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xl.onnx", "xl.onnx.data", "xl.onnx.json"]
    x, t, y = _inputs(tiny_dit.config, 2)
    assert _rel(_run(out, x, t, y), tiny_dit(x, t, y).detach().numpy()) < FP32_GRAPH_RTOL


def test_export_refuses_wrong_source(quantized_dir, tiny_dit, tmp_path):
    with pytest.raises(DitasError, match="quantized folder"):
        export_onnx(quantized_dir, "fp16", tmp_path / "x.onnx")
    with pytest.raises(DitasError, match="needs a quantized model folder"):
        export_onnx("embedded", "plugin", tmp_path / "x.onnx")
    with pytest.raises(DitasError, match=".onnx"):
        export_onnx(quantized_dir, "qdq", tmp_path / "x.bin")
    assert not list(tmp_path.glob("x*"))
    (tmp_path / "garbage.onnx").write_bytes(b"not protobuf")
    with pytest.raises(DitasError, match="garbage.onnx: not a readable ONNX file"):
        onnx_denoiser(tmp_path / "garbage.onnx")  # `sample --onnx`, `triton-repo --onnx` and `build` read it alike


def test_cli_export_and_onnx_sampling(quantized_dir, tmp_path):
    out = tmp_path / "q.onnx"
    res = run_cli("export", quantized_dir, "--kind", "qdq", "--out", out)
    assert res.returncode == 0, res.stderr
    assert out.is_file() and (tmp_path / "q.onnx.json").is_file()
    res = run_cli("sample", "--onnx", out, "--classes", "1", "--per-class", "2", "--steps", "2", "--out", tmp_path / "s")
    assert res.returncode == 0, res.stderr
    res = run_cli("export", quantized_dir, "--kind", "fp16", "--out", tmp_path / "bad.onnx")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "quantized folder" in res.stderr

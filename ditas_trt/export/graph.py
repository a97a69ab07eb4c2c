"""The DiT as an ONNX graph, written node by node from the torch modules (no tracing).

``DiT.forward(x, t, y)`` becomes a graph with inputs ``x`` float32 [batch, C, H, W], ``t`` float32 [batch]
(diffusion timesteps), ``y`` int32 [batch] (class labels, ``num_classes`` = the null label) and output ``out``
float32 [batch, out_channels, H, W]. Inside, everything runs in the graph's dtype (fp16 for TensorRT, fp32 for
onnxruntime) except the sinusoidal timestep features, which are computed in fp32 as in torch.

Each ``nn.Linear`` / :class:`~ditas_trt.quant.linear.QuantLinear` goes through a linear emitter
(:mod:`ditas_trt.export.linears`), which is the only difference between the plugin, Q/DQ and FP graphs.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from ditas_trt.models.dit import DiT

OPSET = 21
IR_VERSION = 10
NP_TO_ONNX = {np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.float32): TensorProto.FLOAT}


class GraphBuilder:
    """Collects nodes and initializers; every tensor gets a unique, readable name."""

    def __init__(self, dtype=np.float16):
        self.dtype = np.dtype(dtype)
        self.onnx_dtype = NP_TO_ONNX[self.dtype]
        self.nodes: list = []
        self.initializers: list = []
        self._names: set[str] = set()
        self._consts: dict = {}

    def unique(self, name: str) -> str:
        base, i = name, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def initializer(self, name: str, array: np.ndarray) -> str:
        name = self.unique(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def tensor(self, tensor_proto) -> str:
        """Add a prepared TensorProto (e.g. INT4 raw data) as an initializer under a unique name."""
        tensor_proto.name = self.unique(tensor_proto.name)
        self.initializers.append(tensor_proto)
        return tensor_proto.name

    def weight(self, name: str, value: torch.Tensor) -> str:
        """A float parameter in the graph dtype."""
        return self.initializer(name, value.detach().float().cpu().numpy().astype(self.dtype))

    def const(self, value, dtype=None) -> str:
        """A small shared constant (shapes, axes, scalars)."""
        array = np.asarray(value, dtype=dtype or self.dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self.initializer(f"const_{len(self._consts)}", array)
        return self._consts[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.const(list(values), np.int64)

    def node(self, op: str, inputs: Sequence[str], name: str, n_out: int = 1, domain: str = "", **attrs):
        """Add one node named ``name``; returns its output name (or a list for ``n_out`` > 1)."""
        name = self.unique(name)
        outputs = [name if n_out == 1 else f"{name}/out{i}" for i in range(n_out)]
        for out in outputs:
            self._names.add(out)
        self.nodes.append(helper.make_node(op, list(inputs), outputs, name=name, domain=domain or None, **attrs))
        return outputs[0] if n_out == 1 else outputs

    # Small compound ops --------------------------------------------------------------------------------------
    def silu(self, x: str, name: str) -> str:
        return self.node("Mul", [x, self.node("Sigmoid", [x], f"{name}/sigmoid")], f"{name}/silu")

    def layer_norm(self, x: str, dim: int, eps: float, name: str) -> str:
        ones = self.const(np.ones(dim, self.dtype))
        return self.node("LayerNormalization", [x, ones], name, axis=-1, epsilon=float(eps))

    def modulate(self, x: str, shift: str, scale: str, name: str) -> str:
        axes = self.ints([1])
        scale1 = self.node("Add", [self.node("Unsqueeze", [scale, axes], f"{name}/scale"), self.const(1.0)], f"{name}/one_plus")
        return self.node("Add", [self.node("Mul", [x, scale1], f"{name}/mul"),
                                 self.node("Unsqueeze", [shift, axes], f"{name}/shift")], name)


LinearEmitter = Callable[[GraphBuilder, str, torch.nn.Module, str], str]


def _attention(g: GraphBuilder, attn, x: str, dim: int, linear: LinearEmitter, name: str) -> str:
    heads, head_dim = attn.num_heads, attn.head_dim
    qkv = linear(g, f"{name}.qkv", attn.qkv, x)  # (B, T, 3D)
    qkv = g.node("Reshape", [qkv, g.ints([0, 0, 3, heads, head_dim])], f"{name}/qkv_heads")
    qkv = g.node("Transpose", [qkv], f"{name}/qkv_perm", perm=[2, 0, 3, 1, 4])  # (3, B, H, T, hd)
    q, k, v = (g.node("Squeeze", [part, g.ints([0])], f"{name}/{n}")
               for part, n in zip(g.node("Split", [qkv], f"{name}/split", n_out=3, axis=0, num_outputs=3), "qkv"))
    q = g.node("Mul", [q, g.const(1.0 / math.sqrt(head_dim))], f"{name}/q_scaled")
    scores = g.node("MatMul", [q, g.node("Transpose", [k], f"{name}/k_t", perm=[0, 1, 3, 2])], f"{name}/scores")
    probs = g.node("Softmax", [scores], f"{name}/softmax", axis=-1)
    out = g.node("MatMul", [probs, v], f"{name}/context")  # (B, H, T, hd)
    out = g.node("Transpose", [out], f"{name}/context_perm", perm=[0, 2, 1, 3])
    out = g.node("Reshape", [out, g.ints([0, 0, dim])], f"{name}/merge_heads")
    return linear(g, f"{name}.proj", attn.proj, out)


def _block(g: GraphBuilder, block, x: str, c_act: str, dim: int, linear: LinearEmitter, name: str) -> str:
    mod = linear(g, f"{name}.adaLN_modulation.1", block.adaLN_modulation[1], c_act)  # (B, 6D)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = g.node(
        "Split", [mod], f"{name}/adaLN_split", n_out=6, axis=1, num_outputs=6)
    axes = g.ints([1])
    h = g.modulate(g.layer_norm(x, dim, block.norm1.eps, f"{name}.norm1"), shift_msa, scale_msa, f"{name}/modulate1")
    h = _attention(g, block.attn, h, dim, linear, f"{name}.attn")
    x = g.node("Add", [x, g.node("Mul", [g.node("Unsqueeze", [gate_msa, axes], f"{name}/gate_msa"), h], f"{name}/gated_attn")],
               f"{name}/residual_attn")
    h = g.modulate(g.layer_norm(x, dim, block.norm2.eps, f"{name}.norm2"), shift_mlp, scale_mlp, f"{name}/modulate2")
    h = linear(g, f"{name}.mlp.fc1", block.mlp.fc1, h)
    h = g.node("Gelu", [h], f"{name}.mlp.act", approximate="tanh")
    h = linear(g, f"{name}.mlp.fc2", block.mlp.fc2, h)
    return g.node("Add", [x, g.node("Mul", [g.node("Unsqueeze", [gate_mlp, axes], f"{name}/gate_mlp"), h], f"{name}/gated_mlp")],
                  f"{name}/residual_mlp")


def timestep_frequencies(embedder) -> np.ndarray:
    """The exact fp32 frequencies of ``TimestepEmbedder.timestep_embedding`` (computed by torch, as there)."""
    half = embedder.frequency_embedding_size // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32)
    return torch.exp(exponent / (half - embedder.freq_shift)).numpy()[None, :]  # (1, half)


def build_dit_graph(model: DiT, linear: LinearEmitter, dtype=np.float16, name: str = "dit", batch: str = "batch"):
    """An ONNX ``GraphProto`` computing ``model.forward`` with ``linear`` emitting every linear layer."""
    cfg = model.config
    if model.t_embedder.frequency_embedding_size % 2:
        raise ValueError("odd timestep frequency sizes are not exported")
    g = GraphBuilder(dtype)
    dim, p, c_out = cfg.hidden_size, cfg.patch_size, model.out_channels
    grid = cfg.input_size // p
    f32 = TensorProto.FLOAT

    # Embedders ------------------------------------------------------------------------------------------------
    x = g.node("Cast", ["x"], "x_cast", to=g.onnx_dtype)
    proj = model.x_embedder.proj
    x = g.node("Conv", [x, g.weight("x_embedder.proj.weight", proj.weight), g.weight("x_embedder.proj.bias", proj.bias)],
               "x_embedder.proj", kernel_shape=[p, p], strides=[p, p])  # (B, D, h, w)
    x = g.node("Reshape", [x, g.ints([0, dim, -1])], "x_embedder/flatten")
    x = g.node("Transpose", [x], "x_embedder/tokens", perm=[0, 2, 1])  # (B, T, D)
    x = g.node("Add", [x, g.weight("pos_embed", model.pos_embed)], "pos_embed_add")

    freqs = g.initializer("t_embedder.frequencies", timestep_frequencies(model.t_embedder))
    args = g.node("Mul", [g.node("Unsqueeze", ["t", g.ints([1])], "t_embedder/t_col"), freqs], "t_embedder/args")
    t_freq = g.node("Concat", [g.node("Cos", [args], "t_embedder/cos"), g.node("Sin", [args], "t_embedder/sin")],
                    "t_embedder/features", axis=-1)  # fp32, as in torch
    t_emb = g.node("Cast", [t_freq], "t_embedder/cast", to=g.onnx_dtype)
    t_emb = linear(g, "t_embedder.mlp.0", model.t_embedder.mlp[0], t_emb)
    t_emb = linear(g, "t_embedder.mlp.2", model.t_embedder.mlp[2], g.silu(t_emb, "t_embedder.mlp.1"))
    y_emb = g.node("Gather", [g.weight("y_embedder.embedding_table.weight", model.y_embedder.embedding_table.weight), "y"],
                   "y_embedder", axis=0)
    c = g.node("Add", [t_emb, y_emb], "conditioning")  # (B, D)
    c_act = g.silu(c, "conditioning")  # every adaLN_modulation starts with SiLU(c)

    # Blocks and final layer --------------------------------------------------------------------------------------
    for i, block in enumerate(model.blocks):
        x = _block(g, block, x, c_act, dim, linear, f"blocks.{i}")
    final = model.final_layer
    mod = linear(g, "final_layer.adaLN_modulation.1", final.adaLN_modulation[1], c_act)
    shift, scale = g.node("Split", [mod], "final_layer/adaLN_split", n_out=2, axis=1, num_outputs=2)
    h = g.modulate(g.layer_norm(x, dim, final.norm_final.eps, "final_layer.norm_final"), shift, scale, "final_layer/modulate")
    h = linear(g, "final_layer.linear", final.linear, h)  # (B, T, p*p*c)

    # Unpatchify: (B, h, w, p, q, c) -> (B, c, h, p, w, q) -> (B, c, H, W) ------------------------------------------
    h = g.node("Reshape", [h, g.ints([-1, grid, grid, p, p, c_out])], "unpatchify/split")
    h = g.node("Transpose", [h], "unpatchify/perm", perm=[0, 5, 1, 3, 2, 4])
    h = g.node("Reshape", [h, g.ints([-1, c_out, grid * p, grid * p])], "unpatchify/merge")
    g.node("Cast", [h], "out", to=f32)

    size = cfg.input_size
    inputs = [helper.make_tensor_value_info("x", f32, [batch, cfg.in_channels, size, size]),
              helper.make_tensor_value_info("t", f32, [batch]),
              helper.make_tensor_value_info("y", TensorProto.INT32, [batch])]
    outputs = [helper.make_tensor_value_info("out", f32, [batch, c_out, size, size])]
    return helper.make_graph(g.nodes, name, inputs, outputs, g.initializers)


def make_model(graph, extra_opsets: Optional[dict] = None, metadata: Optional[dict] = None):
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="ditas-trt")
    model.ir_version = IR_VERSION
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=str(value))
    return model

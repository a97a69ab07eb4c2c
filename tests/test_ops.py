import pytest
import torch

from ditas_trt import ops
from ditas_trt.errors import DitasError
from ditas_trt.ops import reference
from ditas_trt.quant import format as fmt


def _layer(k=64, n=48, group=0, bits=4, rank=8, static=True, prescale=False, seed=0):
    torch.manual_seed(seed)
    return fmt.QuantLinearTensors.from_float(
        torch.randn(n, k), torch.randn(n), weight_bits=bits, group_size=group,
        act_amax=torch.tensor(3.0) if static else None,
        act_prescale=torch.linspace(0.5, 1.5, k) if prescale else None,
        lora_down=torch.randn(k, rank) * 0.1 if rank else None, lora_up=torch.randn(rank, n) * 0.1 if rank else None)


def test_group_sums_exact_against_int64():
    torch.manual_seed(0)
    x_q = torch.randint(-128, 128, (9, 4608), dtype=torch.int8)
    codes = torch.randint(-8, 8, (5, 4608), dtype=torch.int8)
    exact = x_q.long() @ codes.long().T
    assert torch.equal(reference.group_sums(x_q, codes, 1)[..., 0].long(), exact)
    w8 = torch.randint(-128, 128, (5, 4608), dtype=torch.int8)  # float64 path for 8-bit weights
    assert torch.equal(reference.group_sums(x_q, w8, 1)[..., 0].long(), x_q.long() @ w8.long().T)
    per_group = reference.group_sums(x_q, codes, 36)
    assert torch.equal(per_group.long().sum(-1), exact)


@pytest.mark.parametrize("bits,group,static,prescale,rank", [
    (4, 0, True, False, 8), (4, 16, False, False, 0), (4, 32, True, True, 4), (8, 0, False, True, 8)])
def test_linear_op_matches_float_computation_on_dequantized_values(bits, group, static, prescale, rank):
    layer = _layer(group=group, bits=bits, rank=rank, static=static, prescale=prescale)
    x = torch.randn(3, 5, 64)
    y = ops.quantized_linear(x, layer)
    rows = x.reshape(-1, 64)
    x_q, s_x = fmt.quantize_activation(rows, layer.act_scale, layer.act_prescale)
    x_hat = x_q.double() * s_x.double().reshape(-1, 1)
    expected = x_hat @ layer.dequantized_weight().double().T + layer.bias.double()
    if rank:
        expected += rows.double() @ layer.lora_down.double() @ layer.lora_up.double()
    assert torch.allclose(y.reshape(-1, 48).double(), expected, rtol=1e-5, atol=1e-4)


def test_quantize_act_op_returns_lora_down():
    layer = _layer(rank=8)
    x = torch.randn(7, 64)
    x_q, s, lora_act = ops.quantize_activation(x, act_scale=layer.act_scale, lora_down=layer.lora_down)
    assert x_q.dtype == torch.int8 and s.shape == (1,)
    assert torch.allclose(lora_act, x @ layer.lora_down.float())
    _, s_dyn, empty = ops.quantize_activation(x)
    assert s_dyn.shape == (7,) and empty.shape == (7, 0)


def test_fp16_input_gives_fp16_output():
    layer = _layer()
    y = ops.quantized_linear(torch.randn(4, 64).half(), layer)
    assert y.dtype == torch.float16


def test_op_checks_have_clear_messages():
    layer = _layer()
    x_q = torch.zeros(4, 64, dtype=torch.int8)
    with pytest.raises(DitasError, match="x_q must be int8"):
        ops.w4a8_gemm(x_q.float(), torch.ones(1), layer.qweight, layer.w_scale)
    with pytest.raises(DitasError, match=r"qweight must be torch.uint8 \[N, 32\]"):
        ops.w4a8_gemm(x_q, torch.ones(1), layer.qweight[:, :16], layer.w_scale)
    with pytest.raises(DitasError, match="x_scale"):
        ops.w4a8_gemm(x_q, torch.ones(3), layer.qweight, layer.w_scale)
    with pytest.raises(DitasError, match="lora_act"):
        ops.w4a8_gemm(x_q, torch.ones(1), layer.qweight, layer.w_scale, lora_act=torch.zeros(4, 3), lora_up=layer.lora_up)
    with pytest.raises(DitasError, match="input has 10 features"):
        ops.quantized_linear(torch.zeros(2, 10), layer)
    with pytest.raises(DitasError, match="act_prescale"):
        ops.quantize_activation(torch.zeros(2, 64), act_prescale=torch.ones(3))


def test_ops_pass_torch_library_checks_and_compile():
    layer = _layer(rank=4)
    x = torch.randn(6, 64)
    x_q, s, act = ops.quantize_activation(x, act_scale=layer.act_scale, lora_down=layer.lora_down)
    torch.library.opcheck(torch.ops.ditas_trt.quantize_act.default, (x, layer.act_scale, None, layer.lora_down))
    torch.library.opcheck(torch.ops.ditas_trt.w4a8_gemm.default,
                          (x_q, s, layer.qweight, layer.w_scale, layer.bias, act, layer.lora_up, torch.float32))
    compiled = torch.compile(lambda inp: ops.quantized_linear(inp, layer), fullgraph=True)
    assert torch.equal(compiled(x), ops.quantized_linear(x, layer))

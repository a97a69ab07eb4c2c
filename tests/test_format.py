import pytest
import torch

from ditas_trt.errors import DitasError
from ditas_trt.quant import format as fmt


def test_pack_low_nibble_first_and_twos_complement():
    q = torch.tensor([[1, 2, -1, 7, -8, 0]], dtype=torch.int8)
    packed = fmt.pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (1, 3)
    assert packed.tolist() == [[0x21, 0x7F, 0x08]]


def test_unpack_every_byte_and_round_trip():
    every_byte = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(16, 16)
    codes = fmt.unpack_int4(every_byte)
    assert codes.shape == (16, 32) and codes.min() == -8 and codes.max() == 7
    assert torch.equal(fmt.pack_int4(codes), every_byte)
    q = torch.randint(-8, 8, (33, 64), dtype=torch.int8)
    assert torch.equal(fmt.unpack_int4(fmt.pack_int4(q)), q)


def test_pack_rejects_bad_input():
    with pytest.raises(DitasError, match="even"):
        fmt.pack_int4(torch.zeros(2, 3, dtype=torch.int8))
    with pytest.raises(DitasError, match=r"\[-8, 7\]"):
        fmt.pack_int4(torch.tensor([[8, 0]], dtype=torch.int8))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [0, 16, 32])
def test_weight_quantization_bounds(bits, group):
    torch.manual_seed(0)
    w = torch.randn(24, 64) * torch.linspace(0.1, 3, 64)
    q, s = fmt.quantize_weight(w, bits, group)
    g = group or 64
    assert s.shape == (24, 64 // g) and s.dtype == torch.float32
    limit = fmt.qmax(bits)
    assert q.min() >= -limit - 1 and q.max() <= limit
    err = (fmt.dequantize_weight(q, s) - w).abs().reshape(24, 64 // g, g)
    assert (err <= s.unsqueeze(-1) / 2 + 1e-6).all()
    # the largest magnitude of each group is representable exactly
    amax_codes = q.reshape(24, 64 // g, g).abs().amax(-1)
    assert (amax_codes == limit).all()


def test_group_size_must_divide():
    with pytest.raises(DitasError, match="does not divide"):
        fmt.quantize_weight(torch.randn(4, 48), 4, 32)


def test_activation_quantization_dynamic_and_static():
    torch.manual_seed(0)
    x = torch.randn(5, 32) * 3
    q, s = fmt.quantize_activation(x)
    assert s.shape == (5,) and torch.allclose(s, x.abs().amax(1) / 127)
    assert (q.abs().amax(1) == 127).all()
    assert ((q.float() * s[:, None] - x).abs() <= s[:, None] / 2 + 1e-6).all()
    q2, s2 = fmt.quantize_activation(x, torch.tensor([0.01]))
    assert s2.shape == (1,) and q2.min() == -128 and q2.max() == 127  # static scale saturates
    pre = torch.linspace(0.5, 2, 32)
    q3, s3 = fmt.quantize_activation(x, act_prescale=pre)
    assert torch.equal(q3, fmt.quantize_activation(x * pre)[0])


def test_activation_rounding_is_half_to_even():
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, 127.0]])
    q, _ = fmt.quantize_activation(x, torch.tensor([1.0]))
    assert q.tolist() == [[0, 2, 2, 0, 127]]


def test_zero_rows_quantize_to_zero():
    q, s = fmt.quantize_activation(torch.zeros(2, 8))
    assert (q == 0).all() and (s > 0).all()


def test_tensors_validate_shapes_and_round_trip_state_dict():
    torch.manual_seed(0)
    layer = fmt.QuantLinearTensors.from_float(torch.randn(8, 32), torch.randn(8), group_size=16,
                                             act_amax=torch.tensor(2.0), lora_down=torch.randn(32, 4),
                                             lora_up=torch.randn(4, 8), act_prescale=torch.ones(32))
    tensors, meta = fmt.state_dict_entries({"blocks.0.attn.qkv": layer})
    back = fmt.layers_from_state_dict(tensors, meta)["blocks.0.attn.qkv"]
    for key, value in layer.tensors().items():
        assert torch.equal(getattr(back, key), value)
    bad = dict(tensors)
    bad["blocks.0.attn.qkv.w_scale"] = torch.zeros(8, 3)
    with pytest.raises(DitasError, match="w_scale"):
        fmt.layers_from_state_dict(bad, meta)
    bad = dict(tensors)
    del bad["blocks.0.attn.qkv.lora_up"]
    with pytest.raises(DitasError, match="missing tensor 'lora_up'"):
        fmt.layers_from_state_dict(bad, meta)
    with pytest.raises(DitasError, match="metadata"):
        fmt.layers_from_state_dict(tensors, {})
    with pytest.raises(DitasError, match="metadata is not readable"):
        fmt.layers_from_state_dict(tensors, {**meta, "ditas_quant_layers": '{"blocks.0.attn.qkv": {"bits": 4}}'})
    with pytest.raises(DitasError, match="format version 0"):
        fmt.layers_from_state_dict(tensors, {**meta, "format_version": "0"})


def test_config_rejects_bad_values():
    with pytest.raises(DitasError, match="bits"):
        fmt.QuantLinearConfig(32, 8, weight_bits=3).validate()
    with pytest.raises(DitasError, match="activation mode"):
        fmt.QuantLinearConfig(32, 8, act_mode="per-channel").validate()
    with pytest.raises(DitasError, match="even"):
        fmt.QuantLinearConfig(33, 8).validate()

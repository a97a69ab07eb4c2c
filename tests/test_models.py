import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ditas_trt.errors import DitasError
from ditas_trt.models import DiT, DiT_models, DiTConfig, infer_config, load_dit, save_dit
from ditas_trt.models.dit import get_2d_sincos_pos_embed

from conftest import REPO

GOLDEN = REPO / "tests" / "data" / "original_dit_golden.safetensors"


def golden_model():
    data = load_file(str(GOLDEN))
    model = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=5)
    model.load_state_dict({k[len("weights."):]: v for k, v in data.items() if k.startswith("weights.")})
    return model.eval(), data


def test_matches_original_implementation_outputs():
    model, data = golden_model()
    with torch.no_grad():
        out = model(data["forward.x"], data["forward.t"], data["forward.y"])
        cfg = model.forward_with_cfg(data["forward.x"], data["forward.t"], data["forward.y"], 4.0)
    # the golden file used timm's explicit softmax attention; we use fused SDPA: float precision, not bits
    assert torch.allclose(out, data["forward.out"], atol=2e-6, rtol=1e-5)
    assert torch.allclose(cfg, data["cfg.out"], atol=2e-6, rtol=1e-5)


def test_parameter_names_follow_the_original_layout():
    names = set(DiT_models["DiT-S/2"](input_size=8, num_classes=3).state_dict())
    for expected in ["pos_embed", "x_embedder.proj.weight", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.bias",
                     "y_embedder.embedding_table.weight", "blocks.11.attn.qkv.weight", "blocks.0.attn.proj.bias",
                     "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight", "blocks.0.adaLN_modulation.1.weight",
                     "final_layer.linear.weight", "final_layer.adaLN_modulation.1.bias"]:
        assert expected in names
    assert DiT_models["DiT-S/2"](input_size=8, num_classes=3).y_embedder.embedding_table.weight.shape[0] == 4


def test_all_original_configs_exist():
    for size in ["XL", "L", "B", "S"]:
        for patch in [2, 4, 8]:
            assert f"DiT-{size}/{patch}" in DiT_models
    xl = DiT_models["DiT-XL/2"](input_size=4, num_classes=2).config
    assert (xl.depth, xl.hidden_size, xl.num_heads, xl.patch_size) == (28, 1152, 16, 2)


def test_pos_embed_is_fixed_sincos(tiny_dit):
    expected = torch.from_numpy(get_2d_sincos_pos_embed(64, 4)).float()
    assert torch.equal(DiT(input_size=8, patch_size=2, hidden_size=64, depth=1, num_heads=4).pos_embed[0], expected)
    assert not tiny_dit.pos_embed.requires_grad
    # first half of the channels encodes the column, the second half the row
    assert torch.equal(expected[0, :32], expected[4, :32]) and not torch.equal(expected[0, 32:], expected[4, 32:])


def test_unpatchify_inverts_patch_order(tiny_dit):
    x = torch.randn(2, 8, 8, 8)
    p, c = 2, tiny_dit.out_channels
    tokens = x.reshape(2, c, 4, p, 4, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, p * p * c)
    assert torch.equal(tiny_dit.unpatchify(tokens), x)


def test_cfg_scale_one_equals_conditional_forward(tiny_dit):
    x = torch.randn(3, 4, 8, 8)
    x2 = torch.cat([x, x])
    t = torch.tensor([5, 500, 999] * 2)
    y = torch.tensor([1, 2, 3, 6, 6, 6])
    with torch.no_grad():
        guided = tiny_dit.forward_with_cfg(x2, t, y, 1.0)
        plain = tiny_dit(x2, t, y)
    assert torch.allclose(guided[:3], plain[:3], atol=1e-6)


def test_cfg_guides_first_three_channels_like_the_original(tiny_dit):
    x = torch.randn(2, 4, 8, 8)
    x2 = torch.cat([x, x])
    t = torch.tensor([10, 10, 10, 10])
    y = torch.tensor([1, 2, 6, 6])
    with torch.no_grad():
        out = tiny_dit.forward_with_cfg(x2, t, y, 3.0)
        raw = tiny_dit(x2, t, y)
    assert torch.allclose(out[:2, 3:], raw[:2, 3:])  # channel 3 and the variance channels are not guided
    assert torch.allclose(out[:2, :3], raw[2:, :3] + 3.0 * (raw[:2, :3] - raw[2:, :3]), atol=1e-5)


def test_label_dropout_uses_null_class(tiny_dit):
    labels = torch.tensor([0, 1, 2])
    dropped = tiny_dit.y_embedder.token_drop(labels, force_drop_ids=torch.tensor([1, 0, 1]))
    assert dropped.tolist() == [6, 1, 6]


@pytest.mark.parametrize("name", ["DiT-XL/2", "DiT-L/4", "DiT-B/8", "DiT-S/2", "DiT-XS/4", "DiT-T/2"])
def test_config_inference_from_tensors(name):
    model = DiT_models[name](input_size=16, num_classes=7, in_channels=3)
    inferred = infer_config(model.state_dict())
    assert inferred == model.config


def test_config_inference_rejects_non_dit():
    with pytest.raises(DitasError, match="missing"):
        infer_config({"weight": torch.zeros(3)})


def save_pt(obj, path):
    torch.save(obj, path)
    return path


def test_loads_plain_and_training_checkpoints_preferring_ema(tmp_path, tiny_dit):
    state = tiny_dit.state_dict()
    other = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 900]), torch.tensor([0, 5])
    with torch.no_grad():
        expected = tiny_dit(x, t, y)
        plain = load_dit(save_pt(state, tmp_path / "plain.pt"))
        assert torch.equal(plain(x, t, y), expected)
        import argparse
        train = load_dit(save_pt({"model": other, "ema": state, "opt": {}, "args": argparse.Namespace(lr=1)}, tmp_path / "train.pt"))
        assert torch.equal(train(x, t, y), expected)
        model_only = load_dit(save_pt({"model": state}, tmp_path / "model.pt"))
        assert torch.equal(model_only(x, t, y), expected)
        ddp = load_dit(save_pt({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt"))
        assert torch.equal(ddp(x, t, y), expected)


def test_safetensors_with_and_without_metadata(tmp_path, tiny_dit):
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 900]), torch.tensor([0, 5])
    save_dit(tiny_dit, tmp_path / "m.safetensors")
    save_file({k: v.contiguous() for k, v in tiny_dit.state_dict().items()}, str(tmp_path / "bare.safetensors"))
    with torch.no_grad():
        expected = tiny_dit(x, t, y)
        assert torch.equal(load_dit(tmp_path / "m.safetensors")(x, t, y), expected)
        assert torch.equal(load_dit(tmp_path / "bare.safetensors")(x, t, y), expected)


def test_named_model_must_fit_the_weights(tmp_path, tiny_dit):
    path = save_pt(tiny_dit.state_dict(), tmp_path / "m.pt")
    with pytest.raises(DitasError, match="does not fit"):
        load_dit(path, "DiT-S/2")
    with pytest.raises(DitasError, match="unknown model 'DiT-Q/3'"):
        load_dit(path, "DiT-Q/3")


def test_checkpoint_never_runs_code(tmp_path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(DitasError, match="refused to load"):
        load_dit(path)


def test_truncated_and_missing_files(tmp_path, tiny_dit):
    save_dit(tiny_dit, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DitasError, match="truncated or corrupt"):
        load_dit(tmp_path / "cut.safetensors")
    torch.save(tiny_dit.state_dict(), tmp_path / "m.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:1000])
    with pytest.raises(DitasError, match="cut.pt"):
        load_dit(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("junk\n")  # the legacy unpickler fails with a KeyError on this one
    with pytest.raises(DitasError, match="text.pt: not a readable PyTorch checkpoint"):
        load_dit(tmp_path / "text.pt")
    with pytest.raises(DitasError, match="file not found"):
        load_dit(tmp_path / "nope.pt")


def test_diffusers_layout_matches_diffusers_module(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                          num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=5).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for block in ref.transformer_blocks[1:]:  # converted checkpoints share one embedder, like the original
            block.norm1.emb.load_state_dict(ref.transformer_blocks[0].norm1.emb.state_dict())
    ref.save_pretrained(tmp_path / "transformer")
    ours = load_dit(tmp_path)
    assert ours.config.timestep_freq_shift == 1 and ours.config.depth == 2 and ours.config.num_classes == 5
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 400, 999]), torch.tensor([0, 4, 5])
    with torch.no_grad():
        expected = ref(x, timestep=t, class_labels=y).sample
        got = ours(x, t, y)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        ref.transformer_blocks[1].norm1.emb.class_embedder.embedding_table.weight.add_(1.0)
    ref.save_pretrained(tmp_path / "untied")
    with pytest.raises(DitasError, match="different timestep/label embedders"):
        load_dit(tmp_path / "untied")


def test_embedded_model_loads_and_has_its_config():
    from ditas_trt.models.embedded import EMBEDDED_CONFIG, EMBEDDED_PATH

    model = load_dit(EMBEDDED_PATH)
    assert model.config == DiTConfig(**EMBEDDED_CONFIG)
    assert EMBEDDED_PATH.stat().st_size < 10 * 2**20
    info = json.loads((EMBEDDED_PATH.parent / (EMBEDDED_PATH.name + ".json")).read_text())
    assert info["fp_sample_accuracy"] > 0.9

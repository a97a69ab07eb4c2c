"""DiTAS in ModelOpt: recipes, TAS statistics, folding, alpha search, LoRA, the registered mode, export."""
import copy
import importlib
import subprocess
import sys

import pytest
import torch

from conftest import REPO, make_tiny_dit
from ditas_trt.errors import DitasError
from ditas_trt.quant.calibration import CalibrationSettings, load_or_record
from ditas_trt.quant.config import DITAS_W4A8_CFG, DITAS_W8A8_CFG, QuantRecipe, alpha_grid, preset
from ditas_trt.quant.lora import alternate, low_rank
from ditas_trt.quant.search import fake_quantize_activation, fake_quantize_weights, search_alpha
from ditas_trt.quant.smoothing import InputRecorder, smooth_fp_model, smoothing_scale

FAST = dict(alpha_grid=(0.0, 0.3, 0.6, 0.9), lowrank=8, lora_iters=3, tokens_per_step=64)
SETTINGS = dict(per_class=1, steps=4)


def _inputs(n=4, num_classes=6):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, 4, 8, 8, generator=g), torch.tensor([5, 250, 600, 990])[:n],
            torch.tensor([0, 3, 5, num_classes])[:n])


@pytest.fixture(scope="module")
def quantized():
    """The tiny DiT quantized once with a fast DiTAS recipe (shared by the round-trip and export tests)."""
    from ditas_trt.quant.ditas import quantize_dit

    model = make_tiny_dit()
    fp = copy.deepcopy(model)
    result = quantize_dit(model, QuantRecipe(**FAST), CalibrationSettings(**SETTINGS), progress=False)
    return fp, result


# ---------------------------------------------------------------------------------------------------------------
# Recipes and configs
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes,fragment", [
    (dict(weight_bits=3), "weight bits"),
    (dict(group_size=3), "even"),
    (dict(group_size=-1), "group size"),
    (dict(act_mode="per-channel"), "activation mode"),
    (dict(alpha_grid=(0.5, 1.5)), "[0, 1]"),
    (dict(alpha_grid=()), "empty"),
    (dict(alpha_grid=(0.5, 0.5)), "repeated"),
    (dict(lowrank=-1), "lowrank"),
    (dict(lora_iters=0), "lora-iters"),
    (dict(timestep_stats="mean"), "timestep statistics"),
    (dict(search_lora="always"), "search LoRA"),
    (dict(layers=()), "layer patterns"),
])
def test_recipe_validation(changes, fragment):
    with pytest.raises(DitasError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        preset("w4a8", **changes)


def test_presets_are_list_style_modelopt_configs():
    from modelopt.torch.quantization.config import QuantizeConfig

    for cfg, bits in ((DITAS_W4A8_CFG, 4), (DITAS_W8A8_CFG, 8)):
        assert cfg["quant_cfg"][0] == {"quantizer_name": "*", "enable": False}
        weights = [e for e in cfg["quant_cfg"] if e["quantizer_name"].endswith("weight_quantizer")]
        assert len(weights) == 4 and all(e["cfg"]["num_bits"] == bits for e in weights)
        assert cfg["algorithm"]["method"] == "ditas"
        QuantizeConfig(**cfg)  # ModelOpt accepts it
    assert alpha_grid() == tuple(round(0.05 * i, 6) for i in range(21))


def test_ditas_config_bounds_and_bad_algorithm(tiny_dit):
    from pydantic import ValidationError

    from ditas_trt.quant.ditas import quantize
    from ditas_trt.quant.mode import DitasConfig

    defaults = DitasConfig().model_dump()
    for key, value in QuantRecipe().algorithm().items():  # the typed recipe and the ModelOpt config agree
        if key not in ("weight_group_size", "act_mode"):
            assert defaults[key] == value, key
    for bad in (dict(alpha_grid=[1.2]), dict(lowrank=-2), dict(lora_iters=0), dict(act_mode="sometimes"),
                dict(search_lora="x"), dict(layers=[])):
        with pytest.raises(ValidationError):
            DitasConfig(**bad)
    cfg = copy.deepcopy(DITAS_W4A8_CFG)
    cfg["algorithm"]["lora_iters"] = 0
    with pytest.raises(DitasError, match="lora_iters"):
        quantize(copy.deepcopy(tiny_dit), cfg, lambda m: None)


def test_pattern_matching_nothing_fails_clearly(tiny_dit):
    from ditas_trt.quant.ditas import check_recipe, quantize

    typo = QuantRecipe(layers=("*blocks.*.attn.qkvv",)).validate()
    with pytest.raises(DitasError, match=r"qkvv.*matches no"):
        check_recipe(tiny_dit, typo, CalibrationSettings())
    with pytest.raises(DitasError, match=r"qkvv\.weight_quantizer.*matches no quantizer"):
        quantize(copy.deepcopy(tiny_dit), typo.to_modelopt(), lambda m: None)


# ---------------------------------------------------------------------------------------------------------------
# TAS statistics, smoothing factors, folding
# ---------------------------------------------------------------------------------------------------------------
def test_tas_statistics_over_calls():
    rec = InputRecorder(in_features=3, rows_per_call=2, seed=0)
    calls = [torch.tensor([[[1.0, -5.0, 0.5], [0.2, 0.1, 0.3]]]),
             torch.tensor([[[-2.0, 1.0, 0.1], [0.0, 0.0, 4.0]]]),
             torch.tensor([[[0.5, 0.5, 0.5], [0.5, -0.5, 0.5]]])]
    for x in calls:
        rec(None, (x,))
    assert rec.calls == 3
    assert torch.equal(rec.amax("all"), torch.tensor([2.0, 5.0, 4.0]))  # max over every timestep
    assert torch.equal(rec.amax("single", 0), torch.tensor([1.0, 5.0, 0.5]))
    assert torch.equal(rec.amax("single"), torch.tensor([2.0, 1.0, 4.0]))  # -1: the middle call
    assert rec.inputs().shape == (6, 3)
    x = torch.randn(2, 16, 4)
    big, again = InputRecorder(in_features=4, rows_per_call=5, seed=3), InputRecorder(in_features=4, rows_per_call=5, seed=3)
    big(None, (x,))
    again(None, (x,))
    assert big.rows[0].shape == (5, 4) and big.cache_bytes() == 5 * 4 * 2  # 5 of 32 rows, fp16
    assert torch.equal(big.rows[0], again.rows[0])  # seeded subsampling


def test_smoothing_scale_formula():
    a, w = torch.tensor([4.0, 1.0, 0.0]), torch.tensor([0.25, 1.0, 2.0])
    s = smoothing_scale(a, w, 0.5)
    assert torch.allclose(s[:2], torch.tensor([4.0, 1.0]))
    assert s[2] > 0  # dead channels stay finite
    assert torch.allclose(smoothing_scale(a, w, torch.tensor([0.0, 1.0]))[:, :2], torch.tensor([[4.0, 1.0], [4.0, 1.0]]))


def test_folding_keeps_fp_outputs(tiny_dit):
    x, t, y = _inputs()
    ref = tiny_dit(x, t, y)
    model = copy.deepcopy(tiny_dit)
    g = torch.Generator().manual_seed(2)
    scales = {}
    for name, module in model.named_modules():
        if name.endswith(("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")) or name == "final_layer.linear":
            scales[name] = torch.exp(torch.randn(module.in_features, generator=g))  # s in ~[0.05, 20]
    placed = smooth_fp_model(model, scales)
    assert placed["blocks.0.attn.qkv"] == "modulation:blocks.0.adaLN_modulation.1"
    assert placed["blocks.1.mlp.fc1"] == "modulation:blocks.1.adaLN_modulation.1"
    assert placed["blocks.0.attn.proj"] == "v_rows:blocks.0.attn.qkv"
    assert placed["final_layer.linear"] == "modulation:final_layer.adaLN_modulation.1"
    assert placed["blocks.1.mlp.fc2"] == "prescale"
    out = model(x, t, y)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_v_row_fold_into_quantized_qkv_is_exact():
    from ditas_trt import ops
    from ditas_trt.quant.export import _Layer, pack_layer

    torch.manual_seed(0)
    w, b = torch.randn(48, 32), torch.randn(48)
    rows = torch.ones(48)
    rows[32:] = torch.rand(16) + 0.1
    common = dict(bias=b, bits=4, group_size=16, act_amax=torch.tensor([3.0]), prescale=None,
                  lora_r=torch.randn(4, 32) * 0.01, lora_l=torch.randn(48, 4) * 0.01)
    plain = pack_layer("qkv", _Layer(weight=w, row_scale=torch.ones(48), **common))
    folded = pack_layer("qkv", _Layer(weight=w, row_scale=rows, **common))
    assert torch.equal(plain.qweight, folded.qweight)  # the INT4 codes do not move
    x = torch.randn(10, 32)
    expected = ops.quantized_linear(x, plain) * rows
    assert torch.allclose(ops.quantized_linear(x, folded), expected, rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Alpha search and LoRA
# ---------------------------------------------------------------------------------------------------------------
def _loss_by_hand(x, w, amax, alpha, deployed_weight):
    """The search's loss at one alpha; ``deployed_weight(W·diag(s))`` is the weight the layer would compute with."""
    s = smoothing_scale(amax, w.abs().amax(dim=0), alpha)
    wq = deployed_weight(w * s)
    xq = fake_quantize_activation(x / s, (amax / s).amax())
    return float(((xq @ wq.T - x @ w.T) ** 2).mean())


@pytest.mark.parametrize("bits", [4, 8])
def test_alpha_search_picks_the_known_best(bits):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=g)
    x[:, 3] *= 80.0  # activation outlier channels: the case smoothing exists for
    x[:, 17] *= 40.0
    w = torch.randn(96, 64, generator=g) * 0.05
    amax = x.abs().amax(dim=0)
    grid = alpha_grid(0.1)
    result = search_alpha(x, w, amax, grid, bits=bits)
    by_hand = [_loss_by_hand(x, w, amax, a, lambda w_s: fake_quantize_weights(w_s, bits, 0)) for a in grid]
    assert result.losses == pytest.approx(by_hand, rel=1e-4)
    assert result.alpha == grid[min(range(len(grid)), key=by_hand.__getitem__)]
    assert 0.3 <= result.alpha <= 0.9  # neither extreme: outliers must move, but not all into the weights
    assert min(result.losses) < 0.5 * result.losses[0]


@pytest.mark.parametrize("search_lora", ["cheap", "full"])
def test_alpha_search_scores_the_lora_corrected_weight(search_lora):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 64, generator=g)
    x[:, 5] *= 60.0
    w = torch.randn(48, 64, generator=g) * 0.05
    amax = x.abs().amax(dim=0)
    grid = (0.0, 0.5, 1.0)
    result = search_alpha(x, w, amax, grid, bits=4, lowrank=4, search_lora=search_lora, lora_iters=3)

    def quant(t):
        return fake_quantize_weights(t, 4, 0)

    def with_lora(w_s):
        if search_lora == "cheap":  # one truncated SVD of the rounding error
            lora_l, lora_r = low_rank(w_s - quant(w_s), 4)
            return quant(w_s) + lora_l @ lora_r
        lora = alternate(w_s, 4, 3, quant)  # the whole alternation
        return quant(lora.base) + lora.lora_l @ lora.lora_r

    by_hand = [_loss_by_hand(x, w, amax, a, with_lora) for a in grid]
    assert result.losses == pytest.approx(by_hand, rel=1e-4)
    plain = search_alpha(x, w, amax, grid, bits=4)
    assert all(a < b for a, b in zip(result.losses, plain.losses))  # the branch lowers the error at every alpha


def test_lora_reduces_weight_error():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(256, 128, generator=g) * 0.02 + torch.randn(256, 4, generator=g) @ torch.randn(4, 128, generator=g) * 0.05
    result = alternate(w, 16, 6, lambda t: fake_quantize_weights(t, 4, 0))
    errors = result.errors
    assert errors[1] < errors[0] * 0.9  # the LoRA branch removes a good part of the INT4 error
    assert all(b <= a * 1.01 for a, b in zip(errors[1:], errors[2:]))  # non-increasing (1 % slack)
    assert errors[result.best_iteration] == min(errors[1:])
    q = fake_quantize_weights(result.base, 4, 0)
    err = float((w - q - result.lora_l @ result.lora_r).norm() / w.norm())
    assert err == pytest.approx(min(errors[1:]), rel=1e-4)
    u, s, vh = torch.linalg.svd(w)
    lo_l, lo_r = low_rank(w, 8)
    assert torch.allclose(lo_l @ lo_r, (u[:, :8] * s[:8]) @ vh[:8], atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# The ModelOpt mode
# ---------------------------------------------------------------------------------------------------------------
def test_mode_is_registered_once_and_guarded():
    from typing import Literal

    from modelopt.torch.opt.config import ModeloptBaseConfig, ModeloptField
    from modelopt.torch.opt.mode import _ModeRegistryCls
    from modelopt.torch.quantization.mode import BaseCalibrateModeDescriptor, CalibrateModeRegistry

    from ditas_trt.quant import mode

    assert BaseCalibrateModeDescriptor._get_mode_name("ditas") in CalibrateModeRegistry
    assert isinstance(_ModeRegistryCls.get_from_any("ditas_calibrate"), mode.DitasModeDescriptor)
    assert mode.register() is False  # already there: no second registration, no error
    importlib.reload(mode)  # re-executing the module is guarded too
    assert "ditas_calibrate" in CalibrateModeRegistry
    with pytest.raises(AssertionError, match="BaseCalibrateModeDescriptor"):
        CalibrateModeRegistry.register_mode(type("NotADescriptor", (), {}))

    class NotAnAlgorithmConfig(ModeloptBaseConfig):  # a ModelOpt config, but not a calibration-algorithm one
        method: Literal["ditas_bad"] = ModeloptField("ditas_bad")

    class BadDescriptor(BaseCalibrateModeDescriptor):
        _calib_func = None

        @property
        def config_class(self):
            return NotAnAlgorithmConfig

    with pytest.raises(AssertionError, match="QuantizeAlgorithmConfig"):
        CalibrateModeRegistry.register_mode(BadDescriptor)


def test_hook_registers_the_mode_lazily_in_a_fresh_process():
    code = ("import sys, ditas_trt\n"
            "assert 'modelopt' not in sys.modules, 'importing ditas_trt must not import ModelOpt'\n"
            "import modelopt.torch.quantization\n"
            "from modelopt.torch.quantization.mode import CalibrateModeRegistry\n"
            "assert 'ditas_calibrate' in CalibrateModeRegistry\n"
            "import modelopt.torch.quantization as again\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
    code = ("import modelopt.torch.quantization\nimport ditas_trt\n"
            "from modelopt.torch.quantization.mode import CalibrateModeRegistry\n"
            "assert 'ditas_calibrate' in CalibrateModeRegistry\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_save_restore_round_trip_and_fresh_process(quantized, tmp_path):
    import modelopt.torch.opt as mto

    from ditas_trt.models.loading import build_dit

    _, result = quantized
    x, t, y = _inputs()
    with torch.no_grad():
        expected = result.model(x, t, y)
    mto.save(result.model, tmp_path / "m.pth")
    restored = mto.restore(build_dit(result.model.config), str(tmp_path / "m.pth")).eval()
    with torch.no_grad():
        assert torch.equal(restored(x, t, y), expected)
    assert restored.blocks[0].attn.qkv.weight_quantizer.svdquant_lora_a is not None
    torch.save({"x": x, "t": t, "y": y, "out": expected}, tmp_path / "io.pt")
    code = ("import torch, ditas_trt, modelopt.torch.opt as mto\n"
            "from ditas_trt.models.dit import DiTConfig\nfrom ditas_trt.models.loading import build_dit\n"
            f"cfg = DiTConfig(**{result.model.config.to_dict()!r})\n"
            f"m = mto.restore(build_dit(cfg), {str(tmp_path / 'm.pth')!r}).eval()\n"
            f"d = torch.load({str(tmp_path / 'io.pt')!r})\n"
            "with torch.no_grad():\n    assert torch.equal(m(d['x'], d['t'], d['y']), d['out'])\nprint('same')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0 and "same" in proc.stdout, proc.stderr[-2000:]


def test_modelopt_fake_quant_and_packed_model_agree(quantized):
    from ditas_trt.quant.linear import QuantLinear

    fp, result = quantized
    x, t, y = _inputs()
    with torch.no_grad():
        ref, fake, packed = fp(x, t, y), result.model(x, t, y), result.packed(x, t, y)
    quant_error = (fake - ref).abs().max()
    assert quant_error > 0
    assert (packed - fake).abs().max() < 0.1 * quant_error  # same arithmetic up to float/fp16 rounding
    layers = [m for m in result.packed.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 8 and all(m.config.rank == 8 and m.config.act_mode == "static" for m in layers)
    assert result.packed.blocks[0].mlp.fc2.act_prescale is not None  # fc2: the one explicit pre-scale
    assert result.packed.blocks[0].attn.qkv.act_prescale is None  # qkv: folded into adaLN
    report = result.report
    assert set(report["alpha"]) == {n for n, m in result.packed.named_modules() if isinstance(m, QuantLinear)}
    assert all(a in FAST["alpha_grid"] for a in report["alpha"].values())


@pytest.mark.parametrize("changes", [dict(group_size=32, act_mode="dynamic", lowrank=0), dict(weight_bits=8)])
def test_other_formats_export_and_agree(tiny_dit, changes):
    from ditas_trt.quant.ditas import quantize_dit

    model = copy.deepcopy(tiny_dit)
    recipe = QuantRecipe(**{**FAST, "alpha_grid": (0.5,), **changes})
    result = quantize_dit(model, recipe, CalibrationSettings(**SETTINGS), progress=False)
    layer = result.packed.blocks[1].mlp.fc1
    assert layer.config.group_size == recipe.group_size and layer.config.act_mode == recipe.act_mode
    assert layer.config.weight_bits == recipe.weight_bits
    x, t, y = _inputs()
    with torch.no_grad():
        ref, fake, packed = tiny_dit(x, t, y), result.model(x, t, y), result.packed(x, t, y)
    assert (packed - fake).abs().max() < 0.1 * (fake - ref).abs().max() + 1e-5


def test_load_quantized_refuses_another_model(quantized, tmp_path, tiny_dit):
    from ditas_trt.quant.output import load_modelopt, write_calibration_dir
    from ditas_trt.quant.packed import load_quantized

    _, result = quantized
    out = write_calibration_dir(result, tmp_path / "q")
    assert sorted(p.name for p in out.iterdir()) == ["ditas.json", "modelopt.pth", "quantized.safetensors",
                                                     "quantized.safetensors.json"]
    assert load_quantized(out, expect_config=result.model.config).config == result.model.config
    with pytest.raises(DitasError, match="different model"):
        load_quantized(out, expect_config=tiny_dit.config.__class__(**{**tiny_dit.config.to_dict(), "depth": 3}))
    with pytest.raises(DitasError, match="already exists"):
        write_calibration_dir(result, out)
    x, t, y = _inputs()
    with torch.no_grad():
        assert torch.equal(load_modelopt(out)(x, t, y), result.model(x, t, y))
    assert [p.name for p in tmp_path.iterdir()] == ["q"]  # no temporary folders left behind


def test_calibration_dir_is_all_or_nothing(quantized, tmp_path, monkeypatch):
    import stat

    from ditas_trt.quant import packed
    from ditas_trt.quant.output import write_calibration_dir

    _, result = quantized
    out = write_calibration_dir(result, tmp_path / "q")
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # readable by a server running as another user
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(packed, "save_quantized", fail)
    with pytest.raises(OSError, match="disk full"):
        write_calibration_dir(result, out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old folder is untouched
    with pytest.raises(OSError, match="disk full"):
        write_calibration_dir(result, tmp_path / "new")
    assert [p.name for p in tmp_path.iterdir()] == ["q"]  # nothing half-written, no temporary folders


# ---------------------------------------------------------------------------------------------------------------
# Calibration trajectories
# ---------------------------------------------------------------------------------------------------------------
def test_trajectory_cache_is_reused(tiny_dit, tmp_path):
    settings = CalibrationSettings(per_class=1, steps=3, classes=[1, 4])
    first = load_or_record(tiny_dit, settings, tmp_path, progress=False)
    assert not first.reused and first.x.shape == (3, 4, 4, 8, 8)  # 3 steps, 2 samples + 2 CFG rows
    assert first.y[0].tolist() == [1, 4, 6, 6] and first.t[0].tolist() == [first.t[0, 0].item()] * 4
    again = load_or_record(tiny_dit, settings, tmp_path, progress=False)
    assert again.reused and torch.equal(again.x, first.x) and torch.equal(again.t, first.t)
    other = load_or_record(tiny_dit, CalibrationSettings(per_class=1, steps=3, classes=[2]), tmp_path, progress=False)
    assert not other.reused
    changed = copy.deepcopy(tiny_dit)
    with torch.no_grad():
        changed.blocks[0].mlp.fc1.weight[0, 0] += 1
    assert not load_or_record(changed, settings, tmp_path, progress=False).reused
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


@pytest.mark.parametrize("damage", ["tensors", "sidecar"])
def test_a_damaged_trajectory_cache_entry_is_recorded_again(tiny_dit, tmp_path, damage):
    settings = CalibrationSettings(per_class=1, steps=3, classes=[1, 4])
    first = load_or_record(tiny_dit, settings, tmp_path, progress=False)
    (entry,) = tmp_path.glob("*.safetensors")
    victim = entry if damage == "tensors" else entry.with_name(entry.name + ".json")
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.warns(UserWarning, match="recording them again"):
        again = load_or_record(tiny_dit, settings, tmp_path, progress=False)
    assert not again.reused and torch.equal(again.x, first.x)
    assert load_or_record(tiny_dit, settings, tmp_path, progress=False).reused  # the entry was replaced


def test_static_range_covers_every_timestep_of_the_smoothed_input(tiny_dit):
    """'single' takes s from the middle timestep, but the static INT8 range is max_j a_j / s_j over all of them."""
    from ditas_trt.quant.calibration import replay_loop
    from ditas_trt.quant.ditas import quantize_dit

    recipe = QuantRecipe(**{**FAST, "lowrank": 0, "search_lora": "none", "timestep_stats": "single"})
    result = quantize_dit(copy.deepcopy(tiny_dit), recipe, CalibrationSettings(**SETTINGS), progress=False)
    names = list(result.report["alpha"])
    calls = {name: [] for name in names}
    hooks = [tiny_dit.get_submodule(name).register_forward_pre_hook(
        lambda m, args, name=name: calls[name].append(args[0].reshape(-1, m.in_features).abs().amax(dim=0)))
        for name in names]
    replay_loop(result.trajectories, progress=False)(tiny_dit)
    for hook in hooks:
        hook.remove()
    wider = []  # layers whose range over all timesteps exceeds the middle one's: there the test tells them apart
    for name in names:
        per_call = torch.stack(calls[name])  # [timesteps, K]
        weight = tiny_dit.get_submodule(name).weight.detach()
        s = smoothing_scale(per_call[len(per_call) // 2], weight.abs().amax(dim=0), result.report["alpha"][name])
        iq = result.model.get_submodule(name).input_quantizer
        assert torch.allclose(iq.pre_quant_scale, 1 / s, rtol=1e-5), name
        all_steps, middle = (per_call.amax(dim=0) / s).amax(), (per_call[len(per_call) // 2] / s).amax()
        assert float(iq.amax) == pytest.approx(float(all_steps), rel=1e-5), name
        if float(all_steps) > 1.01 * float(middle):
            wider.append(name)
    assert len(wider) >= len(names) // 2, wider


def test_input_cache_budget_splits_replays_without_changing_results(tiny_dit):
    from ditas_trt.quant.calibration import replay_loop
    from ditas_trt.quant.ditas import quantize
    from ditas_trt.quant.mode import REPORT_ATTR

    traj = load_or_record(tiny_dit, CalibrationSettings(**SETTINGS), None, progress=False)
    outputs, passes = [], []
    for cache_mb in (16, 4096):  # 16 MiB cannot hold every layer's inputs at 4096 rows per timestep
        recipe = QuantRecipe(**{**FAST, "alpha_grid": (0.2, 0.6), "lowrank": 0, "tokens_per_step": 4096, "cache_mb": cache_mb})
        config = recipe.to_modelopt()
        # a quantizer outside DiTAS upstream of every block: every replay pass must still see FP inputs
        config["quant_cfg"].append({"quantizer_name": "*t_embedder.mlp.0.input_quantizer", "cfg": {"num_bits": 8, "axis": None}})
        model = quantize(copy.deepcopy(tiny_dit), config, replay_loop(traj, progress=False))
        passes.append(getattr(model, REPORT_ATTR)["timings"]["passes"])
        with torch.no_grad():
            outputs.append(model(*_inputs()))
    assert passes[0] > 1 and passes[1] == 1
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.gpu
def test_quantize_dit_on_a_gpu_matches_the_cpu_run(quantized, tmp_path):
    """FP passes on the GPU, per-layer work on the CPU: the same calibration up to float differences."""
    from ditas_trt.quant.ditas import quantize_dit
    from ditas_trt.quant.output import load_modelopt, write_calibration_dir

    fp, cpu = quantized
    result = quantize_dit(make_tiny_dit().cuda(), QuantRecipe(**FAST), CalibrationSettings(**SETTINGS), progress=False)
    assert next(result.model.parameters()).is_cuda
    assert all(not t.is_cuda for t in result.packed.state_dict().values())
    same_alpha = sum(result.report["alpha"][n] == a for n, a in cpu.report["alpha"].items())
    assert same_alpha >= 6, (result.report["alpha"], cpu.report["alpha"])  # of 8: near-ties may go either way
    x, t, y = _inputs()
    with torch.no_grad():
        ref, on_cpu, on_gpu = fp(x, t, y), cpu.packed(x, t, y), result.packed(x, t, y)
        fake_on_gpu = result.model(x.cuda(), t.cuda(), y.cuda()).cpu()
    assert (on_gpu - on_cpu).abs().max() < 0.5 * (on_cpu - ref).abs().max()
    assert (on_gpu - fake_on_gpu).abs().max() < 0.1 * (on_cpu - ref).abs().max()
    folder = write_calibration_dir(result, tmp_path / "gpu")
    restored = load_modelopt(folder)  # the checkpoint loads on the CPU
    with torch.no_grad():
        assert torch.allclose(restored(x, t, y), fake_on_gpu, rtol=1e-3, atol=1e-4 * float(ref.abs().max()))


def test_trajectories_of_a_model_without_learned_sigma():
    from conftest import perturbed
    from ditas_trt.models import DiT
    from ditas_trt.quant.calibration import record_trajectories

    torch.manual_seed(0)
    model = perturbed(DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=1, num_heads=4,
                          num_classes=3, learn_sigma=False))
    traj = record_trajectories(model, CalibrationSettings(per_class=1, steps=3), progress=False)
    assert traj.steps == 3 and traj.x.shape[1:] == (6, 4, 8, 8)  # 3 classes x 2 (CFG) per step

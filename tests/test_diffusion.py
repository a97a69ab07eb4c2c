import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ditas_trt.diffusion import create_diffusion, space_timesteps
from ditas_trt.diffusion.sampling import SamplingOptions, sample, seeded_noise
from ditas_trt.errors import DitasError

from test_models import GOLDEN, golden_model


def test_linear_schedule_and_respacing():
    d = create_diffusion("")
    assert d.num_timesteps == 1000 and d.betas[0] == pytest.approx(1e-4) and d.betas[-1] == pytest.approx(0.02)
    assert space_timesteps(1000, "10") == {0, 111, 222, 333, 444, 555, 666, 777, 888, 999}
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert len(space_timesteps(1000, "10,15,20")) == 45
    spaced = create_diffusion("50")
    assert len(spaced.timestep_map) == 50 and spaced.timestep_map[0] == 0 and spaced.timestep_map[-1] == 999
    # respaced betas keep the cumulative alphas of the kept steps
    assert np.allclose(spaced.alphas_cumprod, d.alphas_cumprod[spaced.timestep_map])
    with pytest.raises(ValueError):
        space_timesteps(1000, "ddim999")


def test_ddim_step_counts_are_exactly_what_respacing_accepts():
    from ditas_trt.diffusion.sampling import ddim_step_counts

    for count in range(1, 1001):
        try:
            space_timesteps(1000, f"ddim{count}")
            accepted = True
        except ValueError:
            accepted = False
        assert accepted == (count in ddim_step_counts()), count


def test_sampling_matches_original_implementation():
    model, data = golden_model()
    for name, sampler in [("ddpm", "ddpm"), ("ddim", "ddim")]:
        torch.manual_seed(7)
        z = torch.randn(2, 4, 8, 8)
        assert torch.equal(z, data[f"{name}.noise"])
        out = sample(model, torch.tensor([2, 4]), in_channels=4, input_size=8, num_classes=5,
                     options=SamplingOptions(steps=25, sampler=sampler, cfg_scale=1.5), noise=z)
        assert torch.allclose(out, data[f"{name}.sample"], atol=1e-4, rtol=1e-4), name


def test_training_loss_matches_original_implementation():
    model, data = golden_model()
    loss = create_diffusion("").training_losses(model, data["loss.x0"], data["loss.t"], dict(y=data["forward.y"]),
                                                noise=data["loss.noise"])["loss"]
    assert torch.allclose(loss, data["loss.value"], atol=1e-5, rtol=1e-4)


def test_samples_depend_only_on_their_seed(tiny_dit):
    opts = SamplingOptions(steps=5, sampler="ddpm", cfg_scale=2.0)
    def run(seeds, labels):
        noise, gens = seeded_noise(seeds, (4, 8, 8))
        return sample(tiny_dit, torch.tensor(labels), in_channels=4, input_size=8, num_classes=6, options=opts,
                      noise=noise, generator=gens)
    both = run([11, 12], [1, 2])
    alone = run([12], [2])
    assert torch.allclose(both[1:], alone, atol=1e-5)
    assert torch.equal(run([11, 12], [1, 2]), both)  # deterministic
    assert not torch.allclose(run([13, 12], [1, 2])[0], both[0])


def test_ddim_eta_zero_is_deterministic_and_guidance_changes_output(tiny_dit):
    noise = torch.randn(2, 4, 8, 8)
    labels = torch.tensor([0, 3])
    kw = dict(in_channels=4, input_size=8, num_classes=6, noise=noise)
    a = sample(tiny_dit, labels, options=SamplingOptions(10, "ddim", 1.0), **kw)
    b = sample(tiny_dit, labels, options=SamplingOptions(10, "ddim", 1.0), **kw)
    c = sample(tiny_dit, labels, options=SamplingOptions(10, "ddim", 4.0), **kw)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_sampling_options_are_validated(tiny_dit):
    for bad, msg in [(SamplingOptions(0), "steps"), (SamplingOptions(10, "euler"), "sampler"),
                     (SamplingOptions(10, "ddpm", 0.5), "cfg scale"), (SamplingOptions(10, "ddpm", float("nan")), "cfg scale"),
                     (SamplingOptions(10, "ddpm", float("inf")), "cfg scale"), (SamplingOptions(10, "ddpm", 1.5, 0.5), "eta"),
                     (SamplingOptions(10, "ddim", 1.5, float("nan")), "eta"), (SamplingOptions(1), "between 2"),
                     (SamplingOptions(49, "ddim"), "nearest counts are 48 and 50")]:
        with pytest.raises(DitasError, match=msg):
            bad.validate()
    with pytest.raises(DitasError, match="class labels"):
        sample(tiny_dit, torch.tensor([6]), in_channels=4, input_size=8, num_classes=6, options=SamplingOptions(2))
    with pytest.raises(DitasError, match="initial noise"):
        sample(tiny_dit, torch.tensor([1]), in_channels=4, input_size=8, num_classes=6, options=SamplingOptions(2),
               noise=torch.zeros(1, 4, 4, 4))


def test_models_without_learned_sigma_sample_with_the_fixed_variance():
    from conftest import perturbed
    from ditas_trt.models import DiT

    torch.manual_seed(0)
    model = perturbed(DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4,
                          num_classes=6, learn_sigma=False))
    labels = torch.tensor([1, 4])
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    common = dict(in_channels=4, input_size=8, num_classes=6, options=SamplingOptions(5, "ddpm", cfg_scale=1.0),
                  noise=noise)
    with torch.no_grad():
        out = sample(model, labels, **common, generator=torch.Generator().manual_seed(2), learn_sigma=False)
        ref = create_diffusion("5", learn_sigma=False).p_sample_loop(
            lambda x, t: model(x, t, labels), noise.shape, noise=noise, clip_denoised=False,
            generator=torch.Generator().manual_seed(2))
        assert torch.equal(out, ref)
        with pytest.raises(ValueError, match="learned-sigma"):  # the learned-sigma diffusion cannot read its output
            sample(model, labels, **common)

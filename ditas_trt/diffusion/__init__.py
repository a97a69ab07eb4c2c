"""Gaussian diffusion, respacing and samplers with the semantics and numerics of DiT's `create_diffusion`."""
from ditas_trt.diffusion import gaussian_diffusion as gd
from ditas_trt.diffusion.respace import SpacedDiffusion, space_timesteps
from ditas_trt.diffusion.sampling import SAMPLERS, sample

__all__ = ["create_diffusion", "SpacedDiffusion", "space_timesteps", "sample", "SAMPLERS"]


def create_diffusion(
    timestep_respacing,
    noise_schedule="linear",
    use_kl=False,
    sigma_small=False,
    predict_xstart=False,
    learn_sigma=True,
    rescale_learned_sigmas=False,
    diffusion_steps=1000,
):
    """The diffusion DiT trains and samples with; ``timestep_respacing`` is e.g. "250", "50", "ddim50" or ""."""
    betas = gd.get_named_beta_schedule(noise_schedule, diffusion_steps)
    if use_kl:
        loss_type = gd.LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = gd.LossType.RESCALED_MSE
    else:
        loss_type = gd.LossType.MSE
    if timestep_respacing is None or timestep_respacing == "":
        timestep_respacing = [diffusion_steps]
    if learn_sigma:
        var_type = gd.ModelVarType.LEARNED_RANGE
    else:
        var_type = gd.ModelVarType.FIXED_SMALL if sigma_small else gd.ModelVarType.FIXED_LARGE
    return SpacedDiffusion(
        use_timesteps=space_timesteps(diffusion_steps, timestep_respacing),
        betas=betas,
        model_mean_type=gd.ModelMeanType.START_X if predict_xstart else gd.ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
    )

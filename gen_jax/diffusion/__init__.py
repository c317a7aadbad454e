"""Diffusion models (Ho et al. 2020): the seed's forward process, learned reverse process and bound.

forward:  x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps,  eps ~ N(0, I)   (`forward_step`)
reverse:  x_{t-1} ~ p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I)  (`ddpm_sample`)
trained through the variational bound (`variational_bound`) and its simplified eps-loss
(`DiffusionModel`). Timesteps are t in {1..T}; schedule arrays are 0-indexed (entry t - 1).
"""

from gen_jax.diffusion.continuous import (VariationalDiffusionModel, diffusion_loss_weight, prior_loss,
                                          reconstruction_loss, vdm_posterior_step)
from gen_jax.diffusion.log_snr import (LOG_SNR_SCHEDULES, CosineLogSNR, LearnedLogSNR, LinearLogSNR, alpha_sigma,
                                       log_snr_and_derivative, make_log_snr_schedule)
from gen_jax.diffusion.flow_matching import FM_PATHS, ODE_SOLVERS, FlowMatchingModel, path_coefficients
from gen_jax.diffusion.ode import DIVERGENCES, dequantized_bits_per_dim, divergence, ode_log_likelihood
from gen_jax.diffusion.solvers import (FAST_SAMPLERS, LOG_SNR_SPACINGS, dpm_solver_pp_2m, dpm_solver_pp_2m_sde,
                                      edm_heun, fast_sample, karras_sigmas, solver_log_snrs)
from gen_jax.diffusion.layers import TimeEmbedding, timestep_embedding
from gen_jax.diffusion.losses import (
    WEIGHTINGS,
    DenoiseFn,
    Weighting,
    denoising_loss,
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    loss_weight,
    make_denoise_fn,
    normal_kl,
    prior_kl,
    to_model_space,
    variational_bound,
)
from gen_jax.diffusion.mlp import MLPDenoiser
from gen_jax.diffusion.process import (
    PARAMETERIZATIONS,
    Parameterization,
    eps_from_v,
    eps_from_x0,
    forward_step,
    predict_x0_eps,
    prediction_target,
    q_mean_variance,
    q_posterior,
    q_sample,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from gen_jax.diffusion.protocol import DiffusionModel
from gen_jax.diffusion.samplers import Spacing, ddim_sample, ddpm_sample, timestep_subsequence
from gen_jax.diffusion.schedules import NoiseSchedule, ReverseVariance
from gen_jax.diffusion.unet import AttentionBlock, Downsample, ResBlock, UNet, Upsample

__all__ = [
    # the generative model (gen_jax.model protocol)
    "DiffusionModel",
    "VariationalDiffusionModel",
    "FlowMatchingModel",
    "FM_PATHS",
    "ODE_SOLVERS",
    "path_coefficients",
    # exact likelihood by the probability-flow ODE
    "ode_log_likelihood",
    "dequantized_bits_per_dim",
    "divergence",
    "DIVERGENCES",
    # log-SNR schedules (continuous and discrete time)
    "LinearLogSNR",
    "CosineLogSNR",
    "LearnedLogSNR",
    "LOG_SNR_SCHEDULES",
    "make_log_snr_schedule",
    "alpha_sigma",
    "log_snr_and_derivative",
    # the continuous-time bound
    "prior_loss",
    "reconstruction_loss",
    "diffusion_loss_weight",
    "vdm_posterior_step",
    # schedules and the forward process
    "NoiseSchedule",
    "ReverseVariance",
    "forward_step",
    "q_sample",
    "q_mean_variance",
    "q_posterior",
    # parameterizations
    "Parameterization",
    "PARAMETERIZATIONS",
    "x0_from_eps",
    "eps_from_x0",
    "v_from_x0_eps",
    "x0_from_v",
    "eps_from_v",
    "predict_x0_eps",
    "prediction_target",
    # denoisers
    "UNet",
    "ResBlock",
    "AttentionBlock",
    "Downsample",
    "Upsample",
    "MLPDenoiser",
    "TimeEmbedding",
    "timestep_embedding",
    # objectives
    "DenoiseFn",
    "Weighting",
    "WEIGHTINGS",
    "make_denoise_fn",
    "to_model_space",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "gaussian_log_likelihood",
    "prior_kl",
    "loss_weight",
    "denoising_loss",
    "variational_bound",
    # samplers
    "Spacing",
    "timestep_subsequence",
    "ddpm_sample",
    "ddim_sample",
    "FAST_SAMPLERS",
    "fast_sample",
    "dpm_solver_pp_2m",
    "dpm_solver_pp_2m_sde",
    "edm_heun",
    "karras_sigmas",
    "LOG_SNR_SPACINGS",
    "solver_log_snrs",
]

"""DDPM on a 2D toy distribution (ring8 by default): residual MLP eps-denoiser, T = 1000 linear
schedule (Ho et al. 2020), L_simple, EMA; ancestral (DDPM) sampling; the held-out variational bound
(all T terms, continuous Gaussian decoder) as an upper bound on the NLL in nats and the exact NLL of the
probability-flow ODE, to set beside the true entropy. ``get_config('smoke')`` runs in seconds on CPU.

    python -m experiments.train --config experiments/configs/ddpm_toy.py --workdir runs/ddpm_toy
"""

from ml_collections import config_dict

from experiments.configs.common import base_config, ode_likelihood_eval, shrink_for_smoke


def diffusion_objective(c, *, num_timesteps: int = 1000) -> None:
    """The DDPM objective fields shared by the diffusion configs (Ho et al. 2020 defaults)."""
    c.objective.schedule = "linear"  # 'linear' | 'cosine' | 'sigmoid'
    c.objective.num_timesteps = num_timesteps
    c.objective.beta_start = 1e-4
    c.objective.beta_end = 0.02
    c.objective.cosine_s = 0.008
    c.objective.parameterization = "eps"  # 'eps' | 'x0' | 'v'
    c.objective.weighting = "simple"  # 'simple' (L_simple) | 'vlb' | 'min_snr'
    c.objective.min_snr_gamma = 5.0
    c.objective.variance = "large"  # sigma_t^2 of the 'vlb' weights
    c.objective.cond_drop_prob = 0.1  # class-conditional models only


def drop_ddpm_fields(c) -> None:
    """Removes the DDPM-only objective and eval fields (for the configs of other diffusion processes)."""
    for k in ("schedule", "beta_start", "beta_end", "cosine_s", "parameterization", "weighting", "min_snr_gamma",
              "variance"):
        del c.objective[k]
    for k in ("ddpm_variance", "ddim_steps", "ddim_eta", "ddim_spacing", "bound_t_chunk", "bound_variance"):
        del c.eval[k]


def get_config(arg=None):
    c = base_config("diffusion", data="ring8", batch_size=256, num_steps=20_000, learning_rate=1e-3)
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 200
    c.optim.grad_clip = 1.0
    c.optim.ema_decay = 0.999
    c.model.arch = "mlp"
    c.model.hidden = 128
    c.model.num_blocks = 3
    c.model.time_dim = 64
    c.model.class_conditional = False
    diffusion_objective(c)
    c.eval.sampler = "ddpm"  # 'ddpm' (ancestral, T steps) | 'ddim'
    c.eval.ddpm_variance = "small"  # sigma_t^2 = beta_tilde_t ('large': beta_t)
    c.eval.ddim_steps = 50
    c.eval.ddim_eta = 0.0
    c.eval.ddim_spacing = "uniform"
    c.eval.clip_x0 = False
    c.eval.guidance_scale = config_dict.placeholder(float)  # classifier-free guidance (class-conditional models)
    c.eval.bound_examples = 500  # held-out points for the variational bound (T MLP calls each)
    c.eval.bound_batch_size = 500
    c.eval.bound_t_chunk = 8
    c.eval.bound_variance = "small"
    c.eval.figure_points = 2000
    ode_likelihood_eval(c, examples=2000, batch_size=100)  # the probability-flow ODE's log-likelihood ('ode_nll')
    c.eval.num_samples = 2500
    c.data.num_eval = 10_000
    c.train.log_every = 200
    c.train.sample_every = 5000
    c.train.checkpoint_every = 5000
    if arg == "smoke":
        shrink_for_smoke(c, num_steps=20)
        c.optim.warmup_steps = 0
        c.model.hidden = 32
        c.model.num_blocks = 1
        c.model.time_dim = 16
        c.objective.num_timesteps = 50
        c.eval.bound_examples = 64
        c.eval.bound_batch_size = 64
        c.eval.ddim_steps = 10
        c.eval.figure_points = 256
        c.eval.ode_examples = 16
        c.train.sample_every = 0
    elif arg:
        raise ValueError(f"ddpm_toy: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c

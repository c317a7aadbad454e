"""DDPM on MNIST (8-bit, scaled to [-1, 1]), sized for a CPU: a small U-Net (ch=16, ch_mult=(1, 2, 4),
one residual block per level, self-attention at 7x7; 0.69M parameters), T = 1000 linear schedule,
L_simple, EMA. Results, their cost and commands: README. Samples use DDIM (100 steps; the
DDPM-vs-DDIM figure also runs all 1000 ancestral steps). ``evaluate`` reports the variational bound in
bits/dim (all 1000 terms, discretised decoder) on ``eval.bound_examples`` test images, for the reverse
variance the DDPM sampler uses (sigma_t^2 = beta_tilde_t): 1000 U-Net calls per image.
``get_config('smoke')`` runs in seconds on CPU.

    python -m experiments.train --config experiments/configs/ddpm_mnist.py \\
        --workdir runs/ddpm_mnist --config.data.data_dir=../shared/data/tfds
"""

from ml_collections import config_dict

from experiments.configs.common import base_config, ode_likelihood_eval, shrink_for_smoke
from experiments.configs.ddpm_toy import diffusion_objective


def get_config(arg=None):
    c = base_config("diffusion", data="mnist", batch_size=64, num_steps=8000, learning_rate=5e-4)
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 500
    c.optim.grad_clip = 1.0
    c.optim.ema_decay = 0.999  # short run: 0.9999 would average over more steps than we take
    c.model.arch = "unet"
    c.model.remat = config_dict.placeholder(str)  # None | 'full' | 'dots' (gen_jax.nn.REMAT_POLICIES)
    c.model.ch = 16
    c.model.ch_mult = (1, 2, 4)  # 28x28x16 -> 14x14x32 -> 7x7x64
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = (7,)
    c.model.dropout = 0.0
    c.model.num_heads = 1
    c.model.norm_groups = 8
    c.model.class_conditional = False
    diffusion_objective(c)
    c.eval.sampler = "ddim"
    c.eval.ddpm_variance = "small"
    c.eval.ddim_steps = 100
    c.eval.ddim_eta = 0.0
    c.eval.ddim_spacing = "uniform"
    c.eval.clip_x0 = True
    c.eval.guidance_scale = config_dict.placeholder(float)  # classifier-free guidance (class-conditional models)
    c.eval.bound_examples = 100
    c.eval.bound_batch_size = 50
    c.eval.bound_t_chunk = 2
    c.eval.bound_variance = "small"  # the bound of the reverse process we sample from (ddpm_variance)
    c.eval.figure_images = 16
    c.eval.num_samples = 64
    # the probability-flow ODE's bits/dim, not run by default ('--config.eval.evaluators=bound,ode_nll'):
    ode_likelihood_eval(c, examples=100, batch_size=100)
    c.data.num_eval = 2000  # test images for the held-out loss (the bound uses the first 100)
    c.data.eval_batch_size = 500
    c.train.log_every = 100
    c.train.eval_every = 0  # the bound is expensive on CPU: evaluate once at the end
    c.train.sample_every = 2000
    c.train.checkpoint_every = 1000
    if arg == "smoke":
        shrink_for_smoke(c, num_steps=4)
        c.data.batch_size = 8
        c.optim.warmup_steps = 0
        c.model.ch = 8
        c.model.ch_mult = (1,)  # one level, attention only in the middle: compiling dominates on CPU
        c.model.num_res_blocks = 1
        c.model.attn_resolutions = ()
        c.model.norm_groups = 4
        c.objective.num_timesteps = 20
        c.data.num_eval = 32
        c.data.eval_batch_size = 32
        c.eval.bound_examples = 8
        c.eval.bound_batch_size = 8
        c.eval.bound_t_chunk = 5
        c.eval.ddim_steps = 5
        c.eval.figure_images = 4
        c.eval.ode_examples = c.eval.ode_batch_size = 8
        c.train.sample_every = 0
    elif arg:
        raise ValueError(f"ddpm_mnist: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c

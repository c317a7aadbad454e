"""DDPM on CIFAR-10 with the hyperparameters of Ho et al. (2020): the 35.7M-parameter U-Net (ch=128,
ch_mult=(1, 2, 2, 2), 2 residual blocks per level, self-attention at 16x16, dropout 0.1), T = 1000
linear schedule (beta 1e-4 .. 0.02), L_simple, Adam lr 2e-4 with 5000 warm-up steps, batch 128,
gradient clipping at 1.0, EMA 0.9999, random horizontal flips (applied in the loss), 800k steps in
the paper. Meant for a GPU/TPU; ``get_config('smoke')`` runs in seconds on CPU.
Samples: 1000-step ancestral sampling with sigma_t^2 = beta_t as in the paper ('large');
``evaluate``: the variational bound in bits/dim (Ho et al. report <= 3.75 on the test set for L_simple).

    python -m experiments.train --config experiments/configs/ddpm_cifar10.py \\
        --workdir runs/ddpm_cifar10 --config.data.data_dir=../shared/data/tfds
"""

from ml_collections import config_dict

from experiments.configs.common import base_config, shrink_for_smoke
from experiments.configs.ddpm_toy import diffusion_objective


def get_config(arg=None):
    c = base_config("diffusion", data="cifar10", batch_size=128, num_steps=800_000, learning_rate=2e-4)
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 5000
    c.optim.grad_clip = 1.0
    c.optim.ema_decay = 0.9999
    c.model.arch = "unet"
    c.model.remat = config_dict.placeholder(str)  # None | 'full' | 'dots' (gen_jax.nn.REMAT_POLICIES)
    c.model.ch = 128
    c.model.ch_mult = (1, 2, 2, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (16,)
    c.model.dropout = 0.1
    c.model.num_heads = 1
    c.model.norm_groups = 32
    c.model.class_conditional = False
    diffusion_objective(c)
    c.data.random_flip = True  # Ho et al.: random horizontal flips of the training images
    c.eval.sampler = "ddpm"
    c.eval.ddpm_variance = "large"
    c.eval.ddim_steps = 100
    c.eval.ddim_eta = 0.0
    c.eval.ddim_spacing = "quadratic"
    c.eval.clip_x0 = True
    c.eval.guidance_scale = config_dict.placeholder(float)  # classifier-free guidance (class-conditional models)
    c.eval.bound_examples = 1000
    c.eval.bound_batch_size = 250
    c.eval.bound_t_chunk = 4
    c.eval.bound_variance = "large"
    c.eval.figure_images = 16
    c.eval.num_samples = 64
    c.data.num_eval = -1
    c.data.eval_batch_size = 500
    c.train.log_every = 1000
    c.train.eval_every = 100_000
    c.train.sample_every = 20_000
    c.train.checkpoint_every = 10_000
    if arg == "smoke":
        shrink_for_smoke(c, num_steps=3)
        c.data.batch_size = 8
        c.optim.warmup_steps = 0
        c.model.ch = 8
        c.model.ch_mult = (1,)  # one level, attention only in the middle: compiling dominates on CPU
        c.model.num_res_blocks = 1
        c.model.attn_resolutions = ()
        c.model.norm_groups = 4
        c.model.dropout = 0.0
        c.objective.num_timesteps = 20
        c.data.num_eval = 16
        c.data.eval_batch_size = 16
        c.eval.bound_examples = 4
        c.eval.bound_batch_size = 4
        c.eval.bound_t_chunk = 5
        c.eval.sampler = "ddim"
        c.eval.ddim_steps = 5
        c.eval.figure_images = 4
        c.train.sample_every = 0
        c.train.eval_every = 0
    elif arg:
        raise ValueError(f"ddpm_cifar10: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c

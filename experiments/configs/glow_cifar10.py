"""Glow on CIFAR-10 with the full-size hyperparameters of Kingma & Dhariwal (2018), for GPU/TPU.

Model: L = 3 levels x K = 32 steps of [ActNorm -> invertible 1x1 conv (LU) -> affine coupling],
coupling networks conv3x3(512) -> ReLU -> conv1x1(512) -> ReLU -> zero-init conv3x3, learned split
prior, Glow's pre-processing x / 256 - 0.5 after uniform dequantization of the 8-bit pixels.
Optimisation (openai/glow train.py defaults): lr 1e-3, linear warm-up over 10 epochs (7,820 steps at
batch 64), batch 64, data-dependent init on 256 images, Polyak averaging (here an EMA of 0.999).
Glow's code defaults to Adamax; the engine offers Adam, which the paper also reports using.
Published: 3.35 bits/dim on the CIFAR-10 test set (affine coupling, 1x1 conv), after ~thousands of
epochs on 8 GPUs. About 45M parameters. ``get_config('smoke')`` runs in seconds on CPU.

    python -m experiments.train --config experiments/configs/glow_cifar10.py --workdir runs/glow_cifar10 \\
        --config.data.data_dir=DIR_WITH_PREPARED_CIFAR10
"""

from ml_collections import config_dict

from experiments.configs.common import base_config
from experiments.configs.glow_mnist import image_flow_smoke


def get_config(arg=None):
    c = base_config("flow", data="cifar10", batch_size=64, num_steps=1_000_000, learning_rate=1e-3)
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 7820  # 10 epochs of 782 steps (Glow's epochs_warmup = 10)
    c.optim.grad_clip = 0.0
    c.optim.ema_decay = 0.999
    c.model.arch = "glow"
    c.model.remat = config_dict.placeholder(str)  # None | 'full' | 'dots' (gen_jax.nn.REMAT_POLICIES)
    c.model.num_levels = 3  # 32x32x3 -> 16x16x12 -> 8x8x24 -> 4x4x48
    c.model.num_steps = 32
    c.model.hidden = (512, 512)
    c.model.lu = True
    c.model.additive = False
    c.model.learn_split_prior = True
    c.model.max_log_scale = 3.0
    c.model.preprocess = "affine"
    c.model.alpha = 0.05  # only used with preprocess='logit'
    c.model.init_batch = 256  # Glow's n_batch_init
    c.objective.num_bits = 8
    c.data.num_eval = -1
    c.data.eval_batch_size = 500
    c.eval.num_samples = 64
    c.eval.temperature = 1.0
    c.eval.temperatures = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    c.train.log_every = 500
    c.train.eval_every = 20_000
    c.train.sample_every = 20_000
    c.train.checkpoint_every = 10_000
    if arg == "smoke":
        image_flow_smoke(c)
        c.model.num_steps = 1
        c.model.hidden = (8, 8)
    elif arg:
        raise ValueError(f"glow_cifar10: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c

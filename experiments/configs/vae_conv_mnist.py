"""Convolutional VAE on dynamically binarised MNIST: two stride-2 conv layers in the encoder, a
mirrored decoder upsampling by sub-pixel convolutions (``--config.model.upsample=transpose`` for
3x3 stride-2 transposed convolutions; the same function class, slower on CPU), 32-d latent, Bernoulli decoder, ELBO objective; test log p(x) by
importance sampling (K = 5000), which is costly on all 10,000 test images: on a CPU use
``--config.data.num_eval``. Results, their cost and commands: README.
``get_config('smoke')`` runs in seconds on CPU.

    python -m experiments.train --config experiments/configs/vae_conv_mnist.py \\
        --workdir runs/vae_conv_mnist --config.data.data_dir=../shared/data/tfds
"""

from experiments.configs.common import base_config, shrink_for_smoke


def get_config(arg=None):
    c = base_config("vae", data="mnist", batch_size=128, num_steps=50_000, learning_rate=1e-3)
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 500
    c.model.arch = "conv"
    c.model.latent_dim = 32
    c.model.features = (32, 64)  # encoder convs; the decoder mirrors them
    c.model.dense = 512
    c.model.activation = "relu"
    c.model.upsample = "subpixel"  # decoder: 'subpixel' (fast on CPU) | 'transpose'
    c.model.downsample = "strided"  # encoder: 'strided' | 'space_to_depth'
    c.objective.likelihood = "bernoulli"
    c.objective.kl = "analytic"
    c.objective.beta = 1.0
    c.objective.iwae_k = 1
    c.objective.binarize = "dynamic"
    c.data.num_eval = -1
    c.data.eval_batch_size = 500
    c.eval.iwae_k = 5000
    c.eval.chunk_size = 100
    c.eval.rows_per_call = 50  # 50 test images per IS call (~3.5 s here): progress, prompt SIGTERM
    c.eval.elbo_samples = 1
    c.eval.binarize_seed = 0
    c.eval.num_samples = 64
    c.train.log_every = 500
    c.train.sample_every = 5000
    c.train.checkpoint_every = 5000
    if arg == "smoke":
        shrink_for_smoke(c, num_steps=6)
        c.data.batch_size = 16
        c.optim.warmup_steps = 0
        c.model.features = (4, 8)
        c.model.dense = 32
        c.model.latent_dim = 4
        c.data.num_eval = 32
        c.data.eval_batch_size = 32
        c.eval.iwae_k = 8
        c.eval.chunk_size = 4
        c.train.sample_every = 0
    elif arg:
        raise ValueError(f"vae_conv_mnist: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c

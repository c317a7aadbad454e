"""DCGAN on CIFAR-10 (Radford et al. 2016): a 4 -> 8 -> 16 -> 32 generator (GroupNorm instead of batch norm,
so G(z) does not depend on the rest of the batch; sub-pixel upsampling, which represents the paper's 4x4
stride-2 transposed convolution exactly) and a 32 -> 16 -> 8 -> 4 conv discriminator with LeakyReLU(0.2);
non-saturating loss, Adam(2e-4, b1 = 0.5), batch 128, generator EMA, no flips (the paper used none). Meant
for a GPU/TPU: the usual CIFAR-10 DCGAN runs 50-100k steps. Evaluated by FID / IS / KID on the FID
Inception-v3 when ``--config.eval.inception_weights`` is given (README, "GPU and TPU"), else by the Frechet
distance in a small classifier's features. ``get_config('smoke')`` runs in seconds on CPU.

    python -m experiments.train --config experiments/configs/dcgan_cifar10.py --workdir runs/dcgan_cifar10 \\
        --config.data.data_dir=DIR_WITH_PREPARED_CIFAR10 --config.eval.inception_weights=inception_fid.npz
"""

from experiments.configs import dcgan_mnist


def get_config(arg=None):
    c = dcgan_mnist.get_config(arg)
    c.data.name = "cifar10"
    if arg != "smoke":
        c.train.num_steps = 100_000
        c.train.sample_every = 5000
        c.train.checkpoint_every = 5000
        c.train.log_every = 500
        c.eval.inception_num_samples = 50_000
    c.data.random_flip = False
    return c

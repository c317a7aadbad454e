"""DCGAN on MNIST (Radford et al. 2016): 7 -> 14 -> 28 generator (GroupNorm instead of batch norm, so
G(z) does not depend on the rest of the batch) and a 28 -> 14 -> 7 conv discriminator with
LeakyReLU(0.2); non-saturating loss, Adam(2e-4, b1=0.5), generator EMA. The generator upsamples by
sub-pixel convolution (3x3 conv to 4x channels, then depth-to-space), which can represent the paper's
4x4 stride-2 transposed convolution exactly and is faster on CPU (experiments/BENCHMARKS.md);
``--config.model.g_upsample=transpose`` gives the paper's layer. Results and their commands: README.
Evaluated by the Frechet distance to the test set in the feature space of a small classifier
trained here on the training split (``gen_jax.metrics.classifier``). ``get_config('smoke')`` runs in
seconds on CPU.

    python -m experiments.train --config experiments/configs/dcgan_mnist.py --workdir runs/dcgan_mnist \\
        --config.data.data_dir=../shared/data/tfds
"""

from ml_collections import config_dict

from experiments.configs.common import base_config, image_frechet_eval, shrink_for_smoke


def get_config(arg=None):
    c = base_config("gan", data="mnist", batch_size=128, num_steps=4000, learning_rate=2e-4)
    c.optim.b1 = 0.5
    c.optim.b2 = 0.999
    c.optim.ema_decay = 0.999
    # The discriminator's optimizer: unset (None) fields inherit config.optim's value.
    c.d_optim = config_dict.ConfigDict({k: config_dict.placeholder(type(v)) for k, v in c.optim.items()
                                        if k != "ema_decay"})
    c.model.arch = "dcgan"
    c.model.latent_dim = 100
    c.model.g_features = 64  # channels of the last hidden map of G (128 at 7x7)
    c.model.d_features = 64  # channels of D's first conv (128 at 7x7)
    c.model.g_norm = "group"
    c.model.g_upsample = "subpixel"  # 'subpixel' | 'transpose'
    c.model.d_downsample = "strided"  # 'strided' | 'space_to_depth'
    c.model.spectral_norm = False
    c.model.conditional = False
    c.objective.loss = "non_saturating"
    c.objective.gp_weight = 0.0
    c.objective.r1_weight = 0.0
    c.objective.n_critic = 1
    c.objective.pack_size = 1
    c.data.num_eval = -1  # the whole test split
    c.data.eval_batch_size = 500
    c.eval.num_samples = 64
    image_frechet_eval(c, smoke=arg == "smoke")
    c.train.log_every = 200
    c.train.sample_every = 1000
    c.train.eval_every = 0  # the Frechet distance needs a classifier: once, at the end
    c.train.checkpoint_every = 1000
    if arg == "smoke":
        shrink_for_smoke(c, num_steps=6)
        c.data.batch_size = 16
        c.model.latent_dim = 16
        c.model.g_features = 8
        c.model.d_features = 8
        c.data.num_eval = 64
        c.data.eval_batch_size = 32
        c.train.sample_every = 0
        c.train.eval_every = 0
    elif arg:
        raise ValueError(f"dcgan_mnist: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c

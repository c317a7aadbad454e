"""GAN on the PacGAN 5x5 grid (means {-4,-2,0,2,4}^2, std 0.05), the seed's game with the
non-saturating generator loss and a small R1 penalty; 5 seeds trained at once with vmap.

Target (PacGAN protocol, 2500 samples per seed): >= 24.5 modes captured and >= 90% high-quality
samples (within 3 std of a mode), mean over the seeds. Tuned recipe: 2-d latent (higher latent
dimensions dropped modes), 3x128 ReLU generator / LeakyReLU discriminator, Adam(3e-3, b1=0.5,
b2=0.99) with cosine decay for both players (the decay is what sharpens the modes), R1 gamma =
0.01 (larger gamma smooths D below the 0.05 scale of the modes), generator EMA 0.99, batch 256,
10k steps. ``get_config('smoke')`` runs in seconds on CPU.

    python -m experiments.train --config experiments/configs/gan_grid25.py --workdir runs/gan_grid25
"""

from ml_collections import config_dict

from experiments.configs.common import base_config, shrink_for_smoke


def get_config(arg=None):
    c = base_config("gan", data="grid25", batch_size=256, num_steps=10_000, learning_rate=3e-3)
    c.num_seeds = 5
    c.optim.b1 = 0.5
    c.optim.b2 = 0.99
    c.optim.schedule = "cosine"
    c.optim.ema_decay = 0.99
    # The discriminator's optimizer: unset (None) fields inherit config.optim's value.
    c.d_optim = config_dict.ConfigDict({k: config_dict.placeholder(type(v)) for k, v in c.optim.items()
                                        if k != "ema_decay"})
    c.model.arch = "mlp"
    c.model.latent_dim = 2
    c.model.g_hidden = (128, 128, 128)
    c.model.d_hidden = (128, 128, 128)
    c.model.spectral_norm = False
    c.model.conditional = False
    c.objective.loss = "non_saturating"
    c.objective.gp_weight = 0.0
    c.objective.r1_weight = 0.01  # gamma: + gamma / 2 * E ||grad_x D(x)||^2 on real data
    c.objective.n_critic = 1
    c.objective.pack_size = 1
    c.eval.num_samples = 2500  # per seed (PacGAN protocol)
    c.data.num_eval = 2500
    c.train.log_every = 500
    c.train.sample_every = 2500
    c.train.checkpoint_every = 2500
    if arg == "smoke":
        shrink_for_smoke(c, num_steps=20)
        c.num_seeds = 2
        c.data.batch_size = 64
        c.model.g_hidden = (32, 32)
        c.model.d_hidden = (32, 32)
        c.train.sample_every = 0
    elif arg:
        raise ValueError(f"gan_grid25: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c

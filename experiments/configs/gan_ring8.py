"""GAN on the ring of 8 Gaussians (radius 2, std 0.02): the seed's game with the non-saturating
generator loss and a small R1 penalty, the recipe of ``gan_grid25`` (2-d latent, 3x128 MLPs,
Adam(3e-3, b1=0.5, b2=0.99) with cosine decay, R1 gamma = 0.01, generator EMA). One seed by default
(it is part of the quickstart); ``--config.num_seeds=5`` trains five at once with vmap and reports
mean and std over them. ``get_config('smoke')`` runs in seconds on CPU.

    python -m experiments.train --config experiments/configs/gan_ring8.py --workdir runs/gan_ring8
"""

from ml_collections import config_dict

from experiments.configs.common import base_config, shrink_for_smoke


def get_config(arg=None):
    c = base_config("gan", data="ring8", batch_size=128, num_steps=4000, learning_rate=3e-3)
    c.num_seeds = 1
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
    c.train.log_every = 250
    c.train.sample_every = 1000
    if arg == "smoke":
        shrink_for_smoke(c, num_steps=20)
        c.num_seeds = 2  # exercise the vmap-over-seeds path
        c.data.batch_size = 64
        c.model.g_hidden = (32, 32)
        c.model.d_hidden = (32, 32)
        c.train.sample_every = 0
    elif arg:
        raise ValueError(f"gan_ring8: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c

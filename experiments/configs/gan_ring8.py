"""GAN on the ring of 8 Gaussians (radius 2, std 0.02): the seed's game with the non-saturating
generator loss and a small R1 penalty, the recipe of ``gan_grid25`` (2-d latent, 3x128 MLPs,
Adam(3e-3, b1=0.5, b2=0.99) with cosine decay, R1 gamma = 0.01, generator EMA). One seed by default
(it is part of the quickstart); ``--config.num_seeds=5`` trains five at once with vmap and reports
mean and std over them. ``get_config('smoke')`` runs in seconds on CPU.

    python -m experiments.train --config experiments/configs/gan_ring8.py --workdir runs/gan_ring8
"""

from experiments.configs import gan_grid25


def get_config(arg=None):
    if arg not in (None, "smoke"):
        raise ValueError(f"gan_ring8: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    c = gan_grid25.get_config(arg)  # same recipe; only the data and the budget differ
    c.data.name = "ring8"
    if arg is None:
        c.num_seeds = 1
        c.data.batch_size = 128
        c.train.num_steps = 4000
        c.train.log_every = 250
        c.train.sample_every = 1000
        c.train.checkpoint_every = 1000
    return c

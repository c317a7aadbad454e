"""VAE on a 2D toy distribution (ring8 by default): MLP encoder/decoder, 2D latent, Gaussian decoder
with learned per-dimension variance. ``get_config('smoke')`` runs in seconds on CPU.

    python -m experiments.train --config experiments/configs/vae_toy.py --workdir runs/vae_toy
"""

from ml_collections import config_dict

from experiments.configs.common import base_config, shrink_for_smoke


def get_config(arg=None):
    c = base_config("vae", data="ring8", batch_size=256, num_steps=3000, learning_rate=1e-3)
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 100
    c.model.arch = "mlp"
    c.model.latent_dim = 2
    c.model.hidden = (128, 128)
    c.model.activation = "relu"
    c.objective.likelihood = "gaussian"  # learned variance: p_theta(x|z) = N(mu(z), diag(sigma(z)^2))
    c.objective.kl = "analytic"
    c.objective.beta = 1.0
    c.objective.iwae_k = 1
    c.objective.binarize = config_dict.placeholder(str)
    c.eval.iwae_k = 1000  # importance samples of the held-out log p(x) (nll_nats)
    c.eval.chunk_size = 250
    c.eval.rows_per_call = 0  # IS calls over the whole eval batch
    c.eval.elbo_samples = 1
    c.eval.density_k = 256  # importance samples per point of the log-density heat map
    c.eval.binarize_seed = 0
    c.data.num_eval = 10_000
    c.train.log_every = 100
    c.train.sample_every = 1000
    if arg == "smoke":
        shrink_for_smoke(c, num_steps=20)
        c.optim.warmup_steps = 0
        c.model.hidden = (32, 32)
        c.eval.iwae_k = 16
        c.eval.chunk_size = 8
        c.eval.density_k = 8
        c.train.sample_every = 0
    elif arg:
        raise ValueError(f"vae_toy: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c

"""VAE on dynamically binarised MNIST: MLP encoder/decoder, 50-d latent, Bernoulli decoder, trained
on the IWAE bound with K = 5 samples (Burda et al. 2016); test log p(x) by importance sampling with
K = 5000 (the standard MNIST estimate). ``get_config('smoke')`` runs in seconds on CPU.

Target: <= 88 nats test NLL after about an hour of CPU training (results, their cost and commands:
README). Evaluating K = 5000 on all 10,000 test images costs ~5e10 decoder passes' worth of FLOPs:
lower it with ``--config.data.num_eval=1000`` when CPU time matters.

    python -m experiments.train --config experiments/configs/vae_mnist.py --workdir runs/vae_mnist \\
        --config.data.data_dir=../shared/data/tfds
"""

from experiments.configs.common import base_config, shrink_for_smoke


def get_config(arg=None):
    c = base_config("vae", data="mnist", batch_size=128, num_steps=50_000, learning_rate=1e-3)
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 500
    c.model.arch = "mlp"
    c.model.latent_dim = 50
    c.model.hidden = (512, 512)
    c.model.activation = "relu"
    c.objective.likelihood = "bernoulli"
    c.objective.kl = "analytic"
    c.objective.beta = 1.0
    c.objective.iwae_k = 5  # K > 1: train on the IWAE bound L_K (tighter than the ELBO)
    c.objective.binarize = "dynamic"  # x ~ Bernoulli(pixel / 255), fresh at every step
    c.data.num_eval = -1  # the whole test split
    c.data.eval_batch_size = 500
    c.eval.iwae_k = 5000
    c.eval.chunk_size = 100  # 100 x 500 decoder passes at once (~0.5 GB of activations)
    c.eval.rows_per_call = 0  # IS calls over the whole eval batch (each call: chunk_size x 500 decoder passes, ~2 s here)
    c.eval.elbo_samples = 1
    c.eval.binarize_seed = 0  # one fixed binarisation of the test set
    c.eval.num_samples = 64
    c.train.log_every = 500
    c.train.sample_every = 5000
    c.train.checkpoint_every = 5000
    if arg == "smoke":
        shrink_for_smoke(c, num_steps=10)
        c.data.batch_size = 32
        c.optim.warmup_steps = 0
        c.model.hidden = (64,)
        c.model.latent_dim = 8
        c.data.num_eval = 64
        c.data.eval_batch_size = 32
        c.eval.iwae_k = 16
        c.eval.chunk_size = 8
        c.train.sample_every = 0
    elif arg:
        raise ValueError(f"vae_mnist: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c

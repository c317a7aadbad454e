"""Multi-scale RealNVP (Dinh et al. 2017) on MNIST: logit pre-processing with alpha = 1e-6 (as MAF on
MNIST; the paper's 0.05 squeezes MNIST's constant background into a sliver, see glow_mnist.py), 3 scales (28x28 -> 14x14 -> 7x7; per scale 3 checkerboard couplings, squeeze, 3 channel
couplings, factor out half; last scale 4 checkerboard couplings), ResNet conditioners (64 channels,
4 residual blocks), ActNorm in place of batch norm, Adam lr 1e-3 with L2 5e-5 (the paper's), batch
64. Published: 1.06 bits/dim on MNIST. About 4.8M parameters: meant for a GPU/TPU (``glow_mnist`` is the
CPU-sized MNIST flow; a short CPU run is in README). ``get_config('smoke')`` runs in seconds.

    python -m experiments.train --config experiments/configs/realnvp_mnist.py \\
        --workdir runs/realnvp_mnist --config.data.data_dir=../shared/data/tfds
"""

from ml_collections import config_dict

from experiments.configs.common import base_config
from experiments.configs.glow_mnist import image_flow_smoke


def get_config(arg=None):
    c = base_config("flow", data="mnist", batch_size=64, num_steps=100_000, learning_rate=1e-3)
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 500
    c.optim.weight_decay = 5e-5  # L2 on all parameters, as in the paper
    c.optim.grad_clip = 50.0
    c.optim.ema_decay = 0.999
    c.model.arch = "realnvp"
    c.model.remat = config_dict.placeholder(str)  # None | 'full' | 'dots' (gen_jax.nn.REMAT_POLICIES)
    c.model.num_scales = 3
    c.model.hidden = (64,)
    c.model.num_res_blocks = 4
    c.model.max_log_scale = 3.0
    c.model.actnorm = True
    c.model.preprocess = "logit"
    c.model.alpha = 1e-6
    c.model.init_batch = 256
    c.objective.num_bits = 8
    c.data.num_eval = -1
    c.data.eval_batch_size = 500
    c.eval.num_samples = 64
    c.eval.temperature = 1.0
    c.eval.temperatures = (0.0, 0.5, 0.7, 0.8, 0.9, 1.0)
    c.train.log_every = 200
    c.train.eval_every = 10_000
    c.train.sample_every = 10_000
    c.train.checkpoint_every = 5000
    if arg == "smoke":
        image_flow_smoke(c)
        c.model.num_scales = 2
        c.model.hidden = (8,)
        c.model.num_res_blocks = 1
    elif arg:
        raise ValueError(f"realnvp_mnist: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c

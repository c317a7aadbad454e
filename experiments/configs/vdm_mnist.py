"""Continuous-time diffusion on MNIST (Kingma et al. 2021, VDM): the ``ddpm_mnist`` U-Net (ch=16,
ch_mult=(1, 2, 4), attention at 7x7) with Fourier features of its input, a learned log-SNR schedule
(endpoints on the bound, shape on its variance), eps-prediction trained on the continuous-time bound
itself (prior + diffusion + reconstruction with the 256-way decoder), EMA, at ddpm_mnist's compute:
4000 steps at batch 64, at a peak learning rate of 2e-3 (ddpm_mnist's 5e-4 left the bound at 1.686
bits/dim after 4000 steps). ``evaluate`` reports the bound in bits/dim on ``eval.bound_examples`` test
images (``eval.bound_num_times`` times t per image). Results and commands: README.

    python -m experiments.train --config vdm_mnist --workdir runs/vdm_mnist --config.data.data_dir=../shared/data/tfds
"""

from experiments.configs import ddpm_mnist
from experiments.configs.vdm_toy import vdm_objective


def get_config(arg=None):
    c = ddpm_mnist.get_config("smoke" if arg == "smoke" else None)
    c.train.num_steps = 4000 if arg != "smoke" else c.train.num_steps
    c.optim.learning_rate = 2e-3  # warmup 500, cosine decay, clipping at 1.0 as ddpm_mnist
    vdm_objective(c)
    c.model.fourier_features = (7, 8)
    c.eval.sampler = "ddpm"  # ancestral steps ('ddim': deterministic)
    c.eval.sample_steps = 128 if arg != "smoke" else 4
    c.eval.bound_examples = 1000 if arg != "smoke" else 8
    c.eval.bound_batch_size = 100 if arg != "smoke" else 8
    c.eval.bound_num_times = 32 if arg != "smoke" else 4
    c.eval.figures = ("log_snr",)
    if arg not in (None, "smoke"):
        raise ValueError(f"vdm_mnist: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c

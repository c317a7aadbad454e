"""Flow matching on MNIST (Lipman et al. 2022, Liu et al. 2022): the ``ddpm_mnist`` U-Net predicting the
velocity of the linear (optimal-transport / rectified-flow) path, at ddpm_mnist's compute (4000 steps at batch
64); samples by ``eval.sample_steps`` Heun steps of the ODE; the Frechet distance of the samples (features of
the small MNIST classifier). ``get_config('smoke')`` runs in seconds on CPU.

    python -m experiments.train --config fm_mnist --workdir runs/fm_mnist --config.data.data_dir=../shared/data/tfds
"""

from experiments.configs import ddpm_mnist
from experiments.configs.common import image_frechet_eval
from experiments.configs.fm_toy import fm_objective


def get_config(arg=None):
    c = ddpm_mnist.get_config("smoke" if arg == "smoke" else None)
    if arg != "smoke":
        c.train.num_steps = 4000
    fm_objective(c)
    c.eval.sample_steps = 50 if arg != "smoke" else 4
    c.eval.evaluators = ("frechet",)
    image_frechet_eval(c, num_samples=1000, smoke=arg == "smoke")  # 1000 samples: 100k U-Net calls on a CPU
    c.eval.figures = ()
    if arg not in (None, "smoke"):
        raise ValueError(f"fm_mnist: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c

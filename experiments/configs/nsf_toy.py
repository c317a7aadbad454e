"""Neural Spline Flow (coupling version, Durkan et al. 2019) on a 2D toy distribution (ring8 by
default): 6 rational-quadratic spline couplings, K = 16 bins on [-4, 4] with linear tails, MLP
conditioners (2 x 128). ``get_config('smoke')`` runs in seconds on CPU.

    python -m experiments.train --config experiments/configs/nsf_toy.py --workdir runs/nsf_toy
"""

from experiments.configs.realnvp_toy import smoke, toy_flow_config


def get_config(arg=None):
    c = toy_flow_config("nsf", learning_rate=5e-4)
    c.model.num_layers = 6
    c.model.hidden = (128, 128)
    c.model.num_bins = 16
    c.model.bound = 4.0
    c.model.lu_linear = False  # in 2D the alternating masks already mix both coordinates
    if arg == "smoke":
        smoke(c)
        c.model.num_bins = 4
    elif arg:
        raise ValueError(f"nsf_toy: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c

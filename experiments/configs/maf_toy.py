"""Masked autoregressive flow (Papamakarios et al. 2017) on a 2D toy distribution (ring8 by
default): 5 MADE layers (2 x 128 hidden units) with the order reversed between layers and an ActNorm
after each (in place of MAF's batch norm). Density evaluation is one pass per layer; sampling
inverts each layer with D sequential passes. ``get_config('smoke')`` runs in seconds on CPU.

    python -m experiments.train --config experiments/configs/maf_toy.py --workdir runs/maf_toy
"""

from experiments.configs.realnvp_toy import smoke, toy_flow_config


def get_config(arg=None):
    c = toy_flow_config("maf")
    c.model.num_layers = 5
    c.model.hidden = (128, 128)
    c.model.max_log_scale = 3.0
    c.model.actnorm = True
    if arg == "smoke":
        smoke(c)
    elif arg:
        raise ValueError(f"maf_toy: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c
